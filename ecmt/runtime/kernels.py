"""Per-step state updates of the node-by-node reference executor, written as pure
tensor functions.

Each one is what a node does from step 2 on (step 1 initializes state).  With
torch.compile (ECMT_COMPILE=0 turns it off) every update becomes one fused
kernel instead of a chain of elementwise passes; the time step comes in as a
0-d tensor so that one compiled kernel serves every t.  The fast step (the
default, program.py) runs native.c's kernels on the CPU and these functions'
eager forms (`.eager`) on CUDA, where a CUDA graph removes the launches.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F


def compile_enabled() -> bool:
    return os.environ.get("ECMT_COMPILE", "1") != "0"


def fused(fn):
    """Compile `fn` on first use if compilation is enabled; else run it eagerly."""
    compiled = None

    @functools.wraps(fn)
    def run(*args, **kwargs):
        nonlocal compiled
        if not compile_enabled():
            return fn(*args, **kwargs)
        if compiled is None:
            # One kernel is compiled per argument layout (level count, per-tensor or per-channel
            # thresholds, rank): more than dynamo's default cap of 8 in a large graph, after which
            # it silently falls back to slow eager code.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            compiled = torch.compile(fn, dynamic=True)
        return compiled(*args, **kwargs)
    run.eager = fn
    return run


def _sign_and_scale(v: torch.Tensor, th_pos: torch.Tensor, th_neg: torch.Tensor | None):
    """v's sign, the threshold of that sign, |v| and half the threshold."""
    pos = v >= 0
    th = th_pos if th_neg is None else torch.where(pos, th_pos, th_neg)
    return pos, th, v.abs(), th * 0.5


def mt_levels(v: torch.Tensor, th_pos: torch.Tensor, th_neg: torch.Tensor | None, levels: int):
    """The largest crossed level: |v| >= th * 2^k - th / 2, sign by v (section 2).
    Returns (spikes, level number): the number is k + 1 for th_pos 2^k, -(k + 1)
    for -th_neg 2^k and 0 for no spike, as a float."""
    pos, th, mag, half = _sign_and_scale(v, th_pos, th_neg)
    level = torch.zeros_like(v)
    number = torch.zeros_like(v)
    for k in range(levels):                   # unrolled when compiled
        value = th * float(2 ** k)
        crossed = mag >= value - half
        level = torch.where(crossed, value, level)
        number = torch.where(crossed, float(k + 1), number)
    if th_neg is None:
        return torch.where(pos, level, 0.0), torch.where(pos, number, 0.0)
    return torch.where(pos, level, -level), torch.where(pos, number, -number)


def mt_multi_levels(v: torch.Tensor, th_pos: torch.Tensor, th_neg: torch.Tensor | None, levels: int, k: int):
    """Up to k levels in one step (section 2): the spike is the sum s of the
    levels fired.  One pass over the levels from the top, unrolled when
    compiled: level j fires while fewer than k have fired and the remaining
    membrane |v| - s has crossed th 2^j - th/2.  The remainder only shrinks as
    s grows, so no level above j can qualify again, and this pass fires the
    same levels as re-applying the rule k times.  The sign is v's: only that
    sign's first level can qualify, and later ones keep it."""
    pos, th, mag, half = _sign_and_scale(v, th_pos, th_neg)
    s = torch.zeros_like(v)
    fired = torch.zeros_like(v)
    for j in range(levels - 1, -1, -1):       # unrolled when compiled
        value = th * float(2 ** j)
        crossed = (mag - s >= value - half) & (fired < k)
        s = torch.where(crossed, s + value, s)
        fired = fired + crossed.to(v.dtype)
    if th_neg is None:
        return torch.where(pos, s, 0.0)
    return torch.where(pos, s, -s)


@fused
def mt_update(v, x, th_pos, th_neg, levels: int, k: int = 1):
    """Returns (spikes, new membrane); k = spikes_per_step."""
    v = v + x
    s = mt_levels(v, th_pos, th_neg, levels)[0] if k == 1 else mt_multi_levels(v, th_pos, th_neg, levels, k)
    return s, v - s


