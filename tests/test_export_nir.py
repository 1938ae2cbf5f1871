"""NIR export and import, the ecmt-nir convention, PPN, and an independent NIR consumer."""
import json

import h5py
import nir
import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import ecmt
from ecmt import SpikingGraph, SpikingModel, ir
from ecmt.ir import expand_ppn
from exporters import nir as enir
from models import cnn_avgpool_grouped


@pytest.fixture
def demo_graph(demo_vit_graph):
    return demo_vit_graph


@pytest.fixture
def demo_cnn(demo_cnn_graph):
    return demo_cnn_graph


def round_trip(graph, tmp_path, name="g.nir", **kw):
    summary = enir.export(graph, tmp_path / name, **kw)
    nir.read(str(tmp_path / name))                       # the plain NIR reader accepts it
    return enir.load(tmp_path / name), summary


def test_demo_vit_round_trip_is_bit_identical(demo_graph, tmp_path):
    loaded, summary = round_trip(demo_graph, tmp_path)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(SpikingModel(demo_graph)(x, 6), SpikingModel(loaded)(x, 6))
    assert [n.name for n in loaded] == [n.name for n in demo_graph]
    assert loaded.meta == demo_graph.meta
    # Synaptic layers are standard NIR nodes; neurons and ECMs use the convention.
    assert summary.standard["linear"] == len(demo_graph.of_kind(ir.Linear))
    assert summary.standard["conv2d"] == 1
    assert summary.convention["mt_neuron"] == len(demo_graph.of_kind(ir.MTNeuron))
    assert "product_ecm" in summary.convention and "layernorm_ecm" in summary.convention


@pytest.mark.parametrize("name, kwargs", [("vit_tiny_patch16_224", dict(depth=2)),
                                          ("deit_tiny_distilled_patch16_224", dict(depth=2))])
def test_timm_round_trip_is_bit_identical(tmp_path, name, kwargs):
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    graph = ecmt.convert(model, torch.randn(4, 3, 224, 224), progress=False).graph
    loaded, _ = round_trip(graph, tmp_path)
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(SpikingModel(graph)(x, 3), SpikingModel(loaded)(x, 3))


def test_standard_nodes_carry_correct_nir_types(demo_graph, tmp_path):
    enir.export(demo_graph, tmp_path / "g.nir")
    g = nir.read(str(tmp_path / "g.nir"))
    qkv = g.nodes["blocks.0.attn.qkv"]
    assert isinstance(qkv, nir.Conv1d)                   # token-wise: kernel 1 over the 50 tokens
    assert list(qkv.input_type["input"]) == [64, 50] and list(qkv.output_type["output"]) == [192, 50]
    head = g.nodes["head"]
    assert isinstance(head, nir.Affine) and list(head.input_type["input"]) == [64]
    assert isinstance(g.nodes["patch_embed.proj"], nir.Conv2d)
    mt = g.nodes["blocks.0.mlp.act.mt"]
    op = json.loads(mt.metadata["ecmt.op"])
    assert op["convention"] == "ecmt-nir" and op["version"] == enir.VERSION and op["kind"] == "mt_neuron"
    assert "ecmt.tensor.th_pos" in mt.metadata


def test_export_prints_counts_by_kind(demo_graph, tmp_path, capsys):
    """The printed counts are the file's: every IR node once, as a standard NIR node of its
    own name (or, for adds, as converging edges) or as a node carrying the convention's
    ``ecmt.op`` of its kind; the adapters are the file's other nodes (read by nir.read)."""
    import re
    from collections import Counter
    enir.export(demo_graph, tmp_path / "g.nir", verbose=True)
    line = capsys.readouterr().out.splitlines()[0]
    m = re.fullmatch(r"NIR export: (\d+) standard nodes \((.*)\); (\d+) convention nodes \((.*)\); "
                     r"(\d+) adapters", line)
    assert m, line
    by_kind = lambda text: {k: int(n) for k, n in (item.rsplit(" ", 1) for item in text.split(", "))}
    standard, convention, adapters = by_kind(m[2]), by_kind(m[4]), int(m[5])
    assert sum(standard.values()) == int(m[1]) and sum(convention.values()) == int(m[3])
    assert Counter(standard) + Counter(convention) == Counter(n.KIND for n in demo_graph)
    f = nir.read(str(tmp_path / "g.nir"))
    op = lambda node: json.loads((getattr(node, "metadata", None) or {}).get("ecmt.op", "null"))
    in_file = [n for n in demo_graph if n.name in f.nodes]
    assert {n.KIND for n in demo_graph if n.name not in f.nodes} == {"add"}       # edges, not nodes
    assert all(op(f.nodes[n.name]) is None or op(f.nodes[n.name])["kind"] == n.KIND for n in in_file)
    assert Counter(n.KIND for n in in_file if op(f.nodes[n.name])) == Counter(convention)
    assert Counter(n.KIND for n in demo_graph if n.name not in f.nodes or op(f.nodes[n.name]) is None) \
        == Counter(standard)
    assert len(f.nodes) - len(in_file) == adapters
    assert convention["mt_neuron"] == len(demo_graph.of_kind(ir.MTNeuron)) == 32


