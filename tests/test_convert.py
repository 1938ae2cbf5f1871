"""Conversion of timm transformers and ReLU networks."""
import inspect
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

import ecmt
from ecmt import ir
from ecmt.runtime import GraphExecutor
from ecmt.errors import UnsupportedModelError
from models import cnn_strided_depthwise, relu_mlp


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def timm_model(name, **kw):
    return timm.create_model(name, pretrained=False, **kw).eval()


CASES = {
    "vit_tiny_patch16_224": dict(depth=4),          # four blocks show what twelve would
    "deit_tiny_distilled_patch16_224": dict(depth=4),
    "eva_giant_patch14_224": dict(depth=2, embed_dim=96, num_heads=4, img_size=56),  # EVA blocks, GELU MLP
}


def running_means(graph, x, T, at):
    """The executor's estimates [T, ...] and, at each step t in `at`, every MT neuron's running
    input mean and running spike mean: (its input increments, its spikes) up to t, over t."""
    sums, means = {}, {}

    def observe(node, inputs, out, t):
        if isinstance(node, ir.MTNeuron):
            now = (inputs[0], out)
            sums[node.name] = now if t == 1 else tuple(a + b for a, b in zip(sums[node.name], now))
            if t in at:
                means[(node.name, t)] = tuple(a / t for a in sums[node.name])
    return GraphExecutor(graph).run(x, T, observer=observe), means


def analog_with(graph, x, spikes: dict) -> tuple[torch.Tensor, dict]:
    """The graph's analog pass (the ANN) with each MT neuron's value replaced by spikes[name]:
    its output, and each MT neuron's input in that pass."""
    executor = GraphExecutor(graph)
    for step in executor.steps:
        if isinstance(step.node, ir.MTNeuron):
            step.state.analog = lambda _x, m=spikes[step.node.name]: m
    inputs = {}
    out = executor.run_analog(x, observer=lambda node, ins, o, t: inputs.__setitem__(node.name, ins[0]))
    return out, inputs


