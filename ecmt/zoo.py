"""The demo models, their seeded training recipes, and checkpoint loading for
them and for users' models.

* ``demo``: a small timm VisionTransformer for 28x28 grey images;
* ``demo-cnn``: a small ResNet-style CNN (batch norm, a residual block, max
  and average pooling) for the same images;
* ``demo-mlp``: a ReLU MLP (784-256-128-10), the plain sequential network
  that every NIR consumer and lava-dl's netx can express.

Checkpoints are read without unpickling code: safetensors, or torch files
with ``weights_only=True``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .atomic import atomic_path, write_text
from .errors import EcmtError
from .tensorfile import read_tensors

ASSETS = Path(__file__).parent / "assets"
DEMO_CHECKPOINT = ASSETS / "demo_vit.safetensors"
DEMO_CONFIG = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4,
                   num_heads=4, mlp_ratio=2.0)
DEMO_RECIPE = dict(epochs=12, batch_size=128, lr=2e-3, weight_decay=0.05, warmup_epochs=1, seed=0)
CNN_RECIPE = dict(epochs=4, batch_size=128, lr=2e-3, weight_decay=5e-4, warmup_epochs=1, seed=0)
MLP_RECIPE = dict(epochs=8, batch_size=128, lr=2e-3, weight_decay=5e-4, warmup_epochs=1, seed=0)


def build_demo_vit(**overrides) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(**{**DEMO_CONFIG, **overrides})


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]


class ResidualBlock(nn.Module):
    """relu(x + bn(conv(relu(bn(conv(x))))))"""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(channels, channels), nn.ReLU(), *_conv_bn(channels, channels))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.body(x))


def build_demo_cnn() -> torch.nn.Module:
    """28x28x1 -> 16 ch -> residual -> maxpool -> 32 ch -> residual -> avgpool
    -> 64 ch -> global average -> 10 classes (about 70 k parameters)."""
    return nn.Sequential(
        *_conv_bn(1, 16), nn.ReLU(), ResidualBlock(16), nn.MaxPool2d(2),
        *_conv_bn(16, 32), nn.ReLU(), ResidualBlock(32), nn.AvgPool2d(2),
        *_conv_bn(32, 64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def build_demo_mlp() -> torch.nn.Module:
    """28x28x1 -> 256 -> 128 -> 10, ReLU between the layers (about 235 k parameters)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 10))


@dataclasses.dataclass(frozen=True)
class Demo:
    """A model to train with `train_demo`: a builder, its default checkpoint, its
    recipe (DEMO_RECIPE's keys) and the config recorded with the checkpoint."""
    build: Callable[[], torch.nn.Module]
    checkpoint: Path
    recipe: dict
    config: dict
    name: str = "custom"


DEMOS = {
    "demo": Demo(build_demo_vit, DEMO_CHECKPOINT, DEMO_RECIPE, DEMO_CONFIG),
    "demo-cnn": Demo(build_demo_cnn, ASSETS / "demo_cnn.safetensors", CNN_RECIPE, {"model": "build_demo_cnn"}),
    "demo-mlp": Demo(build_demo_mlp, ASSETS / "demo_mlp.safetensors", MLP_RECIPE, {"model": "build_demo_mlp"}),
}


