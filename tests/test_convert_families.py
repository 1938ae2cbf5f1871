"""Transformer families beyond plain ViT: each converts exactly (analog graph =
model) and its spiking estimate converges.  Tiny random-weight configs."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, GluMlp

import ecmt
from ecmt import ir
from models import randomize

pytestmark = pytest.mark.slow


def timm_tiny(name, **kw):
    return lambda: timm.create_model(name, pretrained=False, **kw)


def torchvision_vit():
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


def batchnorm_act_cnn():
    # timm's BatchNormAct2d calls F.batch_norm as a function
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BatchNormAct2d(8, act_layer=nn.ReLU),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), BatchNormAct2d(8, act_layer=nn.ReLU),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


VIT = dict(depth=2, embed_dim=32, num_heads=2, img_size=32, patch_size=8)
# family: (builder, input size, evidence in a node's name, kind or function that the family's op was lowered)
FAMILIES = {
    # window partition / reverse fold windows into the batch; shifted windows roll and mask
    "swin": (timm_tiny("swin_tiny_patch4_window7_224", img_size=32, window_size=4, depths=(2,),
                       num_heads=(2,), embed_dim=16), 32, "roll"),
    # rotary embedding (even/odd features by strided slicing, torch.stack, constant cos/sin)
    # and SwiGLU (a SiLU ECM, the gate a product ECM of two spike streams)
    "eva02": (timm_tiny("eva02_tiny_patch14_224", depth=2, embed_dim=32, num_heads=2, img_size=28), 28, "gate"),
    "clip_quickgelu": (timm_tiny("vit_base_patch16_clip_quickgelu_224", **VIT), 32, "gate"),
    # hardswish ECMs, batch norm over tokens folded into the batch, strided subsampling
    "levit": (timm_tiny("levit_128s", depth=(1, 1), num_heads=(2, 2), embed_dim=(32, 48), key_dim=8,
                        img_size=32), 32, "hardswish"),
    # MBConv: F.batch_norm, SiLU, a squeeze-excite gate broadcast over the map
    "coatnet": (timm_tiny("coatnet_0_rw_224", depths=(1, 1), embed_dim=(16, 32), img_size=32), 32, "gate"),
    # cosine attention (F.normalize as a layer norm ECM), log-spaced continuous position bias
    "swinv2_cosine_attention": (timm_tiny("swinv2_tiny_window8_256", img_size=32, window_size=4, depths=(2,),
                                          num_heads=(2,), embed_dim=16), 32, "normalize"),
    "xcit_cross_covariance": (timm_tiny("xcit_nano_12_p16_224", depth=2, img_size=32), 32, "normalize"),
    # GEGLU: the gate is a product ECM of two spike streams
    "gated_mlp": (timm_tiny("vit_tiny_patch16_224", **VIT, mlp_layer=GluMlp, act_layer=nn.GELU), 32, "gate"),
    "beit_relpos_bias": (timm_tiny("beit_base_patch16_224", **VIT), 32, "bias"),
    "parallel_blocks": (timm_tiny("vit_small_patch16_18x2_224", **VIT), 32, "concat"),
    "siglip_attention_pool": (timm_tiny("vit_base_patch16_siglip_224", **VIT), 32, "query0"),
    "pit_shape_slices": (timm_tiny("pit_ti_224", depth=(1, 1), heads=(2, 4), img_size=32, patch_size=8,
                                   stride=4, base_dims=(16, 16)), 32, "slice"),
    "torchvision_mha": (torchvision_vit, 32, "out_proj"),
    # ResNet stem: SAME padding computed from shapes (traced with concrete shapes), group norm,
    # -inf padding before max pooling (edge padding)
    "vit_hybrid_resnet_stem": (timm_tiny("vit_tiny_r_s16_p8_224", depth=1, embed_dim=32, num_heads=2, img_size=32),
                               32, "edge_pad"),
    # branches on a cached buffer's shape; attention renormalized by its row sum (a constant)
    "convit_gpsa": (timm_tiny("convit_tiny", depth=2, img_size=32, patch_size=8, embed_dim=32, num_heads=2,
                              local_up_to_layer=1), 32, None),
    # pads each window grid only if the size does not divide (a branch on shapes)
    "twins_windows": (timm_tiny("twins_svt_small", depths=(1, 1), embed_dims=(16, 32), num_heads=(1, 2),
                                mlp_ratios=(2, 2), sr_ratios=(2, 1), wss=(3, 3), img_size=32), 32, None),
    # nn.Unfold as layout ops, then a conv over the patches folded into the batch
    "tnt_unfold": (timm_tiny("tnt_s_patch16_224", depth=1, img_size=32, embed_dim=32, inner_dim=8,
                             num_heads_inner=2, num_heads_outer=2), 32, "unfold"),
    "batch_norm_function": (batchnorm_act_cnn, 16, None),
}


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_converts_exactly_and_converges(family):
    build, size, evidence = FAMILIES[family]
    torch.manual_seed(0)
    model = randomize(build())
    gen = torch.Generator().manual_seed(1)
    calib, x = torch.randn(8, 3, size, size, generator=gen), torch.randn(2, 3, size, size, generator=gen)
    spiking = ecmt.convert(model, calib, progress=False)
    if evidence:
        assert any(evidence in f"{n.name} {n.KIND} {getattr(n, 'function', '')}" for n in spiking.graph), evidence
    with torch.no_grad():
        ann = model(x)
        assert rel_err(spiking.analog(x), ann) <= 1e-5
        est = spiking(x, 32)
    errors = [rel_err(est[t - 1], ann) for t in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[0], errors


def test_batch_norm_function_folds_into_the_conv():
    torch.manual_seed(0)
    graph = ecmt.convert(randomize(batchnorm_act_cnn()), torch.randn(8, 3, 16, 16), spiking=False,
                         progress=False).graph
    assert not graph.of_kind(ir.Scale) and len(graph.of_kind(ir.Conv2d)) == 2


def test_avg_pool_without_padding_counted():
    # EfficientFormer's pooling token mixer: AvgPool2d(3, 1, 1, count_include_pad=False) - x
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                          nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 5)).eval()
    x = torch.randn(4, 3, 8, 8)
    spiking = ecmt.convert(model, torch.randn(8, 3, 8, 8), progress=False)
    with torch.no_grad():
        assert rel_err(spiking.analog(x), model(x)) <= 1e-5


def test_normalize_along_any_axis():
    class Cosine(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):                       # [B, 4, 6]: normalize each of the 6 columns
            return self.fc(F.normalize(self.fc(x), dim=1))

    torch.manual_seed(0)
    model, x = Cosine().eval(), torch.randn(3, 4, 6)
    spiking = ecmt.convert(model, torch.randn(8, 4, 6), progress=False)
    with torch.no_grad():
        assert rel_err(spiking.analog(x), model(x)) <= 1e-5


def test_tracing_failure_names_module_and_line():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 4)
            self.outer = nn.Sequential(Gate())

        def forward(self, x):
            return self.outer(self.inner(x))

    class Gate(nn.Module):
        def forward(self, x):
            if x.sum() > 0:          # data-dependent control flow
                return x
            return -x

    with pytest.raises(ecmt.errors.UnsupportedModelError, match=r"in outer\.0 \(.*test_convert_families\.py:\d+\)"):
        ecmt.convert(Branchy(), torch.randn(2, 4), progress=False)


@pytest.mark.parametrize("family", ["swin", "eva02", "coatnet"])
def test_exports_of_new_families(family, tmp_path):
    """Window folding, rolls, rotary slicing, gates and SiLU: ONNX runs in lockstep
    with the executor, NIR round-trips."""
    import exporters.nir as enir
    from exporters.onnx import export, run
    from exporters.verify import lockstep
    build, size, _ = FAMILIES[family]
    torch.manual_seed(0)
    spiking = ecmt.convert(randomize(build()), torch.randn(8, 3, size, size), progress=False)
    x, T = torch.randn(2, 3, size, size), 4
    path = export(spiking.graph, tmp_path / "m.onnx", expose_spikes=True)
    estimates, spikes = run(path, x.numpy(), T)
    result = lockstep(spiking.graph, x, T, estimates, lambda node, t: spikes[(node, t)])
    assert result.max_rel_diff <= 1e-5, result
    enir.export(spiking.graph, tmp_path / "g.nir")
    loaded = enir.load(tmp_path / "g.nir")
    assert torch.equal(spiking(x, 3), ecmt.SpikingModel(loaded)(x, 3))


class ShapeBranches(nn.Module):
    """Python control flow on shapes: pad to a multiple of 3 only when needed."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 9 * 9, 5)

    def forward(self, x):
        h, w = x.shape[-2:]
        if h % 3 or w % 3:
            x = F.pad(x, (0, (3 - w % 3) % 3, 0, (3 - h % 3) % 3))
        x = F.relu(self.conv(x))
        return self.fc(x.reshape(x.shape[0], -1))


