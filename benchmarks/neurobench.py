"""NeuroBench 2.3's metrics on the three demo models, beside hw_sim's counts of the same
runs, at every t = 1..T.

    OMP_NUM_THREADS=1 python benchmarks/neurobench.py   # writes docs/benchmarks/neurobench.{md,json}

NeuroBench runs as shipped: ``Benchmark(ecmt.neurobench.NeuroBenchModel(graph, t), ...).run()``
once per t (its metrics are totals over a run).  hw_sim counts one T-step run of the
same images in the same batches (hw_sim.counting.Counter), summed up to each t.  The
demo MLP, CNN and ViT (ecmt.zoo, the committed checkpoints) converted as `ecmt convert`
does (8 levels, quantile 0.99, 512 training images), on the first N Fashion-MNIST test
images; the MLP and CNN also with binary spikes (one level, every threshold 1).
"""
from __future__ import annotations

import argparse
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

# This folder comes first on sys.path, and this script's name would shadow the neurobench
# package: look here last.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

from machine import machine_info, machine_markdown, write_result  # noqa: E402

import ecmt  # noqa: E402
from ecmt import data, ir  # noqa: E402
from ecmt import neurobench as enb  # noqa: E402
from ecmt.runtime import GraphExecutor  # noqa: E402
from ecmt.zoo import load_model  # noqa: E402
from hw_sim.counting import Counter, event_counts  # noqa: E402

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
MODELS = {"demo-mlp": "demo MLP", "demo-cnn": "demo CNN", "demo": "demo ViT"}
# the rows of each table: (label, NeuroBench's value, hw_sim's value) from (nb, hw)
ROWS = [
    ("ClassificationAccuracy", lambda nb: nb["ClassificationAccuracy"], lambda hw: hw["ClassificationAccuracy"]),
    ("ParameterCount", lambda nb: nb["ParameterCount"], lambda hw: None),
    ("Footprint (bytes)", lambda nb: nb["Footprint"], lambda hw: None),
    ("ConnectionSparsity", lambda nb: nb["ConnectionSparsity"], lambda hw: None),
    ("ActivationSparsity", lambda nb: nb["ActivationSparsity"], lambda hw: hw["ActivationSparsity"]),
    ("MembraneUpdates", lambda nb: nb["MembraneUpdates"], lambda hw: hw["MembraneUpdates"]),
    ("(hw_sim active updates)", lambda nb: None, lambda hw: hw["ActiveUpdates"]),
    ("Effective_ACs", lambda nb: nb["SynapticOperations"]["Effective_ACs"], lambda hw: hw["Effective_ACs"]),
    ("Effective_MACs", lambda nb: nb["SynapticOperations"]["Effective_MACs"], lambda hw: hw["Effective_MACs"]),
    ("Dense", lambda nb: nb["SynapticOperations"]["Dense"], lambda hw: hw["Dense"]),
    ("NeuronOperations", lambda nb: None, lambda hw: None),
    ("(products: hw_sim SOPs)", lambda nb: None, lambda hw: hw["ProductSOPs"]),
    ("(products: hw_sim MACs)", lambda nb: None, lambda hw: hw["ProductMACs"]),
]


def hw_sim_run(graph, images, labels, T: int, batch: int):
    """hw_sim's counts of one T-step run in batches: per-step totals per node, the accuracy at
    every t, and the seconds it took."""
    start = time.perf_counter()
    executor = GraphExecutor(graph, record_levels=True)
    counter = Counter(executor, T)
    correct = torch.zeros(T)
    for i in range(0, len(images), batch):
        est = executor.run(images[i:i + batch], T, observer=counter)
        correct += (est.argmax(-1) == labels[i:i + batch]).sum(1)
    counts = event_counts(counter)
    seconds = time.perf_counter() - start
    return counts, (correct / len(images)).tolist(), seconds


def up_to(counts, t: int) -> dict:
    """Per node, hw_sim's counts per inference over steps 1..t."""
    return {name: {f: sum(v[:t]) / counts.samples for f, v in fields.items() if f != "levels"}
            for name, fields in counts.nodes.items()}


