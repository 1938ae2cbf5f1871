"""Extract: the part of a graph that runs on a neuromorphic chip's cores (``OnChip``).

Groups are MT neurons (every element is ``channels`` neurons: its 2n binary level
channels, n for positive-only neurons, as the exporters' --ppn form, or one neuron with
``mt_form = "element"``; graded-spike profiles use one) and accumulators (the outputs of a
synaptic layer fed by spikes whose value goes to the host).  Connections are synaptic
layers fed by an MT neuron through reshapes/permutes (linear over the last axis, conv2d)
and residual adds of MT spikes (identity), routed through reshapes, permutes, selects and
adds to the MT neurons they feed (index routing: ecmt.ir.analysis).  Everything else runs
on the host.  Each group has a phase: the number of chip segments of a step up to it
(every host round trip in a step starts a new phase, with its own barrier).

The input synapses of an MT element land on its first compartment (channel 0, its
membrane); the fan-out of its input to the level channels is the core's dendritic tree
(no synapse, no message).  Each source channel has its own synapses (the scaled copies
lambda_j W), so stored synapses grow by the source's channel count, synaptic events per
spike do not.  A k-level spike on binary level channels fires one channel per level: k
spikes, each with its messages and synaptic events.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ecmt import ir
from ecmt.errors import EcmtError
from ecmt.ir import analysis


class MappingError(EcmtError):
    """A network that the profile's cores or chips cannot hold (names the layer and the resource)."""


@dataclasses.dataclass
class Group:
    name: str                 # the MT neuron (or, for an accumulator, the synaptic layer)
    kind: str                 # "mt" or "accumulator"
    shape: tuple[int, ...]
    channels: int             # neurons per element
    levels: int = 1
    signed: bool = False
    fed_by_host: bool = False
    to_host: bool = False
    phase: int = 1

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def neurons(self) -> int:
        return self.elements * self.channels


