"""Graph boundaries and analog constants."""
from __future__ import annotations

import dataclasses

import torch

from .node import Dims, Node, Shape, ShapeError


@dataclasses.dataclass(eq=False)
class Input(Node):
    """The analog input x.  The same x is fed at every step, so after t steps
    the running sum is t * x and the estimate is x."""
    KIND = "input"
    ARITY = 0
    LINEAR = True
    shape: Dims

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        if not self.shape or any(int(d) <= 0 for d in self.shape):
            raise ShapeError("shape", f"input shape {list(self.shape)} must be non-empty and positive")
        return tuple(int(d) for d in self.shape)


@dataclasses.dataclass(eq=False)
class Constant(Node):
    """An analog constant c (class token, position embedding) emitted at every
    step: running sum t * c, estimate c.  Broadcasts like numpy in its consumer."""
    KIND = "constant"
    ARITY = 0
    LINEAR = True
    TENSORS = ("value",)
    value: torch.Tensor

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        return tuple(self.value.shape)


@dataclasses.dataclass(eq=False)
class Output(Node):
    """Readout.  The executor reports (sum of increments up to t) / t: the
    running estimate of the ANN output after each step."""
    KIND = "output"
    LINEAR = True
    SHAPE_ONLY = True

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        return shapes[0]

    @classmethod
    def carries_spikes(cls, inputs_spiking) -> bool:
        return False                # the readout's running estimate is analog
