"""Calibration search: per MT neuron, the base threshold and level count that
make the spiking estimate closest to the ANN activation at a target T.

The paper's calibration (th = 0.99-quantile, 8 levels, one value per
insertion point) leaves most activations silent at t = 1, so a converted ViT
needs 4 to 8 steps to come within a point of its ANN.  A lower base threshold
with enough levels to keep the range represents more of each value in the
first steps, but too low a threshold spends spikes on noise; the right choice
differs per insertion point.  This search makes the choice from calibration
data only:

1. calibrate as usual (quantiles), and record, on a calibration subset, every
   neuron's ANN activation a (analog mode);
2. for each neuron in topological order: run the spiking graph for T steps
   with the thresholds chosen so far and record this neuron's actual input
   increments (a sample of its elements); then, offline, simulate the neuron
   on those inputs for every candidate (base threshold = quantile threshold x
   multiplier, levels) and keep the one whose running estimates over steps
   1..T have the smallest mean squared error against a (ties: the larger
   threshold, which spikes less);
3. record the choice in the neuron's metadata.

Cost: one T-step run of the graph per neuron on the search subset, plus cheap
candidate simulations; bounded by the subset size (``samples``) and element
sample (``max_elements``).
"""
from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from .. import ir
from ..runtime import GraphExecutor
from ..runtime.kernels import mt_spikes

MULTIPLIERS = tuple(2.0 ** (-k / 2) for k in range(13))     # 1 down to 1/64 in half-octaves
EXTRA_LEVELS = (0, 2)
MAX_LEVELS = 24


def _error(x_steps: torch.Tensor, target: torch.Tensor, th_pos, th_neg, levels: int) -> float:
    """Mean over t = 1..T of the squared error of the neuron's running estimate
    (spikes so far / t) against the ANN activation, for inputs x_steps [T, E]."""
    v = torch.zeros_like(x_steps[0])
    total = torch.zeros_like(v)
    err = 0.0
    for t, x in enumerate(x_steps, 1):
        v = v + x
        s = mt_spikes(v, th_pos, th_neg, levels)
        v = v - s
        total = total + s
        err += float(((total / t - target) ** 2).mean())
    return err / len(x_steps)


def search(graph: ir.SpikingGraph, batches: list[torch.Tensor], target_T: int, *, samples: int = 256,
           max_elements: int = 100_000, multipliers=MULTIPLIERS, extra_levels=EXTRA_LEVELS, device=None,
           progress: bool = True) -> dict:
    """Choose thresholds and levels of every MT neuron of a calibrated graph (in place)."""
    if target_T < 1:
        raise ValueError(f"target T must be >= 1, got {target_T}")
    t0 = time.time()
    x = torch.cat(batches)[:samples]
    neurons = graph.of_kind(ir.MTNeuron)
    gen = torch.Generator().manual_seed(0)
    picks: dict[str, torch.Tensor] = {}
    targets: dict[str, torch.Tensor] = {}
    executor = GraphExecutor(graph, device)

    def record_analog(node, inputs, out, t):
        if isinstance(node, ir.MTNeuron):
            flat = out.reshape(-1)
            if node.name not in picks:
                n = flat.numel()
                picks[node.name] = torch.randperm(n, generator=gen)[:max_elements].to(flat.device)
            targets[node.name] = flat[picks[node.name]].float().cpu()

    executor.run_analog(x, record_analog)
    choices = {}
    for node in tqdm(neurons, desc=f"calibration search (T={target_T})", unit="neuron",
                     disable=not progress, leave=False):
        steps: list[torch.Tensor] = []

        def record_inputs(n, inputs, out, t, name=node.name):
            if n.name == name:
                steps.append(inputs[0].reshape(-1)[picks[name]].float().cpu())

        GraphExecutor(graph, device).run(x, target_T, observer=record_inputs)
        inputs, target = torch.stack(steps), targets[node.name]
        if node.th_pos.numel() > 1:
            continue                    # per-channel thresholds keep their quantile calibration
        base_pos = float(node.th_pos)
        base_neg = None if node.th_neg is None else float(node.th_neg)
        top = float(target.abs().max())
        best = None
        for mult in multipliers:
            # enough levels that the largest activation is not clipped at this threshold
            need = max(1, math.ceil(math.log2(top / (base_pos * mult) + 0.5))) + 1
            for extra in extra_levels:
                levels = min(MAX_LEVELS, max(node.levels, need) + extra)
                tp = torch.tensor(base_pos * mult)
                tn = None if base_neg is None else torch.tensor(base_neg * mult)
                err = _error(inputs, target, tp, tn, levels)
                key = (err, -mult)      # ties: the larger threshold, which spikes less
                if best is None or key < best[0]:
                    best = (key, mult, levels, err)
        _, mult, levels, err = best
        node.th_pos = (node.th_pos * mult).contiguous()
        if node.th_neg is not None:
            node.th_neg = (node.th_neg * mult).contiguous()
        node.levels = levels
        node.meta["search"] = {"target_T": target_T, "multiplier": mult, "levels": levels, "mse": err}
        choices[node.name] = {"multiplier": mult, "levels": levels, "mse": err}
    graph.validate()
    return {"method": "search", "target_T": target_T, "search_samples": len(x), "max_elements": max_elements,
            "multipliers": list(multipliers), "seconds": round(time.time() - t0, 1), "choices": len(choices)}
