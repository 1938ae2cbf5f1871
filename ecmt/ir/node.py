"""The base record every IR node kind derives from.

A node is a typed, torch-free description of one operator.  Its parameters are
dataclass fields: tensors (``torch.Tensor``, float32) are listed in
``TENSORS``; every other field is a JSON-able attribute.  ``infer_shape``
derives the per-sample output shape (no batch axis) from the input shapes and
raises ``ShapeError`` with the field at fault.  What a node computes *per time
step* is stated in each kind's docstring; the runtime implements it.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar

import torch

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric attribute (of each element, for a tuple), written into
    its annotation, e.g. ``levels: Annotated[int, Range(ge=1, le=32)]``.  The graph
    loader checks every attribute against its annotation before building a node."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def violated(self, v) -> str | None:
        if self.ge is not None and not v >= self.ge:
            return f">= {self.ge:g}"
        if self.gt is not None and not v > self.gt:
            return f"> {self.gt:g}"
        if self.le is not None and not v <= self.le:
            return f"<= {self.le:g}"
        return None


Count = Annotated[int, Range(ge=1)]             # a size: features, groups, levels
Index = Annotated[int, Range(ge=0)]
Pair = Annotated[tuple[int, int], Range(ge=1)]  # stride, kernel, dilation
Padding = Annotated[tuple[int, int], Range(ge=0)]
Dims = Annotated[tuple[int, ...], Range(ge=1)]  # a shape


class ShapeError(ValueError):
    """Raised by infer_shape; `field` names the attribute or input at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(eq=False)
class Node:
    KIND: ClassVar[str] = ""
    ARITY: ClassVar[int | None] = 1          # None: any number >= 1
    TENSORS: ClassVar[tuple[str, ...]] = ()   # fields holding torch tensors
    OPTIONAL_TENSORS: ClassVar[tuple[str, ...]] = ()
    # Linear in its input increments, so per-step increments of a constant
    # stream stay constant and running sums commute with it.
    LINEAR: ClassVar[bool] = False
    # Passes spikes through unchanged (only moves or selects elements).
    SHAPE_ONLY: ClassVar[bool] = False

    name: str
    inputs: tuple[str, ...]
    # Free-form JSON metadata (source module, calibration settings); round-trips.
    meta: dict = dataclasses.field(default_factory=dict, kw_only=True)

    def infer_shape(self, shapes: list[Shape]) -> Shape:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def carries_spikes(cls, inputs_spiking) -> bool:
        """Whether this kind's output carries MT spikes, given whether each of its inputs
        does: a shape-only kind passes spikes on (ecmt.ir.analysis.spiking)."""
        return cls.SHAPE_ONLY and all(inputs_spiking)

    # -- generic field access used by serialization and validation -------------
    def attr_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)
                if f.name not in ("name", "inputs", "meta") and f.name not in self.TENSORS]

    def attrs(self) -> dict:
        return {k: getattr(self, k) for k in self.attr_names()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.TENSORS if getattr(self, k) is not None}

    def param_count(self) -> int:
        return sum(t.numel() for t in self.tensors().values())


def normalize_axis(axis: int, ndim: int, field: str = "axis") -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(field, f"axis {axis} out of range for a {ndim}-d input")
    return axis % ndim


def broadcast(a: Shape, b: Shape, field: str) -> Shape:
    try:
        return tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        raise ShapeError(field, f"shapes {list(a)} and {list(b)} do not broadcast") from None
