"""The detailed step schedule of the mesh model: event-driven timing of one step from one
sample's spikes, after SANA-FE 2.2.9's detailed timing model (Boyle et al., TCAD 2025; its
schedule.cpp and chip.cpp, rewritten here):

* each core runs its neurons in mapping order, adding up their soma times (access,
  + update, + spike out); a neuron that fires sends one message per destination core,
  in core order: the first carries the time added up since the core's previous message
  plus one message-out time, each further one a message-out time.  What is left after
  the core's last message is a send-free slot at the end of its queue;
* a core's messages leave one after another: the first at its generation time, each
  next one at the previous one's departure plus its own generation time;
* messages are handled in global order of departure.  The network keeps the load of the
  messages in flight (sent, not yet taken in by their destination) on every router input
  they pass (their route's inputs: on the mesh, the sending core's port of the first
  router, then on each later router of the X-then-Y route the port facing where the
  message came from); one message adds 1 / (links + 1) to each of its route's inputs
  (links = hops + 1).  With rho the load along a new message's route and mu the mean
  processing time of the messages in flight, a route loaded beyond links x link_buffer
  holds the message back by the excess x mu (its core's later messages leave later too),
  and the trip takes max(hop delays, rho x mu / links);
* a destination core takes messages in one at a time in arrival order; each costs
  message-in + synaptic events x synaptic-event time;
* the step lasts until the last departure or the last processing ends.

Without a `link_buffer` the network is never loaded (every trip takes its hop delays).

The schedule runs in C (schedule.c, built on first use by ecmt/runtime/cbuild.py), every sample
of a batch in parallel.  It reproduces the Python schedule that was checked message by
message against SANA-FE (kept as the test oracle, tests/reference.py) bit for bit: the
same additions in the same order, and the same heap order for messages that leave at the
same time.  What does not change between samples is prepared once here, with torch:
per core its neurons in mapping order, per source element its destination cores with
their processing times, and per (source core, destination core) pair its route, from a
route builder the caller gives (the routes are data: topology.routes builds the X-then-Y
routes of one mesh).
"""
from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

from ecmt.runtime import cbuild

SOURCE = Path(__file__).with_name("schedule.c")


@dataclasses.dataclass(frozen=True)
class Fanout:
    """One source group's synapses by destination core, as CSR over its elements: element e
    reaches cores core[start[e]:start[e + 1]] (ascending) with that many synapses each
    (from one source channel)."""
    start: torch.Tensor       # [elements + 1] int64
    core: torch.Tensor        # [entries] int64
    synapses: torch.Tensor    # [entries] int64

    def per_element(self) -> torch.Tensor:
        """Destination cores of each element [elements]."""
        return self.start[1:] - self.start[:-1]

    def rows(self) -> torch.Tensor:
        """The element of each entry [entries]."""
        return torch.repeat_interleave(torch.arange(len(self.start) - 1), self.per_element())


@dataclasses.dataclass(frozen=True)
class Routes:
    """One route per (source core, destination core) pair, in the order asked: its hop
    delays (s), its links (hops + 1) and the router inputs it loads, as CSR."""
    delay: torch.Tensor       # [routes] float64
    links: torch.Tensor       # [routes] int64
    start: torch.Tensor       # [routes + 1] int64
    inputs: torch.Tensor      # [start[-1]] int64, each < count
    count: int                # router inputs in the network


RouteBuilder = Callable[[torch.Tensor, torch.Tensor], Routes]


@dataclasses.dataclass(frozen=True)
class Timing:
    """The constants the schedule reads (s; link_buffer in messages, None: no network load)."""
    t_neuron_access: float
    t_neuron_update: float
    t_spike_out: float
    t_message_out: float
    t_message_in: float
    t_synaptic_event: float
    link_buffer: float | None

    @classmethod
    def of(cls, profile) -> "Timing":
        buffer = profile.get("mesh.link_buffer")
        return cls(*(float(profile[f"mesh.{f.name}"]) for f in dataclasses.fields(cls)[:-1]),
                   None if buffer is None else float(buffer))

    def processing(self, synapses: torch.Tensor) -> torch.Tensor:
        """Message-in + synapses x synaptic event, the synaptic events added one by one as
        SANA-FE adds them (so equal counts give equal times) [float64]."""
        top = int(synapses.max()) if synapses.numel() else 0
        t, table = self.t_message_in, [self.t_message_in]
        for _ in range(top):
            t += self.t_synaptic_event
            table.append(t)
        return torch.tensor(table, dtype=torch.float64)[synapses]


class _Layout(ctypes.Structure):
    """schedule.c's `layout`, field for field."""
    _fields_ = [("cores", ctypes.c_int64), ("phases", ctypes.c_int64)] + [
        (name, ctypes.c_void_p) for name in (
            "core_start", "entry_group", "entry_element", "phase_of_core", "channels", "elements",
            "first_element", "dest_start", "dest_core", "dest_processing", "dest_route", "route_delay",
            "route_links", "route_start", "route_input")] + [
        ("inputs", ctypes.c_int64), ("t_idle", ctypes.c_double), ("t_update", ctypes.c_double),
        ("t_fire", ctypes.c_double), ("t_out", ctypes.c_double), ("buffer", ctypes.c_double),
        ("loaded", ctypes.c_int32)]


