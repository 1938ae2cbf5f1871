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

import torch

from .extract import OnChip
from .place import Placement
from .record import Raster
from .schedule import Fanout, StepSchedule, Timing
from .topology import barrier, chip_distance, core_chip, core_xy, fanout, routes

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


def as_int64(mask: torch.Tensor) -> torch.Tensor:
    """A raster mask (record.mask_dtype) as int64 with the same bits (an int64 mask's sign
    bit is channel 63; the narrower types never set theirs)."""
    return mask.to(torch.int64)


def popcount(mask: torch.Tensor) -> torch.Tensor:
    """The set bits of each value of a raster mask (its fired channels): int64, same shape
    (the parallel bit count, in int64 arithmetic: each mask keeps the arithmetic shift's
    sign copies out of the sums)."""
    x = as_int64(mask)
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


def _per_core(spikes: torch.Tensor, fan: Fanout, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and core, the synapses and the messages that the elements' spikes
    (spikes [B, n]: channels fired, each with its own messages) reach there: two [B, C]
    float64."""
    b, e = torch.nonzero(spikes, as_tuple=True)
    lens = fan.start[e + 1] - fan.start[e]
    first = torch.repeat_interleave(fan.start[e] - (lens.cumsum(0) - lens), lens)
    at = first + torch.arange(len(first))                      # each firing element's entries
    where = torch.repeat_interleave(b, lens) * C + fan.core[at]
    times = torch.repeat_interleave(spikes[b, e].double(), lens)
    synapses = torch.zeros(spikes.shape[0] * C, dtype=torch.float64).index_add_(
        0, where, fan.synapses[at].double() * times)
    messages = torch.zeros(spikes.shape[0] * C, dtype=torch.float64).index_add_(0, where, times)
    return synapses.view(-1, C), messages.view(-1, C)


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
        self.fanout = fanout(onchip, placement)
        # per source element: messages, synaptic events and hops per spike
        self.tables = {}
        for name, f in self.fanout.items():
            n, rows = onchip.groups[name].elements, f.rows()
            src = placement.core_of[name][rows]
            per = lambda v: torch.zeros(n, dtype=torch.float64).index_add_(0, rows, v.double())
            self.tables[name] = {"msgs": f.per_element().double(), "fanout": per(f.synapses),
                                 "hx": per((x[f.core] - x[src]).abs()), "hy": per((y[f.core] - y[src]).abs()),
                                 "links": per(crossings[chip[src], chip[f.core]])}
        self.neurons = sum(g.neurons for g in onchip.groups.values())
        self.neurons_per_core = torch.zeros(C, dtype=torch.float64)
        self.phase_of_core = torch.zeros(C, dtype=torch.long)
        for name, g in onchip.groups.items():
            self.neurons_per_core.index_add_(0, placement.core_of[name],
                                             torch.full((g.elements,), float(g.channels), dtype=torch.float64))
            self.phase_of_core[placement.core_of[name]] = g.phase
        # the phases that hold cores: each is scheduled alone and has its barrier
        self.present = torch.bincount(self.phase_of_core, minlength=onchip.phases + 1)[1:] > 0
        self.phase_cores = [self.phase_of_core == p for p in range(1, onchip.phases + 1) if self.present[p - 1]]
        self.barrier = barrier(profile, placement.tiles_in_use, placement.chips)
        self.tick = profile.get("chips.tick") or 0.0
        self.schedule = self._schedule(profile)
        # the chip links' share of the latency: the kept samples' schedule again without their
        # delays, that share of the chip latency (exact where every sample is kept)
        self.linked = placement.chips > 1 and profile["chips.t_link"] > 0
        self.unlinked = self._schedule(without_link_delay(profile)) if self.linked else None
        self.link_share = {"linked": [0.0] * T, "unlinked": [0.0] * T}
        self.single_step_view = single_step_view
        self.samples = 0
        self.local_samples = 0          # this process's (under torchrun, samples is every rank's)
        self.retime_samples = retime_samples
        self.sample_j: list[torch.Tensor] = []      # per batch, each sample's on-chip energy over T [B]
        self.sample_t_j: list[torch.Tensor] = []    # per batch, the same up to each step t [B, T]
        self.sample_chip_s: list[torch.Tensor] = []  # per batch, each sample's detailed chip latency [B, T]
        self.kept: list[tuple] = []     # per batch and step: (first sample, t, masks, updated), for retime
        self._spans: dict = {}          # retime's phase spans, by timing constants
        self.step = {f: [0.0] * T for f in STEP_FIELDS}
        self.group = {name: {f: 0.0 for f in GROUP_FIELDS} for name in onchip.groups}

    def _schedule(self, profile) -> StepSchedule:
        groups = self.onchip.groups
        return StepSchedule(self.placement.core_of, {n: g.channels for n, g in groups.items()}, self.fanout,
                            self.phase_of_core, self.onchip.phases, Timing.of(profile),
                            routes(profile, self.placement.cores))

    def _chip(self, parts: torch.Tensor, bar: float, tick: float | None = None) -> torch.Tensor:
        """Chip latency from per-phase spans [..., phases]: each phase with cores, plus its barrier,
        and at least a tick where the chip has one."""
        tick = self.tick if tick is None else tick
        return (parts[..., self.present] + bar).clamp(min=tick).sum(-1)

    def add(self, rasters: dict[str, Raster]) -> None:
        k, T, C = self.k, self.T, self.placement.cores
        B = next(iter(rasters.values())).fired.shape[1]
        first = self.local_samples
        self.samples += B
        self.local_samples += B
        keep = B if self.retime_samples is None else max(0, min(B, self.retime_samples - first))
        recv = {name: torch.zeros(B, g.elements, dtype=torch.bool) for name, g in self.onchip.groups.items()}
        sample_j = torch.zeros(B, dtype=torch.float64)
        up_to_t, chip_s = [], torch.zeros(B, T, dtype=torch.float64)
        for t in range(T):
            gen = self.neurons_per_core.unsqueeze(0).expand(B, C) * k["t_neuron_access"]
            gen = gen.clone()
            proc = torch.zeros(B, C, dtype=torch.float64)
            nxt = {name: torch.zeros(B, g.elements, dtype=torch.bool) for name, g in self.onchip.groups.items()}
            st = {f: 0.0 for f in STEP_FIELDS}
            masks, updated = {}, {}
            for name, g in self.onchip.groups.items():
                r = rasters[name]
                mask, extra = r.fired[t], r.extra[t]
                spikes = popcount(mask)                 # channels fired: each one spike
                S = spikes.double()
                f0 = (mask & 1) != 0
                upd = (extra | recv[name]) & ~f0
                masks[name], updated[name] = mask, upd
                cores = self.placement.core_of[name]
                nf, nu = float(S.sum()), float(S.sum() + upd.sum())
                gen.index_add_(1, cores, S * (k["t_spike_out"] + k["t_neuron_update"])
                               + upd.double() * k["t_neuron_update"])
                e_neuron = nu * k["e_neuron_update"] + nf * k["e_spike_out"] \
                    + B * g.neurons * k["e_neuron_access"]
                sample_j += ((S.sum(1) + upd.sum(1)) * k["e_neuron_update"] + S.sum(1) * k["e_spike_out"]
                             + g.neurons * k["e_neuron_access"])
                st["neurons_fired"] += nf
                st["neurons_updated"] += nu
                st["neuron_j"] += e_neuron
                gs = self.group[name]
                gs["fired"] += nf
                gs["updated"] += nu
                gs["neuron_j"] += e_neuron
                transfers = torch.zeros(B, dtype=torch.float64)
                if g.fed_by_host:
                    transfers += extra.sum(1)
                if g.to_host:
                    transfers += S.sum(1) if g.kind == "mt" else extra.sum(1)
                st["host_transfers"] += float(transfers.sum())
                sample_j += transfers * k["e_host_transfer"]
                tab = self.tables.get(name)
                if tab is None:
                    continue
                synapses, messages = _per_core(spikes, self.fanout[name], C)
                proc += synapses * k["t_synaptic_event"] + messages * k["t_message_in"]
                gen.index_add_(1, cores, S * tab["msgs"] * k["t_message_out"])
                ev, msgs = float((S @ tab["fanout"]).sum()), float((S @ tab["msgs"]).sum())
                hx, hy = float((S @ tab["hx"]).sum()), float((S @ tab["hy"]).sum())
                lk = float((S @ tab["links"]).sum())
                e_syn = ev * k["e_synaptic_event"]
                e_net = msgs * (k["e_message_out"] + k["e_message_in"]) + hx * k["e_hop_x"] + hy * k["e_hop_y"]
                e_link = lk * k["e_link"]
                sample_j += S @ (tab["fanout"] * k["e_synaptic_event"]
                                 + tab["msgs"] * (k["e_message_out"] + k["e_message_in"])
                                 + tab["hx"] * k["e_hop_x"] + tab["hy"] * k["e_hop_y"] + tab["links"] * k["e_link"])
                for f, v in (("synaptic_events", ev), ("messages", msgs), ("hops", hx + hy), ("hops_x", hx),
                             ("hops_y", hy), ("links", lk), ("synapse_j", e_syn), ("network_j", e_net),
                             ("link_j", e_link)):
                    st[f] += v
                gs["synaptic_events_out"] += ev
                gs["messages_out"] += msgs
                gs["hops_out"] += hx + hy
                gs["links_out"] += lk
                gs["synapse_j"] += e_syn
                gs["network_j"] += e_net
                gs["link_j"] += e_link
                for c in self.onchip.outgoing(name):
                    y = c.forward(S[:, c.src_index].float()) > 0
                    valid = c.dst_index >= 0
                    nxt[c.dst][:, c.dst_index[valid]] |= y[:, valid]
            recv = nxt
            up_to_t.append(sample_j.clone())
            if keep:             # kept for re-timing (retime): the schedule's input, per sample
                self.kept.append((first, t, {n: c[:keep].clone() for n, c in masks.items()},
                                  {n: u[:keep].clone() for n, u in updated.items()}))
            # Latency per sample, over all cores (one step, one barrier: SANA-FE's view) and
            # per phase (each chip segment of the step with its own barrier): the detailed
            # schedule, and SANA-FE's "simple" model (max over cores of neuron-side and
            # message-side serial work; over the whole step a lower bound of the schedule).
            onchip = torch.maximum(gen.max(1).values, proc.max(1).values) + self.barrier
            chip = torch.zeros(B, dtype=torch.float64)
            for sel in self.phase_cores:
                chip += torch.maximum(gen[:, sel].max(1).values, proc[:, sel].max(1).values) + self.barrier
            st["onchip_latency_simple_s"] = float(onchip.sum())
            st["chip_latency_simple_s"] = float(chip.sum())
            whole, parts = self.schedule.spans(masks, updated, self.single_step_view)
            chip_s[:, t] = self._chip(parts, self.barrier)
            st["onchip_latency_s"] = float((whole + self.barrier).sum())
            st["chip_latency_s"] = float(chip_s[:, t].sum())
            if self.linked and keep:
                unlinked = self.unlinked.spans({n: c[:keep] for n, c in masks.items()},
                                               {n: u[:keep] for n, u in updated.items()}, False)[1]
                self.link_share["linked"][t] += float(chip_s[:keep, t].sum())
                self.link_share["unlinked"][t] += float(self._chip(unlinked, self.barrier).sum())
            st["host_transfer_j"] = st["host_transfers"] * k["e_host_transfer"]
            st["host_transfer_s"] = st["host_transfers"] * k["t_host_transfer"]
            for f in STEP_FIELDS:
                self.step[f][t] += st[f]
        self.sample_j.append(sample_j)
        self.sample_t_j.append(torch.stack(up_to_t, 1))
        self.sample_chip_s.append(chip_s)

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
            schedule = self._schedule(profile)
            parts = torch.zeros(n, self.T, self.onchip.phases, dtype=torch.float64)
            for first, t, masks, updated in self.kept:
                m = min(next(iter(masks.values())).shape[0], n - first)
                if m > 0:
                    parts[first:first + m, t] = schedule.spans({g: c[:m] for g, c in masks.items()},
                                                               {g: u[:m] for g, u in updated.items()}, False)[1]
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
