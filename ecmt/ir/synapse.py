"""Synaptic layers: weighted sums of their input increments.

Fed by spikes they are accumulate-only (every non-zero input adds a column of
weights); fed by analog values they are multiply-accumulates.  The bias is
added at every step, so the running estimate carries it exactly once.
"""
from __future__ import annotations

import dataclasses

import torch

from .node import Count, Node, Padding, Pair, Shape, ShapeError


@dataclasses.dataclass(eq=False)
class Linear(Node):
    """y_t = x_t @ weight^T + bias over the last axis.  weight: [out, in]."""
    KIND = "linear"
    TENSORS = ("weight", "bias")
    OPTIONAL_TENSORS = ("bias",)
    LINEAR = True
    weight: torch.Tensor
    bias: torch.Tensor | None = None

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        if self.weight.dim() != 2:
            raise ShapeError("weight", f"weight must be 2-d [out, in], got {list(self.weight.shape)}")
        out_f, in_f = self.weight.shape
        if self.bias is not None and tuple(self.bias.shape) != (out_f,):
            raise ShapeError("bias", f"bias shape {list(self.bias.shape)} != [{out_f}]")
        if not x or x[-1] != in_f:
            raise ShapeError("inputs", f"input {list(x)} does not end in {in_f} features")
        return (*x[:-1], out_f)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(i) for i in v)


@dataclasses.dataclass(eq=False)
class Conv2d(Node):
    """y_t = conv2d(x_t, weight, stride, padding, dilation, groups) + bias.
    x: [C_in, H, W]; weight: [C_out, C_in / groups, kH, kW]; zero padding."""
    KIND = "conv2d"
    TENSORS = ("weight", "bias")
    OPTIONAL_TENSORS = ("bias",)
    LINEAR = True
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    stride: Pair = (1, 1)
    padding: Padding = (0, 0)
    dilation: Pair = (1, 1)
    groups: Count = 1

    def __post_init__(self):
        self.stride, self.padding, self.dilation = map(_pair, (self.stride, self.padding, self.dilation))
        self.groups = int(self.groups)

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        if self.weight.dim() != 4:
            raise ShapeError("weight", f"weight must be 4-d, got {list(self.weight.shape)}")
        c_out, c_in_g, kh, kw = self.weight.shape
        if len(x) != 3:
            raise ShapeError("inputs", f"input must be [C, H, W], got {list(x)}")
        if self.groups < 1 or x[0] != c_in_g * self.groups or c_out % self.groups:
            raise ShapeError("groups", f"input channels {x[0]}, weight {list(self.weight.shape)} "
                                       f"and groups={self.groups} disagree")
        if self.bias is not None and tuple(self.bias.shape) != (c_out,):
            raise ShapeError("bias", f"bias shape {list(self.bias.shape)} != [{c_out}]")
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise ShapeError("stride", "stride and dilation must be >= 1 and padding >= 0")
        out = []
        for size, k, s, p, d in zip(x[1:], (kh, kw), self.stride, self.padding, self.dilation):
            n = (size + 2 * p - d * (k - 1) - 1) // s + 1
            if n < 1:
                raise ShapeError("padding", f"kernel does not fit the {list(x)} input")
            out.append(n)
        return (c_out, *out)
