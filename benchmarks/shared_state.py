"""What sharing state along chains saves the fast step (ecmt/runtime/program.py):
the same graph's fast step with the chains' shared layout and with every node's
own state (the layout an observer gets), timed interleaved in one process (the
demo ViT, Fashion-MNIST test images).

    OMP_NUM_THREADS=2 python benchmarks/shared_state.py   # writes docs/benchmarks/shared_state.{md,json}
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from machine import machine_info, machine_markdown, write_result

import ecmt
from ecmt import data
from ecmt.convert import calibration_batches
from ecmt.runtime import GraphExecutor, program
from ecmt.zoo import load_model

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"


def state_values(p: program.Program) -> int:
    """State values per image of a program (its buffers that hold state)."""
    return sum(b.numel() for b in p.state_buffers) // p.batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-T", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--batches", default="32,256")
    args = parser.parse_args()
    torch.manual_seed(0)
    graph = ecmt.convert(load_model("demo"), calibration_batches(data.fashion_mnist("train").sample(512)),
                         progress=False).graph
    test = data.fashion_mnist("test")
    ex = GraphExecutor(graph)
    kernels = program.kernels_for(ex.device)
    result = {"machine": machine_info(), "T": args.T, "repeats": args.repeats, "rows": []}
    for batch in (int(b) for b in args.batches.split(",")):
        x = test.images[:batch]
        layouts = {"shared": program.Program(ex, batch, kernels),
                   "unshared": program.Program(ex, batch, kernels, observe=True)}
        result["state_values_per_image"] = {name: state_values(p) for name, p in layouts.items()}

        def run(p):
            out_sum = None
            for t, inc in enumerate(p.run(x, args.T), start=1):
                out_sum = inc.clone() if out_sum is None else out_sum.add_(inc)
            return out_sum / args.T
        reference = GraphExecutor(graph, capture=False).run(x, args.T)[-1]
        row = {"batch": batch, "max_abs_diff_vs_node_by_node": {}}
        for name, p in layouts.items():
            row["max_abs_diff_vs_node_by_node"][name] = float((run(p) - reference).abs().max())
        times = {name: [] for name in layouts}
        for _ in range(args.repeats):
            for name, p in layouts.items():
                t0 = time.perf_counter()
                run(p)
                times[name].append(time.perf_counter() - t0)
        row["step_ms"] = {name: 1e3 * statistics.median(ts) / args.T for name, ts in times.items()}
        row["shared_over_unshared"] = statistics.median(
            s / u for s, u in zip(times["shared"], times["unshared"]))
        result["rows"].append(row)
        print(f"batch {batch}: " + ", ".join(f"{n} {v:.2f} ms/step" for n, v in row["step_ms"].items())
              + f"; shared / unshared {row['shared_over_unshared']:.3f}", flush=True)
    write_result(OUT, "shared_state", result, render(result))


def render(r: dict) -> str:
    values = r["state_values_per_image"]
    lines = ["# Shared state in the fast step (demo ViT)", "",
             "Produced by `OMP_NUM_THREADS=2 python benchmarks/shared_state.py`.  "
             + machine_markdown(r["machine"]), "",
             f"The same graph's fast step twice: with the chains' shared state (ecmt/runtime/program.py) and "
             f"with every node's own state (the layout an observer gets).  State values per image: "
             f"{values['shared']:,} shared, "
             f"{values['unshared']:,} unshared.  T = {r['T']}; {r['repeats']} repeats, the two timed in turn "
             "within each; the ratio is the median of the per-repeat ratios.  The difference from the "
             "node-by-node run is the largest over all outputs at T (a spike flipped by rounding moves "
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
