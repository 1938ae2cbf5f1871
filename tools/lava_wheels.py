"""Build installable lava-nc 0.10.0 / lava-dl 0.6.0 wheels for Python 3.11.

The wheels on PyPI cannot be used as published on 3.11:

* their metadata says ``Requires-Python <3.11`` and pins torch < 2.4, numpy < 2;
* lava-nc's ``lava/magma/compiler/var_model.py`` uses a dataclass instance as a
  field default, which Python 3.11 rejects at import time;
* both wheels ship a top-level ``tests`` package that, once installed, shadows
  any project's own ``tests`` package;
* importing lava-nc calls ``multiprocessing.set_start_method('fork')``, which
  raises in any process that has already chosen a start method (torch.compile
  does), so Lava could only be imported first.

This script is the one place those problems are solved.  It downloads the
pinned wheels (checked against their sha256), rewrites them and writes the
result into an output folder, from which ``pip`` installs them like any other
wheel.  The rewrite is small and listed in ``PATCHES``/``relax_metadata``:

1. the dataclass defaults become ``field(default_factory=...)``, and Lava's
   start-method call gets ``force=True`` (it still chooses 'fork', which its
   runtime needs);
2. the top-level ``tests/`` tree is left out;
3. ``Requires-Python`` becomes ``>=3.10`` and version caps are dropped from
   ``Requires-Dist`` (test-only requirements are removed).  ecmt's own
   constraints file pins what actually gets installed.

Nothing in site-packages is edited after installation.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = {
    "lava_nc-0.10.0-py3-none-any.whl":
        "d646723e888a72868dac77d31beee3eef1f540366a8c1a8578a2dc3302470926",
    "lava_dl-0.6.0-py3-none-any.whl":
        "bcb448f2bb85dc0da4b4dbbbae16543d2a978c1da7279acc522ad621fc68c437",
}
REQUIREMENTS = ["lava-nc==0.10.0", "lava-dl==0.6.0"]

# (file inside the wheel, old text, new text): each must match exactly once.
PATCHES = [
    ("lava/magma/compiler/var_model.py",
     "from dataclasses import dataclass, InitVar\n",
     "from dataclasses import dataclass, InitVar, field\n"),
    ("lava/magma/compiler/var_model.py",
     ": ByteEncoder = ByteEncoder()",
     ": ByteEncoder = field(default_factory=ByteEncoder)"),
    ("lava/magma/runtime/message_infrastructure/multiprocessing.py",
     "    mp.set_start_method('fork')\n",
     "    mp.set_start_method('fork', force=True)\n"),
]
# Requirements only the upstream test suites and CUDA JIT builds need.
DROPPED_REQUIREMENTS = {"pytest", "unittest2", "ninja"}


def record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def relax_metadata(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("Requires-Python:"):
            line = "Requires-Python: >=3.10"
        elif line.startswith("Requires-Dist:"):
            match = re.match(r"Requires-Dist: ([A-Za-z0-9_.-]+)", line)
            name = match.group(1)
            if name.lower() in DROPPED_REQUIREMENTS:
                continue
            pinned = re.search(r"\(==[^)]*\)", line)  # keep exact pins (lava-nc for lava-dl)
            line = f"Requires-Dist: {name}" + (f" {pinned.group(0)}" if pinned else "")
        out.append(line)
    return "\n".join(out) + "\n"


def patch_text(path: str, text: str) -> str:
    for target, old, new in PATCHES:
        if target != path:
            continue
        count = text.count(old)
        if count == 0:
            raise SystemExit(f"lava_wheels: patch for {path} no longer matches ({old!r})")
        text = text.replace(old, new)
    return text


def rewrite(src: Path, dst: Path) -> None:
    files: dict[str, bytes] = {}
    record_name = None
    with zipfile.ZipFile(src) as zin:
        for info in zin.infolist():
            name = info.filename
            if name.startswith("tests/"):
                continue
            if name.endswith(".dist-info/RECORD"):
                record_name = name
                continue
            data = zin.read(name)
            if name.endswith(".dist-info/METADATA"):
                data = relax_metadata(data.decode()).encode()
            elif any(name == p for p, _, _ in PATCHES):
                data = patch_text(name, data.decode()).encode()
            files[name] = data
    assert record_name is not None, f"{src.name} has no RECORD"
    record = io.StringIO()
    for name, data in files.items():
        record.write(f"{name},{record_hash(data)},{len(data)}\n")
    record.write(f"{record_name},,\n")
    tmp = dst.with_suffix(".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in files.items():
            zout.writestr(name, data)
        zout.writestr(record_name, record.getvalue())
    tmp.replace(dst)


def download(cache: Path) -> None:
    missing = [n for n in WHEELS if not (cache / n).exists()]
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--ignore-requires-python", "--only-binary=:all:", "-d", str(cache),
             *REQUIREMENTS], check=True)
    for name, sha in WHEELS.items():
        got = hashlib.sha256((cache / name).read_bytes()).hexdigest()
        if got != sha:
            raise SystemExit(f"lava_wheels: {cache / name} has sha256 {got}, expected {sha}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the rewritten wheels")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "upstream"
    cache.mkdir(exist_ok=True)
    download(cache)
    for name in WHEELS:
        rewrite(cache / name, args.out / name)
        print(f"lava_wheels: wrote {args.out / name}")


if __name__ == "__main__":
    main()
