"""ecmt's NIR files in the field's NIR libraries as shipped, against ecmt's executor.

    python benchmarks/consumers.py     # writes docs/benchmarks/consumers.{md,json}
    python benchmarks/consumers.py --only demo-cnn:target:sinabs    # re-measure chosen rows

With --only MODEL:VARIANT:CONSUMER (repeatable) only those rows (and their variant's
executor row, which the agreement needs) are measured again; every other row keeps the
figures of the committed docs/benchmarks/consumers.json, and the table says which rows
come from which run.

For the demo MLP and the demo CNN (paper calibration on 512 training images) and
three exports of each:

* graded: the default file (MT neurons as IF nodes with ecmt metadata);
* unit: the same graph with thresholds moved into the weights where exact, and a
  standard 1x1 Conv2d / Affine after every other MT neuron that multiplies a
  consumer's unit spike by the threshold (`--unit-thresholds`), so that its spikes
  have the right size on skip paths and pools too;
* binary: converted with one level per neuron (levels = 1), unit thresholds:
  the single-threshold network closest to what IF neurons compute;
* target: the file written for each library (`--nir-target LIBRARY`): MT neurons
  and max pools as standard subgraphs that library computes like the executor
  (Norse and snnTorch: recurrent edges, exact; sinabs: IF neurons with a th / 2
  head start and a max pool as unary levels of IFs whose inputs only grow).

each library loads the file with its own import function and runs it with its
own models (tools/nir_consumer_run.py in the environments of
tools/nir_consumers.sh): Norse and sinabs read the IF file, snnTorch 1.0.0 the
LIF one (its IF import breaks the next layer).  nirtorch with ecmt's node map
runs the graded file.  The same 1000 test images are fed for T = 32 steps; the
prediction at t is the argmax of the summed outputs up to t.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from machine import machine_info, machine_markdown, write_result

import ecmt
from ecmt import SpikingModel, data
from ecmt.evaluate import ann_accuracy
from ecmt.zoo import load_model
from exporters import nir as enir
from exporters import verify

ROOT = Path(__file__).parent.parent
OUT = ROOT / "docs" / "benchmarks"
CONSUMERS = verify.CONSUMERS     # the NIR neuron each reads (docs/nir.md)
VARIANTS = {"graded": dict(levels=8, unit=False), "unit": dict(levels=8, unit=True),
            "binary": dict(levels=1, unit=True), "target": dict(levels=8, unit=False, target=True)}


MODELS = ("demo-mlp", "demo-cnn")


def load_previous(path: Path) -> dict:
    """The committed result, with the json's string keys for t back to ints."""
    result = json.loads(path.read_text())

    def ints(d):
        return {int(k): v for k, v in d.items()} if all(k.isdigit() for k in d) else d
    for entry in result["models"].values():
        for v in entry["variants"].values():
            v["executor"]["accuracy"] = ints(v["executor"]["accuracy"])
            for row in v["consumers"].values():
                for key in ("accuracy", "agreement"):
                    if key in row:
                        row[key] = ints(row[key])
    return result


def accuracy_at(outputs: np.ndarray, labels: np.ndarray, ts) -> dict:
    """outputs [T, N, classes] per step -> accuracy of the summed outputs at each t."""
    total = np.cumsum(outputs, axis=0)
    return {t: float((total[t - 1].argmax(-1) == labels).mean()) for t in ts}


def agreement_at(outputs: np.ndarray, reference: np.ndarray, ts) -> dict:
    total = np.cumsum(outputs, axis=0)
    return {t: float((total[t - 1].argmax(-1) == reference[t - 1].argmax(-1)).mean()) for t in ts}


def run_consumer(consumer: str, path: Path, x: torch.Tensor, T: int):
    """(outputs [T, N, ...] or None, seconds, error or None): exporters/verify.py's run."""
    start = time.time()
    try:
        out = verify.run_consumer(consumer, path, x, T, batch_size=250)
    except verify.ConsumerFailure as err:
        return None, time.time() - start, str(err)
    return out, time.time() - start, None


