"""Expectation compensation modules (docs/method.md §3).

A nonlinearity ECM keeps the running input sum S_t and emits

    y_t = t * f(S_t / t) - (t - 1) * f(S_{t-1} / (t - 1)),   y_1 = f(x_1),

so that its running output sum is exactly t * f(S_t / t).  f runs on analog
fp32 values.  A product ECM does the same for a product of two streams.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated

import torch

from .node import Count, Node, Range, Shape, ShapeError, normalize_axis


@dataclasses.dataclass(eq=False)
class NonlinearityECM(Node):
    """Base of the elementwise / row-wise ECMs; f is named by KIND."""

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        return shapes[0]


@dataclasses.dataclass(eq=False)
class GELUECM(NonlinearityECM):
    """ECM with f = GELU (approximate: "none" for erf, or "tanh")."""
    KIND = "gelu_ecm"
    approximate: str = "none"

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        if self.approximate not in ("none", "tanh"):
            raise ShapeError("approximate", f"approximate must be 'none' or 'tanh', got {self.approximate!r}")
        return shapes[0]


@dataclasses.dataclass(eq=False)
class ReLUECM(NonlinearityECM):
    """ECM with f = ReLU.  The converter replaces it by a positive-only MT
    neuron; it remains valid IR (an analog ReLU with compensation)."""
    KIND = "relu_ecm"


@dataclasses.dataclass(eq=False)
class ElementwiseECM(NonlinearityECM):
    """ECM with an elementwise f named by ``function``: "silu" (x sigmoid(x), the
    SwiGLU gate's activation), "sigmoid" or "hardswish"."""
    KIND = "elementwise_ecm"
    FUNCTIONS = ("silu", "sigmoid", "hardswish")
    function: str = "silu"

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        if self.function not in self.FUNCTIONS:
            raise ShapeError("function", f"function must be one of {', '.join(self.FUNCTIONS)}, "
                                         f"got {self.function!r}")
        return shapes[0]


@dataclasses.dataclass(eq=False)
class SoftmaxECM(NonlinearityECM):
    """ECM with f = softmax along ``axis`` (a per-sample axis)."""
    KIND = "softmax_ecm"
    axis: int = -1

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        self.axis = normalize_axis(self.axis, len(shapes[0]))
        return shapes[0]


@dataclasses.dataclass(eq=False)
class LayerNormECM(NonlinearityECM):
    """ECM with f = LayerNorm over the last axis, with its affine parameters."""
    KIND = "layernorm_ecm"
    TENSORS = ("weight", "bias")
    OPTIONAL_TENSORS = ("weight", "bias")
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    eps: Annotated[float, Range(gt=0)] = 1e-5
    features: Count = 0

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        if not x or x[-1] != self.features:
            raise ShapeError("features", f"input {list(x)} does not end in {self.features} features")
        for field in ("weight", "bias"):
            t = getattr(self, field)
            if t is not None and tuple(t.shape) != (self.features,):
                raise ShapeError(field, f"{field} shape {list(t.shape)} != [{self.features}]")
        if not self.eps > 0:
            raise ShapeError("eps", f"eps must be > 0, got {self.eps}")
        return x


@dataclasses.dataclass(eq=False)
class ProductECM(Node):
    """Product of two streams, A_t @ B_t (each optionally transposed in its last
    two axes) times ``scale``.  With running sums A_t, B_t the running output
    is scale * A_t @ B_t / t, so the increment is

        z_t = scale * (A_t @ B_t / t - A_{t-1} @ B_{t-1} / (t - 1)).

    The spiking (incremental) form computes the same from the spike
    increments x_t, y_t: A_t @ B_t = A_{t-1} @ B_{t-1} + x_t @ B_{t-1}
    + A_{t-1} @ y_t + x_t @ y_t.  Operands: [..., M, K] and [..., K, N] after
    the transposes, with equal leading axes.
    """
    KIND = "product_ecm"
    ARITY = 2
    transpose_a: bool = False
    transpose_b: bool = False
    scale: float = 1.0

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        a, b = (list(s) for s in shapes)
        if len(a) < 2 or len(b) < 2:
            raise ShapeError("inputs", f"operands must be at least 2-d, got {a} and {b}")
        if self.transpose_a:
            a[-1], a[-2] = a[-2], a[-1]
        if self.transpose_b:
            b[-1], b[-2] = b[-2], b[-1]
        if a[:-2] != b[:-2] or a[-1] != b[-2]:
            raise ShapeError("inputs", f"operands {a} @ {b} (after transposes) do not match")
        return (*a[:-1], b[-1])