@pytest.mark.parametrize("per_channel", [False, True])
def test_ppn_form_computes_the_graded_form(tmp_path, per_channel):
    model = cnn_avgpool_grouped()
    graph = ecmt.convert(model, torch.randn(64, 1, 8, 8), progress=False, per_channel=per_channel).graph
    ppn = expand_ppn(graph)
    assert len(ppn.of_kind(ir.MTNeuronPPN)) == 1          # the neuron feeding the grouped conv
    conv = ppn["3"]
    assert ppn["3"].inputs == ("2.mt",) and conv.weight.shape[1] == 4 * ppn["2.mt"].channels_per_value
    x = torch.randn(6, 1, 8, 8)
    torch.testing.assert_close(SpikingModel(ppn)(x, 12), SpikingModel(graph)(x, 12), rtol=0, atol=1e-6)
    loaded, summary = round_trip(graph, tmp_path, ppn=True)
    assert summary.convention.get("mt_neuron_ppn") == 1
    assert torch.equal(SpikingModel(loaded)(x, 4), SpikingModel(ppn)(x, 4))


def test_ppn_on_the_demo_vit_in_lockstep(demo_graph):
    from exporters.verify import lockstep
    ppn = expand_ppn(demo_graph)
    x = torch.randn(3, 1, 28, 28)
    spikes = {}
    lam = {n.name: ir.ppn.level_values(n, demo_graph.shapes[n.name][n.axis % 2]) for n in ppn.of_kind(ir.MTNeuronPPN)}

    def record(node, inputs, out, t):
        if isinstance(node, ir.MTNeuronPPN):            # one-hot channels back to graded values
            c, L = lam[node.name].shape
            out = (out.unflatten(node.axis + 1, (c, L)) * lam[node.name]).sum(-1)
        if isinstance(node, ir.MTNeuron):
            spikes[(node.name, t)] = out.numpy().copy()

    estimates = SpikingModel(ppn)(x, 6, observer=record).numpy()
    result = lockstep(demo_graph, x, 6, estimates, lambda n, t: spikes[(n, t)])
    assert result.max_rel_diff < 1e-5


def test_independent_consumer_runs_the_synaptic_subgraph(tmp_path):
    """nirtorch's own default map (not ecmt's) runs a graph inside NIR's standard
    semantics: the synaptic layers of a converted CNN and a flatten.  (Its default
    Affine mapping loses the bias, so linear layers are checked with the consumers,
    tests/test_nir_consumers.py.)"""
    import nirtorch
    model = cnn_avgpool_grouped()
    converted = ecmt.convert(model, torch.randn(64, 1, 8, 8), progress=False).graph
    synaptic = SpikingGraph([
        ir.Input("input", (), shape=(1, 8, 8)),
        ir.Conv2d("conv1", ("input",), weight=converted["0"].weight, bias=converted["0"].bias, padding=1),
        ir.Conv2d("conv2", ("conv1",), weight=torch.randn(6, 8, 3, 3), bias=converted["3"].bias[:6], stride=2),
        ir.Reshape("flat", ("conv2",), shape=(6 * 3 * 3,)),
        ir.Output("output", ("flat",)),
    ])
    summary = enir.export(synaptic, tmp_path / "s.nir")
    assert sum(summary.convention.values()) == 0 and summary.adapters == 0
    module = nirtorch.nir_to_torch(str(tmp_path / "s.nir"), {})
    x = torch.randn(4, 1, 8, 8)
    theirs, _ = module(x)
    ours = SpikingModel(synaptic)(x, 5)
    for t in range(5):                                    # the same every step: no neurons
        torch.testing.assert_close(theirs, ours[t], rtol=1e-5, atol=1e-6)


