"""Every node kind in every backend: one graph holding every kind (and its PPN form)
runs in the executor, in onnxruntime, through the NIR round trip, in the Lava
simulator and in hw_sim, each against the executor.  A new node kind must be added
to `models.every_kind_graph` (test_fuzz_graph_file checks that the seeds hold every
kind), and then this file fails for any backend that does not handle it."""
import math

import numpy as np
import pytest
import torch

import hw_sim
from ecmt import SpikingModel, ir
from exporters import nir as enir
from exporters.onnx import OnnxExportError
from exporters.onnx import export as onnx_export
from exporters.onnx import run as onnx_run
from exporters.verify import lockstep
from models import every_kind_graph

T = 4


@pytest.fixture(scope="module", params=["graded", "ppn"])
def graph(request):
    g = every_kind_graph()
    return g if request.param == "graded" else ir.expand_ppn(g)


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(5))


def test_the_graphs_hold_every_kind():
    kinds = {n.KIND for n in every_kind_graph()} | {n.KIND for n in ir.expand_ppn(every_kind_graph())}
    assert kinds == set(ir.NODE_KINDS)


def test_onnxruntime(graph, x, tmp_path):
    if graph.of_kind(ir.MTNeuronPPN):
        # PPN is the binary-spike export form (NIR --ppn, netx); ONNX takes the graded graph
        # and refuses this kind by name rather than writing something else
        with pytest.raises(OnnxExportError, match="mt_neuron_ppn"):
            onnx_export(graph, tmp_path / "g.onnx")
        assert not (tmp_path / "g.onnx").exists()
        return
    path = onnx_export(graph, tmp_path / "g.onnx", expose_spikes=True)
    estimates, spikes = onnx_run(path, x.numpy(), T)
    result = lockstep(graph, x, T, estimates, lambda node, t: spikes[(node, t)])
    assert result.max_rel_diff <= 1e-5, result


def test_nir_round_trip(graph, x, tmp_path):
    import nir
    enir.export(graph, tmp_path / "g.nir")
    nir.read(str(tmp_path / "g.nir"))
    back = enir.load(tmp_path / "g.nir")
    torch.testing.assert_close(SpikingModel(back)(x, T), SpikingModel(graph)(x, T), rtol=0, atol=1e-6)


def test_lava_simulator(graph, x):
    from exporters import lava as elava
    net = elava.build(graph, record_spikes=True)
    estimates = net.run(x.numpy(), T)
    if graph.of_kind(ir.MTNeuronPPN):
        # PPN neurons run in the host process (no MT process records their spikes): compare
        # the estimates directly
        ref = SpikingModel(graph)(x, T).numpy()
        assert np.abs(estimates - ref).max() <= 1e-5 * np.abs(ref).max()
        return
    result = lockstep(graph, x, T, estimates,
                      lambda node, t: np.stack([net.spike(node, t, i) for i in range(len(x))]))
    assert result.max_rel_diff <= 1e-5, result


@pytest.mark.parametrize("profile", ["cmos45-fp32", "loihi", "loihi-sanafe"])
def test_hw_sim_counts_and_prices_every_node(graph, x, profile):
    report = hw_sim.simulate(graph, x, T, profile, progress=False)
    r = report.result(profile)
    layers = {layer["name"]: layer for layer in r["layers"]}
    assert set(layers) == {n.name for n in graph}
    assert all(math.isfinite(layer["energy_j"]) and layer["energy_j"] >= 0 for layer in layers.values())
    # every node with work of its own is priced (constants, outputs of shape ops may cost nothing)
    for n in graph:
        if isinstance(n, (ir.Linear, ir.Conv2d, ir.NonlinearityECM, ir.ProductECM, ir.MaxPool2d,
                          ir.AvgPool2d, ir.Mean)):
            assert layers[n.name]["energy_j"] > 0, (profile, n.name, n.KIND)
    assert r["energy_j"] > 0 and all(math.isfinite(v) for v in r["latency_per_step_s"])


def test_analog_pass_of_the_ppn_form_is_the_graded_graphs(x):
    graded = every_kind_graph()
    ppn = ir.expand_ppn(graded)
    assert [n.name for n in ppn.of_kind(ir.MTNeuronPPN)] == ["mt2"]    # signed, per-channel thresholds
    torch.testing.assert_close(SpikingModel(ppn).analog(x), SpikingModel(graded).analog(x), rtol=1e-5, atol=1e-6)
