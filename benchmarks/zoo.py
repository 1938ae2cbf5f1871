"""Which timm transformer families convert: shrunk random-weight models on the CPU.

    OMP_NUM_THREADS=1 python benchmarks/zoo.py            # writes docs/benchmarks/zoo.{md,json}
    python benchmarks/zoo.py --only swin,beit             # a subset, printed only

For each family: does `ecmt.convert` accept it, the analog graph's relative
error against the model, the spiking estimate's relative error at T = 4, 16 and
64 (one 64-step run), and the conversion time (lowering + calibration); or the
first lines of the error.  Random weights say nothing about accuracy; they do
say whether every operation is expressed exactly.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.layers import GluMlp, SwiGLUPacked

# eager kernels: compiling them for every one of many tiny models would dominate the run
os.environ.setdefault("ECMT_COMPILE", "0")
from machine import machine_info, machine_markdown, write_result  # noqa: E402

import ecmt  # noqa: E402
from ecmt.errors import EcmtError  # noqa: E402
from ecmt.zoo import randomize  # noqa: E402

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
SMALL_VIT = dict(depth=2, embed_dim=64, num_heads=2, img_size=32, patch_size=8)
SMALL_HIER = dict(depths=(2, 2), num_heads=(2, 4), embed_dim=32)
# family -> (timm name or "torchvision.vit", shrinking kwargs, input size)
FAMILIES = {
    "ViT": ("vit_tiny_patch16_224", SMALL_VIT, 32),
    "DeiT (distilled)": ("deit_tiny_distilled_patch16_224", SMALL_VIT, 32),
    "DeiT-3": ("deit3_small_patch16_224", SMALL_VIT, 32),
    "EVA": ("eva_giant_patch14_224", dict(depth=2, embed_dim=64, num_heads=2, img_size=28), 28),
    "EVA-02": ("eva02_tiny_patch14_224", dict(depth=2, embed_dim=64, num_heads=2, img_size=28), 28),
    "EVA-02 (GELU MLP)": ("eva02_tiny_patch14_224", dict(depth=2, embed_dim=64, num_heads=2, img_size=28,
                                                        swiglu_mlp=False, mlp_ratio=4.0), 28),
    "CaiT": ("cait_xxs24_224", dict(depth=2, embed_dim=64, num_heads=2, img_size=32, patch_size=8), 32),
    "ViT relpos": ("vit_relpos_small_patch16_224", SMALL_VIT, 32),
    "BEiT": ("beit_base_patch16_224", SMALL_VIT, 32),
    "BEiTv2": ("beitv2_base_patch16_224", SMALL_VIT, 32),
    "CLIP QuickGELU": ("vit_base_patch16_clip_quickgelu_224", SMALL_VIT, 32),
    "SigLIP (attention pool)": ("vit_base_patch16_siglip_224", SMALL_VIT, 32),
    "ViT GEGLU (gated MLP)": ("vit_tiny_patch16_224", dict(SMALL_VIT, mlp_layer=GluMlp, act_layer=nn.GELU), 32),
    "ViT hybrid (ResNet stem)": ("vit_small_r26_s32_224", dict(depth=2, embed_dim=64, num_heads=2, img_size=64), 64),
    "ViT SwiGLU": ("vit_tiny_patch16_224", dict(SMALL_VIT, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU), 32),
    "ViT parallel blocks": ("vit_small_patch16_18x2_224", SMALL_VIT, 32),
    "ViT reg tokens": ("vit_medium_patch16_reg4_gap_256", SMALL_VIT, 32),
    "ViT RoPE": ("vit_base_patch16_rope_224", SMALL_VIT, 32),
    "Swin": ("swin_tiny_patch4_window7_224", dict(SMALL_HIER, img_size=56, window_size=7), 56),
    "Swin-v2": ("swinv2_tiny_window8_256", dict(SMALL_HIER, img_size=64, window_size=8), 64),
    "XCiT": ("xcit_nano_12_p16_224", dict(depth=2, img_size=32), 32),
    "EfficientFormer": ("efficientformer_l1", dict(depths=(1, 1, 1, 2), num_vit=1,
                                                   embed_dims=(16, 24, 32, 48)), 224),
    "LeViT": ("levit_128s", dict(depth=(1, 1, 1), img_size=64), 64),
    "PiT": ("pit_ti_224", dict(depth=(1, 1, 1), img_size=64), 64),
    "TNT": ("tnt_s_patch16_224", dict(depth=2, img_size=32, embed_dim=64, num_heads_outer=2), 32),
    "MaxViT": ("maxvit_tiny_rw_224", dict(depths=(1, 1), embed_dim=(32, 64), img_size=64), 64),
    "CoAtNet": ("coatnet_0_rw_224", dict(depths=(1, 1), embed_dim=(32, 64), img_size=64), 64),
    "ConViT": ("convit_tiny", dict(depth=2, img_size=32, patch_size=8), 32),
    "torchvision ViT": ("torchvision.vit", dict(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=64, mlp_dim=128), 32),
    "Twins": ("twins_svt_small", dict(depths=(1, 1), embed_dims=(32, 64), num_heads=(1, 2),
                                      mlp_ratios=(2, 2), sr_ratios=(2, 1), img_size=64), 64),
}


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def build(name: str, kwargs: dict) -> nn.Module:
    if name == "torchvision.vit":
        from torchvision.models.vision_transformer import VisionTransformer
        return VisionTransformer(**kwargs)
    return timm.create_model(name, pretrained=False, **kwargs)


def try_family(name: str, kwargs: dict, size: int) -> dict:
    torch.manual_seed(0)
    try:
        model = randomize(build(name, kwargs)).eval()
    except Exception as err:  # noqa: BLE001 - a shrinking kwarg timm rejects is a benchmark bug, shown as such
        return {"converts": False, "error": f"(benchmark) cannot build: {type(err).__name__}: {err}"}
    gen = torch.Generator().manual_seed(1)
    calib, x = torch.randn(8, 3, size, size, generator=gen), torch.randn(2, 3, size, size, generator=gen)
    t0 = time.perf_counter()
    try:
        spiking = ecmt.convert(model, calib, progress=False)
    except EcmtError as err:
        return {"converts": False, "error": str(err), "project_error": True}
    except Exception as err:  # noqa: BLE001 - an internal crash is what this table exists to show
        return {"converts": False, "error": f"INTERNAL {type(err).__name__}: {err}", "project_error": False}
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        ann = model(x)
        est = spiking(x, 64)
        analog = spiking.analog(x)
    return {"converts": True, "seconds": round(seconds, 2), "analog_error": rel_err(analog, ann),
            "spiking_error_T4": rel_err(est[3], ann), "spiking_error_T16": rel_err(est[15], ann),
            "spiking_error_T64": rel_err(est[63], ann),
            "params": sum(p.numel() for p in model.parameters())}


def markdown(rows: dict, info: dict) -> str:
    ok = sum(r["converts"] for r in rows.values())
    lines = [
        "# Transformer zoo coverage",
        "",
        "Generated by `benchmarks/zoo.py`: timm families shrunk to a few blocks with random weights, "
        "calibrated on 8 random images, evaluated on 2 others, CPU.  Errors are relative (L2) "
        "against the model's logits; the spiking error is of the running estimate after T steps.  "
        "Each graph is traced with concrete shapes, so it holds for the benchmark's input size only "
        "(docs/conversion.md).",
        "",
        "Trained models of three of these families (ViT, DeiT-3-like,"
        " EVA-02-like), ANN against SNN accuracy at t = 1, 2, 4, 8: [trained_zoo.md](trained_zoo.md).",
        "",
        f"**{ok} of {len(rows)} families convert.**",
        "",
        "| family | timm model | converts | analog error | spiking error T=4 | T=16 | T=64 | convert time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    failures = []
    for fam, r in rows.items():
        if r["converts"]:
            lines.append(f"| {fam} | `{r['model']}` | yes | {r['analog_error']:.1e} | "
                         f"{r['spiking_error_T4']:.3f} | {r['spiking_error_T16']:.3f} | "
                         f"{r['spiking_error_T64']:.3f} | {r['seconds']:.1f} |")
        else:
            lines.append(f"| {fam} | `{r['model']}` | no | | | | | |")
            failures.append((fam, r["error"]))
    if failures:
        lines += ["", "## Why the others do not convert", ""]
    else:
        lines += [""]
    for fam, error in failures:
        head = error.splitlines()
        shown = head[:6] + ([f"  ... ({len(head) - 6} more lines)"] if len(head) > 6 else [])
        lines += [f"**{fam}**", "", "```", *shown, "```", ""]
    lines += [machine_markdown(info), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated substrings of family names; prints, writes nothing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    chosen = {f: v for f, v in FAMILIES.items()
              if not args.only or any(s.lower() in f.lower() for s in args.only.split(","))}
    rows = {}
    for fam, (name, kwargs, size) in chosen.items():
        r = {"model": name, **try_family(name, kwargs, size)}
        rows[fam] = r
        status = (f"analog {r['analog_error']:.1e}  T4 {r['spiking_error_T4']:.3f}  "
                  f"T16 {r['spiking_error_T16']:.3f}  T64 {r['spiking_error_T64']:.3f}  {r['seconds']:.1f}s"
                  if r["converts"]
                  else r["error"].splitlines()[0][:150])
        print(f"{fam:<26}{status}", flush=True)
    if args.only:
        return
    info = machine_info()
    write_result(OUT, "zoo", {"machine": info, "families": rows}, markdown(rows, info))


if __name__ == "__main__":
    main()
