"""Every node kind in every backend: one graph holding every kind (and its PPN form)
runs in the executor, in onnxruntime, through the NIR round trip, in the Lava
simulator and in hw_sim, each against the executor.  A new node kind must be added
to `models.every_kind_graph` (test_fuzz_graph_file checks that the seeds hold every
kind), and then this file fails for any backend that does not handle it."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


def documented_price(node, field: str, p, on_chip: bool = False) -> float:
    """Joules of one counted event of `field` at `node` in full mode, as docs/energy.md states
    the rules (written out here, not read from hw_sim); on a neuromorphic profile the host's
    share, `on_chip` saying whether the chip's cores hold the node."""
    mt = isinstance(node, ir.MTNeuron)
    if p.kind == "cmos":
        word = p.value_bits / 64 * p["energy.sram_read_64b"]         # one value from a 64-bit SRAM read
        adds_per_update = node.levels + 2 if mt and node.spikes_per_step == 1 else 2 * getattr(node, "levels", 0) + 2
        return {"sops": word, "level_sops": p["energy.add"], "macs": p["energy.mac"] + word,
                "adds": p["energy.add"], "mults": p["energy.mult"], "specials": 8 * p["energy.mac"],
                "state_rw": word, "neuron_updates": adds_per_update * p["energy.add"] if mt else 0.0}.get(field, 0.0)
    # neuromorphic: the host cores' share (the mesh model prices what the chip's cores do)
    h = lambda k: p[f"host.{k}"]
    price = {"macs": h("e_mac"), "adds": h("e_add"), "mults": h("e_mult"), "specials": 8 * h("e_mac")}
    word = 4 / 8 * h("e_sram_read_64b")                          # fp32 state in host SRAM
    if mt:
        if not on_chip:
            levels = node.levels
            price["neuron_updates"] = (levels + 2 if node.spikes_per_step == 1 else 2 * levels + 2) * h("e_add")
            price["state_rw"] = word
    else:
        price["state_rw"] = word
        if isinstance(node, ir.ProductECM) or not on_chip:   # a product's weights change every step
            price["level_sops"] = h("e_add")
    return price.get(field, 0.0)


@pytest.fixture(scope="module")
def observed(graph, x):
    """Every node's inputs and output at every step of the executor's own run."""
    seen = {}
    SpikingModel(graph)(x, T, observer=lambda node, inputs, out, t: seen.__setitem__(
        (node.name, t), ([i.clone() for i in inputs], out.clone())))
    return seen


@pytest.mark.parametrize("profile", ["cmos45-fp32", "loihi", "loihi2"])
def test_hw_sim_counts_and_prices_every_node(graph, x, observed, profile):
    """Every node is in the report, priced as docs/energy.md states (each layer's energy is its
    counts at the documented rates, plus on a neuromorphic chip the mesh accounting of the
    groups its cores hold), and the data-driven counts equal brute force over the executor's
    tensors: spikes (non-zero MT outputs), neuron updates, synaptic ops of layers fed by spikes
    (non-zero inputs times their fan-out), and a static layer's MACs once."""
    from hw_sim.engine import mesh
    report = hw_sim.simulate(graph, x, T, profile, progress=False)
    r = report.result(profile)
    p = hw_sim.load_profile(profile)
    layers = {layer["name"]: layer for layer in r["layers"]}
    counts = {c["name"]: c for c in report.data["counts"]["layers"]}
    assert set(layers) == set(counts) == {n.name for n in graph}
    groups, on_chip = {}, set()
    if p.kind == "neuromorphic":
        onchip = mesh.extract(graph, p)
        on_chip = set(onchip.groups) | {c.node for c in onchip.connections}
        groups = r["mesh"]["groups"]
        assert set(groups) == set(onchip.groups) and groups
    for n in graph:
        expected = sum(documented_price(n, f, p, n.name in on_chip) * v for f, v in counts[n.name].items()
                       if isinstance(v, (int, float)))
        if n.name in groups:
            expected += sum(groups[n.name][k] for k in ("synapse_j", "neuron_j", "network_j", "link_j"))
        assert layers[n.name]["energy_j"] == pytest.approx(expected, rel=1e-9, abs=1e-30), (profile, n.name)
    # every node with work of its own is priced (constants, outputs of shape ops may cost nothing;
    # a layer on the cores is priced as its source neuron's synaptic events)
    for n in graph:
        if isinstance(n, (ir.Linear, ir.Conv2d, ir.NonlinearityECM, ir.ProductECM, ir.MaxPool2d,
                          ir.AvgPool2d, ir.Mean)) and n.name not in on_chip:
            assert layers[n.name]["energy_j"] > 0, (profile, n.name, n.KIND)
    assert r["energy_j"] > 0 and all(math.isfinite(v) for v in r["latency_per_step_s"])
    samples = len(x)
    nonzero = lambda t: float((t != 0).sum())
    for n in graph.of_kind(ir.MTNeuron):
        outs = [observed[(n.name, t)][1] for t in range(1, T + 1)]
        assert counts[n.name]["spikes"] == sum(map(nonzero, outs)) / samples, n.name
        assert counts[n.name]["neuron_updates"] == T * outs[0][0].numel(), n.name
    head = graph["head"]                                # fed by MT spikes
    fed = sum(nonzero(observed[("head", t)][0][0]) for t in range(1, T + 1))
    assert counts["head"]["sops"] == fed * head.weight.shape[0] / samples > 0
    # the convolution of the image: analog, static, so MACs once: one per (input, weight) pair
    # that exists (hw_sim counts a convolution exact at its zero-padded borders)
    conv = graph["conv"]
    pairs = F.conv2d(torch.ones(1, *graph.shapes["input"]), torch.ones_like(conv.weight), None, conv.stride,
                     conv.padding, conv.dilation, conv.groups).sum()
    assert counts["conv"]["macs"] == pairs < observed[("conv", 1)][1][0].numel() * conv.weight[0].numel()
    assert counts["conv"]["sops"] == 0


def test_analog_pass_of_the_ppn_form_is_the_graded_graphs(x):
    graded = every_kind_graph()
    ppn = ir.expand_ppn(graded)
    assert [n.name for n in ppn.of_kind(ir.MTNeuronPPN)] == ["mt2"]    # signed, per-channel thresholds
    torch.testing.assert_close(SpikingModel(ppn).analog(x), SpikingModel(graded).analog(x), rtol=1e-5, atol=1e-6)
