"""``ecmt pipeline CONFIG.toml``: checkpoint (or saved graph) -> graph -> accuracy ->
exports -> each export verified in its own runtime -> energy report -> manifest.

The config (docs/pipeline.md) is read and validated completely before any work:
an unknown key, a value of the wrong type or range, a missing checkpoint / graph /
data file, an unknown export format or hardware profile and an output that cannot
be written each fail with the key named.  Per model, the stages print one line each
to stderr; ``out/manifest.json`` records versions, the sha256 of every input and
output, the options, the accuracy, each export's verification and the energy report.
A verification beyond its tolerance makes the run fail (exit status 1) after the
manifest is written, naming the export, the image and the size of the difference.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
import tomllib
from pathlib import Path

from .atomic import check_writable, write_text
from .errors import EcmtError

FORMATS = {"onnx": ".onnx", "nir": ".nir", "lava": ".h5"}
NIR_NEURONS = ("IF", "LIF")
NIR_TARGETS = ("norse", "snntorch", "sinabs")      # exporters.nir.TARGETS (not imported: nir is optional)
LAVA_LAYOUTS = ("auto", "netx", "extended")


class ConfigError(EcmtError):
    """The pipeline config is malformed (names the key)."""


# -- the config: every key, its type and range -------------------------------------------------------------
def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# key -> (check, what it must be)
CONVERT_KEYS = {
    "levels": (_count, "a whole number >= 1"),
    "spikes_per_step": (_count, "a whole number >= 1"),
    "quantile": (lambda v: _number(v) and 0.5 < v <= 1, "a number in (0.5, 1]"),
    "per_channel": (lambda v: isinstance(v, bool), "true or false"),
    "target_T": (_count, "a whole number >= 1"),
    "energy_budget": (lambda v: _number(v) and v > 0, "a number > 0"),
    "energy_profile": (lambda v: isinstance(v, str) and v != "", "a profile name or .toml path"),
}
NIR_KEYS = {
    "unit_thresholds": (lambda v: isinstance(v, bool), "true or false"),
    "neuron": (lambda v: v in NIR_NEURONS, f"one of {', '.join(NIR_NEURONS)}"),
    "ppn": (lambda v: isinstance(v, bool), "true or false"),
    "target": (lambda v: v in NIR_TARGETS, f"one of {', '.join(NIR_TARGETS)}"),
    "consumers": (lambda v: isinstance(v, bool), "true or false"),
}
LAVA_KEYS = {"layout": (lambda v: v in LAVA_LAYOUTS, f"one of {', '.join(LAVA_LAYOUTS)}")}
MODEL_KEYS = {
    "name": (lambda v: isinstance(v, str) and v != "" and all(c.isalnum() or c in "-_." for c in v)
             and not v.startswith("."), "a name of letters, digits, '-', '_' and '.'"),
    "model": (lambda v: isinstance(v, str) and v != "", "a model as `ecmt convert --model` takes it"),
    "graph": (lambda v: isinstance(v, str) and v != "", "a graph file path (.ecmt)"),
    "checkpoint": (lambda v: isinstance(v, str) and v != "", "a checkpoint file path"),
    "model_args": (lambda v: isinstance(v, dict), "a table of timm.create_model keywords"),
    "data": (lambda v: isinstance(v, str) and v != "", "fashion-mnist, digits, a folder or a tensor file"),
    "data_root": (lambda v: isinstance(v, str) and v != "", "a folder"),
    "calib_samples": (_count, "a whole number >= 1"),
    "convert": (lambda v: isinstance(v, dict), "a table of ecmt.convert options"),
    "export": (lambda v: isinstance(v, list) and all(isinstance(f, str) for f in v), "a list of formats"),
    "nir": (lambda v: isinstance(v, dict), "a table of NIR export options"),
    "lava": (lambda v: isinstance(v, dict), "a table of Lava export options"),
    "verify_samples": (_count, "a whole number >= 1"),
    "lava_samples": (_count, "a whole number >= 1"),
    "eval_samples": (_count, "a whole number >= 1"),
    "energy_samples": (_count, "a whole number >= 1"),
    "hardware": (lambda v: isinstance(v, list) and all(isinstance(h, str) and h for h in v),
                 "a list of hardware profile names"),
    "T": (_count, "a whole number >= 1"),
    "device": (lambda v: isinstance(v, str) and v != "", "cpu or cuda"),
}
TOP_KEYS = {"out": (lambda v: isinstance(v, str) and v != "", "an output folder"),
            "model": (lambda v: isinstance(v, list) and v and all(isinstance(m, dict) for m in v),
                      "one or more [[model]] tables")}


@dataclasses.dataclass
class ModelJob:
    name: str
    model: str | None = None
    graph: str | None = None
    checkpoint: str | None = None
    model_args: dict = dataclasses.field(default_factory=dict)
    data: str = "fashion-mnist"
    data_root: str | None = None
    calib_samples: int = 512
    convert: dict = dataclasses.field(default_factory=dict)
    export: list = dataclasses.field(default_factory=list)
    nir: dict = dataclasses.field(default_factory=dict)
    lava: dict = dataclasses.field(default_factory=dict)
    verify_samples: int = 8
    lava_samples: int = 2
    eval_samples: int | None = None
    energy_samples: int = 64
    hardware: list = dataclasses.field(default_factory=list)
    T: int = 4
    device: str = "cpu"


@dataclasses.dataclass
class Config:
    path: Path
    out: Path
    models: list[ModelJob]


def _check_table(table: dict, keys: dict, where: str) -> None:
    for key, value in table.items():
        if key not in keys:
            raise ConfigError(f"{where}: unknown key {key!r}", hint=f"known keys: {', '.join(keys)}")
        check, what = keys[key]
        if not check(value):
            raise ConfigError(f"{where}.{key}: must be {what}, got {value!r}")


def _resolve(base: Path, value: str | None) -> str | None:
    """A path in the config, relative to the config's folder."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _is_path(data: str) -> bool:
    return data not in ("fashion-mnist", "fashion_mnist", "fmnist", "digits")


