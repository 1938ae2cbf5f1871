"""lava-dl netx running ecmt's netx layout against the executor, and the
fixed-point Lava model of the demo CNN per layer.

    python benchmarks/netx.py --samples 1000      # writes docs/benchmarks/netx.{md,json}

Part 1 (netx layout): the demo MLP (``demo-mlp``, committed checkpoint) and a
sequential ReLU CNN trained here on Fashion-MNIST with a fixed seed (2
epochs), converted (paper calibration on
512 training images), exported with ``layout="netx"`` and run by
``lava.lib.dl.netx.hdf5.Network`` in Loihi2SimCfg (fixed point), each test
image held for T = 8 steps in one run.  Accuracy at t = 1, 2, 4, 8 against
the executor's; netx's record against ecmt's integer model of netx
(``netx.emulate``), which also runs the delta-threshold sweep and every
image of --eval-samples.  The demo CNN (residual blocks, max pooling) is
refused by the netx layout: its message is recorded.

Part 2 (fixed point, ``exporters.lava.build(graph, fixed_point=True)``): the
demo CNN.  The fixed-point models' arithmetic is re-run by the executor
(weights rounded like ``processes.quantize_int8``, every MT neuron's input
rounded to its membrane unit), so that each source of deviation can be
switched on alone, per layer, on --fixed-samples images; Lava's own
fixed-point run on --lava-fixed-samples images checks that re-run, with the
settings before (one weight scale per layer, unit 2^-8) and after (one per
output channel, unit 2^-12).
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from machine import machine_info, machine_markdown, write_result

import ecmt
from ecmt import data, ir
from ecmt.runtime import GraphExecutor
from ecmt.zoo import load_model
from exporters import lava as elava
from exporters.lava import netx, processes

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
T = 8
STEPS = (1, 2, 4, 8)
DELTAS = (0.0, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4)


# -- part 1: the netx layout ------------------------------------------------------------------
def build(kind: str) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                             nn.Linear(64, 10))
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 7 * 7, 10))


def train(kind: str, epochs: int = 2, seed: int = 0) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = build(kind)
    split = data.fashion_mnist("train")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for _ in range(epochs):
        order = torch.randperm(len(split), generator=gen)
        for i in range(0, len(split), 128):
            idx = order[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(model(split.images[idx]), split.labels[idx]).backward()
            opt.step()
    return model.eval(), time.time() - t0


def accuracy(out: np.ndarray, y: np.ndarray) -> float:
    return float((out.argmax(-1) == y).mean())


def rel(a: np.ndarray, b: np.ndarray) -> dict:
    """|a - b| over outputs, relative to |b|: max and root mean square."""
    return {"max": float(np.abs(a - b).max() / np.abs(b).max()),
            "rms": float(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()))}


def netx_part(kind: str, samples: int, eval_samples: int, tmp: Path) -> dict:
    model, train_s = (load_model("demo-mlp"), 0.0) if kind == "mlp" else train(kind)
    train_split, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    calib = train_split.sample(512)
    spiking = ecmt.convert(model, calib, progress=False)
    graph = spiking.graph
    ev = test.take(eval_samples)
    x_all, y_all = ev.images.numpy(), ev.labels.numpy()
    t0 = time.time()
    executor = spiking(ev.images, T).numpy()
    executor_s = time.time() - t0
    analog = spiking.analog(ev.images).numpy()
    path = tmp / f"{kind}.h5"
    assert elava.export(graph, path, layout="netx", calib=calib) == "netx"
    p = netx.plan(graph, calib=calib)
    r = {"model": kind, "parameters": sum(v.numel() for v in model.parameters()), "train_seconds": train_s,
         "layers": [{"name": layer.name, "kind": layer.kind, "shape": list(layer.shape), "vThMant": layer.vth,
                     "scale": layer.scale, "weight_max": int(np.abs(layer.weight).max()),
                     "weight_bits_lost": layer.weight_bits_lost} for layer in p.layers],
         "input_scale": p.input_scale, "weight_bits_lost": p.weight_bits_lost, "latency": p.latency,
         "ann_accuracy": accuracy(analog, y_all),
         "executor_accuracy": [accuracy(executor[t - 1], y_all) for t in STEPS], "executor_seconds": executor_s}

    # netx itself (Lava), on the first `samples` images
    x, y = x_all[:samples], y_all[:samples]
    t0 = time.time()
    record = netx.run(path, x, T, raw=True)
    r["netx_seconds"] = time.time() - t0
    t0 = time.time()
    emulated = netx.emulate(p, x, T)
    r["emulate_seconds"] = time.time() - t0
    r["netx_equals_emulation"] = bool(np.array_equal(record, emulated))
    r["netx_max_abs_diff_to_emulation"] = float(np.abs(record - emulated).max())
    out = netx.aligned(record, len(x), T, p.latency, p.output_scale)
    wall = netx.aligned(record, len(x), T, 0, p.output_scale)          # read without the latency
    r["netx"] = {"samples": samples, "accuracy": [accuracy(out[t - 1], y) for t in STEPS],
                 "wall_clock_accuracy": [accuracy(wall[t - 1], y) for t in STEPS],
                 "executor_accuracy": [accuracy(executor[t - 1][:samples], y) for t in STEPS],
                 "same_output_every_step": bool(all(np.array_equal(out[0], out[t]) for t in range(T)))}

    # netx's arithmetic on every evaluation image: the delta sweep
    sweep = []
    for delta in DELTAS:
        q = netx.plan(graph, calib=calib, delta=delta)
        stats: dict = {}
        rec = netx.emulate(q, x_all, T, stats=stats)
        o = netx.aligned(rec, len(x_all), T, q.latency, q.output_scale)[-1]
        ref = netx.reference(q, x_all, 1)
        tenth = max(1, len(x_all) // 10)
        sweep.append({
            "delta": delta, "vThMant": [layer.vth for layer in q.layers], "accuracy": accuracy(o, y_all),
            "argmax_agrees_with_executor_t8": float((o.argmax(-1) == executor[-1].argmax(-1)).mean()),
            "vs_analog": rel(o, analog), "vs_executor_t8": rel(o, executor[-1]),
            "quantized_accuracy": accuracy(ref.quantized, y_all),
            # error against the file's quantized network early and late in the run (dropped spike bits)
            "vs_quantized_first_tenth": rel(o[:tenth], ref.quantized[:tenth]),
            "vs_quantized_last_tenth": rel(o[-tenth:], ref.quantized[-tenth:]),
            "spikes_per_image": sum(v["spikes"] for v in stats.values()) / len(x_all),
            "state_bits": max(int(np.ceil(np.log2(v["sigma"] + 1))) + 1 for v in stats.values()),
            "spike_bits": max(int(np.ceil(np.log2(v["spike"] + 1))) + 1 for v in stats.values()),
        })
    r["sweep"] = sweep
    print(kind, "netx", r["netx"]["accuracy"], "executor", r["netx"]["executor_accuracy"],
          f"{r['netx_seconds']:.1f}s", "exact", r["netx_equals_emulation"], flush=True)
    return r


def refusal() -> str:
    graph = ecmt.convert(load_model("demo-cnn"), data.fashion_mnist("train").sample(128), progress=False).graph
    try:
        netx.plan(graph)
    except netx.NetxLayoutError as err:
        return f"{err} (hint: {err.hint})"
    return "not refused"


# -- part 2: the fixed-point Lava model of the demo CNN --------------------------------------
def rounded_weights(graph: ir.SpikingGraph, per_channel: bool) -> ir.SpikingGraph:
    nodes = []
    for node in graph:
        node = copy.copy(node)
        if isinstance(node, (ir.Linear, ir.Conv2d)):
            q, scale = processes.quantize_int8(node.weight.numpy(), per_channel=per_channel)
            node.weight = torch.from_numpy((q * scale).astype(np.float32))
        nodes.append(node)
    return ir.SpikingGraph(nodes, meta=graph.meta)


def perturbed_weights(graph: ir.SpikingGraph, relative: float, seed: int = 0) -> ir.SpikingGraph:
    gen = torch.Generator().manual_seed(seed)
    nodes = []
    for node in graph:
        node = copy.copy(node)
        if isinstance(node, (ir.Linear, ir.Conv2d)):
            node.weight = node.weight * (1 + relative * torch.randn(node.weight.shape, generator=gen))
        nodes.append(node)
    return ir.SpikingGraph(nodes, meta=graph.meta)


def one_layer_rounded(graph: ir.SpikingGraph, name: str, per_channel: bool) -> ir.SpikingGraph:
    nodes = []
    for node in graph:
        if node.name == name:
            node = copy.copy(node)
            q, scale = processes.quantize_int8(node.weight.numpy(), per_channel=per_channel)
            node.weight = torch.from_numpy((q * scale).astype(np.float32))
        nodes.append(node)
    return ir.SpikingGraph(nodes, meta=graph.meta)


def run_fixed_arithmetic(graph: ir.SpikingGraph, x: torch.Tensor, fraction_bits: int | None):
    """The executor with PyMTNeuronFixed's arithmetic (None: float MT neurons):
    thresholds and every step's input rounded to the unit min(th) / 2^F.
    Returns (output estimates [T, N, ...], {MT neuron: estimates [T, N, ...]})."""
    ex = GraphExecutor(graph)
    if fraction_bits is not None:
        for step in ex.steps:
            if isinstance(step.node, ir.MTNeuron):
                node = step.node
                th_neg = node.th_neg if node.th_neg is not None else node.th_pos
                unit = (torch.minimum(node.th_pos, th_neg) / 2 ** fraction_bits).float()
                dims = len(graph.shapes[node.name]) + 1
                unit = unit.reshape((1,) * (dims - unit.dim()) + tuple(unit.shape))
                step.state.th_pos = torch.round(step.state.th_pos / unit) * unit
                if step.state.th_neg is not None:
                    step.state.th_neg = torch.round(step.state.th_neg / unit) * unit
                step.fn = (lambda fn, u: (lambda xs, t: fn([torch.round(xs[0] / u) * u], t)))(step.fn, unit)
    sums, traces = {}, {}

    def observe(node, inputs, out, t):
        if isinstance(node, ir.MTNeuron):
            sums[node.name] = out.clone() if t == 1 else sums[node.name] + out
            traces.setdefault(node.name, []).append(sums[node.name] / t)

    est = ex.run(x, T, observer=observe)
    return est, {k: torch.stack(v) for k, v in traces.items()}


def rms_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp(min=1e-12))


def fixed_point_part(samples: int, lava_samples: int) -> dict:
    from ecmt.convert import calibration_batches
    train_split, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    spiking = ecmt.convert(load_model("demo-cnn"), calibration_batches(train_split.sample(512)), progress=False)
    graph = spiking.graph
    x, y = test.images[:samples], test.labels[:samples].numpy()
    ref, ref_traces = run_fixed_arithmetic(graph, x, None)
    analog = spiking.analog(x)
    scale = float(ref.abs().max())
    neurons = [n.name for n in graph.of_kind(ir.MTNeuron)]

    def summary(est, traces=None):
        e = est.numpy()
        out = {"max_dev": [float(np.abs(e[t - 1] - ref[t - 1].numpy()).max() / scale) for t in STEPS],
               "rms_dev": [rms_rel(est[t - 1], ref[t - 1]) for t in STEPS],
               "argmax_agreement": float((est.argmax(-1) == ref.argmax(-1)).float().mean()),
               "accuracy": [accuracy(e[t - 1], y) for t in STEPS]}
        if traces is not None:
            out["per_neuron"] = {n: {"rms_t1": rms_rel(traces[n][0], ref_traces[n][0]),
                                     "rms_t8": rms_rel(traces[n][-1], ref_traces[n][-1]),
                                     "changed_t1": float((traces[n][0] != ref_traces[n][0]).float().mean())}
                                 for n in neurons}
        return out

    configs = {
        "before: layer scales, unit 2^-8": (rounded_weights(graph, False), 8),
        "after: channel scales, unit 2^-12": (rounded_weights(graph, True), 12),
        "layer-scaled weights only": (rounded_weights(graph, False), None),
        "channel-scaled weights only": (rounded_weights(graph, True), None),
        "unit 2^-8 only": (graph, 8),
        "unit 2^-12 only": (graph, 12),
        "unit 2^-16 only": (graph, 16),
        "random 0.1% weight perturbation": (perturbed_weights(graph, 1e-3), None),
    }
    r = {"samples": samples, "output_scale": scale,
         "executor_accuracy": [accuracy(ref[t - 1].numpy(), y) for t in STEPS],
         "snn_vs_ann_rms": [rms_rel(ref[t - 1], analog) for t in STEPS], "configs": {}, "one_layer": {}}
    for name, (g, bits) in configs.items():
        est, traces = run_fixed_arithmetic(g, x, bits)
        r["configs"][name] = summary(est, traces)
        print("fixed point:", name, np.round(r["configs"][name]["max_dev"], 3), flush=True)
    for node in graph.of_kind(ir.Linear, ir.Conv2d):
        r["one_layer"][node.name] = {
            label: summary(run_fixed_arithmetic(one_layer_rounded(graph, node.name, per_channel), x, None)[0])
            for label, per_channel in (("layer", False), ("channel", True))}

    # Lava's own fixed-point models on the first images: before (patched in) and after
    xl = x[:lava_samples]
    ref_l = ref[:, :lava_samples].numpy()
    lava = {}
    quantize = processes.quantize_int8
    for label, patches, bits, per_channel in (
            ("before", [mock.patch.object(processes, "fraction_bits", lambda levels: 8),
                        mock.patch.object(processes, "quantize_int8",
                                          lambda w, per_channel=True: quantize(w, per_channel=False))], 8, False),
            ("after", [], 12, True)):
        for patch in patches:
            patch.start()
        try:
            t0 = time.time()
            est = elava.build(graph, fixed_point=True).run(xl.numpy(), T)
            seconds = time.time() - t0
        finally:
            for patch in patches:
                patch.stop()
        emulated, _ = run_fixed_arithmetic(rounded_weights(graph, per_channel), xl, bits)
        lava[label] = {"seconds": seconds,
                       "max_dev": [float(np.abs(est[t - 1] - ref_l[t - 1]).max() / scale) for t in STEPS],
                       "argmax_agreement": float((est.argmax(-1) == ref_l.argmax(-1)).mean()),
                       "vs_rerun_max": [float(np.abs(est[t - 1] - emulated[t - 1].numpy()).max() / scale)
                                        for t in STEPS]}
        print("lava fixed", label, lava[label], flush=True)
    r["lava"] = {"samples": lava_samples, **lava}
    return r


# -- report -----------------------------------------------------------------------------------
def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def markdown(result: dict) -> str:
    a = result["args"]
    lines = ["# lava-dl netx running the netx layout; the fixed-point Lava model", "",
             "Produced by `python benchmarks/netx.py"
             + (f" --samples {a['samples']}" if a["samples"] != 1000 else "") + "`.  "
             + machine_markdown(result["machine"]), "",
             "## netx layout: netx's own sigma-delta blocks against the executor", "",
             f"Fashion-MNIST; the demo MLP (`demo-mlp`) and a sequential CNN trained here (seed 0, 2 epochs), "
             f"paper calibration on 512 training images, "
             f"`export(graph, path, layout=\"netx\", calib=...)` with the default delta threshold "
             f"(theta / {round(1 / netx.DEFAULT_DELTA)}).  netx: `lava.lib.dl.netx.hdf5.Network` as shipped, "
             f"Loihi2SimCfg fixed point, each image held for T = {T} steps, the first {a['samples']} test images in "
             f"one run; its output for step t of an image is read `latency` steps later (one step per "
             f"synaptic layer).  Executor: `SpikingModel(x, T)` on the same images.", ""]
    for r in result["netx"]:
        n = r["netx"]
        lines += [f"### {r['model'].upper()} ({r['parameters']:,} parameters, ANN accuracy "
                  f"{pct(r['ann_accuracy'])} on {a['eval_samples']} images)", "",
                  "| t | executor | netx (read latency steps later) | netx at wall-clock step t |", "|---|---|---|---|"]
        for i, t in enumerate(STEPS):
            lines.append(f"| {t} | {pct(n['executor_accuracy'][i])} | {pct(n['accuracy'][i])} | "
                         f"{pct(n['wall_clock_accuracy'][i])} |")
        lines += ["", f"Latency {r['latency']} steps.  netx's output record equals ecmt's integer model of netx "
                  f"(`netx.emulate`) bit for bit: **{r['netx_equals_emulation']}** "
                  f"(largest difference {r['netx_max_abs_diff_to_emulation']:g}).  The output is the same at "
                  f"every step of an image: {n['same_output_every_step']}.  "
                  f"Weight bits lost to the 24-bit state: {r['weight_bits_lost']:.2f} "
                  f"(layers: " + ", ".join(f"{lay['name']} {lay['kind']} max |w| {lay['weight_max']}, "
                                           f"vThMant {lay['vThMant']}" for lay in r["layers"]) + ").", "",
                  f"All {a['eval_samples']} images with netx's arithmetic (`netx.emulate`), by delta threshold "
                  f"(a fraction of each MT neuron's theta); executor at t = 8: "
                  f"{pct(r['executor_accuracy'][-1])}:", "",
                  "| delta | vThMant | accuracy | argmax = executor t=8 | rms dev. vs ANN | rms dev. vs executor t=8 "
                  "| file's quantized ANN | vs it, first / last tenth (rms) | spikes per image | state / spike bits |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for s in r["sweep"]:
            d = "0" if s["delta"] == 0 else f"1/{round(1 / s['delta'])}"
            lines.append(f"| {d} | {s['vThMant']} | {pct(s['accuracy'])} | "
                         f"{pct(s['argmax_agrees_with_executor_t8'])} | {s['vs_analog']['rms']:.3f} | "
                         f"{s['vs_executor_t8']['rms']:.3f} | {pct(s['quantized_accuracy'])} | "
                         f"{s['vs_quantized_first_tenth']['rms']:.3f} / {s['vs_quantized_last_tenth']['rms']:.3f} | "
                         f"{s['spikes_per_image']:.0f} | {s['state_bits']} / {s['spike_bits']} |")
        lines += ["", f"Run time ({n['samples']} images, T = {T}): netx {r['netx_seconds']:.1f} s "
                  f"({r['netx_seconds'] / n['samples']:.2f} s per image, Lava's start included), ecmt's model "
                  f"of netx {r['emulate_seconds']:.2f} s, executor {r['executor_seconds']:.2f} s for "
                  f"{a['eval_samples']} images; training {r['train_seconds']:.0f} s.", ""]
    lines += ["### The demo CNN", "", "`export(demo_cnn_graph, path, layout=\"netx\")` is refused:", "",
              f"> {result['refusal']}", ""]
    fx = result["fixed_point"]
    lines += ["## Fixed point (`build(graph, fixed_point=True)`): the demo CNN", "",
              f"Paper calibration on 512 training images; {fx['samples']} test images, T = {T}.  The fixed-point "
              f"models' arithmetic re-run by the executor, one source at a time; deviation from the float "
              f"executor relative to the output scale ({fx['output_scale']:.2f}).  For scale: the float SNN "
              f"itself is " + ", ".join(f"{v:.2f}" for v in fx["snn_vs_ann_rms"]) + " (rms, relative) from the "
              f"ANN at t = " + ", ".join(map(str, STEPS)) + f"; executor accuracy "
              + ", ".join(pct(v) for v in fx["executor_accuracy"]) + ".", "",
              "| arithmetic | max dev. t=1, 2, 4, 8 | rms dev. t=1, 2, 4, 8 | argmax agreement (all t) | "
              "accuracy t=1, 2, 4, 8 |", "|---|---|---|---|---|"]
    for name, c in fx["configs"].items():
        lines.append(f"| {name} | {', '.join(f'{v:.3f}' for v in c['max_dev'])} | "
                     f"{', '.join(f'{v:.3f}' for v in c['rms_dev'])} | {pct(c['argmax_agreement'])} | "
                     f"{', '.join(pct(v) for v in c['accuracy'])} |")
    before, after = fx["configs"]["before: layer scales, unit 2^-8"], fx["configs"]["after: channel scales, unit 2^-12"]
    lines += ["", "Per MT neuron (graph order), running estimate against the float executor's, rms relative; "
              "'changed' = fraction of its t = 1 estimates that differ:", "",
              "| MT neuron | before: rms t=1 / t=8, changed t=1 | after: rms t=1 / t=8, changed t=1 |",
              "|---|---|---|"]
    for name in before["per_neuron"]:
        b, c = before["per_neuron"][name], after["per_neuron"][name]
        lines.append(f"| {name} | {b['rms_t1']:.3f} / {b['rms_t8']:.3f}, {pct(b['changed_t1'])} | "
                     f"{c['rms_t1']:.3f} / {c['rms_t8']:.3f}, {pct(c['changed_t1'])} |")
    lines += ["", "One layer's weights rounded at a time (float MT neurons), output rms deviation at t = 1 / t = 8:",
              "", "| layer | one scale per layer | one scale per output channel |", "|---|---|---|"]
    for name, o in fx["one_layer"].items():
        lines.append(f"| {name} | {o['layer']['rms_dev'][0]:.3f} / {o['layer']['rms_dev'][-1]:.3f} | "
                     f"{o['channel']['rms_dev'][0]:.3f} / {o['channel']['rms_dev'][-1]:.3f} |")
    lv = fx["lava"]
    lines += ["", f"Lava's own fixed-point models (Loihi2SimCfg), first {lv['samples']} images, against the float "
              "executor (max dev. t = 1, 2, 4, 8), and against the re-run above:", "",
              "| models | max dev. | argmax agreement | max diff. to the re-run | seconds |", "|---|---|---|---|---|"]
    for label in ("before", "after"):
        m = lv[label]
        lines.append(f"| {label} | {', '.join(f'{v:.3f}' for v in m['max_dev'])} | {pct(m['argmax_agreement'])} | "
                     f"{', '.join(f'{v:.4f}' for v in m['vs_rerun_max'])} | {m['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="test images netx itself runs")
    parser.add_argument("--eval-samples", type=int, default=1000,
                        help="test images for the executor and ecmt's model of netx")
    parser.add_argument("--fixed-samples", type=int, default=300, help="demo CNN images, fixed-point re-run")
    parser.add_argument("--lava-fixed-samples", type=int, default=4, help="demo CNN images in Lava, fixed point")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        parts = [netx_part(kind, args.samples, args.eval_samples, Path(tmp)) for kind in ("mlp", "cnn")]
    result = {"machine": machine_info(), "args": {k: v for k, v in vars(args).items() if k != "out"},
              "T": T, "default_delta": netx.DEFAULT_DELTA, "netx": parts, "refusal": refusal(),
              "fixed_point": fixed_point_part(args.fixed_samples, args.lava_fixed_samples)}
    text = markdown(result)
    write_result(args.out, "netx", result, text)


if __name__ == "__main__":
    main()
