"""Shape-only operators.  Axes are per-sample (the batch axis is implicit)."""
from __future__ import annotations

import dataclasses
import math

from .node import Count, Dims, Index, Node, Shape, ShapeError, normalize_axis


@dataclasses.dataclass(eq=False)
class Reshape(Node):
    """y = x reshaped to ``shape`` (row-major, like torch.reshape)."""
    KIND = "reshape"
    LINEAR = True
    SHAPE_ONLY = True
    shape: Dims

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        self.shape = tuple(int(d) for d in self.shape)
        if math.prod(self.shape) != math.prod(x) or min(self.shape, default=1) < 1:
            raise ShapeError("shape", f"cannot reshape {list(x)} to {list(self.shape)}")
        return self.shape


@dataclasses.dataclass(eq=False)
class Permute(Node):
    """y = x with its axes permuted: y.shape[i] = x.shape[dims[i]]."""
    KIND = "permute"
    LINEAR = True
    SHAPE_ONLY = True
    dims: tuple[int, ...]

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        self.dims = tuple(int(d) for d in self.dims)
        if sorted(self.dims) != list(range(len(x))):
            raise ShapeError("dims", f"dims {list(self.dims)} is not a permutation of {len(x)} axes")
        return tuple(x[d] for d in self.dims)


@dataclasses.dataclass(eq=False)
class Slice(Node):
    """y = x[start:stop] along ``axis`` (step 1)."""
    KIND = "slice"
    LINEAR = True
    SHAPE_ONLY = True
    axis: int
    start: Index
    stop: Count

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        self.axis = normalize_axis(self.axis, len(x))
        if not 0 <= self.start < self.stop <= x[self.axis]:
            raise ShapeError("start", f"slice [{self.start}:{self.stop}] outside axis of size {x[self.axis]}")
        return (*x[:self.axis], self.stop - self.start, *x[self.axis + 1:])


@dataclasses.dataclass(eq=False)
class Select(Node):
    """y = x[index] along ``axis``, dropping that axis (class-token select, unbind)."""
    KIND = "select"
    LINEAR = True
    SHAPE_ONLY = True
    axis: int
    index: Index

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        self.axis = normalize_axis(self.axis, len(x))
        if not 0 <= self.index < x[self.axis]:
            raise ShapeError("index", f"index {self.index} outside axis of size {x[self.axis]}")
        return (*x[:self.axis], *x[self.axis + 1:])


@dataclasses.dataclass(eq=False)
class Concat(Node):
    """y = inputs concatenated along ``axis`` (class token before the patches)."""
    KIND = "concat"
    ARITY = None
    LINEAR = True
    SHAPE_ONLY = True
    axis: int

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        self.axis = normalize_axis(self.axis, len(shapes[0]))
        rest = [s[:self.axis] + s[self.axis + 1:] for s in shapes]
        if any(len(s) != len(shapes[0]) for s in shapes) or any(r != rest[0] for r in rest):
            raise ShapeError("inputs", f"cannot concatenate {[list(s) for s in shapes]} on axis {self.axis}")
        return (*shapes[0][:self.axis], sum(s[self.axis] for s in shapes), *shapes[0][self.axis + 1:])


@dataclasses.dataclass(eq=False)
class Mean(Node):
    """y = mean of x along ``axis`` (token average pooling), dropping that axis."""
    KIND = "mean"
    LINEAR = True
    axis: int

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        self.axis = normalize_axis(self.axis, len(x))
        return (*x[:self.axis], *x[self.axis + 1:])
