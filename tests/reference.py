"""Slow, literal implementations of the spec, used as test oracles."""
from __future__ import annotations

import numpy as np


def mt_neuron_reference(xs, th_pos: float, th_neg: float | None, levels: int) -> list[float]:
    """One neuron, one element, per step and per level, as docs/method.md §2 words it."""
    f = np.float32
    v = f(0)
    out = []
    for x in xs:
        v = f(v + f(x))
        s = f(0)
        for k in range(levels - 1, -1, -1):
            pos_level = f(f(th_pos) * f(2.0 ** k))
            if v >= f(pos_level - f(th_pos) / f(2)):
                s = pos_level
                break
            if th_neg is not None:
                neg_level = f(f(th_neg) * f(2.0 ** k))
                if v <= -f(neg_level - f(th_neg) / f(2)):
                    s = -neg_level
                    break
        v = f(v - s)
        out.append(float(s))
    return out
