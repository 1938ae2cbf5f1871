"""The number format of the fixed-point Lava models (processes.py, tag ``fixed_pt``),
without importing Lava: hw_sim's deployed-accuracy path (hw_sim/deployed.py) quantizes
with these same functions.  Importing Lava sets multiprocessing's start method, which
a process that has already chosen one (after torch.compile) cannot take."""
from __future__ import annotations

import numpy as np

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