def load_config(path) -> Config:
    """Read and validate the whole config; nothing is computed or written."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    where = str(path)
    for key in TOP_KEYS:
        if key not in raw:
            raise ConfigError(f"{where}: missing key {key!r}",
                              hint='e.g. out = "runs/pipeline" and one [[model]] table')
    _check_table(raw, TOP_KEYS, where)
    base = path.parent
    jobs, names = [], set()
    for i, table in enumerate(raw["model"]):
        at = f"{where}: model[{i}]"
        _check_table(table, MODEL_KEYS, at)
        if "name" not in table:
            raise ConfigError(f"{at}: missing key 'name'")
        at = f"{where}: model[{i}] ({table['name']})"
        if table["name"] in names:
            raise ConfigError(f"{at}.name: {table['name']!r} is used twice")
        names.add(table["name"])
        job = ModelJob(**table)
        if (job.model is None) == (job.graph is None):
            raise ConfigError(f"{at}: give exactly one of 'model' (a model to convert) and 'graph' (a saved graph)")
        if job.graph is not None:
            for key in ("checkpoint", "model_args", "convert"):
                if key in table:
                    raise ConfigError(f"{at}.{key}: applies to 'model' (a model to convert), not to 'graph'")
        _check_table(job.convert, CONVERT_KEYS, f"{at}.convert")
        _check_table(job.nir, NIR_KEYS, f"{at}.nir")
        _check_table(job.lava, LAVA_KEYS, f"{at}.lava")
        unknown = [f for f in job.export if f not in FORMATS]
        if unknown:
            raise ConfigError(f"{at}.export: unknown format {unknown[0]!r} (known: {', '.join(FORMATS)})")
        if len(set(job.export)) != len(job.export):
            raise ConfigError(f"{at}.export: a format is listed twice")
        if job.nir.get("target") and job.nir.get("ppn"):
            raise ConfigError(f"{at}.nir.target: a file for one consumer has no binary-spike (ppn) form")
        if job.nir and "nir" not in job.export:
            raise ConfigError(f"{at}.nir: options for a NIR export, but 'export' has no \"nir\"")
        if job.lava and "lava" not in job.export:
            raise ConfigError(f"{at}.lava: options for a Lava export, but 'export' has no \"lava\"")
        if job.model is not None and job.model not in ("demo", "demo-cnn", "demo-mlp") \
                and not job.model.startswith("timm:"):
            raise ConfigError(f"{at}.model: unknown model {job.model!r}",
                              hint="use 'demo', 'demo-cnn', 'demo-mlp' or 'timm:<model name>'")
        job.graph, job.checkpoint = _resolve(base, job.graph), _resolve(base, job.checkpoint)
        job.data_root = _resolve(base, job.data_root)
        for key in ("graph", "checkpoint"):
            value = getattr(job, key)
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"{at}.{key}: {value}: no such file")
        if _is_path(job.data):
            job.data = _resolve(base, job.data)
            if not Path(job.data).exists():
                raise ConfigError(f"{at}.data: {job.data}: no such file or folder")
        if job.convert.get("spikes_per_step", 1) > job.convert.get("levels", 8):
            raise ConfigError(f"{at}.convert.spikes_per_step: exceeds levels ({job.convert.get('levels', 8)})")
        if "energy_budget" in job.convert:
            from .convert.search import check_budget
            try:
                check_budget(job.convert.get("target_T"), job.convert["energy_budget"], _energy_model(job.convert))
            except EcmtError as err:
                raise ConfigError(f"{at}.convert: {err}", hint=err.hint) from None
        if job.hardware:
            import hw_sim
            try:
                hw_sim.plan([hw_sim.load_profile(h) for h in job.hardware], None)
            except EcmtError as err:
                raise ConfigError(f"{at}.hardware: {err}", hint=err.hint) from None
        if job.device != "cpu":
            import torch
            try:
                torch.device(job.device)
            except (RuntimeError, ValueError):
                raise ConfigError(f"{at}.device: {job.device!r} is not a device (cpu, cuda or cuda:N)") from None
        jobs.append(job)
    out = Path(_resolve(base, raw["out"]))
    try:
        check_writable(out, folder=True)
        check_writable(out / "manifest.json")
    except EcmtError as err:
        raise ConfigError(f"{where}: out: {err}", hint=err.hint) from None
    return Config(path, out, jobs)


# -- hashes and versions ------------------------------------------------------------------------------------
def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(folder) -> str:
    """One hash over a folder: every file's relative path and content, in sorted order."""
    h = hashlib.sha256()
    folder = Path(folder)
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def data_identity(spec: str, root: str | None) -> dict:
    """What the data is and its sha256 (a file's, a folder's tree; the built-in sets: their files)."""
    from . import data
    if spec == "digits":
        import sklearn.datasets
        path = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
        return {"data": spec, "path": str(path), "sha256": sha256_file(path)}
    if not _is_path(spec):
        folder = Path(root) if root else data.FASHION_MNIST_DIR
        return {"data": spec, "path": str(folder), "sha256": sha256_tree(folder)}
    p = Path(spec)
    return {"data": spec, "path": str(p), "sha256": sha256_file(p) if p.is_file() else sha256_tree(p)}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__
    out = {"ecmt": __version__, "python": sys.version.split()[0]}
    for dist in ("torch", "numpy", "timm", "nir", "nirtorch", "onnx", "onnxruntime", "h5py", "lava-nc", "lava-dl"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


# -- running ------------------------------------------------------------------------------------------------
class Stages:
    """One line per stage on stderr: '[model] stage ... (seconds)'."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def say(self, name: str, text: str) -> None:
        if not self.quiet:
            print(f"pipeline [{name}] {text}", file=sys.stderr, flush=True)

    def warn(self, name: str, text: str) -> None:
        """Said even when quiet: what the user asked for and will not get."""
        print(f"pipeline [{name}] warning: {text}", file=sys.stderr, flush=True)

    def run(self, name: str, stage: str, fn, *args, **kwargs):
        self.say(name, f"{stage} ...")
        t0 = time.time()
        result = fn(*args, **kwargs)
        self.say(name, f"{stage} done ({time.time() - t0:.1f} s)")
        return result


def _convert(job: ModelJob, quiet: bool):
    from . import data
    from .convert import calibration_batches, convert
    from .zoo import check_input, load_model
    model = load_model(job.model, job.checkpoint, **job.model_args)
    batches = calibration_batches(data.load(job.data, "train", job.data_root).sample(job.calib_samples),
                                  batch_size=128)
    check_input(model, batches[0], f"model[{job.name}].data {job.data}")
    options = {k: v for k, v in job.convert.items() if k != "energy_profile"}
    if "energy_budget" in options:
        options["energy"] = _energy_model(job.convert)
    return convert(model.to(job.device), [b.to(job.device) for b in batches], device=job.device,
                   progress=not quiet, **options).graph


def _energy_model(options: dict):
    """hw_sim's energy model for `convert.energy_budget`, on `convert.energy_profile`."""
    import hw_sim
    return hw_sim.EnergyRatio(options.get("energy_profile", "cmos45-fp32"))


def accuracy(spiking, split, T: int, device: str) -> dict:
    """ANN accuracy (the graph's analog mode) and SNN accuracy at every t <= T."""
    from .evaluate import ann_accuracy, snn_accuracy
    return {"samples": len(split), "T": T,
            "ann_accuracy": ann_accuracy(spiking, split, 256, progress=False, device=device),
            "snn_accuracy": snn_accuracy(spiking, split, T, batch_size=256, progress=False, device=device)}


def speck_line(speck: dict) -> str:
    verdict = "fits" if speck["fits"] else "unknown" if speck["fits"] is None else "does not fit"
    return f"Speck ({speck['chip']}, sinabs' check): {verdict}" + (f": {speck['reason']}" if speck.get("reason") else "")


def exported_graph(graph, unit_thresholds: bool = False, ppn: bool = False):
    """The graph a NIR file with these options holds (its executor is the reference)."""
    from .ir import expand_ppn
    from .ir.unit import unit_thresholds as unit
    if unit_thresholds:
        graph = unit(graph)[0]
    return expand_ppn(graph) if ppn else graph


def export_and_verify(graph, fmt: str, path: Path, x, T: int, options: dict, lava_samples: int = 2,
                      consumers: bool = True, speck: dict | None = None) -> tuple[str, list]:
    """Write one export and verify it in its runtime(s) on x; returns (what to print
    about the export, [Verification, ...]).  For a NIR file that snnTorch, Norse and
    sinabs can run, a `speck` dict receives sinabs' Speck fitness verdict."""
    from exporters import verify
    if fmt == "onnx":
        from exporters.onnx import export
        export(graph, path)
        return f"wrote {path}", [verify.verify_onnx(graph, path, x, T)]
    if fmt == "nir":
        from exporters.nir import export
        unit, ppn, neuron = options.get("unit_thresholds", False), options.get("ppn", False), options.get("neuron", "IF")
        target = options.get("target")
        summary = export(graph, path, ppn=ppn, neuron=neuron, unit_thresholds=unit, target=target)
        written = exported_graph(graph, unit, ppn)
        # (a file for one consumer is for that library only: ecmt's node map runs the others)
        checks = [] if target else [verify.verify_nir(written, path, x, T)]
        why_not = verify.consumer_runnable(written)
        if consumers and options.get("consumers", True) and why_not is None:
            import tempfile
            reference = verify.executor_estimates(graph, x, T)
            with tempfile.TemporaryDirectory() as tmp:
                for consumer in verify.CONSUMERS:
                    # each library runs the file written for it (--nir-target), as a user would
                    file = path
                    if target != consumer:
                        file = Path(tmp) / f"{consumer}.nir"
                        export(graph, file, unit_thresholds=unit, target=consumer)
                    checks.append(verify.verify_consumer(consumer, file, x, T, reference))
            if speck is not None and neuron == "IF" and target is None:
                speck.update(verify.speck_fitness(path))
        return f"{summary}\nwrote {path}", checks
    from exporters.lava import export
    layout = export(graph, path, options.get("layout", "auto"))
    checks = [verify.verify_lava(graph, path, x[:lava_samples], T)]
    if layout == "netx":
        checks.append(verify.verify_netx(graph, path, x[:lava_samples], T))
    return f"Lava HDF5 export in the {layout} layout\nwrote {path}", checks


def run_model(job: ModelJob, out: Path, stages: Stages, quiet: bool) -> dict:
    import hw_sim

    from . import data
    from .ir import load_graph, save_graph
    from .runtime import SpikingModel
    folder = out / job.name
    entry: dict = {"inputs": {}, "options": dataclasses.asdict(job), "exports": {}}
    if job.graph is not None:
        entry["inputs"]["graph"] = {"path": job.graph, "sha256": sha256_file(job.graph)}
    elif job.checkpoint is not None:
        entry["inputs"]["checkpoint"] = {"path": job.checkpoint, "sha256": sha256_file(job.checkpoint)}
    else:
        from .zoo import DEMOS
        ckpt = DEMOS[job.model].checkpoint if job.model in DEMOS else None
        entry["inputs"]["checkpoint"] = ({"path": str(ckpt), "sha256": sha256_file(ckpt)} if ckpt else
                                         {"path": None, "sha256": None, "note": "timm's initial weights"})
    entry["inputs"]["data"] = data_identity(job.data, job.data_root)
    test = data.load(job.data, "test", job.data_root)
    if job.graph is not None:
        graph = stages.run(job.name, f"load {job.graph}", load_graph, job.graph)
    else:
        graph = stages.run(job.name, f"convert {job.model} ({job.convert or 'defaults'})", _convert, job, quiet)
    data.check_shape(test, graph.shapes[graph.input.name], f"model[{job.name}].data {job.data}")
    graph_path = folder / f"{job.name}.ecmt"
    save_graph(graph, graph_path)
    entry["graph"] = {"path": str(graph_path), "sha256": sha256_file(graph_path)}

    split = test.take(job.eval_samples)
    result = stages.run(job.name, f"evaluate on {len(split)} images, T = {job.T}", accuracy,
                        SpikingModel.from_graph(graph), split, job.T, job.device)
    entry["accuracy"] = result
    stages.say(job.name, f"accuracy: ANN {100 * result['ann_accuracy']:.2f}%, SNN at T = {job.T} "
                         f"{100 * result['snn_accuracy'][-1]:.2f}%")

    x = test.take(job.verify_samples).images
    for fmt in job.export:
        path = folder / f"{job.name}{FORMATS[fmt]}"
        options = {"nir": job.nir, "lava": job.lava}.get(fmt, {})
        speck: dict = {}
        said, checks = stages.run(job.name, f"export {fmt} and verify", export_and_verify, graph, fmt, path, x,
                                  job.T, options, job.lava_samples, speck=speck)
        for line in said.splitlines() + [c.line() for c in checks]:
            stages.say(job.name, line)
        entry["exports"][fmt] = {"path": str(path), "sha256": sha256_file(path), "options": options,
                                 "verification": [c.to_json() for c in checks]}
        if speck:
            stages.say(job.name, speck_line(speck))
            entry["exports"][fmt]["speck"] = speck

    if job.hardware:
        # A chip the network does not fit is no failure of the pipeline: the manifest says why
        # (layer, resource, by how much, what would fit) and the report covers the others.
        fitting, refused = [], {}
        for h in job.hardware:
            try:
                hw_sim.check_fit(graph, hw_sim.load_profile(h))
                fitting.append(h)
            except hw_sim.MappingError as err:
                refused[h] = str(err) + (f" ({err.hint})" if err.hint else "")
                stages.warn(job.name, f"energy on {h}: the network does not fit: {refused[h]}")
        entry["energy"] = {"profiles": fitting, "refused": refused}
        if fitting:
            energy_split = test.take(job.energy_samples)
            report = stages.run(job.name, f"energy on {len(energy_split)} images ({', '.join(fitting)})",
                                hw_sim.simulate, graph, energy_split.images, job.T, fitting, mode=None,
                                labels=energy_split.labels, progress=False, device=job.device)
            paths = report.write(folder / "energy")
            entry["energy"].update({"report": str(folder / "energy"),
                                    "files": {str(p): sha256_file(p) for p in paths}})
    return entry


def run(config_path, quiet: bool = False) -> int:
    """Run the pipeline; 0 when every export agrees within its tolerance, else 1."""
    config = load_config(config_path)
    stages = Stages(quiet)
    manifest = {"versions": versions(), "config": {"path": str(config.path), "sha256": sha256_file(config.path)},
                "out": str(config.out), "models": {}}
    failures = []
    for job in config.models:
        entry = run_model(job, config.out, stages, quiet)
        manifest["models"][job.name] = entry
        for fmt, e in entry["exports"].items():
            failures += [f"model {job.name}, export {c['export']} ({e['path']}): {c['detail']}"
                         for c in e["verification"] if not c["ok"]]
    manifest["ok"] = not failures
    manifest["failures"] = failures
    write_text(config.out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {config.out / 'manifest.json'}")
    for f in failures:
        print(f"ecmt: pipeline: verification failed: {f}", file=sys.stderr)
    return 1 if failures else 0

