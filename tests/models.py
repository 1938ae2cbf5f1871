"""Small networks and graphs shared by the tests (one home, one name each)."""
import torch
import torch.nn as nn

from ecmt import SpikingGraph, ir
from ecmt.zoo import randomize  # noqa: F401 - shared with the tests through this module

# `ecmt convert` arguments for a one-block timm ViT on 8x8 grey images (the CLI tests).
TINY_VIT = ["--model", "timm:vit_tiny_patch16_224", "--model-arg", "img_size=8", "--model-arg",
            "patch_size=4", "--model-arg", "in_chans=1", "--model-arg", "num_classes=10",
            "--model-arg", "depth=1", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2"]


def relu_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 10)).eval()


def cnn_strided_depthwise():
    """ReLU CNN with a strided and a depthwise (groups = channels) convolution."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 4, 3, groups=4, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10)).eval()


def cnn_strided_grouped():
    """ReLU CNN with a strided, two-group convolution."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()


def cnn_avgpool_grouped():
    """ReLU CNN with average pooling and a two-group convolution."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10)).eval()


def small_graph() -> SpikingGraph:
    """Linear -> signed MT neuron (4 levels) -> bias-free linear."""
    g = torch.Generator().manual_seed(0)
    return SpikingGraph([
        ir.Input("input", (), shape=(6,)),
        ir.Linear("fc1", ("input",), weight=torch.randn(8, 6, generator=g), bias=torch.randn(8, generator=g)),
        ir.MTNeuron("mt1", ("fc1",), th_pos=torch.tensor(0.5), th_neg=torch.tensor(0.4), levels=4),
        ir.Linear("fc2", ("mt1",), weight=torch.randn(3, 8, generator=g), bias=None),
        ir.Output("output", ("fc2",)),
    ])


def ecm_graph() -> SpikingGraph:
    """A layer norm ECM feeding a product ECM: the float attributes eps and scale."""
    return SpikingGraph([
        ir.Input("input", (), shape=(4, 6)),
        ir.LayerNormECM("ln", ("input",), weight=torch.ones(6), bias=torch.zeros(6), eps=1e-5, features=6),
        ir.ProductECM("qk", ("ln", "ln"), transpose_b=True, scale=0.5),
        ir.Output("output", ("qk",)),
    ])


def every_kind_graph() -> SpikingGraph:
    """One graph with every node kind (PPN comes from expand_ppn below)."""
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)
    return SpikingGraph([
        ir.Input("input", (), shape=(1, 6, 6)),
        ir.Conv2d("conv", ("input",), weight=r(4, 1, 3, 3), bias=r(4), padding=(1, 1)),
        ir.MTNeuron("mt", ("conv",), th_pos=torch.tensor(0.5), th_neg=None, levels=4),
        ir.MaxPool2d("mp", ("mt",), kernel_size=(2, 2), stride=(2, 2)),
        ir.AvgPool2d("ap", ("mp",), kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
        ir.Reshape("rs", ("ap",), shape=(4, 9)),
        ir.Permute("pm", ("rs",), dims=(1, 0)),
        ir.Constant("cls", (), value=r(1, 4)),
        ir.Concat("cat", ("cls", "pm"), axis=0),
        ir.LayerNormECM("ln", ("cat",), weight=r(4), bias=r(4), eps=1e-5, features=4),
        ir.Linear("fc", ("ln",), weight=r(8, 4), bias=r(8)),
        ir.GELUECM("gelu", ("fc",), approximate="tanh"),
        ir.ReLUECM("relu", ("gelu",)),
        ir.ElementwiseECM("silu", ("relu",), function="silu"),
        ir.ProductECM("qk", ("silu", "silu"), transpose_b=True, scale=0.3),
        ir.SoftmaxECM("sm", ("qk",), axis=-1),
        ir.ProductECM("av", ("sm", "fc")),
        ir.Add("add", ("av", "fc")),
        ir.Scale("ls", ("add",), factor=r(8)),
        ir.Slice("sl", ("ls",), axis=0, start=1, stop=10),
        ir.Mean("mean", ("sl",), axis=0),
        ir.Select("tok", ("ls",), axis=0, index=0),
        ir.Add("sum", ("mean", "tok")),
        ir.MTNeuron("mt2", ("sum",), th_pos=r(8).abs() + 0.1, th_neg=r(8).abs() + 0.1, levels=3),
        ir.Linear("head", ("mt2",), weight=r(3, 8)),
        ir.Output("output", ("head",)),
    ])
