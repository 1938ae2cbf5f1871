"""Record: per step, the channels each on-chip element fired and whether it had work of its
own, from the executor's run (``Recorder``, an executor observer)."""
from __future__ import annotations

import dataclasses

import torch

from .extract import OnChip


@dataclasses.dataclass
class Raster:
    """One group's events in a run: fired [T, B, n], a bit mask of the channels that fired
    (bit j: channel j; 0: none; a k-level spike on binary level channels sets one bit per
    level), in the narrowest integer type that holds the group's channels without its sign
    bit (``mask_dtype``; 2 x 32 levels, the IR's most, take an int64), and extra [T, B, n] (the element's own work: non-zero input or non-zero
    membrane)."""
    fired: torch.Tensor
    extra: torch.Tensor


def mask_dtype(channels: int) -> torch.dtype:
    """The narrowest integer type whose non-negative values hold `channels` bits (int64: all
    64, its sign bit included, which only bit operations read)."""
    return torch.uint8 if channels <= 8 else torch.int16 if channels <= 15 else \
        torch.int32 if channels <= 31 else torch.int64


def decode(code: torch.Tensor, levels: int, k: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An MT neuron's recorded codes (GraphExecutor(..., record_levels=True)) as (fired
    channels as a bit mask, int64; active: the neuron had input or membrane this step)."""
    n, code = levels, code.long()
    if k > 1:
        # int16 codes sign * m + 2^n - 1 (+ an offset when active): m's binary digits are the
        # levels fired, level i on channel i (n + i when negative)
        values = 2 ** (n + 1) - 1
        active = code >= values
        m = torch.where(active, code - values, code) - (2 ** n - 1)
    else:
        # uint8 codes: the level number p (+- 1..n: the spike th 2^(|p| - 1)) + n
        active = code >= 2 * n + 1
        p = torch.where(active, code - (2 * n + 1), code) - n
        m = p.sign() * torch.where(p != 0, 1 << (p.abs() - 1).clamp(min=0), 0)
    fired = torch.where(m < 0, m.abs() << n, m) if channels > 1 else (m != 0).long()
    return fired, active


def codes(levels: int, k: int) -> int:
    """How many codes an MT neuron of `levels` levels and k levels per step records."""
    return 2 * (2 ** (levels + 1) - 1) if k > 1 else 2 * (2 * levels + 1)


class Recorder:
    """Executor observer (GraphExecutor(..., record_levels=True)) that keeps the rasters of
    the on-chip groups for one batch; ``take()`` returns and clears them.  Codes are decoded
    by table (one per group: every code's mask and activity)."""

    def __init__(self, executor, onchip: OnChip, T: int):
        self.executor, self.onchip, self.T = executor, onchip, T
        self._rasters: dict[str, Raster] = {}
        self._vnz: dict[str, torch.Tensor] = {}
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, g, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (g.name, k)
        if key not in self._tables:
            fired, active = decode(torch.arange(codes(g.levels, k)), g.levels, k, g.channels)
            self._tables[key] = fired.to(mask_dtype(g.channels)), active
        return self._tables[key]

    def __call__(self, node, inputs, out, t):
        g = self.onchip.groups.get(node.name)
        if g is None:
            return
        B = out.shape[0]
        if t == 1:                # the batch's rasters, written step by step (no copy at the end)
            self._rasters[node.name] = Raster(torch.zeros(self.T, B, g.elements, dtype=mask_dtype(g.channels)),
                                              torch.zeros(self.T, B, g.elements, dtype=torch.bool))
            self._vnz.pop(node.name, None)
        raster = self._rasters[node.name]
        if g.kind == "accumulator":
            raster.extra[t - 1] = (out.reshape(B, -1) != 0).cpu()
        else:
            state = self.executor.state(node.name)
            fired, active = self._table(g, state.k)
            code = state.code.reshape(-1).cpu().to(torch.int32)
            torch.index_select(fired, 0, code, out=raster.fired[t - 1].view(-1))
            prev = self._vnz.get(node.name)
            now = raster.extra[t - 1].view(-1)
            torch.index_select(active, 0, code, out=now)
            if prev is not None:
                now |= prev
            self._vnz[node.name] = (state.v.reshape(-1) != 0).cpu()

    def take(self) -> dict[str, Raster]:
        out, self._rasters, self._vnz = self._rasters, {}, {}
        return out


def record(graph, x: torch.Tensor, T: int, onchip: OnChip) -> dict[str, Raster]:
    """Run `graph` on x for T steps and return the on-chip groups' rasters."""
    from ecmt.runtime import GraphExecutor
    ex = GraphExecutor(graph, record_levels=True)
    rec = Recorder(ex, onchip, T)
    ex.run(x, T, observer=rec)
    return rec.take()
