"""Lockstep verification of an exported model against the IR executor.

Two float32 runtimes compute a matrix product or a LayerNorm with different
summation orders, so their values differ in the last bits (about 1e-7
relative).  That is harmless everywhere except at an MT neuron whose membrane
lands within that distance of a threshold boundary: there the two runtimes may
take different branches, and from then on run different (equally valid)
spike trains.  On a ViT with a million neuron decisions per step this happens
a few times per run.

So the comparison runs in lockstep.  The other runtime reports every MT
neuron's spikes; the executor makes its own decisions and, only where the two
differ *and* the executor's membrane is within ``tie_tol`` x threshold of a
boundary, adopts the other runtime's decision (a tie).  Any other disagreement
fails.  Outputs are then compared step by step.  The result says how many
decisions were compared and how many were ties.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from ecmt import ir
from ecmt.runtime import GraphExecutor


@dataclasses.dataclass
class LockstepResult:
    max_abs_diff: list[float]      # per step, estimates
    output_scale: float
    decisions: int                 # MT decisions compared
    ties: int                      # decisions adopted from the other runtime (at a boundary)

    @property
    def max_rel_diff(self) -> float:
        return max(self.max_abs_diff) / self.output_scale if self.output_scale else max(self.max_abs_diff)


class LockstepMismatch(AssertionError):
    pass


def _distance_to_boundary(v: torch.Tensor, state) -> torch.Tensor:
    """|v - nearest boundary| / threshold, for every element.  With k > 1 levels per
    step, every comparison of the remaining membrane |v| - s (kernels.mt_multi_levels)."""
    pos = v >= 0
    th = state.th_pos if state.th_neg is None else torch.where(pos, state.th_pos, state.th_neg)
    mag = v.abs()
    best = torch.full_like(v, float("inf"))
    s, fired = torch.zeros_like(v), torch.zeros_like(v)
    for k in range(state.levels - 1, -1, -1):
        value, bound = th * float(2 ** k), th * float(2 ** k) - th * 0.5
        best = torch.where(fired < state.k, torch.minimum(best, (mag - s - bound).abs()), best)
        if state.k > 1:
            crossed = (mag - s >= bound) & (fired < state.k)
            s, fired = torch.where(crossed, s + value, s), fired + crossed.to(v.dtype)
    return best / th


def lockstep(graph: ir.SpikingGraph, x: torch.Tensor, T: int, estimates: np.ndarray,
             spikes: Callable[[str, int], np.ndarray], tie_tol: float = 1e-4) -> LockstepResult:
    """Compare another runtime's `estimates` [T, B, ...] and per-step MT
    `spikes(node, t)` with the executor, in lockstep."""
    executor = GraphExecutor(graph)
    states = {s.node.name: s.state for s in executor.steps if isinstance(s.node, ir.MTNeuron)}
    counts = {"decisions": 0, "ties": 0}

    def intervene(node, out, t):
        if not isinstance(node, ir.MTNeuron):
            return out
        theirs = torch.as_tensor(spikes(node.name, t), dtype=out.dtype).reshape(out.shape)
        counts["decisions"] += out.numel()
        differ = theirs != out
        if not bool(differ.any()):
            return out
        state = states[node.name]
        v_before = state.v + out                           # membrane at the decision
        dist = _distance_to_boundary(v_before, state)
        far = differ & (dist > tie_tol)
        if bool(far.any()):
            idx = tuple(int(i) for i in far.nonzero()[0])
            raise LockstepMismatch(
                f"node {node.name!r}, image {idx[0]}, step {t}: spike differs at element {idx[1:]} away from any "
                f"threshold "
                f"(membrane {v_before[idx].item():.7g}, executor {out[idx].item():.7g}, "
                f"other runtime {theirs[idx].item():.7g}, distance {dist[idx].item():.3g} thresholds)")
        counts["ties"] += int(differ.sum())
        state.v = state.v + out - theirs                  # follow the other runtime's branch
        return torch.where(differ, theirs, out)

    ours = executor.run(x, T, intervene=intervene).numpy()
    if estimates.shape != ours.shape:
        raise LockstepMismatch(f"estimates have shape {estimates.shape}, the executor {ours.shape}")
    diffs = [float(np.abs(estimates[t] - ours[t]).max()) for t in range(T)]
    return LockstepResult(diffs, float(np.abs(ours).max()), counts["decisions"], counts["ties"])


# -- one export, verified in its own runtime (ecmt export --verify, ecmt pipeline, tests) -------------------
@dataclasses.dataclass
class Verification:
    """How one export ran in its runtime against the executor on `samples` images."""
    export: str                    # onnx, nir, lava, netx, or nir:<consumer>
    runtime: str
    samples: int
    T: int
    agreement: float | None        # share of images whose class at T is the executor's
    max_rel_diff: float | None = None    # largest |theirs - executor| over the estimates' scale
    tolerance: float | None = None       # max_rel_diff above it fails; None: reported only
    decisions: int | None = None         # lockstep: MT decisions compared, and ties adopted
    ties: int | None = None
    ok: bool = True
    detail: str = ""               # on failure: which image, by how much; or why it was skipped
    skipped: bool = False

    def line(self) -> str:
        head = f"verify {self.export} ({self.runtime}), {self.samples} images, T = {self.T}: "
        if self.skipped:
            return head + f"skipped ({self.detail})"
        parts = []
        if self.agreement is not None:
            parts.append(f"argmax agreement {100 * self.agreement:.1f}%")
        if self.max_rel_diff is not None:
            parts.append(f"max deviation {self.max_rel_diff:.2e} of the output scale"
                         + (f" (tolerance {self.tolerance:g})" if self.tolerance is not None else ""))
        if self.decisions is not None:
            parts.append(f"{self.ties} ties in {self.decisions} MT decisions")
        text = head + ", ".join(parts)
        return text + ("" if self.ok else f"; DISAGREES: {self.detail}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def executor_estimates(graph: ir.SpikingGraph, x: torch.Tensor, T: int) -> np.ndarray:
    from ecmt.runtime import SpikingModel
    return SpikingModel(graph)(x, T).numpy()


def _compare(v: Verification, theirs: np.ndarray, ours: np.ndarray) -> Verification:
    """Fill agreement and deviation; fail naming the image and step beyond the tolerance."""
    v.agreement = float((theirs[-1].argmax(-1) == ours[-1].argmax(-1)).mean())
    scale = float(np.abs(ours).max()) or 1.0
    dev = np.abs(theirs - ours).reshape(theirs.shape[0], theirs.shape[1], -1).max(-1) / scale   # [T, N]
    v.max_rel_diff = float(dev.max())
    if v.tolerance is not None and v.max_rel_diff > v.tolerance:
        t, i = np.unravel_index(int(dev.argmax()), dev.shape)
        v.ok = False
        v.detail = (f"image {i}, step {t + 1}: deviation {dev[t, i]:.3g} of the output scale "
                    f"(tolerance {v.tolerance:g})")
    return v


def _lockstep(v: Verification, graph, x, T, estimates, spikes) -> Verification:
    try:
        result = lockstep(graph, x, T, estimates, spikes)
    except LockstepMismatch as err:
        v.ok, v.detail = False, str(err)
        v.agreement = float((estimates[-1].argmax(-1) == executor_estimates(graph, x, T)[-1].argmax(-1)).mean())
        return v
    v.decisions, v.ties = result.decisions, result.ties
    ours = executor_estimates(graph, x, T)
    v = _compare(v, estimates, ours)
    return v


def verify_onnx(graph: ir.SpikingGraph, path, x: torch.Tensor, T: int, tolerance: float = 1e-5) -> Verification:
    """The ONNX file in onnxruntime: a twin of it that exposes every MT neuron's spikes
    runs in lockstep with the executor (ties at a threshold adopted, any other
    difference fails), and the file itself must give the twin's estimates."""
    import tempfile
    from pathlib import Path

    from exporters import onnx as eonnx
    v = Verification("onnx", "onnxruntime", len(x), T, None, tolerance=tolerance)
    shipped, _ = eonnx.run(path, x.numpy(), T)
    with tempfile.TemporaryDirectory() as tmp:
        twin = eonnx.export(graph, Path(tmp) / "twin.onnx", expose_spikes=True)
        estimates, spikes = eonnx.run(twin, x.numpy(), T)
    v = _lockstep(v, graph, x, T, estimates, lambda node, t: spikes[(node, t)])
    if v.ok and not np.allclose(shipped, estimates, rtol=0, atol=1e-6 * (float(np.abs(estimates).max()) or 1.0)):
        i = int(np.abs(shipped - estimates).reshape(T, len(x), -1).max(-1).max(0).argmax())
        v.ok, v.detail = False, f"image {i}: {path} computes other estimates than its graph with spikes exposed"
    return v