@dataclasses.dataclass
class Connection:
    """Synapses from group `src` to group `dst` through one synaptic layer `node`
    (op "linear" over the last axis, "conv" or "identity").  src_index[i]: the source
    element behind the op's input i; dst_index[o]: the destination element the op's
    output o feeds (-1: none)."""
    src: str
    dst: str
    node: str
    op: str
    src_index: torch.Tensor
    dst_index: torch.Tensor
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    conv: ir.Conv2d | None = None

    # the op on 0/1 masks: how many synapses of each output see a non-zero input
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, n_in] (op input order) -> [B, n_out] synaptic events per output."""
        B = x.shape[0]
        if self.op == "identity":
            return x
        if self.op == "linear":
            n_in, n_out = self.in_shape[-1], self.out_shape[-1]
            s = x.reshape(B, -1, n_in).sum(-1, keepdim=True)
            return s.expand(B, s.shape[1], n_out).reshape(B, -1)
        c = self.conv
        y = F.conv2d(x.reshape(B, *self.in_shape), torch.ones_like(c.weight, dtype=x.dtype), None, c.stride,
                     c.padding, c.dilation, c.groups)
        return y.reshape(B, -1)

    def adjoint(self, m: torch.Tensor) -> torch.Tensor:
        """m [K, n_out] weights on outputs -> [K, n_in]: per input, the sum of m over the
        outputs it has a synapse to (0/1 masks: synapses into the masked outputs)."""
        K = m.shape[0]
        if self.op == "identity":
            return m
        if self.op == "linear":
            n_in, n_out = self.in_shape[-1], self.out_shape[-1]
            s = m.reshape(K, -1, n_out).sum(-1, keepdim=True)
            return s.expand(K, s.shape[1], n_in).reshape(K, -1)
        c = self.conv
        g = torch.nn.grad.conv2d_input((K, *self.in_shape), torch.ones_like(c.weight, dtype=m.dtype),
                                       m.reshape(K, *self.out_shape), c.stride, c.padding, c.dilation, c.groups)
        return g.reshape(K, -1)

    def fan_in(self) -> torch.Tensor:
        """Synapses per op output (one source channel)."""
        n_in = math.prod(self.in_shape)
        return self.forward(torch.ones(1, n_in, dtype=torch.float64))[0].round().long()

    def features(self) -> tuple[torch.Tensor, int]:
        """Per op output, which weight vector it uses with weight sharing, and that vector's length."""
        n_out = math.prod(self.out_shape)
        o = torch.arange(n_out)
        if self.op == "identity":
            return torch.zeros(n_out, dtype=torch.long), 1
        if self.op == "linear":
            return o % self.out_shape[-1], self.in_shape[-1]
        w = self.conv.weight.shape
        return o // (self.out_shape[1] * self.out_shape[2]), w[1] * w[2] * w[3]

    def pairs(self) -> torch.Tensor:
        """Every synapse as [n, 2] (op input, op output), one source channel."""
        n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        if self.op == "identity":
            i = torch.arange(n_in)
            return torch.stack([i, i], 1)
        if self.op == "linear":
            fi, fo = self.in_shape[-1], self.out_shape[-1]
            tok = n_in // fi
            t = torch.arange(tok).view(tok, 1, 1)
            i = (t * fi + torch.arange(fi).view(1, fi, 1)).expand(tok, fi, fo)
            o = (t * fo + torch.arange(fo).view(1, 1, fo)).expand(tok, fi, fo)
            return torch.stack([i.reshape(-1), o.reshape(-1)], 1)
        c = self.conv
        c_in, h, w = self.in_shape
        c_out, oh, ow = self.out_shape
        idx = (torch.arange(n_in, dtype=torch.float64) + 1).view(1, c_in, h, w)
        cols = F.unfold(idx, c.weight.shape[2:], c.dilation, c.padding, c.stride)[0]   # [c_in*k, oh*ow]
        k = c.weight.shape[2] * c.weight.shape[3]
        cols = cols.view(c.groups, c_in // c.groups * k, oh * ow).long() - 1
        per_group = c_out // c.groups
        out = []
        for g in range(c.groups):
            src = cols[g].unsqueeze(0).expand(per_group, -1, -1)                 # [co_g, cin_g*k, L]
            co = torch.arange(g * per_group, (g + 1) * per_group).view(-1, 1, 1)
            dst = (co * oh * ow + torch.arange(oh * ow).view(1, 1, -1)).expand_as(src)
            keep = src >= 0
            out.append(torch.stack([src[keep], dst[keep]], 1))
        return torch.cat(out)


@dataclasses.dataclass
class OnChip:
    groups: dict[str, Group]
    connections: list[Connection]
    phases: int
    host_fed_inputs: dict[str, str] = dataclasses.field(default_factory=dict)

    def incoming(self, name: str) -> list[Connection]:
        return [c for c in self.connections if c.dst == name]

    def outgoing(self, name: str) -> list[Connection]:
        return [c for c in self.connections if c.src == name]


def _forward_routes(graph, consumers, start: str, idx: torch.Tensor, chip_mt: set[str]):
    """Follow `start`'s output (idx: its elements' numbers) through shape ops and adds to
    the MT neurons it feeds.  Returns ({mt: per-element number, -1 if not fed}, reaches_host)."""
    found, host = {}, False
    stack = [(start, idx)]
    while stack:
        name, cur = stack.pop()
        for c in consumers[name]:
            node = graph[c]
            if analysis.routes(node):
                stack.append((c, analysis.route(node, cur)))
            elif isinstance(node, ir.Add) and tuple(cur.shape) == tuple(graph.shapes[c]):
                stack.append((c, cur))
            elif isinstance(node, ir.MTNeuron) and c in chip_mt and tuple(cur.shape) == tuple(graph.shapes[c]):
                prev = found.get(c)
                found[c] = cur.reshape(-1).clone() if prev is None else torch.maximum(prev, cur.reshape(-1))
            else:
                host = True
    return found, host


def extract(graph: ir.SpikingGraph, profile) -> OnChip:
    consumers = graph.consumers()
    static = analysis.constant_nodes(graph)
    mts = [n for n in graph.of_kind(ir.MTNeuron) if n.name not in static and not isinstance(n, ir.MTNeuronPPN)]
    chip_mt = {n.name for n in mts}
    binary = profile.spikes == "binary" and profile.mt_form == "channels"
    groups: dict[str, Group] = {}
    for n in mts:
        L = (2 * n.levels if n.signed else n.levels) if binary else 1
        groups[n.name] = Group(n.name, "mt", tuple(graph.shapes[n.name]), L, int(n.levels), n.signed)
    conns: list[Connection] = []
    emitters = set()
    for node in graph:
        if not isinstance(node, (ir.Linear, ir.Conv2d)) or node.name in static:
            continue
        src = analysis.spike_source(graph, node.inputs[0])
        if src is None or not src.keeps_all or src.neuron.name not in chip_mt:
            continue
        op = "linear" if isinstance(node, ir.Linear) else "conv"
        n_out = math.prod(graph.shapes[node.name])
        out_idx = torch.arange(n_out).view(graph.shapes[node.name])
        routes, host = _forward_routes(graph, consumers, node.name, out_idx, chip_mt)
        in_shape = tuple(graph.shapes[node.inputs[0]])
        kw = dict(src=src.neuron.name, node=node.name, op=op, src_index=src.index(graph).reshape(-1), in_shape=in_shape,
                  out_shape=tuple(graph.shapes[node.name]), conv=node if op == "conv" else None)
        emitters.add(node.name)
        if host or not routes:
            groups[node.name] = Group(node.name, "accumulator", tuple(graph.shapes[node.name]), 1, to_host=True)
            conns.append(Connection(dst=node.name, dst_index=torch.arange(n_out), **kw))
            continue
        for mt, pos in routes.items():
            dst_index = torch.full((n_out,), -1, dtype=torch.long)
            valid = pos >= 0
            dst_index[pos[valid]] = torch.arange(len(pos))[valid]
            conns.append(Connection(dst=mt, dst_index=dst_index, **kw))
    # Residual adds of MT spikes: identity synapses into the MT neuron the add feeds.
    for n in mts:
        for c in consumers[n.name]:
            if not isinstance(graph[c], ir.Add) or tuple(graph.shapes[c]) != tuple(graph.shapes[n.name]):
                continue
            size = groups[n.name].elements
            routes, host = _forward_routes(graph, {**consumers, "__": [c]}, "__",
                                           torch.arange(size).view(graph.shapes[n.name]), chip_mt)
            if host or not routes:
                continue
            for mt, pos in routes.items():
                dst_index = torch.full((size,), -1, dtype=torch.long)
                valid = pos >= 0
                dst_index[pos[valid]] = torch.arange(len(pos))[valid]
                conns.append(Connection(n.name, mt, c, "identity", torch.arange(size), dst_index,
                                        tuple(graph.shapes[n.name]), tuple(graph.shapes[n.name])))
                emitters.add((n.name, c))
    # Who talks to the host, and the phases.
    fed_by_chip = {c.dst for c in conns}
    level: dict[str, int] = {}
    for node in graph:
        ins = [level.get(i, 0) for i in node.inputs]
        if node.name in groups and groups[node.name].kind == "mt":
            g = groups[node.name]
            g.fed_by_host = _fed_by_host(graph, node, emitters, chip_mt)
            phase = max([groups[c.src].phase for c in conns if c.dst == node.name] or [1])
            if g.fed_by_host:
                phase = max(phase, 1 + _host_level(graph, node, level, emitters, chip_mt))
            g.phase = phase
            level[node.name] = phase
        elif node.name in groups:
            g = groups[node.name]
            g.phase = groups[next(c.src for c in conns if c.dst == node.name)].phase
            level[node.name] = g.phase
        else:
            level[node.name] = max(ins, default=0)
    for n in mts:
        used = {c.node for c in conns if c.src == n.name}
        for c in consumers[n.name]:
            if c in used or (_moves_all(graph[c]) and all(x in used or _moves_all(graph[x])
                                                          for x in _downstream_shape(graph, consumers, c))):
                continue
            groups[n.name].to_host = True
    del fed_by_chip
    return OnChip(groups, conns, max((g.phase for g in groups.values()), default=0))


def _downstream_shape(graph, consumers, name):
    out = []
    for c in consumers[name]:
        out.append(c)
        if _moves_all(graph[c]):
            out += _downstream_shape(graph, consumers, c)
    return out


def _moves_all(node) -> bool:
    """A shape op that keeps every element (reshape, permute)."""
    return analysis.routes(node) and analysis.ROUTES(node).keeps_all


def _leaves(graph, node, emitters, chip_mt):
    """The producers behind an MT neuron's input, through shape ops and adds: names of
    host nodes (constants excluded)."""
    out, stack = [], [node.inputs[0]]
    while stack:
        name = stack.pop()
        n = graph[name]
        if name in emitters or name in chip_mt or isinstance(n, ir.Constant):
            continue
        if analysis.routes(n) or isinstance(n, ir.Add):
            for i in n.inputs:
                if (i, name) in emitters:
                    continue
                stack.append(i)
            continue
        out.append(name)
    return out


def _fed_by_host(graph, node, emitters, chip_mt) -> bool:
    return bool(_leaves(graph, node, emitters, chip_mt))


def _host_level(graph, node, level, emitters, chip_mt) -> int:
    return max((level.get(n, 0) for n in _leaves(graph, node, emitters, chip_mt)), default=0)
