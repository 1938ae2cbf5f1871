"""Hostile inputs, and what ecmt says to each.

One list serves two readers: tests/test_reliability.py runs every case and
checks its outcome and the words of its message; run as a script, this file
writes the same cases with the messages they give now to docs/reliability.md,
so the table and the tests cannot drift apart:

    OMP_NUM_THREADS=1 .venv/bin/python tests/hostile_cases.py

Each case runs in a fresh folder: command-line cases through ``ecmt.cli.main``
in this process (stderr captured), library cases by calling the API.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ecmt import SpikingGraph, SpikingModel, ir, load_graph, save_graph
from ecmt.atomic import host_tag
from ecmt.errors import EcmtError
from ecmt.ir.serialize import CHECKSUM_KEY, META_KEY, tensor_checksum
from models import ecm_graph

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str          # "refused" (the project's error, exit 2), "ok" (ran), "crash" (anything else)
    message: str


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    group: str
    what: str                                  # the hostile input, as a user meets it
    run: Callable[[Path], Outcome]
    expect: str                                # words the message must contain
    status: str = "refused"
    root_skips: bool = False                   # root may write anywhere: no permission case


# -- how cases run ------------------------------------------------------------------
def cli(*args: str) -> Outcome:
    from ecmt.cli import main
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--quiet", *args])
    except SystemExit as exit_info:               # argparse: usage, then the error line
        code = exit_info.code
    except Exception as exc:  # noqa: BLE001 - a traceback is what a case must not give
        return Outcome("crash", f"{type(exc).__name__}: {exc}")
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if code == 2:
        error = [line for line in lines if "error" in line]
        hints = [line for line in lines if line.startswith("hint:")]
        return Outcome("refused", " / ".join([error[-1] if error else lines[-1], *hints]))
    if code == 0:
        return Outcome("ok", (out.getvalue().strip().splitlines() or [""])[-1])
    return Outcome("crash", f"exit {code}: {' / '.join(lines[-3:])}")


def api(fn: Callable[[], object], ok: str = "") -> Outcome:
    try:
        fn()
    except EcmtError as err:
        return Outcome("refused", str(err) + (f" / hint: {err.hint}" if err.hint else ""))
    except Exception as exc:  # noqa: BLE001
        return Outcome("crash", f"{type(exc).__name__}: {exc}")
    return Outcome("ok", ok)


# -- fixtures ---------------------------------------------------------------------------
def image_graph() -> SpikingGraph:
    """A small classifier of [1, 4, 4] images."""
    g = torch.Generator().manual_seed(0)
    return SpikingGraph([
        ir.Input("input", (), shape=(1, 4, 4)),
        ir.Reshape("flat", ("input",), shape=(16,)),
        ir.Linear("fc1", ("flat",), weight=torch.randn(8, 16, generator=g), bias=torch.randn(8, generator=g)),
        ir.MTNeuron("mt1", ("fc1",), th_pos=torch.tensor(0.5), th_neg=torch.tensor(0.5), levels=4),
        ir.Linear("fc2", ("mt1",), weight=torch.randn(3, 8, generator=g)),
        ir.Output("output", ("fc2",)),
    ])


def graph_file(tmp: Path) -> str:
    save_graph(image_graph(), tmp / "g.ecmt")
    return str(tmp / "g.ecmt")


def data_file(tmp: Path, images: torch.Tensor) -> str:
    torch.save({"images": images, "labels": torch.zeros(len(images), dtype=torch.long)}, tmp / "d.pt")
    return str(tmp / "d.pt")


def with_nan(images: torch.Tensor) -> torch.Tensor:
    images = images.clone()
    images.view(-1)[5] = float("nan")
    return images


def edited_graph(tmp: Path, edit: Callable[[dict, dict], object], text: str | None = None,
                 graph: Callable[[], SpikingGraph] = image_graph) -> str:
    """A graph file with its description edited (checksum recomputed, so the edit is what is met)."""
    save_graph(graph(), tmp / "g.ecmt")
    with safe_open(str(tmp / "g.ecmt"), "pt") as f:
        header, tensors = json.loads(f.metadata()[META_KEY]), {k: f.get_tensor(k) for k in f.keys()}
    header = edit(header, tensors) or header
    save_file(tensors, str(tmp / "bad.ecmt"),
              metadata={META_KEY: text or json.dumps(header), CHECKSUM_KEY: tensor_checksum(tensors)})
    return str(tmp / "bad.ecmt")


def node(header: dict, name: str) -> dict:
    return next(n for n in header["nodes"] if n["name"] == name)


def flipped_byte(tmp: Path) -> str:
    raw = bytearray(Path(graph_file(tmp)).read_bytes())
    raw[-3] ^= 0x01
    (tmp / "flip.ecmt").write_bytes(bytes(raw))
    return str(tmp / "flip.ecmt")


def header_0x80(tmp: Path) -> str:
    graph = image_graph()
    for pad in range(300):
        graph.meta["pad"] = "x" * pad
        save_graph(graph, tmp / "g.ecmt")
        if (tmp / "g.ecmt").read_bytes()[0] == 0x80:
            return str(tmp / "g.ecmt")
    raise AssertionError("no padding gives a header length with low byte 0x80")


def image_folder(tmp: Path, mode: str = "L", size: int = 28, corrupt: bool = False) -> str:
    from PIL import Image
    for cls in ("a", "b"):
        (tmp / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new(mode, (size, size)).save(tmp / "imgs" / cls / f"{i}.png")
    if corrupt:
        (tmp / "imgs" / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return str(tmp / "imgs")


def profile(tmp: Path, name: str, pattern: str, replacement: str) -> str:
    """A packaged hardware profile with one value changed."""
    import hw_sim
    text = (Path(hw_sim.__file__).parent / "profiles" / f"{name}.toml").read_text()
    changed = re.sub(pattern, replacement, text, count=1, flags=re.M)
    assert changed != text, f"{pattern!r} not in {name}.toml"
    (tmp / "p.toml").write_text(changed)
    return str(tmp / "p.toml")


def energy(tmp: Path, hw: str, *more: str) -> Outcome:
    return cli("energy", graph_file(tmp), "--data", data_file(tmp, torch.randn(4, 1, 4, 4)), "-T", "2",
               "--hw", hw, "--mode", "full", "--report", str(tmp / "r"), *more)


def calibration_nan(tmp: Path) -> Outcome:
    from ecmt.convert import calibration_batches
    x = with_nan(torch.randn(200, 1, 4, 4))
    return api(lambda: calibration_batches(x, batch_size=128))


def convert_demo(tmp: Path, model: str, data: str, *more: str) -> Outcome:
    return cli("convert", "--model", model, "--calib-samples", "16", "-o", str(tmp / "out.ecmt"),
               *(["--calib-data", data] if data.endswith(".pt") else ["--data", data]), *more)


def stale_part(tmp: Path) -> Outcome:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    part = tmp / f".g.ecmt.{host_tag()}-{dead.pid}.abcdefgh.part"
    part.write_bytes(b"x" * 1000)
    save_graph(image_graph(), tmp / "g.ecmt")
    return Outcome("ok" if not part.exists() else "crash",
                   f"the leftover .g.ecmt.HOST-PID.abcdefgh.part of a killed writer is removed "
                   "by the next write of g.ecmt")


def read_only(tmp: Path, what: str) -> Outcome:
    if what == "file":
        (tmp / "out.ecmt").write_text("keep")
        (tmp / "out.ecmt").chmod(0o444)
        target = tmp / "out.ecmt"
    else:
        (tmp / "ro").mkdir()
        (tmp / "ro").chmod(0o555)
        target = tmp / "ro" / "out.ecmt"
    return cli("convert", "--model", "demo-mlp", "--calib-samples", "16", "-o", str(target))


BIG_T = "1000000000"

CASES = [
    # -- results that were silently wrong -------------------------------------------
    Case("calibration-nan", "silent wrong results", "one NaN pixel among the calibration images (API)",
         calibration_nan, "calibration batch 1 of 2: 1 of 2048 values are NaN or infinite"),
    Case("calibration-nan-file", "silent wrong results", "one NaN pixel in a calibration file (`convert --calib-data`)",
         lambda t: convert_demo(t, "demo-mlp", data_file(t, with_nan(torch.randn(8, 1, 28, 28)))),
         "1 of 6272 image values are NaN or infinite (the first in image 0)"),
    Case("graph-nan-weights", "silent wrong results", "a graph file with a NaN weight",
         lambda t: api(lambda: load_graph(edited_graph(t, lambda h, ts: ts["fc1.weight"].view(-1)
                                                                .__setitem__(3, float("nan"))))),
         "node 'fc1' (linear): field weight: 1 of 128 values are NaN or infinite"),
    Case("input-nan", "silent wrong results", "a NaN input to a spiking run (API)",
         lambda t: api(lambda: SpikingModel(image_graph())(with_nan(torch.randn(2, 1, 4, 4)), 4)),
         "input: 1 of 32 values are NaN or infinite"),
    Case("eval-nan-data", "silent wrong results", "a NaN in the evaluation data (`eval --data`)",
         lambda t: cli("eval", graph_file(t), "--data", data_file(t, with_nan(torch.randn(4, 1, 4, 4)))),
         "1 of 64 image values are NaN or infinite"),
    Case("batch-size-negative", "silent wrong results", "`eval --batch-size -1`",
         lambda t: cli("eval", "g.ecmt", "--batch-size", "-1"), "argument --batch-size: must be >= 1, got -1"),
    Case("limit-negative", "silent wrong results", "`eval --limit -1`",
         lambda t: cli("eval", "g.ecmt", "--limit", "-1"), "argument --limit: must be >= 1, got -1"),
    Case("byte-flip", "silent wrong results", "one flipped bit in a graph file's tensor data",
         lambda t: api(lambda: load_graph(flipped_byte(t))), "do not match the file's checksum"),
    Case("profile-negative-bits", "silent wrong results", "a profile with `value_bits = -32`",
         lambda t: energy(t, profile(t, "cmos45-fp32", r"^value_bits = 32", "value_bits = -32")), "value_bits"),
    # -- the graph loader --------------------------------------------------------------
    Case("description-list", "graph loader", "a graph description that is a list",
         lambda t: api(lambda: load_graph(edited_graph(t, lambda h, ts: None, text="[1, 2]"))),
         "not an ecmt graph (the description is a list, not an object)"),
    Case("deep-json", "graph loader", "a description nested 100,000 levels deep",
         lambda t: api(lambda: load_graph(edited_graph(t, lambda h, ts: None, text="[" * 100_000))),
         "graph description is not valid JSON (RecursionError"),
    Case("deep-meta", "graph loader", "metadata nested 40 levels deep",
         lambda t: api(lambda: load_graph(edited_graph(
             t, lambda h, ts: h["meta"].update(x=json.loads("[" * 40 + "]" * 40))))),
         "graph: field meta.x"),
    Case("eps-string", "graph loader", 'a layer norm with `"eps": "1e-5"`',
         lambda t: api(lambda: load_graph(edited_graph(
             t, lambda h, ts: node(h, "ln")["attrs"].update(eps="1e-5"), graph=ecm_graph))),
         "node 'ln' (layernorm_ecm): field eps: expected a number, got '1e-5'"),
    Case("scale-string", "graph loader", 'a product ECM with `"scale": "0.5"`',
         lambda t: api(lambda: load_graph(edited_graph(
             t, lambda h, ts: node(h, "qk")["attrs"].update(scale="0.5"), graph=ecm_graph))),
         "node 'qk' (product_ecm): field scale: expected a number, got '0.5'"),
    Case("levels-1e30", "graph loader", "an MT neuron with `levels = 1e30`",
         lambda t: api(lambda: load_graph(edited_graph(t, lambda h, ts: node(h, "mt1")["attrs"]
                                                                .update(levels=1e30)))),
         "node 'mt1' (mt_neuron): field levels: expected a whole number, got 1e+30"),
    Case("levels-huge", "graph loader", "an MT neuron with `levels = 1000`",
         lambda t: api(lambda: load_graph(edited_graph(t, lambda h, ts: node(h, "mt1")["attrs"]
                                                                .update(levels=1000)))),
         "node 'mt1' (mt_neuron): field levels: must be <= 32, got 1000"),
    Case("version-float", "graph loader", "`version: 1.0`",
         lambda t: api(lambda: load_graph(edited_graph(t, lambda h, ts: h.update(version=1.0)))),
         "unsupported graph version 1.0"),
    Case("version-true", "graph loader", "`version: true`",
         lambda t: api(lambda: load_graph(edited_graph(t, lambda h, ts: h.update(version=True)))),
         "unsupported graph version True"),
    Case("header-0x80", "graph loader", "a valid graph whose header length's low byte is 0x80 (not a pickle)",
         lambda t: api(lambda: load_graph(header_0x80(t)), ok="loads"), "loads", status="ok"),
    # -- tracebacks that became messages -----------------------------------------------
    Case("limit-zero", "options", "`eval --limit 0`",
         lambda t: cli("eval", "g.ecmt", "--limit", "0"), "argument --limit: must be >= 1, got 0"),
    Case("empty-data", "data", "an empty `.pt` data file",
         lambda t: cli("eval", graph_file(t), "--data", data_file(t, torch.zeros(0, 1, 4, 4))), "holds no images"),
    *(Case(f"quantile-{q}", "options", f"`convert --quantile {q}`",
           lambda t, q=q: cli("convert", "-o", "x.ecmt", "--quantile", q), "argument --quantile: must be in (0.5, 1]")
      for q in ("0", "1.5", "nan")),
    Case("quantile-1", "options", "`convert --quantile 1` (valid: the largest activation)",
         lambda t: convert_demo(t, "demo-mlp", "fashion-mnist", "--quantile", "1"), "wrote", status="ok"),
    Case("target-T-zero", "options", "`convert --target-T 0`",
         lambda t: cli("convert", "-o", "x.ecmt", "--target-T", "0"), "argument --target-T: must be >= 1, got 0"),
    Case("profile-nan", "profiles", "a profile with a NaN energy",
         lambda t: energy(t, profile(t, "loihi", r"^e_synaptic_event = \{ value = [^,]+",
                                     "e_synaptic_event = { value = nan")), "mesh.e_synaptic_event"),
    Case("profile-inf", "profiles", "a profile with an infinite energy",
         lambda t: energy(t, profile(t, "loihi", r"^e_synaptic_event = \{ value = [^,]+",
                                     "e_synaptic_event = { value = inf")), "mesh.e_synaptic_event"),
    Case("profile-zero-cores", "profiles", "a profile with 0 cores per tile",
         lambda t: energy(t, profile(t, "loihi", r"^cores_per_tile = \{ value = \d+", "cores_per_tile = { value = 0")),
         "mesh.cores_per_tile"),
    Case("profile-zero-host-ops", "profiles", "a profile with 0 host operations per second",
         lambda t: energy(t, profile(t, "loihi", r"^ops_per_second = \{ value = [^,]+",
                                     "ops_per_second = { value = 0")), "host.ops_per_second"),
    Case("corrupt-png", "data", "an image folder with one corrupt PNG",
         lambda t: cli("eval", graph_file(t), "--data", image_folder(t, corrupt=True)),
         "imgs/b/1.png: cannot read the image"),
    Case("rgb-into-demo", "data", "RGB images into the demo ViT (`convert --data <folder>`)",
         lambda t: convert_demo(t, "demo", image_folder(t, "RGB")),
         "the images are [3, 28, 28] (channels, height, width) but the model takes [1, 28, 28]"),
    Case("8x8-into-demo", "data", "8x8 images into the demo ViT (`convert --data digits`)",
         lambda t: convert_demo(t, "demo", "digits"),
         "the images are [1, 8, 8] (channels, height, width) but the model takes [1, 28, 28]"),
    Case("calib-channels", "data", "3-channel calibration data for the demo CNN",
         lambda t: convert_demo(t, "demo-cnn", data_file(t, torch.randn(8, 3, 28, 28))),
         "the images are [3, 28, 28] (channels, height, width); its first layer takes 1 channels"),
    Case("calib-size", "data", "8x8 calibration data for the demo MLP",
         lambda t: convert_demo(t, "demo-mlp", data_file(t, torch.randn(8, 1, 8, 8))),
         "the images are [1, 8, 8] (channels, height, width); its first layer takes 784 values per image"),
    Case("eval-shape", "data", "8x8 data into a graph of 4x4 images (`eval --data digits`)",
         lambda t: cli("eval", graph_file(t), "--data", "digits"),
         "the images are [1, 8, 8] (channels, height, width) but the model takes [1, 4, 4]"),
    Case("output-dir", "outputs", "`convert -o <existing folder>`",
         lambda t: (t / "d").mkdir() or cli("convert", "--model", "demo-mlp", "-o", str(t / "d")), "is a directory"),
    Case("output-dir-slash", "outputs", "`export -o dir/`",
         lambda t: cli("export", graph_file(t), "--to", "onnx", "-o", str(t / "new") + "/"),
         "not a file without an ending"),
    Case("read-only-dir", "outputs", "a read-only destination folder",
         lambda t: read_only(t, "dir"), "permission denied", root_skips=True),
    Case("read-only-file", "outputs", "a read-only existing output file",
         lambda t: read_only(t, "file"), "is read-only", root_skips=True),
    Case("hw-empty", "options", '`energy --hw ""`',
         lambda t: cli("energy", "g.ecmt", "--report", "r", "--hw", ""), "argument --hw: '' names nothing"),
    Case("mode-comma", "options", "`energy --mode ,`",
         lambda t: cli("energy", "g.ecmt", "--report", "r", "--mode", ","), "argument --mode: ',' names nothing"),
    Case("batch-size-zero", "options", "`eval --batch-size 0`",
         lambda t: cli("eval", "g.ecmt", "--batch-size", "0"), "argument --batch-size: must be >= 1, got 0"),
    Case("calib-samples-zero", "options", "`convert --calib-samples 0`",
         lambda t: cli("convert", "-o", "x.ecmt", "--calib-samples", "0"),
         "argument --calib-samples: must be >= 1, got 0"),
    Case("device-unknown", "options", "`--device tpu`",
         lambda t: cli("eval", "g.ecmt", "--device", "tpu"), "argument --device: 'tpu' is not a device"),
    Case("eval-huge-T", "memory", f"`eval -T {BIG_T}`",
         lambda t: cli("eval", graph_file(t), "--data", data_file(t, torch.randn(4, 1, 4, 4)), "-T", BIG_T),
         f"ecmt eval -T {BIG_T} --batch-size 256 needs about"),
    Case("energy-huge-T", "memory", f"`energy -T {BIG_T}`",
         lambda t: energy(t, "cmos45-fp32", "-T", BIG_T), f"ecmt energy -T {BIG_T} needs about"),
    Case("search-huge-T", "memory", f"`convert --target-T {BIG_T}`",
         lambda t: convert_demo(t, "demo-mlp", "fashion-mnist", "--target-T", BIG_T),
         f"the threshold search at target T = {BIG_T} needs about"),
    Case("export-onto-input", "outputs", "`export g.nir --to nir -o g.nir`: the output is the input graph",
         lambda t: cli("export", "g.nir", "--to", "nir", "-o", "g.nir"), "is the input graph"),
    Case("killed-run-leftover", "outputs", "a `.NAME.HOST-PID.XXXXXXXX.part` file left by a killed run",
         stale_part, "is removed by the next write", status="ok"),
]


def run(case: Case) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)                          # relative names (g.ecmt, r) land in the case's folder
        try:
            outcome = case.run(Path(tmp))
        finally:
            os.chdir(cwd)
    return Outcome(outcome.status, outcome.message.replace(str(Path(tmp).resolve()), "<tmp>")
                   .replace(tmp, "<tmp>"))


def write_doc() -> None:
    os.environ.setdefault("ECMT_COMPILE", "0")
    lines = ["# Reliability: hostile inputs and what ecmt says", "",
             "Generated by `tests/hostile_cases.py` (`OMP_NUM_THREADS=1 .venv/bin/python tests/hostile_cases.py`);",
             "`tests/test_reliability.py` runs every case below and checks its outcome and the words in",
             "**bold**.  \"refused\" is the project's error (`ecmt.errors.EcmtError`; exit status 2 on the",
             "command line, one line and a hint, nothing written); \"ok\" is a valid input that must work.",
             "Folders are shown as `<tmp>`; memory figures are those of the machine that wrote this page.", ""]
    groups = list(dict.fromkeys(c.group for c in CASES))
    for case in sorted(CASES, key=lambda c: groups.index(c.group)):
        if case is next(c for c in CASES if c.group == case.group):
            lines += [f"## {case.group[0].upper()}{case.group[1:]}", "", "| case | input | outcome | message |",
                      "|---|---|---|---|"]
        if case.root_skips and os.geteuid() == 0:
            outcome = Outcome("(not run)", "run as root, which may write anywhere; tests/test_atomic.py and "
                                           "test_reliability.py check it as a normal user")
        else:
            outcome = run(case)
        message = outcome.message.replace("|", "\\|").replace(case.expect, f"**{case.expect}**", 1)
        lines.append(f"| `{case.id}` | {case.what} | {outcome.status} | {message} |")
        if case is [c for c in CASES if c.group == case.group][-1]:
            lines.append("")
    from test_fuzz_graph_file import PER_SEED, SEEDS
    lines += [f"The graph file format is also fuzzed: `tests/test_fuzz_graph_file.py` mutates {len(SEEDS)} seed",
              f"graphs {len(SEEDS) * PER_SEED:,} ways (byte flips, truncation, type swaps, extreme numbers, deep",
              "nesting, missing and extra keys, bad tensors behind a valid checksum) and hypothesis puts any JSON",
              "value into any field; every file is refused with the project's error or loads and runs.", ""]
    DOC.write_text("\n".join(lines))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    write_doc()
