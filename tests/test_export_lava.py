"""Lava: the graph as Lava processes in Lava's simulator (Loihi2SimCfg), against the executor,
and the netx layout run by lava-dl netx itself."""
import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import ecmt
from ecmt import SpikingModel, ir
from exporters import lava as elava
from exporters.verify import lockstep
from models import cnn_strided_grouped, relu_mlp

T = 5


def two_block_demo_vit():
    from ecmt.zoo import DEMO_CHECKPOINT, build_demo_vit, load_state_dict
    model = build_demo_vit(depth=2)
    state = {k: v for k, v in load_state_dict(DEMO_CHECKPOINT).items() if not k.startswith(("blocks.2", "blocks.3"))}
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def two_blocks(fashion_mnist):
    """The demo ViT's first two blocks, converted on 128 training images."""
    return ecmt.convert(two_block_demo_vit(), fashion_mnist[0].images[:128], progress=False).graph


def lava_vs_executor(graph, x, fixed_point=False):
    net = elava.build(graph, fixed_point=fixed_point, record_spikes=True)
    estimates = net.run(x.numpy(), T)
    spikes = lambda node, t: np.stack([net.spike(node, t, i) for i in range(len(x))])
    return net, estimates, spikes


@pytest.mark.parametrize("build, shape", [(relu_mlp, (1, 8, 8)), (cnn_strided_grouped, (1, 8, 8))])
def test_relu_networks_match_in_lava(build, shape):
    graph = ecmt.convert(build(), torch.randn(64, *shape), progress=False).graph
    x = torch.randn(3, *shape)
    net, estimates, spikes = lava_vs_executor(graph, x)
    assert net.kinds["mt_neuron"] == len(graph.of_kind(ir.MTNeuron))
    assert net.kinds.get("dense", 0) + net.kinds.get("conv", 0) >= 3
    result = lockstep(graph, x, T, estimates, spikes)
    assert result.max_rel_diff <= 1e-5, result


@pytest.mark.slow
def test_two_demo_vit_blocks_match_in_lava(two_blocks, fashion_mnist):
    graph = two_blocks
    x = fashion_mnist[1].images[:2]
    net, estimates, spikes = lava_vs_executor(graph, x)
    assert net.kinds["mt_neuron"] == 16
    result = lockstep(graph, x, T, estimates, spikes)
    assert result.max_rel_diff <= 1e-5, result


def quantized_weights(graph):
    """The graph with the fixed-point model's weights: 8 bits, one scale per output channel."""
    from ecmt.runtime.fixed_point import quantize_int8
    nodes = []
    for node in graph:
        node = copy.copy(node)
        if isinstance(node, (ir.Linear, ir.Conv2d)):
            q, scale = quantize_int8(node.weight.numpy())
            node.weight = torch.from_numpy((q * scale).astype(np.float32))
        nodes.append(node)
    return ir.SpikingGraph(nodes, meta=graph.meta)


@pytest.mark.parametrize("build, shape", [(relu_mlp, (1, 8, 8)), (cnn_strided_grouped, (1, 8, 8))])
def test_fixed_point_model_is_its_arithmetic(build, shape):
    """The fixed-point models in lockstep with the executor running the same
    8-bit per-channel weights: the integer membrane (unit 2^-12 of the
    threshold for 8 levels) may only move a decision that lies within its
    rounding, T x 2^-12 thresholds, of a boundary, and the estimates must then
    agree to float32 summation order.  A coarser unit (2^-8 fails here) or
    per-layer weight scales make decisions differ away from any boundary."""
    from ecmt.runtime.fixed_point import fraction_bits
    assert fraction_bits(8) == 12
    graph = ecmt.convert(build(), torch.randn(64, *shape), progress=False).graph
    x = torch.randn(8, *shape)
    net, estimates, spikes = lava_vs_executor(graph, x, fixed_point=True)
    result = lockstep(quantized_weights(graph), x, T, estimates, spikes, tie_tol=T * 2.0 ** -12)
    assert result.max_rel_diff <= 1e-5, result


