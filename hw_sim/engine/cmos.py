"""A digital CMOS accelerator: every counted operation priced at the profile's energy per
operation (hw_sim/energy.py's rates) and timed at its throughput.

Energy: per node and count field, the joules of one event by category (synapse: spike-fed
accumulates; neuron: MT updates; analog: MACs and the functions; memory: SRAM traffic),
times the counts.  Latency per step: the step's operations over ``ops_per_cycle x
clock_hz`` (phase "compute").  Static energy: the profile's static power over the latency
(full mode; the paper's formula has none).
"""
from __future__ import annotations

import torch

from ecmt import ir

from ..costs import SPECIAL_MACS, mt_update_ops
from ..counting import EventCounts
from ..energy import rates, snn_energy
from ..profile import HardwareProfile
from .base import HardwareModel, Interval, Priced, static_energy

# Count fields that are operations of the datapath: a spike of j levels into a weight is j
# shifted adds (level_sops), a special is SPECIAL_MACS MACs, an MT update mt_update_ops adds.
OP_FIELDS = ("level_sops", "macs", "adds", "mults")


class CmosModel(HardwareModel):
    kind = "cmos"

    def _ops(self, counts: EventCounts, node: ir.Node, t: int, per_sample=None) -> float:
        c = counts.nodes[node.name]
        ops = sum(c[f][t] for f in OP_FIELDS) + c["specials"][t] * SPECIAL_MACS
        if isinstance(node, ir.MTNeuron):
            ops += c["neuron_updates"][t] * mt_update_ops(node)
        return ops / counts.samples

    def latency(self, counts: EventCounts, profile: HardwareProfile) -> list[float]:
        rate = profile["timing.ops_per_cycle"] * profile["timing.clock_hz"]
        return [sum(self._ops(counts, n, t) for n in self.graph) / rate for t in range(counts.T)]

    def price(self, counts: EventCounts, profile: HardwareProfile, mode: str) -> Priced:
        per_node = snn_energy(self.graph, counts, profile, mode)
        T = counts.T
        categories = sorted({c for e in per_node.values() for c in e})
        energy = {c: [sum(e[c][t] for e in per_node.values() if c in e) for t in range(T)] for c in categories}
        latency = self.latency(counts, profile)
        energy["static"] = static_energy(profile["energy.static_power"] if mode == "full" else 0.0, latency)
        layers = {name: {c: sum(v) for c, v in e.items()} for name, e in per_node.items()}
        return Priced(energy, latency, {"compute": latency}, layers)

    def reprices(self, key: str) -> bool:
        return True             # every constant enters the rates or the throughput

    def interval(self, counts: EventCounts, mode: str, priced: Priced) -> Interval:
        """Per sample, the data-dependent counts times the rates; the latency per sample is its
        operations over the throughput (the only data-dependent operations are the accumulates)."""
        per_sample, samples = counts.per_sample_steps, counts.samples
        if not per_sample or samples < 2:
            return Interval(None, None, "fewer than 2 samples: no interval")
        table = rates(self.graph, self.profile, mode)
        energy = torch.zeros(samples, counts.T, dtype=torch.float64)
        ops = torch.zeros(samples, counts.T, dtype=torch.float64)
        for name, fields in per_sample.items():
            for field, values in fields.items():
                joules = sum(table[name].get(field, {}).values())
                if joules:
                    energy += values.double() * joules
                if field in OP_FIELDS:
                    ops += values.double()
        seconds = ops / (self.profile["timing.ops_per_cycle"] * self.profile["timing.clock_hz"])
        power = self.profile["energy.static_power"] if mode == "full" else 0.0
        energy += power * seconds                   # static energy follows each sample's latency
        return Interval(energy, seconds.sum(1), "per sample, the operations over the throughput")

    def describe(self) -> dict:
        return {"cores": None, "chips": None, "mapping": []}
