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

The schedule runs in C (schedule.c, built on first use by ecmt/runtime/cbuild.py), every
sample-step of a batch in parallel, with SANA-FE's simple model beside it.  It reproduces the
Python schedule that was checked message by message against SANA-FE (kept as the test
oracle, tests/reference.py) bit for bit: every time added up in the same order (soma times
neuron by neuron, as SANA-FE adds them: a formula over counts rounds differently, and on
the congested demo CNN that reorders messages that leave at nearly the same time and moves
the step by 0.2 %), and the same heap order for messages that leave at the same time.  What does not change between
samples is prepared once per placement here (StepSchedule), with torch: per core its runs of
elements in mapping order, per source element its destination cores with their synapses,
every core's tile position and chip; what a set of timing constants changes is small
(Timing), so re-timing builds nothing large.  Routes are X then Y over the system's tile
mesh, found in C from the cores' positions (no table per pair of cores); the load along a
route is three contiguous pieces of memory (the core's port, the X run, the Y run), each
added up in four lanes: a fixed order, the oracle's too.
"""
from __future__ import annotations

import ctypes
import dataclasses
from functools import cache
from pathlib import Path

import torch

from ecmt.runtime import cbuild

from .record import mask_dtype

SOURCE = Path(__file__).with_name("schedule.c")


@dataclasses.dataclass(frozen=True)
class Fanout:
    """One source group's synapses by destination core, as CSR over its elements: element e
    reaches cores core[start[e]:start[e + 1]] (ascending) with that many synapses each
    (from one source channel)."""
    start: torch.Tensor       # [elements + 1] int64
    core: torch.Tensor        # [entries] int32
    synapses: torch.Tensor    # [entries] int32

    def per_element(self) -> torch.Tensor:
        """Destination cores of each element [elements]."""
        return self.start[1:] - self.start[:-1]

    def rows(self) -> torch.Tensor:
        """The element of each entry [entries]."""
        return torch.repeat_interleave(torch.arange(len(self.start) - 1), self.per_element())


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the cores sit: each core's tile (x, y) on the system's tile mesh and its chip,
    the chip-to-chip links between any two chips, and the router grid's height (rows of
    routers; its width is the cores' largest x + 1)."""
    x: torch.Tensor           # [cores]
    y: torch.Tensor           # [cores]
    chip: torch.Tensor        # [cores]
    crossings: torch.Tensor   # [chips, chips]
    height: int


@dataclasses.dataclass(frozen=True)
class Timing:
    """The constants the schedule reads (s; link_buffer in messages, None: no network load)."""
    t_neuron_access: float
    t_neuron_update: float
    t_spike_out: float
    t_message_out: float
    t_message_in: float
    t_synaptic_event: float
    t_hop_x: float
    t_hop_y: float
    t_link: float
    link_buffer: float | None

    @classmethod
    def of(cls, profile) -> "Timing":
        buffer = profile.get("mesh.link_buffer")
        return cls(*(float(profile[f"mesh.{f.name}"]) for f in dataclasses.fields(cls)[:-2]),
                   float(profile["chips.t_link"]), None if buffer is None else float(buffer))

    def processing(self, synapses: torch.Tensor) -> torch.Tensor:
        """Message-in + synapses x synaptic event, the synaptic events added one by one as
        SANA-FE adds them (so equal counts give equal times) [float64]."""
        return self.processing_table(int(synapses.max()) if synapses.numel() else 0)[synapses.long()]

    def processing_table(self, top: int) -> torch.Tensor:
        """processing() of 0..top synapses [top + 1]."""
        t, table = self.t_message_in, [self.t_message_in]
        for _ in range(top):
            t += self.t_synaptic_event
            table.append(t)
        return torch.tensor(table, dtype=torch.float64)


class _Layout(ctypes.Structure):
    """schedule.c's `layout`, field for field."""
    _fields_ = [("cores", ctypes.c_int64), ("phases", ctypes.c_int64)] + [
        (name, ctypes.c_void_p) for name in (
            "run_start", "run_group", "run_first", "run_length", "phase_of_core", "channels", "mask_width",
            "elements", "dest_start", "dest_core", "dest_synapses", "x", "y", "chip", "crossings")] + [
        (name, ctypes.c_int64) for name in ("chips", "mesh_width", "mesh_height")]


class _Timing(ctypes.Structure):
    """schedule.c's `timing`, field for field."""
    _fields_ = [("processing", ctypes.c_void_p)] + [
        (name, ctypes.c_double) for name in ("t_idle", "t_update", "t_fire", "t_out", "t_hop_x", "t_hop_y",
                                             "t_link", "buffer")] + [("loaded", ctypes.c_int32)]


@cache
def _library() -> ctypes.CDLL:
    lib = cbuild.build(SOURCE, cbuild.PORTABLE)
    lib.schedule_batch.argtypes = [ctypes.POINTER(_Layout), ctypes.POINTER(_Timing), ctypes.c_int64] + \
        [ctypes.c_void_p] * 6 + [ctypes.c_int, ctypes.c_int]
    lib.schedule_batch.restype = ctypes.c_int
    return lib


@dataclasses.dataclass(frozen=True)
class Spans:
    """Per sample-step: the detailed schedule's span over every core [N] (SANA-FE's
    single-step view; zeros where not asked) and over each phase's cores alone [N, phases]
    (0 for a phase without cores), and SANA-FE's simple model over the same cores (the
    largest serial generation or processing work of one core) [N], [N, phases]; s, no
    barrier."""
    whole: torch.Tensor
    parts: torch.Tensor
    simple_whole: torch.Tensor
    simple_parts: torch.Tensor


class StepSchedule:
    """The detailed schedule of one placement, at any timing constants.

    core_of: per group, in mapping order, the core of each element; channels: its neurons
    per element; fanout: per source group, its synapses by destination core;
    phase_of_core: each core's phase, 1..phases (each chip segment of a step, between host
    round trips, is scheduled alone too; a core without neurons is in none); geometry:
    where the cores sit."""

    def __init__(self, core_of: dict[str, torch.Tensor], channels: dict[str, int], fanout: dict[str, Fanout],
                 phase_of_core: torch.Tensor, phases: int, geometry: Geometry):
        lib = _library()          # no compiler: a clear error now, before any work
        self.groups = list(core_of)
        self.phases = phases
        C = len(phase_of_core)
        if C >= 1 << 24:            # schedule.c's queue of messages in flight keeps a core in 24 bits
            raise ValueError(f"the detailed schedule takes fewer than 2^24 cores, got {C}")
        n = torch.tensor([len(core_of[g]) for g in self.groups], dtype=torch.int64)
        # per core, its runs of consecutive elements of one group, in mapping order (groups in
        # order, elements ascending)
        empty = torch.zeros(0, dtype=torch.long)
        core = torch.cat([core_of[g].long() for g in self.groups]) if self.groups else empty
        group = torch.repeat_interleave(torch.arange(len(self.groups)), n)
        element = torch.cat([torch.arange(k) for k in n.tolist()]) if self.groups else empty
        order = torch.sort(core, stable=True).indices
        core, group, element = core[order], group[order], element[order]
        del order
        new = torch.ones(len(core), dtype=torch.bool)
        new[1:] = (core[1:] != core[:-1]) | (group[1:] != group[:-1]) | (element[1:] != element[:-1] + 1)
        first = torch.nonzero(new).flatten()
        length = torch.diff(first, append=torch.tensor([len(core)]))
        run_core = core[first]
        held = phase_of_core.long()[run_core]
        if len(held) and (int(held.min()) < 1 or int(held.max()) > phases):
            raise ValueError(f"phase_of_core of a core with neurons must lie in 1..{phases}")
        phase = torch.full((C,), -1, dtype=torch.int32)
        phase[run_core] = (held - 1).to(torch.int32)
        dests = [fanout.get(g) for g in self.groups]
        self._top_synapses = max((int(f.synapses.max()) for f in dests if f is not None and f.synapses.numel()),
                                 default=0)
        pointers = lambda ts: (ctypes.c_void_p * max(len(ts), 1))(*(0 if t is None else t.data_ptr() for t in ts))
        keep = dict(
            run_start=torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(run_core, minlength=C).cumsum(0)]),
            run_group=group[first].to(torch.int32), run_first=element[first].contiguous(), run_length=length,
            phase_of_core=phase, channels=torch.tensor([channels[g] for g in self.groups], dtype=torch.int32),
            mask_width=torch.tensor([mask_dtype(channels[g]).itemsize for g in self.groups], dtype=torch.int32),
            elements=n,
            x=geometry.x.to(torch.int32), y=geometry.y.to(torch.int32), chip=geometry.chip.to(torch.int32),
            crossings=geometry.crossings.to(torch.int32).contiguous())
        self._dests = [(f.start.contiguous(), f.core.to(torch.int32).contiguous(), f.synapses.to(torch.int32).contiguous())
                       if f is not None else None for f in dests]
        tables = [pointers([None if d is None else d[i] for d in self._dests]) for i in range(3)]
        self._keep, self._tables = keep, tables        # the layout points into these
        v = {k: t.data_ptr() for k, t in keep.items()}
        self._layout = _Layout(
            C, phases, v["run_start"], v["run_group"], v["run_first"], v["run_length"], v["phase_of_core"],
            v["channels"], v["mask_width"], v["elements"], *(ctypes.cast(t, ctypes.c_void_p) for t in tables),
            v["x"], v["y"], v["chip"], v["crossings"], len(geometry.crossings),
            int(geometry.x.max()) + 1 if C else 0, geometry.height)
        self._lib = lib

    def timing(self, timing: Timing) -> tuple[_Timing, torch.Tensor]:
        """schedule.c's timing of these constants, and the table it points into."""
        t = timing
        table = t.processing_table(self._top_synapses)
        # soma times summed in the order SANA-FE adds them, so that equal times stay equal
        idle, update = t.t_neuron_access, t.t_neuron_access + t.t_neuron_update
        return _Timing(table.data_ptr(), idle, update, update + t.t_spike_out, t.t_message_out, t.t_hop_x,
                       t.t_hop_y, t.t_link, 0.0 if t.link_buffer is None else t.link_buffer,
                       t.link_buffer is not None), table

    def spans(self, fired: dict[str, torch.Tensor], updated: dict[str, torch.Tensor], timing: Timing,
              whole: bool = True) -> Spans:
        """The schedule of a batch of N sample-steps (Spans).  fired[group] [N, elements]: the
        channels that fired, as bits (any integer type; record.Raster's is the narrowest); updated[group] [N, elements]
        bool: channel 0 updates without firing.  `whole`: also schedule every core as one step
        (else zeros)."""
        N = fired[self.groups[0]].shape[0] if self.groups else 0
        masks, ups = [], []
        for g, k, c in zip(self.groups, self._keep["elements"].tolist(), self._keep["channels"].tolist()):
            m, u = fired[g], updated[g]
            if tuple(m.shape) != (N, k) or tuple(u.shape) != (N, k):
                raise ValueError(f"group {g!r}: fired and updated must be [{N}, {k}], got {tuple(m.shape)} "
                                 f"and {tuple(u.shape)}")
            if m.is_floating_point() or m.dtype == torch.bool:
                raise ValueError(f"group {g!r}: fired must hold integer bit masks, got {m.dtype}")
            masks.append(m.to(mask_dtype(c)).contiguous())
            ups.append(u.to(torch.bool).contiguous())
        P = self.phases
        out = Spans(*(torch.zeros(*shape, dtype=torch.float64) for shape in ((N,), (N, P), (N,), (N, P))))
        if N == 0:
            return out
        t, table = self.timing(timing)
        pointers = lambda ts: (ctypes.c_void_p * len(ts))(*(x.data_ptr() for x in ts))
        rc = self._lib.schedule_batch(ctypes.byref(self._layout), ctypes.byref(t), N, pointers(masks), pointers(ups),
                                      out.whole.data_ptr(), out.parts.data_ptr(), out.simple_whole.data_ptr(),
                                      out.simple_parts.data_ptr(), int(whole), torch.get_num_threads())
        del table
        if rc != 0:
            raise MemoryError("hw_sim schedule: out of memory for the send queues")
        return out

