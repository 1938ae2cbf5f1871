"""The demo ViT in Lava's simulator: floating- and fixed-point models against
the executor (accuracy per step, deviation, run time).

    python benchmarks/lava_sim.py --samples 25      # writes docs/benchmarks/lava.{md,json}

25 images take about 25 minutes on two cores (Lava's simulator is ~100x the executor).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from machine import machine_info, machine_markdown, write_result

import ecmt
from ecmt import data, ir
from ecmt.convert import calibration_batches
from ecmt.zoo import load_model
from exporters.lava import build
from ecmt.runtime.fixed_point import fraction_bits

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"


def accuracy(estimates: np.ndarray, labels: np.ndarray) -> list[float]:
    return (estimates.argmax(-1) == labels[None]).mean(axis=1).tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=25)
    parser.add_argument("-T", type=int, default=8)
    args = parser.parse_args()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test").take(args.samples)
    spiking = ecmt.convert(load_model("demo"), calibration_batches(train.sample(512)), progress=False)
    x, y = test.images, test.labels.numpy()
    t0 = time.time()
    ref = spiking(x, args.T).numpy()
    executor_s = time.time() - t0
    rows = {"executor": {"seconds": executor_s, "accuracy": accuracy(ref, y)}}
    scale = float(np.abs(ref).max())
    for name, fixed in (("lava float", False), ("lava fixed", True)):
        net = build(spiking.graph, fixed_point=fixed)
        t0 = time.time()
        est = net.run(x.numpy(), args.T)
        rows[name] = {"seconds": time.time() - t0, "accuracy": accuracy(est, y),
                      "max_rel_deviation": [float(np.abs(est[t] - ref[t]).max() / scale) for t in range(args.T)],
                      "processes": net.kinds}
        print(name, rows[name]["seconds"], rows[name]["accuracy"][-1], flush=True)
    result = {"machine": machine_info(), "samples": args.samples, "T": args.T, "rows": rows}
    levels = sorted({n.levels for n in spiking.graph.of_kind(ir.MTNeuron)})
    bits = [fraction_bits(lv) for lv in levels]
    lines = ["# The demo ViT in Lava's simulator", "",
             f"Produced by `python benchmarks/lava_sim.py --samples {args.samples} -T {args.T}`.  "
             + machine_markdown(result["machine"]), "",
             f"{args.samples} Fashion-MNIST test images, T = {args.T}, `Loihi2SimCfg`.  Free-running "
             "(no lockstep): the deviation is the largest |Lava - executor| over outputs, relative to the "
             "output scale.  Fixed point: 8-bit weights with one scale per output channel, integer "
             f"membranes in units of 2^-F of the smaller threshold (F = {', '.join(map(str, bits))} for "
             f"{', '.join(map(str, levels))} levels; docs/lava.md).", "",
             "| t | executor accuracy | Lava float accuracy | Lava float deviation | Lava fixed accuracy | "
             "Lava fixed deviation |", "|---|---|---|---|---|---|"]
    for t in range(args.T):
        lines.append(f"| {t + 1} | {100 * rows['executor']['accuracy'][t]:.1f}% | "
                     f"{100 * rows['lava float']['accuracy'][t]:.1f}% | {rows['lava float']['max_rel_deviation'][t]:.2e} | "
                     f"{100 * rows['lava fixed']['accuracy'][t]:.1f}% | {rows['lava fixed']['max_rel_deviation'][t]:.2e} |")
    lines += ["", "## Run time (same images, same T)", "",
              "| runtime | seconds | vs executor |", "|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['seconds'] / rows['executor']['seconds']:.0f}x |")
    lines += ["", f"Lava processes: {rows['lava float']['processes']}."]
    write_result(OUT, "lava", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
