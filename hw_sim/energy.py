"""Energy per counted event, for one hardware profile: the price table every model uses.

Two counting modes:

* ``paper``: the ECMT paper's formula.  Only Linear layers and product ECMs
  count; SNN energy = E_AC * (synaptic ops over all T steps), ANN energy =
  E_MAC * (dense MACs of one forward).  With cmos45-fp32 this is exactly the
  paper's 0.9 * SOP / (4.6 * D).
* ``full``: everything.  On a CMOS profile everything runs on the accelerator,
  with a memory access per weight used and per state element read or written.
  On a neuromorphic profile the mesh model (hw_sim/engine/mesh) prices what its
  cores do from the recorded spikes; the rest (analog layers, ECM nonlinearities
  and bookkeeping, products of two spike streams, whose weights change every
  step, residual adds, state traffic, and spike-fed work the cores cannot hold)
  runs on the profile's host cores as primitive operations: ``rates`` with the
  set of nodes on the cores.

Spike formats (the profile's ``spikes``), for neurons that send up to k
levels per step (spikes_per_step; a spike fires j <= k levels, ``level_spikes``
and ``level_sops`` count them, counting.py): a ``graded`` chip sends one event
carrying the sum and does one synaptic op per (event, weight); a ``binary``
chip sends each fired level as its own event on its level channel, j synaptic
ops per weight; a CMOS datapath (``values``) reads the weight once and does
j shifted adds (docs/energy.md).  With k = 1 all three count the same.

Pricing is linear in the counts: `rates` gives, per node and count field, the
joules one event costs by category, and `snn_energy` multiplies them by the
counts.  Re-pricing with one constant changed (hw_sim/price.py's range
and sensitivity) is a new `rates` on a copy of the profile, without the network.

Per-inference figures: counts are divided by the number of samples.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping

from ecmt import ir
from ecmt.ir.dispatch import KindTable

from .costs import SPECIAL_MACS, forward_work, mt_update_ops
from .counting import FIELDS, EventCounts
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
# chip links between chips, host (the host's operations, memory traffic and chip-host
# transfers).  CMOS profiles: synapse (SOPs as adds), neuron (MT updates), analog (every other
# operation) and memory (SRAM traffic).  Both add static.
CATEGORIES = {"neuromorphic": ("synapse", "neuron", "network", "chip_links", "host"),
              "cmos": ("synapse", "neuron", "analog", "memory")}

Rates = dict[str, dict[str, dict[str, float]]]     # node -> count field -> category -> J per event


def rates(graph: ir.SpikingGraph | Iterable[ir.Node], profile: HardwareProfile, mode: str,
          on_chip: frozenset = frozenset()) -> Rates:
    """Per node and count field, the energy of one counted event by category.  On a
    neuromorphic profile, the host's share only: `on_chip` names the nodes whose spike-driven
    work the cores do (the mesh model prices that)."""
    if mode == "paper":
        if profile.kind != "cmos":
            raise ValueError(f"paper mode prices on a CMOS profile only, not {profile.name}")
        return {n.name: {"paper_sops": {"synapse": profile["energy.add"]}} for n in graph}
    if profile.kind == "neuromorphic":
        return {n.name: _host(n, profile, n.name in on_chip) for n in graph}
    return {n.name: _cmos(n, profile) for n in graph}


def spike_format(graph: ir.SpikingGraph, profile: HardwareProfile) -> dict:
    """How the profile carries the graph's spikes, for the report: the kind, the most levels one
    spike carries (the graph's largest spikes_per_step k), the most events or adds it costs, and on
    graded chips the payload: the fired levels as an integer m < 2^levels (k > 1) or the level's
    number (k = 1), plus a sign bit for signed neurons."""
    mts = graph.of_kind(ir.MTNeuron)
    k = max((n.spikes_per_step for n in mts), default=1)
    if profile.spikes == "graded":
        bits = max((n.levels if n.spikes_per_step > 1 else math.ceil(math.log2(n.levels + 1))) + int(n.signed)
                   for n in mts) if mts else 0
        return {"kind": "graded", "spikes_per_step": k, "events_per_spike": 1, "payload_bits": bits,
                "rule": "one graded event per spike, its levels' sum as payload; one synaptic op per weight"}
    if profile.spikes == "binary":
        return {"kind": "binary", "spikes_per_step": k, "events_per_spike": k,
                "rule": f"one binary event per fired level (up to {k} per spike), on its level channel; "
                        "one synaptic op per event and weight"}
    return {"kind": "values", "spikes_per_step": k, "events_per_spike": 1, "adds_per_synapse": k,
            "rule": f"the spike as a value: one weight read and one shifted add per fired level (up to {k})"}


def host_ops(node, on_chip: bool) -> dict[str, int]:
    """Per count field, the host's primitive operations per event of `node` (what `_host`
    prices; the host's time is these over its throughput)."""
    ops = {"macs": 1, "adds": 1, "mults": 1, "specials": SPECIAL_MACS}
    role = KINDS(node)
    if role == "neuron" and not on_chip:
        ops["neuron_updates"] = mt_update_ops(node)
    elif role == "product" or (role == "layer" and not on_chip):
        ops["level_sops"] = 1
    return ops


def _host(node, p: HardwareProfile, on_chip: bool) -> dict[str, dict[str, float]]:
    """What the host cores pay per event: analog operations, the state of ECMs and products
    (fp32), a shifted add per level a spike carries into a product (its weights change every
    step) or into a spike-fed layer the cores do not hold, and the updates of MT neurons
    that are not on the cores."""
    h = lambda k: p[f"host.{k}"]
    word = 4 / 8 * h("e_sram_read_64b")                  # one fp32 value
    r: dict[str, dict[str, float]] = {
        "macs": {"host": h("e_mac")}, "adds": {"host": h("e_add")},
        "mults": {"host": h("e_mult")}, "specials": {"host": SPECIAL_MACS * h("e_mac")}}
    role = KINDS(node)
    if role == "neuron":
        if not on_chip:
            r["neuron_updates"] = {"host": mt_update_ops(node) * h("e_add")}
            r["state_rw"] = {"host": word}
    else:
        r["state_rw"] = {"host": word}
        if role == "product" or not on_chip:
            r["level_sops"] = {"host": h("e_add")}
    return r


def _cmos(node, p: HardwareProfile) -> dict[str, dict[str, float]]:
    e = lambda k: p[f"energy.{k}"]
    word = p.value_bits / 8 / 8 * e("sram_read_64b")             # one value: a fraction of a 64-bit access
    # a spike of j levels into a weight: the weight read once, j shifted adds (docs/energy.md)
    r = {"level_sops": {"synapse": e("add")}, "sops": {"memory": word}, "macs": {"analog": e("mac"), "memory": word},
         "adds": {"analog": e("add")}, "mults": {"analog": e("mult")},
         "specials": {"analog": SPECIAL_MACS * e("mac")}, "state_rw": {"memory": word}}
    if KINDS(node) == "neuron":
        r["neuron_updates"] = {"neuron": mt_update_ops(node) * e("add")}
    return r


# How each node kind's counted events are priced (_neuromorphic, _cmos): "neuron" (an MT
# neuron: updates and spikes on the cores), "product" (a product ECM: its weights change at
# run time, so the host accumulates its synaptic ops) or "layer" (synaptic ops on the cores,
# state and functions on the host or the analog datapath).
KINDS = KindTable("hw_sim energy", {
    ir.MTNeuron: "neuron",
    ir.MTNeuronPPN: "neuron",
    ir.ProductECM: "product",
    **{kind: "layer" for kind in (
        ir.Input, ir.Constant, ir.Output, ir.Linear, ir.Conv2d, ir.GELUECM, ir.ReLUECM, ir.ElementwiseECM,
        ir.SoftmaxECM, ir.LayerNormECM, ir.MaxPool2d, ir.Add, ir.Scale, ir.Reshape, ir.Permute, ir.Slice,
        ir.Select, ir.Concat, ir.Mean, ir.AvgPool2d)},
})


def snn_energy(graph: ir.SpikingGraph | Iterable[ir.Node], counts: EventCounts, profile: HardwareProfile,
               mode: str, fields: Mapping[type, Collection[str]] | None = None,
               on_chip: frozenset = frozenset()) -> dict[str, dict[str, list[float]]]:
    """Per node and category: energy per step (J per inference).

    `graph` may be any ir nodes named as in `counts`: a network hw_sim cannot run (another
    simulator's) is priced at these same rates by describing each of its units as the ir node
    it equals (a one-level IF neuron as ``MTNeuron(levels=1)``, a dense layer as ``Linear``)
    and counting its events into hw_sim's count fields (counting.FIELDS).  `fields`: price
    only these count fields, per node kind (matched with isinstance; a node of no listed kind
    costs nothing), e.g. synaptic events and neuron updates alone.  `on_chip`: as `rates`."""
    nodes = list(graph)
    if fields is not None:
        unknown = sorted({f for chosen in fields.values() for f in chosen} - set(FIELDS))
        if unknown:
            raise ValueError(f"hw_sim snn_energy: unknown count field(s) {', '.join(map(repr, unknown))}; "
                             f"hw_sim counts {', '.join(FIELDS)}")
    T = counts.T
    cats = CATEGORIES["cmos" if mode == "paper" else profile.kind]
    out = {}
    all_rates = rates(nodes, profile, mode, on_chip)
    for node in nodes:
        name = node.name
        table = all_rates[name]
        if fields is not None:
            chosen = next((f for kind, f in fields.items() if isinstance(node, kind)), ())
            table = {f: by_cat for f, by_cat in table.items() if f in chosen}
        per = {c: [0.0] * T for c in cats}
        for field, by_cat in table.items():
            steps = counts.per_step(name, field)
            for c, joules in by_cat.items():
                row = per[c]
                for t in range(T):
                    row[t] += steps[t] * joules
        out[name] = per
    return out
