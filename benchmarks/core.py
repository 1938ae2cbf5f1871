"""Demo ViT on Fashion-MNIST: ANN vs SNN accuracy at t = 1..16, conversion
variants, and the cost of one SNN step against one ANN forward.

    python benchmarks/core.py            # writes docs/benchmarks/core.{md,json}

Accuracy: the full 10,000-image test split, one T-step pass per batch.
Timing: the same batch, the same process: (time of one T-step SNN pass / T)
divided by the time of one ANN forward; median of repeats.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from machine import machine_info, machine_markdown, median_time, write_result

import ecmt
from ecmt import data
from ecmt.convert import calibration_batches
from ecmt.evaluate import snn_accuracy
from ecmt.zoo import load_model

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
VARIANTS = {   # name -> convert() options; "paper" is the default calibration
    "paper (p=0.99, 8 levels, per tensor)": dict(),
    "p=0.999": dict(quantile=0.999),
    "per-channel": dict(per_channel=True),
    "16 levels": dict(levels=16),
    "reference overrides (softmax 0.0125, gelu 0.25/0.08)": dict(
        fixed_thresholds={"softmax": (0.0125, 0.0125), "gelu": (0.25, 0.08)}),
}



def step_cost(model, spiking, x, T: int, repeats: int) -> dict:
    with torch.no_grad():
        ann = median_time(lambda: model(x), repeats)
    snn = median_time(lambda: spiking(x, T), repeats)
    return {"batch": len(x), "T": T, "ann_ms": 1e3 * ann, "snn_step_ms": 1e3 * snn / T,
            "ratio": snn / T / ann}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-T", type=int, default=16)
    parser.add_argument("--limit", type=int, help="test images (default: all 10,000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    model = load_model("demo")
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test").take(args.limit)
    calib = calibration_batches(train.sample(512))
    with torch.no_grad():
        ann_acc = sum((model(x).argmax(-1) == y).sum().item() for x, y in test.batches(256)) / len(test)

    results = {"machine": machine_info(), "test_images": len(test), "ann_accuracy": ann_acc,
               "variants": {}, "timing": []}
    for name, options in VARIANTS.items():
        t0 = time.time()
        spiking = ecmt.convert(model, calib, progress=False, **options)
        convert_s = time.time() - t0
        acc = snn_accuracy(spiking, test, args.T, progress=False)
        results["variants"][name] = {"options": {k: str(v) for k, v in options.items()},
                                     "convert_seconds": round(convert_s, 2), "snn_accuracy": acc}
        print(f"{name}: " + " ".join(f"{100 * a:.2f}" for a in acc), flush=True)

    spiking = ecmt.convert(model, calib, progress=False)
    for batch in (32, 256):
        x = test.images[:batch]
        for compiled in (True, False):
            os.environ["ECMT_COMPILE"] = "1" if compiled else "0"
            fresh = ecmt.SpikingModel(spiking.graph, capture=False)   # node by node, under this setting
            row = {**step_cost(model, fresh, x, 8, args.repeats), "fused_kernels": compiled}
            results["timing"].append(row)
            print(row, flush=True)
    os.environ["ECMT_COMPILE"] = "1"

    write_result(args.out, "core", results, render(results, args.T))


def render(r: dict, T: int) -> str:
    ann = r["ann_accuracy"]
    names = list(r["variants"])
    lines = ["# Demo ViT: accuracy per time step and cost per step", "",
             "Produced by `python benchmarks/core.py`.  " + machine_markdown(r["machine"]), "",
             f"Fashion-MNIST test split, {r['test_images']} images.  ANN accuracy: **{100 * ann:.2f}%**.  "
             "SNN accuracy after each step t (one T-step pass), in %; calibration on 512 training images.",
             "", "| t | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for t in range(T):
        cells = []
        for n in names:
            a = r["variants"][n]["snn_accuracy"][t]
            cells.append(f"{100 * a:.2f} ({100 * (a - ann):+.2f})")
        lines.append(f"| {t + 1} | " + " | ".join(cells) + " |")
    lines += ["", "In parentheses: SNN minus ANN, in points.", "",
              "## Cost of one SNN step against one ANN forward", "",
              "Same batch, same process; SNN time is one T = 8 pass divided by 8; median of repeats.", "",
              "| batch | kernels | ANN forward (ms) | SNN step (ms) | SNN step / ANN forward |",
              "|---|---|---|---|---|"]
    for row in r["timing"]:
        kind = "fused (torch.compile)" if row["fused_kernels"] else "eager"
        lines.append(f"| {row['batch']} | {kind} | {row['ann_ms']:.1f} | {row['snn_step_ms']:.1f} | "
                     f"{row['ratio']:.2f} |")
    lines += ["", "This table runs the node-by-node reference executor (`SpikingModel(graph, capture=False)`).  "
              "The default fast step against the ANN and SpikingJelly's STA, timed in one process: "
              "[step_cost.md](step_cost.md); where a node-by-node step's time goes, per node kind: "
              "[step_profile.md](step_profile.md)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
