"""Threshold calibration (docs/method.md §5).

The graph runs in analog mode (every MT neuron replaced by the function it
approximates, which is the source ANN) on calibration batches.  For each MT
neuron and batch we take the p-th quantile of its activation as th_pos and
minus the (1-p)-th quantile as th_neg, per tensor or per channel, and average
over batches.  Only one batch of activations is alive at a time, so memory is
bounded by one analog forward pass.

A quantile of the wrong sign (an activation that is never negative has a
positive (1-p)-quantile) is not a threshold: that batch contributes nothing
to that side, and a side without any valid batch mirrors the other side's
threshold, so that it stays silent for activations of that sign.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from .. import distributed, ir
from ..errors import EcmtError
from ..runtime import GraphExecutor


def quantile_rows(x: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolated q-quantile of each row of a 2-d tensor (like
    torch.quantile, without its size limit)."""
    n = x.shape[1]
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    ranks = [lo + 1] if frac == 0 or hi == lo else [lo + 1, hi + 1]
    values = order_statistics(x, ranks)
    if len(ranks) == 1:
        return values[0]
    return values[0] + (values[1] - values[0]) * frac


SAMPLE = 1 << 16


def order_statistics(x: torch.Tensor, ranks: list[int]) -> list[torch.Tensor]:
    """The ranks[i]-th smallest value of each row of x (ranks ascending, 1-based), exactly.
    One long row (a per-tensor threshold over a batch: millions of values) is cut first:
    for ranks in the upper half, at a value a below them by a sample's quantile, and the
    selection runs on the values >= a only (a few percent of the row) where their count
    shows that every wanted value is among them; ranks in the lower half the same way from
    below; where the cut misses, on the whole row."""
    n = x.shape[1]
    whole = lambda: [torch.kthvalue(x, r, dim=1).values for r in ranks]
    if x.shape[0] != 1 or n <= 4 * SAMPLE:
        return whole()
    row = x[0]
    sample = row[torch.randint(n, (SAMPLE,), generator=torch.Generator().manual_seed(0)).to(row.device)]
    margin = 0.005 + 4 / SAMPLE ** 0.5            # the sample's rank error, generously
    if ranks[0] > n // 2:                         # near the top: keep the values >= a
        a = float(torch.quantile(sample, max(0.0, ranks[0] / n - margin)))
        part = row[row >= a]
        below = n - part.numel()
    else:                                         # near the bottom: keep the values <= b
        b = float(torch.quantile(sample, min(1.0, ranks[-1] / n + margin)))
        part = row[row <= b]
        below = 0
    if not (below < ranks[0] and ranks[-1] <= below + part.numel()):
        return whole()
    return [torch.kthvalue(part, r - below).values.reshape(1) for r in ranks]


def channel_shape(graph: ir.SpikingGraph, mt: ir.MTNeuron) -> tuple[int, ...]:
    """Shape of a per-channel threshold tensor for this neuron: one value per
    channel of a [C, H, W] map, else one per feature shared over tokens
    (every axis but the second-to-last)."""
    shape = graph.shapes[mt.name]
    consumers = graph.consumers()[mt.name]
    spatial = len(shape) == 3 and (
        any(isinstance(graph[c], (ir.Conv2d, ir.AvgPool2d, ir.MaxPool2d)) for c in consumers)
        or isinstance(graph[mt.inputs[0]], (ir.Conv2d, ir.AvgPool2d, ir.MaxPool2d)))
    if spatial:
        return (shape[0], 1, 1)
    if len(shape) >= 2:
        return (*shape[:-2], 1, shape[-1])
    return shape


