"""The multi-threshold (MT) neuron."""
from __future__ import annotations

import dataclasses
from typing import Annotated

import torch

from .node import Node, Range, Shape, ShapeError, broadcast

# 2^31 between the smallest and largest spike: far beyond any calibration, and
# level codes (4 levels + 1, see runtime/neuron.py) still fit in a byte.
MAX_LEVELS = 32


@dataclasses.dataclass(eq=False)
class MTNeuron(Node):
    """Multi-threshold neuron with reset by subtraction (docs/method.md §2).

    Per step: v <- v + x; the highest level k in n-1..0 with
    v >= th_pos * 2^k - th_pos / 2 fires +th_pos * 2^k, else the highest k with
    v <= -(th_neg * 2^k - th_neg / 2) fires -th_neg * 2^k; v <- v - s; emit s.
    At most one spike per neuron and step with ``spikes_per_step`` = 1 (the
    paper's neuron); with k > 1 the rule is applied again to the remaining
    membrane, up to k distinct levels of the first one's sign, and the step's
    spike is their sum (docs/method.md §2).  ``th_neg`` None means positive
    levels only (a converted ReLU).  Thresholds are tensors that broadcast to
    the input (a scalar for per-tensor thresholds, one value per channel
    otherwise).
    """
    KIND = "mt_neuron"
    TENSORS = ("th_pos", "th_neg")
    OPTIONAL_TENSORS = ("th_neg",)
    th_pos: torch.Tensor
    th_neg: torch.Tensor | None
    levels: Annotated[int, Range(ge=1, le=MAX_LEVELS)] = 8
    # k: levels one step may send together; 1 (the default) is the paper's neuron
    # and what graph files written before this field mean.
    spikes_per_step: Annotated[int, Range(ge=1, le=MAX_LEVELS)] = 1

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        if not 1 <= int(self.levels) <= MAX_LEVELS:
            raise ShapeError("levels", f"levels must be in 1..{MAX_LEVELS}, got {self.levels}")
        if not 1 <= int(self.spikes_per_step) <= int(self.levels):
            raise ShapeError("spikes_per_step", f"spikes_per_step must be in 1..levels = {self.levels}, "
                             f"got {self.spikes_per_step}")
        for field in ("th_pos", "th_neg"):
            th = getattr(self, field)
            if th is None:
                continue
            if broadcast(tuple(th.shape), x, field) != tuple(x):
                raise ShapeError(field, f"{field} shape {list(th.shape)} does not broadcast to {list(x)}")
            if not bool(torch.all(th > 0)) or not bool(torch.all(torch.isfinite(th))):
                raise ShapeError(field, f"{field} must be finite and > 0")
        return x

    @classmethod
    def carries_spikes(cls, inputs_spiking) -> bool:
        return True                 # the source of every spike

    @property
    def signed(self) -> bool:
        return self.th_neg is not None
