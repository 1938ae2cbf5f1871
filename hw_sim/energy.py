"""From counts to energy and latency, for one hardware profile.

Two counting modes:

* ``paper``: the ECMT paper's formula.  Only Linear layers and product ECMs
  count; SNN energy = E_AC * (synaptic ops over all T steps), ANN energy =
  E_MAC * (dense MACs of one forward).  With cmos45-fp32 this is exactly the
  paper's 0.9 * SOP / (4.6 * D).
* ``full``: everything.  On a neuromorphic profile, synaptic ops driven by
  MT spikes, neuron updates and spike routing run on the cores; the rest
  (analog layers, ECM nonlinearities and bookkeeping, products of two spike
  streams, whose weights change every step, residual adds, state traffic)
  runs on the profile's host processor as primitive operations.  On a CMOS
  profile everything runs on the accelerator, with a memory access per
  weight used and per state element read or written.

Pricing is linear in the counts: `rates` gives, per node and count field, the
joules one event costs by category, and `snn_energy` multiplies them by the
counts.  Re-pricing with one constant changed (hw_sim/simulate.py's range
and sensitivity) is a new `rates` on a copy of the profile, without the network.

Per-inference figures: counts are divided by the number of samples.
"""
from __future__ import annotations

import math

from ecmt import ir

from .costs import SPECIAL_MACS, forward_work
from .counting import EventCounts
from .profile import HardwareProfile


# -- the ANN at the same places, analytically ------------------------------------------------
def ann_work(graph: ir.SpikingGraph) -> dict[str, dict[str, int]]:
    """Per node, the work of one ANN forward for one sample (costs.forward_work) and its
    weight reads (one per multiply-accumulate)."""
    work = {}
    for node in graph:
        w = forward_work(graph, node)
        work[node.name] = {**w, "weight_reads": w["macs"]}
    return work


def ann_energy(graph: ir.SpikingGraph, profile: HardwareProfile, mode: str) -> tuple[float, dict]:
    """Energy of one ANN forward on a CMOS profile (J per sample)."""
    if profile.kind != "cmos":
        raise ValueError(f"the ANN baseline needs a CMOS profile, not {profile.name}")
    work = ann_work(graph)
    if mode == "paper":
        macs = sum(w["macs"] for n, w in work.items() if isinstance(graph[n], (ir.Linear, ir.ProductECM)))
        return macs * profile["energy.mac"], {"macs": macs}
    e = profile.constants["energy"]
    total = {k: sum(w[k] for w in work.values()) for k in ("macs", "adds", "mults", "specials", "weight_reads")}
    bytes_per_value = profile.value_bits / 8
    energy = (total["macs"] * e["mac"].value + total["adds"] * e["add"].value
              + total["mults"] * e["mult"].value + total["specials"] * SPECIAL_MACS * e["mac"].value
              + total["weight_reads"] * bytes_per_value / 8 * e["sram_read_64b"].value)
    return energy, total


# -- the spiking network -------------------------------------------------------------------
# Categories of dynamic energy.  Neuromorphic profiles: synapse, neuron, network on the cores,
# host (the host's operations and its memory traffic).  CMOS profiles: synapse (SOPs as adds),
# neuron (MT updates), analog (every other operation) and memory (SRAM traffic).
CATEGORIES = {"neuromorphic": ("synapse", "neuron", "network", "host"),
              "cmos": ("synapse", "neuron", "network", "host", "analog", "memory")}

Rates = dict[str, dict[str, dict[str, float]]]     # node -> count field -> category -> J per event


def rates(graph: ir.SpikingGraph, profile: HardwareProfile, mode: str) -> Rates:
    """Per node and count field, the energy of one counted event by category."""
    if mode == "paper":
        if profile.kind != "cmos":
            raise ValueError(f"paper mode prices on a CMOS profile only, not {profile.name}")
        return {n.name: {"paper_sops": {"synapse": profile["energy.add"]}} for n in graph}
    price = _neuromorphic if profile.kind == "neuromorphic" else _cmos
    return {n.name: price(n, profile) for n in graph}


def _neuromorphic(node, p: HardwareProfile) -> dict[str, dict[str, float]]:
    r: dict[str, dict[str, float]] = {
        "macs": {"host": p["energy.host_mac"]}, "adds": {"host": p["energy.host_add"]},
        "mults": {"host": p["energy.host_mult"]}, "specials": {"host": SPECIAL_MACS * p["energy.host_mac"]}}
    if isinstance(node, ir.ProductECM):
        r["sops"] = {"host": p["energy.host_add"]}          # dynamic weights: the host accumulates
    else:
        r["sops"] = {"synapse": p["energy.sop"]}
    if isinstance(node, ir.MTNeuron):
        inactive = p["energy.neuron_update_inactive"]
        r["neuron_updates"] = {"neuron": inactive}
        r["active_updates"] = {"neuron": p["energy.neuron_update_active"] - inactive}
        r["spikes"] = {"network": p["energy.spike_route"]}
    else:
        r["state_rw"] = {"host": 4 / 8 * p["energy.host_sram_read_64b"]}     # fp32 state on the host
    return r


def _cmos(node, p: HardwareProfile) -> dict[str, dict[str, float]]:
    e = lambda k: p[f"energy.{k}"]
    word = p.value_bits / 8 / 8 * e("sram_read_64b")             # one value: a fraction of a 64-bit access
    r = {"sops": {"synapse": e("add"), "memory": word}, "macs": {"analog": e("mac"), "memory": word},
         "adds": {"analog": e("add")}, "mults": {"analog": e("mult")},
         "specials": {"analog": SPECIAL_MACS * e("mac")}, "state_rw": {"memory": word}}
    if isinstance(node, ir.MTNeuron):
        # add the input, compare against each level, subtract the spike
        r["neuron_updates"] = {"neuron": (node.levels + 2) * e("add")}
    return r


def snn_energy(graph: ir.SpikingGraph, counts: EventCounts, profile: HardwareProfile,
               mode: str) -> dict[str, dict[str, list[float]]]:
    """Per node and category: energy per step (J per inference)."""
    T = counts.T
    cats = CATEGORIES["cmos" if mode == "paper" else profile.kind]
    out = {}
    for name, fields in rates(graph, profile, mode).items():
        per = {c: [0.0] * T for c in cats}
        for field, by_cat in fields.items():
            steps = counts.per_step(name, field)
            for c, joules in by_cat.items():
                row = per[c]
                for t in range(T):
                    row[t] += steps[t] * joules
        out[name] = per
    return out
