"""hw_sim.simulate: replay a graph on real inputs, count events, price them."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ecmt import distributed, ir
from ecmt.errors import EcmtError
from ecmt.runtime import GraphExecutor

from . import deployed as deployed_mod
from . import mesh as mesh_mod
from . import report as report_mod
from .counting import FIELDS, Counter, EventCounts, to_lists
from .costs import SPECIAL_MACS
from .energy import ann_energy, rates, snn_energy, spike_format
from .mapping import map_units, step_latency
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
    accuracy of the graph run in that format (hw_sim/deployed.py)."""
    names = [hardware] if isinstance(hardware, str) else list(hardware)
    profiles = [load_profile(h) for h in names]
    pairs = plan(profiles, mode)
    for p in profiles:                   # every ANN baseline is read and checked before any work
        _baseline(p)
    executor = GraphExecutor(graph, device, record_levels=True)
    counter = Counter(executor, T)
    # Profiles with a [mesh] table: map the on-chip part (a network that does not fit
    # fails here, naming the layer and resource) and keep each batch's spike rasters.
    meshes = {}
    for p in profiles:
        if p.has_mesh and p.name not in meshes:
            onchip = mesh_mod.extract(graph, p)
            placement = mesh_mod.place(onchip, p)
            meshes[p.name] = (onchip, placement, mesh_mod.Accounting(onchip, placement, p, T,
                                                                     retime_samples=RETIME_SAMPLES))
    recorders = {}
    for name, (onchip, _, _) in meshes.items():
        recorders[name] = mesh_mod.Recorder(executor, onchip, T)

    def observer(node, inputs, out, t):
        counter(node, inputs, out, t)
        for r in recorders.values():
            r(node, inputs, out, t)
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
        est = executor.run(x.to(executor.device), T, observer=observer if recorders else counter)
        for name, r in recorders.items():
            meshes[name][2].add(r.take())
        if labels is not None:
            y = labels[start:start + batch_size].to(est.device)
            correct += (est.argmax(-1) == y.unsqueeze(0)).sum(dim=1).cpu()
            ann_correct += (executor.run_analog(x.to(executor.device)).argmax(-1) == y).sum().cpu()
            for f, ex in deployed_runs.items():
                deployed_correct[f] += (ex.run(x.to(ex.device), T).argmax(-1) == y.unsqueeze(0)).sum(dim=1).cpu()
    # Per-sample totals stay on each rank: intervals are given for one process only.
    one = distributed.world() == 1
    counts = EventCounts(to_lists(distributed.all_reduce_tree(counter.result())), n,
                         counter.per_sample_totals() if one else None,
                         counter.per_sample_totals(steps=True) if one else None)
    correct = distributed.all_reduce_sum(correct)
    deployed = {f: {"format": deployed_mod.FORMATS[f], "modelled": deployed_mod.MODELLED[f][0],
                    "not_modelled": deployed_mod.MODELLED[f][1],
                    "accuracy": (distributed.all_reduce_sum(c).double() / n).tolist()}
                for f, c in deployed_correct.items()}
    ann_correct = distributed.all_reduce_sum(ann_correct)
    if distributed.world() > 1 and meshes:
        raise EcmtError(f"hw_sim: profile(s) {', '.join(meshes)} (mesh model) cannot run under torchrun yet",
                        hint="run `ecmt energy` with these profiles in one process")
    mesh_results = {name: (onchip, placement, {**acc.result(), "sample_j": acc.sample_energy(),
                                               "sample_t_j": acc.sample_energy_per_t(), "accounting": acc})
                    for name, (onchip, placement, acc) in meshes.items()}
    return report_mod.Report(build(graph, counts, pairs, None,
                                   (correct.double() / n).tolist() if labels is not None else None,
                                   mesh_results, ann_accuracy=ann_correct.item() / n if labels is not None else None,
                                   deployed=deployed))