def test_hdf5_round_trip_and_build_from_file(tmp_path, two_blocks):
    graph = two_blocks
    assert elava.export(graph, tmp_path / "g.h5") == "extended"
    loaded = elava.load(tmp_path / "g.h5")
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(SpikingModel(graph)(x, 3), SpikingModel(loaded)(x, 3))
    import h5py
    with h5py.File(tmp_path / "g.h5") as f:
        types = [f["layer"][str(i)]["type"][()].decode() for i in range(len(f["layer"]))]
        assert types[0] == "input" and ("dense" in types or "conv" in types)
        assert "ecmt.mt_neuron" in types and "ecmt.product_ecm" in types and "ecmt.add" in types
        mt = next(g for g in f["layer"].values() if g["type"][()] == b"ecmt.mt_neuron")
        assert mt["neuron"]["type"][()] == b"ECMT_MT" and json.loads(mt["inputs"][()])


# -- the netx layout: lava-dl netx's own blocks and neuron models ---------------------------------
def netx_export(graph, path, **kwargs):
    assert elava.export(graph, path, layout="netx", **kwargs) == "netx"
    return path


@pytest.mark.parametrize("build, shape", [(relu_mlp, (1, 8, 8)), (cnn_strided_grouped, (1, 8, 8))])
def test_netx_runs_the_netx_layout(build, shape, tmp_path):
    """lava.lib.dl.netx.hdf5.Network builds the file with its own blocks and
    runs it (Loihi2SimCfg, fixed point), and:

    * netx's output record equals ecmt's integer model of netx bit for bit
      (netx.emulate: the arithmetic of lava's sdn / dense / conv models), so
      netx runs what the file says, with the default delta threshold;
    * the file's exact weights, in netx's form, give the executor's analog
      output (to float32 rounding): the mapping is right;
    * with delta = 0 (no dead band), netx's output stays within a worst-case
      bound (netx.reference: the bits netx drops per spike, propagated) of
      the file's quantized network, which agrees with the executor's analog
      output to the file's rounding (5% of the output scale; about 2% here).
      Reading one step too early or too late misses by about the output scale.
    """
    from lava.lib.dl import netx as ldnetx

    from exporters.lava import netx
    calib = torch.randn(64, *shape)
    spiking = ecmt.convert(build(), calib, progress=False)
    graph, x, steps = spiking.graph, torch.randn(3, *shape), 3
    analog = spiking.analog(x).numpy()
    scale = np.abs(analog).max()
    for delta in (netx.DEFAULT_DELTA, 0.0):
        path = netx_export(graph, tmp_path / f"net{delta}.h5", calib=calib, delta=delta)
        net = ldnetx.hdf5.Network(net_config=str(path))
        assert [type(b).__name__ for b in net.layers[:1]] == ["Input"]
        assert {type(b).__name__ for b in net.layers[1:]} <= {"Dense", "Conv"}
        assert [type(b.neuron).__name__ for b in net.layers] == (
            ["Delta"] + ["SigmaDelta"] * (len(net.layers) - 2) + ["Sigma"])
        p = netx.plan(graph, calib=calib, delta=delta)
        record = netx.run(path, x.numpy(), steps, raw=True)
        assert np.array_equal(record, netx.emulate(p, x.numpy(), steps))
        ref = netx.reference(p, x.numpy(), len(record))
        assert np.abs(ref.exact - analog).max() <= 1e-5 * scale
        assert np.abs(ref.quantized - analog).max() <= 0.05 * scale
        out = netx.aligned(record, len(x), steps, p.latency, p.output_scale)
        assert np.array_equal(out[0], out[-1])          # a held input gives one output, every step
        if delta == 0.0:
            assert np.all(np.abs(out - ref.quantized) <= ref.bound)
            assert ref.bound.max() <= 0.3 * scale
            for wrong in (p.latency - 1, p.latency + 1):
                misread = netx.aligned(record, len(x) - 1, steps, wrong, p.output_scale)
                assert np.abs(misread - ref.quantized[:-1]).max() > ref.bound.max()