def node_map_run(path: Path, x: torch.Tensor, T: int) -> np.ndarray:
    """Running estimates through nirtorch with ecmt's node map (exporters/verify.py), 250 images at a time."""
    return np.concatenate([verify.nir_node_map_run(path, batch, T) for batch in x.split(250)], axis=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("-T", type=int, default=32)
    ap.add_argument("--only", action="append", metavar="MODEL:VARIANT:CONSUMER",
                    help="re-measure only these rows, keep the others from the committed json")
    args = ap.parse_args()
    only = {tuple(o.split(":")) for o in args.only or []}
    if any(len(o) != 3 or o[0] not in MODELS or o[1] not in VARIANTS or o[2] not in CONSUMERS for o in only):
        ap.error(f"--only MODEL:VARIANT:CONSUMER, MODEL in {MODELS}, VARIANT in {tuple(VARIANTS)}, "
                 f"CONSUMER in {tuple(CONSUMERS)}")
    previous = load_previous(OUT / "consumers.json") if only else None
    if previous is not None and (previous["samples"], previous["T"]) != (args.samples, args.T):
        ap.error(f"--only: the committed run has {previous['samples']} samples and T = {previous['T']}")
    torch.set_num_threads(1)
    ts = [t for t in (1, 2, 4, 8, 16, 32) if t <= args.T]
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test").take(args.samples)
    calib = train.sample(512)
    labels = test.labels.numpy()
    run = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "only": sorted(":".join(o) for o in only)}
    if previous is not None:
        result = previous
        result.setdefault("runs", [{"machine": result["machine"], "only": []}]).append(run)
        result["machine"] = run["machine"]
    else:
        result = {"machine": run["machine"], "samples": args.samples, "T": args.T, "models": {}, "runs": [run]}
    run_index = len(result["runs"]) - 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for model_name in MODELS:
            if only and not any(o[0] == model_name for o in only):
                continue
            model = load_model(model_name)
            entry = (result["models"][model_name] if only else
                     {"ann_accuracy": ann_accuracy(model, test, progress=False), "variants": {}})
            for variant, spec in VARIANTS.items():
                if only and (model_name, variant) not in {o[:2] for o in only}:
                    continue
                graph = ecmt.convert(model, calib, levels=spec["levels"], progress=False).graph
                executor = SpikingModel(graph)(test.images, args.T).numpy()
                executor_row = {"accuracy": {t: float((executor[t - 1].argmax(-1) == labels).mean()) for t in ts}}
                if only:
                    v = entry["variants"][variant]
                    if v["executor"]["accuracy"] != executor_row["accuracy"]:
                        raise SystemExit(f"{model_name} {variant}: the executor's accuracy differs from the committed "
                                         f"run ({executor_row['accuracy']} vs {v['executor']['accuracy']}): re-run all")
                else:
                    v = {"executor": executor_row, "consumers": {}}
                files = {}
                for neuron in ("IF", "LIF"):
                    files[neuron] = tmp / f"{model_name}-{variant}-{neuron}.nir"
                    summary = enir.export(graph, files[neuron], neuron=neuron, unit_thresholds=spec["unit"])
                v["unit_thresholds"] = len(summary.unit_thresholds or [])
                v["spike_sizes"] = len(summary.spike_sizes)
                v["mt_neurons"] = sum(n for k, n in summary.convention.items() if k.startswith("mt_neuron"))
                if spec.get("target"):
                    v["computed"] = {}
                    for consumer in CONSUMERS:
                        files[consumer] = tmp / f"{model_name}-{variant}-{consumer}.nir"
                        v["computed"][consumer] = len(enir.export(graph, files[consumer], target=consumer).computed)
                if variant == "graded" and not only:
                    start = time.time()
                    mapped = node_map_run(files["IF"], test.images, args.T)
                    v["consumers"]["nirtorch + ecmt node map"] = {
                        "accuracy": {t: float((mapped[t - 1].argmax(-1) == labels).mean()) for t in ts},
                        "agreement": {t: float((mapped[t - 1].argmax(-1) == executor[t - 1].argmax(-1)).mean())
                                      for t in ts},
                        "max_abs_error": float(np.abs(mapped - executor).max()),
                        "seconds": round(time.time() - start, 1)}
                for consumer, neuron in CONSUMERS.items():
                    if only and (model_name, variant, consumer) not in only:
                        continue
                    which = consumer if spec.get("target") else neuron
                    out, seconds, error = run_consumer(consumer, files[which], test.images, args.T)
                    row = {"file": f"--nir-target {consumer}" if spec.get("target") else neuron,
                           "seconds": round(seconds, 1), "run": run_index}
                    if error:
                        row["error"] = error
                    else:
                        row.update(accuracy=accuracy_at(out, labels, ts), agreement=agreement_at(out, executor, ts))
                    v["consumers"][consumer] = row
                    print(model_name, variant, consumer, row.get("accuracy", row.get("error")), flush=True)
                entry["variants"][variant] = v
            result["models"][model_name] = entry
    write_result(OUT, "consumers", result, markdown(result, ts))