def nir_node_map_run(path, x: torch.Tensor, T: int) -> np.ndarray:
    """A NIR file run with nirtorch and ecmt's node map: the running estimates [T, N, ...]."""
    import nir
    import nirtorch

    from exporters.nir import torch_node_map
    m = nirtorch.nir_to_torch(nir.read(str(path)), torch_node_map())
    state, total, out = None, 0, []
    for t in range(1, T + 1):
        y, state = m(x, state) if state is not None else m(x)
        total = total + y.detach()
        out.append(total / t)
    return torch.stack(out).numpy()


def verify_nir(graph: ir.SpikingGraph, path, x: torch.Tensor, T: int, tolerance: float = 1e-5) -> Verification:
    """The NIR file through nirtorch with ecmt's node map against the executor on
    `graph`, the graph as written (after --unit-thresholds / --ppn)."""
    v = Verification("nir", "nirtorch + ecmt node map", len(x), T, None, tolerance=tolerance)
    return _compare(v, nir_node_map_run(path, x, T), executor_estimates(graph, x, T))


CONSUMERS = {"snntorch": "LIF", "norse": "IF", "sinabs": "IF"}     # the NIR neuron each reads (docs/nir.md)


def consumer_runnable(graph: ir.SpikingGraph) -> str | None:
    """Why snnTorch, Norse and sinabs cannot run `graph`'s NIR file (None: they can):
    their own models map only the standard synaptic nodes, pools and IF / LIF neurons."""
    allowed = (ir.Input, ir.Output, ir.Linear, ir.Conv2d, ir.AvgPool2d, ir.MaxPool2d, ir.MTNeuron, ir.Add,
               ir.Reshape)
    odd = sorted({n.KIND for n in graph if not isinstance(n, allowed) or isinstance(n, ir.MTNeuronPPN)})
    if odd:
        return f"nodes the consumers do not map: {', '.join(odd)}"
    if any(isinstance(n, ir.Conv2d) and n.groups != 1 for n in graph):
        return "grouped convolutions (written with the ecmt-nir convention)"
    return None