def test_shape_branches_are_decided_for_the_calibration_shape():
    torch.manual_seed(0)
    model, x = ShapeBranches().eval(), torch.randn(3, 3, 8, 8)
    spiking = ecmt.convert(model, torch.randn(8, 3, 8, 8), progress=False)
    assert tuple(spiking.graph.of_kind(ir.Input)[0].shape) == (3, 8, 8)   # 9 x 9 after the pad
    with torch.no_grad():
        assert rel_err(spiking.analog(x), model(x)) <= 1e-5
    assert not any(k.startswith("_tensor_constant") for k in dict(model.named_buffers())), \
        "tracing must not leave attributes on the caller's model"


def test_branch_on_the_batch_size_is_refused():
    class ByBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.shape[0] > 2:               # differs between the converter's two traces
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(ecmt.errors.UnsupportedModelError, match=r"different path for a batch of 2 than for 3"):
        ecmt.convert(ByBatch(), torch.randn(4, 4), progress=False)


def test_division_by_an_input_dependent_tensor_is_refused():
    class RowNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            return y / y.sum(-1, keepdim=True)     # not a constant: no ECM computes it

    with pytest.raises(ecmt.errors.UnsupportedModelError, match=r"division by an input-dependent tensor"):
        ecmt.convert(RowNorm(), torch.randn(4, 4), progress=False)


