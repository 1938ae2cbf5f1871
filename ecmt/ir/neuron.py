"""The multi-threshold (MT) neuron."""
from __future__ import annotations

import dataclasses

import torch

from .node import Node, Shape, ShapeError, broadcast


@dataclasses.dataclass(eq=False)
class MTNeuron(Node):
    """Multi-threshold neuron with reset by subtraction (docs/method.md §2).

    Per step: v <- v + x; the highest level k in n-1..0 with
    v >= th_pos * 2^k - th_pos / 2 fires +th_pos * 2^k, else the highest k with
    v <= -(th_neg * 2^k - th_neg / 2) fires -th_neg * 2^k; v <- v - s; emit s.
    At most one spike per neuron and step.  ``th_neg`` None means positive
    levels only (a converted ReLU).  Thresholds are tensors that broadcast to
    the input (a scalar for per-tensor thresholds, one value per channel
    otherwise).
    """
    KIND = "mt_neuron"
    TENSORS = ("th_pos", "th_neg")
    OPTIONAL_TENSORS = ("th_neg",)
    th_pos: torch.Tensor
    th_neg: torch.Tensor | None
    levels: int = 8

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        if int(self.levels) < 1:
            raise ShapeError("levels", f"levels must be >= 1, got {self.levels}")
        for field in ("th_pos", "th_neg"):
            th = getattr(self, field)
            if th is None:
                continue
            if broadcast(tuple(th.shape), x, field) != tuple(x):
                raise ShapeError(field, f"{field} shape {list(th.shape)} does not broadcast to {list(x)}")
            if not bool(torch.all(th > 0)) or not bool(torch.all(torch.isfinite(th))):
                raise ShapeError(field, f"{field} must be finite and > 0")
        return x

    @property
    def signed(self) -> bool:
        return self.th_neg is not None
