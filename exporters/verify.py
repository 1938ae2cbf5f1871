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
                f"node {node.name!r}, step {t}: spike differs at element {idx} away from any threshold "
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
