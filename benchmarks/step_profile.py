"""Where one SNN step's time goes: per node kind and per node, against where
one ANN forward's time goes per module kind (the demo ViT, Fashion-MNIST).

    OMP_NUM_THREADS=2 python benchmarks/step_profile.py   # writes docs/benchmarks/step_profile.{md,json}

Per-node times come from the executor's observer hook, which the executor calls
after each node: the time between two calls is that node's step (plus the
hook's own few microseconds, also reported as "hook overhead").  Only steps
t >= 2 are counted (step 1 also computes the static nodes once).  The ANN side
times every leaf module with forward pre/post hooks; what runs outside the
leaves (timm's attention core: the scaled-dot-product attention, reshapes) is
"other".  Hooked runs are slower than plain ones, so the plain step and forward
times (interleaved medians) are given beside them.  Every number comes from
this one run.
"""
from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path

import torch

from machine import interleaved_medians, machine_info, machine_markdown, write_result

import ecmt
from ecmt import data, ir
from ecmt.convert import calibration_batches
from ecmt.zoo import load_model

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
T = 8


def profile_snn(spiking: ecmt.SpikingModel, x: torch.Tensor, repeats: int) -> dict:
    """Seconds per step by node (median over repeats of the mean over t = 2..T)."""
    executor = spiking.executor(x.device)
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    kinds = {node.name: node.KIND for node in executor.graph}
    for _ in range(repeats + 1):                 # the first run warms up (compiles)
        times = collections.defaultdict(float)
        last = [0.0]

        def observer(node, inputs, out, t):
            now = time.perf_counter()
            if t >= 2:
                times[node.name] += now - last[0]
            last[0] = time.perf_counter()
        last[0] = time.perf_counter()
        executor.run(x, T, observer=observer)
        for name, s in times.items():
            per_node[name].append(s / (T - 1))
    per_node = {name: sorted(v[1:])[len(v[1:]) // 2] for name, v in per_node.items()}
    by_kind = collections.defaultdict(float)
    count = collections.Counter()
    for name, s in per_node.items():
        by_kind[kinds[name]] += s
        count[kinds[name]] += 1
    return {"by_kind": dict(by_kind), "count": dict(count), "per_node": per_node,
            "hooked_step_s": sum(per_node.values())}


def profile_ann(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict:
    """Seconds per forward by leaf-module kind, and 'other' (outside the leaves)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    acc = collections.defaultdict(float)
    starts = {}

    def pre(m, args):
        starts[id(m)] = time.perf_counter()

    def post(m, args, out):
        acc[type(m).__name__] += time.perf_counter() - starts[id(m)]

    handles = [h for m in leaves for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    runs = []
    try:
        with torch.no_grad():
            for i in range(repeats + 1):
                acc.clear()
                t0 = time.perf_counter()
                model(x)
                total = time.perf_counter() - t0
                if i:
                    runs.append((total, dict(acc)))
    finally:
        for h in handles:
            h.remove()
    runs.sort(key=lambda r: r[0])
    total, kinds = runs[len(runs) // 2]
    kinds = {k: v for k, v in kinds.items() if v > 0}
    kinds["other (outside leaf modules)"] = total - sum(kinds.values())
    return {"by_kind": kinds, "hooked_forward_s": total}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="32,256")
    parser.add_argument("--graph", type=Path, help="a saved converted graph of the demo ViT (default: convert now)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    started = time.time()
    torch.manual_seed(0)
    model = load_model("demo").eval()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    graph = (ir.load_graph(args.graph) if args.graph
             else ecmt.convert(model, calibration_batches(train.sample(512)), progress=False).graph)
    result = {"machine": machine_info(), "T": T, "repeats": args.repeats, "runs": []}
    for batch in (int(b) for b in args.batches.split(",")):
        x = test.images[:batch]
        for compiled in (True, False):
            os.environ["ECMT_COMPILE"] = "1" if compiled else "0"
            spiking = ecmt.SpikingModel(graph, capture=False)   # node by node, built under this setting
            plain = interleaved_medians({"ann": lambda: torch.no_grad()(model)(x),
                                         "snn": lambda: spiking(x, T)}, args.repeats)
            snn = profile_snn(spiking, x, args.repeats)
            ann = profile_ann(model, x, args.repeats)
            row = {"batch": batch, "fused_kernels": compiled, "ann_forward_s": plain["ann"],
                   "snn_step_s": plain["snn"] / T, "ratio": plain["snn"] / T / plain["ann"],
                   "snn": snn, "ann": ann}
            result["runs"].append(row)
            print(f"batch {batch}, {'fused' if compiled else 'eager'}: step {1e3 * row['snn_step_s']:.2f} ms, "
                  f"ANN {1e3 * row['ann_forward_s']:.2f} ms, ratio {row['ratio']:.2f}", flush=True)
    os.environ["ECMT_COMPILE"] = "1"
    result["wall_seconds"] = time.time() - started
    write_result(args.out, "step_profile", result, render(result))


def render(r: dict) -> str:
    lines = ["# Where one SNN step's time goes (demo ViT)", "",
             "Produced by `OMP_NUM_THREADS=2 python benchmarks/step_profile.py`.  "
             + machine_markdown(r["machine"]), "",
             f"One run of this script.  SNN: per node, the time between the executor's observer calls "
             f"(after each node), mean over steps t = 2..{r['T']} of a T = {r['T']} pass, median of "
             f"{r['repeats']} passes; static nodes (computed once at t = 1) cost nothing after.  ANN: forward "
             "pre/post hooks on every leaf module; 'other' is the forward's time outside them (timm's "
             "attention core, reshapes, hook overhead).  The hooks slow both sides; the plain times "
             "(interleaved medians, no hooks) are in the first table.  This is the node-by-node reference "
             "executor (`SpikingModel(graph, capture=False)`); the default fast step (fused native kernels, no "
             "per-node split) is timed against the ANN and STA in [step_cost.md](step_cost.md).", "",
             "| batch | kernels | ANN forward (ms) | SNN step (ms) | step / forward | hooked step (ms) | "
             "hooked forward (ms) |", "|---|---|---|---|---|---|---|"]
    for row in r["runs"]:
        kind = "fused (torch.compile)" if row["fused_kernels"] else "eager"
        lines.append(f"| {row['batch']} | {kind} | {1e3 * row['ann_forward_s']:.2f} | "
                     f"{1e3 * row['snn_step_s']:.2f} | {row['ratio']:.2f} | "
                     f"{1e3 * row['snn']['hooked_step_s']:.2f} | {1e3 * row['ann']['hooked_forward_s']:.2f} |")
    for row in r["runs"]:
        kind = "fused" if row["fused_kernels"] else "eager"
        snn, ann = row["snn"], row["ann"]
        total = snn["hooked_step_s"]
        lines += ["", f"## Batch {row['batch']}, {kind} kernels", "",
                  "| SNN node kind | nodes | ms per step | share |", "|---|---|---|---|"]
        for k, s in sorted(snn["by_kind"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {k} | {snn['count'][k]} | {1e3 * s:.3f} | {100 * s / total:.1f}% |")
        lines += ["", "| ANN module kind | ms per forward | share |", "|---|---|---|"]
        atotal = ann["hooked_forward_s"]
        for k, s in sorted(ann["by_kind"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {k} | {1e3 * s:.3f} | {100 * s / atotal:.1f}% |")
        lines += ["", "Top 10 SNN nodes:", "", "| node | ms per step |", "|---|---|"]
        for name, s in sorted(snn["per_node"].items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"| {name} | {1e3 * s:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
