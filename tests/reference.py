"""Slow, literal implementations of the spec, used as test oracles."""
from __future__ import annotations

import heapq

import numpy as np
import torch

from hw_sim.engine import mesh


def mt_neuron_reference(xs, th_pos: float, th_neg: float | None, levels: int) -> list[float]:
    """One neuron, one element, per step and per level, as docs/method.md §2 words it."""
    f = np.float32
    v = f(0)
    out = []
    for x in xs:
        v = f(v + f(x))
        s = f(0)
        for k in range(levels - 1, -1, -1):
            pos_level = f(f(th_pos) * f(2.0 ** k))
            if v >= f(pos_level - f(th_pos) / f(2)):
                s = pos_level
                break
            if th_neg is not None:
                neg_level = f(f(th_neg) * f(2.0 ** k))
                if v <= -f(neg_level - f(th_neg) / f(2)):
                    s = -neg_level
                    break
        v = f(v - s)
        out.append(float(s))
    return out


def mt_multi_reference(xs, th_pos: float, th_neg: float | None, levels: int, k: int) -> list[float]:
    """One neuron with spikes_per_step k, one element, as docs/method.md §2 words
    it: the firing rule applied again to the remaining membrane v - s, each level
    at most once per step, at most k times, all of the first level's sign."""
    f = np.float32
    v = f(0)
    out = []
    for x in xs:
        v = f(v + f(x))
        s, sign, used = f(0), 0, set()
        while len(used) < k:
            rest = f(v - s)
            fired = None
            for j in range(levels - 1, -1, -1):
                if j in used:
                    continue
                pos_level = f(f(th_pos) * f(2.0 ** j))
                if sign >= 0 and rest >= f(pos_level - f(th_pos) / f(2)):
                    fired, sign = pos_level, 1
                    break
                if th_neg is not None and sign <= 0:
                    neg_level = f(f(th_neg) * f(2.0 ** j))
                    if rest <= -f(neg_level - f(th_neg) / f(2)):
                        fired, sign = -neg_level, -1
                        break
            if fired is None:
                break
            used.add(j)
            s = f(s + fired)
        v = f(v - s)
        out.append(float(s))
    return out


# -- the mesh model's detailed step schedule (hw_sim/schedule.py), in pure Python ------------
# The version checked message by message against SANA-FE 2.2.9's detailed timing model
# (docs/benchmarks/sanafe.md); hw_sim/schedule.c must reproduce it bit for bit.
def lane_sum(values: list[float]) -> float:
    """A sum in schedule.c's order: four interleaved lanes over the first multiple of 4,
    combined as (l0 + l1) + (l2 + l3), then the rest in order."""
    lanes, whole = [0.0] * 4, len(values) // 4 * 4
    for i in range(whole):
        lanes[i % 4] += values[i]
    total = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
    for v in values[whole:]:
        total += v
    return total


class _Sent:
    """A message at the head of its core's send queue, ordered by departure time only: ties
    then fall to heap order, as in the C++ priority queue this follows."""
    __slots__ = ("sent", "core", "i")

    def __init__(self, sent: float, core: int, i: int):
        self.sent, self.core, self.i = sent, core, i

    def __lt__(self, other: "_Sent") -> bool:
        return self.sent < other.sent


