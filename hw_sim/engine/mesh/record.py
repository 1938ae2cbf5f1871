"""Record: per step, the channel each on-chip element fired and whether it had work of its
own, from the executor's run (``Recorder``, an executor observer)."""
from __future__ import annotations

import dataclasses

import torch

from .extract import OnChip


@dataclasses.dataclass
class Raster:
    """One group's events in a run: chan [T, B, n] (the channel that fired, -1 none) and
    extra [T, B, n] (the element's own work: non-zero input or non-zero membrane)."""
    chan: torch.Tensor
    extra: torch.Tensor


class Recorder:
    """Executor observer (GraphExecutor(..., record_levels=True)) that keeps the rasters of
    the on-chip groups for one batch; ``take()`` returns and clears them."""

    def __init__(self, executor, onchip: OnChip, T: int):
        self.executor, self.onchip, self.T = executor, onchip, T
        self.binary = {n: g.channels > 1 for n, g in onchip.groups.items()}
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
            chan = torch.full((B, g.elements), -1, dtype=torch.int16)
            extra = (out.reshape(B, -1) != 0).cpu()
        else:
            state = self.executor.state(node.name)
            n = g.levels
            code = state.code.reshape(B, -1).long().cpu()
            if state.k > 1:
                # int16 (sign, m) codes: a spike of any levels is one event on the element's one
                # channel (extract refuses k > 1 on binary level channels)
                values = 2 ** (n + 1) - 1
                active = code >= values
                number = (torch.where(active, code - values, code) - (2 ** n - 1)).sign()
            else:
                active = code >= 2 * n + 1
                number = torch.where(active, code - (2 * n + 1), code) - n
            if g.channels > 1:
                chan = torch.where(number > 0, number - 1, torch.where(number < 0, n - number - 1, -1))
            else:
                chan = torch.where(number != 0, 0, -1)
            chan = chan.to(torch.int16)
            prev = self._vnz.get(node.name)
            extra = active if prev is None else active | prev
            self._vnz[node.name] = (state.v.reshape(B, -1) != 0).cpu()
        self._steps[node.name].append((chan, extra))

    def take(self) -> dict[str, Raster]:
        out = {name: Raster(torch.stack([c for c, _ in steps]), torch.stack([e for _, e in steps]))
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