class _Stats:
    """Running per-batch quantile sums for one neuron (only valid-sign batches count)."""

    def __init__(self, th_shape: tuple[int, ...] | None):
        self.th_shape = th_shape            # None: per tensor
        rows = 1 if th_shape is None else math.prod(th_shape)
        self.hi_sum, self.hi_n, self.lo_sum, self.lo_n = (torch.zeros(rows, dtype=torch.float64) for _ in range(4))

    def add(self, act: torch.Tensor, q: float) -> None:
        if self.th_shape is None:
            rows = act.reshape(1, -1)
        else:
            ch_axes = [i + 1 for i, d in enumerate(self.th_shape) if d != 1]
            other = [i for i in range(act.dim()) if i not in ch_axes]
            rows = act.permute(*ch_axes, *other).reshape(math.prod(self.th_shape), -1)
        rows = rows.float()
        hi, lo = quantile_rows(rows, q), quantile_rows(rows, 1.0 - q)
        ok_hi, ok_lo = hi > 0, lo < 0
        self.hi_sum += torch.where(ok_hi, hi, 0.0).double().cpu()
        self.hi_n += ok_hi.double().cpu()
        self.lo_sum += torch.where(ok_lo, -lo, 0.0).double().cpu()
        self.lo_n += ok_lo.double().cpu()

    def reduce(self) -> None:
        """Sum the statistics over torch.distributed ranks (no-op in one process)."""
        self.hi_sum, self.hi_n, self.lo_sum, self.lo_n = (
            distributed.all_reduce_sum(t) for t in (self.hi_sum, self.hi_n, self.lo_sum, self.lo_n))

    def thresholds(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        hi = torch.where(self.hi_n > 0, self.hi_sum / self.hi_n.clamp(min=1), torch.nan).float()
        lo = torch.where(self.lo_n > 0, self.lo_sum / self.lo_n.clamp(min=1), torch.nan).float()
        fallbacks = int(torch.isnan(hi).sum() + torch.isnan(lo).sum())
        hi, lo = torch.where(torch.isnan(hi), lo, hi), torch.where(torch.isnan(lo), hi, lo)
        hi, lo = torch.nan_to_num(hi, nan=1.0), torch.nan_to_num(lo, nan=1.0)   # never active
        shape = () if self.th_shape is None else self.th_shape
        return hi.reshape(shape).contiguous(), lo.reshape(shape).contiguous(), fallbacks


def calibrate(graph: ir.SpikingGraph, batches: Iterable[torch.Tensor], *, quantile: float = 0.99,
              per_channel: bool = False, fixed: dict[str, tuple[float, float]] | None = None,
              threshold_scale: float = 1.0, device=None, progress: bool = True) -> dict:
    """Set every MT neuron's thresholds from analog activations on `batches`.

    `fixed` maps a neuron role ("softmax", "gelu", ...) to (th_pos, th_neg)
    used instead of the quantiles; every other threshold is the quantile times
    `threshold_scale`.  Returns a summary for graph.meta.
    """
    if not 0.5 < quantile <= 1.0:          # 1: the largest activation (and the smallest)
        raise ValueError(f"quantile must be in (0.5, 1], got {quantile}")
    check_threshold_scale(threshold_scale)
    fixed = fixed or {}
    neurons = graph.of_kind(ir.MTNeuron)
    stats = {n.name: _Stats(channel_shape(graph, n) if per_channel else None) for n in neurons}
    executor = GraphExecutor(graph, device)

    def observe(node, inputs, output, t):
        if node.name in stats:
            stats[node.name].add(output, quantile)

    n_batches = n_samples = 0
    # Under torchrun each rank takes every world-th batch; the sums are added up below.
    mine = distributed.shard(list(batches))
    for x in tqdm(mine, desc="calibrate", unit="batch", disable=not progress or not distributed.is_main(),
                  leave=False):
        executor.run_analog(x, observe)
        n_batches += 1
        n_samples += x.shape[0]
    for st in stats.values():
        st.reduce()
    n_batches, n_samples = (int(distributed.all_reduce_sum(torch.tensor(v)).item()) for v in (n_batches, n_samples))
    if n_batches == 0:
        raise ValueError("calibration data is empty")
    fallbacks = 0
    for n in neurons:
        hi, lo, fb = stats[n.name].thresholds()
        role = n.meta.get("role")
        if role in fixed:
            hi, lo = (torch.full_like(hi, float(v)) for v in fixed[role])
            fb = 0
        elif threshold_scale != 1.0:
            hi, lo = hi * threshold_scale, lo * threshold_scale
        n.th_pos = hi
        n.th_neg = lo if n.th_neg is not None else None
        fallbacks += fb if n.th_neg is not None else int(stats[n.name].hi_n.eq(0).sum())
    graph.validate()
    return {"quantile": quantile, "per_channel": per_channel, "batches": n_batches,
            "samples": n_samples, "fixed": {k: list(v) for k, v in fixed.items()},
            "threshold_scale": threshold_scale, "sign_fallbacks": fallbacks}


def check_threshold_scale(scale) -> None:
    """threshold_scale must be a finite number > 0."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise EcmtError(f"threshold_scale must be a number > 0 (each calibrated threshold is multiplied by it), "
                        f"got {scale!r}", hint="e.g. threshold_scale=1/16 (--threshold-scale 0.0625)")
