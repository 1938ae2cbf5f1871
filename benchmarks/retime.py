"""How many samples the mesh model's re-timing needs: the latency at each timing constant's
range ends estimated from the first n samples against the exact re-timing of every sample.

    python benchmarks/retime.py        # writes docs/benchmarks/retime.{md,json}

The sensitivity table and the latency range re-run the detailed schedule once per timing
constant and range end (engine/mesh/model.py: the nominal chip latency per step, every sample
scheduled, times the ratio of the re-timed to the nominal latency of the first
RETIME_SAMPLES samples).  Here the demo ViT (committed checkpoint, calibrated on 512 training
images) runs 32 test images for T = 8 on loihi with every sample's spikes kept; for each
constant and end, the chip latency summed over the steps from the ratio of the first n
samples, against the mean of all 32 re-timed, and the time of one re-timing of n samples.
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
from ecmt.runtime import GraphExecutor
from ecmt.zoo import load_model
from hw_sim import engine
from hw_sim.engine import mesh
from hw_sim.profile import load_profile

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
TRIED = (1, 2, 4, 8)


def recorded_model(graph, x: torch.Tensor, T: int, profile):
    """`profile`'s mesh model after a run of `graph` on x for T steps, as hw_sim.simulate runs
    it, with every sample's spikes kept for Accounting.retime()."""
    hw = engine.model(graph, profile, T)
    hw.accounting.retime_samples = None
    executor = GraphExecutor(graph, record_levels=True)
    executor.run(x, T, observer=hw.observer(executor))
    hw.add_batch()
    return hw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("-T", type=int, default=8)
    ap.add_argument("--profile", default="loihi")
    args = ap.parse_args()
    model = load_model("demo")
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test").take(args.samples)
    graph = ecmt.convert(model, calibration_batches(train.sample(512)), progress=False).graph
    profile = load_profile(args.profile)
    acc = recorded_model(graph, test.images, args.T, profile).accounting
    nominal = acc.retime(profile)                   # [samples, T], every sample
    rows, worst = [], {n: 0.0 for n in TRIED}
    for key in profile.keys():
        section, name = key.split(".", 1)
        c = profile.constants[section][name]
        if c.low == c.high or not mesh.model.retimed(key):
            continue
        for end, value in (("low", c.low), ("high", c.high)):
            variant = profile.with_value(key, value)
            t0 = time.perf_counter()
            acc.retime(variant, 1)
            seconds_one = time.perf_counter() - t0
            timed = acc.retime(variant)
            exact = float(timed.mean(0).sum())
            row = {"constant": key, "end": end, "value": value, "exact_over_nominal": exact / float(nominal.mean(0).sum()),
                   "seconds_one_sample": seconds_one, "error": {}}
            for n in TRIED:
                estimate = float((nominal.mean(0) * timed[:n].mean(0) / nominal[:n].mean(0)).sum())
                row["error"][n] = estimate / exact - 1
                worst[n] = max(worst[n], abs(row["error"][n]))
            rows.append(row)
            print(row, flush=True)
    result = {"machine": machine_info(), "profile": args.profile, "samples": args.samples, "T": args.T,
              "rows": rows, "worst": worst}
    lines = ["# Re-timing the mesh model on a few samples", "",
             "Script: `benchmarks/retime.py`.  " + machine_markdown(result["machine"]) + ".", "",
             f"The demo ViT, {args.samples} Fashion-MNIST test images, T = {args.T}, on {args.profile}.  Each "
             "timing constant at each end of its range: the chip latency (summed over the steps) re-timed on "
             "every sample, over the nominal one, and the error of the estimate that scales the nominal "
             "latency by the ratio on the first n samples only (what the sensitivity table and the latency "
             "range use, with n = `RETIME_SAMPLES`).", "",
             "| constant | end | re-timed / nominal | " + " | ".join(f"error, n = {n}" for n in TRIED)
             + " | s per re-timing of 1 sample |",
             "|---|---|---|" + "---|" * len(TRIED) + "---|"]
    for r in rows:
        lines.append(f"| {r['constant']} | {r['end']} | {r['exact_over_nominal']:.4f} | "
                     + " | ".join(f"{r['error'][n]:+.2e}" for n in TRIED) + f" | {r['seconds_one_sample']:.2f} |")
    lines += ["", "Largest error: " + ", ".join(f"n = {n}: {100 * worst[n]:.2f} %" for n in TRIED) + ".",
              f"The engine uses n = {mesh.RETIME_SAMPLES}."]
    write_result(OUT, "retime", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
