"""Account and time: SANA-FE's event accounting of a mapped on-chip part from the recorded
spikes (Boyle et al. 2025; reproduced in tools/sanafe_run.py), per step:

* synaptic events = every (spike, synapse); every mapped neuron is accessed every step; a
  neuron updates when it fires, has work of its own (non-zero input from the run or non-zero
  membrane: ``extra``), or received a synaptic event at t - 1 (on the chip a spike at t
  reaches the soma at t + 1); one message per (spiking neuron, destination core), routed X
  then Y with per-hop energy and delay, and per chip boundary crossed one chip-to-chip link
  with its energy and delay; values crossing between chip and host are transfers;
* latency per step and sample: the detailed schedule (schedule.py, compiled) of every
  phase (a chip segment of a step between host round trips) plus one barrier each; with a
  ``tick`` every phase takes at least a tick; SANA-FE's single-step view (one schedule of
  every core, one barrier) as ``onchip_latency_s``; the chip links' share of the latency as
  the schedule with them against the schedule without their delays; and SANA-FE's "simple"
  model (max over cores of serial generation work and of serial processing work; over the
  whole step a lower bound of the schedule), as ``*_simple_s``.

Every sample is scheduled, in compiled code.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .extract import OnChip
from .place import Placement
from .record import Raster
from .schedule import StepSchedule, Timing
from .topology import barrier, chip_distance, core_chip, core_xy, fanout, geometry

# The per-event constants of a core, as [mesh] names them (energy e_*, latency t_*).
EVENTS = ("synaptic_event", "neuron_access", "neuron_update", "spike_out", "message_out", "message_in",
          "hop_x", "hop_y")
EVENT_CONSTANTS = tuple(f"{p}_{e}" for e in EVENTS for p in ("e", "t"))
# What the schedule reads, besides the barrier: re-timing keys on these.
SCHEDULE_CONSTANTS = tuple(f"mesh.{k}" for k in EVENT_CONSTANTS if k.startswith("t_")) + (
    "mesh.link_buffer", "chips.t_link")

STEP_FIELDS = ("synaptic_events", "neurons_fired", "neurons_updated", "messages", "hops", "hops_x", "hops_y",
               "links", "synapse_j", "neuron_j", "network_j", "link_j", "host_transfers", "host_transfer_j",
               "onchip_latency_s", "chip_latency_s", "link_latency_s", "onchip_latency_simple_s",
               "chip_latency_simple_s", "host_transfer_s")
GROUP_FIELDS = ("fired", "updated", "synaptic_events_out", "messages_out", "hops_out", "links_out", "synapse_j",
                "neuron_j", "network_j", "link_j")


# add() takes a batch this many raster values (steps x samples x elements) at a time: its
# temporaries then stay small enough for the allocator to reuse memory rather than map fresh
# pages for every operation (docs/benchmarks/hw_sim_scale.md, the demo ViT on loihi2: 30.1 s
# with the batch of 256 in one piece, 21.9 s in pieces, the same figures)
CHUNK_VALUES = 1 << 22


def popcount(mask: torch.Tensor) -> torch.Tensor:
    """The set bits of each value of a raster mask (its fired channels), uint8, same shape."""
    a = mask.contiguous().numpy()
    # numpy counts a signed value's magnitude: an int64 mask's sign bit is channel 63
    return torch.from_numpy(np.bitwise_count(a.view(np.uint64) if a.dtype == np.int64 else a))


def count_last(values: torch.Tensor) -> torch.Tensor:
    """The sum over the last axis of 8-bit or bool values, float64 (numpy's reduction, which
    does not widen every element first as torch's does)."""
    return torch.from_numpy(np.add.reduce(values.contiguous().numpy(), axis=-1, dtype=np.int64)).double()


def without_network_load(profile):
    """`profile` without its link buffer: the schedule with every trip at its hop delays
    (messages queue only at their destination)."""
    mesh_table = {k: c for k, c in profile.constants["mesh"].items() if k != "link_buffer"}
    return dataclasses.replace(profile, constants={**profile.constants, "mesh": mesh_table})


def without_link_delay(profile):
    """`profile` with no chip-to-chip link delay: what the schedule would be on one big chip."""
    return profile.with_value("chips.t_link", 0.0)


class Accounting:
    """SANA-FE's accounting of a mapped on-chip part, summed over the samples of every
    batch given to add(); per step (lists of T) and per group.  Every sample is scheduled
    (hw_sim/schedule.py, compiled).  The spikes of the first `retime_samples` samples
    (None: all) are kept for retime()."""

    def __init__(self, onchip: OnChip, placement: Placement, profile, T: int, retime_samples: int | None = None,
                 single_step_view: bool = True):
        """`retime_samples`: how many samples' spikes to keep for retime() and for the chip
        links' share of the latency (None: all); `single_step_view`: also schedule every core
        as one step with one barrier (``onchip_latency_s``, SANA-FE's view; costs as much
        again as the phases' schedules)."""
        if retime_samples is not None and retime_samples < 0:
            raise ValueError(f"retime_samples must be >= 0 or None, got {retime_samples}")
        self.onchip, self.placement, self.profile, self.T = onchip, placement, profile, T
        self.k = {k: profile[f"mesh.{k}"] for k in EVENT_CONSTANTS}
        self.k.update(e_host_transfer=profile["host.e_transfer"], t_host_transfer=profile["host.t_transfer"],
                      e_link=profile["chips.e_link"])
        C = placement.cores
        x, y = core_xy(profile, C)
        chip = core_chip(profile, C)
        crossings = chip_distance(profile, placement.chips)
        fan = fanout(onchip, placement)
        # per source element, per spike: messages, synaptic events, hops in x and y, links
        self.tables = {}
        for name, f in fan.items():
            n, rows = onchip.groups[name].elements, f.rows()
            src = placement.core_of[name][rows]
            per = lambda v: torch.zeros(n, dtype=torch.float64).index_add_(0, rows, v.double())
            self.tables[name] = torch.stack([f.per_element().double(), per(f.synapses), per((x[f.core] - x[src]).abs()),
                                             per((y[f.core] - y[src]).abs()),
                                             per(crossings[chip[src], chip[f.core.long()]])], 1)
            del rows, src
        self.neurons = sum(g.neurons for g in onchip.groups.values())
        self.elements = sum(g.elements for g in onchip.groups.values())
        self.phase_of_core = torch.zeros(C, dtype=torch.long)
        for name, g in onchip.groups.items():
            self.phase_of_core[placement.core_of[name]] = g.phase
        # the phases that hold cores: each is scheduled alone and has its barrier
        self.present = torch.bincount(self.phase_of_core, minlength=onchip.phases + 1)[1:] > 0
        self.barrier = barrier(profile, placement.tiles_in_use, placement.chips)
        self.tick = profile.get("chips.tick") or 0.0
        # the schedule's tables, built once: re-timing changes only its constants
        self.schedule = StepSchedule(placement.core_of, {n: g.channels for n, g in onchip.groups.items()}, fan,
                                     self.phase_of_core, onchip.phases, geometry(profile, C))
        del fan
        self.timing = Timing.of(profile)
        # the chip links' share of the latency: the kept samples' schedule again without their
        # delays, that share of the chip latency (exact where every sample is kept)
        self.linked = placement.chips > 1 and profile["chips.t_link"] > 0
        self.unlinked = Timing.of(without_link_delay(profile)) if self.linked else None
        self.link_share = {"linked": [0.0] * T, "unlinked": [0.0] * T}
        self.single_step_view = single_step_view
        self.samples = 0
        self.local_samples = 0          # this process's (under torchrun, samples is every rank's)
        self.retime_samples = retime_samples
        self.sample_j: list[torch.Tensor] = []      # per batch, each sample's on-chip energy over T [B]
        self.sample_t_j: list[torch.Tensor] = []    # per batch, the same up to each step t [B, T]
        self.sample_chip_s: list[torch.Tensor] = []  # per batch, each sample's detailed chip latency [B, T]
        self.kept: list[tuple] = []     # per batch: (first sample, masks, updated [T, kept, n]), for retime
        self._spans: dict = {}          # retime's phase spans, by timing constants
        self.step = {f: [0.0] * T for f in STEP_FIELDS}
        self.group = {name: {f: 0.0 for f in GROUP_FIELDS} for name in onchip.groups}

    def _chip(self, parts: torch.Tensor, bar: float, tick: float | None = None) -> torch.Tensor:
        """Chip latency from per-phase spans [..., phases]: each phase with cores, plus its barrier,
        and at least a tick where the chip has one."""
        tick = self.tick if tick is None else tick
        return (parts[..., self.present] + bar).clamp(min=tick).sum(-1)

    def _kept_parts(self, masks: dict, updated: dict, timing: Timing) -> torch.Tensor:
        """The phase spans [T, n, phases] of kept spikes (masks, updated: [T, n, elements])."""
        T, n = next(iter(masks.values())).shape[:2]
        flat = lambda d: {g: v.reshape(T * n, -1) for g, v in d.items()}
        return self.schedule.spans(flat(masks), flat(updated), timing, False).parts.view(T, n, -1)

    def add(self, rasters: dict[str, Raster]) -> None:
        """Account a batch's rasters (record.Recorder.take()), a few samples at a time."""
        B = next(iter(rasters.values())).fired.shape[1]
        step = max(1, CHUNK_VALUES // max(1, self.T * self.elements))
        for s in range(0, B, step):
            self._add({n: Raster(r.fired[:, s:s + step], r.extra[:, s:s + step]) for n, r in rasters.items()})

    def _add(self, rasters: dict[str, Raster]) -> None:
        k, T = self.k, self.T
        B = next(iter(rasters.values())).fired.shape[1]
        first = self.local_samples
        self.samples += B
        self.local_samples += B
        keep = B if self.retime_samples is None else max(0, min(B, self.retime_samples - first))
        groups = self.onchip.groups
        spikes = {name: popcount(rasters[name].fired) for name in groups}     # [T, B, n]: each one spike
        # a neuron updates when it has work of its own or received a synaptic event at t - 1,
        # and did not fire on channel 0
        updated = {name: rasters[name].extra.clone() for name in groups}
        for c in self.onchip.connections if T > 1 else ():
            valid = c.dst_index >= 0
            sent = spikes[c.src][:-1, :, c.src_index].reshape((T - 1) * B, -1).float()     # steps 0 .. T - 2
            y = (c.forward(sent) > 0).view(T - 1, B, -1)
            updated[c.dst][1:, :, c.dst_index[valid]] |= y[:, :, valid]
        for name in groups:
            updated[name] &= (rasters[name].fired & 1) == 0
        st = {f: torch.zeros(T, dtype=torch.float64) for f in STEP_FIELDS}
        sample_j = torch.zeros(T, B, dtype=torch.float64)              # each sample's energy at each step
        for name, g in groups.items():
            fired_b = count_last(spikes[name])                  # [T, B]
            updated_b = count_last(updated[name])
            nf, nu = fired_b.sum(1), fired_b.sum(1) + updated_b.sum(1)
            e_neuron = nu * k["e_neuron_update"] + nf * k["e_spike_out"] + B * g.neurons * k["e_neuron_access"]
            sample_j += ((fired_b + updated_b) * k["e_neuron_update"] + fired_b * k["e_spike_out"]
                         + g.neurons * k["e_neuron_access"])
            st["neurons_fired"] += nf
            st["neurons_updated"] += nu
            st["neuron_j"] += e_neuron
            gs = self.group[name]
            gs["fired"] += float(nf.sum())
            gs["updated"] += float(nu.sum())
            gs["neuron_j"] += float(e_neuron.sum())
            # values crossing to or from the host: its inputs, and its outputs (an MT neuron's
            # spikes, an accumulator's non-zero values)
            transfers = torch.zeros(T, B, dtype=torch.float64)
            own = count_last(rasters[name].extra) if g.fed_by_host or g.to_host else None
            if g.fed_by_host:
                transfers += own
            if g.to_host:
                transfers += fired_b if g.kind == "mt" else own
            st["host_transfers"] += transfers.sum(1)
            sample_j += transfers * k["e_host_transfer"]
            tab = self.tables.get(name)
            if tab is None:
                continue
            # per spike: messages, synaptic events, hops x, hops y, links; summed [T, B, 5]
            per = (spikes[name].reshape(T * B, -1).double() @ tab).view(T, B, 5)
            msgs, ev, hx, hy, lk = per.unbind(2)
            energy = {"synapse_j": ev * k["e_synaptic_event"],
                      "network_j": msgs * (k["e_message_out"] + k["e_message_in"]) + hx * k["e_hop_x"]
                      + hy * k["e_hop_y"], "link_j": lk * k["e_link"]}
            sample_j += energy["synapse_j"] + energy["network_j"] + energy["link_j"]
            for f, v in (("synaptic_events", ev), ("messages", msgs), ("hops", hx + hy), ("hops_x", hx),
                         ("hops_y", hy), ("links", lk), *energy.items()):
                st[f] += v.sum(1)
            for f, v in (("synaptic_events_out", ev), ("messages_out", msgs), ("hops_out", hx + hy),
                         ("links_out", lk), *energy.items()):
                gs[f] += float(v.sum())
        # Latency per sample and step, every phase (each chip segment of the step with its own
        # barrier) and, for SANA-FE's view, every core as one step with one barrier: the
        # detailed schedule and SANA-FE's "simple" model (over the whole step a lower bound of
        # the schedule), every sample-step of the batch in one call.
        masks = {name: rasters[name].fired.reshape(T * B, -1) for name in groups}
        spans = self.schedule.spans(masks, {n: u.reshape(T * B, -1) for n, u in updated.items()}, self.timing,
                                    self.single_step_view)
        chip_s = self._chip(spans.parts.view(T, B, -1), self.barrier)                   # [T, B]
        st["onchip_latency_simple_s"] += (spans.simple_whole.view(T, B) + self.barrier).sum(1)
        st["chip_latency_simple_s"] += (spans.simple_parts.view(T, B, -1)[..., self.present] + self.barrier).sum((1, 2))
        st["onchip_latency_s"] += (spans.whole.view(T, B) + self.barrier).sum(1)
        st["chip_latency_s"] += chip_s.sum(1)
        if keep:                 # kept for re-timing (retime): the schedule's input, per sample
            kept = ({n: rasters[n].fired[:, :keep].clone() for n in groups},
                    {n: u[:, :keep].clone() for n, u in updated.items()})
            self.kept.append((first, *kept))
            if self.linked:
                unlinked = self._kept_parts(*kept, self.unlinked)
                self.link_share["linked"] = [a + float(b) for a, b in zip(self.link_share["linked"],
                                                                          chip_s[:, :keep].sum(1))]
                self.link_share["unlinked"] = [a + float(b) for a, b in zip(self.link_share["unlinked"],
                                                                            self._chip(unlinked, self.barrier).sum(1))]
        st["host_transfer_j"] = st["host_transfers"] * k["e_host_transfer"]
        st["host_transfer_s"] = st["host_transfers"] * k["t_host_transfer"]
        for f in STEP_FIELDS:
            self.step[f] = [a + float(b) for a, b in zip(self.step[f], st[f])]
        self.sample_j.append(sample_j.sum(0))
        self.sample_t_j.append(sample_j.cumsum(0).T.contiguous())
        self.sample_chip_s.append(chip_s.T.contiguous())

    def reduce(self, sum_over_ranks) -> None:
        """The per-step and per-group sums and the sample count over every rank's batches
        (under torchrun).  Per-sample figures and the spikes kept for re-timing stay each
        rank's own: intervals are not given under torchrun, and re-timing scales the
        nominal latency by the ratio on this rank's kept samples."""
        names = list(self.group)
        step = torch.tensor([self.step[f] for f in STEP_FIELDS], dtype=torch.float64)
        group = torch.tensor([[self.group[n][f] for f in GROUP_FIELDS] for n in names], dtype=torch.float64)
        samples = torch.tensor([self.samples], dtype=torch.float64)
        step, group, samples = sum_over_ranks((step, group, samples))
        self.step = {f: row.tolist() for f, row in zip(STEP_FIELDS, step)}
        self.group = {n: dict(zip(GROUP_FIELDS, row.tolist())) for n, row in zip(names, group)}
        self.samples = int(samples.item())

    def sample_energy(self) -> torch.Tensor:
        """Each sample's on-chip energy (synapse, neuron, network, chip-host transfers)
        over the T steps, in the order the samples ran [samples]."""
        return torch.cat(self.sample_j) if self.sample_j else torch.zeros(0, dtype=torch.float64)

    def sample_energy_per_t(self) -> torch.Tensor:
        """sample_energy up to each step t [samples, T]."""
        return torch.cat(self.sample_t_j) if self.sample_t_j else torch.zeros(0, self.T, dtype=torch.float64)

    def sample_chip_latency(self) -> torch.Tensor:
        """The detailed chip latency (per_step's chip_latency_s) of each sample and step
        [samples, T]."""
        return torch.cat(self.sample_chip_s) if self.sample_chip_s else torch.zeros(0, self.T, dtype=torch.float64)

    def kept_samples(self) -> int:
        """How many samples' spikes retime() has."""
        n = self.local_samples
        return n if self.retime_samples is None else min(n, self.retime_samples)

    def retime(self, profile, samples: int | None = None) -> torch.Tensor:
        """sample_chip_latency of the first `samples` kept samples (None: all kept), re-timed
        with `profile`'s timing constants (t_*, barrier_*, link_buffer) on the same mapping
        and spikes: the re-pricing path for those constants (hw_sim/simulate.py)."""
        n = self.kept_samples() if samples is None else min(samples, self.kept_samples())
        bar = barrier(profile, self.placement.tiles_in_use, self.placement.chips)
        # the spans do not depend on the barrier: scheduled once per set of the other constants
        key = (n, tuple(profile.get(k) for k in SCHEDULE_CONSTANTS))
        if key not in self._spans:
            timing = Timing.of(profile)
            parts = torch.zeros(n, self.T, self.onchip.phases, dtype=torch.float64)
            for first, masks, updated in self.kept:
                m = min(next(iter(masks.values())).shape[1], n - first)
                if m > 0:
                    parts[first:first + m] = self._kept_parts({g: c[:, :m] for g, c in masks.items()},
                                                              {g: u[:, :m] for g, u in updated.items()},
                                                              timing).transpose(0, 1)
            self._spans[key] = parts
        return self._chip(self._spans[key], bar, profile.get("chips.tick") or 0.0)

    def result(self) -> dict:
        """Per-inference figures (sums divided by samples)."""
        n = max(self.samples, 1)
        per_step = {f: [v / n for v in vals] for f, vals in self.step.items()}
        share = self.link_share
        per_step["link_latency_s"] = [c * (1 - u / k) if k else 0.0 for c, u, k in
                                      zip(per_step["chip_latency_s"], share["unlinked"], share["linked"])]
        if not self.single_step_view:
            del per_step["onchip_latency_s"]
        return {"per_step": per_step,
                "groups": {name: {f: v / n for f, v in d.items()} for name, d in self.group.items()},
                "barrier_s": self.barrier, "phases": self.onchip.phases, "mapped_neurons": self.neurons,
                "cores": self.placement.cores, "tiles": self.placement.tiles_in_use, "chips": self.placement.chips,
                "samples": self.samples, "scheduled_samples": self.samples}
