"""SpikingGraph: the typed DAG every exporter and the hardware simulator read."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from ..errors import GraphError
from .arith import Add, Scale
from .ecm import GELUECM, ElementwiseECM, LayerNormECM, ProductECM, ReLUECM, SoftmaxECM
from .io import Constant, Input, Output
from .neuron import MTNeuron
from .node import Node, Shape, ShapeError
from .pool import AvgPool2d, MaxPool2d
from .shape import Concat, Mean, Permute, Reshape, Select, Slice
from .synapse import Conv2d, Linear

NODE_KINDS: dict[str, type[Node]] = {cls.KIND: cls for cls in (
    Input, Constant, Output, Linear, Conv2d, MTNeuron, GELUECM, ElementwiseECM, ReLUECM, SoftmaxECM,
    LayerNormECM, ProductECM, Add, Scale, Reshape, Permute, Slice, Select, Concat, Mean,
    AvgPool2d, MaxPool2d)}


def register(cls: type[Node]) -> type[Node]:
    """Add a node kind defined outside this module (e.g. ppn.py)."""
    NODE_KINDS[cls.KIND] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    shape: Shape        # per sample
    spiking: bool       # carries MT spikes (else analog values)


class SpikingGraph:
    """Nodes in topological order, one Input, one Output.

    ``shapes[name]`` and ``spiking[name]`` describe each node's output (and so
    every edge leaving it); both are derived by ``validate``.  ``meta`` is
    free-form JSON (conversion settings, source model).  The file format and the
    summary are plain functions beside the node kinds (``ecmt.ir.save_graph``,
    ``load_graph``, ``summarize``), so this module imports neither.
    """

    FORMAT = "ecmt.spiking_graph"
    VERSION = 1

    def __init__(self, nodes: Iterable[Node], meta: dict | None = None, *, validate: bool = True):
        self.nodes: dict[str, Node] = {}
        for node in nodes:
            if node.name in self.nodes:
                raise GraphError(f"node {node.name!r}: duplicate name")
            self.nodes[node.name] = node
        self.meta = dict(meta or {})
        self.shapes: dict[str, Shape] = {}
        self.spiking: dict[str, bool] = {}
        if validate:
            self.validate()

    # -- structure -----------------------------------------------------------
    def __iter__(self):
        return iter(self.nodes.values())

    def __len__(self):
        return len(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    @property
    def input(self) -> Input:
        return next(n for n in self if isinstance(n, Input))

    @property
    def output(self) -> Output:
        return next(n for n in self if isinstance(n, Output))

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in self.nodes}
        for node in self:
            for src in node.inputs:
                out[src].append(node.name)
        return out

    def edges(self) -> list[Edge]:
        return [Edge(src, node.name, self.shapes[src], self.spiking[src])
                for node in self for src in node.inputs]

    def of_kind(self, *classes: type[Node]) -> list[Node]:
        return [n for n in self if isinstance(n, classes)]

    def param_count(self) -> int:
        return sum(n.param_count() for n in self)

    # -- validation ----------------------------------------------------------
    def validate(self) -> None:
        """Check the whole graph; raise GraphError naming the node and field."""
        seen: set[str] = set()
        shapes: dict[str, Shape] = {}
        spiking: dict[str, bool] = {}
        for node in self:
            where = f"node {node.name!r} ({node.KIND or type(node).__name__})"
            if not node.name or not isinstance(node.name, str):
                raise GraphError(f"{where}: field name: must be a non-empty string")
            if type(node).KIND not in NODE_KINDS or NODE_KINDS[type(node).KIND] is not type(node):
                raise GraphError(f"{where}: unknown op kind {type(node).__name__}")
            node.inputs = tuple(node.inputs)
            arity = type(node).ARITY
            if (arity is None and not node.inputs) or (arity is not None and len(node.inputs) != arity):
                raise GraphError(f"{where}: field inputs: takes {arity if arity is not None else '>= 1'} "
                                 f"inputs, got {len(node.inputs)}")
            for src in node.inputs:
                if src not in self.nodes:
                    raise GraphError(f"{where}: field inputs: dangling edge from unknown node {src!r}")
                if src not in seen:
                    raise GraphError(f"{where}: field inputs: {src!r} is not defined before it "
                                     "(nodes must be in topological order; cycles are not allowed)")
            self._check_tensors(node, where)
            try:
                shapes[node.name] = tuple(int(d) for d in node.infer_shape([shapes[s] for s in node.inputs]))
            except ShapeError as err:
                raise GraphError(f"{where}: field {err.field}: {err}") from None
            spiking[node.name] = node.carries_spikes([spiking[s] for s in node.inputs])
            seen.add(node.name)
        for cls in (Input, Output):
            found = [n.name for n in self if isinstance(n, cls)]
            if len(found) != 1:
                raise GraphError(f"graph: field nodes: needs exactly one {cls.KIND} node, found {found}")
        self._check_reaches_output()
        self.shapes, self.spiking = shapes, spiking

    @staticmethod
    def _check_tensors(node: Node, where: str) -> None:
        for field in node.TENSORS:
            t = getattr(node, field, None)
            if t is None:
                if field not in node.OPTIONAL_TENSORS:
                    raise GraphError(f"{where}: field {field}: missing tensor")
                continue
            if not isinstance(t, torch.Tensor):
                raise GraphError(f"{where}: field {field}: expected a tensor, got {type(t).__name__}")
            if t.dtype != torch.float32:
                raise GraphError(f"{where}: field {field}: wrong dtype {t.dtype}, expected torch.float32")
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                raise GraphError(f"{where}: field {field}: {int((~finite).sum())} of {t.numel()} values are "
                                 "NaN or infinite")

    def _check_reaches_output(self) -> None:
        live = {self.output.name}
        for node in reversed(list(self)):
            if node.name in live:
                live.update(node.inputs)
        dead = [n for n in self.nodes if n not in live]
        if dead:
            raise GraphError(f"node {dead[0]!r}: field inputs: does not reach the output "
                             f"({len(dead)} dead node(s): {dead[:5]})")
