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


class ECMIO(ctypes.Structure):
    """native.c's ecm_io: where an ECM's step reads and writes."""
    _fields_ = [("x", ctypes.c_void_p), ("sum", ctypes.c_void_p), ("scale_t", ctypes.c_float),
                ("out_sum", ctypes.c_void_p), ("out", ctypes.c_void_p), ("mt", ctypes.POINTER(MTRule)),
                ("spike_sum", ctypes.c_void_p), ("ev", Events), ("sample_size", ctypes.c_int64)]


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
    lib.mt_step.argtypes = [i64, i64, ptr, ptr, ptr, MTRule, i32, Events, i32]
    lib.ecm_map.argtypes = [i64, i64, i32, f32, ECMIO, i32]
    lib.ecm_rows.argtypes = [i64, i64, i64, i32, ptr, ptr, f32, f32, ECMIO, i32]
    lib.scaled_increment.argtypes = [i64, ptr, f32, ptr, ptr, i32]
    lib.count_along.argtypes = [i64, i64, i64, ptr, i64, i64, i64, i32, ptr, ptr, ptr, i32]
    for fn in (lib.mt_step, lib.ecm_map, lib.ecm_rows, lib.scaled_increment, lib.count_along):
        fn.restype = None


def count_along(x: torch.Tensor, dim: int, th_pos: torch.Tensor | None = None,
                th_neg: torch.Tensor | None = None) -> torch.Tensor | None:
    """For a float32 CPU tensor of 3 or more dimensions and dim -2 or -1, in one pass over x
    as it lies (strided, e.g. transposed): (x != 0).sum(dim) as int64, or with scalar
    thresholds (spikes of an MT neuron) the levels each value carries, summed (the binary
    digits of round(|x| / th), th_neg below zero).  None where the kernels cannot run."""
    lib = library()
    if lib is None or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() < 3 or dim not in (-2, -1):
        return None
    lead = x.shape[:-2]
    flat = x.reshape(-1, *x.shape[-2:]) if x.dim() > 3 else x    # a view where strides allow
    P, N, K = flat.shape
    out = torch.empty(P, K if dim == -2 else N, dtype=torch.int64)
    scalar = lambda th: None if th is None else th.reshape(1).float().contiguous()
    tp, tn = scalar(th_pos), scalar(th_neg)
    lib.count_along(P, N, K, flat.data_ptr(), *flat.stride(), 1 if dim == -2 else 2, ptr(tp), ptr(tn),
                    out.data_ptr(), torch.get_num_threads())
    return out.view(*lead, out.shape[-1])


def ptr(t: torch.Tensor | None) -> int | None:
    """A contiguous float32 / code tensor's address for the kernels (None stays NULL)."""
    return None if t is None else t.data_ptr()


def build_report() -> str:
    """Build the kernels now (tools/bootstrap.sh: ahead of the first run) and say how it went."""
    return ("the fast step's kernels are "
            + (f"built ({cbuild.cache_dir()})" if library() is not None else f"unavailable: {unavailable()}"))
