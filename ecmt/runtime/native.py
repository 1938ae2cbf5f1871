"""The fast step's C kernels (native.c): built once per machine with the system C
compiler, loaded with ctypes.

The library is compiled on first use (about a second; `tools/bootstrap.sh` builds
it ahead) by cbuild.py, the package's one C builder (cached by source, compiler,
flags and CPU: it is built for the CPU it runs on).  The flags fall back step by
step: OpenMP and libmvec's vectorized exp / erf / tanh where the toolchain has
them, plain C where not.  Where no build works, `library()` is None and
`unavailable()` says why, in one line.
"""
from __future__ import annotations

import ctypes
import math
import os
from functools import cache
from pathlib import Path

import torch

from . import cbuild

SOURCE = Path(__file__).with_name("native.c")
# ECM functions by name, as native.c numbers them (F_RELU ...).
FUNCTIONS = {"relu": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3, "sigmoid": 4, "hardswish": 5,
             "softmax": 6, "layer_norm": 7}
# Tried in turn: the first set that compiles and loads is used.
_STRICT = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
FLAG_SETS = (
    ["-march=native", "-fopenmp", "-DECMT_SIMD_MATH", *_STRICT, "-lmvec", "-lm"],
    ["-march=native", "-fopenmp", *_STRICT, "-lm"],
    ["-fopenmp", *_STRICT, "-lm"],
    [*_STRICT, "-lm"],
)


class MTRule(ctypes.Structure):
    """native.c's mt_rule: an MT neuron's thresholds (pointers), levels and k."""
    _fields_ = [("th_pos", ctypes.c_void_p), ("th_neg", ctypes.c_void_p), ("th_len", ctypes.c_int64),
                ("levels", ctypes.c_int32), ("k", ctypes.c_int32)]


class Events(ctypes.Structure):
    """native.c's events: where an MT neuron's event codes or per-sample counts go (either may be NULL)."""
    _fields_ = [("code", ctypes.c_void_p), ("counts", ctypes.c_void_p)]


class Strided(ctypes.Structure):
    """native.c's strided: an MT neuron's input read where it lies (per sample: sizes and strides
    in elements, row-major order; samples `sample` elements apart)."""
    MAX_DIMS = 6
    _fields_ = [("dims", ctypes.c_int32), ("sample", ctypes.c_int64), ("size", ctypes.c_int64 * MAX_DIMS),
                ("stride", ctypes.c_int64 * MAX_DIMS)]


def strided(t: torch.Tensor) -> Strided | None:
    """t's layout per sample (dim 0), its dims merged where their strides allow; None where t
    is contiguous or has more axes than the kernels take (the caller copies it then)."""
    return _layout(tuple(t.shape), t.stride())


@cache
def _layout(shape: tuple, strides: tuple) -> Strided | None:
    per_sample = math.prod(shape[1:])
    dims = []
    for size, stride in zip(shape[1:], strides[1:]):
        if size == 1:
            continue
        if dims and dims[-1][1] == size * stride:        # the axis before runs over this one's span
            dims[-1] = (dims[-1][0] * size, stride)
        else:
            dims.append((size, stride))
    if dims in ([], [(per_sample, 1)]) and (shape[0] == 1 or strides[0] == per_sample):
        return None
    if len(dims) > Strided.MAX_DIMS or not dims:
        return None
    sizes, steps = zip(*dims)
    pad = (0,) * (Strided.MAX_DIMS - len(dims))
    return Strided(len(dims), strides[0], (ctypes.c_int64 * Strided.MAX_DIMS)(*sizes, *pad),
                   (ctypes.c_int64 * Strided.MAX_DIMS)(*steps, *pad))


class Operand(ctypes.Structure):
    """native.c's operand: a product operand's data, strides (sample, p, row, column), the
    thresholds its spikes' levels are read against (NULL: counted as non-zero only) and its
    counts along k where add_count gave them (NULL: counted from the data)."""
    _fields_ = [("data", ctypes.c_void_p), ("ss", ctypes.c_int64), ("sp", ctypes.c_int64), ("sr", ctypes.c_int64),
                ("sc", ctypes.c_int64), ("th_pos", ctypes.c_void_p), ("th_neg", ctypes.c_void_p),
                ("counted", ctypes.c_void_p)]


class ECMIO(ctypes.Structure):
    """native.c's ecm_io: where an ECM's step reads and writes."""
    _fields_ = [("x", ctypes.c_void_p), ("sum", ctypes.c_void_p), ("scale_t", ctypes.c_float),
                ("out_sum", ctypes.c_void_p), ("out", ctypes.c_void_p), ("mt", ctypes.POINTER(MTRule)),
                ("spike_sum", ctypes.c_void_p), ("ev", Events), ("sample_size", ctypes.c_int64),
                ("addend", ctypes.c_void_p), ("first", ctypes.c_int32)]


_reason: str | None = None


@cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, built if needed; None (and `unavailable()` says why) where they cannot be."""
    global _reason
    if os.environ.get("ECMT_FAST", "1") == "0":
        _reason = "ECMT_FAST=0"
        return None
    try:
        lib = cbuild.build(SOURCE, FLAG_SETS)
    except cbuild.BuildError as err:
        _reason = str(err)
        return None
    _declare(lib)
    return lib


def unavailable() -> str | None:
    """Why the kernels cannot be used on this machine (None where they can)."""
    return None if library() is not None else _reason


def _declare(lib: ctypes.CDLL) -> None:
    i64, i32, f32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    lib.mt_step.argtypes = [i64, i64, ptr, ctypes.POINTER(Strided), ptr, f32, ptr, ptr, ptr, MTRule, i32, i32, Events,
                            i32]
    lib.ecm_map.argtypes = [i64, i64, i32, f32, ECMIO, i32]
    lib.ecm_rows.argtypes = [i64, i64, i64, i32, ptr, ptr, f32, f32, ECMIO, i32]
    lib.scaled_increment.argtypes = [i64, ptr, f32, ptr, ptr, i32, i32]
    lib.product_counts.argtypes = [i64, i64, i64, i64, i64, Operand, Operand, Operand, Operand, ptr, ptr, ptr,
                                   i64, i32]
    lib.add_count.argtypes = [i64, i64, i64, i64, Operand, ptr, i32, ptr, ptr, i32]
    for fn in (lib.mt_step, lib.ecm_map, lib.ecm_rows, lib.scaled_increment, lib.product_counts, lib.add_count):
        fn.restype = None


def product_counts(x: torch.Tensor, a: torch.Tensor, y: torch.Tensor, b: torch.Tensor, ca: torch.Tensor,
                   cb: torch.Tensor, out: torch.Tensor, th_x: tuple | None = None, th_y: tuple | None = None,
                   counted: tuple | None = None) -> bool:
    """hw_sim's counts of a product ECM's non-zero pairs for one step, in one pass over its
    operands as they lie (strided, e.g. transposed): the increments x [S, ..., N, K], y [S, ..., K, M]
    and running sums a (as x), b (as y), float32 on the CPU, every operand with the same S samples.
    ca, cb (int64 [S, ..., K], contiguous): the previous step's non-zero counts of a's columns and
    b's rows, replaced by this step's.  out (int64 [S, 3], rows `out.stride(0)` apart, unit stride
    within): per sample, the spiking form's pairs, the reference's, and the spiking form's with
    each spike of an operand with thresholds th_x / th_y ((th_pos, th_neg), scalars: an MT
    neuron with k > 1) weighed by the levels it carries (native.c: product_counts).  `counted`:
    per operand (x, a, y, b), its counts that add_count gave this step (int32 [S, ..., K]), or
    None: counted here.  False where the kernels cannot run (nothing written)."""
    lib = library()
    tensors = (x, a, y, b)
    if (lib is None or any(t.device.type != "cpu" or t.dtype != torch.float32 or t.dim() < 3 for t in tensors)
            or x.shape != a.shape or y.shape != b.shape or x.shape[:-2] != y.shape[:-2]
            or x.shape[-1] != y.shape[-2] or out.stride(1) != 1 or out.dtype != torch.int64
            or any(c.dtype != torch.int64 or not c.is_contiguous() or c.shape != (*x.shape[:-2], x.shape[-1])
                   for c in (ca, cb))):
        return False
    S, (N, K), M = x.shape[0], x.shape[-2:], y.shape[-1]
    P = math.prod(x.shape[1:-2])
    keep = []                                   # the thresholds' tensors, alive through the call

    counted = counted or (None,) * 4

    def operand(t, pos, th=None):
        t = t.reshape(S, P, *t.shape[-2:])      # a view where the strides allow
        keep.append(t)
        tp = tn = None
        if th is not None:
            tp, tn = (None if v is None else v.reshape(1).float().contiguous() for v in th)
            keep.extend((tp, tn))
        return Operand(t.data_ptr(), *t.stride(), ptr(tp), ptr(tn), ptr(counted[pos]))
    lib.product_counts(S, P, N, K, M, operand(x, 0, th_x), operand(a, 1), operand(y, 2, th_y), operand(b, 3),
                       ca.data_ptr(), cb.data_ptr(), out.data_ptr(), out.stride(0), torch.get_num_threads())
    return True


def add_count(x: torch.Tensor, total: torch.Tensor, along: int, cx: torch.Tensor, cs: torch.Tensor) -> None:
    """total += x (total contiguous [S, ..., R, C], x of its shape, any strides), and the non-zero
    elements of x and of the new total per column (along = 0: as a product's left operand) or
    per row (along = 1: its right one) into cx, cs (contiguous int32 [S, ..., C or R]): in one
    pass (native.c: add_count)."""
    S, (R, C) = total.shape[0], total.shape[-2:]
    P = math.prod(total.shape[1:-2])
    v = x.reshape(S, P, R, C)
    library().add_count(S, P, R, C, Operand(v.data_ptr(), *v.stride(), None, None, None), total.data_ptr(), along,
                        cx.data_ptr(), cs.data_ptr(), torch.get_num_threads())


def ptr(t: torch.Tensor | None) -> int | None:
    """A contiguous float32 / code tensor's address for the kernels (None stays NULL)."""
    return None if t is None else t.data_ptr()


def build_report() -> str:
    """Build the kernels now (tools/bootstrap.sh: ahead of the first run) and say how it went."""
    return ("the fast step's kernels are "
            + (f"built ({cbuild.cache_dir()})" if library() is not None else f"unavailable: {unavailable()}"))
