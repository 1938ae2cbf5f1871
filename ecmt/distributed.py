"""Scale-out with torch.distributed, for runs started by ``torchrun``.

A plain ``python -m ecmt ...`` run is one process and none of this applies.
Under ``torchrun --nproc_per_node N -m ecmt ...`` every rank runs the same
command on its shard of the batches (batch i goes to rank i mod N); the
statistics that decide results are summed across ranks (calibration sums and
counts, correct predictions per step, hw_sim event counts), so the outcome is
that of one process over the same batches; only rank 0 prints and writes.
Backend: NCCL for ``--device cuda``, gloo otherwise.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "cpu") -> None:
    if launched() and not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = datetime.timedelta(seconds=float(os.environ.get("ECMT_DIST_TIMEOUT", "1800")))
        dist.init_process_group(backend=backend, timeout=timeout)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def device_for(requested: str) -> torch.device:
    """The device this rank computes on: cuda:<local rank> for --device cuda."""
    if str(requested).startswith("cuda"):
        if not torch.cuda.is_available():
            from .errors import EcmtError
            raise EcmtError("`device` cuda: no CUDA device is available on this machine")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0)
    return torch.device(requested)


def shard(items: Sequence) -> list:
    """This rank's share: every world-th item starting at its rank."""
    return list(items)[rank()::world()]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a no-op in one process).  Returns a new tensor on t's device."""
    if not active():
        return t
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    out = t.detach().to(backend_device).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def all_reduce_tree(values):
    """all_reduce_sum over every tensor in nested dicts / lists."""
    if isinstance(values, torch.Tensor):
        return all_reduce_sum(values)
    if isinstance(values, dict):
        return {k: all_reduce_tree(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return type(values)(all_reduce_tree(v) for v in values)
    return values


def batches(split, batch_size: int) -> Iterable:
    """This rank's batches of a data split (batch i goes to rank i mod world)."""
    starts = shard(range(0, len(split), batch_size))
    for s in starts:
        yield split.images[s:s + batch_size], split.labels[s:s + batch_size]


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def check_fault_injection() -> None:
    """ECMT_FAULT_RANK=<r> makes rank r fail before its first collective: the
    documented way to test that one rank's failure stops the whole run."""
    target = os.environ.get("ECMT_FAULT_RANK")
    if target is not None and launched() and rank() == int(target):
        raise RuntimeError(f"injected fault on rank {rank()} (ECMT_FAULT_RANK={target})")
