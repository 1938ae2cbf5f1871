"""What sharing state along chains saves the captured step (ecmt/runtime/captured.py):
the same graph captured with the chains' shared layout and with every node's own
state, timed interleaved in one process (the demo ViT, Fashion-MNIST test images).

    OMP_NUM_THREADS=2 python benchmarks/captured_sharing.py   # writes docs/benchmarks/captured_sharing.{md,json}

The unshared layout is what captured.plan gives a graph without chains (every
role default); it is built here by replacing the plan for one executor.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from machine import machine_info, machine_markdown, write_result

import ecmt
from ecmt import data
from ecmt.convert import calibration_batches
from ecmt.runtime import GraphExecutor, captured
from ecmt.zoo import load_model

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"


def state_values(executor: GraphExecutor, roles) -> int:
    """State values per image in the layout `roles` gives."""
    states = captured.zero_states(executor.steps, roles, executor.graph.shapes, 1, "cpu")
    return sum(t.numel() for s in states if s is not None for t in s if t is not None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-T", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--batches", default="32,256")
    args = parser.parse_args()
    os.environ["ECMT_COMPILE"] = "1"
    torch.manual_seed(0)
    graph = ecmt.convert(load_model("demo"), calibration_batches(data.fashion_mnist("train").sample(512)),
                         progress=False).graph
    test = data.fashion_mnist("test")
    shared_plan = captured.plan
    layouts = {"shared": shared_plan, "unshared": lambda steps: [captured.Role() for _ in steps]}
    executors = {}
    for name, layout in layouts.items():
        captured.plan = layout          # read once, at the executor's first captured step
        executors[name] = GraphExecutor(graph, capture=True)
        executors[name].run(test.images[:2], 1)
    captured.plan = shared_plan
    ex = executors["shared"]
    result = {"machine": machine_info(), "T": args.T, "repeats": args.repeats, "rows": [],
              "state_values_per_image": {name: state_values(ex, layout(ex.steps))
                                         for name, layout in layouts.items()}}
    for batch in (int(b) for b in args.batches.split(",")):
        x = test.images[:batch]
        reference = GraphExecutor(graph).run(x, args.T)
        row = {"batch": batch, "max_abs_diff_vs_node_by_node": {}}
        for name, executor in executors.items():
            row["max_abs_diff_vs_node_by_node"][name] = float((executor.run(x, args.T) - reference).abs().max())
        times = {name: [] for name in executors}
        for _ in range(args.repeats):
            for name, executor in executors.items():
                t0 = time.perf_counter()
                executor.run(x, args.T)
                times[name].append(time.perf_counter() - t0)
        row["step_ms"] = {name: 1e3 * statistics.median(ts) / args.T for name, ts in times.items()}
        row["shared_over_unshared"] = statistics.median(
            s / u for s, u in zip(times["shared"], times["unshared"]))
        result["rows"].append(row)
        print(f"batch {batch}: " + ", ".join(f"{n} {v:.2f} ms/step" for n, v in row["step_ms"].items())
              + f"; shared / unshared {row['shared_over_unshared']:.3f}", flush=True)
    write_result(OUT, "captured_sharing", result, render(result))


def render(r: dict) -> str:
    values = r["state_values_per_image"]
    lines = ["# Shared state in the captured step (demo ViT)", "",
             "Produced by `OMP_NUM_THREADS=2 python benchmarks/captured_sharing.py`.  "
             + machine_markdown(r["machine"]), "",
             f"The same graph captured twice: with the chains' shared state (ecmt/runtime/captured.py) and "
             f"with every node's own state.  State values per image: {values['shared']:,} shared, "
             f"{values['unshared']:,} unshared.  T = {r['T']}; {r['repeats']} repeats, the two timed in turn "
             "within each; the ratio is the median of the per-repeat ratios.  The difference from the "
             "node-by-node run is the largest over all outputs and steps (a spike flipped by rounding moves "
             "one image's estimate by a level).", "",
             "| batch | shared (ms / step) | unshared (ms / step) | shared / unshared | max abs diff from node by "
             "node, shared | unshared |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        diff = row["max_abs_diff_vs_node_by_node"]
        lines.append(f"| {row['batch']} | {row['step_ms']['shared']:.2f} | {row['step_ms']['unshared']:.2f} | "
                     f"{row['shared_over_unshared']:.3f} | {diff['shared']:.2e} | {diff['unshared']:.2e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
