"""The fast step's C kernels (native.c): built once per machine with the system C
compiler, loaded with ctypes.

The library is compiled on first use (about a second; `tools/bootstrap.sh` builds
it ahead) into a cache directory ($ECMT_CACHE, else ~/.cache/ecmt), keyed by the
source, the compiler and the CPU (it is built for the CPU it runs on), and
replaced atomically, so concurrent processes share one build.  The flags fall
back step by step: OpenMP and libmvec's vectorized exp / erf / tanh where the
toolchain has them, plain C where not.  Where no build works, `library()` is
None and `unavailable()` says why, in one line.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

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


def cache_dir() -> Path:
    return Path(os.environ.get("ECMT_CACHE") or Path.home() / ".cache" / "ecmt")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags"))).split("\n\n")[0]
    except OSError:
        return platform.processor()


_reason: str | None = None


@cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, built if needed; None (and `unavailable()` says why) where they cannot be."""
    global _reason
    if os.environ.get("ECMT_FAST", "1") == "0":
        _reason = "ECMT_FAST=0"
        return None
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        _reason = f"no C compiler {compiler!r} on PATH"
        return None
    source = SOURCE.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(), platform.machine()
                                         .encode(), _cpu().encode()])).hexdigest()[:16]
        path = cache_dir() / f"ecmt-step-{key}.so"
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    built = Path(tmp) / path.name
                    cmd = [compiler, str(SOURCE), "-o", str(built), *flags]
                    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
                    os.replace(built, path)   # atomic: a concurrent process sees all of it or nothing
            lib = ctypes.CDLL(str(path))
        except subprocess.CalledProcessError as err:
            errors.append((err.stderr or "").strip().splitlines()[-1:] or ["failed"])
            continue
        except (OSError, subprocess.TimeoutExpired) as err:
            errors.append([str(err)])
            continue
        _declare(lib)
        return lib
    _reason = f"{compiler} could not build {SOURCE.name}: {errors[-1][0] if errors else 'no flags tried'}"
    return None


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
            + (f"built ({cache_dir()})" if library() is not None else f"unavailable: {unavailable()}"))