def _baseline(profile: HardwareProfile) -> HardwareProfile:
    if profile.ann_baseline == "self":
        return profile
    base = load_profile(profile.ann_baseline)
    if base.kind != "cmos":
        raise ProfileError(f"{profile.path}: key profile.ann_baseline: {base.name} is not a CMOS profile")
    return base


def build(graph, counts: EventCounts, profiles: list, modes: list[str] | None, accuracy,
          meshes: dict | None = None, ann_accuracy: float | None = None, deployed: dict | None = None) -> dict:
    """The report's data: `counts` priced (and, for mesh profiles, `meshes`' mapped and
    timed results).  `profiles` is a list of (profile, mode) pairs with `modes` None, or
    of profiles priced in every mode of `modes`.  `deployed`: per deployed number format,
    its description and accuracy at every t (simulate())."""
    pairs = list(profiles) if modes is None else plan(list(profiles), modes)
    T, samples = counts.T, counts.samples
    per_step = {f: counts.total_per_step(f) for f in FIELDS}
    layers = [{"name": n.name, "kind": n.KIND, **{f: counts.total(n.name, f) for f in FIELDS}} for n in graph]
    levels = {name: [sum(step[k] for step in c["levels"]) / samples for k in range(len(c["levels"][0]))]
              for name, c in counts.nodes.items() if "levels" in c}
    meta = graph.meta
    data = {
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
        "hardware": [_entry(graph, counts, p, m, (meshes or {}).get(p.name)) for p, m in pairs],
    }
    return data


def _operating_t(accuracy, ann_accuracy) -> int | None:
    """The first t (1-based) whose accuracy is within WITHIN of the ANN's, or None."""
    if accuracy is None or ann_accuracy is None:
        return None
    return next((t + 1 for t, a in enumerate(accuracy) if a >= ann_accuracy - WITHIN - 1e-12), None)


def _paper_figures(counts: EventCounts) -> dict:
    sops, dense_step = counts.total_per_step("paper_sops"), counts.total_per_step("paper_dense")
    return {"sops_per_step": sops, "dense_per_step": dense_step,
            "firing_rate": sum(sops) / sum(dense_step) if sum(dense_step) else 0.0}


