"""Record: per step, the channels each on-chip element fired and whether it had work of its
own, from the executor's run (``Recorder``, an executor observer)."""
from __future__ import annotations

import dataclasses

import torch

from .extract import OnChip


@dataclasses.dataclass
class Raster:
    """One group's events in a run: fired [T, B, n] int64, a bit mask of the channels that
    fired (bit j: channel j; 0: none; a k-level spike on binary level channels sets one bit
    per level; 2 x 32 levels, the IR's most, fill the 64 bits), and extra [T, B, n] (the element's own work: non-zero input or non-zero
    membrane)."""
    fired: torch.Tensor
    extra: torch.Tensor


class Recorder:
    """Executor observer (GraphExecutor(..., record_levels=True)) that keeps the rasters of
    the on-chip groups for one batch; ``take()`` returns and clears them."""

    def __init__(self, executor, onchip: OnChip, T: int):
        self.executor, self.onchip, self.T = executor, onchip, T
        self._steps: dict[str, list] = {}
        self._vnz: dict[str, torch.Tensor] = {}

    def __call__(self, node, inputs, out, t):
        g = self.onchip.groups.get(node.name)
        if g is None:
            return
        if t == 1:
            self._steps[node.name] = []
            self._vnz.pop(node.name, None)
        B = out.shape[0]
        if g.kind == "accumulator":
            fired = torch.zeros(B, g.elements, dtype=torch.int64)
            extra = (out.reshape(B, -1) != 0).cpu()
        else:
            state = self.executor.state(node.name)
            n = g.levels
            code = state.code.reshape(B, -1).long().cpu()
            if state.k > 1:
                # int16 codes sign * m + 2^n - 1 (+ an offset when active): m's binary digits
                # are the levels fired, level i on channel i (n + i when negative)
                values = 2 ** (n + 1) - 1
                active = code >= values
                m = torch.where(active, code - values, code) - (2 ** n - 1)
            else:
                # uint8 codes: the level number p (+- 1..n: the spike th 2^(|p| - 1)) + n
                active = code >= 2 * n + 1
                p = torch.where(active, code - (2 * n + 1), code) - n
                m = p.sign() * torch.where(p != 0, 1 << (p.abs() - 1).clamp(min=0), 0)
            if g.channels > 1:
                fired = torch.where(m < 0, m.abs() << n, m)
            else:
                fired = (m != 0).long()
            prev = self._vnz.get(node.name)
            extra = active if prev is None else active | prev
            self._vnz[node.name] = (state.v.reshape(B, -1) != 0).cpu()
        self._steps[node.name].append((fired, extra))

    def take(self) -> dict[str, Raster]:
        out = {name: Raster(torch.stack([f for f, _ in steps]), torch.stack([e for _, e in steps]))
               for name, steps in self._steps.items()}
        self._steps, self._vnz = {}, {}
        return out


def record(graph, x: torch.Tensor, T: int, onchip: OnChip) -> dict[str, Raster]:
    """Run `graph` on x for T steps and return the on-chip groups' rasters."""
    from ecmt.runtime import GraphExecutor
    ex = GraphExecutor(graph, record_levels=True)
    rec = Recorder(ex, onchip, T)
    ex.run(x, T, observer=rec)
    return rec.take()
