"""Vectorized multi-threshold neuron (docs/method.md §2).

The spec scans levels k = n-1..0 and fires the first whose boundary the
membrane has crossed.  The boundaries th * 2^k - th / 2 grow with k, so the
winner is simply the largest crossed level, and both implementations below
compute exactly the spec's comparisons (no rounding is introduced: th * 2^k
and th / 2 are exact in floating point):

* ``kernels.mt_levels``: for each level, "if |v| crossed it, take it".  The
  level loop is unrolled when torch.compile traces it, so the whole neuron
  update becomes one fused elementwise kernel (no Python loop at run time).
  This is the fast path.
* the table lookup (``MTState`` without the compiler): the number of crossed
  boundaries, counted by one ``torch.searchsorted`` over the sorted boundary
  table, indexes a table of spike values.  No compiler needed; the fallback.

Negative levels mirror the positive ones with th_neg (v <= -(th_neg 2^k -
th_neg / 2) fires -th_neg 2^k).  th_neg None means positive levels only.

Neurons with spikes_per_step k > 1 always take ``kernels.mt_multi_levels``
(fused when compiled, op by op otherwise): the float remainders it compares
move the boundaries of the later levels off any simple table.
"""
from __future__ import annotations

import torch

from ..errors import GraphError
from ..ir import MTNeuron
from .kernels import compile_enabled, mt_multi_update_coded, mt_update, mt_update_coded

# Levels a k > 1 neuron's int16 event code can hold (kernels.mt_multi_update_coded).
MAX_CODED_LEVELS = 13


def level_tables(th_pos: torch.Tensor, th_neg: torch.Tensor | None, levels: int):
    """Sorted boundaries [m] and spike values [m + 1] for scalar thresholds:
    values[i] is the spike when i boundaries are <= v."""
    th_pos = th_pos.reshape(1).float()
    powers = torch.ldexp(torch.ones(levels), torch.arange(levels))             # 2^k, exact
    pos_levels = th_pos * powers
    pos_bounds = pos_levels - th_pos * 0.5
    if th_neg is None:
        return pos_bounds, torch.cat([torch.zeros(1), pos_levels])
    th_neg = th_neg.reshape(1).float()
    neg_levels = th_neg * powers
    # v <= b  <=>  nextafter(b, +inf) <= v, so searchsorted's "<=" count applies to both signs
    neg_bounds = -(neg_levels - th_neg * 0.5)
    neg_bounds = torch.nextafter(neg_bounds, torch.full_like(neg_bounds, float("inf"))).flip(0)
    return (torch.cat([neg_bounds, pos_bounds]),
            torch.cat([-neg_levels.flip(0), torch.zeros(1), pos_levels]))


