"""The energy-aware calibration search on the demo ViT: target T = 2 under
full-mode energy budgets on cmos45-fp32, against the paper's calibration and
the search without a budget.

    python benchmarks/energy_search.py [--limit N] [--energy-samples N] [--budgets 1,1.5,2] [--device cuda]
    # writes docs/benchmarks/energy_search.{md,json}
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

from machine import machine_info, machine_markdown, write_result

import ecmt
import hw_sim
from ecmt import data, ir
from ecmt.convert import calibration_batches
from ecmt.evaluate import ann_accuracy, snn_accuracy
from ecmt.zoo import load_model

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
PROFILE = "cmos45-fp32"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-T", type=int, default=2, help="target T of the search (default 2)")
    parser.add_argument("--budgets", default="1,1.5,2", help="comma-separated energy budgets (default 1,1.5,2)")
    parser.add_argument("--limit", type=int, default=None, help="test images for the accuracy (default all 10,000)")
    parser.add_argument("--energy-samples", type=int, default=1000,
                        help="test images replayed by hw_sim for the energy (default 1000)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = load_model("demo").to(device)
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test").take(args.limit)
    calib = [b.to(device) for b in calibration_batches(train.sample(512))]
    ann = ann_accuracy(model, test, progress=False, device=device)
    settings = {"paper (p=0.99, 8 levels)": {}, f"search, target T={args.T}, no budget": {"target_T": args.T}}
    for b in (float(v) for v in args.budgets.split(",")):
        settings[f"search, target T={args.T}, budget {b:g}x"] = {"target_T": args.T, "energy_budget": b,
                                                                  "energy": hw_sim.EnergyRatio(PROFILE)}
    rows = {}
    for name, options in settings.items():
        t0 = time.time()
        try:
            spiking = ecmt.convert(model, calib, progress=False, device=device, **options)
        except ecmt.EcmtError as err:           # an impossible budget is a result too
            rows[name] = {"error": str(err), "convert_seconds": round(time.time() - t0, 1)}
            print(name, "->", err, flush=True)
            continue
        convert_s = time.time() - t0
        acc = snn_accuracy(spiking, test, args.T, progress=False, device=device)
        split = test.take(args.energy_samples)
        # on the CPU: hw_sim's k > 1 counting fails on CUDA today
        report = hw_sim.simulate(spiking.graph, split.images, args.T, PROFILE, mode="full", progress=False)
        cal = spiking.graph.meta["calibration"]
        neurons = spiking.graph.of_kind(ir.MTNeuron)
        rows[name] = {
            "convert_seconds": round(convert_s, 1), "accuracy": acc,
            "full_ratio": report.result(PROFILE, "full")["energy_ratio_per_t"],
            "calib_ratio": cal.get("energy_ratio"), "output_mse": cal.get("output_mse"),
            "levels": dict(sorted(collections.Counter(n.levels for n in neurons).items())),
            "spikes_per_step": dict(sorted(collections.Counter(n.spikes_per_step for n in neurons).items())),
            "spikes_per_step_searched": cal.get("spikes_per_step_searched"),
            "spikes_per_step_note": cal.get("spikes_per_step_note"),
        }
        print(name, [round(100 * a, 2) for a in acc], [round(r, 3) for r in rows[name]["full_ratio"]], flush=True)
        # after every row: a run cut short still leaves the rows it finished
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        result = {"machine": {**machine_info(), "device": gpu or "cpu"}, "command": " ".join(sys.argv[1:]),
                  "ann_accuracy": ann, "T": args.T,
                  "profile": PROFILE, "test_images": len(test), "energy_images": min(args.energy_samples, len(test)),
                  "rows": rows}
        write_result(OUT, "energy_search", result, render(result))


def render(r):
    ann, T = r["ann_accuracy"], r["T"]
    lines = ["# Energy-aware calibration search", "",
             f"Produced by `python benchmarks/energy_search.py {r.get('command', '')}`.  "
             + machine_markdown(r["machine"]), "",
             f"Demo ViT, Fashion-MNIST test ({r['test_images']:,} images), ANN accuracy {100 * ann:.2f}%.  "
             f"Calibration on 512 training images; the search judges the output error on 256 of them and "
             f"prices each candidate with hw_sim (full mode, {r['profile']}) on 32 of them.  The budget bounds "
             f"the SNN energy up to step T = {T} over one ANN forward.  Test energy: hw_sim on "
             f"{r['energy_images']:,} test images, energy up to step t over one ANN forward "
             f"([../energy.md](../energy.md)).  Candidate runs and accuracy on {r['machine'].get('device', 'cpu')}; "
             "hw_sim counts on the CPU.", "",
             "| setting | t | accuracy | vs ANN | energy ratio (test) | ratio at T (calibration) | levels | k | "
             "convert time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, row in r["rows"].items():
        if "error" in row:
            lines.append(f"| {name} | - | no candidate within the budget | | | | | | {row['convert_seconds']} |")
            notes.append(f"{name}: {row['error']}")
            continue
        for t in range(1, T + 1):
            a = row["accuracy"][t - 1]
            first = t == 1
            calib = row["calib_ratio"]
            lines.append(
                f"| {name} | {t} | {100 * a:.2f}% | {100 * (a - ann):+.2f} | {row['full_ratio'][t - 1]:.3f} | "
                + (f"{calib:.3f} | " if first and calib is not None else " | ")
                + (f"{_counts(row['levels'])} | {_counts(row['spikes_per_step'])} | {row['convert_seconds']} |"
                   if first else " | | |"))
        if row.get("spikes_per_step_note"):
            notes.append(f"{name}: k not searched: {row['spikes_per_step_note']}")
    lines += ["", "levels, k: how many MT neurons have each level count and each k (spikes per step), "
              "as `value x neurons`."]
    if notes:
        lines += [""] + [f"* {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _counts(c: dict) -> str:
    return ", ".join(f"{k} x {v}" for k, v in c.items())


if __name__ == "__main__":
    main()