def _consumer_python(consumer: str) -> tuple[str | None, str]:
    """(the consumer env's interpreter, or None and why not)."""
    import os
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "tools" / "nir_consumers.sh"
    if not script.exists():
        return None, "tools/nir_consumers.sh is not in this checkout"
    python = subprocess.run([str(script), "--python", consumer], capture_output=True, text=True).stdout.strip()
    if not python or not os.path.exists(python):
        return None, "its environment is not built (tools/nir_consumers.sh)"
    return python, ""


SPECK = "speck2fdevkit"


def speck_fitness(path, chip: str = SPECK) -> dict:
    """sinabs' own Speck chip-fitness check of a NIR file, in sinabs' environment
    (tools/nir_consumer_run.py --speck): {"fits", "stage", "reason", "layers", "cores", ...};
    {"fits": None, "reason": why} where it cannot run."""
    import json
    import subprocess
    from pathlib import Path
    python, why = _consumer_python("sinabs")
    if python is None:
        return {"chip": chip, "fits": None, "reason": why}
    runner = Path(__file__).resolve().parent.parent / "tools" / "nir_consumer_run.py"
    r = subprocess.run([python, str(runner), "--consumer", "sinabs", "--nir", str(path), "--speck", chip],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"chip": chip, "fits": None, "reason": (r.stderr.strip().splitlines() or ["no message"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


class ConsumerUnavailable(Exception):
    """A consumer's environment is not built (or this is not a checkout with tools/)."""


class ConsumerFailure(Exception):
    """The consumer library fails to load or run the file (the runner's one-line message)."""


def run_consumer(consumer: str, path, x: torch.Tensor, T: int, batch_size: int = 64) -> np.ndarray:
    """The NIR file in snnTorch, Norse or sinabs as shipped (tools/nir_consumer_run.py in
    the env of tools/nir_consumers.sh), x fed at every step: their per-step outputs [T, N, ...]."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path
    python, why = _consumer_python(consumer)
    if python is None:
        raise ConsumerUnavailable(f"{consumer}: {why}")
    runner = Path(__file__).resolve().parent.parent / "tools" / "nir_consumer_run.py"
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x.numpy())
        r = subprocess.run([python, str(runner), "--consumer", consumer, "--nir", str(path), "--inputs",
                            str(Path(tmp) / "x.npy"), "-T", str(T), "--out", str(Path(tmp) / "y.npy"),
                            "--batch-size", str(batch_size)], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        if r.returncode != 0:
            raise ConsumerFailure((r.stderr.strip().splitlines() or ["no message"])[-1])
        return np.load(Path(tmp) / "y.npy")


def verify_consumer(consumer: str, path, x: torch.Tensor, T: int, reference: np.ndarray) -> Verification:
    """The NIR file in snnTorch, Norse or sinabs (run_consumer): their own neuron models, so
    only the argmax agreement with the executor's estimates `reference` [T, N, ...] is reported."""
    v = Verification(f"nir:{consumer}", consumer, len(x), T, None)
    try:
        total = np.cumsum(run_consumer(consumer, path, x, T), axis=0)
    except ConsumerUnavailable as err:
        v.skipped, v.detail = True, str(err)
        return v
    except ConsumerFailure as err:
        v.ok, v.detail = False, str(err)
        return v
    v.agreement = float((total[-1].argmax(-1) == reference[-1].argmax(-1)).mean())
    return v


def verify_lava(graph: ir.SpikingGraph, path, x: torch.Tensor, T: int, tolerance: float = 1e-5) -> Verification:
    """The Lava file built as ecmt's Lava processes and run in Loihi2SimCfg (float), in
    lockstep with the executor."""
    from exporters import lava as elava
    v = Verification("lava", "Lava Loihi2SimCfg", len(x), T, None, tolerance=tolerance)
    net = elava.build(path, record_spikes=True)
    estimates = net.run(x.numpy(), T)
    spikes = lambda node, t: np.stack([net.spike(node, t, i) for i in range(len(x))])  # noqa: E731
    return _lockstep(v, graph, x, T, estimates, spikes)


def verify_netx(graph: ir.SpikingGraph, path, x: torch.Tensor, T: int) -> Verification:
    """A netx-layout file in lava-dl netx as shipped (fixed point): its output record must
    equal ecmt's integer model of netx (netx.emulate) bit for bit; the argmax agreement
    with the executor is reported (netx runs sigma-delta neurons, not MT neurons)."""
    from exporters.lava import netx
    v = Verification("netx", "lava-dl netx", len(x), T, None, tolerance=0.0)
    p = netx.plan(graph)
    record = netx.run(path, x.numpy(), T, raw=True)
    expected = netx.emulate(p, x.numpy(), T)
    if not np.array_equal(record, expected):
        step = int(np.argwhere((record != expected).reshape(len(record), -1).any(-1))[0, 0])
        v.ok, v.detail = False, (f"netx's record differs from netx.emulate from step {step} on (image "
                                 f"{max(0, step - p.latency) // T}), by up to {int(np.abs(record - expected).max())}")
    out = netx.aligned(record, len(x), T, p.latency, p.output_scale)
    v.max_rel_diff = 0.0 if v.ok else None
    v.agreement = float((out[-1].argmax(-1) == executor_estimates(graph, x, T)[-1].argmax(-1)).mean())
    return v
