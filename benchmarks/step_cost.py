"""Cost of one simulation step against one ANN forward and against one step of
SpikingJelly's STA conversion of the same model, timed interleaved in one
process (the demo ViT, Fashion-MNIST test images).

    OMP_NUM_THREADS=2 python benchmarks/step_cost.py   # writes docs/benchmarks/step_cost.{md,json}

Needs SpikingJelly 2.0.0 (the `peers` extra, see benchmarks/peers.py).
Per step: the wall time of one T-step pass divided by T (the first step of an
ECMT pass also computes the static nodes once; STA gets the image at step 1 and
zeros after, SpikingJelly's protocol), the ANN: one forward of the same batch.
Every repeat times each contender once, in turn, so that the load of a shared
machine falls on all of them alike; the table gives medians and every ratio is
of medians from this one run.  ECMT runs its default, the fast step
(runtime/program.py: native kernels, shared state), and the node-by-node
reference executor (`capture=False`, kernels compiled by torch.compile).  The
cold start is the first batch of each size in a fresh process with an empty
kernel cache ($ECMT_CACHE): building the native kernels included.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from machine import interleaved_times, machine_info, machine_markdown, write_result

import ecmt
from ecmt import data, ir
from ecmt.convert import calibration_batches
from ecmt.zoo import load_model

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"


def sta_model(model, calib: torch.Tensor, T: int):
    """The demo ViT through SpikingJelly's STATransformerRecipe ('spiking_encoder', as peers.py)."""
    from peers import quiet, timm_to_torchvision
    from spikingjelly.activation_based import ann2snn, functional
    recipe = ann2snn.STATransformerRecipe(dataloader=[calib], time_steps=T, mode="spiking_encoder",
                                          threshold_mode="mse")
    snn = quiet(ann2snn.Converter(recipe=recipe).convert, copy.deepcopy(timm_to_torchvision(model)))
    functional.set_step_mode(snn, "s")
    return snn.eval()


COLD = """
import sys, time, torch
t0 = time.time()
import ecmt
from ecmt import data, ir
graph = ir.load_graph(sys.argv[1])
test = data.fashion_mnist("test")
ready = time.time() - t0
for batch in sys.argv[3].split(","):
    x = test.images[:int(batch)]
    t0 = time.time()
    ecmt.SpikingModel(graph)(x, int(sys.argv[2]))
    print(batch, time.time() - t0, ready)
"""


