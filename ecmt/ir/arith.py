"""Elementwise arithmetic that is linear in the increments."""
from __future__ import annotations

import dataclasses

import torch

from .node import Node, Shape, ShapeError, broadcast


@dataclasses.dataclass(eq=False)
class Add(Node):
    """y_t = sum of the input increments (residual add); numpy broadcasting."""
    KIND = "add"
    ARITY = None
    LINEAR = True

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        out = shapes[0]
        for s in shapes[1:]:
            out = broadcast(out, s, "inputs")
        return out


@dataclasses.dataclass(eq=False)
class Scale(Node):
    """y_t = x_t * factor, factor a tensor broadcastable to x (LayerScale,
    averaging of two heads, a scalar)."""
    KIND = "scale"
    TENSORS = ("factor",)
    LINEAR = True
    factor: torch.Tensor

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        if broadcast(tuple(self.factor.shape), x, "factor") != tuple(x):
            raise ShapeError("factor", f"factor {list(self.factor.shape)} does not broadcast to {list(x)}")
        return x
