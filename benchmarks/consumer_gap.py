"""Why the demo CNN's NIR file (--unit-thresholds) is far from the executor in Norse,
snnTorch and sinabs: max pooling, and the consumers' neuron reset.

    python benchmarks/consumer_gap.py      # writes docs/benchmarks/consumer_gap.{md,json}

1. The ANN with its max pool replaced by what a consumer that ignores ecmt's
   metadata computes for a SumPool2d (the sum of the window), by an average, and by
   1.5 x the average.
2. Models of the libraries' neurons (docs/nir.md), run through nirtorch with the
   standard nodes as NIR defines them: "reset to zero" (v += x; one spike if v > th;
   v = 0: Norse's IF, snnTorch's LIF file) and "subtract" (v += x; floor(v / th)
   spikes; v -= spikes th; v >= -th: sinabs).  Each model is first checked against
   the library itself on the same file and images (equal per-step outputs), then
   run with the max pool computed exactly (ecmt's max-pool ECM, as the node map
   runs it) and, for reset to zero, with a subtracting single-spike neuron instead.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from machine import machine_info, machine_markdown, write_result

import ecmt
from ecmt import SpikingModel, data
from ecmt.evaluate import ann_accuracy
from ecmt.zoo import load_model
from exporters import nir as enir
from exporters import verify
from exporters.nir import torch_map

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
STANDARD = ("Input", "Output", "Affine", "Linear", "Conv1d", "Conv2d", "AvgPool2d", "SumPool2d", "Flatten", "Scale")


class Neuron(torch.nn.Module):
    """A library's neuron on a NIR IF node (its v_threshold), stepped as nirtorch steps state."""

    def __init__(self, node, rule: str):
        super().__init__()
        self.th = torch.as_tensor(np.asarray(node.v_threshold), dtype=torch.float32)
        self.rule = rule

    def forward(self, x, state=None):
        v = (torch.zeros_like(x) if state is None else state) + x
        if self.rule == "reset to zero":
            s = (v > self.th).float()
            v = v * (1 - s)
        elif self.rule == "subtract":
            s = torch.clamp(torch.floor(v / self.th), min=0)
            v = torch.clamp(v - s * self.th, min=-self.th)
        else:                                   # "subtract, one spike": reset to zero's firing, subtraction's reset
            s = (v > self.th).float()
            v = v - s * self.th
        return s, v


def node_map(rule: str, exact_max_pool: bool) -> dict:
    import nir
    m = {getattr(nir, kind): (lambda kind: lambda node: torch_map._standard(kind, node))(kind) for kind in STANDARD}

    def pool(node):
        op = torch_map._meta(node, "ecmt.op")
        if exact_max_pool and op is not None and op["kind"] == "maxpool2d_ecm":
            return torch_map._ConventionNode(node, op)
        return torch_map._standard("SumPool2d", node)
    m[nir.SumPool2d] = pool
    m[nir.IF] = m[nir.LIF] = lambda node: Neuron(node, rule)
    return m


def run(path, x, T: int, m: dict) -> np.ndarray:
    """Per-step outputs [T, N, ...]."""
    import nir
    import nirtorch
    module = nirtorch.nir_to_torch(nir.read(str(path)), m)
    state, out = None, []
    with torch.no_grad():
        for _ in range(T):
            y, state = module(x, state)
            out.append(y)
    return torch.stack(out).numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--ann-samples", type=int, default=2000)
    ap.add_argument("-T", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ts = [t for t in (4, 8, 16, 32) if t <= args.T]
    model = load_model("demo-cnn")
    result = {"machine": machine_info(), "samples": args.samples, "ann_samples": args.ann_samples, "T": args.T}

    ann_test = data.fashion_mnist("test").take(args.ann_samples)

    class Scaled(torch.nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 2) * self.factor
    pools = {"max (trained)": model[4], "sum (4 x average)": Scaled(4.0), "average": Scaled(1.0),
             "1.5 x average": Scaled(1.5)}
    result["ann"] = {}
    for name, pool in pools.items():
        model[4] = pool
        result["ann"][name] = ann_accuracy(model, ann_test, progress=False)
    model[4] = pools["max (trained)"]

    test = data.fashion_mnist("test").take(args.samples)
    labels = test.labels.numpy()
    graph = ecmt.convert(model, data.fashion_mnist("train").sample(512), progress=False).graph
    executor = SpikingModel(graph)(test.images, args.T).numpy()
    acc = lambda est: {t: float((est[t - 1].argmax(-1) == labels).mean()) for t in ts}  # noqa: E731
    result["executor"] = acc(executor)
    result["models"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rule, consumer in (("reset to zero", "norse"), ("subtract", "sinabs")):
            path = Path(tmp) / f"{consumer}.nir"
            enir.export(graph, path, unit_thresholds=True)
            ours = run(path, test.images, args.T, node_map(rule, False))
            theirs = verify.run_consumer(consumer, path, test.images, args.T, batch_size=100)
            same = np.isclose(ours, theirs, rtol=1e-5, atol=1e-4).reshape(args.T, len(labels), -1).all(-1)
            row = {"library": consumer, "model equals library": bool(same.all()),
                   "equal outputs": float(same.mean()),
                   "as written": acc(np.cumsum(theirs, 0)),
                   "model, as written": acc(np.cumsum(ours, 0)),
                   "exact max pool": acc(np.cumsum(run(path, test.images, args.T, node_map(rule, True)), 0))}
            if rule == "reset to zero":
                row["exact max pool, subtracting reset"] = acc(np.cumsum(
                    run(path, test.images, args.T, node_map("subtract, one spike", True)), 0))
            result["models"][rule] = row
            print(rule, row, flush=True)
    write_result(OUT, "consumer_gap", result, markdown(result, ts))


def markdown(result: dict, ts) -> str:
    pct = lambda a: f"{100 * a:.1f}%"  # noqa: E731
    lines = ["# The demo CNN in NIR consumers: where the gap comes from", "",
             "Produced by `python benchmarks/consumer_gap.py`.  " + machine_markdown(result["machine"]), "",
             f"## The ANN with another pool ({result['ann_samples']} Fashion-MNIST test images)", "",
             "| pool after the first residual block | accuracy |", "|---|---|"]
    lines += [f"| {name} | {pct(a)} |" for name, a in result["ann"].items()]
    lines += ["", f"## The `--unit-thresholds` file with the libraries' neurons ({result['samples']} test images)", "",
              "*as written*: the library itself; the other rows run the model of its neuron, whose per-step "
              "outputs equal the library's own on this file and these images for the share of (step, image) "
              "pairs in column *model = library*; each row changes one thing.", "",
              "| neuron | library | model = library | run | " + " | ".join(f"t={t}" for t in ts) + " |",
              "|---|---|---|---|" + "---|" * len(ts),
              "| MT (ecmt executor) | | | | " + " | ".join(pct(result["executor"][t]) for t in ts) + " |"]
    for rule, row in result["models"].items():
        for run_name in ("as written", "model, as written", "exact max pool", "exact max pool, subtracting reset"):
            if run_name in row:
                lines.append(f"| {rule} | {row['library']} | {pct(row['equal outputs'])} | {run_name} | "
                             + " | ".join(pct(row[run_name][t]) for t in ts) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
