"""Conversion of timm transformers and ReLU networks."""
import pytest
import timm
import torch
import torch.nn as nn

import ecmt
from ecmt import ir
from ecmt.errors import UnsupportedModelError
from models import relu_mlp


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def timm_model(name, **kw):
    return timm.create_model(name, pretrained=False, **kw).eval()


CASES = {
    "vit_tiny_patch16_224": dict(),
    "deit_tiny_distilled_patch16_224": dict(depth=4),
    "eva_giant_patch14_224": dict(depth=2, embed_dim=96, num_heads=4, img_size=56),  # EVA blocks, GELU MLP
}


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
    est = spiking(x, 32)
    assert est.shape == (32, *ann.shape)
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
    # Everything fed by spikes is a synaptic layer or a product (via shape ops).
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


def test_unsupported_model_lists_every_operation():
    model = timm_model("eva02_tiny_patch14_224", depth=2)      # rotary embeddings and SwiGLU
    with pytest.raises(UnsupportedModelError) as err:
        ecmt.convert(model, torch.randn(2, 3, 224, 224), progress=False)
    text = str(err.value)
    for path in ("blocks.0.mlp.act: SiLU", "blocks.1.mlp.act: SiLU", "blocks.0.attn:", "blocks.1.attn:"):
        assert path in text
    assert text.count("\n") >= 8


def relu_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 4, 3, groups=4, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10)).eval()


@pytest.mark.parametrize("build", [relu_mlp, relu_cnn])
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


def test_calibration_reads_only_the_iterable_it_is_given():
    seen = []

    def batches():
        for i in range(3):
            x = torch.randn(4, 1, 8, 8)
            seen.append(x)
            yield x, torch.zeros(4)

    spiking = ecmt.convert(relu_mlp(), batches(), progress=False)
    assert len(seen) == 3 and spiking.graph.meta["calibration"]["samples"] == 12