@fused
def mt_update_coded(v, x, th_pos, th_neg, levels: int):
    """mt_update that also returns each element's event code (uint8, flat):
    the level number + levels (so `levels` means no spike), plus 2 levels + 1
    when the input x was non-zero.  A histogram of the codes is the neuron's
    spike count by level and its count of active updates (hw_sim)."""
    v = v + x
    s, number = mt_levels(v, th_pos, th_neg, levels)
    code = number + levels + torch.where(x != 0, 2.0 * levels + 1.0, 0.0)
    return s, v - s, code.to(torch.uint8).reshape(-1)


@fused
def mt_multi_update_coded(v, x, th_pos, th_neg, levels: int, k: int):
    """mt_update for k > 1 that also returns each element's event code (int16, flat):
    sign * m + 2^levels - 1, where m = |s| / th is the integer whose binary digits
    are the levels fired, plus 2^(levels + 1) - 1 when the input x was non-zero.
    A k-level spike names a set of levels, which a byte cannot hold for levels > 6;
    coding (sign, m, active) keeps hw_sim's counting to one histogram pass (spikes,
    spikes per level and active updates all follow from it), in 2^(levels + 2) - 2
    bins: int16 holds them for levels <= 13.  s is mt_update's, computed by the
    same function; m is exact after rounding (s is a sum of th 2^j)."""
    v = v + x
    s = mt_multi_levels(v, th_pos, th_neg, levels, k)
    th = th_pos if th_neg is None else torch.where(v >= 0, th_pos, th_neg)
    span = float(2 ** levels - 1)
    code = torch.round(s / th) + span + torch.where(x != 0, 2.0 * span + 1.0, 0.0)
    return s, v - s, code.to(torch.int16).reshape(-1)


# Nonlinearity ECMs: S += x; y = t f(S / t) - previous running output.
# Each returns (y, S, running output).  One function per f, so that each has
# its own compiled-kernel cache.
@fused
def gelu_update(total, x, out_sum, t, approximate: str):
    total = total + x
    new = F.gelu(total / t, approximate=approximate) * t
    return new - out_sum, total, new


ELEMENTWISE = {"silu": F.silu, "sigmoid": torch.sigmoid, "hardswish": F.hardswish}


@fused
def elementwise_update(total, x, out_sum, t, function: str):
    total = total + x
    new = ELEMENTWISE[function](total / t) * t
    return new - out_sum, total, new


@fused
def relu_update(total, x, out_sum, t):
    total = total + x
    new = torch.relu(total / t) * t
    return new - out_sum, total, new


@fused
def softmax_update(total, x, out_sum, t, dim: int):
    total = total + x
    new = torch.softmax(total / t, dim=dim) * t
    return new - out_sum, total, new


@fused
def layer_norm_update(total, x, out_sum, t, weight, bias, eps: float):
    total = total + x
    new = F.layer_norm(total / t, (total.shape[-1],), weight, bias, eps) * t
    return new - out_sum, total, new


@fused
def max_pool_update(total, x, out_sum, t, kernel, stride, padding):
    total = total + x
    new = F.max_pool2d(total / t, kernel, stride, padding) * t
    return new - out_sum, total, new


# f itself, for step 1 (y_1 = f(x_1)), with the same extra arguments.
ECM_KERNELS = {
    "gelu": (lambda x, approximate: F.gelu(x, approximate=approximate), gelu_update),
    "relu": (torch.relu, relu_update),
    "elementwise": (lambda x, function: ELEMENTWISE[function](x), elementwise_update),
    "softmax": (lambda x, dim: torch.softmax(x, dim=dim), softmax_update),
    "layer_norm": (lambda x, w, b, eps: F.layer_norm(x, (x.shape[-1],), w, b, eps), layer_norm_update),
    "max_pool": (F.max_pool2d, max_pool_update),
}


@fused
def product_update(a, b, x, y, out_sum, scale_over_t):
    """Direct form: add the increments to the running operands, multiply once.
    Returns (z, A, B, running output)."""
    a, b = a + x, b + y
    new = torch.matmul(a, b) * scale_over_t
    return new - out_sum, a, b, new


@fused
def product_update_incremental(a, b, prod, x, y, out_sum, scale_over_t):
    """Spiking form: P += x B + A y + x y with the spike increments x, y.
    Returns (z, A, B, P, running output)."""
    prod = prod + torch.matmul(x, b) + torch.matmul(a, y) + torch.matmul(x, y)
    new = prod * scale_over_t
    return new - out_sum, a + x, b + y, prod, new
