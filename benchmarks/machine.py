"""Machine and version facts printed with every benchmark result, and the one
timing rule the benchmarks share."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "compiled_kernels": os.environ.get("ECMT_COMPILE", "1") != "0",
    }


def machine_markdown(info: dict) -> str:
    return "Machine: " + ", ".join(f"{k} = {v}" for k, v in info.items())


def median_time(fn, repeats: int) -> float:
    """Median wall time of fn() over repeats runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(fns: dict, repeats: int, warm_up: bool = True) -> dict:
    """Every repeat's wall time of each fn, timed in turn within every repeat (after one
    warm-up round unless the caller did its own), so that drifts of the machine affect
    all of them alike."""
    if warm_up:
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """The median of interleaved_times for each fn."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(fns, repeats).items()}


def write_result(out: Path, name: str, result: dict, markdown: str, indent: int = 2) -> None:
    """Write a benchmark's output, out/name.json and out/name.md, and say so."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=indent) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(f"wrote {out / name}.md")
