"""hw_sim.simulate: replay a graph on real inputs, count events, price them.

Orchestration only: profiles -> models (engine.model: each maps the graph) -> one counting
run (counting.Counter, and each model's recorder) -> each model prices (price.entry) ->
report.  Nothing here asks what kind of hardware a profile describes."""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ecmt import distributed, ir
from ecmt.errors import EcmtError
from ecmt.runtime import GraphExecutor

from . import deployed as deployed_mod
from . import engine
from . import price as price_mod
from . import report as report_mod
from .counting import FIELDS, Counter, EventCounts, to_lists
from .energy import ann_energy, spike_format
from .profile import PROFILE_DIR, HardwareProfile, ProfileError, load_profile

MODES = ("paper", "full")
# The operating point: the first t whose accuracy is within this of the ANN's.
WITHIN = 0.01


class ModeError(EcmtError, ValueError):
    """A counting mode that does not apply (names the mode, and the profile where it is the profile's)."""


def plan(profiles: list[HardwareProfile], mode: str | Sequence[str] | None) -> list[tuple[HardwareProfile, str]]:
    """The (profile, mode) pairs to price, checked before any work.  `mode` None: full on
    every profile, and paper on the CMOS ones (the paper's formula prices a CMOS add
    against a CMOS MAC; on neuromorphic hardware it would mix process nodes)."""
    if mode is None:
        return [(p, "full") for p in profiles] + [(p, "paper") for p in profiles if p.kind == "cmos"]
    modes = [mode] if isinstance(mode, str) else list(mode)
    for m in modes:
        if m not in MODES:
            raise ModeError(f"mode must be one of {MODES}, got {m!r}")
    for p in profiles:
        if "paper" in modes and p.kind != "cmos":
            raise ModeError(f"profile {p.name} ({p.kind}): mode 'paper' is the ECMT paper's formula "
                            "(E_AC x SOPs / E_MAC x MACs on one CMOS process) and applies to CMOS profiles only",
                            hint="price it in mode 'full', or leave the mode out (full everywhere, paper on CMOS)")
    return [(p, m) for m in modes for p in profiles]


def simulate(graph: ir.SpikingGraph, inputs: torch.Tensor, T: int, hardware: str | Sequence[str] = "cmos45-fp32",
             *, mode: str | Sequence[str] | None = "full", labels: torch.Tensor | None = None,
             batch_size: int = 256, device=None, progress: bool = True) -> report_mod.Report:
    """Run `graph` for T steps on `inputs` [N, ...], count every event, and
    price the counts on each hardware profile (a name in hw_sim/profiles or a
    path to a .toml file) in each counting mode ("full"; "paper" on CMOS
    profiles only; None: full everywhere and paper on CMOS).  With `labels`,
    the accuracy at every t and the ANN's accuracy are reported too, and for
    profiles deployed in a fixed-point format (profile.deployment), the
    accuracy of the graph run in that format (hw_sim/deployed.py).

    The stages: every profile read and its model built (engine.model: the network mapped
    onto the hardware; one that does not fit is refused here, before any run), one pass
    over the data counting events (counting.Counter) while each model records what it
    needs, then each model prices the counts (price.entry) and the report is built."""
    names = [hardware] if isinstance(hardware, str) else list(hardware)
    profiles = [load_profile(h) for h in names]
    pairs = plan(profiles, mode)
    for p in profiles:                   # every ANN baseline is read and checked before any work
        _baseline(p)
    models = {p.name: engine.model(graph, p, T) for p in profiles}
    executor = GraphExecutor(graph, device, record_levels=True)
    counter = Counter(executor, T)
    observers = [counter] + [o for m in models.values() if (o := m.observer(executor)) is not None]

    def observer(node, inputs, out, t):
        for o in observers:
            o(node, inputs, out, t)
    correct = torch.zeros(T, dtype=torch.long)
    ann_correct = torch.zeros((), dtype=torch.long)
    # Each deployed number format: its own executor run of every batch (labels needed).
    formats = [] if labels is None else [f for f in dict.fromkeys(p.deployment for p in profiles) if f != "float"]
    deployed_runs = {f: deployed_mod.executor(graph, f, device) for f in formats}
    deployed_correct = {f: torch.zeros(T, dtype=torch.long) for f in formats}
    n = len(inputs)
    # Under torchrun each rank replays its share of the batches; counts are summed across ranks.
    starts = distributed.shard(range(0, n, batch_size))
    for start in tqdm(starts, desc=f"hw_sim (T={T})", unit="batch",
                      disable=not progress or not distributed.is_main(), leave=False):
        x = inputs[start:start + batch_size]
        est = executor.run(x.to(executor.device), T, observer=observer if len(observers) > 1 else counter)
        for m in models.values():
            m.add_batch()
        if labels is not None:
            y = labels[start:start + batch_size].to(est.device)
            correct += (est.argmax(-1) == y.unsqueeze(0)).sum(dim=1).cpu()
            ann_correct += (executor.run_analog(x.to(executor.device)).argmax(-1) == y).sum().cpu()
            for f, ex in deployed_runs.items():
                deployed_correct[f] += (ex.run(x.to(ex.device), T).argmax(-1) == y.unsqueeze(0)).sum(dim=1).cpu()
    # Per-sample totals stay on each rank: intervals are given for one process only.
    one = distributed.world() == 1
    if not one:
        for m in models.values():
            m.reduce(distributed.all_reduce_tree)
    counts = EventCounts(to_lists(distributed.all_reduce_tree(counter.result())), n,
                         counter.per_sample_totals() if one else None,
                         counter.per_sample_totals(steps=True) if one else None)
    correct = distributed.all_reduce_sum(correct)
    deployed = {f: {"format": deployed_mod.FORMATS[f], "modelled": deployed_mod.MODELLED[f][0],
                    "not_modelled": deployed_mod.MODELLED[f][1],
                    "accuracy": (distributed.all_reduce_sum(c).double() / n).tolist()}
                for f, c in deployed_correct.items()}
    ann_correct = distributed.all_reduce_sum(ann_correct)
    return report_mod.Report(build(graph, counts, pairs, None,
                                   (correct.double() / n).tolist() if labels is not None else None,
                                   models, ann_accuracy=ann_correct.item() / n if labels is not None else None,
                                   deployed=deployed))