@cache
def _library() -> ctypes.CDLL:
    lib = cbuild.build(SOURCE, cbuild.PORTABLE)
    lib.schedule_batch.argtypes = [ctypes.POINTER(_Layout), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.schedule_batch.restype = ctypes.c_int
    return lib


class StepSchedule:
    """The detailed schedule of one placement at one set of timing constants.

    core_of: per group, in mapping order, the core of each element; channels: its neurons
    per element; fanout: per source group, its synapses by destination core;
    phase_of_core: each core's phase, 1..phases (each chip segment of a step, between host
    round trips, is scheduled alone too; a core without neurons is in none); routes: the
    route of each (source core, destination core) pair that occurs."""

    def __init__(self, core_of: dict[str, torch.Tensor], channels: dict[str, int], fanout: dict[str, Fanout],
                 phase_of_core: torch.Tensor, phases: int, timing: Timing, routes: RouteBuilder):
        lib = _library()          # no compiler: a clear error now, before any work
        self.groups = list(core_of)
        self.phases = phases
        C = len(phase_of_core)
        n = torch.tensor([len(core_of[g]) for g in self.groups], dtype=torch.int64)
        first = torch.cat([torch.zeros(1, dtype=torch.int64), n.cumsum(0)])
        # per core, its neurons in mapping order: groups in order, elements ascending
        core = torch.cat([core_of[g].long() for g in self.groups]) if self.groups else torch.zeros(0, dtype=torch.long)
        group = torch.repeat_interleave(torch.arange(len(self.groups), dtype=torch.int32), n)
        element = torch.cat([torch.arange(k) for k in n.tolist()]) if self.groups else torch.zeros(0, dtype=torch.long)
        order = torch.sort(core, stable=True).indices
        core_start = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(core, minlength=C).cumsum(0)])
        # per element (numbered across groups), its destinations
        counts, dest_core, synapses = [], [], []
        for g, k in zip(self.groups, n.tolist()):
            f = fanout.get(g)
            counts.append(f.per_element() if f is not None else torch.zeros(k, dtype=torch.int64))
            if f is not None:
                dest_core.append(f.core)
                synapses.append(f.synapses)
        empty = torch.zeros(0, dtype=torch.int64)
        counts = torch.cat(counts) if counts else empty
        dest_start = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        dest_core = torch.cat(dest_core) if dest_core else empty
        synapses = torch.cat(synapses) if synapses else empty
        src_core = torch.repeat_interleave(core, counts)
        pairs, route_of = torch.unique(src_core * C + dest_core, return_inverse=True)
        r = routes(pairs // C, pairs % C)
        if len(r.delay) != len(pairs) or len(r.start) != len(pairs) + 1:
            raise ValueError(f"route builder gave {len(r.delay)} routes for {len(pairs)} core pairs")
        if r.inputs.numel() and (int(r.inputs.min()) < 0 or int(r.inputs.max()) >= r.count):
            raise ValueError(f"route builder: router inputs outside 0..{r.count - 1}")
        phase_of_core = phase_of_core.long()
        held = phase_of_core[core]
        if len(held) and (int(held.min()) < 1 or int(held.max()) > phases):
            raise ValueError(f"phase_of_core of a core with neurons must lie in 1..{phases}")
        keep = dict(
            core_start=core_start, entry_group=group[order].contiguous(), entry_element=element[order].contiguous(),
            phase_of_core=(phase_of_core - 1).to(torch.int32), channels=torch.tensor(
                [channels[g] for g in self.groups], dtype=torch.int32), elements=n, first_element=first,
            dest_start=dest_start, dest_core=dest_core.to(torch.int32),
            dest_processing=timing.processing(synapses), dest_route=route_of.to(torch.int32),
            route_delay=r.delay.double().contiguous(), route_links=r.links.to(torch.int32),
            route_start=r.start.long().contiguous(), route_input=r.inputs.to(torch.int32))
        self._keep = keep          # the layout points into these tensors
        t = timing
        # soma times summed in the order SANA-FE adds them, so that equal times stay equal
        idle, update = t.t_neuron_access, t.t_neuron_access + t.t_neuron_update
        self._layout = _Layout(C, phases, *(v.data_ptr() for v in keep.values()), r.count, idle, update,
                               update + t.t_spike_out, t.t_message_out,
                               0.0 if t.link_buffer is None else t.link_buffer, t.link_buffer is not None)
        self._lib = lib

    def spans(self, fired: dict[str, torch.Tensor], updated: dict[str, torch.Tensor], whole: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample of a batch, the time from the step's start to its last event (no
        barrier) over every core [B] (SANA-FE's single-step view; with `whole` False not
        scheduled, zeros), and over each phase's cores alone [B, phases] (0 for a phase
        without cores).  fired[group] [B, elements]: the channels that fired, as bits
        (record.Raster); updated[group] [B, elements] bool: channel 0 updates without
        firing."""
        B = fired[self.groups[0]].shape[0] if self.groups else 0
        masks, ups = [], []
        for g, k in zip(self.groups, self._keep["elements"].tolist()):
            c, u = fired[g], updated[g]
            if tuple(c.shape) != (B, k) or tuple(u.shape) != (B, k):
                raise ValueError(f"group {g!r}: fired and updated must be [{B}, {k}], got {tuple(c.shape)} "
                                 f"and {tuple(u.shape)}")
            masks.append(c.to(torch.int64).contiguous())
            ups.append(u.to(torch.bool).contiguous())
        spans = torch.zeros(B, dtype=torch.float64)
        parts = torch.zeros(B, self.phases, dtype=torch.float64)
        if B == 0:
            return spans, parts
        pointers = lambda ts: (ctypes.c_void_p * len(ts))(*(t.data_ptr() for t in ts))
        rc = self._lib.schedule_batch(ctypes.byref(self._layout), B, pointers(masks), pointers(ups),
                                      spans.data_ptr(), parts.data_ptr(), int(whole), torch.get_num_threads())
        if rc != 0:
            raise MemoryError("hw_sim schedule: out of memory for the send queues")
        return spans, parts
