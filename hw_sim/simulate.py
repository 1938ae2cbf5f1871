"""hw_sim.simulate: replay a graph on real inputs, count events, price them."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ecmt import distributed, ir
from ecmt.runtime import GraphExecutor

from . import report as report_mod
from .counting import FIELDS, Counter, to_lists
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
    correct = torch.zeros(T, dtype=torch.long)
    n = len(inputs)
    # Under torchrun each rank replays its share of the batches; counts are summed across ranks.
    starts = distributed.shard(range(0, n, batch_size))
    for start in tqdm(starts, desc=f"hw_sim (T={T})", unit="batch",
                      disable=not progress or not distributed.is_main(), leave=False):
        x = inputs[start:start + batch_size]
        est = executor.run(x.to(executor.device), T, observer=counter)
        if labels is not None:
            y = labels[start:start + batch_size].to(est.device)
            correct += (est.argmax(-1) == y.unsqueeze(0)).sum(dim=1).cpu()
    counts = to_lists(distributed.all_reduce_tree(counter.result()))
    correct = distributed.all_reduce_sum(correct)
    return report_mod.Report(build(graph, counts, profiles, modes, T, n,
                                   (correct.double() / n).tolist() if labels is not None else None))


def build(graph, counts, profiles: list[HardwareProfile], modes: list[str], T: int, samples: int,
          accuracy) -> dict:
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
        "hardware": [_price(graph, counts, p, m, T, samples) for m in modes for p in profiles],
    }
    return data


def _paper_figures(graph, counts, samples, T) -> dict:
    sops = [sum(c["paper_sops"][t] for c in counts.values()) / samples for t in range(T)]
    dense_step = [sum(c["paper_dense"][t] for c in counts.values()) / samples for t in range(T)]
    return {"sops_per_step": sops, "dense_per_step": dense_step,
            "firing_rate": sum(sops) / sum(dense_step) if sum(dense_step) else 0.0}


def _price(graph, counts, profile: HardwareProfile, mode: str, T: int, samples: int) -> dict:
    energy = snn_energy(graph, counts, profile, mode, samples)
    step_energy = [sum(e["core"][t] + e["host"][t] + e["memory"][t] for e in energy.values()) for t in range(T)]
    baseline = profile if profile.ann_baseline == "self" else load_profile(profile.ann_baseline)
    ann_j, ann_counts = ann_energy(graph, baseline, mode)
    units = map_units(graph, profile) if profile.kind == "neuromorphic" else []
    steps = step_latency(graph, counts, profile, units, samples)
    latency = sum(s["step_s"] for s in steps)
    static = profile["energy.static_power"] * latency
    cores = sum(u.cores for u in units) if units else None
    cumulative = [sum(step_energy[:t + 1]) for t in range(T)]
    return {
        "mode": mode,
        "profile": {"name": profile.name, "description": profile.description, "kind": profile.kind,
                    "spikes": profile.spikes, "host": profile.host, "path": profile.path,
                    "statuses": profile.statuses(),
                    "constants": {f"{s}.{k}": {"value": c.value, "unit": c.unit, "source": c.source,
                                                "status": c.status}
                                  for s, table in profile.constants.items() for k, c in table.items()}},
        "energy_per_step_j": step_energy,
        "energy_j": sum(step_energy),
        "static_j": static,
        "total_j": sum(step_energy) + static,
        "latency_per_step_s": [s["step_s"] for s in steps],
        "latency_s": latency,
        "cores_used": cores,
        "chips": math.ceil(cores / profile["architecture.cores"]) if cores else None,
        "units": [vars(u) for u in units],
        "ann": {"profile": baseline.name, "energy_j": ann_j, "counts": ann_counts},
        "energy_ratio": (sum(step_energy) + static) / ann_j if ann_j else 0.0,
        "energy_ratio_per_t": [c / ann_j if ann_j else 0.0 for c in cumulative],
        "layers": [{"name": n.name, "kind": n.KIND, "energy_j": sum(map(sum, energy[n.name].values())),
                    "core_j": sum(energy[n.name]["core"]), "host_j": sum(energy[n.name]["host"]),
                    "memory_j": sum(energy[n.name]["memory"])} for n in graph],
    }