def case(title: str, graph, images, labels, T: int, batch: int) -> dict:
    hw_sim_run(graph, images[:batch], labels[:batch], T, batch)        # warm-up (kernel compiles)
    counts, accuracy, hw_seconds = hw_sim_run(graph, images, labels, T, batch)
    steps = []
    for t in range(1, T + 1):
        start = time.perf_counter()
        nb = enb.run(graph, images, labels, t, batch_size=batch)
        nb_seconds = time.perf_counter() - start
        hw = {**enb.hw_sim_metrics(graph, up_to(counts, t)), "ClassificationAccuracy": accuracy[t - 1]}
        steps.append({"t": t, "neurobench": nb, "hw_sim": hw})
    by_layer = steps[-1]["neurobench"]["ActivationSparsityByLayer"]
    hw_by_layer = steps[-1]["hw_sim"]["ActivationSparsityByLayer"]
    return {"title": title, "T": T, "samples": len(images), "nodes": len(graph),
            "mt_neurons": len(graph.of_kind(ir.MTNeuron)),
            "unit_spikes": all(enb.unit_spikes(mt) for mt in graph.of_kind(ir.MTNeuron)),
            "steps": steps,
            "by_layer_max_difference": max(abs(by_layer[k] - hw_by_layer[k]) for k in hw_by_layer),
            "by_layer_same_keys": set(by_layer) == set(hw_by_layer),
            "seconds": {"neurobench_at_T": nb_seconds, "hw_sim_counting": hw_seconds}}


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer() and abs(v) < 1:
        return f"{v:.4f}"
    return f"{v:,.2f}" if isinstance(v, float) and not v.is_integer() else f"{int(v):,}"


def same(a, b) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


def summary(result: dict) -> list[str]:
    """Which metrics agree at every t of every case, and by how much the others differ."""
    agree = {"ClassificationAccuracy": [], "Effective_ACs": [], "Effective_MACs": [], "Dense": [],
             "ActivationSparsity": [], "MembraneUpdates": []}
    for c in result["cases"]:
        for s in c["steps"]:
            nb, hw = s["neurobench"], s["hw_sim"]
            for k in agree:
                a = nb["SynapticOperations"][k] if k in nb["SynapticOperations"] else nb[k]
                agree[k].append((same(a, hw[k]), a, hw[k], c["title"]))
    lines = []
    equal = [k for k, v in agree.items() if all(ok for ok, *_ in v)]
    steps = sum(len(c["steps"]) for c in result["cases"])
    lines.append(f"* Equal at every t of all {len(result['cases'])} cases ({steps} comparisons each): "
                 f"{', '.join(equal)}; ActivationSparsityByLayer to "
                 f"{max(c['by_layer_max_difference'] for c in result['cases']):.1e}.")
    for k, v in agree.items():
        if k in equal:
            continue
        worst = max(v, key=lambda e: abs(e[1] - e[2]) / max(abs(e[2]), 1e-30))
        lines.append(f"* {k}: NeuroBench differs in {sum(not ok for ok, *_ in v)} of {steps}, by at most "
                     f"{100 * (worst[1] - worst[2]) / worst[2]:+.2f} % ({worst[3]}); see the definitions below.")
    vit = [c for c in result["cases"] if c["steps"][-1]["hw_sim"]["ProductSOPs"]]
    for c in vit:
        hw = c["steps"][-1]["hw_sim"]
        lines.append(f"* {c['title']}: NeuroBench does not see the products of two spike streams, "
                     f"{hw['ProductSOPs']:,.0f} of hw_sim's synaptic ops per inference at T = {c['T']} "
                     f"({100 * hw['ProductSOPs'] / (hw['ProductSOPs'] + hw['Effective_ACs'] + hw['Effective_MACs']):.0f} "
                     "% of its synaptic ops and MACs together).")
    return lines