@pytest.mark.parametrize("kernel,stride,padding", [(4, 4, 0), (3, 2, 1), (4, 4, 1)])
def test_unfold_exact(kernel, stride, padding):
    """Non-overlapping patches (layout ops) and overlapping ones (one-hot grouped conv)."""
    class Patches(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.unfold = nn.Unfold(kernel, padding=padding, stride=stride)
            self.fc = nn.Linear(3 * kernel * kernel, 6)

        def forward(self, x):
            return self.fc(self.unfold(self.conv(x)).transpose(1, 2)).mean(1)

    torch.manual_seed(0)
    model, x = Patches().eval(), torch.randn(3, 3, 10, 10)
    spiking = ecmt.convert(model, torch.randn(8, 3, 10, 10), progress=False)
    with torch.no_grad():
        assert rel_err(spiking.analog(x), model(x)) <= 1e-5


def _pairs(a, b):
    """(row of a, column of b) products with both operands non-zero, counted by a matmul of
    indicators: an oracle independent of hw_sim's fan-out bookkeeping."""
    return int(((a != 0).double() @ (b != 0).double()).sum())


@pytest.mark.parametrize("family", ["swin", "eva02"])
def test_hw_sim_counts_of_new_families_equal_brute_force(family):
    """Every synaptic node fed only by spikes (windowed / rotary / gated graphs): hw_sim's
    synaptic-op count at each step equals a brute-force count from the recorded inputs."""
    from ecmt.runtime import GraphExecutor
    from hw_sim.counting import Counter, to_lists
    build, size, _ = FAMILIES[family]
    torch.manual_seed(0)
    graph = ecmt.convert(randomize(build()), torch.randn(8, 3, size, size), progress=False).graph
    spiking = {n.name for n in graph.of_kind(ir.MTNeuron)}
    fed_by_spikes = [n for n in graph if isinstance(n, (ir.Linear, ir.Conv2d, ir.ProductECM))
                     and all(i in spiking for i in n.inputs)]
    assert {type(n) for n in fed_by_spikes} >= {ir.Linear, ir.ProductECM}, "no spiking synapses to check"
    executor = GraphExecutor(graph, record_levels=True)
    T = 3
    counter = Counter(executor, T)
    inputs = {}

    def observe(node, ins, out, t):
        counter(node, ins, out, t)
        if node in fed_by_spikes:
            inputs[(node.name, t)] = [i.clone() for i in ins]

    executor.run(torch.randn(2, 3, size, size), T, observer=observe)
    counts = to_lists(counter.result())
    for node in fed_by_spikes:
        sums = None
        for t in range(1, T + 1):
            ins = inputs[(node.name, t)]
            if isinstance(node, ir.Linear):
                expected = int((ins[0] != 0).sum()) * node.weight.shape[0]
            elif isinstance(node, ir.Conv2d):
                w = node.weight
                ones = torch.ones(w.shape[0], w.shape[1], *w.shape[2:], dtype=torch.float64)
                expected = int(F.conv2d((ins[0] != 0).double(), ones, stride=node.stride,
                                        padding=node.padding, groups=node.groups).sum())
            else:        # the incremental product: new x new + new x old + old x new
                a, b = ins[0], (ins[1].transpose(-1, -2) if node.transpose_b else ins[1])
                expected = _pairs(a, b)
                if sums is not None:
                    expected += _pairs(a, sums[1]) + _pairs(sums[0], b)
                sums = (a.clone(), b.clone()) if sums is None else (sums[0] + a, sums[1] + b)
            assert counts[node.name]["sops"][t - 1] == expected, (node.name, t)