class EnergyRatio:
    """An energy model for ecmt's calibration search (ecmt.convert's `energy`): a graph's
    full-mode energy up to step T on one profile over one ANN forward on its baseline, from
    the counts of a real run.  The profile is read and checked when this is made."""

    def __init__(self, profile: str = "cmos45-fp32"):
        _baseline(load_profile(profile))
        self.name = profile

    def __call__(self, graph: ir.SpikingGraph, x: torch.Tensor, T: int) -> float:
        report = simulate(graph, x, T, self.name, mode="full", progress=False)
        return float(report.data["hardware"][0]["energy_ratio"])

    def multilevel_refused(self) -> str | None:
        """None where this profile prices neurons that send k > 1 levels per step; else why not
        (asked of a two-element neuron with k = 2)."""
        g = ir.SpikingGraph([
            ir.Input("input", (), shape=(2,)),
            ir.MTNeuron("mt", ("input",), th_pos=torch.tensor(1.0), th_neg=torch.tensor(1.0), levels=2,
                        spikes_per_step=2),
            ir.Output("output", ("mt",)),
        ])
        try:
            self(g, torch.tensor([[2.9, -0.4]]), 1)
        except EcmtError as err:
            return str(err)
        return None

    def __repr__(self) -> str:
        return f"EnergyRatio({self.name!r})"


def _baseline(profile: HardwareProfile) -> HardwareProfile:
    if profile.ann_baseline == "self":
        return profile
    base = load_profile(profile.ann_baseline)
    if base.kind != "cmos":
        raise ProfileError(f"{profile.path}: key profile.ann_baseline: {base.name} is not a CMOS profile")
    return base


def build(graph, counts: EventCounts, profiles: list, modes: list[str] | None, accuracy,
          models: dict | None = None, ann_accuracy: float | None = None, deployed: dict | None = None) -> dict:
    """The report's data: `counts` priced by each profile's model.  `profiles` is a list of
    (profile, mode) pairs with `modes` None, or of profiles priced in every mode of `modes`.
    `models`: each profile's model that recorded the run (simulate()); a profile without one
    gets a model built here, which works for models that need only the counts (CMOS).
    `deployed`: per deployed number format, its description and accuracy at every t."""
    pairs = list(profiles) if modes is None else plan(list(profiles), modes)
    models = dict(models or {})
    for p, _ in pairs:
        if p.name not in models:
            models[p.name] = engine.model(graph, p, counts.T)
            if models[p.name].records:
                raise EcmtError(f"hw_sim: profile {p.name}: its model needs the run's spikes; "
                                "price it with hw_sim.simulate")
    T, samples = counts.T, counts.samples
    per_step = {f: counts.total_per_step(f) for f in FIELDS}
    layers = [{"name": n.name, "kind": n.KIND, **{f: counts.total(n.name, f) for f in FIELDS}} for n in graph]
    levels = {name: [sum(step[k] for step in c["levels"]) / samples for k in range(len(c["levels"][0]))]
              for name, c in counts.nodes.items() if "levels" in c}
    meta = graph.meta
    return {
        "schema": report_mod.SCHEMA, "version": report_mod.VERSION,
        "modes": list(dict.fromkeys(m for _, m in pairs)), "T": T, "samples": samples,
        "graph": {"source": meta.get("source", "graph"), "nodes": len(graph),
                  "mt_neurons": len(graph.of_kind(ir.MTNeuron)), "calibration": meta.get("calibration", {})},
        "accuracy": accuracy,
        "ann_accuracy": ann_accuracy,
        "deployed": deployed or {},
        "operating_point": {"within": WITHIN, "t": _operating_t(accuracy, ann_accuracy)},
        "counts": {"per_step": per_step, "layers": layers, "levels": levels},
        "paper": _paper_figures(counts),
        "hardware": [_entry(graph, counts, models[p.name], m) for p, m in pairs],
    }


