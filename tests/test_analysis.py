"""ecmt.ir.analysis: each graph analysis, one definition, checked against the executor
(index routing) and against hand-built graphs whose answers are known."""
import dataclasses

import pytest
import torch

from ecmt import SpikingModel, ir
from ecmt.errors import EcmtError
from ecmt.ir import analysis


def mt(name, src, levels=2):
    return ir.MTNeuron(name, (src,), th_pos=torch.tensor(1.0), th_neg=torch.tensor(1.0), levels=levels)


@pytest.fixture
def graph():
    """input -> fc -> mt -> reshape -> permute -> {select -> lin2, fc2}; a constant branch."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    return ir.SpikingGraph([
        ir.Input("input", (), shape=(6, 4)),
        ir.Linear("fc", ("input",), weight=r(4, 4), bias=None),
        mt("mt", "fc"),
        ir.Reshape("rs", ("mt",), shape=(2, 3, 4)),
        ir.Permute("pm", ("rs",), dims=(1, 0, 2)),
        ir.Select("sel", ("pm",), axis=1, index=1),
        ir.Linear("lin2", ("sel",), weight=r(4, 4), bias=None),
        ir.Linear("fc2", ("pm",), weight=r(4, 4), bias=None),
        ir.Constant("c", (), value=r(3, 4)),
        ir.Scale("cs", ("c",), factor=torch.tensor(2.0)),
        ir.Concat("cat", ("cs", "lin2"), axis=0),
        ir.Mean("m", ("cat",), axis=0),
        ir.Mean("m2", ("fc2",), axis=0),
        ir.Mean("m3", ("m2",), axis=0),
        ir.Add("out_sum", ("m", "m3")),
        ir.Output("output", ("out_sum",)),
    ])


def test_spiking_propagates_through_shape_ops_only(graph):
    s = analysis.spiking(graph)
    assert s == graph.spiking                              # the graph's own edges agree
    assert {n for n, v in s.items() if v} == {"mt", "rs", "pm", "sel"}
    # a concat carries spikes only when every input does; the readout never does
    nodes = [ir.Input("input", (), shape=(4,)), mt("a", "input"), mt("b", "input"),
             ir.Concat("both", ("a", "b"), axis=0), ir.Concat("mixed", ("a", "input"), axis=0),
             ir.Output("output", ("both",))]
    assert analysis.spiking(nodes) == {"input": False, "a": True, "b": True, "both": True, "mixed": False,
                                       "output": False}


def test_static_nodes_repeat_every_step_and_stop_at_neurons(graph):
    assert analysis.static_nodes(graph) == {"input", "fc", "c", "cs"}


def test_constant_nodes_have_no_path_from_the_input(graph):
    assert analysis.constant_nodes(graph) == {"c", "cs"}


def test_spike_source_through_shape_ops_with_its_index_map(graph):
    src = analysis.spike_source(graph, "pm")
    assert src.neuron.name == "mt" and [n.name for n in src.path] == ["rs", "pm"] and src.keeps_all
    sel = analysis.spike_source(graph, "sel")
    assert not sel.keeps_all                               # a select drops elements
    # the index map is what the ops do to the neuron's own element numbers
    numbers = torch.arange(24).view(6, 4)
    assert torch.equal(src.index(graph), numbers.reshape(2, 3, 4).permute(1, 0, 2))
    assert torch.equal(sel.index(graph), numbers.reshape(2, 3, 4).permute(1, 0, 2)[:, 1])
    assert analysis.spike_source(graph, "mt").path == ()
    assert analysis.spike_source(graph, "fc") is None      # analog
    assert analysis.spike_source(graph, "cat") is None     # a concat is no single source
    assert analysis.producer(graph, "sel").node.name == "mt"
    assert analysis.producer(graph, "cat").node.name == "cat"


@pytest.mark.parametrize("op", [
    ir.Reshape("op", ("input",), shape=(4, 6)),
    ir.Permute("op", ("input",), dims=(2, 0, 1)),
    ir.Select("op", ("input",), axis=1, index=2),
    ir.Slice("op", ("input",), axis=2, start=1, stop=3),
])
def test_route_moves_elements_as_the_executor_does(op):
    """The executor's run of the shape op on element numbers is the oracle for route()."""
    g = ir.SpikingGraph([ir.Input("input", (), shape=(2, 3, 4)), op, ir.Output("output", ("op",))])
    numbers = torch.arange(24, dtype=torch.float32).view(1, 2, 3, 4)
    expected = SpikingModel(g).analog(numbers)[0].long()
    assert torch.equal(analysis.route(g["op"], torch.arange(24).view(2, 3, 4)), expected)
    assert analysis.ROUTES(g["op"]).keeps_all == (expected.numel() == 24)


def test_every_shape_only_kind_declares_its_routing():
    for kind, cls in ir.NODE_KINDS.items():
        if cls.SHAPE_ONLY:
            assert cls in analysis.ROUTES.entries, kind     # declared for the kind itself

    @dataclasses.dataclass(eq=False)
    class Flip(ir.Node):            # a new shape op, as a later change might add
        KIND = "flip"
        SHAPE_ONLY = True

        def infer_shape(self, shapes):
            return shapes[0]
    assert analysis.ROUTES.missing({**ir.NODE_KINDS, "flip": Flip}) == ["flip"]
    with pytest.raises(EcmtError, match="'f' \\(flip\\).*index routing"):
        analysis.route(Flip("f", ("x",)), torch.arange(3))
    with pytest.raises(EcmtError, match="computes new values"):
        analysis.route(ir.Mean("m", ("x",), axis=0), torch.arange(3))
