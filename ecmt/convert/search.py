"""Calibration search: the thresholds, level counts and spikes per step that
make the spiking estimate closest to the ANN at a target T, optionally within
an energy budget.

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
   drops (with a budget, then over the levels, then over k, below);
3. record each neuron's multiplier, levels and k in its metadata.

Energy budget (``energy_budget`` X, ``energy``): every candidate is also
priced by the energy model (an ``EnergyModel``: its energy up to step T over
one ANN forward, on the first ``energy_samples`` images of the subset; hw_sim's
``EnergyRatio(profile)`` prices a real run in full mode on a profile), and
candidates are ranked by (budget excess, output error): any candidate within
the budget beats any candidate over it, and among those within it the lower
error wins.  The global step also tries multipliers 4 down to 1.41 (fewer
spikes), and after its multiplier each role tries 2 fewer, 1 fewer and 1 more
levels at the same thresholds (a CMOS neuron update compares against every
level), and then k = spikes_per_step in 1, 2, 4 (k > 1 sends more of a
value in each step, at a cost priced per profile; only where the energy model
can price k > 1: ``EnergyModel.multilevel_refused``).  If no
candidate is within the budget, the graph gets its quantile calibration back
and EnergyBudgetError gives the lowest ratio reached.

Judging each neuron by its own error against the ANN activation was tried
first (commit 7d81728) and was less accurate at t = 1 and 2 than this
search: errors at different points do not add independently.

Cost: one T-step run on the subset per candidate (9 + 4 per role).  With a
budget: 13 + 9 per role candidates (7 per role where k > 1 cannot be priced),
each one T-step run on the subset plus one energy model run (hw_sim: counting) on
``energy_samples`` images; on the demo ViT at T = 2, 2 to 5x the search
without a budget (3.6x on a loaded 2-core CPU; docs/benchmarks/energy_search.md).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Protocol

import torch
from tqdm.auto import tqdm

from .. import ir
from ..errors import EcmtError
from ..runtime import GraphExecutor

GLOBAL_MULTIPLIERS = tuple(2.0 ** (-k / 2) for k in range(9))        # 1 down to 1/16
# With a budget: higher thresholds too (fewer spikes, less energy), 4 down to 1.41.
BUDGET_MULTIPLIERS = tuple(2.0 ** (k / 2) for k in range(4, 0, -1))
LOCAL_MULTIPLIERS = (2.0, 2 ** 0.5, 2 ** -0.5, 0.5)
LEVEL_STEPS = (-2, -1, 1)
K_CHOICES = (1, 2, 4)
MAX_LEVELS = 24
ENERGY_SAMPLES = 32

Choice = tuple  # (threshold multiplier, levels, spikes_per_step), relative to the quantile calibration


class EnergyBudgetError(EcmtError, ValueError):
    """No candidate of the calibration search is within the energy budget (gives the lowest ratio reached)."""


def _set(node: ir.MTNeuron, base: tuple, mult: float, levels: int, k: int) -> None:
    th_pos, th_neg, _, _ = base
    node.th_pos = (th_pos * mult).contiguous()
    node.th_neg = None if th_neg is None else (th_neg * mult).contiguous()
    node.levels = levels
    node.spikes_per_step = min(k, levels)


def _scaled(choice: Choice, m: float) -> Choice:
    """Thresholds x m, with log2(1/m) more levels so the largest value stays representable."""
    mult, levels, k = choice
    levels = max(1, min(MAX_LEVELS, levels + math.ceil(math.log2(1 / m) - 1e-9)))
    return mult * m, levels, min(k, levels)


class EnergyModel(Protocol):
    """What the search needs of an energy model (hw_sim.EnergyRatio is one): the search
    takes it as an argument, so conversion does not depend on a hardware simulator."""
    name: str       # named in messages and in the calibration record

    def __call__(self, graph: ir.SpikingGraph, x: torch.Tensor, T: int) -> float:
        """Energy of `graph` up to step T on the inputs x, over one ANN forward."""

    def multilevel_refused(self) -> str | None:
        """None where it prices neurons that send k > 1 levels per step; else why not."""


def check_budget(target_T: int | None, energy_budget: float, energy: EnergyModel | None) -> None:
    """The energy-budget options, checked before any work."""
    if target_T is None:
        raise EcmtError("an energy budget needs a target T: the budget bounds the energy up to step T",
                        hint="add `target_T` T, e.g. `target_T` 2 with `energy_budget` 1.5")
    if isinstance(energy_budget, bool) or not isinstance(energy_budget, (int, float)) \
            or not math.isfinite(energy_budget) or energy_budget <= 0:
        raise EcmtError(f"energy budget must be a number > 0 (SNN energy over one ANN forward), "
                        f"got {energy_budget!r}", hint="e.g. `energy_budget` 1.5")
    if energy is None or not callable(energy) or not hasattr(energy, "multilevel_refused"):
        raise EcmtError(f"an energy budget needs an energy model (`energy`), got {energy!r}",
                        hint="e.g. energy=hw_sim.EnergyRatio('cmos45-fp32')")


def search(graph: ir.SpikingGraph, batches: list[torch.Tensor], target_T: int, *, samples: int = 256,
           energy_budget: float | None = None, energy: EnergyModel | None = None,
           energy_samples: int = ENERGY_SAMPLES, device=None, progress: bool = True) -> dict:
    """Choose thresholds, levels (and, with an energy budget, k) of every MT neuron of a
    calibrated graph (in place).  energy_budget: the most full-mode energy up to step
    target_T by the `energy` model, relative to the ANN, measured on `energy_samples` calibration images."""
    if target_T < 1:
        raise ValueError(f"target T must be >= 1, got {target_T}")
    budgeted = energy_budget is not None
    if budgeted:
        check_budget(target_T, energy_budget, energy)
    t0 = time.time()
    x = torch.cat(batches)[:samples]
    x_energy = x[:energy_samples]
    neurons = graph.of_kind(ir.MTNeuron)
    quantile = {n.name: (n.th_pos.clone(), None if n.th_neg is None else n.th_neg.clone(), n.levels,
                         n.spikes_per_step) for n in neurons}
    ann = GraphExecutor(graph, device).run_analog(x)
    roles: dict[str, list[ir.MTNeuron]] = {}
    for n in neurons:
        roles.setdefault(n.meta.get("role", ""), []).append(n)
    no_k = energy.multilevel_refused() if budgeted else None
    if budgeted and no_k:
        print(f"calibration search: k (spikes_per_step) stays as converted: {no_k}", file=sys.stderr)
    globals_ = (BUDGET_MULTIPLIERS + GLOBAL_MULTIPLIERS) if budgeted else GLOBAL_MULTIPLIERS
    per_role = len(LOCAL_MULTIPLIERS) + (len(LEVEL_STEPS) + (0 if no_k else len(K_CHOICES) - 1) if budgeted else 0)
    bar = tqdm(total=len(globals_) + len(roles) * per_role, unit="run",
               desc=f"calibration search (T={target_T}" + (f", budget {energy_budget:g}x)" if budgeted else ")"),
               disable=not progress, leave=False)

    current = {n.name: (1.0, quantile[n.name][2], quantile[n.name][3]) for n in neurons}

    def apply(choices):
        for n in neurons:
            _set(n, quantile[n.name], *choices[n.name])

    def measure(trial) -> tuple:
        """(rank key, output error, energy ratio or None) of a candidate."""
        apply(trial)
        est = GraphExecutor(graph, device).run(x, target_T)
        err = float(((est - ann.unsqueeze(0)) ** 2).mean())
        err = err if math.isfinite(err) else math.inf     # a NaN would compare as neither better nor worse
        # hw_sim counts on the CPU (32 images are cheap there; its k > 1 counting fails on CUDA today)
        ratio = energy(graph, x_energy.cpu(), target_T) if budgeted else None
        bar.update(1)
        return (max(0.0, ratio - energy_budget) if budgeted else 0.0, err), err, ratio

    def improve(trials: list[dict], best: tuple) -> tuple:
        """Measure each trial; keep the best that ranks above `best` (key, err, ratio)."""
        chosen = None
        for trial in trials:
            got = measure(trial)
            if got[0] < best[0]:
                best, chosen = got, trial
        if chosen is not None:
            current.update(chosen)
        apply(current)
        return best

    def role_trials(members, dimension: str) -> list[dict]:
        """The candidates that change one dimension of the members' current choice."""
        if dimension == "multiplier":
            trials = [{n.name: _scaled(current[n.name], m) for n in members} for m in LOCAL_MULTIPLIERS]
            return [{**current, **t} for t in trials]
        if dimension == "levels":     # same thresholds: a shorter or longer ladder
            trials = [{n.name: (current[n.name][0], lv, min(current[n.name][2], lv))
                       for n in members for lv in [current[n.name][1] + s]} for s in LEVEL_STEPS]
            planned = len(LEVEL_STEPS)
        else:
            trials = [{n.name: (current[n.name][0], current[n.name][1], min(k, current[n.name][1]))
                       for n in members} for k in K_CHOICES]
            planned = len(K_CHOICES) - 1
        # drop what is the current choice already, or outside 1..MAX_LEVELS, or a repeat
        fresh = [t for t in trials if all(1 <= c[1] <= MAX_LEVELS for c in t.values())
                 and any(c != current[name] for name, c in t.items())]
        fresh = [t for i, t in enumerate(fresh) if t not in fresh[:i]]
        bar.total -= planned - len(fresh)
        bar.refresh()
        return [{**current, **t} for t in fresh]

    # 1. one multiplier for all neurons;  2. per role (coordinate descent): one more
    # multiplier, then (with a budget) the levels, then k, each from the choice before
    start = (math.inf, math.inf), math.inf, None
    best = improve([{**current, **{n.name: _scaled(current[n.name], m) for n in neurons}} for m in globals_],
                   start)
    global_mult, global_err = (current[neurons[0].name][0] if neurons else 1.0), best[1]
    dimensions = ("multiplier",) + (("levels",) + (() if no_k else ("k",)) if budgeted else ())
    for members in roles.values():
        for dimension in dimensions:
            best = improve(role_trials(members, dimension), best)
    bar.close()
    _, best_err, ratio = best
    if budgeted and ratio > energy_budget:
        apply({n.name: (1.0, quantile[n.name][2], quantile[n.name][3]) for n in neurons})
        raise EnergyBudgetError(
            f"calibration search: no candidate is within the energy budget {energy_budget:g}x on {energy.name} "
            f"at target T = {target_T}: the lowest full-mode energy ratio reached is {ratio:.3g}x "
            f"(on {len(x_energy)} calibration images)",
            hint=f"raise `energy_budget` to at least {ratio:.3g}, or lower `target_T` "
                 "(energy grows with every step)")
    for n in neurons:
        n.meta["search"] = {"target_T": target_T, "multiplier": current[n.name][0], "levels": n.levels,
                            "spikes_per_step": n.spikes_per_step}
    graph.validate()
    summary = {"method": "search", "target_T": target_T, "search_samples": len(x),
               "global_multiplier": global_mult, "global_output_mse": global_err, "output_mse": best_err,
               "seconds": round(time.time() - t0, 1), "choices": len(neurons)}
    if budgeted:
        summary.update({"energy_budget": float(energy_budget), "energy_profile": energy.name,
                        "energy_ratio": ratio, "energy_samples": len(x_energy),
                        "spikes_per_step_searched": no_k is None})
        if no_k:
            summary["spikes_per_step_note"] = no_k
    return summary