def test_netx_layout_of_the_analog_network_loads_in_netx(tmp_path):
    from lava.lib.dl import netx as ldnetx

    from exporters.lava import netx
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    calib = torch.randn(32, 1, 8, 8)
    analog = ecmt.convert(model, calib, spiking=False).graph
    assert not analog.of_kind(ir.MTNeuron)
    path = netx_export(analog, tmp_path / "seq.net", calib=calib)
    net = ldnetx.hdf5.Network(net_config=str(path))
    assert len(net) == 3 and net.out.shape == (10,)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(SpikingModel(analog)(x, 2), SpikingModel(elava.load(path))(x, 2))
    p = netx.plan(analog, calib=calib)
    assert all(layer.vth == 0 for layer in p.layers)          # no MT threshold: every change is sent
    assert np.array_equal(netx.run(path, x.numpy(), 2, raw=True), netx.emulate(p, x.numpy(), 2))


def gelu_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 10)).eval()


def maxpool_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10)).eval()


def signed_mt_mlp():
    """relu_mlp's graph with its first MT neuron made signed (a th_neg)."""
    graph = ecmt.convert(relu_mlp(), torch.randn(64, 1, 8, 8), progress=False).graph
    nodes, first = [], graph.of_kind(ir.MTNeuron)[0].name
    for node in graph:
        if node.name == first:
            node = dataclasses.replace(node, th_neg=node.th_pos.clone())
        nodes.append(node)
    return ir.SpikingGraph(nodes, meta=graph.meta), first


@pytest.mark.parametrize("case", ["gelu_ecm", "maxpool_ecm", "signed_mt", "residual"])
def test_netx_layout_refuses_what_netx_cannot_express(case, tmp_path):
    from exporters.lava.netx import NetxLayoutError
    if case == "signed_mt":
        graph, node = signed_mt_mlp()
        words = ("signed MT neuron",)
    elif case == "residual":
        from ecmt.zoo import load_model
        graph = ecmt.convert(load_model("demo-cnn"), torch.randn(16, 1, 28, 28), progress=False).graph
        node, words = next(n.name for n in graph if len(graph.consumers()[n.name]) > 1), ("residual",)
    else:
        model = gelu_mlp() if case == "gelu_ecm" else maxpool_cnn()
        graph = ecmt.convert(model, torch.randn(32, 1, 8, 8), progress=False).graph
        kind = "gelu_ecm" if case == "gelu_ecm" else "maxpool2d_ecm"
        node, words = next(n.name for n in graph if n.KIND == kind), ("expectation compensation module",)
    path = tmp_path / "refused.h5"
    with pytest.raises(NetxLayoutError) as err:
        elava.export(graph, path, layout="netx")
    message = str(err.value)
    assert repr(node) in message and all(w in message for w in words), message
    assert "layout='extended'" in err.value.hint
    assert not path.exists() and not list(tmp_path.iterdir())        # nothing written
    assert elava.export(graph, path) == "extended"                    # auto falls back


