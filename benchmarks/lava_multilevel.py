"""The whole demo ViT with multi-level MT neurons (spikes_per_step k > 1) in
Lava's Loihi2SimCfg, against the executor, spikes carried as graded payloads.

    OMP_NUM_THREADS=1 python benchmarks/lava_multilevel.py --samples 4 -T 2
        # writes docs/benchmarks/lava_multilevel.{md,json}

The operating point is the one docs/benchmarks/multilevel.md found within one
point of the ANN at t = 1: thresholds at the 0.99-quantile / 16 with 12 levels
(the same top level as the paper's 8), k levels per step.  The floating-point
Lava model runs free (its own spikes) and is compared in lockstep
(exporters/verify.py: the executor adopts Lava's decision only where its
membrane sits within 1e-4 thresholds of a boundary).  Every recorded spike
is checked to be one payload: a signed integer number m of threshold units,
the sum of at most k distinct powers of two; the payload widths follow.
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
from exporters.verify import lockstep

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
LEVELS, DIVISOR_EXP = 12, 4          # thresholds q / 2^4 with 8 + 4 levels


def payload_units(graph: ir.SpikingGraph, net, samples: int, T: int) -> dict[str, np.ndarray]:
    """Per MT neuron, every non-zero recorded spike in threshold units (signed)."""
    units = {}
    for n in graph.of_kind(ir.MTNeuron):
        s = np.concatenate([net.spike(n.name, t, i).ravel() for i in range(samples) for t in range(1, T + 1)])
        s = s[s != 0]
        th = np.where(s > 0, float(n.th_pos), float(n.th_neg) if n.signed else np.nan)
        units[n.name] = s / th
    return units


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4, help="test images (default 4)")
    parser.add_argument("-T", type=int, default=2, help="time steps (default 2)")
    parser.add_argument("-k", "--spikes-per-step", type=int, default=2, dest="k",
                        help="levels an MT neuron may send per step (default 2)")
    args = parser.parse_args()
    if not 1 <= args.k <= LEVELS:
        parser.error(f"--spikes-per-step must be 1..{LEVELS}")

    train, test = data.fashion_mnist("train"), data.fashion_mnist("test").take(args.samples)
    spiking = ecmt.convert(load_model("demo"), calibration_batches(train.sample(512)), levels=LEVELS,
                           spikes_per_step=args.k, threshold_scale=2.0 ** -DIVISOR_EXP, progress=False)
    graph, x, y = spiking.graph, test.images, test.labels.numpy()
    ref = spiking(x, args.T).numpy()

    net = build(graph, fixed_point=False, record_spikes=True)
    t0 = time.time()
    est = net.run(x.numpy(), args.T)
    lava_s = time.time() - t0
    print(f"Lava float: {lava_s:.0f} s", flush=True)
    spikes = lambda node, t: np.stack([net.spike(node, t, i) for i in range(len(x))])
    result = lockstep(graph, x, args.T, est, spikes)

    units = np.concatenate(list(payload_units(graph, net, len(x), args.T).values()))
    m = np.rint(np.abs(units)).astype(np.int64)
    integral = float(np.abs(np.abs(units) - m).max()) if len(m) else 0.0
    popcount = np.array([bin(v).count("1") for v in m])
    largest = int(m.max()) if len(m) else 0
    signed = any(n.signed for n in graph.of_kind(ir.MTNeuron))
    payload_bits = max(1, largest.bit_length()) + int(signed)
    # The fixed-point model's payload is m x th in membrane units of 2^-F of the smaller threshold.
    fixed_bits = LEVELS + fraction_bits(LEVELS) + int(signed)
    scale = float(np.abs(ref).max())
    r = {"machine": machine_info(), "samples": args.samples, "T": args.T, "k": args.k, "levels": LEVELS,
         "threshold_divisor": 2 ** DIVISOR_EXP, "lava_seconds": lava_s,
         "executor_accuracy": (ref.argmax(-1) == y[None]).mean(1).tolist(),
         "lava_accuracy": (est.argmax(-1) == y[None]).mean(1).tolist(),
         "free_running_max_rel_deviation": [float(np.abs(est[t] - ref[t]).max() / scale) for t in range(args.T)],
         "lockstep": {"max_rel_diff": result.max_rel_diff, "decisions": result.decisions, "ties": result.ties},
         "spikes": int(len(m)), "max_units_deviation_from_integer": integral,
         "levels_per_spike": {int(c): int((popcount == c).sum()) for c in np.unique(popcount)},
         "largest_payload_units": largest, "payload_bits_float_model": payload_bits,
         "fraction_bits": fraction_bits(LEVELS), "payload_bits_fixed_model": fixed_bits, "processes": net.kinds}
    if popcount.size and popcount.max() > args.k:
        raise SystemExit(f"a spike carried {popcount.max()} levels, more than k = {args.k}")
    write_result(OUT, "lava_multilevel", r, render(r))


def render(r: dict) -> str:
    k, T = r["k"], r["T"]
    lines = [f"# The demo ViT in Lava with up to {k} levels per spike", "",
             "Produced by `OMP_NUM_THREADS=1 python benchmarks/lava_multilevel.py --samples "
             f"{r['samples']} -T {T} -k {k}`.  " + machine_markdown(r["machine"]), "",
             f"Whole demo ViT (4 blocks), thresholds at the 0.99-quantile / {r['threshold_divisor']} with "
             f"{r['levels']} levels, `spikes_per_step` k = {k}; floating-point MT neuron model in "
             f"`Loihi2SimCfg`, {r['samples']} Fashion-MNIST test image(s), T = {T}.", "",
             "| t | executor accuracy | Lava accuracy | free-running deviation (relative) |", "|---|---|---|---|"]
    for t in range(T):
        lines.append(f"| {t + 1} | {100 * r['executor_accuracy'][t]:.1f}% | {100 * r['lava_accuracy'][t]:.1f}% | "
                     f"{r['free_running_max_rel_deviation'][t]:.2e} |")
    ls = r["lockstep"]
    lines += ["", f"**Lockstep** (exporters/verify.py): largest output difference {ls['max_rel_diff']:.2e} of the "
              f"output scale over {ls['decisions']:,} MT decisions, {ls['ties']} of them ties at a threshold "
              "boundary (float32 summation order) adopted from Lava.", "",
              f"**Payloads**: {r['spikes']:,} non-zero spikes, each one value on one graded port (Lava's "
              f"Dense/Conv take 24-bit messages here); in threshold units every one is an integer (largest "
              f"deviation {r['max_units_deviation_from_integer']:.1e}) with at most k = {k} set bits.  Spikes by "
              "number of levels carried: " + ", ".join(f"{c}: {n:,}" for c, n in r["levels_per_spike"].items())
              + ".", "",
              f"Integer width: the largest payload was {r['largest_payload_units']} threshold units, "
              f"{r['payload_bits_float_model']} bits with the sign; with {r['levels']} levels any payload fits "
              f"{r['levels']} bits + sign.  The fixed-point model sends m x th in membrane units of 2^-F of the "
              f"smaller threshold (F = {r['fraction_bits']}), so up to "
              f"{r['payload_bits_fixed_model']} bits, within Loihi 2's 24-bit graded payload.", "",
              f"Lava run time: {r['lava_seconds']:.0f} s.  Processes: {r['processes']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
