"""The fixed-point number format of a deployment, written once: the Lava exporter's
``fixed_pt`` models (exporters/lava/processes.py) and the executor's deployed formats
(``GraphExecutor(..., overrides=deployed_overrides(fmt))``, hw_sim's deployed
accuracy) call these same functions.

* Weights: 8 bits, round to nearest, one scale per output channel (``quantize_int8``).
* MT neurons: an integer membrane in units of u = min(th_pos, th_neg) / 2^F per neuron
  (F = ``fraction_bits(levels)``); thresholds and levels are integers in that unit,
  each step's input is rounded to it, the comparisons are exact in integers
  (``integer_spike``), and the spike leaves as (integer level) x u.

No Lava import here: importing Lava sets multiprocessing's start method, which a
process that has already chosen one (after torch.compile) cannot take.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .. import ir
from .executor import KINDS

MEMBRANE_BITS = 24       # Loihi 2's neuron state width
HEADROOM_BITS = 4        # the membrane may reach 16x the top level


def fraction_bits(levels: int) -> int:
    """Fraction bits of the fixed-point membrane (its unit is 2^-F of the
    smaller threshold): as many as leave the top level, 2^(F + levels - 1)
    units, 2^HEADROOM_BITS of headroom in a signed 24-bit membrane; at most
    16.  (2^-8, the first choice, was the largest error of the fixed-point
    model: docs/lava.md.)"""
    return max(8, min(16, MEMBRANE_BITS - 1 - HEADROOM_BITS - (int(levels) - 1)))


def quantize_int8(w: np.ndarray, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """8-bit weights, round to nearest, with one scale per output channel (the
    first axis: Dense [out, in], Conv [out, x, y, in]), or one per layer."""
    w = np.asarray(w, np.float64)
    axes = tuple(range(1, w.ndim)) if per_channel else None
    scale = np.abs(w).max(axis=axes, keepdims=per_channel) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(w / scale), -127, 127), scale


def integer_spike(v, th_pos, th_neg, levels: int, spikes_per_step: int, signed: bool):
    """The integer spike of an integer membrane v (numpy or torch int64, the step's input
    already added): from the top level down, level k fires while |v| - s >= th 2^k - th / 2
    (doubled to stay in integers), up to `spikes_per_step` levels; v - s is the new membrane."""
    where = torch.where if isinstance(v, torch.Tensor) else np.where
    pos = v >= 0
    th = where(pos, th_pos, th_neg)
    mag = abs(v)
    level = v * 0
    fired = v * 0
    for k in range(levels - 1, -1, -1):
        value = th << k
        crossed = (2 * (mag - level) >= 2 * value - th) & (fired < spikes_per_step)
        level = where(crossed, level + value, level)
        fired = fired + crossed
    return where(pos, level, -level if signed else level * 0)


class FixedPointMTState:
    """An MT neuron's executor state with the integer membrane: inputs [B, *shape] float32,
    spikes float32 (the executor's override for MT neurons in the Lava fixed-point format)."""

    def __init__(self, node: ir.MTNeuron, shape: tuple[int, ...], device):
        th_pos = torch.broadcast_to(node.th_pos.float(), shape).to(device)
        th_neg = th_pos if node.th_neg is None else torch.broadcast_to(node.th_neg.float(), shape).to(device)
        # float32 as Lava computes it: the unit is exact (a power of two below the threshold)
        self.unit = torch.minimum(th_pos, th_neg) / np.float32(2 ** fraction_bits(node.levels))
        self.th_pos = torch.round(th_pos / self.unit).long()
        self.th_neg = torch.round(th_neg / self.unit).long()
        self.levels, self.k, self.signed = int(node.levels), int(node.spikes_per_step), node.th_neg is not None
        self.v = None

    def reset(self):
        self.v = None

    def step(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.round(x.float() / self.unit).long()
        v = q if self.v is None else self.v + q
        s = integer_spike(v, self.th_pos, self.th_neg, self.levels, self.k, self.signed)
        self.v = v - s
        return (s.double() * self.unit.double()).float()

    def analog(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.signed else torch.relu(x)


def _int8_weights(build):
    """A synapse builder that runs the node with its weights as the fixed-point synapses hold
    them: round(w / s_c) * s_c in float32, s_c = max |w| of output channel c / 127."""
    def quantized(node, shape, device, form):
        q, scale = quantize_int8(node.weight.detach().cpu().numpy())
        node = copy.copy(node)
        node.weight = torch.from_numpy((q * scale).astype(np.float32))
        return build(node, shape, device, form)
    return quantized


def _fixed_point_mt(node, shape, device, form):
    state = FixedPointMTState(node, shape, device)
    return (lambda xs, t: state.step(xs[0])), state


def deployed_overrides(fmt: str) -> dict:
    """The executor's per-kind overrides (``GraphExecutor(..., overrides=...)``) that run a
    graph in the deployed number format `fmt` ("float", "int8-weights" or
    "lava-fixed-point").  PPN neurons stay float (Lava runs them on the host)."""
    if fmt == "float":
        return {}
    weights = {cls: _int8_weights(KINDS.entry(cls)) for cls in (ir.Linear, ir.Conv2d)}
    if fmt == "int8-weights":
        return weights
    if fmt == "lava-fixed-point":
        return {**weights, ir.MTNeuron: _fixed_point_mt}
    raise ValueError(f"unknown deployed number format {fmt!r}")