def fashion_model(kind: str, train) -> nn.Module:
    """A small ReLU MLP or CNN trained for one seeded pass over 12,000 Fashion-MNIST images."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    if kind == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                              nn.Linear(32, 10))
    else:
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                              nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(16 * 7 * 7, 10))
    train = train.take(12000)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for x, y in train.batches(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture
def one_thread():
    """torch on one thread while netx's processes run (restored after the test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_netx_accuracy_against_the_executor(kind, tmp_path, fashion_mnist, one_thread):
    """Fashion-MNIST, 1000 test images: the netx layout's accuracy (netx's
    arithmetic, netx.emulate, checked bit for bit against netx itself on the
    first 10 images) is within 1 point of the executor's at T = 8, or better
    (benchmarks/netx.py runs netx itself on the 1000)."""
    from exporters.lava import netx
    train, test = fashion_mnist
    model = fashion_model(kind, train)
    calib = train.sample(256)
    spiking = ecmt.convert(model, calib, progress=False)
    test = test.take(1000)
    x, y = test.images.numpy(), test.labels.numpy()
    path = netx_export(spiking.graph, tmp_path / "net.h5", calib=calib)
    p, steps = netx.plan(spiking.graph, calib=calib), 8
    assert np.array_equal(netx.run(path, x[:10], steps, raw=True), netx.emulate(p, x[:10], steps))
    out = netx.aligned(netx.emulate(p, x, steps), len(x), steps, p.latency, p.output_scale)
    netx_accuracy = (out[-1].argmax(-1) == y).mean()
    executor_accuracy = (spiking(test.images, 8)[-1].argmax(-1).numpy() == y).mean()
    assert netx_accuracy >= executor_accuracy - 0.01, (netx_accuracy, executor_accuracy)
    # the same file stands for the graph with k = levels (graded spikes, netx.py): it is
    # within a point of that graph's executor too
    graded = _with_k(spiking.graph, max(n.levels for n in spiking.graph.of_kind(ir.MTNeuron)))
    graded_accuracy = (ecmt.SpikingModel(graded)(test.images, 8)[-1].argmax(-1).numpy() == y).mean()
    assert netx_accuracy >= graded_accuracy - 0.01, (netx_accuracy, graded_accuracy)


def _with_k(graph, k):
    return ir.SpikingGraph([dataclasses.replace(n, spikes_per_step=k) if isinstance(n, ir.MTNeuron) else n
                            for n in graph], meta=graph.meta)


@pytest.mark.slow
def test_multi_level_neurons_match_in_lava_as_graded_payloads(two_blocks, fashion_mnist):
    """spikes_per_step k > 1: the float model equals the executor; each spike is one
    graded value, the sum of the step's levels (one image: the k = 1 test runs two)."""
    graph = _with_k(two_blocks, 3)
    x = fashion_mnist[1].images[:1]
    net, estimates, spikes = lava_vs_executor(graph, x)
    result = lockstep(graph, x, T, estimates, spikes)
    assert result.max_rel_diff <= 1e-5, result
    units = []                                             # spikes in threshold units (per-tensor thresholds)
    for n in graph.of_kind(ir.MTNeuron):
        s = np.concatenate([spikes(n.name, t).ravel() for t in range(1, T + 1)])
        units += [s[s > 0] / float(n.th_pos)] + ([-s[s < 0] / float(n.th_neg)] if n.signed else [])
    units = np.concatenate(units)
    assert (np.abs(np.log2(units) - np.round(np.log2(units))) > 0.01).any()    # sums of several levels occur


def test_multi_level_fixed_point_model_is_its_arithmetic():
    from ecmt.runtime.fixed_point import fraction_bits
    graph = _with_k(ecmt.convert(relu_mlp(), torch.randn(64, 1, 8, 8), progress=False).graph, 4)
    x = torch.randn(8, 1, 8, 8)
    net, estimates, spikes = lava_vs_executor(graph, x, fixed_point=True)
    result = lockstep(quantized_weights(graph), x, T, estimates, spikes, tie_tol=T * 2.0 ** -fraction_bits(8))
    assert result.max_rel_diff <= 1e-5, result


def test_netx_layout_takes_multi_level_neurons(tmp_path):
    """spikes_per_step k > 1 in a ReLU network: the netx layout is the one of k = 1
    (a sigma-delta neuron sends each change as one graded payload; the threshold sets
    vth), "auto" picks it, and netx runs it to its arithmetic bit for bit."""
    from exporters.lava import netx
    calib, x, steps = torch.randn(64, 1, 8, 8), torch.randn(3, 1, 8, 8).numpy(), 4
    graph = ecmt.convert(relu_mlp(), calib, progress=False).graph
    graded = _with_k(graph, max(n.levels for n in graph.of_kind(ir.MTNeuron)))
    assert elava.export(graded, tmp_path / "g.h5", calib=calib) == "netx"
    expected = netx.emulate(netx.plan(graph, calib=calib), x, steps)
    assert np.array_equal(netx.emulate(netx.plan(graded, calib=calib), x, steps), expected)
    assert np.array_equal(netx.run(tmp_path / "g.h5", x, steps, raw=True), expected)