def _price(graph, counts: EventCounts, profile: HardwareProfile, mode: str, mesh=None,
           cache: dict | None = None) -> dict:
    """One report entry.  `cache` (one per profile and mode) keeps the per-node energies, the ANN
    baseline, the mapping and step times for re-pricings that leave the constants they depend on alone."""
    cache = {} if cache is None else cache
    T = counts.T
    key = ("energy", profile.value_bits, _values(profile, "energy"))
    if key not in cache:
        energy = snn_energy(graph, counts, profile, mode)
        cache[key] = ({c: [sum(e[c][t] for e in energy.values()) for t in range(T)]
                       for c in next(iter(energy.values()))},
                      [{"name": n.name, "kind": n.KIND, "energy_j": sum(map(sum, energy[n.name].values())),
                        "by_category_j": {c: sum(v) for c, v in energy[n.name].items()}} for n in graph])
    categories, layers = dict(cache[key][0]), cache[key][1]       # the mesh model replaces categories
    key = ("baseline", profile.ann_baseline)
    if key not in cache:
        baseline = _baseline(profile)
        cache[key] = baseline, ann_energy(graph, baseline, mode)
    baseline, (ann_j, ann_counts) = cache[key]
    extra = {}
    if mesh is not None and mode == "full":
        onchip, placement, res = mesh
        ps = res["per_step"]
        host_s = _host_seconds(graph, counts, profile, set(onchip.groups) | {c.node for c in onchip.connections})
        steps = [{"step_s": ps["chip_latency_s"][t] + ps["host_transfer_s"][t] + host_s[t]} for t in range(T)]
        for cat, key in (("synapse", "synapse_j"), ("neuron", "neuron_j"), ("network", "network_j")):
            categories[cat] = [ps[key][t] for t in range(T)]
        categories["host"] = [categories["host"][t] + ps["host_transfer_j"][t] for t in range(T)]
        units = []
        cores, chips = placement.cores, placement.chips
        mapping = [{"name": l.name, "kind": l.kind, "elements": l.elements, "neurons": l.neurons,
                    "channels": l.channels, "cores": l.cores, "first_core": l.first_core,
                    "limiting_resource": l.limiting_resource, "per_core_max": l.per_core_max,
                    "synapses": l.synapses, "phase": onchip.groups[l.name].phase} for l in placement.layers]
        extra = {"mapping_derivation": placement.derivation,
                 "mesh": {**{k: v for k, v in res.items() if k not in MESH_PRIVATE}, "per_step": ps,
                          "mt_form": profile.mt_form, "weight_sharing": profile.weight_sharing}}
    else:
        key = ("steps", _values(profile, "timing", "architecture"))
        if key not in cache:
            units = map_units(graph, profile) if profile.kind == "neuromorphic" else []
            cache[key] = units, step_latency(graph, counts, profile, units)
        units, steps = cache[key]
        cores = sum(u.cores for u in units) if units else None
        chips = math.ceil(cores / profile["architecture.cores"]) if cores else None
        npc = profile.get("architecture.neurons_per_core")
        mapping = [{"name": u.name, "kind": u.kind, "cores": u.cores,
                    "limiting_resource": "neurons" if npc and math.ceil(u.compartments / npc) >= u.cores
                    else "synapses"} for u in units]
    step_energy = [sum(categories[c][t] for c in categories) for t in range(T)]
    latency = sum(s["step_s"] for s in steps)
    # The paper's formula has no static term.
    power = profile["energy.static_power"] if mode == "full" else 0.0
    static = power * latency
    by_category = {c: sum(v) for c, v in categories.items()}
    by_category["static"] = static
    # Energy up to step t, the static share included (static power x latency up to t).
    cumulative, e, s = [], 0.0, 0.0
    for t in range(T):
        e, s = e + step_energy[t], s + steps[t]["step_s"]
        cumulative.append(e + power * s)
    if "mesh" in extra:
        chip_s = sum(extra["mesh"]["per_step"]["chip_latency_s"])
        transfer_s = sum(extra["mesh"]["per_step"]["host_transfer_s"])
        phases = {"chip": chip_s, "host_transfer": transfer_s, "host": latency - chip_s - transfer_s}
    elif profile.kind == "cmos":
        phases = {"compute": latency}
    else:
        core_s, host_s = sum(s["core_s"] for s in steps), sum(s["host_s"] for s in steps)
        phases = {"cores": core_s, "host": host_s, "barrier": latency - core_s - host_s}
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
        "energy_per_step_j": step_energy,
        "energy_j": sum(step_energy),
        "energy_by_category_j": by_category,
        "energy_by_category_per_step_j": categories,
        "static_j": static,
        "total_j": sum(step_energy) + static,
        "latency_per_step_s": [s["step_s"] for s in steps],
        "latency_s": latency,
        "latency_by_phase_s": phases,
        "cores_used": cores,
        "chips": chips,
        "mapping": mapping,
        "units": [vars(u) for u in units],
        "ann": {"profile": baseline.name, "energy_j": ann_j, "counts": ann_counts},
        "energy_ratio": (sum(step_energy) + static) / ann_j if ann_j else 0.0,
        "energy_per_t_j": cumulative,
        "energy_ratio_per_t": [c / ann_j if ann_j else 0.0 for c in cumulative],
        "layers": layers,
        **extra,
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


def _values(profile: HardwareProfile, *sections: str) -> tuple:
    return tuple((s, k, c.value) for s in sections for k, c in profile.constants.get(s, {}).items())