def _rewrite(src, dst, edit):
    import shutil
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)


def test_bad_files_fail_import_clearly(demo_graph, tmp_path):
    good = tmp_path / "g.nir"
    enir.export(demo_graph, good)

    def set_desc(f, change):
        meta = f["node"]["metadata"]
        desc = json.loads(meta["ecmt.description"][()])
        change(desc)
        del meta["ecmt.description"]
        meta["ecmt.description"] = json.dumps(desc)

    cases = {
        "version.nir": (lambda f: set_desc(f, lambda d: d["convention"].update(version=7)), "unsupported convention"),
        "nodesc.nir": (lambda f: f["node"]["metadata"].__delitem__("ecmt.description"), "not an ecmt NIR file"),
        "nometa.nir": (lambda f: f["node"]["nodes"]["blocks.0.mlp.act.mt"]["metadata"].__delitem__(
            "ecmt.tensor.th_pos"), "missing metadata 'ecmt.tensor.th_pos'"),
        "shape.nir": (lambda f: set_desc(f, lambda d: [n.update(shape=[7]) for n in d["nodes"]
                                                       if n["name"] == "head"]), "field shape"),
    }
    for name, (edit, message) in cases.items():
        _rewrite(good, tmp_path / name, edit)
        with pytest.raises(enir.NirImportError, match=message):
            enir.load(tmp_path / name)


def test_failed_export_leaves_no_file(tmp_path):
    # A constant-fed node whose layout NIR cannot produce: a 1-d input reshaped to 3 axes.
    graph = SpikingGraph([ir.Input("input", (), shape=(12,)),
                          ir.Linear("fc", ("input",), weight=torch.randn(12, 12)),
                          ir.Reshape("r", ("fc",), shape=(2, 2, 3)),
                          ir.Conv2d("conv", ("r",), weight=torch.randn(1, 2, 1, 1)),
                          ir.Output("output", ("conv",))])
    with pytest.raises(enir.NirExportError, match="node 'r': NIR cannot change the layout"):
        enir.export(graph, tmp_path / "x.nir")
    assert list(tmp_path.iterdir()) == []


def run_with_node_map(path, x, T):
    """nirtorch's own graph runner with ecmt's node map (exporters/verify.py, what
    `ecmt export --verify` runs): the running means of the per-step outputs."""
    from exporters.verify import nir_node_map_run
    return torch.from_numpy(nir_node_map_run(path, x, T))


@pytest.mark.parametrize("ppn", [False, True])
@pytest.mark.parametrize("model", ["demo_cnn", "demo_graph"])
def test_nirtorch_with_the_node_map_equals_the_executor(model, ppn, tmp_path, request):
    graph = request.getfixturevalue(model)
    enir.export(graph, tmp_path / "g.nir", ppn=ppn)
    x = torch.rand(3, 1, 28, 28)
    ours = SpikingModel(expand_ppn(graph) if ppn else graph)(x, 5)
    theirs = run_with_node_map(tmp_path / "g.nir", x, 5)
    scale = ours.abs().max()
    assert (theirs - ours).abs().max() <= 1e-5 * scale
    assert torch.equal(SpikingModel(enir.load(tmp_path / "g.nir"))(x, 5), ours)    # and the round trip


def test_residual_adds_are_converging_edges(demo_cnn, tmp_path):
    summary = enir.export(demo_cnn, tmp_path / "c.nir")
    g = nir.read(str(tmp_path / "c.nir"))
    assert "3.add" not in g.nodes and "8.add" not in g.nodes
    assert sorted(src for src, dst in g.edges if dst == "3.relu") == ["2", "3.body.3"]
    assert summary.standard["add"] == 2 and summary.adapters == 0
    assert not any(isinstance(n, nir.Scale) for n in g.nodes.values())
    # The graph metadata says what every node is, pooling included; only the nodes whose
    # NIR meaning differs from what they compute (neurons, pools) carry node metadata.
    roles = json.loads(g.metadata["ecmt.nodes"])
    assert sorted(roles) == sorted(g.nodes)
    assert roles["9"] == {"node": "9", "role": "convention", "layout": {"shape": [32, 7, 7], "perm": None}}
    assert {name for name, n in g.nodes.items() if n.metadata} == {
        name for name, r in roles.items() if r["role"] == "convention"}