@pytest.mark.parametrize("name", sorted(CASES))
def test_timm_models_convert_and_converge(name):
    model = timm_model(name, **CASES[name])
    size = CASES[name].get("img_size", 224)
    gen = torch.Generator().manual_seed(1)
    calib, x = torch.randn(8, 3, size, size, generator=gen), torch.randn(2, 3, size, size, generator=gen)
    spiking = ecmt.convert(model, calib, progress=False)
    with torch.no_grad():
        ann = model(x)
    # The graph's analog mode is the ANN itself.
    assert rel_err(spiking.analog(x), ann) < 1e-5
    est, means = running_means(spiking.graph, x, 32, at=(1, 2, 8, 32))
    assert est.shape == (32, *ann.shape)
    # Expectation compensation (docs/method.md §1, §3): at every step t, every node's running
    # sum over t is the ANN's value there computed from the MT neurons' running spike means,
    # exactly up to rounding, whatever the spikes: the estimate (the output's) and each MT
    # neuron's input (so every ECM, product and layer between neurons is checked).
    neurons = [n.name for n in spiking.graph.of_kind(ir.MTNeuron)]
    for t in (1, 2, 8, 32):
        out, inputs = analog_with(spiking.graph, x, {n: means[(n, t)][1] for n in neurons})
        assert rel_err(est[t - 1], out) < 1e-5, t
        worst = max(neurons, key=lambda n: rel_err(means[(n, t)][0], inputs[n]))
        assert rel_err(means[(worst, t)][0], inputs[worst]) < 1e-5, (t, worst)
    errors = [rel_err(est[t - 1], ann) for t in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[0], errors


def test_vit_block_has_eight_neurons_and_analog_ends():
    model = timm_model("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8)
    graph = ecmt.convert(model, torch.randn(4, 3, 32, 32), progress=False).graph
    neurons = graph.of_kind(ir.MTNeuron)
    assert len(neurons) == 16
    roles = sorted(n.meta["role"] for n in neurons[:8])
    assert roles == sorted(["layernorm", "linear", "linear", "linear", "softmax", "product",
                            "layernorm", "gelu"])
    consumers = graph.consumers()
    spiking_in = {c for n in neurons for c in consumers[n.name]}

    def fed(name):          # the nodes a neuron's spikes reach through shape ops
        for c in consumers[name]:
            yield from fed(c) if graph[c].SHAPE_ONLY else (c,)
    # Everything fed by spikes is a synaptic layer or a product (via shape ops).
    reached = {c for n in neurons for c in fed(n.name)}
    assert reached and all(isinstance(graph[c], (ir.Linear, ir.ProductECM)) for c in reached), \
        sorted((c, graph[c].KIND) for c in reached)
    conv = graph.of_kind(ir.Conv2d)[0]
    assert not graph.spiking[conv.inputs[0]]                       # patch embedding is analog
    head = graph["head"]
    assert not graph.spiking[head.inputs[0]]                       # head input is analog
    assert "head" not in spiking_in
    products = graph.of_kind(ir.ProductECM)
    assert all(graph.spiking[i] for p in products for i in p.inputs)
    qk, av = products[0], products[1]
    assert qk.transpose_b and not qk.transpose_a and qk.scale == pytest.approx(64 ** -0.5)
    assert not av.transpose_a and not av.transpose_b and av.scale == 1.0


class Unconvertible(nn.Module):
    """Three operations the converter cannot express, in nested modules."""

    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.tanh(self.fc(x))                   # UNSUPPORTED tanh

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(self.Branch(), self.Branch())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.blocks(x)
        x = x + torch.cumsum(x, dim=-1)                     # UNSUPPORTED cumsum
        return self.head(x)


def test_unsupported_model_lists_every_operation():
    with pytest.raises(UnsupportedModelError) as err:
        ecmt.convert(Unconvertible().eval(), torch.randn(4, 8), progress=False)
    lines = str(err.value).splitlines()
    assert lines[0] == "cannot convert Unconvertible: 3 unsupported operation(s):"
    source, first = inspect.getsourcelines(Unconvertible)
    where = {op: first + i for i, text in enumerate(source) for op in ("tanh", "cumsum")
             if f"UNSUPPORTED {op}" in text}
    here = Path(__file__).name
    assert [line.split(" (")[0] for line in lines[1:]] == [
        "  blocks.0: torch.tanh", "  blocks.1: torch.tanh", "  <top>: torch.cumsum"]
    for line, op in zip(lines[1:], ("tanh", "tanh", "cumsum")):
        assert "(no conversion rule)" in line
        assert line.endswith(f"{here}:{where[op]}"), line


def test_timm_model_errors_name_module_and_source_line():
    # a tanh MLP activation has no ECM: every block's is listed, with timm's call site
    model = timm_model("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8, act_layer=nn.Tanh)
    with pytest.raises(UnsupportedModelError) as err:
        ecmt.convert(model, torch.randn(2, 3, 32, 32), progress=False)
    lines = str(err.value).splitlines()[1:]
    assert [line.split(" (")[0] for line in lines] == ["  blocks.0.mlp.act: Tanh", "  blocks.1.mlp.act: Tanh"]
    for line in lines:
        path, number = re.search(r" at (timm/\S+):(\d+)$", line).groups()
        called = (Path(inspect.getfile(timm)).parent.parent / path).read_text().splitlines()[int(number) - 1]
        assert "self.act(" in called, (line, called)


@pytest.mark.parametrize("build", [relu_mlp, cnn_strided_depthwise])
def test_relu_networks_become_positive_only_neurons(build):
    model = build()
    calib, x = torch.randn(64, 1, 8, 8), torch.randn(16, 1, 8, 8)
    spiking = ecmt.convert(model, calib, progress=False)
    neurons = spiking.graph.of_kind(ir.MTNeuron)
    assert len(neurons) == sum(isinstance(m, nn.ReLU) for m in model.modules())
    assert all(n.th_neg is None and n.meta["role"] == "relu" for n in neurons)
    with torch.no_grad():
        ann = model(x)
    assert rel_err(spiking.analog(x), ann) < 1e-5
    est = spiking(x, 64)
    assert rel_err(est[63], ann) < rel_err(est[3], ann) < rel_err(est[0], ann)
    assert rel_err(est[63], ann) < 0.1


def test_per_channel_thresholds_and_levels():
    model = timm_model("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=8)
    spiking = ecmt.convert(model, torch.randn(8, 3, 32, 32), per_channel=True, levels=4, progress=False)
    for n in spiking.graph.of_kind(ir.MTNeuron):
        shape = spiking.graph.shapes[n.name]
        assert n.levels == 4
        assert n.th_pos.shape[-1] == shape[-1] and n.th_pos.shape[-2] == 1
        assert n.th_pos.unique().numel() > 1, n.name        # each channel its own quantile
    assert spiking.graph.meta["calibration"]["per_channel"] is True


def test_wrong_sign_quantiles_fall_back_to_the_other_side():
    # Softmax outputs are never negative: the (1-p) quantile is positive, not a threshold.
    model = timm_model("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=8)
    graph = ecmt.convert(model, torch.randn(8, 3, 32, 32), progress=False).graph
    (soft,) = [n for n in graph.of_kind(ir.MTNeuron) if n.meta["role"] == "softmax"]
    assert soft.th_pos.item() > 0 and soft.th_neg.item() == soft.th_pos.item()
    assert graph.meta["calibration"]["sign_fallbacks"] >= 1


def test_fixed_thresholds_by_role():
    model = timm_model("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=8)
    graph = ecmt.convert(model, torch.randn(8, 3, 32, 32), progress=False,
                         fixed_thresholds={"softmax": (0.0125, 0.0125)}).graph
    (soft,) = [n for n in graph.of_kind(ir.MTNeuron) if n.meta["role"] == "softmax"]
    assert soft.th_pos.item() == pytest.approx(0.0125)


def test_threshold_scale_and_the_multi_level_point():
    """threshold_scale multiplies every calibrated threshold (not the fixed ones), exactly;
    ecmt.MULTI_LEVEL is thresholds / 16, 12 levels, k = 4; a bad scale is refused first."""
    model = timm_model("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=8)
    calib = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    base = ecmt.convert(model, calib, progress=False).graph
    fixed = {"softmax": (0.0125, 0.0125)}
    multi = ecmt.convert(model, calib, progress=False, fixed_thresholds=fixed, **ecmt.MULTI_LEVEL).graph
    assert ecmt.MULTI_LEVEL == {"threshold_scale": 1 / 16, "levels": 12, "spikes_per_step": 4}
    for b, m in zip(base.of_kind(ir.MTNeuron), multi.of_kind(ir.MTNeuron)):
        assert (m.levels, m.spikes_per_step) == (12, 4)
        if m.meta["role"] == "softmax":
            assert m.th_pos.item() == pytest.approx(0.0125)
        else:
            assert torch.equal(m.th_pos, b.th_pos / 16), m.name
            assert (m.th_neg is None) == (b.th_neg is None)
            assert m.th_neg is None or torch.equal(m.th_neg, b.th_neg / 16), m.name
    assert multi.meta["calibration"]["threshold_scale"] == 1 / 16
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ecmt.EcmtError, match="threshold_scale must be a number > 0"):
            ecmt.convert(model, calib, progress=False, threshold_scale=bad)


@pytest.mark.parametrize("n", [1_000, 300_001, 2_000_000])
@pytest.mark.parametrize("q", [0.99, 0.01, 0.999, 0.5, 1.0])
def test_calibration_quantiles_are_exact(n, q):
    """A long row's quantile (cut at a sample's quantile, then selected) is torch.quantile's."""
    from ecmt.convert.calibrate import quantile_rows
    g = torch.Generator().manual_seed(n)
    for x in (torch.randn(1, n, generator=g), torch.randn(1, n, generator=g).clamp(min=0),
              torch.ones(1, n).index_fill_(1, torch.arange(10), 5.0)):
        ref = torch.quantile(x[0].double(), q).float().reshape(1)
        torch.testing.assert_close(quantile_rows(x, q), ref, rtol=1e-6, atol=0)


def test_calibration_reads_only_the_iterable_it_is_given():
    seen = []

    def batches():
        for i in range(3):
            x = torch.randn(4, 1, 8, 8)
            seen.append(x)
            yield x, torch.zeros(4)

    spiking = ecmt.convert(relu_mlp(), batches(), progress=False)
    assert len(seen) == 3 and spiking.graph.meta["calibration"]["samples"] == 12


def test_convert_leaves_the_callers_training_flags_alone():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 10))
    model.train()
    model[2].eval()                                  # mixed flags come back exactly as they were
    flags = [m.training for m in model.modules()]
    calib, x = torch.randn(64, 1, 8, 8), torch.randn(8, 1, 8, 8)
    analog = ecmt.convert(model, calib, spiking=False, progress=False)
    assert [m.training for m in model.modules()] == flags
    model.eval()                                     # converted as the eval-mode network
    with torch.no_grad():
        torch.testing.assert_close(analog.analog(x), model(x), rtol=1e-5, atol=1e-6)
