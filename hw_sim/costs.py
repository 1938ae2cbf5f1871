"""Analog work per element, in primitive operations.

Neuromorphic cores only add; everything else (the ECM nonlinearities and their
bookkeeping, products' output bookkeeping, residual adds, layers fed by analog
values) runs on a host or embedded processor and is charged as the primitive
operations below.  A "special" is one transcendental (exp, erf, rsqrt), charged
as SPECIAL_MACS multiply-accumulates (a short polynomial).  These counts are
our assumptions, stated once here; docs/energy.md explains them.
"""
from __future__ import annotations

SPECIAL_MACS = 8

# f itself, per input element: (adds, mults, specials).  Row-wise functions
# spread their per-row work (a sum, a division, a square root) over the row.
FUNCTION_OPS = {
    "softmax_ecm": (3, 1, 1),     # max, subtract, exp, sum, divide
    "layernorm_ecm": (4, 3, 0),   # mean, centre, square, variance sum, normalize, affine (+1 rsqrt per row)
    "gelu_ecm": (2, 4, 1),        # 0.5 x (1 + erf(x / sqrt 2))
    "relu_ecm": (1, 0, 0),        # one compare
    "elementwise_ecm": (1, 2, 1),  # sigmoid 1 / (1 + exp(-x)) and SiLU's x * it (hardswish: less)
    "maxpool2d_ecm": (0, 0, 0),   # compares counted per window element
}

# Expectation-compensation bookkeeping per element and step: S += x, S / t,
# f(.) * t, minus the previous running output.
ECM_BOOKKEEPING = (2, 2)          # (adds, mults)

# Product ECM per output element and step: P * scale / t, minus the previous running output.
PRODUCT_BOOKKEEPING = (1, 1)
