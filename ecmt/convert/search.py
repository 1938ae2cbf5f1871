"""Calibration search: the thresholds and level counts that make the spiking
estimate closest to the ANN at a target T.

The paper's calibration (th = 0.99-quantile, 8 levels, one value per
insertion point) leaves most activations silent at t = 1, so a converted ViT
needs 4 to 8 steps to come within a point of its ANN.  A lower base threshold
with enough levels to keep the range represents more of each value in the
first steps, but too low a threshold spends spikes on noise; the right choice
differs per model and per insertion point.  This search makes the choice from
calibration data only (a subset of ``samples`` calibration images), judging
every candidate by the model's output: the mean squared error of the output
running estimates at steps 1..T against the ANN output on that subset.

1. global: scale every neuron's quantile thresholds by one multiplier m
   (1 down to 1/16 in half-octaves), with log2(1/m) more levels so that the
   largest representable value stays the same; keep the best m;
2. per role (the neurons after softmax, after GELU, after LayerNorm, on
   linear-layer inputs, on product operands, ReLUs): one pass of coordinate
   descent over a further multiplier x2, x1.41, x0.71, x0.5 for all neurons
   of that role (levels adjusted the same way), kept where the output error
   drops;
3. record each neuron's multiplier and levels in its metadata.

Judging each neuron by its own error against the ANN activation was tried
first (commit 7d81728) and was less accurate at t = 1 and 2 than this
search: errors at different points do not add independently.

Cost: one T-step run on the subset per candidate (9 + 4 per role).
"""
from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from .. import ir
from ..runtime import GraphExecutor

GLOBAL_MULTIPLIERS = tuple(2.0 ** (-k / 2) for k in range(9))        # 1 down to 1/16
LOCAL_MULTIPLIERS = (2.0, 2 ** 0.5, 2 ** -0.5, 0.5)
MAX_LEVELS = 24


def _set(node: ir.MTNeuron, base: tuple, mult: float, levels: int) -> None:
    th_pos, th_neg, _ = base
    node.th_pos = (th_pos * mult).contiguous()
    node.th_neg = None if th_neg is None else (th_neg * mult).contiguous()
    node.levels = levels


def _scaled(choice: tuple[float, int], m: float) -> tuple[float, int]:
    """Thresholds x m, with log2(1/m) more levels so the largest value stays representable."""
    mult, levels = choice
    return mult * m, max(1, min(MAX_LEVELS, levels + math.ceil(math.log2(1 / m) - 1e-9)))


def search(graph: ir.SpikingGraph, batches: list[torch.Tensor], target_T: int, *, samples: int = 256,
           device=None, progress: bool = True) -> dict:
    """Choose thresholds and levels of every MT neuron of a calibrated graph (in place)."""
    if target_T < 1:
        raise ValueError(f"target T must be >= 1, got {target_T}")
    t0 = time.time()
    x = torch.cat(batches)[:samples]
    neurons = graph.of_kind(ir.MTNeuron)
    quantile = {n.name: (n.th_pos.clone(), None if n.th_neg is None else n.th_neg.clone(), n.levels)
                for n in neurons}
    ann = GraphExecutor(graph, device).run_analog(x)
    roles: dict[str, list[ir.MTNeuron]] = {}
    for n in neurons:
        roles.setdefault(n.meta.get("role", ""), []).append(n)
    bar = tqdm(total=len(GLOBAL_MULTIPLIERS) + len(roles) * len(LOCAL_MULTIPLIERS), unit="run",
               desc=f"calibration search (T={target_T})", disable=not progress, leave=False)

    # (threshold multiplier, levels) per neuron, relative to the quantile calibration
    current = {n.name: (1.0, quantile[n.name][2]) for n in neurons}

    def apply(choices):
        for n in neurons:
            _set(n, quantile[n.name], *choices[n.name])

    def improve(members, multipliers, best_err: float) -> float:
        """Scale the members' thresholds by each multiplier in turn; keep the best
        one that brings the output closer to the ANN than best_err."""
        best = None
        for m in multipliers:
            trial = {**current, **{n.name: _scaled(current[n.name], m) for n in members}}
            apply(trial)
            est = GraphExecutor(graph, device).run(x, target_T)
            err = float(((est - ann.unsqueeze(0)) ** 2).mean())
            bar.update(1)
            if err < best_err:
                best_err, best = err, trial
        if best is not None:
            current.update(best)
        apply(current)
        return best_err

    # 1. one multiplier for all neurons;  2. one more per role (coordinate descent)
    global_err = improve(neurons, GLOBAL_MULTIPLIERS, math.inf)
    global_mult = current[neurons[0].name][0] if neurons else 1.0
    best_err = global_err
    for members in roles.values():
        best_err = improve(members, LOCAL_MULTIPLIERS, best_err)
    bar.close()
    for n in neurons:
        n.meta["search"] = {"target_T": target_T, "multiplier": current[n.name][0], "levels": n.levels}
    graph.validate()
    return {"method": "search", "target_T": target_T, "search_samples": len(x),
            "global_multiplier": global_mult, "global_output_mse": global_err, "output_mse": best_err,
            "seconds": round(time.time() - t0, 1), "choices": len(neurons)}