def test_flatten_keeps_the_batch_axis_in_nir_and_in_torch(demo_cnn, tmp_path):
    """Negative axes: NIR's per-sample type inference and a batched torch.flatten agree."""
    enir.export(demo_cnn, tmp_path / "c.nir")
    flat = nir.read(str(tmp_path / "c.nir")).nodes["14"]
    assert isinstance(flat, nir.Flatten) and (flat.start_dim, flat.end_dim) == (-3, -1)
    assert list(flat.output_type["output"]) == [64]
    assert torch.nn.Flatten(flat.start_dim, flat.end_dim)(torch.zeros(5, 64, 1, 1)).shape == (5, 64)


@pytest.mark.parametrize("model", ["demo_cnn", "demo_graph"])
def test_ppn_export_writes_binary_neurons_on_standard_synapses(model, tmp_path, request):
    graph = request.getfixturevalue(model)
    summary = enir.export(graph, tmp_path / "p.nir", ppn=True)
    g = nir.read(str(tmp_path / "p.nir"))
    ppn_nodes = [n for n in g.nodes.values() if "ecmt.op" in n.metadata
                 and json.loads(n.metadata["ecmt.op"])["kind"] == "mt_neuron_ppn"]
    assert len(ppn_nodes) == summary.convention["mt_neuron_ppn"] > 0
    for node in ppn_nodes:
        assert isinstance(node, nir.IF)
        fan = g.nodes[json.loads(node.metadata["ecmt.op"])["fan_out"]]
        assert np.asarray(fan.weight).sum() == np.asarray(fan.weight).shape[0]      # one copy per channel
    # The synaptic layers after the binary neurons stay standard nodes with expanded weights.
    expanded, roles = expand_ppn(graph), json.loads(g.metadata["ecmt.nodes"])
    after = [n for n in expanded.of_kind(ir.Linear) + expanded.of_kind(ir.Conv2d)
             if isinstance(expanded[n.inputs[0]], ir.MTNeuronPPN)]
    assert after and all(roles[n.name]["role"] == "standard" for n in after)


def test_unit_thresholds_move_thresholds_into_the_weights_exactly():
    from ecmt.ir.unit import unit_thresholds
    from models import relu_mlp
    graph = ecmt.convert(relu_mlp(), torch.randn(64, 1, 8, 8), progress=False).graph
    unit, done = unit_thresholds(graph)
    assert done == [n.name for n in graph.of_kind(ir.MTNeuron)] and len(done) == 2
    assert all(float(unit[n].th_pos) == 1.0 for n in done)
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(SpikingModel(unit)(x, 16), SpikingModel(graph)(x, 16), rtol=1e-5, atol=1e-5)
    # A neuron feeding a residual add keeps its threshold: its spikes reach the add unweighted.
    residual = ecmt.convert(relu_cnn_residual(), torch.randn(32, 1, 8, 8), progress=False).graph
    _, kept = unit_thresholds(residual)
    skip = [n for n in residual.of_kind(ir.Add)][0].inputs
    assert not set(skip) & set(kept)


def relu_cnn_residual():
    from ecmt.zoo import ResidualBlock
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), ResidualBlock(4), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10)).eval()


def test_unknown_neuron_carrier_is_refused_before_writing(tmp_path):
    graph = SpikingGraph([ir.Input("input", (), shape=(4,)), ir.Linear("fc", ("input",), weight=torch.eye(4)),
                          ir.Output("output", ("fc",))])
    with pytest.raises(enir.NirExportError, match="neuron 'LI': must be one of IF, LIF"):
        enir.export(graph, tmp_path / "x.nir", neuron="LI")
    assert list(tmp_path.iterdir()) == []


def _with_k(graph, k):
    import dataclasses
    return SpikingGraph([dataclasses.replace(n, spikes_per_step=k) if isinstance(n, ir.MTNeuron) else n
                         for n in graph], meta=dict(graph.meta))