class StepSchedule:
    """The detailed schedule of one step from one sample's spikes, as hw_sim/schedule.py's
    docstring describes it: a Python loop per neuron and per message, heapq for the order."""

    def __init__(self, onchip, placement, profile):
        m = lambda k: profile[f"mesh.{k}"]
        access, update, spike = m("t_neuron_access"), m("t_neuron_update"), m("t_spike_out")
        # soma times summed in the order SANA-FE adds them, so that equal times stay equal
        self.t_idle, self.t_update, self.t_fire = access, access + update, access + update + spike
        self.t_out, self.t_in, self.t_syn = m("t_message_out"), m("t_message_in"), m("t_synaptic_event")
        self.t_hop = (m("t_hop_x"), m("t_hop_y"))
        buffer = profile.get("mesh.link_buffer")
        self.buffer = None if buffer is None else float(buffer)
        self.cpt, self.height = int(m("cores_per_tile")), int(m("height"))
        self.x, self.y = (v.tolist() for v in mesh.core_xy(profile, placement.cores))
        self.inputs = (max(self.x, default=0) + 1) * self.height * (4 + self.cpt)
        # per core, what it runs in order: (group, its elements there, neurons per element)
        self.runs: dict[int, list] = {}
        for name, g in onchip.groups.items():
            cores = placement.core_of[name]
            for core in torch.unique(cores).tolist():
                elems = torch.nonzero(cores == core).flatten().tolist()
                self.runs.setdefault(core, []).append((name, elems, g.channels))
        self.runs = dict(sorted(self.runs.items()))
        # per source group: each element's destination cores (ascending) and processing times,
        # counted from the synapse list (Connection.pairs)
        C = placement.cores
        keys: dict[str, list] = {}
        for c in onchip.connections:
            pairs = c.pairs()
            o = c.dst_index[pairs[:, 1]]
            keep = o >= 0
            keys.setdefault(c.src, []).append(c.src_index[pairs[keep, 0]] * C + placement.core_of[c.dst][o[keep]])
        self.dests: dict[str, tuple[list, list, list]] = {}
        for name, ks in keys.items():
            pair, n_syn = torch.unique(torch.cat(ks), return_counts=True)
            elem, core = pair // C, pair % C
            start = torch.cumsum(torch.bincount(elem, minlength=onchip.groups[name].elements), 0)
            procs = {n: self._processing(n) for n in torch.unique(n_syn).tolist()}
            self.dests[name] = ([0] + start.tolist(), core.tolist(), [procs[n] for n in n_syn.tolist()])
        self.routes: dict[tuple[int, int], tuple] = {}

    def _processing(self, synapses: int) -> float:
        t = self.t_in
        for _ in range(synapses):             # added one by one, as SANA-FE does
            t += self.t_syn
        return t

    def _route(self, src: int, dst: int) -> tuple[float, int, tuple[tuple[int, ...], ...]]:
        """(hop delays, hops + 1, the router inputs it loads) of the X-then-Y route src -> dst,
        the inputs in three pieces: the sending core's port, the routers along X, along Y
        (each piece ascending in x or y: the order its load is added up in).  A router input
        is numbered router x (4 + cores per tile) + port: ports 0-3 face west, east, south,
        north (where the message came from), 4 + k is core k's port."""
        key = (src, dst)
        if key not in self.routes:
            ports = 4 + self.cpt
            x0, y0, x1, y1 = self.x[src], self.y[src], self.x[dst], self.y[dst]
            router = lambda x, y: (x * self.height + y) * ports
            port = (router(x0, y0) + 4 + src % self.cpt,)
            sx = 1 if x1 > x0 else -1
            along_x = [(x, router(x, y0) + (0 if sx > 0 else 1)) for x in range(x0 + sx, x1 + sx, sx)] if x1 != x0 else []
            sy = 1 if y1 > y0 else -1
            along_y = [(y, router(x1, y) + (2 if sy > 0 else 3)) for y in range(y0 + sy, y1 + sy, sy)] if y1 != y0 else []
            pieces = (port, tuple(i for _, i in sorted(along_x)), tuple(i for _, i in sorted(along_y)))
            hx, hy = abs(x1 - x0), abs(y1 - y0)
            self.routes[key] = (0.0 + hx * self.t_hop[0] + hy * self.t_hop[1], hx + hy + 1, pieces)
        return self.routes[key]

    def queues(self, fired: dict[str, list], updated: dict[str, list]) -> dict[int, list]:
        """Per core, its send queue for one sample and step: (generation time, destination core
        or -1 for the send-free slot, processing time, route).  fired[group][e]: the channels
        that fired, as bits (bit j: channel j); updated[group][e]: channel 0 updates without
        firing."""
        t_idle, t_upd, t_fire, t_out = self.t_idle, self.t_update, self.t_fire, self.t_out
        out = {}
        for core, runs in self.runs.items():
            acc, q = 0.0, []
            for name, elems, L in runs:
                ch, up = fired[name], updated[name]
                start, dst, proc = self.dests.get(name, (None, None, None))
                for e in elems:
                    c = ch[e]
                    for j in range(L):
                        if (c >> j) & 1:
                            acc += t_fire
                            if start is not None and start[e] < start[e + 1]:
                                for k in range(start[e], start[e + 1]):
                                    q.append((acc + t_out, dst[k], proc[k], self._route(core, dst[k])))
                                    acc = 0.0
                        elif j == 0:
                            acc += t_upd if up[e] else t_idle
                        else:
                            acc += t_idle
            if acc != 0.0:
                q.append((acc, -1, 0.0, None))
            out[core] = q
        return out

    def run(self, queues: dict[int, list]) -> float:
        """The time from the step's start to its last event (no barrier)."""
        push, pop = heapq.heappush, heapq.heappop
        ready = []
        for core, q in queues.items():        # pushed one by one in core order, as SANA-FE does
            if q:
                push(ready, _Sent(q[0][0], core, 0))
        buffer = self.buffer
        load = [0.0] * self.inputs
        inflight, seq = [], 0                 # (taken in at, seq, route inputs, share, processing)
        n_flight, sum_proc = 0, 0.0
        free = {}                             # per destination core: when it is done with its queue
        last = 0.0
        while ready:
            msg = pop(ready)
            sent = msg.sent
            if sent > last:
                last = sent
            while inflight and inflight[0][0] <= sent:
                _, _, pieces, share, proc = pop(inflight)
                for piece in pieces:
                    for i in piece:
                        load[i] -= share
                n_flight -= 1
                sum_proc = sum_proc - proc if n_flight else 0.0
            q = queues[msg.core]
            _, dst, proc, route = q[msg.i]
            if dst >= 0:
                trip, links, pieces = route
                if buffer is not None:
                    rho = load[pieces[0][0]]
                    for piece in pieces[1:]:
                        rho += lane_sum([load[i] for i in piece])
                    mu = sum_proc / n_flight if n_flight else 0.0
                    excess = rho - links * buffer
                    if excess > 0:
                        sent += excess * mu
                    crowd = rho * mu / links
                    if crowd > trip:
                        trip = crowd
                arrive = sent + trip
                f = free.get(dst, 0.0)
                done = f + proc
                if arrive + proc > done:
                    done = arrive + proc
                free[dst] = done
                if done > last:
                    last = done
                if buffer is not None:
                    share = 1.0 / (links + 1)
                    for piece in pieces:
                        for i in piece:
                            load[i] += share
                    push(inflight, (arrive if arrive > f else f, seq, pieces, share, proc))
                    seq += 1
                    n_flight += 1
                    sum_proc += proc
            msg.i += 1
            if msg.i < len(q):
                msg.sent = sent + q[msg.i][0]
                push(ready, msg)
                if msg.sent > last:
                    last = msg.sent
        return last

    def spans(self, fired: dict[str, list], updated: dict[str, list], phase_of: list[int], phases: int):
        """(the span over every core, [the span of each phase's cores alone, None for a phase
        without cores]), as hw_sim's mesh Accounting computed them before schedule.c."""
        queues = self.queues(fired, updated)
        whole = self.run(queues)
        parts = []
        for p in range(1, phases + 1):
            part = {c: q for c, q in queues.items() if phase_of[c] == p}
            # a phase's messages are processed in that phase, wherever they go
            parts.append(None if not part else whole if len(part) == len(queues) else self.run(part))
        return whole, parts