def markdown(result: dict) -> str:
    lines = ["# NeuroBench's metrics beside hw_sim's counts", "",
             f"NeuroBench {result['neurobench']} as shipped (`Benchmark(...).run()` on "
             "`ecmt.neurobench.NeuroBenchModel`), and hw_sim's counts of the same images in the same batches "
             f"(hw_sim.counting.Counter); {result['samples']} Fashion-MNIST test images, every figure per "
             "inference.  `benchmarks/neurobench.py`; run time " f"{result['seconds']:.0f} s.  docs/energy.md "
             "(\"NeuroBench\") explains the adapter.", "",
             machine_markdown(result["machine"]), "",
             "The binary variants fix every threshold at 1 and keep one level, without recalibrating: they "
             "check the counts of binary spikes, and their accuracy is not the point (the CNN's is near "
             "chance).", "", "## Summary", ""] + summary(result) + [""]
    for c in result["cases"]:
        last = c["steps"][-1]
        T = c["T"]
        lines += [f"## {c['title']}", "",
                  f"{c['nodes']} nodes, {c['mt_neurons']} MT neurons; every spike -1, 0 or 1: {c['unit_spikes']}.  "
                  f"NeuroBench's run at T = {T} took {c['seconds']['neurobench_at_T']:.3g} s, hw_sim's counting "
                  f"run {c['seconds']['hw_sim_counting']:.3g} s "
                  f"({c['seconds']['neurobench_at_T'] / c['seconds']['hw_sim_counting']:.1f}x).  "
                  f"ActivationSparsityByLayer: {c['mt_neurons']} neurons, largest difference from hw_sim's "
                  f"{c['by_layer_max_difference']:.1e}.", "",
                  f"| metric (t = {T}) | NeuroBench | hw_sim | equal |", "|---|---|---|---|"]
        for label, nb_of, hw_of in ROWS:
            a, b = nb_of(last["neurobench"]), hw_of(last["hw_sim"])
            equal = "-" if a is None or b is None else ("yes" if same(a, b) else "no")
            lines.append(f"| {label} | {fmt(a)} | {fmt(b)} | {equal} |")
        lines += ["", "At every t (NeuroBench / hw_sim):", "",
                  "| t | accuracy | Effective_ACs | Effective_MACs | Dense | MembraneUpdates | ActivationSparsity |",
                  "|---|---|---|---|---|---|---|"]
        for s in c["steps"]:
            nb, hw = s["neurobench"], s["hw_sim"]
            syn = nb["SynapticOperations"]
            pair = lambda a, b: fmt(a) if same(a, b) else f"{fmt(a)} / {fmt(b)}"
            lines.append(f"| {s['t']} | {pair(nb['ClassificationAccuracy'], hw['ClassificationAccuracy'])} | "
                         f"{pair(syn['Effective_ACs'], hw['Effective_ACs'])} | "
                         f"{pair(syn['Effective_MACs'], hw['Effective_MACs'])} | {pair(syn['Dense'], hw['Dense'])} | "
                         f"{pair(nb['MembraneUpdates'], hw['MembraneUpdates'])} | "
                         f"{pair(nb['ActivationSparsity'], hw['ActivationSparsity'])} |")
        lines.append("")
    lines += ["## Where the definitions differ", "",
              "One sentence per metric (ecmt.neurobench.DEFINITIONS, also in docs/energy.md):", ""]
    lines += [f"* **{name}**: {text}" for name, text in result["definitions"].items()]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256, help="test images (default 256)")
    parser.add_argument("-T", type=int, default=8, help="time steps (default 8)")
    parser.add_argument("--batch", type=int, default=64, help="batch size of both runs (default 64)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite docs/benchmarks/neurobench.md from the committed neurobench.json")
    args = parser.parse_args()
    if args.markdown_only:
        import json
        result = json.loads((OUT / "neurobench.json").read_text())
        (OUT / "neurobench.md").write_text(markdown(result))
        return
    torch.manual_seed(0)
    start = time.perf_counter()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test").take(args.samples)
    calib = train.sample(512)
    cases = []
    for spec in args.models.split(","):
        title = MODELS[spec]
        model = load_model(spec)
        graph = ecmt.convert(model, calib, progress=False).graph
        cases.append(case(f"{title}, graded spikes (8 levels)", graph, test.images, test.labels, args.T, args.batch))
        if spec != "demo":
            roles = {n.meta.get("role") for n in graph.of_kind(ir.MTNeuron)}
            binary = ecmt.convert(model, calib, levels=1, fixed_thresholds={r: (1.0, 1.0) for r in roles},
                                  progress=False).graph
            cases.append(case(f"{title}, binary spikes (1 level, thresholds 1)", binary, test.images, test.labels,
                              args.T, args.batch))
        print(f"{title}: done at {time.perf_counter() - start:.0f} s", flush=True)
    result = {"machine": machine_info(), "neurobench": version("neurobench"), "snntorch": version("snntorch"),
              "samples": args.samples, "batch": args.batch, "cases": cases, "definitions": enb.DEFINITIONS,
              "seconds": time.perf_counter() - start}
    write_result(OUT, "neurobench", result, markdown(result), indent=1)


if __name__ == "__main__":
    main()
