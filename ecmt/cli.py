"""Command line: ecmt {demo, convert, eval, energy, export, inspect, pipeline, train-demo}.

User mistakes (missing files, bad options, unsupported models) print one line
and a hint and exit with status 2; anything else is a bug and shows its traceback.
Under ``torchrun`` (docs/distributed.md) every rank runs the command on its
share of the data and only rank 0 prints and writes files.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path


from . import distributed
from .atomic import check_writable, write_text
from .errors import EcmtError


def say(*args) -> None:
    """Print on rank 0 only."""
    if distributed.is_main():
        print(*args)


# -- option types: every range is checked when the command line is read, before any work --
def count(value: str) -> int:
    """A whole number >= 1 (time steps, images, batch sizes, levels)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def quantile(value: str) -> float:
    try:
        q = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.5 < q <= 1:           # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in (0.5, 1] (the share of activations below th_pos), got {value}")
    return q


def _finite_positive(value: str, what: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 < x < float("inf"):       # also refuses nan
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return x


def positive(value: str) -> float:
    return _finite_positive(value, "a number > 0")


def budget(value: str) -> float:
    return _finite_positive(value, "> 0 (SNN energy over one ANN forward)")


def device(value: str) -> str:
    import torch
    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device (cpu, cuda or cuda:N)") from None
    return value


def names(value: str) -> list[str]:
    """A comma-separated list with at least one name."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{value!r} names nothing (a comma-separated list)")
    return items


def _model_kwargs(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise EcmtError(f"--model-arg {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _add_data_args(p: argparse.ArgumentParser, calibration: bool = False):
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist (default), digits, an image folder, or a .pt/.safetensors "
                        "file with 'images' and 'labels'")
    p.add_argument("--data-root", help="folder with the Fashion-MNIST IDX files "
                                       "(default /usr/share/datasets/fashion-mnist)")
    if calibration:
        p.add_argument("--calib-data", help="calibration data if not the training split of --data")
        p.add_argument("--calib-samples", type=count, default=512,
                       help="calibration images, taken from the training split (default 512)")


def _add_device_arg(p: argparse.ArgumentParser):
    p.add_argument("--device", type=device, default="cpu", help="cpu (default) or cuda; under torchrun each rank "
                                                   "uses cuda:<local rank>")


def _add_convert_args(p: argparse.ArgumentParser):
    p.add_argument("--levels", type=count, default=8, help="MT levels per sign (default 8)")
    p.add_argument("--spikes-per-step", type=count, default=1, dest="spikes_per_step", metavar="K",
                   help="levels an MT neuron may send together in one step, as one graded value "
                        "(1..levels; default 1, the paper's neuron; docs/method.md §2)")
    p.add_argument("--quantile", type=quantile, default=0.99, help="calibration quantile p (default 0.99)")
    p.add_argument("--threshold-scale", type=positive, default=1.0, dest="threshold_scale", metavar="S",
                   help="multiply every calibrated threshold by S (default 1; the multi-level operating point "
                        "is --threshold-scale 0.0625 --levels 12 --spikes-per-step 4, docs/conversion.md)")
    p.add_argument("--per-channel", action="store_true", help="one threshold per channel")
    p.add_argument("--target-T", type=count, dest="target_T",
                   help="search each neuron's threshold and levels for the best estimate at this T "
                        "(calibration data only; docs/conversion.md)")
    p.add_argument("--energy-budget", type=budget, dest="energy_budget", metavar="X",
                   help="with --target-T: keep the full-mode energy up to step T within X times the ANN's "
                        "(hw_sim on calibration images); the search also picks levels and k")
    p.add_argument("--energy-profile", default="cmos45-fp32", dest="energy_profile", metavar="NAME",
                   help="hardware profile of --energy-budget: a name in hw_sim/profiles or a .toml path "
                        "(default cmos45-fp32)")


def _calibration(args):
    from . import data
    from .convert import calibration_batches
    if args.calib_data:
        split = data.load(args.calib_data, "train", args.data_root)
    else:
        split = data.load(args.data, "train", args.data_root)
    # A fixed random subset of the training split: never the evaluation split.
    return calibration_batches(split.sample(args.calib_samples), batch_size=128)


def _convert(args, model):
    from .convert import convert
    from .zoo import check_input
    device = distributed.device_for(args.device)
    batches = _calibration(args)
    check_input(model, batches[0], f"--calib-data {args.calib_data}" if args.calib_data else f"--data {args.data}")
    return convert(model.to(device), [b.to(device) for b in batches], levels=args.levels,
                   spikes_per_step=args.spikes_per_step, quantile=args.quantile,
                   threshold_scale=args.threshold_scale, per_channel=args.per_channel,
                   target_T=args.target_T, energy_budget=args.energy_budget, energy=_energy_model(args),
                   progress=not args.quiet, device=device)


def _energy_model(args):
    """hw_sim's energy model on --energy-profile for --energy-budget (the profile read now)."""
    if args.energy_budget is None:
        return None
    import hw_sim
    return hw_sim.EnergyRatio(args.energy_profile)


def cmd_convert(args):
    from .ir import MTNeuron, save_graph
    from .zoo import load_model
    check_writable(args.output)             # before the work, not after it
    if args.spikes_per_step > args.levels:
        raise EcmtError(f"--spikes-per-step {args.spikes_per_step} exceeds --levels {args.levels}",
                        hint="a neuron can send at most all of its levels in one step")
    if args.energy_budget is not None:        # --energy-budget without --target-T, unknown profile: before the work
        from .convert.search import check_budget
        check_budget(args.target_T, args.energy_budget, _energy_model(args))
    model = load_model(args.model, args.checkpoint, **_model_kwargs(args.model_arg))
    spiking = _convert(args, model)
    if distributed.is_main():
        save_graph(spiking.graph, args.output)
    say(f"wrote {args.output}: {len(spiking.graph)} nodes, {len(spiking.graph.of_kind(MTNeuron))} MT neurons")


def accuracy_table(ann: float, snn: list[float]) -> str:
    lines = [f"ANN accuracy: {100 * ann:.2f}%", "", f"{'t':>4}  {'SNN acc':>8}  {'ANN - SNN':>10}"]
    for t, acc in enumerate(snn, 1):
        lines.append(f"{t:>4}  {100 * acc:>7.2f}%  {100 * (ann - acc):>9.2f}")
    return "\n".join(lines)


def evaluate(spiking, split, T: int, batch_size: int, quiet: bool, device="cpu") -> dict:
    """ANN accuracy (the graph's analog mode) and SNN accuracy at every t."""
    from .evaluate import ann_accuracy, snn_accuracy
    device = distributed.device_for(device)
    t0 = time.time()
    ann = ann_accuracy(spiking, split, batch_size, progress=not quiet, device=device)
    t1 = time.time()
    snn = snn_accuracy(spiking, split, T, batch_size=batch_size, progress=not quiet, device=device)
    t2 = time.time()
    return {"samples": len(split), "T": T, "ann_accuracy": ann, "snn_accuracy": snn,
            "ann_seconds": round(t1 - t0, 2), "snn_seconds": round(t2 - t1, 2),
            "processes": distributed.world()}


def cmd_eval(args):
    from . import data
    from .runtime import SpikingModel
    from . import memory
    if args.json:
        check_writable(args.json)
    spiking = SpikingModel.load(args.graph, capture=not args.node_by_node)
    split = data.load(args.data, "test", args.data_root).take(args.limit)
    data.check_shape(split, spiking.graph.shapes[spiking.graph.input.name], f"--data {args.data}")
    memory.check(memory.run_bytes(spiking.graph, min(args.batch_size, len(split)), args.T),
                 f"ecmt eval -T {args.T} --batch-size {args.batch_size}", "-T or --batch-size",
                 distributed.device_for(args.device))
    result = evaluate(spiking, split, args.T, args.batch_size, args.quiet, args.device)
    say(accuracy_table(result["ann_accuracy"], result["snn_accuracy"]))
    if args.json and distributed.is_main():
        write_text(args.json, json.dumps(result, indent=2) + "\n")


def _energy_summary(report) -> str:
    """Per profile and mode: energy and ratio at the operating point (when the accuracy is
    known) and at T, latency at T, and the range of the energy over the constants' ranges."""
    d = report.data
    T, t_op = d["T"], d["operating_point"]["t"]
    rows = []
    if d.get("ann_accuracy") is not None:
        rows.append(f"operating point: t = {t_op}, the first step within {100 * d['operating_point']['within']:g} "
                    f"point of the ANN's {100 * d['ann_accuracy']:.2f}% (SNN {100 * d['accuracy'][t_op - 1]:.2f}%)"
                    if t_op else f"operating point: no t <= {T} is within "
                    f"{100 * d['operating_point']['within']:g} point of the ANN's {100 * d['ann_accuracy']:.2f}%")
    at_op = f"{f'uJ t={t_op}':>11}{'ratio':>8}" if t_op else ""
    rows.append(f"{'profile':<14}{'mode':<7}{at_op}{f'uJ T={T}':>11}{'ratio':>8}{'latency ms':>12}"
                f"{'range uJ (min-max)':>22}")
    for r in report.hardware:
        op = (f"{1e6 * r['energy_per_t_j'][t_op - 1]:>11.4g}{r['energy_ratio_per_t'][t_op - 1]:>8.3f}"
              if t_op else "")
        lo, _, hi = r["range"]["energy_j"]
        rows.append(f"{r['profile']['name']:<14}{r['mode']:<7}{op}{1e6 * r['total_j']:>11.4g}"
                    f"{r['energy_ratio']:>8.3f}{1e3 * r['latency_s']:>12.4g}{f'{1e6 * lo:.3g}-{1e6 * hi:.3g}':>22}")
    for fmt, dep in d.get("deployed", {}).items():          # profiles deployed in a fixed-point format
        users = sorted({r["profile"]["name"] for r in report.hardware if r.get("deployment") == fmt})
        rows.append(f"accuracy at T={T} ({', '.join(users)}): float {100 * d['accuracy'][T - 1]:.2f}%, "
                    f"deployed ({dep['format']}) {100 * dep['accuracy'][T - 1]:.2f}%")
    return "\n".join(rows)


def cmd_energy(args):
    import hw_sim
    from hw_sim.counting import energy_bytes

    from . import data
    from .ir import load_graph
    check_writable(args.report, folder=True)
    unknown = [m for m in args.mode or () if m not in hw_sim.MODES]
    if unknown:
        raise EcmtError(f"--mode {','.join(args.mode)}: unknown mode {unknown[0]!r} "
                        f"(known: {', '.join(hw_sim.MODES)})")
    # every profile (and the pairing of profiles and modes) is read and checked before any work
    hw_sim.plan([hw_sim.load_profile(name) for name in args.hw], args.mode)
    if args.neurobench:
        from . import neurobench            # a missing NeuroBench is reported before any work
    from . import memory
    graph = load_graph(args.graph)
    split = data.load(args.data, "test", args.data_root).take(args.limit)
    data.check_shape(split, graph.shapes[graph.input.name], f"--data {args.data}")
    batch = min(256, len(split))            # hw_sim.simulate's batches; NeuroBench runs the same ones
    need = energy_bytes(graph, batch, args.T)
    if args.neurobench:
        need = max(need, memory.run_bytes(graph, batch, args.T) + neurobench.hook_bytes(graph, batch, args.T))
    memory.check(need, f"ecmt energy -T {args.T}", "-T", distributed.device_for(args.device))
    report = hw_sim.simulate(graph, split.images, args.T, args.hw, mode=args.mode, labels=split.labels,
                             progress=not args.quiet, device=distributed.device_for(args.device))
    if distributed.is_main():
        paths = report.write(args.report)
        print(_energy_summary(report))
        if args.neurobench:
            paths.append(_neurobench(graph, split, args.T, batch, report, args))
        print(f"wrote {', '.join(str(p) for p in paths)}")


def _neurobench(graph, split, T: int, batch: int, report, args) -> Path:
    """NeuroBench's metrics of the same run beside hw_sim's counts: printed, and written to
    neurobench.json in the report folder."""
    from importlib.metadata import version

    from . import neurobench
    nb = neurobench.run(graph, split.images, split.labels, T, batch_size=batch,
                        device=distributed.device_for(args.device))
    hw = {**neurobench.hw_sim_metrics(graph, {layer["name"]: layer for layer in report.data["counts"]["layers"]}),
          "ClassificationAccuracy": report.data["accuracy"][T - 1]}
    print(f"\nNeuroBench {version('neurobench')} beside hw_sim, per inference ({len(split)} images, T = {T}; "
          "docs/energy.md says where the definitions differ):")
    print(neurobench.table(nb, hw))
    path = Path(args.report) / "neurobench.json"
    write_text(path, json.dumps({"neurobench": version("neurobench"), "T": T, "samples": len(split),
                                 "neurobench_metrics": nb, "hw_sim": hw,
                                 "definitions": neurobench.DEFINITIONS}, indent=1) + "\n")
    return path


def _export(graph, to: str, output, unroll=None, ppn=False, neuron="IF", unit_thresholds=False,
            lava_layout="auto", nir_target=None) -> str:
    """Write one export; return what to print about it."""
    if to == "onnx":
        from exporters.onnx import export
        export(graph, output, unroll=unroll)
        return f"wrote {output}"
    if to == "nir":
        from exporters.nir import export
        summary = export(graph, output, ppn=ppn, neuron=neuron, unit_thresholds=unit_thresholds, target=nir_target)
        return f"{summary}\nwrote {output}"
    from exporters.lava import export
    return f"Lava HDF5 export in the {export(graph, output, lava_layout)} layout (docs/lava.md)\nwrote {output}"


# File endings each export format is written under (NIR and Lava files are both HDF5).
EXPORT_SUFFIXES = {"onnx": (".onnx",), "nir": (".nir",), "lava": (".h5", ".hdf5", ".net")}


def cmd_export(args):
    from .ir import load_graph
    suffix = Path(args.output).suffix.lower()
    if suffix not in EXPORT_SUFFIXES[args.to]:
        raise EcmtError(f"-o {args.output}: a {args.to} export is written to a "
                        f"{' / '.join(EXPORT_SUFFIXES[args.to])} file, not {suffix or 'a file without an ending'}",
                        hint=f"name the output e.g. model{EXPORT_SUFFIXES[args.to][0]}, or pick the matching --to")
    if args.unroll is not None and args.to != "onnx":
        raise EcmtError("--unroll applies to --to onnx only")
    for flag, given in (("--ppn", args.ppn), ("--nir-neuron", args.nir_neuron != "IF"),
                        ("--unit-thresholds", args.unit_thresholds), ("--nir-target", args.nir_target)):
        if given and args.to != "nir":
            raise EcmtError(f"{flag} applies to --to nir only")
    if args.nir_target and (args.ppn or args.nir_neuron != "IF"):
        raise EcmtError("--nir-target writes the file for one library: it sets the neuron node and has no --ppn form")
    if args.lava_layout != "auto" and args.to != "lava":
        raise EcmtError("--lava-layout applies to --to lava only")
    if Path(args.output).resolve() == Path(args.graph).resolve():
        raise EcmtError(f"-o {args.output}: is the input graph; an export would overwrite it")
    if args.verify and args.unroll is not None:
        raise EcmtError("--verify checks the step-by-step ONNX form; leave out --unroll")
    check_writable(args.output)
    graph = load_graph(args.graph)
    if not args.verify:
        print(_export(graph, args.to, args.output, args.unroll, args.ppn, args.nir_neuron, args.unit_thresholds,
                      args.lava_layout, args.nir_target))
        return 0
    from . import data
    from .pipeline import export_and_verify, speck_line
    x = data.load(args.data, "test", args.data_root).take(args.verify_samples)
    data.check_shape(x, graph.shapes[graph.input.name], f"--data {args.data}")
    options = ({"unit_thresholds": args.unit_thresholds, "ppn": args.ppn, "neuron": args.nir_neuron,
                "target": args.nir_target}
               if args.to == "nir" else {"layout": args.lava_layout} if args.to == "lava" else {})
    speck: dict = {}
    said, checks = export_and_verify(graph, args.to, Path(args.output), x.images, args.T, options,
                                     lava_samples=args.verify_samples, speck=speck)
    print(said)
    for c in checks:
        print(c.line())
    if speck:
        print(speck_line(speck))
    return 0 if all(c.ok for c in checks) else 1


def cmd_pipeline(args):
    from .pipeline import run
    return run(args.config, quiet=args.quiet)


def cmd_inspect(args):
    from .ir import load_graph, summarize
    print(summarize(load_graph(args.graph)))


def cmd_train_demo(args):
    from .zoo import train_demo
    if args.output is not None:
        check_writable(args.output)
    info = train_demo(args.output, model=args.model, epochs=args.epochs, limit=args.limit, seed=args.seed,
                      progress=not args.quiet, data_root=args.data_root)
    print(f"wrote {info['checkpoint']}: test accuracy {100 * info['test_accuracy']:.2f}% "
          f"in {info['train_seconds']:.0f} s")


def demo_table(ann: float, columns: dict[str, list[float]]) -> str:
    """ANN accuracy, then one column of SNN accuracy per converted graph at every t."""
    width = max(12, *(len(name) for name in columns)) + 2
    lines = [f"ANN accuracy: {100 * ann:.2f}%", "",
             f"{'t':>4}" + "".join(f"{name:>{width}}" for name in columns)]
    for t in range(len(next(iter(columns.values())))):
        lines.append(f"{t + 1:>4}" + "".join(f"{f'{100 * acc[t]:.2f}%':>{width}}" for acc in columns.values()))
    return "\n".join(lines)


def _operating_line(name: str, report) -> str:
    """One line: where the SNN first comes within a point of the ANN, and its energy there."""
    d = report.data
    t_op = d["operating_point"]["t"]
    if not t_op:
        return (f"{name}: no t <= {d['T']} within {100 * d['operating_point']['within']:g} point of the ANN "
                f"({100 * d['ann_accuracy']:.2f}%)")
    energy = ", ".join(f"{r['profile']['name']} {r['energy_ratio_per_t'][t_op - 1]:.3f}x ANN"
                       for r in report.hardware if r["mode"] == "full")
    return (f"{name}: t = {t_op}, {100 * d['accuracy'][t_op - 1]:.2f}% (ANN {100 * d['ann_accuracy']:.2f}%); "
            f"energy up to t: {energy}")


def cmd_demo(args):
    from . import data
    from .convert import MULTI_LEVEL, convert
    from .ir import save_graph
    from .zoo import DEMO_CHECKPOINT, load_model, train_demo
    out = Path(args.out)
    check_writable(out, folder=True)
    out.mkdir(parents=True, exist_ok=True)
    if not DEMO_CHECKPOINT.exists():
        if distributed.active():
            raise EcmtError("the demo checkpoint is missing", hint="train it first: ecmt train-demo")
        print("demo: no committed checkpoint; training the demo ViT (a few minutes)")
        train_demo(DEMO_CHECKPOINT, progress=not args.quiet, data_root=args.data_root)
    model = load_model("demo")
    args.data, args.calib_data = "fashion-mnist", None
    t0 = time.time()
    paper = _convert(args, model)
    say(f"demo: converted the demo ViT in {time.time() - t0:.1f} s (the paper's neuron: quantile thresholds, "
        f"{args.levels} levels, k = {args.spikes_per_step})")
    t0 = time.time()
    device = distributed.device_for(args.device)
    multi = convert(model.to(device), [b.to(device) for b in _calibration(args)], quantile=args.quantile,
                    progress=not args.quiet, device=device, **MULTI_LEVEL)
    multi_name = (f"thresholds x {MULTI_LEVEL['threshold_scale']:g}, {MULTI_LEVEL['levels']} levels, "
                  f"k = {MULTI_LEVEL['spikes_per_step']}")
    say(f"demo: converted it again in {time.time() - t0:.1f} s (the multi-level operating point: {multi_name})")
    graphs = {"demo_vit": paper, "demo_vit_multilevel": multi}
    if distributed.is_main():
        for name, spiking in graphs.items():
            save_graph(spiking.graph, out / f"{name}.ecmt")
    say(f"demo: wrote {', '.join(str(out / f'{name}.ecmt') for name in graphs)}")
    split = data.fashion_mnist("test", args.data_root).take(args.limit)
    from .evaluate import ann_accuracy, snn_accuracy
    t0 = time.time()
    ann = ann_accuracy(paper, split, 256, progress=not args.quiet, device=device)
    results = {"samples": len(split), "T": args.T, "ann_accuracy": ann, "processes": distributed.world()}
    for name, spiking in graphs.items():
        results[name] = {"snn_accuracy": snn_accuracy(spiking, split, args.T, 256, progress=not args.quiet,
                                                      device=device)}
    results["seconds"] = round(time.time() - t0, 1)
    columns = {"SNN, paper": results["demo_vit"]["snn_accuracy"],
               "SNN, multi-level": results["demo_vit_multilevel"]["snn_accuracy"]}
    say(f"demo: Fashion-MNIST test, {len(split)} images; SNN accuracy after t steps\n"
        f"  paper: the paper's MT neuron (quantile thresholds, {args.levels} levels, one level per step)\n"
        f"  multi-level: {multi_name} (up to {MULTI_LEVEL['spikes_per_step']} levels in one graded spike)\n"
        + demo_table(ann, columns))
    if distributed.is_main():
        write_text(out / "accuracy.json", json.dumps(results, indent=2) + "\n")
    say(f"demo: wrote {out / 'accuracy.json'}")
    if distributed.is_main():
        for to, suffix in (("onnx", "onnx"), ("nir", "nir"), ("lava", "h5")):
            t0 = time.time()
            said = _export(paper.graph, to, out / f"demo_vit.{suffix}").splitlines()[-1]
            print(f"demo: {to} export, {said} ({time.time() - t0:.1f} s)")

    import hw_sim
    energy_split = split.take(args.energy_samples)
    lines = []
    for (name, spiking), label in zip(graphs.items(), ("paper", "multi-level")):
        report = hw_sim.simulate(spiking.graph, energy_split.images, args.T, ["cmos45-fp32", "loihi"],
                                 mode=None, labels=energy_split.labels, progress=not args.quiet,
                                 device=device)
        if distributed.is_main():
            paths = report.write(out / ("energy" if name == "demo_vit" else f"energy_{label}"))
            print(f"demo: energy of {label} on {len(energy_split)} test images, T={args.T} (per inference)\n"
                  f"{_energy_summary(report)}\ndemo: wrote {', '.join(str(p) for p in paths)}")
            lines.append(_operating_line(label, report))
    say("demo: operating points (the first t within a point of the ANN)\n  " + "\n  ".join(lines))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecmt", description="Convert Vision Transformers to "
                                     "spiking networks (ECMT), export them, estimate their energy.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train-or-load the demo ViT, convert it with the paper's neuron and at "
                                    "the multi-level operating point, evaluate per step, export, energy reports")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("-T", type=count, default=8, help="time steps (default 8)")
    # 2000: the accuracy table costs about 7 s per 1000 images (both SNNs, T = 8, 2 cores); all
    # 10,000 would be most of the demo's time outside the energy reports
    p.add_argument("--limit", type=count, default=2000,
                   help="evaluate on the first N test images (default 2000; 10000: the whole test split)")
    p.add_argument("--data-root", help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--calib-samples", type=count, default=512, help="calibration images (default 512)")
    # 64: Loihi's mesh model schedules every sample in detail (about 30 ms per image and
    # step for the demo ViT on 25 chips), and the demo should end in about two minutes
    p.add_argument("--energy-samples", type=count, default=64,
                   help="test images replayed for the energy reports (default 64)")
    _add_convert_args(p)
    _add_device_arg(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("convert", help="convert a trained model to a spiking graph file")
    p.add_argument("--model", default="demo", help="'demo' (ViT), 'demo-cnn', 'demo-mlp' or 'timm:<name>' (default demo)")
    p.add_argument("--checkpoint", help="state dict (.safetensors, or a torch file read weights-only)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="keyword for timm.create_model, e.g. img_size=32 (repeatable)")
    _add_data_args(p, calibration=True)
    _add_convert_args(p)
    p.add_argument("-o", "--output", required=True, help="graph file to write (.ecmt)")
    _add_device_arg(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("eval", help="ANN accuracy and SNN accuracy at every t <= T")
    p.add_argument("graph", help="graph file (.ecmt)")
    _add_data_args(p)
    p.add_argument("-T", type=count, default=16, help="time steps (default 16)")
    p.add_argument("--limit", type=count, help="first N test images only")
    p.add_argument("--batch-size", type=count, default=256)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--node-by-node", action="store_true", dest="node_by_node",
                   help="run the reference executor, node by node, instead of the fast step (the same "
                        "numbers up to rounding; docs/conversion.md)")
    _add_device_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("energy", help="count events on real inputs; energy and latency reports")
    p.add_argument("graph", help="graph file (.ecmt)")
    _add_data_args(p)
    p.add_argument("-T", type=count, default=4, help="time steps (default 4)")
    p.add_argument("--hw", type=names, default="cmos45-fp32,loihi",
                   help="comma-separated hardware profiles: names in hw_sim/profiles or .toml paths "
                        "(default cmos45-fp32,loihi)")
    p.add_argument("--mode", type=names,
                   help="counting modes: full, paper (CMOS profiles only) or both (default: full on every "
                        "profile, paper on the CMOS ones)")
    p.add_argument("--limit", type=count, default=256, help="test images to replay (default 256)")
    p.add_argument("--report", required=True, help="folder for report.json, report.md and report.html")
    p.add_argument("--neurobench", action="store_true",
                   help="also run NeuroBench's metrics on the same images and print them beside hw_sim's "
                        "counts (and write neurobench.json)")
    _add_device_arg(p)
    p.set_defaults(func=cmd_energy)

    p = sub.add_parser("export", help="export a graph to ONNX, NIR or Lava")
    p.add_argument("graph", help="graph file (.ecmt)")
    p.add_argument("--to", required=True, choices=["onnx", "nir", "lava"], help="target format")
    p.add_argument("-o", "--output", required=True,
                   help="file to write: .onnx (onnx), .nir (nir), .h5 / .hdf5 / .net (lava)")
    p.add_argument("--unroll", type=count, help="ONNX: T steps in one graph (input once, [T, B, ...] out)")
    p.add_argument("--ppn", action="store_true",
                   help="NIR: binary-spike form (parallel parameter normalization, docs/nir.md)")
    p.add_argument("--nir-neuron", choices=("IF", "LIF"), default="IF",
                   help="NIR: the neuron node that stands for MT neurons in consumers that ignore ecmt's "
                        "metadata (LIF for snnTorch 1.0.0; default IF)")
    p.add_argument("--nir-target", choices=("norse", "snntorch", "sinabs"),
                   help="NIR: write the file for one consumer library: MT neurons and max pools as standard "
                        "subgraphs it computes like the executor (exact in Norse and snnTorch; docs/nir.md)")
    p.add_argument("--lava-layout", choices=("auto", "netx", "extended"), default="auto",
                   help="Lava: netx (lava-dl netx's own sigma-delta blocks; ReLU MLPs and CNNs), extended "
                        "(ecmt's processes, any graph) or auto (netx where it can; default)")
    p.add_argument("--unit-thresholds", action="store_true",
                   help="NIR: for consumers whose spikes are 1: move thresholds into the weights where exact, "
                        "and restore the other spikes' size with inserted standard nodes")
    p.add_argument("--verify", action="store_true",
                   help="run the export in its runtime against the executor on --verify-samples images of "
                        "--data and print the agreement; exit status 1 on a disagreement (docs/pipeline.md)")
    _add_data_args(p)
    p.add_argument("--verify-samples", type=count, default=8, help="--verify: images (default 8)")
    p.add_argument("-T", type=count, default=4, help="--verify: time steps (default 4)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("pipeline", help="checkpoint -> graph -> accuracy -> verified exports -> energy -> "
                                        "manifest, from one TOML config (docs/pipeline.md)")
    p.add_argument("config", help="pipeline config (.toml)")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("inspect", help="summarize a graph file")
    p.add_argument("graph", help="graph file (.ecmt)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("train-demo", help="train a demo model (ViT or CNN) with its seeded recipe")
    p.add_argument("--model", choices=("demo", "demo-cnn", "demo-mlp"), default="demo",
                   help="demo: the ViT (default); demo-cnn: the ResNet-style CNN; demo-mlp: a ReLU MLP")
    p.add_argument("-o", "--output", default=None, help="checkpoint to write (default: the packaged one)")
    p.add_argument("--epochs", type=count, help="override the recipe's epochs")
    p.add_argument("--limit", type=count, help="train on the first N images only")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument("--data-root", help="folder with the Fashion-MNIST IDX files")
    p.set_defaults(func=cmd_train_demo)
    return parser


def as_flags(text: str, parser: argparse.ArgumentParser) -> str:
    """A library message as a CLI user reads it: each `parameter` (how ecmt's library names
    an argument of its functions) becomes the command-line flag that sets it, where one does."""
    flags = {}
    for sub in parser._subparsers._group_actions[0].choices.values() if parser._subparsers else ():
        for action in sub._actions:
            if action.option_strings:
                flags.setdefault(action.dest, action.option_strings[-1])
    return re.sub(r"`(\w+)`", lambda m: flags.get(m.group(1), m.group(0)), text)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    where = ""
    try:
        distributed.init(getattr(args, "device", "cpu"))
        if distributed.active():
            where = f" (rank {distributed.rank()} of {distributed.world()})"
            distributed.check_fault_injection()
        status = args.func(args) or 0
    except EcmtError as err:
        print(f"ecmt: error{where}: {as_flags(str(err), parser)}", file=sys.stderr)
        if err.hint:
            print(f"hint: {as_flags(err.hint, parser)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ecmt: interrupted", file=sys.stderr)
        return 130
    except Exception:
        if not distributed.active():
            raise
        # Under torchrun: name the failing rank; its non-zero exit makes torchrun stop the others.
        import traceback
        print(f"ecmt: rank {distributed.rank()} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return 1
    finally:
        distributed.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
