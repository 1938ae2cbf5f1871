"""Demo ViT on Fashion-MNIST: accuracy and energy of multi-level MT neurons
(spikes_per_step k = 1, 2, 4, 8) at t = 1, 2, 4, 8 against the ANN.

    OMP_NUM_THREADS=1 python benchmarks/multilevel.py     # writes docs/benchmarks/multilevel.{md,json}

One conversion per k (p = 0.99 per tensor, calibration on 512 training
images; the thresholds do not depend on k), one T = 8 hw_sim pass per batch
of the test split (hw_sim.simulate: accuracy and counted events), read at
t = 1, 2, 4, 8; full-mode energy up to step t over one ANN forward on
cmos45-fp32, loihi2 (graded spikes: one event per k-level spike) and loihi
(binary spikes: one event per fired level).  k = 1 is the paper's neuron.  Two
threshold settings: the paper's (the quantile, 8 levels), and the quantile
/ 16 with 12 levels (the same largest level, 16x finer steps), which is
where sending several levels per step pays.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from machine import machine_info, machine_markdown, write_result

import ecmt
import hw_sim
from ecmt import data
from ecmt.convert import calibration_batches
from ecmt.zoo import load_model

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
KS = (1, 2, 4, 8)
TS = (1, 2, 4, 8)
# name -> (threshold divisor exponent m, levels): thresholds q / 2^m (convert's threshold_scale), 8 + m
# levels; the second is ecmt.MULTI_LEVEL's thresholds and levels
SETTINGS = {"quantile thresholds, 8 levels": (0, 8), "quantile / 16, 12 levels": (4, 12)}
PROFILES = ("cmos45-fp32", "loihi2", "loihi")
PAPER = ("quantile thresholds, 8 levels", "1")      # the paper's calibration and neuron
WITHIN = 0.01


def setup(limit: int | None):
    """The model, calibration batches and test split, the same in every process (seeded)."""
    torch.manual_seed(0)
    model = load_model("demo")
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test").take(limit)
    return model, calibration_batches(train.sample(512)), test


def run_config(name: str, k: int, limit: int | None, threads: int | None = None) -> dict:
    """One setting and k: convert, then one T = 8 hw_sim pass over the test split."""
    if threads:
        torch.set_num_threads(threads)
    model, calib, test = setup(limit)
    m, levels = SETTINGS[name]
    t0 = time.time()
    spiking = ecmt.convert(model, calib, levels=levels, spikes_per_step=k, threshold_scale=2.0 ** -m, progress=False)
    report = hw_sim.simulate(spiking.graph, test.images, max(TS), list(PROFILES), mode="full",
                             labels=test.labels, batch_size=64, progress=False).data
    acc = report["accuracy"]
    energy = {e["profile"]["name"]: {"energy_ratio_per_t": e["energy_ratio_per_t"],
                                     "energy_per_t_j": e["energy_per_t_j"], "spike_format": e["spike_format"]}
              for e in report["hardware"]}
    ratio = energy["cmos45-fp32"]["energy_ratio_per_t"]
    print(f"{name}, k={k}: " + " ".join(f"t={t}: {100 * acc[t - 1]:.2f} ({ratio[t - 1]:.2f}x)" for t in TS)
          + f"  ({time.time() - t0:.0f} s)", flush=True)
    return {"snn_accuracy": acc, "energy": energy, "seconds": round(time.time() - t0, 1),
            "ann_energy_j": {e["profile"]["name"]: e["ann"]["energy_j"] for e in report["hardware"]}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="test images (default: all 10,000)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--configs", help="only these configurations, as SETTING:K,... with SETTING the index "
                        "of the threshold setting (0: quantile, 1: quantile / 16); default all")
    parser.add_argument("--accuracy-from", type=Path,
                        help="an earlier result JSON of this script on the full split, kept beside this run's")
    parser.add_argument("--jobs", type=int, default=1,
                        help="configurations run at once, in separate processes (on a machine with cores to spare)")
    args = parser.parse_args()

    model, _, test = setup(args.limit)
    with torch.no_grad():
        ann_acc = sum((model(x).argmax(-1) == y).sum().item() for x, y in test.batches(256)) / len(test)
    print(f"ANN {100 * ann_acc:.2f}% on {len(test)} images", flush=True)

    results = {"machine": machine_info(), "test_images": len(test), "calibration_images": 512,
               "ann_accuracy": ann_acc, "T": max(TS), "profiles": list(PROFILES), "jobs": args.jobs,
               "configs": args.configs,
               "settings": {}}
    configs = [(name, k) for name in SETTINGS for k in KS]
    if args.configs:
        names = list(SETTINGS)
        configs = [(names[int(c.split(":")[0])], int(c.split(":")[1])) for c in args.configs.split(",")]
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        threads = max(1, torch.get_num_threads() // args.jobs)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(run_config, *zip(*configs), [args.limit] * len(configs),
                                 [threads] * len(configs)))
    else:
        rows = [run_config(name, k, args.limit) for name, k in configs]
    for (name, k), row in zip(configs, rows):
        m, levels = SETTINGS[name]
        setting = results["settings"].setdefault(name, {"threshold_divisor": 2 ** m, "levels": levels, "k": {}})
        setting["k"][str(k)] = row
    if args.accuracy_from:
        old = json.loads(args.accuracy_from.read_text())
        old = old.get("full_split", old)
        results["full_split"] = {k: old[k] for k in ("machine", "test_images", "ann_accuracy", "settings")}
    write_result(args.out, "multilevel", results, render(results))


def accuracy_tables(r: dict, head: str) -> list[str]:
    ann = r["ann_accuracy"]
    lines = []
    for name, setting in r["settings"].items():
        lines += ["", f"{head} {name}", "", "| k | " + " | ".join(f"t = {t}" for t in TS) + " |",
                  "|---|" + "---|" * len(TS)]
        for k, row in setting["k"].items():
            cells = [f"{100 * row['snn_accuracy'][t - 1]:.2f} ({100 * (row['snn_accuracy'][t - 1] - ann):+.2f})"
                     for t in TS]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def render(r: dict) -> str:
    ann = r["ann_accuracy"]
    limited = r["test_images"] < 10_000
    full = r.get("full_split")
    lines = ["# Demo ViT: multi-level MT neurons (spikes_per_step k)", ""]
    if full:
        lines += ["## Accuracy on the full test split", "",
                  f"From this script's earlier accuracy-only run on all {full['test_images']} test images "
                  f"(`--accuracy-from` keeps it; {machine_markdown(full['machine'])}).  ANN accuracy: "
                  f"**{100 * full['ann_accuracy']:.2f}%**.  SNN accuracy after step t of one T = 8 pass, in %; "
                  "in parentheses SNN minus ANN, in points."]
        lines += accuracy_tables(full, "###")
        lines += ["", "## This run: accuracy and energy", ""]
    lines += [f"Produced by `OMP_NUM_THREADS={r['machine']['torch_threads']} python benchmarks/multilevel.py"
              + (f" --limit {r['test_images']}" if limited else "")
              + (f" --configs {r['configs']}" if r.get("configs") else "")
              + (f" --jobs {r['jobs']}" if r.get("jobs", 1) > 1 else "")
              + (" --accuracy-from docs/benchmarks/multilevel.json" if full else "") + "`.  "
              + machine_markdown(r["machine"]), "",
              f"Fashion-MNIST test split, {r['test_images']} images"
              + (" (the first ones: the full split did not fit this run's time)" if limited else "")
              + f".  ANN accuracy: **{100 * ann:.2f}%**.  Thresholds from the 0.99-quantile per tensor "
              f"on {r['calibration_images']} training images; an MT neuron sends up to k of its levels per "
              "step as one graded value (docs/method.md §2; k = 1 is the paper's neuron).  SNN accuracy after "
              "step t of one T = 8 pass, in %; in parentheses SNN minus ANN, in points."]
    lines += accuracy_tables(r, "###" if full else "##")
    lines += ["", "With the paper's thresholds the step is the 0.99-quantile, so most values round to "
              "silence at t = 1 whatever k is; with thresholds 16x finer (same top level) one step with "
              "k >= 2 carries the value and later steps refine it."]
    lines += energy_sections(r)
    return "\n".join(lines) + "\n"


def first_within(acc: list[float], ann: float) -> int | None:
    return next((t for t in TS if acc[t - 1] >= ann - WITHIN - 1e-12), None)


def energy_sections(r: dict) -> list[str]:
    ann = r["ann_accuracy"]
    lines = ["", "## Energy per k: full mode, up to step t, over one ANN forward", "",
             "hw_sim (docs/energy.md) on the same run: the SNN's full-mode energy up to step t divided by one "
             "ANN forward on cmos45-fp32.  A spike of j levels (j <= k) costs one graded event on loihi2 "
             "(payload stated in the JSON), j binary events on loihi, and on cmos45-fp32 one weight read "
             "plus j shifted adds per weight.  Cells: accuracy minus ANN in points / energy ratio."]
    for name, setting in r["settings"].items():
        lines += ["", f"### {name}", "", "| k | profile | " + " | ".join(f"t = {t}" for t in TS) + " |",
                  "|---|---|" + "---|" * len(TS)]
        for k, row in setting["k"].items():
            for p in r["profiles"]:
                ratio = row["energy"][p]["energy_ratio_per_t"]
                cells = [f"{100 * (row['snn_accuracy'][t - 1] - ann):+.2f} / {ratio[t - 1]:.3f}x" for t in TS]
                lines.append(f"| {k} | {p} | " + " | ".join(cells) + " |")
    full = r.get("full_split")

    def accuracy(name: str, k: str) -> tuple[list[float], float]:
        """Accuracy per t and the ANN's: the full split's where kept (the issue's criterion), else this run's."""
        if full and k in full["settings"].get(name, {}).get("k", {}):
            return full["settings"][name]["k"][k]["snn_accuracy"], full["ann_accuracy"]
        return r["settings"][name]["k"][k]["snn_accuracy"], ann

    paper = r["settings"][PAPER[0]]["k"][PAPER[1]]
    acc, a_ann = accuracy(*PAPER)
    t_paper = first_within(acc, a_ann)
    base = paper["energy"]["cmos45-fp32"]["energy_ratio_per_t"][t_paper - 1] if t_paper else None
    lines += ["", "## Against the paper's calibration", ""]
    if full:
        lines += [f"Accuracy here is the full split's ({full['test_images']} images, above); energy is this "
                  f"run's ({r['test_images']} images): the energy per inference is a mean over images.", ""]
    if base is None:
        lines.append("The paper's calibration (k = 1, quantile thresholds) is not within 1 point of the ANN "
                     f"at any t <= {max(TS)} on these images.")
        return lines
    lines.append(f"The paper's calibration (k = 1, quantile thresholds) is first within 1 point of the ANN at "
                 f"t = {t_paper} ({100 * (acc[t_paper - 1] - a_ann):+.2f} points), at "
                 f"{base:.3f}x the ANN's energy on cmos45-fp32 (full mode).  Each setting's first t within 1 "
                 "point, and its energy there:")
    lines += ["", "| setting | k | first t within 1 point | accuracy vs ANN | cmos45-fp32 | loihi2 | loihi | "
              "cmos45-fp32 below the paper's |", "|---|---|---|---|---|---|---|---|"]
    best = None
    for name, setting in r["settings"].items():
        for k, row in setting["k"].items():
            acc, a_ann = accuracy(name, k)
            t = first_within(acc, a_ann)
            if t is None:
                lines.append(f"| {name} | {k} | - | | | | | |")
                continue
            e = {p: row["energy"][p]["energy_ratio_per_t"][t - 1] for p in r["profiles"]}
            lines.append(f"| {name} | {k} | {t} | {100 * (acc[t - 1] - a_ann):+.2f} | "
                         + " | ".join(f"{e[p]:.3f}x" for p in ("cmos45-fp32", "loihi2", "loihi"))
                         + f" | {'yes' if e['cmos45-fp32'] < base else 'no'} |")
            # the must-show: within 1 point at t = 2, with energy up to t = 2 below the paper's
            at2 = row["energy"]["cmos45-fp32"]["energy_ratio_per_t"][1]
            if acc[1] >= a_ann - WITHIN - 1e-12 and at2 < base and (best is None or at2 < best[2]):
                best = (name, k, at2, acc[1] - a_ann)
    lines.append("")
    at1 = [(name, k, row["energy"]["cmos45-fp32"]["energy_ratio_per_t"][0])
           for name, setting in r["settings"].items() for k, row in setting["k"].items()
           if accuracy(name, k)[0][0] >= accuracy(name, k)[1] - WITHIN - 1e-12]
    lines.append("Within 1 point at t = 1: " + (", ".join(f"{n}, k = {k} ({e:.3f}x on cmos45-fp32)" for n, k, e in at1)
                                                if at1 else "none") + ".")
    lines.append("")
    if best is not None:
        lines.append(f"**The must-show holds**: {best[0]}, k = {best[1]} is within 1 point of the ANN at t = 2 "
                     f"({100 * best[3]:+.2f} points) with full-mode energy up to t = 2 of {best[2]:.3f}x the ANN "
                     f"on cmos45-fp32, below the paper calibration's {base:.3f}x at its first t within 1 point.")
    else:
        lines.append("**Not with these fixed settings**: no setting here is within 1 point of the ANN at t = 2 "
                     f"with cmos45-fp32 full-mode energy below the paper calibration's {base:.3f}x.  The "
                     "energy-aware calibration search, which picks thresholds, levels and k per neuron, does: "
                     "[energy_search.md](energy_search.md).")
    return lines


if __name__ == "__main__":
    main()