def _operating_t(accuracy, ann_accuracy) -> int | None:
    """The first t (1-based) whose accuracy is within WITHIN of the ANN's, or None."""
    if accuracy is None or ann_accuracy is None:
        return None
    return next((t + 1 for t, a in enumerate(accuracy) if a >= ann_accuracy - WITHIN - 1e-12), None)


def _paper_figures(counts: EventCounts) -> dict:
    sops, dense_step = counts.total_per_step("paper_sops"), counts.total_per_step("paper_dense")
    return {"sops_per_step": sops, "dense_per_step": dense_step,
            "firing_rate": sum(sops) / sum(dense_step) if sum(dense_step) else 0.0}


def _entry(graph, counts: EventCounts, model, mode: str) -> dict:
    """One report entry: the model's pricing with its ranges, sensitivity and intervals
    (price.entry), the ANN baseline, and the mapping as the model describes it."""
    profile = model.profile
    priced = price_mod.entry(model, counts, mode)
    p = priced.pop("priced")
    baseline = _baseline(profile)
    ann_j, ann_counts = ann_energy(graph, baseline, mode)
    static = sum(p.energy.get("static", []))
    total = p.total_j
    by_category = {c: sum(v) for c, v in p.energy.items()}
    cumulative = list(itertools.accumulate(p.energy_per_step))
    described = model.describe()
    return {
        "mode": mode,
        "profile": {"name": profile.name, "description": profile.description, "kind": profile.kind,
                    "spikes": profile.spikes, "host": profile.host, "path": profile_path(profile),
                    "statuses": profile.statuses(),
                    "constants": {f"{s}.{k}": {"value": c.value, "unit": c.unit, "source": c.source,
                                                "status": c.status, "range": [c.low, c.high],
                                                "range_source": c.range_source}
                                  for s, table in profile.constants.items() for k, c in table.items()}},
        "spike_format": spike_format(graph, profile),
        "energy_per_step_j": [e - s for e, s in zip(p.energy_per_step, p.energy.get("static", [0.0] * counts.T))],
        "energy_j": total - static,
        "energy_by_category_j": by_category,
        "energy_by_category_per_step_j": p.energy,
        "static_j": static,
        "total_j": total,
        "latency_per_step_s": p.latency,
        "latency_s": p.latency_s,
        "latency_by_phase_s": {k: sum(v) for k, v in p.phases.items()},
        "latency_by_phase_per_step_s": p.phases,
        "cores_used": described.pop("cores"),
        "chips": described.pop("chips"),
        "mapping": described.pop("mapping"),
        "ann": {"profile": baseline.name, "energy_j": ann_j, "counts": ann_counts},
        "energy_ratio": total / ann_j if ann_j else 0.0,
        "energy_per_t_j": cumulative,
        "energy_ratio_per_t": [c / ann_j if ann_j else 0.0 for c in cumulative],
        "layers": [{"name": n.name, "kind": n.KIND, "energy_j": sum(p.layers.get(n.name, {}).values()),
                    "by_category_j": p.layers.get(n.name, {})} for n in graph],
        **priced,
        "deployment": None if profile.deployment == "float" else profile.deployment,
        **described,
    }


def profile_path(profile: HardwareProfile) -> str:
    """The profile's file as the report names it: relative to the package for the built-in
    profiles (the same in every checkout), as the user gave it otherwise."""
    path = Path(profile.path)
    try:
        inside = path.resolve().relative_to(PROFILE_DIR.resolve())
    except ValueError:
        return profile.path
    return (PROFILE_DIR.relative_to(PROFILE_DIR.parent.parent) / inside).as_posix()