def _host_seconds(graph, counts: EventCounts, profile, on_chip: set[str]) -> list[float]:
    """Per step, the host's operations over its throughput (as mapping.step_latency)."""
    out = []
    for t in range(counts.T):
        ops = 0.0
        for n in graph:
            c = counts.nodes[n.name]
            ops += sum(c[f][t] for f in ("macs", "adds", "mults")) / counts.samples
            ops += c["specials"][t] * SPECIAL_MACS / counts.samples
            if n.name not in on_chip and isinstance(n, ir.ProductECM):
                ops += c["level_sops"][t] / counts.samples      # a shifted add per level (energy.py)
        out.append(ops / profile["timing.host_ops_per_second"])
    return out


# -- uncertainty: ranges of the constants, sensitivity, intervals over samples ---------------------
# Mesh results kept for re-pricing and intervals, not written to the report.
MESH_PRIVATE = ("per_step", "sample_j", "sample_t_j", "accounting")
# Re-timing a mesh profile at a timing constant's range end re-runs the detailed schedule on
# the first this many samples; the nominal chip latency (every sample) is scaled by their ratio.
RETIME_SAMPLES = 4
# Mesh constants that price linearly: the per-step field they price and the per-step count they
# multiply (None: every mapped neuron, every step), as hw_sim/mesh.py's Accounting prices them.
MESH_LINEAR = {
    "mesh.e_synaptic_event": ("synapse_j", "synaptic_events"),
    "mesh.e_neuron_update": ("neuron_j", "neurons_updated"),
    "mesh.e_spike_out": ("neuron_j", "neurons_fired"),
    "mesh.e_neuron_access": ("neuron_j", None),
    "mesh.e_message_out": ("network_j", "messages"),
    "mesh.e_message_in": ("network_j", "messages"),
    "mesh.e_hop_x": ("network_j", "hops_x"),
    "mesh.e_hop_y": ("network_j", "hops_y"),
    "mesh.e_host_transfer": ("host_transfer_j", "host_transfers"),
    "mesh.t_host_transfer": ("host_transfer_s", "host_transfers"),
}


def _mesh_timing(key: str) -> bool:
    """A mesh constant that the detailed schedule reads (re-timed by Accounting.retime)."""
    return key not in MESH_LINEAR and (key.startswith(("mesh.t_", "mesh.barrier_")) or key == "mesh.link_buffer")


def _mesh_repriced(mesh, nominal: HardwareProfile, variant: HardwareProfile):
    """The mesh results with MESH_LINEAR's constants re-priced at `variant`'s values, and the
    chip latency re-timed where a timing constant differs: the detailed schedule re-run on the
    first RETIME_SAMPLES samples (same mapping, same spikes), the nominal per-step chip
    latency (every sample) scaled by their ratio (exact when there are no more samples)."""
    if mesh is None:
        return None
    onchip, placement, res = mesh
    ps = {k: list(v) for k, v in res["per_step"].items()}
    for key, (field, count) in MESH_LINEAR.items():
        delta = variant[key] - nominal[key]
        if delta:
            per = ps[count] if count else [res["mapped_neurons"]] * len(ps[field])
            ps[field] = [v + delta * c for v, c in zip(ps[field], per)]
    if any(_mesh_timing(k) and variant[k] != nominal[k] for k in nominal.keys()):
        acc = res["accounting"]
        new = acc.retime(variant, RETIME_SAMPLES).mean(0).tolist()
        old = acc.retime(nominal, RETIME_SAMPLES).mean(0).tolist()
        ps["chip_latency_s"] = [v * a / b if b else a for v, a, b in zip(ps["chip_latency_s"], new, old)]
    return onchip, placement, {**res, "per_step": ps}


def _covered(profile: HardwareProfile, key: str, mesh) -> bool:
    """Whether re-pricing reflects a change of `key`: not so for the mesh model's mapping
    constants (the network's placement on the cores would change: it is not re-mapped)."""
    return not (mesh is not None and key.startswith("mesh.") and key not in MESH_LINEAR and not _mesh_timing(key))


