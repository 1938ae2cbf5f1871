"""GraphExecutor(capture=True): each step traced into one compiled function must
compute what the node-by-node executor computes (the same kernels; only the fusion,
and so the rounding, differs), and fall back to node by node where it cannot apply."""
import torch

from ecmt import SpikingModel, ir
from ecmt.runtime import GraphExecutor
from models import every_kind_graph

T = 5


def test_captured_step_matches_node_by_node_for_every_kind():
    torch.manual_seed(0)
    graph = every_kind_graph()
    captured = GraphExecutor(graph, capture=True)
    assert captured.capturable()
    for batch in (3, 5):                 # one compiled graph per batch size
        x = torch.randn(batch, 1, 6, 6, generator=torch.Generator().manual_seed(batch))
        reference = GraphExecutor(graph).run(x, T)
        torch.testing.assert_close(captured.run(x, T), reference, rtol=0, atol=1e-5)
    assert captured._captured is not None        # it did run captured (not the fallback)
    x = torch.randn(3, 1, 6, 6)          # a new executor, the same graph and shapes
    torch.testing.assert_close(SpikingModel(graph, capture=True)(x, T), SpikingModel(graph)(x, T),
                               rtol=0, atol=1e-5)


def test_static_ecms_keep_their_first_step():
    """ECMs on the constant input are static: computed once, outside the captured step."""
    g = torch.Generator().manual_seed(2)
    graph = ir.SpikingGraph([
        ir.Input("input", (), shape=(5, 4)),
        ir.LayerNormECM("ln", ("input",), weight=torch.rand(4, generator=g) + 0.5,
                        bias=torch.randn(4, generator=g), eps=1e-5, features=4),
        ir.MTNeuron("mt", ("ln",), th_pos=torch.tensor(0.25), th_neg=torch.tensor(0.25), levels=6),
        ir.Linear("fc", ("mt",), weight=torch.randn(4, 4, generator=g), bias=None),
        ir.SoftmaxECM("sm", ("fc",), axis=-1),
        ir.Output("output", ("sm",)),
    ])
    x = torch.randn(3, 5, 4, generator=g)
    captured = GraphExecutor(graph, capture=True)
    assert captured.steps[1].static and not captured.steps[4].static
    torch.testing.assert_close(captured.run(x, T), GraphExecutor(graph).run(x, T), rtol=0, atol=1e-5)
    assert captured._captured is not None


def test_observers_and_other_states_run_node_by_node():
    graph = every_kind_graph()
    x = torch.randn(2, 1, 6, 6)
    captured = GraphExecutor(graph, capture=True)
    seen = []
    out = captured.run(x, 3, observer=lambda node, inputs, o, t: seen.append((node.name, t)))
    assert len(seen) == 3 * len(graph.nodes) and captured._captured is None
    assert torch.equal(out, GraphExecutor(graph).run(x, 3))
    # PPN neurons and event codes are not captured: the same numbers, node by node
    assert not GraphExecutor(ir.expand_ppn(graph), capture=True).capturable()
    assert not GraphExecutor(graph, capture=True, record_levels=True).capturable()
    ppn = ir.expand_ppn(graph)
    assert torch.equal(GraphExecutor(ppn, capture=True).run(x, 3), GraphExecutor(ppn).run(x, 3))
