"""hw_sim.simulate: replay a graph on real inputs, count events, price them."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ecmt import distributed, ir
from ecmt.runtime import GraphExecutor

from . import mesh as mesh_mod
from . import report as report_mod
from .counting import FIELDS, Counter, to_lists
from .costs import SPECIAL_MACS
from .energy import ann_energy, snn_energy
from .mapping import map_units, step_latency
from .profile import HardwareProfile, load_profile

MODES = ("paper", "full")


def simulate(graph: ir.SpikingGraph, inputs: torch.Tensor, T: int, hardware: str | Sequence[str] = "cmos45-fp32",
             *, mode: str | Sequence[str] = "full", labels: torch.Tensor | None = None, batch_size: int = 256,
             device=None, progress: bool = True) -> report_mod.Report:
    """Run `graph` for T steps on `inputs` [N, ...], count every event, and
    price the counts on each hardware profile (a name in hw_sim/profiles or a
    path to a .toml file) in each counting mode ("full", "paper").  With
    `labels`, accuracy at every t is reported too."""
    modes = [mode] if isinstance(mode, str) else list(mode)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {m!r}")
    names = [hardware] if isinstance(hardware, str) else list(hardware)
    profiles = [load_profile(h) for h in names]
    executor = GraphExecutor(graph, device, record_levels=True)
    counter = Counter(executor, T)
    # Profiles with a [mesh] table: map the on-chip part (a network that does not fit
    # fails here, naming the layer and resource) and keep each batch's spike rasters.
    meshes = {}
    for p in profiles:
        if p.has_mesh and p.name not in meshes:
            onchip = mesh_mod.extract(graph, p)
            placement = mesh_mod.place(onchip, p)
            meshes[p.name] = (onchip, placement, mesh_mod.Accounting(onchip, placement, p, T))
    recorders = {}
    for name, (onchip, _, _) in meshes.items():
        recorders[name] = mesh_mod.Recorder(executor, onchip, T)

    def observer(node, inputs, out, t):
        counter(node, inputs, out, t)
        for r in recorders.values():
            r(node, inputs, out, t)
    correct = torch.zeros(T, dtype=torch.long)
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
    counts = to_lists(distributed.all_reduce_tree(counter.result()))
    correct = distributed.all_reduce_sum(correct)
    if distributed.world() > 1 and meshes:
        from ecmt.errors import EcmtError
        raise EcmtError(f"hw_sim: profile(s) {', '.join(meshes)} (mesh model) cannot run under torchrun yet",
                        hint="run `ecmt energy` with these profiles in one process")
    mesh_results = {name: (onchip, placement, acc.result()) for name, (onchip, placement, acc) in meshes.items()}
    return report_mod.Report(build(graph, counts, profiles, modes, T, n,
                                   (correct.double() / n).tolist() if labels is not None else None,
                                   mesh_results))


def build(graph, counts, profiles: list[HardwareProfile], modes: list[str], T: int, samples: int,
          accuracy, meshes: dict | None = None) -> dict:
    per_step = {f: [sum(c[f][t] for c in counts.values()) / samples for t in range(T)] for f in FIELDS}
    layers = [{"name": n.name, "kind": n.KIND,
               **{f: sum(counts[n.name][f]) / samples for f in FIELDS}} for n in graph]
    levels = {name: [sum(step[k] for step in c["levels"]) / samples for k in range(len(c["levels"][0]))]
              for name, c in counts.items() if "levels" in c}
    meta = graph.meta
    data = {
        "schema": report_mod.SCHEMA, "version": report_mod.VERSION, "modes": modes, "T": T, "samples": samples,
        "graph": {"source": meta.get("source", "graph"), "nodes": len(graph),
                  "mt_neurons": len(graph.of_kind(ir.MTNeuron)), "calibration": meta.get("calibration", {})},
        "accuracy": accuracy,
        "counts": {"per_step": per_step, "layers": layers, "levels": levels},
        "paper": _paper_figures(graph, counts, samples, T),
        "hardware": [_price(graph, counts, p, m, T, samples, (meshes or {}).get(p.name))
                     for m in modes for p in profiles],
    }
    return data


def _paper_figures(graph, counts, samples, T) -> dict:
    sops = [sum(c["paper_sops"][t] for c in counts.values()) / samples for t in range(T)]
    dense_step = [sum(c["paper_dense"][t] for c in counts.values()) / samples for t in range(T)]
    return {"sops_per_step": sops, "dense_per_step": dense_step,
            "firing_rate": sum(sops) / sum(dense_step) if sum(dense_step) else 0.0}


def _price(graph, counts, profile: HardwareProfile, mode: str, T: int, samples: int, mesh=None) -> dict:
    energy = snn_energy(graph, counts, profile, mode, samples)
    baseline = profile if profile.ann_baseline == "self" else load_profile(profile.ann_baseline)
    ann_j, ann_counts = ann_energy(graph, baseline, mode)
    categories = _categories(graph, counts, profile, mode, T, samples, energy)
    extra = {}
    if mesh is not None and mode == "full":
        onchip, placement, res = mesh
        ps = res["per_step"]
        host_s = _host_seconds(graph, counts, profile, T, samples, set(onchip.groups)
                               | {c.node for c in onchip.connections})
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
                 "mesh": {**{k: v for k, v in res.items() if k != "per_step"}, "per_step": ps,
                          "mt_form": profile.mt_form, "weight_sharing": profile.weight_sharing}}
    else:
        units = map_units(graph, profile) if profile.kind == "neuromorphic" else []
        steps = step_latency(graph, counts, profile, units, samples)
        cores = sum(u.cores for u in units) if units else None
        chips = math.ceil(cores / profile["architecture.cores"]) if cores else None
        npc = profile.get("architecture.neurons_per_core")
        mapping = [{"name": u.name, "kind": u.kind, "cores": u.cores,
                    "limiting_resource": "neurons" if npc and math.ceil(u.compartments / npc) >= u.cores
                    else "synapses"} for u in units]
    step_energy = [sum(categories[c][t] for c in categories) for t in range(T)]
    latency = sum(s["step_s"] for s in steps)
    static = profile["energy.static_power"] * latency
    static_c = profile.constant("energy.static_power")
    by_category = {c: sum(v) for c, v in categories.items()}
    by_category["static"] = static
    cumulative = [sum(step_energy[:t + 1]) for t in range(T)]
    return {
        "mode": mode,
        "profile": {"name": profile.name, "description": profile.description, "kind": profile.kind,
                    "spikes": profile.spikes, "host": profile.host, "path": profile.path,
                    "statuses": profile.statuses(),
                    "constants": {f"{s}.{k}": {"value": c.value, "unit": c.unit, "source": c.source,
                                                "status": c.status, **({"range": list(c.range)} if c.range else {})}
                                  for s, table in profile.constants.items() for k, c in table.items()}},
        "energy_per_step_j": step_energy,
        "energy_j": sum(step_energy),
        "energy_by_category_j": by_category,
        "energy_by_category_per_step_j": categories,
        "static_j": static,
        "static_j_range": [lo * latency for lo in static_c.range] if static_c.range else [static, static],
        "total_j": sum(step_energy) + static,
        "latency_per_step_s": [s["step_s"] for s in steps],
        "latency_s": latency,
        "cores_used": cores,
        "chips": chips,
        "mapping": mapping,
        "units": [vars(u) for u in units],
        "ann": {"profile": baseline.name, "energy_j": ann_j, "counts": ann_counts},
        "energy_ratio": (sum(step_energy) + static) / ann_j if ann_j else 0.0,
        "energy_ratio_per_t": [c / ann_j if ann_j else 0.0 for c in cumulative],
        "layers": [{"name": n.name, "kind": n.KIND, "energy_j": sum(map(sum, energy[n.name].values())),
                    "core_j": sum(energy[n.name]["core"]), "host_j": sum(energy[n.name]["host"]),
                    "memory_j": sum(energy[n.name]["memory"])} for n in graph],
        **extra,
    }


def _categories(graph, counts, profile, mode, T, samples, energy) -> dict[str, list[float]]:
    """Dynamic energy per step by category: synapse, neuron, network, host (with the
    host's memory traffic); CMOS profiles also 'analog' and 'memory'."""
    cats = {c: [0.0] * T for c in ("synapse", "neuron", "network", "host")}
    if mode == "paper":
        cats["synapse"] = [sum(e["core"][t] for e in energy.values()) for t in range(T)]
        return cats
    per = lambda name, f, t: counts[name][f][t] / samples
    if profile.kind == "neuromorphic":
        for n in graph:
            for t in range(T):
                cats["host"][t] += energy[n.name]["host"][t] + energy[n.name]["memory"][t]
                if isinstance(n, ir.MTNeuron):
                    a = per(n.name, "active_updates", t)
                    cats["neuron"][t] += (a * profile["energy.neuron_update_active"]
                                          + (per(n.name, "neuron_updates", t) - a)
                                          * profile["energy.neuron_update_inactive"])
                    cats["network"][t] += per(n.name, "spikes", t) * profile["energy.spike_route"]
                if not isinstance(n, ir.ProductECM):
                    cats["synapse"][t] += per(n.name, "sops", t) * profile["energy.sop"]
        return cats
    cats.update(analog=[0.0] * T, memory=[0.0] * T)
    for n in graph:
        for t in range(T):
            sop = per(n.name, "sops", t) * profile["energy.add"]
            neuron = per(n.name, "neuron_updates", t) * (n.levels + 2) * profile["energy.add"] \
                if isinstance(n, ir.MTNeuron) else 0.0
            cats["synapse"][t] += sop
            cats["neuron"][t] += neuron
            cats["analog"][t] += energy[n.name]["core"][t] - sop - neuron
            cats["memory"][t] += energy[n.name]["memory"][t]
    return cats


def _host_seconds(graph, counts, profile, T, samples, on_chip: set[str]) -> list[float]:
    """Per step, the host's operations over its throughput (as mapping.step_latency)."""
    out = []
    for t in range(T):
        ops = 0.0
        for n in graph:
            c = counts[n.name]
            ops += sum(c[f][t] for f in ("macs", "adds", "mults")) / samples
            ops += c["specials"][t] * SPECIAL_MACS / samples
            if n.name not in on_chip and not isinstance(n, ir.MTNeuron):
                ops += c["sops"][t] / samples if isinstance(n, ir.ProductECM) else 0.0
        out.append(ops / profile["timing.host_ops_per_second"])
    return out