def _entry(graph, counts: EventCounts, profile: HardwareProfile, mode: str, mesh) -> dict:
    """One report entry: priced at the nominal constants, then re-priced (counts fixed) at
    each end of each constant's range, one at a time, and at the corners of the ranges."""
    cache: dict = {}
    entry = _price(graph, counts, profile, mode, mesh, cache)
    mesh_used = mesh if mode == "full" else None

    def price(variant: HardwareProfile) -> tuple[float, float]:
        r = _price(graph, counts, variant, mode, _mesh_repriced(mesh, profile, variant), cache)
        return r["total_j"], r["latency_s"]

    nominal = entry["total_j"], entry["latency_s"]
    ends, sensitivity, not_covered = {}, [], []
    for key in profile.keys():
        c = profile.constants[key.split(".")[0]][key.split(".", 1)[1]]
        if c.low == c.high:
            continue
        if not _covered(profile, key, mesh_used):
            not_covered.append(key)
            continue
        at = {end: price(profile.with_value(key, v)) for end, v in (("low", c.low), ("high", c.high))}
        ends[key] = at
        sensitivity.append({"constant": key, "energy_j": [at["low"][0], at["high"][0]],
                            "latency_s": [at["low"][1], at["high"][1]]})
    sensitivity.sort(key=lambda s: (-abs(s["energy_j"][1] - s["energy_j"][0]), s["constant"]))

    def corner(which: int, lowest: bool) -> float:
        """Every constant at the end of its range that moves result `which` (0 energy, 1 latency)
        down (lowest) or up; where that result does not move, the end that moves latency
        the same way (static energy grows with latency)."""
        variant = profile
        for key, at in ends.items():
            lo, hi = at["low"], at["high"]
            order = (lo[which], lo[1]) <= (hi[which], hi[1]) if lowest else (lo[which], lo[1]) >= (hi[which], hi[1])
            c = profile.constants[key.split(".")[0]][key.split(".", 1)[1]]
            variant = variant.with_value(key, c.low if order else c.high)
        return price(variant)[which] if ends else nominal[which]

    entry["range"] = {"energy_j": [corner(0, True), nominal[0], corner(0, False)],
                      "latency_s": [corner(1, True), nominal[1], corner(1, False)]}
    entry["sensitivity"] = sensitivity
    entry["sensitivity_not_covered"] = not_covered
    entry["interval95"] = _interval(graph, counts, profile, mode, entry, mesh_used, cache)
    entry["deployment"] = None if profile.deployment == "float" else profile.deployment
    return entry


