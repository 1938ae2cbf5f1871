"""The neuromorphic engine behind the HardwareModel interface: MeshModel (see the package's
docstring for what it prices and times)."""
from __future__ import annotations

import torch

from ecmt import ir

from ...counting import EventCounts
from ...energy import host_ops, rates, snn_energy
from ...profile import HardwareProfile
from ..base import HardwareModel, Interval, Priced, static_energy
from .account import SCHEDULE_CONSTANTS, Accounting
from .extract import extract
from .place import place
from .record import Recorder
from .topology import barrier

# Constants the accounting prices linearly: the per-step field they price and the per-step
# count they multiply (None: every mapped neuron, every step).
LINEAR = {
    "mesh.e_synaptic_event": ("synapse_j", "synaptic_events"),
    "mesh.e_neuron_update": ("neuron_j", "neurons_updated"),
    "mesh.e_spike_out": ("neuron_j", "neurons_fired"),
    "mesh.e_neuron_access": ("neuron_j", None),
    "mesh.e_message_out": ("network_j", "messages"),
    "mesh.e_message_in": ("network_j", "messages"),
    "mesh.e_hop_x": ("network_j", "hops_x"),
    "mesh.e_hop_y": ("network_j", "hops_y"),
    "chips.e_link": ("link_j", "links"),
    "host.e_transfer": ("host_transfer_j", "host_transfers"),
    "host.t_transfer": ("host_transfer_s", "host_transfers"),
}
# Re-timing a timing constant at a range end re-runs the detailed schedule on this many of the
# samples; the nominal chip latency is scaled by their ratio.  One sample's ratio is within
# 0.6 % of every sample's on the demo ViT (docs/benchmarks/retime.md), and each sample costs
# one schedule per constant and range end: on a small test set, more than the nominal run.
RETIME_SAMPLES = 1


def retimed(key: str) -> bool:
    """A constant the chip latency reads (re-timed by Accounting.retime)."""
    return key not in LINEAR and (key in SCHEDULE_CONSTANTS or key.startswith("mesh.barrier_")
                                  or key in ("chips.barrier_256", "chips.tick"))


