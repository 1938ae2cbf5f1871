"""The demo CNN (ResNet-style, Fashion-MNIST): accuracy against T, energy, and
the error of the two max-pooling designs.

    python benchmarks/cnn.py        # writes docs/benchmarks/cnn.{md,json}

Max pooling designs, on the same converted graph:
* ecm (what the converter builds): output = increment of t * maxpool(S_t / t);
* spike: output = maxpool of this step's input increments (max-pooling spikes).
The error is measured at the pool's output (running estimate against the ANN's
max-pool activation) and in accuracy.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from machine import machine_info, machine_markdown, write_result

import ecmt
import hw_sim
from ecmt import data, ir
from ecmt.convert import calibration_batches
from ecmt.evaluate import ann_accuracy
from ecmt.zoo import load_model

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"


def run_designs(spiking, model, split, T: int, batch_size: int = 500):
    """Accuracy per t and the pool output's relative error per t, for both designs."""
    graph = spiking.graph
    (pool,) = graph.of_kind(ir.MaxPool2d)
    pool_module = next(m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d))
    result = {}
    for design in ("ecm", "spike"):
        correct = torch.zeros(T)
        err_num, err_den = torch.zeros(T), torch.zeros(T)
        for start in range(0, len(split), batch_size):
            x, y = split.images[start:start + batch_size], split.labels[start:start + batch_size]
            ann_pool = {}
            hook = pool_module.register_forward_hook(lambda m, i, o: ann_pool.setdefault("a", o))
            with torch.no_grad():
                model(x)
            hook.remove()
            state = {"sum": 0.0}
            last_in = {}

            def observe(node, inputs, out, t):
                if node is pool:
                    state["sum"] = state["sum"] + out
                    est = state["sum"] / t
                    err_num[t - 1] += (est - ann_pool["a"]).norm() ** 2
                    err_den[t - 1] += ann_pool["a"].norm() ** 2
                if node.name == pool.inputs[0]:
                    last_in["x"] = out

            def intervene(node, out, t):
                if design == "spike" and node is pool:
                    return F.max_pool2d(last_in["x"], pool.kernel_size, pool.stride, pool.padding)
                return out

            est = spiking.executor().run(x, T, observer=observe, intervene=intervene)
            correct += (est.argmax(-1) == y.unsqueeze(0)).sum(dim=1)
        result[design] = {"accuracy": (correct / len(split)).tolist(),
                          "pool_rel_error": (err_num / err_den).sqrt().tolist()}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-T", type=int, default=32)
    parser.add_argument("--energy-samples", type=int, default=1000)
    args = parser.parse_args()
    model = load_model("demo-cnn")
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    calib = calibration_batches(train.sample(512))
    ann = ann_accuracy(model, test, progress=False)
    rows = {}
    for name, options in {"paper calibration": {}, "search, target T=4": {"target_T": 4}}.items():
        t0 = time.time()
        spiking = ecmt.convert(model, calib, progress=False, **options)
        convert_s = time.time() - t0
        t0 = time.time()
        designs = run_designs(spiking, model, test, args.T)
        sim_s = time.time() - t0
        report = hw_sim.simulate(spiking.graph, test.take(args.energy_samples).images, args.T,
                                 ["cmos45-fp32", "loihi"], mode=None, progress=False)
        rows[name] = {"convert_seconds": round(convert_s, 1), "simulate_seconds": round(sim_s, 1),
                      "designs": designs,
                      "full_ratio_cmos": report.result("cmos45-fp32", "full")["energy_ratio_per_t"],
                      "full_ratio_loihi": report.result("loihi", "full")["energy_ratio_per_t"],
                      "mt_neurons": len(spiking.graph.of_kind(ir.MTNeuron))}
        print(name, [round(100 * a, 2) for a in designs["ecm"]["accuracy"]], flush=True)
    result = {"machine": machine_info(), "ann_accuracy": ann, "T": args.T,
              "parameters": sum(p.numel() for p in model.parameters()), "rows": rows}
    write_result(OUT, "cnn", result, render(result))


def render(r):
    ann = r["ann_accuracy"]
    ts = [t for t in (1, 2, 4, 8, 16, 32) if t <= r["T"]]
    lines = ["# The demo CNN: conversion, energy, max-pooling designs", "",
             "Produced by `python benchmarks/cnn.py`.  " + machine_markdown(r["machine"]), "",
             f"Demo CNN (`ecmt train-demo --model demo-cnn`, {r['parameters']:,} parameters: conv + batch norm, "
             f"two residual blocks, max and average pooling), Fashion-MNIST test (10,000 images), ANN accuracy "
             f"{100 * ann:.2f}%.  Calibration on 512 training images.  Energy: hw_sim full mode on 1,000 test "
             "images, SNN energy up to step t over one ANN forward on the same profile.", "",
             "## Accuracy and energy against T (max pooling as ECM)", "",
             "| calibration | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
    for name, row in r["rows"].items():
        acc = row["designs"]["ecm"]["accuracy"]
        lines.append(f"| {name}: accuracy | " + " | ".join(f"{100 * acc[t - 1]:.2f}%" for t in ts) + " |")
        lines.append(f"| {name}: energy cmos45-fp32 | " +
                     " | ".join(f"{row['full_ratio_cmos'][t - 1]:.3f}" for t in ts) + " |")
        lines.append(f"| {name}: energy loihi | " +
                     " | ".join(f"{row['full_ratio_loihi'][t - 1]:.3f}" for t in ts) + " |")
    lines += ["", "## Max pooling: ECM against max-pooling the spikes", "",
              "Relative error of the pool output's running estimate against the ANN's max-pool activation "
              "(root of summed squares over the test set), and accuracy, same converted graph:", "",
              "| calibration | design | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|---|" + "---|" * len(ts)]
    for name, row in r["rows"].items():
        for design, d in row["designs"].items():
            lines.append(f"| {name} | {design}: pool error | " +
                         " | ".join(f"{d['pool_rel_error'][t - 1]:.3f}" for t in ts) + " |")
            lines.append(f"| {name} | {design}: accuracy | " +
                         " | ".join(f"{100 * d['accuracy'][t - 1]:.2f}%" for t in ts) + " |")
    lines.append("")
    lines.append("Conversion and simulation time (both designs, 10,000 images, T = "
                 f"{r['T']}): " + "; ".join(f"{n}: convert {row['convert_seconds']} s, simulate "
                                            f"{row['simulate_seconds']} s" for n, row in r["rows"].items()) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
