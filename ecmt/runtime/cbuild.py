"""Build a C source of the package into a shared library on first use, and load it: the
one mechanism behind every C source (the fast step's ecmt/runtime/native.c, hw_sim's
schedule.c and histogram.c).

The system C compiler ($CC, else cc: the one torch.compile needs too) builds the library
into a cache directory ($ECMT_CACHE, else ~/.cache/ecmt) under a name keyed by the source,
the compiler, the flags and the CPU, so an edited source, another compiler or another CPU
builds again.  Each build goes to a temporary folder and is renamed into place, so that
concurrent processes see all of a library or nothing.  A caller gives its flag sets in
order of preference (OpenMP, then without it, ...): the first set that compiles and loads
is used.  Where none does, `BuildError` names the source and what is missing; callers
decide whether that stops the work (hw_sim's schedule) or means a slower path (the fast
step, the histogram).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import EcmtError

# Flag sets for a portable library: with OpenMP where the compiler has it, then without;
# contraction off, so that a * b + c rounds as Python's (code that reproduces a Python
# computation bit for bit, as hw_sim's schedule does).
_PORTABLE = ("-O3", "-shared", "-fPIC", "-ffp-contract=off")
PORTABLE = ((*_PORTABLE, "-fopenmp"), _PORTABLE)
# The root that package-relative source names are given from (the folder holding ecmt/).
_ROOT = Path(__file__).resolve().parent.parent.parent


class BuildError(EcmtError):
    """A C source could not be compiled or loaded (names the source and what is missing)."""


def cache_dir() -> Path:
    return Path(os.environ.get("ECMT_CACHE") or Path.home() / ".cache" / "ecmt")


def _cpu() -> str:
    """The CPU's model and flags (libraries built with -march=native run on this CPU only)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags"))).split("\n\n")[0]
    except OSError:
        return platform.processor()


def _name(source: Path) -> str:
    source = source.resolve()
    return str(source.relative_to(_ROOT)) if source.is_relative_to(_ROOT) else str(source)


def build(source: Path, flag_sets: Sequence[Sequence[str]]) -> ctypes.CDLL:
    """The compiled `source` (a .c file), built on first use with the first of `flag_sets`
    that works; BuildError where none does."""
    compiler = os.environ.get("CC", "cc")
    name = _name(source)
    if shutil.which(compiler) is None:
        raise BuildError(f"building {name} needs a C compiler, and {compiler!r} is not on PATH",
                         hint="install one (Debian: apt-get install gcc), or name it in $CC")
    text = source.read_bytes()
    errors = []
    for flags in flag_sets:
        key = hashlib.sha256(b"\0".join([text, compiler.encode(), " ".join(flags).encode(),
                                         platform.machine().encode(), _cpu().encode()])).hexdigest()[:16]
        path = cache_dir() / f"{source.stem}-{key}.so"
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    built = Path(tmp) / path.name
                    subprocess.run([compiler, str(source), "-o", str(built), *flags], check=True,
                                   capture_output=True, text=True, timeout=300)
                    os.replace(built, path)
            return ctypes.CDLL(str(path))
        except subprocess.CalledProcessError as err:
            errors.append(((err.stderr or "").strip().splitlines() or ["failed"])[-1])
        except (OSError, subprocess.TimeoutExpired) as err:
            errors.append(str(err))
    raise BuildError(f"{compiler} could not build {name}: {errors[-1] if errors else 'no flags given'}",
                     hint="check the compiler ($CC) and its installation, and that $ECMT_CACHE (or "
                          "~/.cache/ecmt) is writable")