class MeshModel(HardwareModel):
    kind = "neuromorphic"
    records = True

    def __init__(self, graph: ir.SpikingGraph, profile: HardwareProfile, T: int):
        super().__init__(graph, profile, T)
        self.onchip = extract(graph, profile)
        self.placement = place(self.onchip, profile)
        # the report's latency is the phases' schedules: SANA-FE's single-step view is left out
        self.accounting = Accounting(self.onchip, self.placement, profile, T, retime_samples=RETIME_SAMPLES,
                                     single_step_view=False)
        self.on_chip = frozenset(self.onchip.groups) | frozenset(c.node for c in self.onchip.connections)
        # a system has at least one chip, whose host cores do the work when nothing maps on its cores
        self.chips = max(1, self.placement.chips)
        self._recorder = None
        self._result = None
        self._ops_of = (None, [])       # (counts, the host's operations per step): _host_ops

    # -- the run --------------------------------------------------------------------------------
    def observer(self, executor):
        self._recorder = Recorder(executor, self.onchip, self.T)
        return self._recorder

    def add_batch(self) -> None:
        self.accounting.add(self._recorder.take())
        self._result = None

    def reduce(self, sum_over_ranks) -> None:
        self.accounting.reduce(sum_over_ranks)
        self._result = None

    def result(self) -> dict:
        if self._result is None:
            self._result = self.accounting.result()
        return self._result

    # -- pricing ------------------------------------------------------------------------------------
    def _per_step(self, profile: HardwareProfile) -> dict[str, list[float]]:
        """The accounting's per-step figures at `profile`'s constants: linear constants re-priced
        from the counts, the chip latency re-timed where a timing constant differs."""
        res = self.result()
        ps = {k: list(v) for k, v in res["per_step"].items()}
        nominal = self.profile
        for key, (field, count) in LINEAR.items():
            delta = profile[key] - nominal[key]
            if delta:
                per = ps[count] if count else [res["mapped_neurons"]] * len(ps[field])
                ps[field] = [v + delta * c for v, c in zip(ps[field], per)]
        if any(retimed(k) and profile[k] != nominal[k] for k in nominal.keys()):
            acc = self.accounting
            new = acc.retime(profile, RETIME_SAMPLES).mean(0).tolist()
            old = acc.retime(nominal, RETIME_SAMPLES).mean(0).tolist()
            scale = [a / b if b else 1.0 for a, b in zip(new, old)]
            ps["chip_latency_s"] = [v * s if o else a for v, s, a, o in zip(ps["chip_latency_s"], scale, new, old)]
            ps["link_latency_s"] = [v * s for v, s in zip(ps["link_latency_s"], scale)]
        return ps

    def _host_seconds(self, counts: EventCounts, profile: HardwareProfile) -> list[float]:
        """Per step, the host's operations over the throughput of all its cores."""
        cores = profile["host.cores_per_chip"] * self.chips + profile["host.cores_off_chip"]
        rate = cores * profile["host.ops_per_second"]
        return [ops / counts.samples / rate for ops in self._host_ops(counts)]

    def _host_ops(self, counts: EventCounts) -> list[float]:
        """Per step, the host's operations over all samples: the same for every profile priced,
        so counted once per set of counts."""
        if self._ops_of[0] is not counts:
            ops = [0.0] * counts.T
            for n in self.graph:
                c = counts.nodes[n.name]
                terms = [(c[f], k) for f, k in host_ops(n, n.name in self.on_chip).items() if f in c]
                if terms:
                    ops = [o + sum(v[t] * k for v, k in terms) for t, o in enumerate(ops)]
            self._ops_of = (counts, ops)
        return self._ops_of[1]

    def price(self, counts: EventCounts, profile: HardwareProfile, mode: str) -> Priced:
        ps = self._per_step(profile)
        T = counts.T
        host_nodes = snn_energy(self.graph, counts, profile, "full", on_chip=self.on_chip)
        host = [sum(e["host"][t] for e in host_nodes.values()) + ps["host_transfer_j"][t] for t in range(T)]
        host_s = self._host_seconds(counts, profile)
        phases_used = int(self.accounting.present.sum()) if self.placement.cores else 0
        bar = [phases_used * barrier(profile, self.placement.tiles_in_use, self.placement.chips)] * T
        links = ps["link_latency_s"]
        # the chip latency (every phase's schedule, at least a tick, plus its barrier), in parts
        cores = [max(0.0, c - b - k) for c, b, k in zip(ps["chip_latency_s"], bar, links)]
        phases = {"cores": cores, "chip_links": links, "barrier": bar,
                  "host": [h + x for h, x in zip(host_s, ps["host_transfer_s"])]}
        latency = [sum(p[t] for p in phases.values()) for t in range(T)]
        power = profile["chips.static_power"] * self.chips
        energy = {"synapse": ps["synapse_j"], "neuron": ps["neuron_j"], "network": ps["network_j"],
                  "chip_links": ps["link_j"], "host": host, "static": static_energy(power, latency)}
        # per node: the host's share, and each on-chip group's accounting (at the nominal
        # constants: the report shows layers of the nominal pricing only)
        layers = {name: {"host": sum(e["host"])} for name, e in host_nodes.items()}
        for name, g in self.result()["groups"].items():
            mine = layers.setdefault(name, {})
            for cat, field in (("synapse", "synapse_j"), ("neuron", "neuron_j"), ("network", "network_j"),
                               ("chip_links", "link_j")):
                mine[cat] = mine.get(cat, 0.0) + g[field]
        return Priced(energy, latency, phases, layers)

    def reprices(self, key: str) -> bool:
        section = key.split(".", 1)[0]
        return key in LINEAR or retimed(key) or section == "host" or key == "chips.static_power"

    def interval(self, counts: EventCounts, mode: str, priced: Priced) -> Interval:
        """Per sample: its on-chip energy from the accounting, the host's from its counts, static
        power over its latency; its latency: the detailed schedule's chip latency of the sample
        plus the host's time for its counts (chip-host transfer times at their mean)."""
        per_sample, samples = counts.per_sample_steps, counts.samples
        if not per_sample or samples < 2:
            return Interval(None, None, "fewer than 2 samples: no interval")
        res = self.accounting
        energy = res.sample_energy_per_t().diff(dim=1, prepend=torch.zeros(samples, 1, dtype=torch.float64))
        table = rates(self.graph, self.profile, "full", self.on_chip)
        host = torch.zeros(samples, counts.T, dtype=torch.float64)
        cores = self.profile["host.cores_per_chip"] * self.chips + self.profile["host.cores_off_chip"]
        rate = cores * self.profile["host.ops_per_second"]
        for name, fields in per_sample.items():
            ops = host_ops(self.graph[name], name in self.on_chip)
            for field, values in fields.items():
                joules = sum(table[name].get(field, {}).values())
                if joules:
                    energy += values.double() * joules
                if field in ops:
                    host += values.double() * ops[field] / rate
        chip = res.sample_chip_latency()
        latency = chip.sum(1) + host.sum(1) if len(chip) == samples else None
        power = self.profile["chips.static_power"] * self.chips
        energy += power * host                      # static energy follows each sample's latency
        if len(chip) == samples:
            energy += power * chip
        basis = ("the detailed schedule's chip latency of each sample plus the host's time for its counts; "
                 "chip-host transfer times at their mean")
        return Interval(energy, latency, basis)

    def describe(self) -> dict:
        res = self.result()
        placement, onchip = self.placement, self.onchip
        mapping = [{"name": l.name, "kind": l.kind, "elements": l.elements, "neurons": l.neurons,
                    "channels": l.channels, "cores": l.cores, "first_core": l.first_core,
                    "limiting_resource": l.limiting_resource, "per_core_max": l.per_core_max,
                    "synapses": l.synapses, "phase": onchip.groups[l.name].phase} for l in placement.layers]
        private = ("per_step",)
        return {"cores": placement.cores or None, "chips": self.chips, "mapping": mapping,
                "mapping_derivation": placement.derivation,
                "mesh": {**{k: v for k, v in res.items() if k not in private}, "per_step": res["per_step"],
                         "mt_form": self.profile.mt_form, "weight_sharing": self.profile.weight_sharing}}
