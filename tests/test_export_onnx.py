"""ONNX export, run in onnxruntime, against the IR executor."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

import ecmt
from ecmt import ir
from ecmt import SpikingModel, save_graph
from exporters.onnx import OnnxExportError, build_model, export, run
from exporters.verify import lockstep

T = 4


def assert_matches(spiking, tmp_path, x):
    """Both forms, in onnxruntime, against the executor in lockstep (exporters/verify.py)."""
    for unroll in (None, T):
        path = export(spiking.graph, tmp_path / f"m{unroll}.onnx", unroll=unroll, expose_spikes=True)
        estimates, spikes = run(path, x.numpy(), T)
        assert len(spikes) == T * len(spiking.graph.of_kind(ir.MTNeuron))
        result = lockstep(spiking.graph, x, T, estimates, lambda node, t: spikes[(node, t)])
        assert result.max_rel_diff <= 1e-5, (unroll, result)
        assert result.ties <= 1e-5 * result.decisions, (unroll, result)


def test_plain_export_runs_free_without_verification_outputs(tmp_path):
    from models import small_graph
    graph = small_graph()
    x = torch.randn(3, 6)
    estimates, spikes = run(export(graph, tmp_path / "g.onnx"), x.numpy(), 8)
    assert spikes == {}
    ref = SpikingModel(graph)(x, 8).numpy()
    assert np.abs(estimates - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.fixture
def demo_spiking(demo_vit_graph):
    return SpikingModel(demo_vit_graph)


@pytest.mark.parametrize("batch", [1, 3])
def test_demo_vit_matches_executor(demo_spiking, tmp_path, batch, fashion_mnist):
    assert_matches(demo_spiking, tmp_path, fashion_mnist[1].images[:batch])


@pytest.mark.parametrize("name, kwargs", [
    ("vit_tiny_patch16_224", {"depth": 2}),         # two blocks show what twelve would
    ("deit_tiny_distilled_patch16_224", {"depth": 2}),
])
def test_timm_models_match_executor(tmp_path, name, kwargs):
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    gen = torch.Generator().manual_seed(0)
    spiking = ecmt.convert(model, torch.randn(4, 3, 224, 224, generator=gen), progress=False)
    for batch in (1, 3):
        assert_matches(spiking, tmp_path, torch.randn(batch, 3, 224, 224, generator=gen))


def test_standard_ops_opset_and_dynamic_batch(demo_spiking, tmp_path):
    path = export(demo_spiking.graph, tmp_path / "m.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert all(n.domain == "" for n in model.graph.node)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = json.loads({p.key: p.value for p in model.metadata_props}["ecmt.export"])
    n_neurons = len(demo_spiking.graph.of_kind(ir.MTNeuron))
    assert sum(s["input"].endswith(".v") for s in meta["states"]) == n_neurons
    assert len(model.graph.input) == 2 + len(meta["states"])


class Unknown(ir.Scale):
    """A node kind an exporter has never heard of (as a plugin might add)."""
    KIND = "future_op"


def test_inexpressible_node_is_named_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setitem(ir.NODE_KINDS, Unknown.KIND, Unknown)
    graph = ecmt.SpikingGraph([ir.Input("input", (), shape=(3,)),
                               Unknown("mystery", ("input",), factor=torch.tensor(2.0)),
                               ir.Output("output", ("mystery",))])
    with pytest.raises(OnnxExportError, match="node 'mystery' \\(future_op\\)"):
        export(graph, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_export(demo_spiking, tmp_path, capsys):
    from ecmt.cli import main
    save_graph(demo_spiking.graph, tmp_path / "g.ecmt")
    rc = main(["export", str(tmp_path / "g.ecmt"), "--to", "onnx", "-o", str(tmp_path / "g.onnx"), "--unroll", "3"])
    assert rc == 0, capsys.readouterr().err
    model = onnx.load(str(tmp_path / "g.onnx"))
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert build_model(demo_spiking.graph).graph.output[0].name == "y"


def with_spikes_per_step(graph, k):
    """The same graph with every MT neuron sending up to k levels per step
    (calibration does not depend on k)."""
    import dataclasses
    return ecmt.SpikingGraph([dataclasses.replace(n, spikes_per_step=k) if isinstance(n, ir.MTNeuron) else n
                              for n in graph], meta=dict(graph.meta))


@pytest.mark.parametrize("k", [2, 8])
def test_multi_level_demo_vit_matches_executor(demo_spiking, tmp_path, k, fashion_mnist):
    spiking = SpikingModel(with_spikes_per_step(demo_spiking.graph, k))
    assert_matches(spiking, tmp_path, fashion_mnist[1].images[:2])


def test_multi_level_per_channel_small_graph_matches_executor(tmp_path):
    from models import small_graph
    graph = small_graph()
    graph["mt1"].th_pos = torch.linspace(0.1, 0.8, 8)
    spiking = SpikingModel(with_spikes_per_step(graph, 3))
    assert_matches(spiking, tmp_path, torch.randn(5, 6) * 4)