def test_multi_level_round_trip_and_node_map_equal_the_executor(demo_graph, tmp_path):
    graph = _with_k(demo_graph, 3)
    loaded, _ = round_trip(graph, tmp_path)
    assert {n.spikes_per_step for n in loaded.of_kind(ir.MTNeuron)} == {3}
    x = torch.rand(2, 1, 28, 28)
    ours = SpikingModel(graph)(x, 4)
    assert not torch.equal(ours, SpikingModel(demo_graph)(x, 4))   # k is honoured, not dropped
    assert torch.equal(SpikingModel(loaded)(x, 4), ours)
    theirs = run_with_node_map(tmp_path / "g.nir", x, 4)
    assert (theirs - ours).abs().max() <= 1e-5 * ours.abs().max()


def test_multi_level_neurons_refuse_the_ppn_form(demo_graph, tmp_path):
    from ecmt.errors import GraphError
    with pytest.raises(GraphError, match=r"node 'blocks\.0\.[a-z0-9_.]+' \(mt_neuron\): field spikes_per_step"):
        enir.export(_with_k(demo_graph, 2), tmp_path / "g.nir", ppn=True)
    assert not (tmp_path / "g.nir").exists()


def node_map_steps(nir_graph, x, T):
    """Per-step outputs of a NIR graph through nirtorch with ecmt's node map."""
    import nirtorch
    m = nirtorch.nir_to_torch(nir_graph, enir.torch_node_map())
    out, state = m(x)
    steps = [out]
    for _ in range(T - 1):
        out, state = m(x, state)
        steps.append(out)
    return torch.stack(steps)


def test_size_nodes_restore_spike_sizes_and_keep_the_node_map_bit_exact(demo_cnn, tmp_path):
    """--unit-thresholds on the demo CNN: 2 neurons move their threshold into weights, the
    other 7 (skip paths, pools) get a standard 1x1 Conv2d whose diagonal is their threshold,
    and ecmt's node map computes every step bit for bit as without those nodes."""
    from ecmt.ir.unit import unit_thresholds
    from exporters.nir.writer import to_nir
    summary = enir.export(demo_cnn, tmp_path / "u.nir", unit_thresholds=True)
    mts = sorted(n.name for n in demo_cnn.of_kind(ir.MTNeuron))
    assert len(summary.unit_thresholds) == 2 and len(summary.spike_sizes) == 7
    assert sorted(summary.unit_thresholds + summary.spike_sizes) == mts
    assert "spike sizes restored by 7 inserted standard nodes" in str(summary)
    g = nir.read(str(tmp_path / "u.nir"))
    for name in summary.spike_sizes:
        size = g.nodes[f"{name}.size"]
        assert isinstance(size, nir.Conv2d) and not size.metadata and not np.asarray(size.bias).any()
        w = np.asarray(size.weight)[:, :, 0, 0]
        th = float(demo_cnn[name].th_pos)
        assert np.array_equal(w, np.diag(np.diag(w))) and np.allclose(np.diag(w), th, rtol=1e-6)
        assert [dst for src, dst in g.edges if src == name] == [f"{name}.size"]
    x = torch.rand(3, 1, 28, 28)
    plain, _ = to_nir(unit_thresholds(demo_cnn)[0], spike_sizes=False)
    assert torch.equal(node_map_steps(g, x, 5), node_map_steps(plain, x, 5))


def test_spike_unit_round_trips_every_level_exactly():
    """(s / u) * u == s in float32 for every spike value, with torch's division and a
    diagonal 1x1 convolution, as the node map and the size node compute them."""
    from exporters.nir.writer import spike_unit
    g = torch.Generator().manual_seed(3)
    th_pos, th_neg = torch.rand(64, 1, 1, generator=g) * 5 + 0.01, torch.rand(64, 1, 1, generator=g) * 5 + 0.01
    node = ir.MTNeuron("mt", ("x",), th_pos=th_pos, th_neg=th_neg, levels=8)
    u = torch.from_numpy(spike_unit(node))
    assert (u - th_pos).abs().max() <= 1e-5 * th_pos.max()
    levels = 2.0 ** torch.arange(8.0)
    s = torch.cat([th_pos * levels, -th_neg * levels], dim=1)[None]           # [1, 64, 16, 1]
    back = torch.nn.functional.conv2d(s / u, torch.diag(u.reshape(-1))[:, :, None, None])
    assert torch.equal(back, s)