def load_state_dict(path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: safetensors, or a torch file read with weights_only=True
    (a bare state dict, or one under 'state_dict' / 'model')."""
    state = read_tensors(path, "checkpoint", hint="ecmt only reads tensors (weights_only=True); re-save the "
                                                  "state_dict, or use safetensors")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EcmtError(f"{path}: expected a state dict of tensors")
    return state


def randomize(model: nn.Module) -> nn.Module:
    """Random weights that make every block of a shrunk timm model matter, for checks on
    models nobody trained (tests, benchmarks/zoo.py): timm zero-initializes heads,
    relative position tables and Swin-v2's post-norm weights and starts LayerScale near
    0, which would hide an error in them.  In place; returns the model in eval mode."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5)
            elif p.numel() and bool((p == p[0]).all()) and (
                    0 < abs(p[0].item()) < 0.5 or (p[0].item() == 0 and name.endswith("weight"))):
                p.fill_(1.0)
    return model.eval()


def load_model(spec: str, checkpoint: str | None = None, **kwargs) -> torch.nn.Module:
    """'demo' (the committed demo ViT), 'demo-cnn' / 'demo-mlp' (the committed demo
    CNN / MLP), or 'timm:<name>' with an optional checkpoint; kwargs go to timm.create_model."""
    if spec in DEMOS:
        model = DEMOS[spec].build()
        path = Path(checkpoint) if checkpoint else DEMOS[spec].checkpoint
        if not path.exists():
            raise EcmtError(f"{spec} checkpoint {path} is missing",
                            hint=f"train it with `ecmt train-demo --model {spec}`")
    elif spec.startswith("timm:"):
        import timm
        # Without a checkpoint the weights are random: seeded, so that every run (and
        # every torch.distributed rank) builds the same model.
        torch.manual_seed(0)
        try:
            model = timm.create_model(spec[5:], pretrained=False, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise EcmtError(f"cannot build timm model {spec[5:]!r}: {err}") from None
        path = Path(checkpoint) if checkpoint else None
    else:
        raise EcmtError(f"unknown model {spec!r}", hint="use 'demo', 'demo-cnn', 'demo-mlp' or 'timm:<model name>'")
    if path is not None:
        state = load_state_dict(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise EcmtError(f"{path}: checkpoint does not fit {spec}: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    return model.eval()


def check_input(model: torch.nn.Module, images: torch.Tensor, what: str) -> None:
    """Refuse images `model` cannot take, before any work, naming both shapes: a ViT's
    patch embedding states its channels and image size; other models try one image."""
    from .errors import DataError
    given = list(images.shape[1:])
    embed = getattr(model, "patch_embed", None)
    if embed is not None and hasattr(embed, "img_size") and hasattr(getattr(embed, "proj", None), "in_channels"):
        expected = [embed.proj.in_channels, *embed.img_size]
        fixed_size = not getattr(embed, "dynamic_img_size", False)
        if given[0] != expected[0] or (fixed_size and given != expected):
            raise DataError(f"{what}: the images are {given} (channels, height, width) but the model takes "
                            f"{expected}", hint="use data with the model's channels and image size")
        return
    try:
        with torch.no_grad():
            model(images[:1])
    except RuntimeError as err:
        first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        takes = (f"its first layer takes {first.in_channels} channels" if isinstance(first, nn.Conv2d) else
                 f"its first layer takes {first.in_features} values per image" if first is not None else
                 "it fails on them")
        raise DataError(f"{what}: the images are {given} (channels, height, width); {takes} "
                        f"({str(err).splitlines()[0]})",
                        hint="use data with the model's channels and image size") from None


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 2 pixels (seeded)."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2), value=float(x.min()))
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    return padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


def train_demo(out: str | Path | None = None, *, model: str | Demo = "demo", epochs: int | None = None,
               limit: int | None = None, seed: int | None = None, progress: bool = True,
               data_root: str | None = None) -> dict:
    """Train a demo model ('demo', 'demo-cnn' or 'demo-mlp', or any `Demo`: a builder and
    a recipe, as benchmarks/trained_zoo.py passes) on Fashion-MNIST with its seeded
    recipe; write a safetensors checkpoint (default: the packaged one, or the Demo's)
    and a .json with its test accuracy next to it."""
    from . import data
    from .evaluate import ann_accuracy

    if isinstance(model, Demo):
        demo, model = model, model.name
    elif model in DEMOS:
        demo = DEMOS[model]
    else:
        raise EcmtError(f"train_demo: unknown model {model!r}",
                        hint=f"use one of {', '.join(DEMOS)}, or pass an ecmt.zoo.Demo")
    out = demo.checkpoint if out is None else out
    recipe = {**demo.recipe, **({"epochs": epochs} if epochs else {}), **({"seed": seed} if seed is not None else {})}
    torch.manual_seed(recipe["seed"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    train = data.fashion_mnist("train", data_root).take(limit)
    test = data.fashion_mnist("test", data_root)
    name, model = model, demo.build()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps_per_epoch = math.ceil(len(train) / recipe["batch_size"])
    total = recipe["epochs"] * steps_per_epoch
    warmup = recipe["warmup_epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / total))))
    start = time.time()
    bar = tqdm(total=total, desc=f"train {name}", unit="step", disable=not progress)
    for epoch in range(recipe["epochs"]):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * recipe["batch_size"]:(i + 1) * recipe["batch_size"]]
            x, y = _augment(train.images[idx], gen), train.labels[idx]
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    acc = ann_accuracy(model, test, progress=progress)
    info = {"model": name, "config": demo.config, "recipe": recipe, "train_images": len(train),
            "test_accuracy": acc, "train_seconds": round(time.time() - start, 1),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"ecmt_demo": json.dumps(info)})
    write_text(out.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return {**info, "checkpoint": str(out)}
