"""The calibration search against the paper's calibration: accuracy and energy
at T = 1..8 on the demo ViT, and the accuracy-against-energy frontier.

    python benchmarks/calibration.py     # writes docs/benchmarks/calibration.{md,json,png}
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


from machine import machine_info, machine_markdown, write_result

import ecmt
import hw_sim
from ecmt import data
from ecmt.convert import calibration_batches
from ecmt.evaluate import ann_accuracy, snn_accuracy
from ecmt.zoo import load_model

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
SETTINGS = {
    "paper (p=0.99, 8 levels)": dict(),
    "p=0.999, 8 levels": dict(quantile=0.999),
    "p=0.9, 10 levels": dict(quantile=0.9, levels=10),
    "per-channel": dict(per_channel=True),
    "search, target T=1": dict(target_T=1),
    "search, target T=2": dict(target_T=2),
    "search, target T=4": dict(target_T=4),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-T", type=int, default=8)
    parser.add_argument("--energy-samples", type=int, default=1000)
    args = parser.parse_args()
    model = load_model("demo")
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    calib = calibration_batches(train.sample(512))
    ann = ann_accuracy(model, test, progress=False)
    rows = {}
    for name, options in SETTINGS.items():
        t0 = time.time()
        spiking = ecmt.convert(model, calib, progress=False, **options)
        convert_s = time.time() - t0
        acc = snn_accuracy(spiking, test, args.T, progress=False)
        split = test.take(args.energy_samples)
        report = hw_sim.simulate(spiking.graph, split.images, args.T, "cmos45-fp32", mode=["paper", "full"],
                                 progress=False)
        rows[name] = {"convert_seconds": round(convert_s, 1), "accuracy": acc,
                      "paper_ratio": report.result("cmos45-fp32", "paper")["energy_ratio_per_t"],
                      "full_ratio": report.result("cmos45-fp32", "full")["energy_ratio_per_t"],
                      "spikes_per_step": report.data["counts"]["per_step"]["spikes"]}
        print(name, [round(100 * a, 2) for a in acc], flush=True)
    result = {"machine": machine_info(), "ann_accuracy": ann, "T": args.T, "rows": rows}
    write_result(OUT, "calibration", result, render(result))
    plot(result, OUT / "calibration.png")


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "paper_ratio", "paper mode"), (axes[1], "full_ratio", "full mode")):
        for name, row in r["rows"].items():
            ax.plot(row[key], [100 * a for a in row["accuracy"]], marker="o", label=name)
        ax.axhline(100 * r["ann_accuracy"], color="k", ls="--", lw=0.8, label="ANN")
        ax.set_xlabel(f"SNN / ANN energy on cmos45-fp32 ({label}), up to step t")
        ax.set_ylabel("accuracy after step t (%)")
        ax.set_ylim(max(0, 100 * r["ann_accuracy"] - 30), 100 * r["ann_accuracy"] + 2)
    axes[0].legend(fontsize=7)
    fig.suptitle("Demo ViT on Fashion-MNIST: accuracy against energy, t = 1..8")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})


def render(r):
    ann = r["ann_accuracy"]
    lines = ["# Calibration: the search against the paper's calibration", "",
             "Produced by `python benchmarks/calibration.py`.  " + machine_markdown(r["machine"]), "",
             f"Demo ViT, Fashion-MNIST test (10,000 images), ANN accuracy {100 * ann:.2f}%.  Calibration on 512 "
             "training images (the search uses 256 of them).  Energy: hw_sim on 1,000 test images, cmos45-fp32, "
             "SNN energy up to step t over one ANN forward ([../energy.md](../energy.md)).", "",
             "| setting | T | accuracy | vs ANN | energy ratio (paper) | energy ratio (full) | convert time (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        for t in (1, 2, 4, 8):
            if t > r["T"]:
                continue
            a = row["accuracy"][t - 1]
            lines.append(f"| {name} | {t} | {100 * a:.2f}% | {100 * (a - ann):+.2f} | "
                         f"{row['paper_ratio'][t - 1]:.3f} | {row['full_ratio'][t - 1]:.3f} | "
                         f"{row['convert_seconds'] if t == 1 else ''} |")
    lines += ["", "Steps and energy needed to come close to the ANN (first t, and the full-mode energy ratio "
              "spent up to that t; '-' where t = 1..T never gets there):", "",
              "| setting | within 1 point | energy (full) | within 0.3 points | energy (full) |", "|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        cells = []
        for gap in (0.01, 0.003):
            t = next((i + 1 for i, a in enumerate(row["accuracy"]) if a >= ann - gap), None)
            cells += ["-", "-"] if t is None else [f"t = {t}", f"{row['full_ratio'][t - 1]:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "![accuracy against energy](calibration.png)", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
