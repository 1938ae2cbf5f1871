"""Build a C source of this package into a shared library on first use, and load it.

The library is compiled with the system C compiler ($CC, else cc: the one torch.compile
already needs), with OpenMP where the compiler has it, into a cache directory ($ECMT_CACHE,
else ~/.cache/ecmt) under a name keyed by the hash of the source, the compiler and the
flags, so an edited source is rebuilt and concurrent processes never see half a file
(each builds in a temporary directory and renames atomically).

Floating-point contraction is off (-ffp-contract=off): a C expression a * b + c must round
as Python's, for code that reproduces a Python computation bit for bit.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ecmt.errors import EcmtError

FLAGS = ("-O3", "-shared", "-fPIC", "-ffp-contract=off")


class NativeBuildError(EcmtError):
    """A C source of hw_sim could not be compiled or loaded (names the source and what is missing)."""


def cache_dir() -> Path:
    return Path(os.environ.get("ECMT_CACHE") or Path.home() / ".cache" / "ecmt")


def load(source: Path) -> ctypes.CDLL:
    """The compiled `source` (a .c file), built on first use; NativeBuildError if it cannot be."""
    compiler = os.environ.get("CC", "cc")
    text = source.read_bytes()
    key = hashlib.sha256(text + compiler.encode() + " ".join(FLAGS).encode()).hexdigest()[:16]
    path = cache_dir() / f"{source.stem}-{key}.so"
    if not path.exists():
        if shutil.which(compiler) is None:
            raise NativeBuildError(
                f"hw_sim: building {source.name} needs a C compiler, and {compiler!r} is not on PATH",
                hint="install one (Debian: apt-get install gcc), or name it in $CC")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                built = Path(tmp) / path.name
                command = [compiler, *FLAGS, str(source), "-o", str(built)]
                try:
                    subprocess.run(command + ["-fopenmp"], check=True, capture_output=True, text=True)
                except subprocess.CalledProcessError:   # no OpenMP (Apple clang): one thread
                    subprocess.run(command, check=True, capture_output=True, text=True)
                os.replace(built, path)
        except subprocess.CalledProcessError as e:
            raise NativeBuildError(f"hw_sim: {compiler} could not compile {source.name}: {e.stderr.strip()}",
                                   hint="check the compiler ($CC) and its installation") from None
        except OSError as e:
            raise NativeBuildError(f"hw_sim: cannot build {source.name} into {path.parent}: {e}",
                                   hint="make $ECMT_CACHE (or ~/.cache/ecmt) writable") from None
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeBuildError(f"hw_sim: cannot load {path} (built from {source.name}): {e}",
                               hint=f"delete {path} to rebuild it") from None