def _interval(graph, counts: EventCounts, profile, mode, entry: dict, mesh=None,
              cache: dict | None = None) -> dict | None:
    """95% intervals of the mean over samples (normal approximation, 1.96 standard errors) of the
    energy up to every step t, the spikes and the latency per inference.  Only the data-dependent
    counts vary per sample, and the energy is linear in them: per sample and step, their counts
    times the profile's rates.  With the mesh model, each sample's on-chip energy comes from its
    accounting, and the rates give the host's.  The latency, as the report computes it from the
    mean counts, is linearized (_latency_gradient): exact for CMOS (linear in the counts); for the
    flat model each step's slowest core unit is held fixed (the delta method).  The mesh model's
    chip latency is the detailed schedule's per sample."""
    per_sample, samples, T = counts.per_sample_steps, counts.samples, counts.T
    if not per_sample or samples < 2:
        return None
    energy = torch.zeros(samples, T, dtype=torch.float64)
    spikes = torch.zeros(samples, dtype=torch.float64)
    table = rates(graph, profile, mode)
    for name, fields in per_sample.items():
        for field, values in fields.items():
            by_category = table[name].get(field, {})
            joules = sum(j for c, j in by_category.items() if mesh is None or c == "host")
            if joules:
                energy += values.double() * joules
            if field == "spikes":
                spikes += values.double().sum(1)
    energy = energy.cumsum(1)
    # per sample and step, the latency's deviation from the mean counts' (linearized)
    if mesh is not None:
        onchip, _, res = mesh
        on_chip = set(onchip.groups) | {c.node for c in onchip.connections}
        steps = lambda c: _host_seconds(graph, c, profile, on_chip)
        energy += res["sample_t_j"]
    else:
        units = map_units(graph, profile) if profile.kind == "neuromorphic" else []
        steps = lambda c: [s["step_s"] for s in step_latency(graph, c, profile, units)]
    cache = {} if cache is None else cache
    key = ("gradient", mesh is not None, profile.spikes, _values(profile, "timing", "architecture", "mesh"))
    if key not in cache:
        cache[key] = _latency_gradient(steps, counts)
    dlat = torch.zeros(samples, T, dtype=torch.float64)
    for (name, field), g in cache[key].items():
        values = per_sample[name][field].double()
        dlat += (values - values.mean(0)) * torch.tensor(g, dtype=torch.float64)
    power = profile["energy.static_power"] if mode == "full" else 0.0
    if mesh is None and power:
        energy += power * dlat.cumsum(1)        # static energy follows each sample's latency

    def half(x: torch.Tensor) -> float:
        return 1.96 * float(x.std(unbiased=True)) / math.sqrt(len(x))
    per_t = [[c - half(energy[:, t]), c + half(energy[:, t])] for t, c in enumerate(entry["energy_per_t_j"])]
    s = half(spikes)
    total_spikes = sum(counts.total(n.name, "spikes") for n in graph.of_kind(ir.MTNeuron))
    latency, basis = None, "fixed: on this profile the latency does not depend on the data"
    L = entry["latency_s"]
    if mesh is not None:
        chip = mesh[2]["accounting"].sample_chip_latency()
        m = len(chip)
        if m >= 2:
            h = half(chip.sum(1) + dlat[:m].sum(1))
            latency = [L - h, L + h]
            basis = (f"the detailed schedule's chip latency of each of the {m} scheduled samples plus the host's "
                     "time for its counts; chip-host transfer times at their mean")
        else:
            basis = "fewer than 2 samples scheduled: no interval"
    elif bool(dlat.any()):
        h = half(dlat.sum(1))
        latency = [L - h, L + h]
        basis = ("per sample, the operations over the throughput" if profile.kind == "cmos" else
                 "delta method: per sample, each step's slowest core unit (at the mean counts) and the host's work")
    return {"energy_j": per_t[-1], "energy_per_t_j": per_t,
            "spikes": [total_spikes - s, total_spikes + s],
            "latency_s": latency, "latency_basis": basis}


def _latency_gradient(steps, counts: EventCounts) -> dict[tuple[str, str], list[float]]:
    """d(step latency at t) / d(count of (node, field) at t, per inference), for the counts kept
    per sample, by adding one event per inference at every step (a step's latency reads that
    step's counts only).  Exact where the latency is linear in the counts; at the mean counts'
    slowest unit where it is a maximum."""
    base = steps(counts)

    def bumped(pairs) -> list[float]:
        nodes = dict(counts.nodes)
        for name, field in pairs:
            nodes[name] = {**nodes[name], field: [v + counts.samples for v in nodes[name][field]]}
        return [b - a for a, b in zip(base, steps(dataclasses.replace(counts, nodes=nodes)))]
    by_field: dict[str, list[tuple[str, str]]] = {}
    for name, fields in (counts.per_sample_steps or {}).items():
        for field in fields:
            if field in counts.nodes[name]:
                by_field.setdefault(field, []).append((name, field))
    out = {}
    for field, pairs in by_field.items():
        if not any(bumped(pairs)):          # the latency reads no count of this field: skip its nodes
            continue
        for pair in pairs:
            g = bumped([pair])
            if any(g):
                out[pair] = g
    return out
