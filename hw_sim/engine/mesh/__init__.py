"""Every neuromorphic chip, one engine: the graph's on-chip part mapped onto a system of
chips, each a mesh of tiles of cores (hw_sim/mesh.py: extract, place, record, account,
schedule), the rest run on the host cores, everything priced and timed from the run.

Per step and inference:

* energy: synapse, neuron, network (on-chip messages and hops) and chip_links from the
  mapped model's accounting of the recorded spikes; host: the host cores' operations and
  memory (energy.rates with the on-chip nodes left out) plus chip-host transfers; static:
  the chips' static power over the step's latency;
* latency by phase: ``cores`` the detailed schedule of every chip phase (a host round trip
  in a step starts a new phase), ``barrier`` one barrier per phase, ``chip_links`` the
  chip-to-chip link delays on the critical path, ``host`` the host's operations over its
  throughput plus the chip-host transfers.  Host and cores do not overlap: a phase needs
  the host's results of the phase before, and the host the phase's spikes.  A profile with
  a ``tick`` (TrueNorth, SpiNNaker 2) gives every phase at least one tick.
"""
from __future__ import annotations

import torch

from ecmt import ir

from ... import mesh as mesh_mod
from ...counting import EventCounts
from ...energy import host_ops, rates, snn_energy
from ...profile import HardwareProfile
from ..base import HardwareModel, Interval, Priced, static_energy

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
# samples; the nominal chip latency is scaled by their ratio.
RETIME_SAMPLES = 4


def _timing(key: str) -> bool:
    """A constant the detailed schedule reads (re-timed by Accounting.retime)."""
    section, name = key.split(".", 1)
    return key not in LINEAR and ((section == "mesh" and name.startswith(("t_", "barrier_")))
                                  or key in ("mesh.link_buffer", "chips.t_link", "chips.barrier_256"))


class MeshModel(HardwareModel):
    kind = "neuromorphic"
    records = True

    def __init__(self, graph: ir.SpikingGraph, profile: HardwareProfile, T: int):
        super().__init__(graph, profile, T)
        self.onchip = mesh_mod.extract(graph, profile)
        self.placement = mesh_mod.place(self.onchip, profile)
        self.accounting = mesh_mod.Accounting(self.onchip, self.placement, profile, T)
        self.on_chip = frozenset(self.onchip.groups) | frozenset(c.node for c in self.onchip.connections)
        # a system has at least one chip, whose host cores do the work when nothing maps on its cores
        self.chips = max(1, self.placement.chips)
        self._recorder = None
        self._result = None

    # -- the run --------------------------------------------------------------------------------
    def observer(self, executor):
        self._recorder = mesh_mod.Recorder(executor, self.onchip, self.T)
        return self._recorder

    def add_batch(self) -> None:
        self.accounting.add(self._recorder.take())
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
        if any(_timing(k) and profile[k] != nominal[k] for k in nominal.keys()):
            acc = self.accounting
            new = acc.retime(profile, RETIME_SAMPLES).mean(0).tolist()
            old = acc.retime(nominal, RETIME_SAMPLES).mean(0).tolist()
            ps["chip_latency_s"] = [v * a / b if b else a for v, a, b in zip(ps["chip_latency_s"], new, old)]
        return ps

    def _host_seconds(self, counts: EventCounts, profile: HardwareProfile, per_sample=None) -> list[float]:
        """Per step, the host's operations over the throughput of all its cores."""
        cores = profile["host.cores_per_chip"] * self.chips + profile["host.cores_off_chip"]
        rate = cores * profile["host.ops_per_second"]
        out = []
        for t in range(counts.T):
            ops = 0.0
            for n in self.graph:
                c = counts.nodes[n.name]
                ops += sum(c[f][t] * k for f, k in host_ops(n, n.name in self.on_chip).items() if f in c)
            out.append(ops / counts.samples / rate)
        return out

    def price(self, counts: EventCounts, profile: HardwareProfile, mode: str) -> Priced:
        ps = self._per_step(profile)
        T = counts.T
        host_nodes = snn_energy(self.graph, counts, profile, "full", on_chip=self.on_chip)
        host = [sum(e["host"][t] for e in host_nodes.values()) + ps["host_transfer_j"][t] for t in range(T)]
        host_s = self._host_seconds(counts, profile)
        phases_used = len(set(self.accounting.phase_of_core.tolist())) if self.placement.cores else 0
        bar = mesh_mod.barrier(profile, self.placement.tiles_in_use, self.placement.chips)
        barrier = [phases_used * bar] * T
        cores = [max(0.0, c - b) for c, b in zip(ps["chip_latency_s"], barrier)]
        tick = profile.get("chips.tick")
        if tick:                            # every chip phase takes at least a tick
            cores = [max(c, phases_used * tick - b) for c, b in zip(cores, barrier)]
        phases = {"cores": cores, "chip_links": [0.0] * T, "barrier": barrier,
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
        return key in LINEAR or _timing(key) or section == "host" or key == "chips.static_power"

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
        latency = chip.sum(1) + host[:len(chip)].sum(1) if len(chip) >= 2 else None
        power = self.profile["chips.static_power"] * self.chips
        energy += power * host                      # static energy follows each sample's latency
        if len(chip) == samples:
            energy += power * chip
        basis = (f"the detailed schedule's chip latency of each of the {len(chip)} scheduled samples plus the "
                 "host's time for its counts; chip-host transfer times at their mean")
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
