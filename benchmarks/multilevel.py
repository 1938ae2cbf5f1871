"""Demo ViT on Fashion-MNIST: accuracy of multi-level MT neurons
(spikes_per_step k = 1, 2, 4, 8) at t = 1, 2, 4, 8 against the ANN.

    OMP_NUM_THREADS=1 python benchmarks/multilevel.py     # writes docs/benchmarks/multilevel.{md,json}

One conversion per k (p = 0.99 per tensor, calibration on 512 training
images; the thresholds do not depend on k), one T = 8 pass per batch of the
test split, read at t = 1, 2, 4, 8.  k = 1 is the paper's neuron.  Two
threshold settings: the paper's (the quantile, 8 levels), and the quantile
/ 16 with 12 levels (the same largest level, 16x finer steps), which is
where sending several levels per step pays.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from machine import machine_info, machine_markdown, write_result

import ecmt
from ecmt import data
from ecmt.convert import calibration_batches
from ecmt.evaluate import snn_accuracy
from ecmt.zoo import load_model

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
KS = (1, 2, 4, 8)
TS = (1, 2, 4, 8)
# name -> (threshold divisor exponent m, levels): thresholds q / 2^m, 8 + m levels
SETTINGS = {"quantile thresholds, 8 levels": (0, 8), "quantile / 16, 12 levels": (4, 12)}


def scaled(spiking, m: int):
    """Divide every MT threshold by 2^m (exact in float32)."""
    for node in spiking.graph.of_kind(ecmt.ir.MTNeuron):
        node.th_pos = node.th_pos / 2 ** m
        node.th_neg = None if node.th_neg is None else node.th_neg / 2 ** m
    return ecmt.SpikingModel(spiking.graph)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="test images (default: all 10,000)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model("demo")
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test").take(args.limit)
    calib = calibration_batches(train.sample(512))
    with torch.no_grad():
        ann_acc = sum((model(x).argmax(-1) == y).sum().item() for x, y in test.batches(256)) / len(test)
    print(f"ANN {100 * ann_acc:.2f}% on {len(test)} images", flush=True)

    results = {"machine": machine_info(), "test_images": len(test), "calibration_images": 512,
               "ann_accuracy": ann_acc, "T": max(TS), "settings": {}}
    for name, (m, levels) in SETTINGS.items():
        rows = results["settings"][name] = {"threshold_divisor": 2 ** m, "levels": levels, "k": {}}
        for k in KS:
            t0 = time.time()
            spiking = scaled(ecmt.convert(model, calib, levels=levels, spikes_per_step=k, progress=False), m)
            acc = snn_accuracy(spiking, test, max(TS), progress=False)
            rows["k"][str(k)] = {"snn_accuracy": acc, "seconds": round(time.time() - t0, 1)}
            print(f"{name}, k={k}: " + " ".join(f"t={t}: {100 * acc[t - 1]:.2f}" for t in TS)
                  + f"  ({time.time() - t0:.0f} s)", flush=True)
    write_result(args.out, "multilevel", results, render(results))


def render(r: dict) -> str:
    ann = r["ann_accuracy"]
    limited = r["test_images"] < 10_000
    lines = ["# Demo ViT: multi-level MT neurons (spikes_per_step k)", "",
             "Produced by `OMP_NUM_THREADS=1 python benchmarks/multilevel.py"
             + (f" --limit {r['test_images']}" if limited else "") + "`.  " + machine_markdown(r["machine"]), "",
             f"Fashion-MNIST test split, {r['test_images']} images"
             + (" (the first ones: the full split did not fit this run's time)" if limited else "")
             + f".  ANN accuracy: **{100 * ann:.2f}%**.  Thresholds from the 0.99-quantile per tensor "
             f"on {r['calibration_images']} training images; an MT neuron sends up to k of its levels per "
             "step as one graded value (docs/method.md §2; k = 1 is the paper's neuron).  SNN accuracy after "
             "step t of one T = 8 pass, in %; in parentheses SNN minus ANN, in points."]
    for name, setting in r["settings"].items():
        lines += ["", f"## {name}", "", "| k | " + " | ".join(f"t = {t}" for t in TS) + " |",
                  "|---|" + "---|" * len(TS)]
        for k, row in setting["k"].items():
            cells = [f"{100 * row['snn_accuracy'][t - 1]:.2f} ({100 * (row['snn_accuracy'][t - 1] - ann):+.2f})"
                     for t in TS]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "With the paper's thresholds the step is the 0.99-quantile, so most values round to "
              "silence at t = 1 whatever k is; with thresholds 16x finer (same top level) one step with "
              "k >= 2 carries the value and later steps refine it."]
    lines += ["", "Energy is not in this table: hw_sim does not yet count k > 1 spikes (it refuses such "
              "graphs), so the accuracy-energy trade-off per k is still open (issue 19)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
