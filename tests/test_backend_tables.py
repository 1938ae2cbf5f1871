"""Every backend declares the node kinds it handles in one table (ecmt/ir/dispatch.py):
each table covers every kind of ir.NODE_KINDS (handled, or refused with a reason), a kind
added without an entry is reported missing by each of them, and running a graph that
holds such a kind fails in each backend with the project's error naming the node.
tests/test_every_backend.py checks that the declared handlers compute the right thing."""
import dataclasses
import importlib

import pytest
import torch

from ecmt import ir
from ecmt.runtime import GraphExecutor
from ecmt.errors import EcmtError
from ecmt.ir.dispatch import KindTable, Refused

# backend name -> the module whose KINDS table it is
BACKENDS = {
    "executor": "ecmt.runtime.executor",
    "ONNX": "exporters.onnx",
    "NIR": "exporters.nir.writer",
    "Lava": "exporters.lava.network",
    "netx": "exporters.lava.netx",
    "hw_sim counting": "hw_sim.counting",
    "hw_sim pricing": "hw_sim.costs",
    "hw_sim energy": "hw_sim.energy",
    "index routing": "ecmt.ir.analysis:ROUTES",     # shape ops for every backend that routes elements
    "NeuroBench": "ecmt.neurobench",
}


def table(backend: str) -> KindTable:
    module, _, name = BACKENDS[backend].partition(":")
    return getattr(importlib.import_module(module), name or "KINDS")


@dataclasses.dataclass(eq=False)
class FutureOp(ir.Node):
    """A node kind no backend has heard of (as a later change might add)."""
    KIND = "future_op"

    def infer_shape(self, shapes):
        return shapes[0]


@dataclasses.dataclass(eq=False)
class FutureNeuron(ir.MTNeuron):
    """A new kind derived from an existing one: MTNeuron's entry must not cover it."""
    KIND = "future_neuron"


@pytest.mark.parametrize("backend", BACKENDS)
def test_table_covers_every_kind(backend):
    t = table(backend)
    assert t.backend == backend
    assert "mt_neuron_ppn" in ir.NODE_KINDS and t.missing() == []
    for cls, entry in t.entries.items():
        # no stale entries: each key is a registered kind or a family base of some
        assert ir.NODE_KINDS.get(cls.KIND) is cls or any(issubclass(k, cls) for k in ir.NODE_KINDS.values()), cls
        if isinstance(entry, Refused):
            assert entry.reason.strip(), (backend, cls)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_new_kind_is_reported_missing(backend):
    kinds = {**ir.NODE_KINDS, FutureOp.KIND: FutureOp, FutureNeuron.KIND: FutureNeuron}
    assert table(backend).missing(kinds) == ["future_neuron", "future_op"]
    assert table(backend).missing() == []            # the copy changed nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_lookup_of_an_undeclared_kind_names_backend_and_node(backend):
    node = FutureOp("mystery", ("input",))
    with pytest.raises(EcmtError) as err:
        table(backend)(node)
    message = str(err.value)
    assert "'mystery'" in message and "future_op" in message and backend in message, message
    assert err.value.hint


def test_refused_kinds_raise_their_reason():
    from exporters.lava.netx import NetxLayoutError
    from exporters.onnx import OnnxExportError
    ppn = ir.MTNeuronPPN("n", ("x",), th_pos=torch.tensor(1.0), th_neg=None, levels=2)
    with pytest.raises(OnnxExportError, match="node 'n' \\(mt_neuron_ppn\\): no ONNX form") as err:
        table("ONNX")(ppn)
    assert "expand_ppn" in err.value.hint
    with pytest.raises(NetxLayoutError, match="node 'g' \\(gelu_ecm\\).*expectation compensation module"):
        table("netx")(ir.GELUECM("g", ("x",)))
    assert table("netx").refused()["scale"] == "netx has no scale block"
    assert set(table("ONNX").refused()) == {"mt_neuron_ppn"}


def test_lookup_follows_family_bases_but_not_other_kinds():
    shared = object()
    t = KindTable("test", {ir.NonlinearityECM: shared, ir.MTNeuron: "mt"})
    assert t.entry(ir.GELUECM) is shared and t.entry(ir.SoftmaxECM) is shared   # a family base: shared
    assert t.entry(ir.MTNeuron) == "mt"
    assert t.entry(ir.MTNeuronPPN) is None                    # a subclass kind is not the same kind
    assert "mt_neuron_ppn" in t.missing() and "gelu_ecm" not in t.missing()
    t = KindTable("test", {ir.MTNeuron: "mt", ir.MTNeuronPPN: "ppn"})
    assert t(ir.MTNeuronPPN("n", ("x",), th_pos=torch.tensor(1.0), th_neg=None, levels=2)) == "ppn"


@pytest.fixture
def future_graph(monkeypatch):
    """A valid graph holding the unknown kind (registered for the test only)."""
    monkeypatch.setitem(ir.NODE_KINDS, FutureOp.KIND, FutureOp)
    return ir.SpikingGraph([ir.Input("input", (), shape=(4,)),
                            ir.Linear("fc", ("input",), weight=torch.ones(4, 4), bias=None),
                            FutureOp("mystery", ("fc",)),
                            ir.Output("output", ("mystery",))])


def test_every_backend_refuses_a_graph_with_an_undeclared_kind(future_graph, tmp_path):
    from exporters import nir as enir
    from exporters.lava import netx
    from exporters.lava.network import LavaNetwork
    from exporters.onnx import export as onnx_export
    from hw_sim.costs import forward_work
    from hw_sim.counting import shape_work
    from hw_sim.energy import KINDS as energy_kinds
    from ecmt.ir import analysis
    from ecmt.neurobench import NeuroBenchModel
    node = future_graph["mystery"]
    runs = {
        "executor": lambda: GraphExecutor(future_graph),
        "ONNX": lambda: onnx_export(future_graph, tmp_path / "g.onnx"),
        "NIR": lambda: enir.export(future_graph, tmp_path / "g.nir"),
        "Lava": lambda: LavaNetwork(future_graph)._process(node),
        "netx": lambda: netx.stages(future_graph),
        "hw_sim counting": lambda: shape_work(future_graph, node),
        "hw_sim pricing": lambda: forward_work(future_graph, node),
        "hw_sim energy": lambda: energy_kinds(node),
        "index routing": lambda: analysis.route(node, torch.arange(4)),
        "NeuroBench": lambda: NeuroBenchModel(future_graph, T=2),
    }
    assert set(runs) == set(BACKENDS)
    for backend, run in runs.items():
        with pytest.raises(EcmtError, match="'mystery' \\(future_op\\)") as err:
            run()
        assert backend in str(err.value), (backend, str(err.value))
    assert list(tmp_path.iterdir()) == []             # no exporter left a file behind
