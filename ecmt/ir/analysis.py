"""Graph analyses, one definition each: every backend calls these instead of re-deriving them.

They read node traits (``SHAPE_ONLY``, ``carries_spikes``, the MT neuron family,
arity), not tuples of classes, and take a SpikingGraph or a mapping name -> node in
topological order (the converter's passes run them before a graph exists):

* ``spiking(nodes)``: which outputs carry MT spikes (each kind's ``carries_spikes``:
  an MT neuron's, and a shape-only node's whose inputs all carry spikes).
* ``static_nodes(graph)``: nodes whose per-step output is the same at every step.
  The input image is fed unchanged every step and constants are added every step,
  so sources are static, and so is any node whose inputs all are, except an MT
  neuron: its spikes change from step to step.  Computed once per run.
* ``constant_nodes(graph)``: nodes whose value does not depend on the data (no path
  from the input): one batch element stands for every sample.
* ``producer(graph, name)``: the node behind `name`'s output through single-input
  shape ops, and those ops; ``spike_source(graph, name)`` is the MT neuron case,
  with the map from `name`'s elements to the neuron's.
* ``route(graph, node, idx)``: a shape op applied to a tensor of element numbers,
  declared per kind in ``ROUTES`` (tests/test_backend_tables.py fails when a
  shape-only kind has no entry).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping

import torch

from .arith import Add, Scale
from .dispatch import KindTable, Refused
from .ecm import NonlinearityECM, ProductECM
from .io import Constant, Input, Output
from .neuron import MTNeuron
from .node import Node
from .pool import AvgPool2d, MaxPool2d
from .ppn import MTNeuronPPN
from .shape import Concat, Mean, Permute, Reshape, Select, Slice
from .synapse import Conv2d, Linear


def _nodes(graph) -> Mapping[str, Node]:
    """name -> node, in topological order, of a SpikingGraph or of a mapping."""
    return graph if isinstance(graph, Mapping) else graph.nodes


# -- what carries spikes, what repeats, what needs no data -------------------------------------
def spiking(nodes: Iterable[Node]) -> dict[str, bool]:
    """name -> whether the node's output carries MT spikes (nodes in topological order)."""
    out: dict[str, bool] = {}
    for n in nodes:
        out[n.name] = n.carries_spikes([out[s] for s in n.inputs])
    return out


def static_nodes(graph) -> set[str]:
    """Nodes whose per-step output is the same at every step (see the module docstring)."""
    static: set[str] = set()
    for n in _nodes(graph).values():
        if not n.inputs or (not isinstance(n, MTNeuron) and all(s in static for s in n.inputs)):
            static.add(n.name)
    return static


def constant_nodes(graph) -> set[str]:
    """Nodes whose value does not depend on the data: no path from the input."""
    nodes = _nodes(graph)
    data: set[str] = set()
    for n in nodes.values():
        if isinstance(n, Input) or any(s in data for s in n.inputs):
            data.add(n.name)
    return {name for name in nodes if name not in data}


# -- index routing through shape ops ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Route:
    """How a shape op moves its input's elements: ``apply(node, idx)`` maps a tensor shaped
    as the input (element numbers) to one shaped as the output; ``keeps_all``: each input
    element appears exactly once in the output, so a count over one is a count over the other."""
    apply: Callable[[Node, torch.Tensor], torch.Tensor]
    keeps_all: bool


_VALUES = Refused("computes new values: element numbers do not route through it")

ROUTES = KindTable("index routing", {
    Reshape: Route(lambda n, idx: idx.reshape(n.shape), True),
    Permute: Route(lambda n, idx: idx.permute(*n.dims), True),
    Select: Route(lambda n, idx: idx.select(n.axis, n.index), False),
    Slice: Route(lambda n, idx: idx.narrow(n.axis, n.start, n.stop - n.start), False),
    Concat: Refused("joins several inputs: its elements come from more than one tensor"),
    Output: Refused("the readout: its values leave the graph"),
    **{cls: _VALUES for cls in (Input, Constant, Linear, Conv2d, MTNeuron, MTNeuronPPN, NonlinearityECM,
                                ProductECM, Add, Scale, Mean, AvgPool2d, MaxPool2d)},
})


def route(node: Node, idx: torch.Tensor) -> torch.Tensor:
    """`idx` (shaped as `node`'s input) moved as `node` moves its input's elements; raises,
    naming the node, for a kind that is not a single-input shape op."""
    return ROUTES(node).apply(node, idx)


def routes(node: Node) -> bool:
    """Whether element numbers route through `node` (a single-input shape op)."""
    return isinstance(ROUTES.entry(type(node)), Route)


# -- what feeds an input --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Producer:
    """The node behind an output through single-input shape ops, and those ops (from the
    producer's side)."""
    node: Node
    path: tuple[Node, ...]

    @property
    def keeps_all(self) -> bool:
        """Every element of the producer reaches the output exactly once (reshapes, permutes)."""
        return all(ROUTES(n).keeps_all for n in self.path)

    def index(self, shape: tuple[int, ...]) -> torch.Tensor:
        """For each element of the output, the producer's element it is (flat numbers, shaped
        as the output); `shape` is the producer's output shape."""
        idx = torch.arange(math.prod(shape)).view(shape)
        for n in self.path:
            idx = route(n, idx)
        return idx


def producer(graph, name: str) -> Producer:
    """What `name`'s output is, seen through the single-input shape ops before it."""
    nodes = _nodes(graph)
    node, path = nodes[name], []
    while routes(node):
        path.append(node)
        node = nodes[node.inputs[0]]
    return Producer(node, tuple(reversed(path)))


@dataclasses.dataclass(frozen=True)
class SpikeSource:
    """The MT neuron whose spikes reach an output unchanged in value, through shape ops."""
    neuron: MTNeuron
    path: tuple[Node, ...]

    @property
    def keeps_all(self) -> bool:
        """The output holds every spike of the neuron exactly once (reshapes and permutes
        only), so its number of non-zero elements is the neuron's."""
        return Producer(self.neuron, self.path).keeps_all

    def index(self, graph) -> torch.Tensor:
        """For each element of the output, the neuron's element behind it (flat numbers)."""
        return Producer(self.neuron, self.path).index(tuple(graph.shapes[self.neuron.name]))


def spike_source(graph, name: str) -> SpikeSource | None:
    """The MT neuron whose spikes `name` outputs unchanged in value (through single-input
    shape ops), or None when `name`'s output is not one neuron's spikes."""
    p = producer(graph, name)
    return SpikeSource(p.node, p.path) if isinstance(p.node, MTNeuron) else None
