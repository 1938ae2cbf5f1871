"""Cycle-level model: map the graph onto neuromorphic cores and time each step.

Units that live on cores: synaptic layers fed by spikes (their output
accumulators are compartments, their weights synapses) and MT neurons
(compartments).  A unit gets as many cores as its compartments or its
synapses need, whichever is more (layers that do not fit are split).  Weights
are not shared between token positions or conv positions (each compartment
holds its own fan-in), and on binary-spike hardware each input synapse is
replicated for the 2n parallel level channels (parallel parameter
normalization).

Per step, each core processes the synaptic events routed to it and updates
its compartments; the unit's work is split evenly over its cores.  The step
latency is the slowest core, plus the host's time for the work cores cannot
do (done between core phases), plus the barrier.  CMOS profiles have no
cores: their step latency is the step's operations over the accelerator's
throughput.
"""
from __future__ import annotations

import dataclasses
import math

from ecmt import ir
from ecmt.ir import analysis

from .costs import SPECIAL_MACS, mt_update_ops
from .counting import EventCounts
from .profile import HardwareProfile


@dataclasses.dataclass
class Unit:
    name: str
    kind: str
    compartments: int
    synapses: int
    cores: int


def spike_levels(graph: ir.SpikingGraph, node: ir.Node) -> int:
    """2n for an input fed by an MT neuron with n levels (through shape ops), else 1."""
    src = analysis.spike_source(graph, node.inputs[0])
    if src is None:
        return 1
    return 2 * src.neuron.levels if src.neuron.signed else src.neuron.levels


def map_units(graph: ir.SpikingGraph, profile: HardwareProfile) -> list[Unit]:
    npc = profile["architecture.neurons_per_core"]
    spc = profile["architecture.synapses_per_core"]
    units = []
    for node in graph:
        if isinstance(node, ir.MTNeuron):
            comp, syn = math.prod(graph.shapes[node.name]), 0
        elif isinstance(node, (ir.Linear, ir.Conv2d)) and graph.spiking[node.inputs[0]]:
            comp = math.prod(graph.shapes[node.name])
            fan_in = node.weight.shape[1] * (node.weight.shape[2] * node.weight.shape[3]
                                             if isinstance(node, ir.Conv2d) else 1)
            channels = spike_levels(graph, node) if profile.spikes == "binary" else 1
            syn = comp * fan_in * channels
        else:
            continue
        cores = max(1, math.ceil(comp / npc), math.ceil(syn / spc) if syn else 0)
        units.append(Unit(node.name, node.KIND, comp, syn, cores))
    return units


def step_latency(graph: ir.SpikingGraph, counts: EventCounts, profile: HardwareProfile,
                 units: list[Unit]) -> list[dict]:
    """Per step: seconds on the slowest core, on the host, and in total (per inference)."""
    per = lambda name, field, t: counts.nodes[name][field][t] / counts.samples
    rows = []
    for t in range(counts.T):
        if profile.kind == "cmos":
            # a spike of j levels into a weight is j shifted adds (energy.py)
            ops = sum(per(n, f, t) for n in counts.nodes for f in ("level_sops", "macs", "adds", "mults"))
            ops += sum(per(n, "specials", t) for n in counts.nodes) * SPECIAL_MACS
            ops += sum(per(n.name, "neuron_updates", t) * mt_update_ops(n) for n in graph.of_kind(ir.MTNeuron))
            seconds = ops / (profile["timing.ops_per_cycle"] * profile["timing.clock_hz"])
            rows.append({"core_s": seconds, "host_s": 0.0, "step_s": seconds})
            continue
        slowest = 0.0
        for u in units:
            if u.kind == ir.MTNeuron.KIND:
                active = per(u.name, "active_updates", t)
                work = (active * profile["timing.neuron_update_active"]
                        + (per(u.name, "neuron_updates", t) - active) * profile["timing.neuron_update_inactive"])
            else:       # a binary chip takes each fired level as its own synaptic event
                work = per(u.name, "level_sops" if profile.spikes == "binary" else "sops", t) * profile["timing.sop"]
            slowest = max(slowest, work / u.cores)
        on_core = {u.name for u in units}
        host_ops = 0.0
        for n in graph:
            host_ops += sum(per(n.name, f, t) for f in ("macs", "adds", "mults"))
            host_ops += per(n.name, "specials", t) * SPECIAL_MACS
            if n.name not in on_core:
                host_ops += per(n.name, "level_sops", t)    # products of spike streams: a shifted add per level
        host = host_ops / profile["timing.host_ops_per_second"]
        rows.append({"core_s": slowest, "host_s": host, "step_s": slowest + host + profile["timing.barrier"]})
    return rows