class MTState:
    """Membrane and thresholds of one MT neuron, for inputs [B, *shape].

    With ``record = True`` every step also keeps ``code``: one uint8 per
    element, flat, as kernels.mt_update_coded defines it (the spike's level
    number + levels, plus 2 levels + 1 where the input was non-zero), so that
    hw_sim counts events by level from one histogram instead of passes over
    the spikes.  With spikes_per_step k > 1 the code is int16, as
    kernels.mt_multi_update_coded defines it (sign * m + 2^levels - 1, m the
    fired levels as binary digits, plus 2^(levels + 1) - 1 where the input
    was non-zero)."""

    def __init__(self, node: MTNeuron, shape: tuple[int, ...], device=None, compiled: bool | None = None):
        def batched(th):   # [1, *aligned] so it broadcasts against [B, *shape]
            return None if th is None else th.reshape(
                (1,) * (len(shape) + 1 - th.dim()) + tuple(th.shape)).float().to(device)

        self.levels = int(node.levels)
        self.k = int(node.spikes_per_step)
        self._k = () if self.k == 1 else (self.k,)     # k = 1 calls the kernels exactly as before k existed
        self.th_pos, self.th_neg = batched(node.th_pos), batched(node.th_neg)
        self.signed = node.th_neg is not None
        self.th_neg_flat = None if self.th_neg is None else self.th_neg.reshape(-1)[:1]
        self.compiled = compile_enabled() if compiled is None else compiled
        scalar = self.th_pos.numel() == 1 and (not self.signed or self.th_neg.numel() == 1)
        self.flat = scalar          # elementwise with scalar thresholds: one flat kernel serves every shape
        # Without the compiler, scalar thresholds use the table lookup; per-channel
        # ones the fused form, op by op.
        self.tables = None if self.compiled or not scalar or self.k > 1 else tuple(
            t.to(device) for t in level_tables(self.th_pos.cpu(), None if self.th_neg is None else self.th_neg.cpu(),
                                               self.levels))          # built on the CPU, then moved
        self.name = node.name
        self._record = False
        self.v: torch.Tensor | None = None
        self.code: torch.Tensor | None = None
        # the fast step's per-sample counts ([batch, 2 levels + 2], k = 1: the elements that fired each
        # level -levels..levels, then the active updates), where it counts in its kernels instead of
        # writing codes (runtime/program.py, count mode)
        self.counts: torch.Tensor | None = None

    @property
    def record(self) -> bool:
        return self._record

    @record.setter
    def record(self, on: bool):
        # A k-level spike's code holds the set of levels fired: 2^(levels + 2) - 2 int16 values.
        if on and self.k > 1 and self.levels > MAX_CODED_LEVELS:
            raise GraphError(
                f"node {self.name!r} (mt_neuron): field levels: {self.levels} levels with spikes_per_step "
                f"{self.k} cannot be recorded as event codes (record_levels: hw_sim's counting), which hold "
                f"the set of fired levels in int16 for at most {MAX_CODED_LEVELS} levels",
                hint=f"convert with levels <= {MAX_CODED_LEVELS} to price the graph in hw_sim")
        self._record = bool(on)

    def reset(self):
        self.v = self.code = self.counts = None

    def step(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        if self.v is None:
            self.v = torch.zeros_like(x)
        if self.tables is not None:
            self.v.add_(x)
            bounds, values = self.tables
            index = torch.searchsorted(bounds, self.v.reshape(-1), right=True)
            s = values[index].view(x.shape)
            self.v.sub_(s)
            if self.record:
                active = (x.reshape(-1) != 0) * (2 * self.levels + 1)
                # the table's index is the code (signed), or the level number (positive only)
                self.code = (index + (0 if self.signed else self.levels) + active).to(torch.uint8)
            return s
        update = (mt_update_coded if self.k == 1 else mt_multi_update_coded) if self.record else mt_update
        update = update if self.compiled else update.eager
        if self.flat:
            out = update(self.v.view(-1), x.view(-1), self.th_pos.view(1), self.th_neg_flat, self.levels,
                         *self._k)
        else:
            out = update(self.v, x, self.th_pos, self.th_neg, self.levels, *self._k)
        s, self.v = out[0].view(x.shape), out[1].view(x.shape)
        if self.record:
            self.code = out[2]
        return s

    def analog(self, x: torch.Tensor) -> torch.Tensor:
        """The ANN function this neuron approximates: identity, or ReLU if positive-only."""
        return x if self.signed else torch.relu(x)


class PPNState(MTState):
    """An MT neuron in PPN form (ir.MTNeuronPPN): each step's graded spike leaves as
    one-hot level channels along the node's axis (channel-major, c * L + j), for a
    next layer whose weights are expanded to lambda_j W (ecmt/ir/ppn.py)."""

    def __init__(self, node, shape: tuple[int, ...], device=None, compiled: bool | None = None):
        super().__init__(node, shape, device, compiled)
        from ..ir.ppn import level_values
        self.lam = level_values(node, shape[node.axis] // node.channels_per_value).to(device)  # [C, L]
        self.axis = node.axis + 1                                       # batched
        self.view = [1] * (len(shape) + 1)
        self.view[self.axis] = self.lam.shape[0]
        self.lowest = [0] + ([node.levels] if self.signed else [])    # the +th and -th level channels

    def _channels(self, per_level) -> torch.Tensor:
        stacked = torch.stack([per_level(j, self.lam[:, j].view(self.view)) for j in range(self.lam.shape[1])],
                              dim=self.axis + 1)                        # [..., C, L, ...]
        return stacked.flatten(self.axis, self.axis + 1)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        s = super().step(x)
        return self._channels(lambda j, lam: (s == lam).to(s.dtype))

    def analog(self, x: torch.Tensor) -> torch.Tensor:
        """The ANN's value a carried as a / lambda on the lowest level channel of its sign,
        so that the expanded next layer computes sum_j lambda_j W c_j = W a exactly."""
        a = super().analog(x)
        return self._channels(lambda j, lam: torch.where(a * lam > 0, a / lam, 0.0) if j in self.lowest
                              else torch.zeros_like(a))
