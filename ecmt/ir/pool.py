"""Spatial pooling over [C, H, W] maps."""
from __future__ import annotations

import dataclasses

from .node import Node, Padding, Pair, Shape, ShapeError


def _pool_shape(x: Shape, kernel, stride, padding) -> Shape:
    if len(x) != 3:
        raise ShapeError("inputs", f"input must be [C, H, W], got {list(x)}")
    out = []
    for size, k, s, p in zip(x[1:], kernel, stride, padding):
        n = (size + 2 * p - k) // s + 1
        if n < 1 or k < 1 or s < 1 or p < 0 or 2 * p > k:
            raise ShapeError("kernel_size", f"pooling {k}/{s}/{p} does not fit the {list(x)} input")
        out.append(n)
    return (x[0], *out)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(i) for i in v)


@dataclasses.dataclass(eq=False)
class AvgPool2d(Node):
    """y_t = average pooling of x_t (zero padding counted in the average).
    Linear, so spikes in give a weighted sum out."""
    KIND = "avgpool2d"
    LINEAR = True
    kernel_size: Pair
    stride: Pair
    padding: Padding = (0, 0)

    def __post_init__(self):
        self.kernel_size, self.stride, self.padding = map(_pair, (self.kernel_size, self.stride, self.padding))

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        return _pool_shape(shapes[0], self.kernel_size, self.stride, self.padding)


@dataclasses.dataclass(eq=False)
class MaxPool2d(Node):
    """Max pooling as an ECM: running output sum t * maxpool(S_t / t).
    (Max pooling of spikes is not the spike of the max; see docs.)"""
    KIND = "maxpool2d_ecm"
    kernel_size: Pair
    stride: Pair
    padding: Padding = (0, 0)

    def __post_init__(self):
        self.kernel_size, self.stride, self.padding = map(_pair, (self.kernel_size, self.stride, self.padding))

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        return _pool_shape(shapes[0], self.kernel_size, self.stride, self.padding)
