"""Throughput of `ecmt eval` with 1 and 2 torch.distributed processes (gloo, CPU).

    python benchmarks/distributed.py       # writes docs/benchmarks/distributed.{md,json}
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info, machine_markdown, write_result

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
LIMIT, T = 2000, 8


def run(cmd, json_path, env):
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    result = json.loads(Path(json_path).read_text())
    return {"wall_s": wall, "eval_s": result["ann_seconds"] + result["snn_seconds"],
            "snn_accuracy_T": result["snn_accuracy"][-1], "processes": result["processes"]}


def main():
    py = sys.executable
    torchrun = str(Path(py).parent / "torchrun")
    with tempfile.TemporaryDirectory() as d:
        graph = f"{d}/demo.ecmt"
        subprocess.run([py, "-m", "ecmt", "--quiet", "convert", "--model", "demo", "-o", graph], check=True,
                       capture_output=True)
        args = ["--quiet", "eval", graph, "-T", str(T), "--limit", str(LIMIT)]
        rows = []
        for n in (1, 2):
            threads = str(max(1, (os.cpu_count() or 2) // n))
            env = {**os.environ, "OMP_NUM_THREADS": threads}
            prefix = [py, "-m", "ecmt"] if n == 1 else [torchrun, "--standalone", "--nproc_per_node", "2",
                                                        "-m", "ecmt"]
            row = run([*prefix, *args, "--json", f"{d}/r{n}.json"], f"{d}/r{n}.json", env)
            row["threads_per_process"] = int(threads)
            rows.append(row)
            print(row, flush=True)
    info = machine_info()
    lines = ["# `ecmt eval` on 1 and 2 processes", "",
             "Produced by `python benchmarks/distributed.py`.  " + machine_markdown(info), "",
             f"Demo ViT, {LIMIT} Fashion-MNIST test images, T = {T}, batch 256; `torchrun --standalone "
             "--nproc_per_node 2` (gloo) against one process, each process with cores / processes threads.", "",
             "| processes | threads each | evaluation (s) | whole command (s) | images/s (evaluation) | "
             "speed-up | accuracy at T |", "|---|---|---|---|---|---|---|"]
    base = rows[0]["eval_s"]
    for r in rows:
        lines.append(f"| {r['processes']} | {r['threads_per_process']} | {r['eval_s']:.1f} | {r['wall_s']:.1f} | "
                     f"{LIMIT / r['eval_s']:.0f} | {base / r['eval_s']:.2f}x | {100 * r['snn_accuracy_T']:.2f}% |")
    lines += ["", "This machine has 2 cores: one process already uses both through torch's intra-op threads, "
              "so two processes split the same two cores.  What two processes can win is the part that does "
              "not parallelize inside one process (Python overhead per node and step, small elementwise "
              "kernels); what they lose is the duplicated model set-up and compilation per process and the "
              "all-reduce of the results.  On machines with more cores per process, or one GPU per rank, the "
              "batches shard without shared resources and the speed-up approaches the process count."]
    write_result(OUT, "distributed", {"machine": info, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
