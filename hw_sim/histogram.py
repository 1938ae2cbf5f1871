"""A parallel histogram of uint8 codes: the one operation of the counting run
that PyTorch has no fast form of (torch.bincount runs on one thread and stalls
on long runs of one value, which MT event codes are full of).

histogram.c is compiled on first use (ecmt/runtime/cbuild.py: the system C compiler,
cached by the source's hash).  Without a compiler, or with ECMT_NATIVE=0, or
for tensors off the CPU, torch.bincount gives the same counts, more slowly.
"""
from __future__ import annotations

import ctypes
import os
import warnings
from functools import cache
from pathlib import Path

import torch

from ecmt.runtime import cbuild

SOURCE = Path(__file__).with_name("histogram.c")


@cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("ECMT_NATIVE", "1") == "0":
        return None
    try:
        lib = cbuild.build(SOURCE, cbuild.PORTABLE)
    except cbuild.BuildError as e:
        warnings.warn(f"{e}; counting with torch.bincount (same counts, slower)", RuntimeWarning, stacklevel=3)
        return None
    lib.histogram_u8.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    lib.histogram_u8.restype = None
    lib.histogram_rows_u8.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                      ctypes.c_int64, ctypes.c_int]
    lib.histogram_rows_u8.restype = None
    lib.mt_counts_i16.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.mt_counts_i16.restype = None
    return lib


def histogram(codes: torch.Tensor, bins: int, out: torch.Tensor | None = None, rows: int = 1) -> torch.Tensor:
    """Counts of each value 0..bins-1 in the 1-D uint8 tensor `codes`, added
    to `out` (contiguous int64 with `bins` elements) if given, else returned
    as a new int64 [bins].  With `rows` > 1, `codes` is `rows` equal parts
    counted apart: `out` has rows x bins elements ([rows, bins] when new)."""
    if codes.dtype != torch.uint8 or codes.dim() != 1:
        raise ValueError(f"histogram needs a 1-D uint8 tensor, got {codes.dtype} of shape {tuple(codes.shape)}")
    if not 0 < bins <= 256:
        raise ValueError(f"bins must be in 1..256, got {bins}")
    if rows < 1 or codes.numel() % rows:
        raise ValueError(f"{codes.numel()} codes do not split into {rows} equal rows")
    if out is None:
        out = torch.zeros((rows, bins) if rows > 1 else bins, dtype=torch.int64, device=codes.device)
    elif out.dtype != torch.int64 or out.numel() != rows * bins or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous int64 tensor of {rows * bins} elements")
    lib = _library() if codes.device.type == "cpu" and out.device.type == "cpu" else None
    if lib is None and rows == 1:
        out.view(-1).add_(torch.bincount(codes, minlength=bins)[:bins])
        return out
    if lib is None:
        # each row's codes shifted into its own range of bins: one bincount for all rows
        shift = torch.arange(rows, device=codes.device).repeat_interleave(codes.numel() // rows) * bins
        out.view(-1).add_(torch.bincount(codes.long() + shift, minlength=rows * bins)[:rows * bins])
        return out
    codes = codes.contiguous()
    if rows == 1:
        lib.histogram_u8(codes.data_ptr(), codes.numel(), out.data_ptr(), bins, torch.get_num_threads())
    else:
        lib.histogram_rows_u8(codes.data_ptr(), rows, codes.numel() // rows, out.data_ptr(), bins,
                              torch.get_num_threads())
    return out


def mt_counts(codes: torch.Tensor, levels: int, out: torch.Tensor, rows: int = 1) -> torch.Tensor:
    """The counts of an MT neuron with spikes_per_step k > 1 from its 1-D int16 event codes
    (kernels.mt_multi_update_coded), `rows` equal parts (samples), in one pass: the histogram
    of the codes is added to `out` (contiguous int64, 2 (2^(levels+1) - 1) elements), and per
    row (spikes, active updates, levels fired) is returned as int64 [rows, 3]."""
    span = 2 ** levels - 1
    bins = 2 * (2 * span + 1)
    if codes.dtype != torch.int16 or codes.dim() != 1:
        raise ValueError(f"mt_counts needs a 1-D int16 tensor, got {codes.dtype} of shape {tuple(codes.shape)}")
    if rows < 1 or codes.numel() % rows:
        raise ValueError(f"{codes.numel()} codes do not split into {rows} equal rows")
    if out.dtype != torch.int64 or out.numel() != bins or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous int64 tensor of {bins} elements")
    per_row = torch.zeros(rows, 3, dtype=torch.int64, device=codes.device)
    lib = _library() if codes.device.type == "cpu" and out.device.type == "cpu" else None
    if lib is not None:
        codes = codes.contiguous()
        lib.mt_counts_i16(codes.data_ptr(), rows, codes.numel() // rows, span, out.data_ptr(),
                          per_row.data_ptr(), torch.get_num_threads())
        return per_row
    c = codes.long()
    out.view(-1).add_(torch.bincount(c, minlength=bins)[:bins])
    c = c.view(rows, -1)
    active = c >= 2 * span + 1
    m = (c - active * (2 * span + 1) - span).abs()
    fired = sum((m >> j) & 1 for j in range(levels))
    return torch.stack([(m != 0).sum(1), active.sum(1), fired.sum(1)], dim=1)
