"""One report entry from a model's pricing: the nominal figures, their ranges and
sensitivity over the profile's constants, and 95% intervals over the samples.

Every model prices the same way (engine/base.py's ``HardwareModel.price``), so this
module does not know what kind of hardware it prices:

* ``range``: every constant at the end of its range that lowers (min) or raises (max) the
  result, all at once, the direction taken from the one-at-a-time re-pricings (where a
  constant does not move the result, the end that moves the latency the same way: static
  energy grows with latency);
* ``sensitivity``: one constant at a time at each end of its range, the others nominal,
  largest energy swing first; constants the model cannot re-price without mapping the
  network again are listed in ``sensitivity_not_covered``;
* ``interval95``: the mean over samples +- 1.96 standard errors, of the energy up to every
  t, the spikes, and the latency (engine/base.py's ``Interval`` says how per model).
"""
from __future__ import annotations

import itertools
import math

import torch

from ecmt import ir

from .counting import EventCounts
from .engine.base import HardwareModel, Priced
from .profile import HardwareProfile


def entry(model: HardwareModel, counts: EventCounts, mode: str) -> dict:
    """Nominal pricing plus range, sensitivity and interval95 (the report's per-entry fields)."""
    profile = model.profile
    nominal = model.price(counts, profile, mode)

    def figures(variant: HardwareProfile) -> tuple[float, float]:
        p = model.price(counts, variant, mode)
        return p.total_j, p.latency_s

    base = nominal.total_j, nominal.latency_s
    ends, sensitivity, not_covered = {}, [], []
    for key in profile.keys():
        c = _constant(profile, key)
        if c.low == c.high:
            continue
        if not model.reprices(key):
            not_covered.append(key)
            continue
        at = {end: figures(profile.with_value(key, v)) for end, v in (("low", c.low), ("high", c.high))}
        ends[key] = at
        sensitivity.append({"constant": key, "energy_j": [at["low"][0], at["high"][0]],
                            "latency_s": [at["low"][1], at["high"][1]]})
    sensitivity.sort(key=lambda s: (-abs(s["energy_j"][1] - s["energy_j"][0]), s["constant"]))

    def corner(which: int, lowest: bool) -> float:
        variant = profile
        for key, at in ends.items():
            lo, hi = at["low"], at["high"]
            pick_low = (lo[which], lo[1]) <= (hi[which], hi[1]) if lowest else (lo[which], lo[1]) >= (hi[which], hi[1])
            c = _constant(profile, key)
            variant = variant.with_value(key, c.low if pick_low else c.high)
        return figures(variant)[which] if ends else base[which]

    return {
        "priced": nominal,
        "range": {"energy_j": [corner(0, True), base[0], corner(0, False)],
                  "latency_s": [corner(1, True), base[1], corner(1, False)]},
        "sensitivity": sensitivity,
        "sensitivity_not_covered": not_covered,
        "interval95": interval(model, counts, mode, nominal),
    }


def _constant(profile: HardwareProfile, key: str):
    section, name = key.split(".", 1)
    return profile.constants[section][name]


def _half(x: torch.Tensor) -> float:
    """1.96 standard errors of the mean of x."""
    return 1.96 * float(x.std(unbiased=True)) / math.sqrt(len(x))


def interval(model: HardwareModel, counts: EventCounts, mode: str, nominal: Priced) -> dict | None:
    """95% intervals of the mean over samples (normal approximation) of the energy up to every
    step t, the spikes and the latency per inference; None where no per-sample counts were kept
    (under torchrun) or with fewer than 2 samples."""
    per_sample, samples = counts.per_sample_steps, counts.samples
    if not per_sample or samples < 2:
        return None
    spread = model.interval(counts, mode, nominal)
    cumulative = list(itertools.accumulate(nominal.energy_per_step))
    if spread.energy is not None:
        upto = spread.energy.cumsum(1)
        per_t = [[c - _half(upto[:, t]), c + _half(upto[:, t])] for t, c in enumerate(cumulative)]
    else:
        per_t = [[c, c] for c in cumulative]
    spikes = torch.zeros(samples, dtype=torch.float64)
    for name, fields in per_sample.items():
        if "spikes" in fields:
            spikes += fields["spikes"].double().sum(1)
    total_spikes = sum(counts.total(n.name, "spikes") for n in model.graph.of_kind(ir.MTNeuron))
    s = _half(spikes)
    latency, basis = None, spread.latency_basis
    if spread.latency is not None and len(spread.latency) >= 2:
        if bool((spread.latency == spread.latency[0]).all()):
            basis = f"fixed: every sample takes the same time ({basis})"
        else:
            h = _half(spread.latency)
            latency = [nominal.latency_s - h, nominal.latency_s + h]
    return {"energy_j": per_t[-1], "energy_per_t_j": per_t,
            "spikes": [total_spikes - s, total_spikes + s],
            "latency_s": latency, "latency_basis": basis}

