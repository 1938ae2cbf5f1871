"""How long the user waits: conversion (the demo ViT; timm's vit_base_patch16_224 with
random weights), the calibration search for the multi-level operating point at t = 1,
and what hw_sim's event counting adds to a plain run.

    OMP_NUM_THREADS=2 python benchmarks/speed.py     # writes docs/benchmarks/speed.{md,json}

One process, run on a quiet machine.  Conversion: `ecmt.convert` with progress off,
split into lowering (tracing included) and calibration (the rest); the first
conversion in the process also pays for first-call set-up, so the demo ViT is
converted twice and both are given.  Search: `ecmt.convert(..., target_T=1,
**ecmt.MULTI_LEVEL)` on the demo ViT, 512 calibration images, and the SNN's test
accuracy at t = 1 against the ANN's.  Counting: hw_sim's count stage (a recording executor
and its Counter, as simulate makes them, then the counts as the pricing reads them) and one
whole `hw_sim.simulate` (cmos45-fp32, both modes: counting and pricing) against one plain
run of the same graph, batch and T, timed in turn (median of the repeats).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import timm
import torch

from machine import interleaved_times, machine_info, machine_markdown, write_result

import ecmt
import hw_sim
from ecmt import data
from ecmt.convert import calibration_batches
from ecmt.evaluate import ann_accuracy, snn_accuracy
from ecmt.runtime import GraphExecutor
from ecmt.zoo import load_model, randomize
from hw_sim.counting import Counter, event_counts

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"


def timed_convert(model, calib, **options) -> tuple[ecmt.SpikingModel, dict]:
    """ecmt.convert, and the seconds of its lowering (lower.lower, timed from inside) and in total."""
    spent = {}
    namespace = ecmt.convert.__globals__          # ecmt/convert/__init__.py, where convert finds `lower`
    original = namespace["lower"]

    def timed_lower(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent["lower"] = time.perf_counter() - t0
    namespace["lower"] = timed_lower
    try:
        t0 = time.perf_counter()
        spiking = ecmt.convert(model, calib, progress=False, **options)
        spent["total"] = time.perf_counter() - t0
    finally:
        namespace["lower"] = original
    spent["rest"] = spent["total"] - spent["lower"]
    return spiking, {k: round(v, 2) for k, v in spent.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vit-base-calib", type=int, default=16, help="calibration images for vit_base (224x224)")
    parser.add_argument("--note", help="a line for the report, e.g. on the machine's load")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {"machine": machine_info(), "note": args.note}
    model = load_model("demo")
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    calib = calibration_batches(train.sample(512))

    first, result["demo_convert_first"] = timed_convert(model, calib)
    _, result["demo_convert"] = timed_convert(model, calib)
    print("demo ViT:", result["demo_convert_first"], result["demo_convert"], flush=True)

    base = randomize(timm.create_model("vit_base_patch16_224", pretrained=False))
    images = torch.randn(args.vit_base_calib, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    _, result["vit_base_convert"] = timed_convert(base, images)
    result["vit_base_calib_images"] = args.vit_base_calib
    print("vit_base_patch16_224:", result["vit_base_convert"], flush=True)
    del base

    searched, times = timed_convert(model, calib, target_T=1, **ecmt.MULTI_LEVEL)
    result["search"] = {**times, "options": {**ecmt.MULTI_LEVEL, "target_T": 1},
                        "ann_accuracy": ann_accuracy(model, test, progress=False),
                        "snn_accuracy_t1": snn_accuracy(searched, test, 1, progress=False)[0]}
    print("search:", result["search"], flush=True)

    graph, x, T = first.graph, test.images[:256], 8
    plain = GraphExecutor(graph)

    def count():
        executor = GraphExecutor(graph, record_levels=True)
        counter = Counter(executor, T)
        executor.run(x, T, observer=counter)
        return event_counts(counter)
    fns = {"plain": lambda: plain.run(x, T), "count": count,
           "simulate": lambda: hw_sim.simulate(graph, x, T, "cmos45-fp32", mode=None, progress=False)}
    times = interleaved_times(fns, args.repeats)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    quartiles = lambda name: statistics.quantiles([s / p for s, p in zip(times[name], times["plain"])], n=4)
    result["counting"] = {"batch": len(x), "T": T, "repeats": args.repeats,
                          "plain_s": med["plain"], "count_s": med["count"], "simulate_s": med["simulate"],
                          "count_ratio": med["count"] / med["plain"], "count_ratio_quartiles": quartiles("count"),
                          "ratio": med["simulate"] / med["plain"], "ratio_quartiles": quartiles("simulate")}
    print("counting:", result["counting"], flush=True)
    write_result(args.out, "speed", result, render(result))


def render(r: dict) -> str:
    d1, d2, vb, s, c = r["demo_convert_first"], r["demo_convert"], r["vit_base_convert"], r["search"], r["counting"]
    lines = ["# How long the user waits: conversion, the t = 1 search, event counting", "",
             "Produced by `OMP_NUM_THREADS=2 python benchmarks/speed.py`.  " + machine_markdown(r["machine"]), "",
             "| what | seconds | of which lowering (tracing) | the rest (calibration, search) |",
             "|---|---|---|---|",
             f"| demo ViT, first conversion in the process (512 calibration images) | {d1['total']:.2f} | "
             f"{d1['lower']:.2f} | {d1['rest']:.2f} |",
             f"| demo ViT, again | {d2['total']:.2f} | {d2['lower']:.2f} | {d2['rest']:.2f} |",
             f"| vit_base_patch16_224, random weights ({r['vit_base_calib_images']} calibration images, 224x224) | "
             f"{vb['total']:.2f} | {vb['lower']:.2f} | {vb['rest']:.2f} |",
             f"| demo ViT, search for t = 1 at the multi-level operating point "
             f"(`target_T=1, **ecmt.MULTI_LEVEL`) | {s['total']:.2f} | {s['lower']:.2f} | {s['rest']:.2f} |", "",
             f"The searched graph's test accuracy at t = 1: {100 * s['snn_accuracy_t1']:.2f}% "
             f"(ANN {100 * s['ann_accuracy']:.2f}%; 10,000 Fashion-MNIST test images).", "",
             f"Event counting over one plain run of the same graph (batch of {c['batch']}, T = {c['T']}; timed in "
             f"turn, median of {c['repeats']}; the plain run {c['plain_s']:.3f} s):", "",
             "| what | seconds | over the plain run | quartiles of the per-repeat ratio |",
             "|---|---|---|---|",
             f"| hw_sim's count stage: a recording executor and its `Counter` (every count of the report) | "
             f"{c['count_s']:.3f} | **{c['count_ratio']:.2f}x** | {c['count_ratio_quartiles'][0]:.2f} to "
             f"{c['count_ratio_quartiles'][2]:.2f} |",
             f"| one `hw_sim.simulate`, cmos45-fp32, full and paper modes: counting and pricing | "
             f"{c['simulate_s']:.3f} | {c['ratio']:.2f}x | {c['ratio_quartiles'][0]:.2f} to "
             f"{c['ratio_quartiles'][2]:.2f} |", "",
             f"The difference, {c['simulate_s'] - c['count_s']:.3f} s, is the pricing (nominal, ranges and "
             "sensitivity: each constant re-priced at both ends, in both modes) and the report: a fixed cost per "
             "call, whatever the number of images.  The neuromorphic engine's detailed schedule is timed in "
             "[hw_sim_scale](hw_sim_scale.md)."]
    if r.get("note"):
        lines += ["", f"Note: {r['note']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
