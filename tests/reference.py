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


def mt_multi_reference(xs, th_pos: float, th_neg: float | None, levels: int, k: int) -> list[float]:
    """One neuron with spikes_per_step k, one element, as docs/method.md §2 words
    it: the firing rule applied again to the remaining membrane v - s, each level
    at most once per step, at most k times, all of the first level's sign."""
    f = np.float32
    v = f(0)
    out = []
    for x in xs:
        v = f(v + f(x))
        s, sign, used = f(0), 0, set()
        while len(used) < k:
            rest = f(v - s)
            fired = None
            for j in range(levels - 1, -1, -1):
                if j in used:
                    continue
                pos_level = f(f(th_pos) * f(2.0 ** j))
                if sign >= 0 and rest >= f(pos_level - f(th_pos) / f(2)):
                    fired, sign = pos_level, 1
                    break
                if th_neg is not None and sign <= 0:
                    neg_level = f(f(th_neg) * f(2.0 ** j))
                    if rest <= -f(neg_level - f(th_neg) / f(2)):
                        fired, sign = -neg_level, -1
                        break
            if fired is None:
                break
            used.add(j)
            s = f(s + fired)
        v = f(v - s)
        out.append(float(s))
    return out
