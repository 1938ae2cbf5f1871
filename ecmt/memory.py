"""Memory guard: estimate what a run needs and refuse it before allocating
when it cannot fit, naming the option that sizes it.

The estimates count what the executor keeps alive (runtime/executor.py): every
node's output for the batch, the state of neurons and ECMs, a kernel's
workspace, and the T running estimates of the output.  They are meant to be
right within a small factor, which is what telling 8 GB from 8 TB needs.
"""
from __future__ import annotations

import math
import os

import torch

from . import ir
from .errors import EcmtError

FLOAT = 4                                        # bytes of a float32


def run_bytes(graph: ir.SpikingGraph, batch: int, T: int) -> int:
    """Bytes of one T-step run of `graph` on a batch (GraphExecutor.run)."""
    sizes = {name: math.prod(shape) for name, shape in graph.shapes.items()}
    values = sum(sizes.values())
    # membranes, ECM running sums and previous outputs, product ECM operand sums
    state = sum(sizes[n.name] * (1 if isinstance(n, ir.MTNeuron) else 2)
                + sum(sizes[s] for s in n.inputs) * isinstance(n, ir.ProductECM)
                for n in graph if isinstance(n, (ir.MTNeuron, ir.NonlinearityECM, ir.MaxPool2d, ir.ProductECM)))
    workspace = 3 * max(sizes.values())
    estimates = 2 * T * sizes[graph.output.name]          # the T estimates, then stacked
    return FLOAT * batch * (values + state + workspace + estimates)


def available_bytes(device=None) -> int:
    """Memory free for a new allocation on `device` (RAM for the CPU)."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check(need: int, what: str, change: str, device=None) -> None:
    """Refuse `what` if `need` bytes do not fit in the memory available now."""
    free = available_bytes(device)
    if need > free:
        raise EcmtError(f"{what} needs about {_size(need)} of memory; {_size(free)} is available",
                        hint=f"lower {change}")


# The estimate for hw_sim.simulate is hw_sim.counting.energy_bytes: it reads hw_sim's
# counted fields, and hw_sim imports this module (one direction only, no cycle).