def markdown(result: dict, ts) -> str:
    pct = lambda a: f"{100 * a:.1f}%"
    lines = ["# ecmt's NIR files in snnTorch, Norse and sinabs, as shipped", "",
             "Produced by `python benchmarks/consumers.py`.  " + machine_markdown(result["machine"]), "",
             f"{result['samples']} Fashion-MNIST test images, fed for T = {result['T']} steps; the prediction at t is "
             "the argmax of the summed outputs up to t.  Each library loads the file with its own import function "
             "and runs its own neuron models; *agreement* is the share of images on which its prediction equals "
             "the executor's (docs/nir.md says what each library computes for an MT neuron).", ""]
    runs = result.get("runs", [])
    if len(runs) > 1:
        lines += ["Runs: " + "; ".join(
            f"run {i} ({r.get('date', 'date not recorded')}): "
            + ("all rows" if not r["only"] else "re-measured " + ", ".join(f"`{o}`" for o in r["only"])
               + " (and that variant's executor row, which equalled the committed one)")
            for i, r in enumerate(runs)) + ".  A row's *run* column says which run measured it; the "
            "machine above is the last run's, the earlier runs' are in consumers.json.", ""]
    for model_name, entry in result["models"].items():
        lines += [f"## {model_name} (ANN {pct(entry['ann_accuracy'])})", "",
                  "| export | runtime | file | " + " | ".join(f"t={t}" for t in ts) + " | agreement t=8 / t=32 | s |"
                  + (" run |" if len(runs) > 1 else ""),
                  "|---|---|---|" + "---|" * len(ts) + "---|---|" + ("---|" if len(runs) > 1 else "")]
        for variant, v in entry["variants"].items():
            name = (variant if variant in ("graded", "target") else
                    f"{variant} ({v['unit_thresholds']}/{v['mt_neurons']} unit, {v.get('spike_sizes', 0)} size nodes)")
            extra = " |" if len(runs) > 1 else ""
            lines.append(f"| {name} | ecmt executor | | " + " | ".join(pct(v["executor"]["accuracy"][t]) for t in ts)
                         + " | | |" + extra)
            for consumer, row in v["consumers"].items():
                if "error" in row:
                    lines.append(f"| {name} | {consumer} | {row.get('file', 'IF')} | " + " | ".join("-" for _ in ts)
                                 + f" | {row['error'].replace('|', '/')[:140]} | {row['seconds']} |"
                                 + (f" {row.get('run', 0)} |" if len(runs) > 1 else ""))
                    continue
                agree = row["agreement"]
                lines.append(f"| {name} | {consumer} | {row.get('file', 'IF')} | "
                             + " | ".join(pct(row["accuracy"][t]) for t in ts)
                             + f" | {pct(agree.get(8, 0))} / {pct(agree.get(32, agree[max(agree)]))} | {row['seconds']} |"
                             + (f" {row.get('run', 0)} |" if len(runs) > 1 else ""))
        lines.append("")
        target = entry["variants"].get("target")
        if target:
            last = max(ts)
            ex = target["executor"]["accuracy"][last]
            gaps = [f"{c} {pct(r['accuracy'][last])} ({100 * (r['accuracy'][last] - ex):+.1f} points, agreement "
                    f"{pct(r['agreement'][last])})" for c, r in target["consumers"].items() if "accuracy" in r]
            lines += [f"Files written for each library (`--nir-target`), at t = {last}: executor {pct(ex)}; "
                      + "; ".join(gaps) + ".", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