def cold_start(graph, batches: list[int], T: int) -> dict:
    """The first T-step batch of each size in a fresh process whose kernel cache is empty (the
    native kernels are built in it), seconds; also the process's import and graph load."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "graph.ecmt"
        ir.save_graph(graph, path)
        env = {**os.environ, "ECMT_CACHE": str(Path(tmp) / "cache")}
        out = subprocess.run([sys.executable, "-c", COLD, str(path), str(T), ",".join(map(str, batches))],
                             env=env, capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return {"import_and_load": float(rows[0][2]), **{f"batch {b}": float(s) for b, s, _ in rows}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-T", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--batches", default="32,256")
    parser.add_argument("--graph", type=Path, help="a saved converted graph of the demo ViT (default: convert now)")
    parser.add_argument("--no-sta", action="store_true", help="leave SpikingJelly out")
    parser.add_argument("--note", help="a line for the report, e.g. on the machine's load")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    os.environ["ECMT_COMPILE"] = "1"
    started = time.time()
    torch.manual_seed(0)
    T = args.T
    model = load_model("demo").eval()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    calib = train.sample(512)
    graph = (ir.load_graph(args.graph) if args.graph
             else ecmt.convert(model, calibration_batches(calib), progress=False).graph)
    contenders = {"ECMT (default)": ecmt.SpikingModel(graph),
                  "ECMT, node by node": ecmt.SpikingModel(graph, capture=False)}
    if not args.no_sta:
        from peers import run_sj
        sta = sta_model(model, calib, T)
        contenders["SpikingJelly STA"] = lambda x, n: run_sj(sta, x, n, "first")

    result = {"machine": machine_info(), "T": T, "repeats": args.repeats, "rows": [], "compile_seconds": {},
              "note": args.note, "cold_start_seconds": cold_start(graph, [int(b) for b in args.batches.split(",")],
                                                                   T)}
    print(f"cold start: {result['cold_start_seconds']}", flush=True)
    for batch in (int(b) for b in args.batches.split(",")):
        x = test.images[:batch]
        fns = {"ANN forward": lambda: torch.no_grad()(model)(x)}
        for name, run in contenders.items():
            fns[name] = (lambda run: lambda: run(x, T))(run)
        for name, fn in fns.items():          # warm-up: the reference's torch.compile kernels
            t0 = time.time()
            fn()
            result["compile_seconds"][f"{name}, batch {batch}"] = time.time() - t0
        times = interleaved_times(fns, args.repeats, warm_up=False)     # warmed up just above
        med = {name: statistics.median(ts) for name, ts in times.items()}
        ann = med["ANN forward"]
        row = {"batch": batch, "ann_forward_ms": 1e3 * ann, "step_ms": {}, "x_ann": {}, "x_sta": {},
               "all_ms": {name: [1e3 * t for t in ts] for name, ts in times.items()}}
        for name in contenders:
            step = med[name] / T
            row["step_ms"][name] = 1e3 * step
            row["x_ann"][name] = step / ann
            # the spread: each repeat's own ratio (its pass / T over its ANN forward)
            per_repeat = [s / T / a for s, a in zip(times[name], times["ANN forward"])]
            row.setdefault("x_ann_quartiles", {})[name] = statistics.quantiles(per_repeat, n=4)
            if "SpikingJelly STA" in med:
                row["x_sta"][name] = step / (med["SpikingJelly STA"] / T)
        result["rows"].append(row)
        print(f"batch {batch}: ANN {1e3 * ann:.2f} ms; " + "; ".join(
            f"{n} {row['step_ms'][n]:.2f} ms/step = {row['x_ann'][n]:.2f}x ANN" for n in contenders), flush=True)
    result["wall_seconds"] = time.time() - started
    write_result(args.out, "step_cost", result, render(result))


def render(r: dict) -> str:
    names = list(r["rows"][0]["step_ms"])
    lines = ["# Cost of one simulation step: ECMT against the ANN and SpikingJelly's STA (demo ViT)", "",
             "Produced by `OMP_NUM_THREADS=2 python benchmarks/step_cost.py`.  " + machine_markdown(r["machine"]),
             "", f"One process, one run: each repeat times the ANN forward and a T = {r['T']} pass of every "
             f"spiking contender in turn ({r['repeats']} repeats after a warm-up); the step is the "
             f"pass divided by T; medians.  ECMT (default): the fast step (native kernels built once per "
             "machine, shared state; ecmt/runtime/program.py).  ECMT, node by node: the reference executor "
             "(`SpikingModel(graph, capture=False)`, its kernels compiled by torch.compile during the warm-up).  "
             "SpikingJelly STA: `STATransformerRecipe`, mode 'spiking_encoder', "
             f"time_steps = {r['T']}, image at step 1 then zeros (as in benchmarks/peers.py).", "",
             "| batch | ANN forward (ms) | " + " | ".join(f"{n} (ms / step)" for n in names) + " | "
             + " | ".join(f"{n} / ANN" for n in names) + " | "
             + " | ".join(f"{n} / STA" for n in names if n != "SpikingJelly STA") + " |",
             "|---|---|" + "---|" * (2 * len(names) + len([n for n in names if n != "SpikingJelly STA"]))]
    for row in r["rows"]:
        lines.append(f"| {row['batch']} | {row['ann_forward_ms']:.2f} | "
                     + " | ".join(f"{row['step_ms'][n]:.2f}" for n in names) + " | "
                     + " | ".join(f"{row['x_ann'][n]:.2f}" for n in names) + " | "
                     + " | ".join(f"{row['x_sta'][n]:.2f}" if n in row["x_sta"] else "-"
                                  for n in names if n != "SpikingJelly STA") + " |")
    if "x_ann_quartiles" in r["rows"][0]:
        lines += ["", "The spread over repeats: each repeat's step over that repeat's ANN forward, "
                  "first to third quartile.", "",
                  "| batch | " + " | ".join(f"{n} / ANN" for n in names) + " |", "|---|" + "---|" * len(names)]
        for row in r["rows"]:
            q = row["x_ann_quartiles"]
            lines.append(f"| {row['batch']} | " + " | ".join(f"{q[n][0]:.2f} to {q[n][2]:.2f}" for n in names) + " |")
    cold = r["cold_start_seconds"]
    lines += ["", "Cold start of the default (a fresh process, empty kernel cache: the native kernels are built "
              "during the first batch), seconds: "
              + ", ".join(f"first {k} of T = {r['T']} {v:.1f}" for k, v in cold.items() if k.startswith("batch"))
              + f" (import and graph load before it: {cold['import_and_load']:.1f}).",
              "", "Warm-up (first call in this process), seconds: "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["compile_seconds"].items()) + "."]
    if r.get("note"):
        lines += ["", f"Note: {r['note']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
