"""The mapped, routed, timed mesh model: count -> map -> time -> price for profiles
with a [mesh] table (hw_sim/profiles/loihi-sanafe.toml).

Stages, each typed:

* ``extract(graph, profile) -> OnChip``: the part of the graph that runs on the
  cores.  Groups are MT neurons (every element is ``channels`` neurons: its 2n
  binary level channels, n for positive-only neurons, as the exporters' --ppn form,
  or one neuron with ``mt_form = "element"``; graded-spike profiles use one) and
  accumulators (the outputs of a synaptic layer fed by spikes whose value goes to
  the host).  Connections are synaptic layers fed by an MT neuron through
  reshapes/permutes (linear over the last axis, conv2d) and residual adds of MT
  spikes (identity), routed through reshapes, permutes, selects and adds to the MT
  neurons they feed.  Everything else runs on the host.  Each group has a phase:
  the number of chip segments of a step up to it (every host round trip in a step
  starts a new phase, with its own barrier).
* ``place(onchip, profile) -> Placement``: every neuron on a core of the profile's
  mesh (tiles x cores per tile, chips side by side in x), layer by layer, each layer
  from a fresh core, consecutive elements filling a core while every per-core limit
  the profile states holds: neurons, synapse memory (bits; weight sharing per
  profile), input axons (distinct source neurons with a synapse on the core) and
  output axons (per source neuron, one per destination core).  An element's
  channels stay on one core (a multi-compartment neuron).  A layer that does not
  fit one core is split; an element that fits no core is refused (MappingError
  naming the layer and the resource).
* ``Accounting.add(rasters)``: SANA-FE's event accounting (Boyle et al. 2025;
  reproduced in tools/sanafe_run.py) from the recorded spikes, per step:
  synaptic events = every (spike, synapse); every mapped neuron is accessed every
  step; a neuron updates when it fires, has work of its own (non-zero input from
  the run or non-zero membrane: ``extra``), or received a synaptic event at t - 1
  (on the chip a spike at t reaches the soma at t + 1); one message per (spiking
  neuron, destination core), routed X then Y with per-hop energy and delay.
  Latency per step and sample, for every sample: ``schedule.StepSchedule``
  (hw_sim/schedule.py, in C), an event-driven schedule after SANA-FE 2.2.9's
  detailed timing model (each core's messages sent as its neurons fire, hop delays
  and network load on the way, each destination core processing what arrives in
  arrival order), per phase, plus the barrier chosen by tiles in use; and SANA-FE's
  "simple" model (max over cores of serial generation work and of
  serial processing work; over the whole step a lower bound of the schedule), as
  ``*_simple_s``.

The input synapses of an MT element land on its first compartment (channel 0, its
membrane); the fan-out of its input to the level channels is the core's dendritic
tree (no synapse, no message).  Each source channel has its own synapses (the
scaled copies lambda_j W), so stored synapses grow by the source's channel count,
synaptic events per spike do not.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ecmt import ir
from ecmt.errors import EcmtError

from .schedule import Fanout, Routes, RouteBuilder, StepSchedule, Timing

MESH_REQUIRED = (
    "width", "height", "cores_per_tile", "synapse_memory_bits", "synapse_bits", "input_axons", "output_axons",
    "e_synaptic_event", "t_synaptic_event", "e_neuron_access", "t_neuron_access", "e_neuron_update",
    "t_neuron_update", "e_spike_out", "t_spike_out", "e_message_out", "t_message_out", "e_message_in",
    "t_message_in", "e_hop_x", "t_hop_x", "e_hop_y", "t_hop_y", "barrier_1", "barrier_chip",
    "e_host_transfer", "t_host_transfer")
SHAPE_OPS = (ir.Reshape, ir.Permute, ir.Select, ir.Slice)


class MappingError(EcmtError):
    """A network that no core of the profile can hold (names the layer and the resource)."""


# -- the on-chip part ----------------------------------------------------------------------
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


def _route(graph: ir.SpikingGraph, node: ir.Node, idx: torch.Tensor) -> torch.Tensor:
    if isinstance(node, ir.Reshape):
        return idx.reshape(graph.shapes[node.name])
    if isinstance(node, ir.Permute):
        return idx.permute(*node.dims)
    if isinstance(node, ir.Select):
        return idx.select(node.axis, node.index)
    if isinstance(node, ir.Slice):
        return idx.narrow(node.axis, node.start, node.stop - node.start)
    raise TypeError(node.KIND)


def _spike_source(graph, node) -> tuple[str, torch.Tensor] | None:
    """The MT neuron feeding `node` through reshapes/permutes, and for each element of
    node's input the MT element behind it."""
    chain = []
    src = graph[node.inputs[0]]
    while isinstance(src, (ir.Reshape, ir.Permute)):
        chain.append(src)
        src = graph[src.inputs[0]]
    if not isinstance(src, ir.MTNeuron):
        return None
    idx = torch.arange(math.prod(graph.shapes[src.name])).view(graph.shapes[src.name])
    for n in reversed(chain):
        idx = _route(graph, n, idx)
    return src.name, idx.reshape(-1)


def _forward_routes(graph, consumers, start: str, idx: torch.Tensor, chip_mt: set[str]):
    """Follow `start`'s output (idx: its elements' numbers) through shape ops and adds to
    the MT neurons it feeds.  Returns ({mt: per-element number, -1 if not fed}, reaches_host)."""
    found, host = {}, False
    stack = [(start, idx)]
    while stack:
        name, cur = stack.pop()
        for c in consumers[name]:
            node = graph[c]
            if isinstance(node, SHAPE_OPS):
                stack.append((c, _route(graph, node, cur)))
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
    static = _static_nodes(graph)
    mts = [n for n in graph.of_kind(ir.MTNeuron) if n.name not in static and not isinstance(n, ir.MTNeuronPPN)]
    chip_mt = {n.name for n in mts}
    binary = profile.spikes == "binary" and profile.mt_form == "channels"
    groups: dict[str, Group] = {}
    for n in mts:
        if binary and n.spikes_per_step > 1:
            # a raster holds one channel per element and step; k levels would need up to k
            raise MappingError(
                f"profile {profile.name}: layer {n.name!r}: spikes_per_step {n.spikes_per_step} sends up to "
                f"{n.spikes_per_step} binary events per element and step on its level channels, which the mesh "
                "model's rasters (one channel per element and step) cannot hold yet",
                hint="price it on a profile without [mesh] (loihi: the same binary rule, flat model), or on a "
                     "graded or mt_form = \"element\" mesh profile")
        L = (2 * n.levels if n.signed else n.levels) if binary else 1
        groups[n.name] = Group(n.name, "mt", tuple(graph.shapes[n.name]), L, int(n.levels), n.signed)
    conns: list[Connection] = []
    emitters = set()
    for node in graph:
        if not isinstance(node, (ir.Linear, ir.Conv2d)) or node.name in static:
            continue
        src = _spike_source(graph, node)
        if src is None or src[0] not in chip_mt:
            continue
        op = "linear" if isinstance(node, ir.Linear) else "conv"
        n_out = math.prod(graph.shapes[node.name])
        out_idx = torch.arange(n_out).view(graph.shapes[node.name])
        routes, host = _forward_routes(graph, consumers, node.name, out_idx, chip_mt)
        in_shape = tuple(graph.shapes[node.inputs[0]])
        kw = dict(src=src[0], node=node.name, op=op, src_index=src[1], in_shape=in_shape,
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
            if c in used or (isinstance(graph[c], (ir.Reshape, ir.Permute))
                             and all(x in used or isinstance(graph[x], (ir.Reshape, ir.Permute))
                                     for x in _downstream_shape(graph, consumers, c))):
                continue
            groups[n.name].to_host = True
    del fed_by_chip
    return OnChip(groups, conns, max((g.phase for g in groups.values()), default=0))


def _downstream_shape(graph, consumers, name):
    out = []
    for c in consumers[name]:
        out.append(c)
        if isinstance(graph[c], (ir.Reshape, ir.Permute)):
            out += _downstream_shape(graph, consumers, c)
    return out


def _static_nodes(graph) -> set[str]:
    """Nodes computed from constants only (no path from the input)."""
    data = set()
    for n in graph:
        if isinstance(n, ir.Input) or any(s in data for s in n.inputs):
            data.add(n.name)
    return {n.name for n in graph if n.name not in data}


def _leaves(graph, node, emitters, chip_mt):
    """The producers behind an MT neuron's input, through shape ops and adds: names of
    host nodes (constants excluded)."""
    out, stack = [], [node.inputs[0]]
    while stack:
        name = stack.pop()
        n = graph[name]
        if name in emitters or name in chip_mt or isinstance(n, ir.Constant):
            continue
        if isinstance(n, SHAPE_OPS) or isinstance(n, ir.Add):
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


# -- mapping -----------------------------------------------------------------------------
@dataclasses.dataclass
class LayerMapping:
    name: str
    kind: str
    elements: int
    neurons: int
    channels: int
    cores: int
    first_core: int
    limiting_resource: str          # what stopped a core from holding more; "none" if one core holds it all
    per_core_max: dict[str, int]    # the largest use of each resource on one of its cores
    synapses: int                   # stored synapses (all channels)


@dataclasses.dataclass
class Placement:
    core_of: dict[str, torch.Tensor]         # group -> core of each element
    cores: int
    chips: int
    tiles_in_use: int
    layers: list[LayerMapping]
    limits: dict[str, float]
    derivation: list[str]

    def tile_core(self, core: int, cores_per_tile: int) -> tuple[int, int]:
        return core // cores_per_tile, core % cores_per_tile


def _limits(profile) -> dict[str, float]:
    get = profile.get
    mem = get("mesh.synapse_memory_bits")
    bits = get("mesh.synapse_bits", 8.0)
    if mem is None and get("architecture.synapses_per_core") is not None:
        mem, bits = get("architecture.synapses_per_core"), 1.0          # a synapse count
    return {"neurons": get("architecture.neurons_per_core", math.inf), "synapse memory": mem or math.inf,
            "synapse_bits": bits, "input axons": get("mesh.input_axons", math.inf),
            "output axons": get("mesh.output_axons", math.inf)}


class _Demand:
    """Per-core resource use of a range of a group's elements."""

    def __init__(self, onchip: OnChip, g: Group, limits, sharing: bool):
        self.g, self.limits, self.sharing = g, limits, sharing
        n = g.elements
        self.incoming = onchip.incoming(g.name)
        self.bits_per_elem = torch.zeros(n, dtype=torch.float64)
        self.feature = []
        for c in self.incoming:
            L_src = onchip.groups[c.src].channels
            fan = c.fan_in()
            valid = c.dst_index >= 0
            per = torch.zeros(n, dtype=torch.float64)
            per.index_add_(0, c.dst_index[valid], fan[valid].double())
            self.bits_per_elem += per * L_src * limits["synapse_bits"]
            if sharing:
                feat, length = c.features()
                f = torch.full((n,), -1, dtype=torch.long)
                f[c.dst_index[valid]] = feat[valid]
                self.feature.append((f, length * L_src * limits["synapse_bits"]))
        self.prefix = torch.cat([torch.zeros(1, dtype=torch.float64), self.bits_per_elem.cumsum(0)])
        self.onchip = onchip
        srcs = [c.src for c in self.incoming]
        self.single = {x: srcs.count(x) == 1 for x in srcs}   # src_index is a permutation: no scatter needed
        self.inverse = {}                                   # destination element -> op output
        for c in self.incoming:
            inv = torch.full((n,), -1, dtype=torch.long)
            valid = c.dst_index >= 0
            inv[c.dst_index[valid]] = torch.arange(len(c.dst_index))[valid]
            self.inverse[id(c)] = inv

    def memory(self, a: int, b: int) -> float:
        if not self.sharing:
            return float(self.prefix[b] - self.prefix[a])
        total = 0.0
        for f, bits in self.feature:
            part = f[a:b]
            total += len(torch.unique(part[part >= 0])) * bits
        return total

    def input_axons(self, a: int, b: int) -> int:
        total = 0
        by_src: dict[str, torch.Tensor] = {}
        n = self.g.elements
        for c in self.incoming:
            if c.op == "linear" and self.single[c.src]:          # fast path: distinct tokens x features
                out_f = c.out_shape[-1]
                ops = self.inverse[id(c)][a:b]
                tokens = torch.unique(ops[ops >= 0] // out_f)
                total += len(tokens) * c.in_shape[-1] * self.onchip.groups[c.src].channels
                continue
            m = torch.zeros(1, n, dtype=torch.float32)
            m[0, a:b] = 1
            mo = torch.where(c.dst_index >= 0, m[0, c.dst_index.clamp(min=0)], torch.zeros(()))
            adj = c.adjoint(mo.unsqueeze(0))[0]
            if self.single[c.src]:
                total += int((adj > 0).sum()) * self.onchip.groups[c.src].channels
                continue
            src = torch.zeros(self.onchip.groups[c.src].elements, dtype=torch.float32)
            src[c.src_index] = adj
            by_src[c.src] = by_src[c.src] + src if c.src in by_src else src
        for s, v in by_src.items():
            total += int((v > 0).sum()) * self.onchip.groups[s].channels
        return total

    def use(self, a: int, b: int) -> dict[str, float]:
        return {"neurons": (b - a) * self.g.channels, "synapse memory": self.memory(a, b),
                "input axons": self.input_axons(a, b)}

    def fits(self, a: int, b: int, cap: int | None) -> str | None:
        """None if elements [a, b) fit one core, else the first resource exceeded."""
        if cap is not None and b - a > cap:
            return "output axons"
        if (b - a) * self.g.channels > self.limits["neurons"]:
            return "neurons"
        if self.memory(a, b) > self.limits["synapse memory"]:
            return "synapse memory"
        if self.limits["input axons"] < math.inf and self.input_axons(a, b) > self.limits["input axons"]:
            return "input axons"
        return None


def place(onchip: OnChip, profile) -> Placement:
    limits = _limits(profile)
    caps: dict[str, int] = {}
    for _ in range(6):
        placement = _place_once(onchip, profile, limits, caps)
        over = _output_axon_overflow(onchip, placement, limits)
        if not over:
            return placement
        for name, (used, per_core) in over.items():
            if per_core <= 1:
                raise MappingError(f"layer {name!r}: one neuron needs {used} output axons, the profile "
                                   f"{profile.name} allows {int(limits['output axons'])} per core "
                                   f"(mesh.output_axons)")
            caps[name] = max(1, int(per_core * limits["output axons"] // used))
    raise MappingError(f"{profile.name}: no placement within the output-axon limit after 6 tries")


def _place_once(onchip: OnChip, profile, limits, caps) -> Placement:
    core_of, layers, derivation = {}, [], []
    next_core = 0
    sharing = profile.weight_sharing
    for g in onchip.groups.values():
        d = _Demand(onchip, g, limits, sharing)
        n = g.elements
        cores = torch.empty(n, dtype=torch.long)
        a, first, limiting, maxuse = 0, next_core, None, {}
        cap = caps.get(g.name)
        last_k = 0
        while a < n:
            why = d.fits(a, a + 1, cap)
            if why is not None:
                u = d.use(a, a + 1)
                lim = limits["neurons"] if why == "neurons" else limits[why]
                via = sorted({c.node for c in d.incoming})
                raise MappingError(
                    f"layer {g.name!r}" + (f" (fed by {', '.join(via)})" if via else "") + f": one element ({g.channels} neuron(s)) needs {why} "
                    f"{int(u.get(why, 0))} > {int(lim)} per core on profile {profile.name} "
                    f"(mesh/architecture limit); it cannot be mapped",
                    hint="use a profile with larger cores, weight sharing, or graded spikes (fewer channels)")
            # the largest k with [a, a+k) fitting: the last core's k when it is still the
            # largest (layers repeat), else an exponential then a binary search
            if last_k > 1 and a + last_k < n and d.fits(a, a + last_k, cap) is None \
                    and d.fits(a, a + last_k + 1, cap) is not None:
                k = last_k
                for key, v in d.use(a, a + k).items():
                    maxuse[key] = max(maxuse.get(key, 0), int(v))
                cores[a:a + k] = next_core
                next_core += 1
                a += k
                continue
            lo, hi = 1, 1
            while a + hi < n and d.fits(a, a + min(2 * hi, n - a), cap) is None:
                lo = hi = min(2 * hi, n - a)
            if a + hi < n:
                top = min(2 * hi, n - a)
                lo, hi = hi, top
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if d.fits(a, a + mid, cap) is None:
                        lo = mid
                    else:
                        hi = mid
                if limiting is None:
                    limiting = d.fits(a, a + lo + 1, cap)
            k = last_k = lo
            for key, v in d.use(a, a + k).items():
                maxuse[key] = max(maxuse.get(key, 0), int(v))
            cores[a:a + k] = next_core
            next_core += 1
            a += k
        core_of[g.name] = cores
        count = next_core - first
        syn = int(round(float(d.prefix[-1]) / limits["synapse_bits"])) if d.prefix[-1] > 0 else 0
        layers.append(LayerMapping(g.name, g.kind, n, g.neurons, g.channels, count, first, limiting or "none",
                                   maxuse, syn))
        derivation.append(f"{g.name}: {n} elements x {g.channels} neuron(s) = {g.neurons} neurons, "
                          f"{syn} synapses stored; {count} core(s) (cores {first}..{next_core - 1}), "
                          f"limited by {limiting or 'nothing (one core)'}; per core at most "
                          + ", ".join(f"{k} {v}" for k, v in maxuse.items()))
    cpt = int(profile["mesh.cores_per_tile"])
    per_chip = int(profile["mesh.width"] * profile["mesh.height"]) * cpt
    chips = max(1, math.ceil(next_core / per_chip)) if next_core else 0
    tiles = len({c // cpt for c in range(next_core)})
    derivation.append(f"total: {next_core} cores in {tiles} tiles, {chips} chip(s) of {per_chip} cores")
    return Placement(core_of, next_core, chips, tiles, layers, limits, derivation)


def _messages_per_source(onchip: OnChip, placement: Placement, chunk: int = 64) -> dict[str, torch.Tensor]:
    """Per source group and element: the number of distinct destination cores (its output
    axons per channel, and its messages per spike), without a dense [elements x cores] table."""
    out: dict[str, torch.Tensor] = {}
    by_src: dict[str, list[Connection]] = {}
    for c in onchip.connections:
        by_src.setdefault(c.src, []).append(c)
    for name, conns in by_src.items():
        n_src = onchip.groups[name].elements
        count = torch.zeros(n_src, dtype=torch.float64)
        dsts = [c.dst for c in conns]
        if len(set(dsts)) == len(dsts) and all(c.op == "linear" for c in conns):
            # fast path: destination groups have disjoint cores, and a linear layer's input
            # element reaches every output of its token: count distinct cores per token
            for c in conns:
                cores = torch.where(c.dst_index >= 0, placement.core_of[c.dst][c.dst_index.clamp(min=0)], -1)
                rows = cores.view(-1, c.out_shape[-1]).sort(dim=1).values
                distinct = (rows[:, :1] >= 0).long().squeeze(1) + ((rows[:, 1:] != rows[:, :-1])
                                                                     & (rows[:, 1:] >= 0)).sum(1)
                per_in = distinct.unsqueeze(1).expand(-1, c.in_shape[-1]).reshape(-1).double()
                count[c.src_index] += per_in
            out[name] = count
            continue
        used = torch.unique(torch.cat([placement.core_of[c.dst] for c in conns]))
        for i in range(0, len(used), chunk):
            part = used[i:i + chunk]
            hit = torch.zeros(len(part), n_src)
            for c in conns:
                masks = (placement.core_of[c.dst].unsqueeze(0) == part.unsqueeze(1)).float()
                mo = torch.where(c.dst_index >= 0, masks[:, c.dst_index.clamp(min=0)], torch.zeros(()))
                hit[:, c.src_index] += c.adjoint(mo)
            count += (hit > 0).sum(0).double()
        out[name] = count
    return out


def _output_axon_overflow(onchip, placement, limits) -> dict:
    if limits["output axons"] == math.inf or not placement.cores:
        return {}
    over = {}
    for name, msgs in _messages_per_source(onchip, placement).items():
        g = onchip.groups[name]
        per_core = torch.zeros(placement.cores, dtype=torch.float64).index_add_(
            0, placement.core_of[name], msgs * g.channels)
        worst = float(per_core.max())
        if worst > limits["output axons"]:
            elems = torch.bincount(placement.core_of[name], minlength=placement.cores).max()
            over[name] = (worst, int(elems))
    return over


# -- geometry and routing ----------------------------------------------------------------
def core_xy(profile, cores: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of each core's tile: tile = core // cores_per_tile; on chip k (side by side
    in x) local tile id = height * x + y (SANA-FE's numbering)."""
    cpt = int(profile["mesh.cores_per_tile"])
    w, h = int(profile["mesh.width"]), int(profile["mesh.height"])
    c = torch.arange(cores)
    tile = c // cpt
    chip, local = tile // (w * h), tile % (w * h)
    return chip * w + local // h, local % h


def fanout(onchip: OnChip, placement: Placement, chunk: int = 64) -> dict[str, Fanout]:
    """Per source group: each element's destination cores (ascending) and its synapses into
    each, from one source channel; sparse (no [elements x cores] table)."""
    C = placement.cores
    parts: dict[str, list] = {}
    for c in onchip.connections:
        valid = c.dst_index >= 0
        out_core = torch.full((len(c.dst_index),), -1, dtype=torch.long)
        out_core[valid] = placement.core_of[c.dst][c.dst_index[valid]]
        if c.op == "identity":
            keep = out_core >= 0
            found = [(c.src_index[keep], out_core[keep], torch.ones(int(keep.sum()), dtype=torch.long))]
        elif c.op == "linear":
            # an input (token, feature) has a synapse to every output of its token
            fi, fo = c.in_shape[-1], c.out_shape[-1]
            cores = out_core.view(-1, fo)
            token = torch.arange(len(cores)).unsqueeze(1).expand_as(cores)
            keep = cores >= 0
            pair, synapses = torch.unique(token[keep] * C + cores[keep], return_counts=True)
            inputs = ((pair // C).unsqueeze(1) * fi + torch.arange(fi)).reshape(-1)
            found = [(c.src_index[inputs], (pair % C).repeat_interleave(fi), synapses.repeat_interleave(fi))]
        else:
            # a convolution: per destination core, the inputs with a synapse there (the adjoint
            # of the op on that core's outputs), a chunk of cores at a time
            used = torch.unique(out_core[out_core >= 0])
            found = []
            for i in range(0, len(used), chunk):
                part = used[i:i + chunk]
                adj = c.adjoint((out_core.unsqueeze(0) == part.unsqueeze(1)).double()).round().long()
                k, inp = torch.nonzero(adj, as_tuple=True)
                found.append((c.src_index[inp], part[k], adj[k, inp]))
        parts.setdefault(c.src, []).extend(found)
    out = {}
    for name, found in parts.items():
        n = onchip.groups[name].elements
        key = torch.cat([e * C + k for e, k, _ in found])
        pair, inverse = torch.unique(key, return_inverse=True)       # sorted: by element, then core
        synapses = torch.zeros(len(pair), dtype=torch.long).index_add_(0, inverse, torch.cat([s for _, _, s in found]))
        start = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(pair // C, minlength=n).cumsum(0)])
        out[name] = Fanout(start, pair % C, synapses)
    return out


def xy_routes(profile, cores: int) -> RouteBuilder:
    """The route builder of the profile's mesh (chips side by side in x): X then Y, each hop
    with its delay.  A route loads the sending core's port of the first router, then on each
    later router the port facing where the message came from; router input = router x
    (4 + cores per tile) + port: ports 0-3 face west, east, south, north, 4 + k is core k's."""
    cpt, height = int(profile["mesh.cores_per_tile"]), int(profile["mesh.height"])
    t_hop_x, t_hop_y = profile["mesh.t_hop_x"], profile["mesh.t_hop_y"]
    x, y = core_xy(profile, cores)
    ports = 4 + cpt
    count = (int(x.max()) + 1 if cores else 1) * height * ports

    def routes(src: torch.Tensor, dst: torch.Tensor) -> Routes:
        x0, y0, x1, y1 = x[src], y[src], x[dst], y[dst]
        hx, hy = (x1 - x0).abs(), (y1 - y0).abs()
        links = hx + hy + 1
        start = torch.cat([torch.zeros(1, dtype=torch.long), links.cumsum(0)])
        route = torch.repeat_interleave(torch.arange(len(src)), links)
        k = torch.arange(int(start[-1])) - start[route]                  # position along the route
        sx, sy = torch.sign(x1 - x0)[route], torch.sign(y1 - y0)[route]
        along_x = (k >= 1) & (k <= hx[route])
        j = (k - hx[route]).clamp(min=0)
        rx = torch.where(k <= hx[route], x0[route] + sx * k, x1[route])
        ry = torch.where(k <= hx[route], y0[route], y0[route] + sy * j)
        port = torch.where(k == 0, 4 + src[route] % cpt,
                           torch.where(along_x, torch.where(sx > 0, 0, 1), torch.where(sy > 0, 2, 3)))
        delay = 0.0 + hx.double() * t_hop_x + hy.double() * t_hop_y
        return Routes(delay, links, start, (rx * height + ry) * ports + port, count)
    return routes


def barrier(profile, tiles: int, chips: int) -> float:
    """The barrier table's value for the largest key <= tiles in use (SANA-FE's lookup),
    plus barrier_chip per chip beyond the first."""
    table = {int(k.split("_")[1]): c.value for k, c in profile.constants["mesh"].items()
             if k.startswith("barrier_") and k.split("_")[1].isdigit()}
    keys = sorted(table)
    below = [k for k in keys if k <= tiles]
    value = table[below[-1] if below else keys[0]]
    return value + max(0, chips - 1) * profile["mesh.barrier_chip"]


# -- recorded spikes ---------------------------------------------------------------------
@dataclasses.dataclass
class Raster:
    """One group's events in a run: chan [T, B, n] (the channel that fired, -1 none) and
    extra [T, B, n] (the element's own work: non-zero input or non-zero membrane)."""
    chan: torch.Tensor
    extra: torch.Tensor


class Recorder:
    """Executor observer (GraphExecutor(..., record_levels=True)) that keeps the rasters of
    the on-chip groups for one batch; ``take()`` returns and clears them."""

    def __init__(self, executor, onchip: OnChip, T: int):
        self.executor, self.onchip, self.T = executor, onchip, T
        self.binary = {n: g.channels > 1 for n, g in onchip.groups.items()}
        self._steps: dict[str, list] = {}
        self._vnz: dict[str, torch.Tensor] = {}

    def __call__(self, node, inputs, out, t):
        g = self.onchip.groups.get(node.name)
        if g is None:
            return
        if t == 1:
            self._steps[node.name] = []
            self._vnz.pop(node.name, None)
        B = out.shape[0]
        if g.kind == "accumulator":
            chan = torch.full((B, g.elements), -1, dtype=torch.int16)
            extra = (out.reshape(B, -1) != 0).cpu()
        else:
            state = self.executor.state(node.name)
            n = g.levels
            code = state.code.reshape(B, -1).long().cpu()
            if state.k > 1:
                # int16 (sign, m) codes: a spike of any levels is one event on the element's one
                # channel (extract refuses k > 1 on binary level channels)
                values = 2 ** (n + 1) - 1
                active = code >= values
                number = (torch.where(active, code - values, code) - (2 ** n - 1)).sign()
            else:
                active = code >= 2 * n + 1
                number = torch.where(active, code - (2 * n + 1), code) - n
            if g.channels > 1:
                chan = torch.where(number > 0, number - 1, torch.where(number < 0, n - number - 1, -1))
            else:
                chan = torch.where(number != 0, 0, -1)
            chan = chan.to(torch.int16)
            prev = self._vnz.get(node.name)
            extra = active if prev is None else active | prev
            self._vnz[node.name] = (state.v.reshape(B, -1) != 0).cpu()
        self._steps[node.name].append((chan, extra))

    def take(self) -> dict[str, Raster]:
        out = {name: Raster(torch.stack([c for c, _ in steps]), torch.stack([e for _, e in steps]))
               for name, steps in self._steps.items()}
        self._steps, self._vnz = {}, {}
        return out


def record(graph, x: torch.Tensor, T: int, onchip: OnChip) -> dict[str, Raster]:
    """Run `graph` on x for T steps and return the on-chip groups' rasters."""
    from ecmt.runtime import GraphExecutor
    ex = GraphExecutor(graph, record_levels=True)
    rec = Recorder(ex, onchip, T)
    ex.run(x, T, observer=rec)
    return rec.take()


# -- time and price ------------------------------------------------------------------------
STEP_FIELDS = ("synaptic_events", "neurons_fired", "neurons_updated", "messages", "hops", "hops_x", "hops_y",
               "synapse_j", "neuron_j", "network_j", "host_transfers", "host_transfer_j",
               "onchip_latency_s", "chip_latency_s", "onchip_latency_simple_s", "chip_latency_simple_s",
               "host_transfer_s")
GROUP_FIELDS = ("fired", "updated", "synaptic_events_out", "messages_out", "hops_out", "synapse_j", "neuron_j",
                "network_j")


def _per_core(fired: torch.Tensor, fan: Fanout, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and core, the synapses and the messages that the fired elements
    (fired [B, n] bool) reach there: two [B, C] float64."""
    b, e = torch.nonzero(fired, as_tuple=True)
    lens = fan.start[e + 1] - fan.start[e]
    first = torch.repeat_interleave(fan.start[e] - (lens.cumsum(0) - lens), lens)
    at = first + torch.arange(len(first))                      # each fired element's entries
    where = torch.repeat_interleave(b, lens) * C + fan.core[at]
    synapses = torch.zeros(fired.shape[0] * C, dtype=torch.float64).index_add_(0, where, fan.synapses[at].double())
    messages = torch.zeros(fired.shape[0] * C, dtype=torch.float64).index_add_(
        0, where, torch.ones(len(where), dtype=torch.float64))
    return synapses.view(-1, C), messages.view(-1, C)


def without_network_load(profile):
    """`profile` without its link buffer: the schedule with every trip at its hop delays
    (messages queue only at their destination)."""
    mesh_table = {k: c for k, c in profile.constants["mesh"].items() if k != "link_buffer"}
    return dataclasses.replace(profile, constants={**profile.constants, "mesh": mesh_table})


class Accounting:
    """SANA-FE's accounting of a mapped on-chip part, summed over the samples of every
    batch given to add(); per step (lists of T) and per group.  Every sample is scheduled
    (hw_sim/schedule.py, compiled).  The spikes of the first `retime_samples` samples
    (None: all) are kept for retime()."""

    def __init__(self, onchip: OnChip, placement: Placement, profile, T: int, retime_samples: int | None = None):
        if retime_samples is not None and retime_samples < 0:
            raise ValueError(f"retime_samples must be >= 0 or None, got {retime_samples}")
        self.onchip, self.placement, self.profile, self.T = onchip, placement, profile, T
        m = lambda k: profile[f"mesh.{k}"]
        self.k = {k: m(k) for k in MESH_REQUIRED if k.startswith(("e_", "t_"))}
        C = placement.cores
        x, y = core_xy(profile, C)
        self.fanout = fanout(onchip, placement)
        # per source element: messages, synaptic events and hops per spike
        self.tables = {}
        for name, f in self.fanout.items():
            n, rows = onchip.groups[name].elements, f.rows()
            src = placement.core_of[name][rows]
            per = lambda v: torch.zeros(n, dtype=torch.float64).index_add_(0, rows, v.double())
            self.tables[name] = {"msgs": f.per_element().double(), "fanout": per(f.synapses),
                                 "hx": per((x[f.core] - x[src]).abs()), "hy": per((y[f.core] - y[src]).abs())}
        self.neurons = sum(g.neurons for g in onchip.groups.values())
        self.neurons_per_core = torch.zeros(C, dtype=torch.float64)
        self.phase_of_core = torch.zeros(C, dtype=torch.long)
        for name, g in onchip.groups.items():
            self.neurons_per_core.index_add_(0, placement.core_of[name],
                                             torch.full((g.elements,), float(g.channels), dtype=torch.float64))
            self.phase_of_core[placement.core_of[name]] = g.phase
        # the phases that hold cores: each is scheduled alone and has its barrier
        self.present = torch.bincount(self.phase_of_core, minlength=onchip.phases + 1)[1:] > 0
        self.barrier = barrier(profile, placement.tiles_in_use, placement.chips)
        self.schedule = self._schedule(profile)
        self.samples = 0
        self.retime_samples = retime_samples
        self.sample_j: list[torch.Tensor] = []      # per batch, each sample's on-chip energy over T [B]
        self.sample_t_j: list[torch.Tensor] = []    # per batch, the same up to each step t [B, T]
        self.sample_chip_s: list[torch.Tensor] = []  # per batch, each sample's detailed chip latency [B, T]
        self.kept: list[tuple] = []     # per batch and step: (first sample, t, chans, updated), for retime
        self._spans: dict = {}          # retime's phase spans, by timing constants
        self.step = {f: [0.0] * T for f in STEP_FIELDS}
        self.group = {name: {f: 0.0 for f in GROUP_FIELDS} for name in onchip.groups}

    def _schedule(self, profile) -> StepSchedule:
        groups = self.onchip.groups
        return StepSchedule(self.placement.core_of, {n: g.channels for n, g in groups.items()}, self.fanout,
                            self.phase_of_core, self.onchip.phases, Timing.of(profile),
                            xy_routes(profile, self.placement.cores))

    def _chip(self, parts: torch.Tensor, bar: float) -> torch.Tensor:
        """Chip latency from per-phase spans [..., phases]: each phase with cores, plus its barrier."""
        return (parts[..., self.present] + bar).sum(-1)

    def add(self, rasters: dict[str, Raster]) -> None:
        k, T, C = self.k, self.T, self.placement.cores
        B = next(iter(rasters.values())).chan.shape[1]
        first = self.samples
        self.samples += B
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
            chans, updated = {}, {}
            for name, g in self.onchip.groups.items():
                r = rasters[name]
                chan, extra = r.chan[t], r.extra[t]
                fired = chan >= 0
                S = fired.double()
                f0 = chan == 0
                upd = (extra | recv[name]) & ~f0
                chans[name], updated[name] = chan, upd
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
                synapses, messages = _per_core(fired, self.fanout[name], C)
                proc += synapses * k["t_synaptic_event"] + messages * k["t_message_in"]
                gen.index_add_(1, cores, S * tab["msgs"] * k["t_message_out"])
                ev, msgs = float((S @ tab["fanout"]).sum()), float((S @ tab["msgs"]).sum())
                hx, hy = float((S @ tab["hx"]).sum()), float((S @ tab["hy"]).sum())
                e_syn = ev * k["e_synaptic_event"]
                e_net = msgs * (k["e_message_out"] + k["e_message_in"]) + hx * k["e_hop_x"] + hy * k["e_hop_y"]
                sample_j += S @ (tab["fanout"] * k["e_synaptic_event"]
                                 + tab["msgs"] * (k["e_message_out"] + k["e_message_in"])
                                 + tab["hx"] * k["e_hop_x"] + tab["hy"] * k["e_hop_y"])
                for f, v in (("synaptic_events", ev), ("messages", msgs), ("hops", hx + hy), ("hops_x", hx),
                             ("hops_y", hy), ("synapse_j", e_syn), ("network_j", e_net)):
                    st[f] += v
                gs["synaptic_events_out"] += ev
                gs["messages_out"] += msgs
                gs["hops_out"] += hx + hy
                gs["synapse_j"] += e_syn
                gs["network_j"] += e_net
                for c in self.onchip.outgoing(name):
                    y = c.forward(S[:, c.src_index].float()) > 0
                    valid = c.dst_index >= 0
                    nxt[c.dst][:, c.dst_index[valid]] |= y[:, valid]
            recv = nxt
            up_to_t.append(sample_j.clone())
            if keep:             # kept for re-timing (retime): the schedule's input, per sample
                self.kept.append((first, t, {n: c[:keep].clone() for n, c in chans.items()},
                                  {n: u[:keep].clone() for n, u in updated.items()}))
            # Latency per sample, over all cores (one step, one barrier: SANA-FE's view) and
            # per phase (each chip segment of the step with its own barrier): the detailed
            # schedule, and SANA-FE's "simple" model (max over cores of neuron-side and
            # message-side serial work; over the whole step a lower bound of the schedule).
            onchip = torch.maximum(gen.max(1).values, proc.max(1).values) + self.barrier
            chip = torch.zeros(B, dtype=torch.float64)
            for p in range(1, self.onchip.phases + 1):
                sel = self.phase_of_core == p
                if bool(sel.any()):
                    chip += torch.maximum(gen[:, sel].max(1).values, proc[:, sel].max(1).values) + self.barrier
            st["onchip_latency_simple_s"] = float(onchip.sum())
            st["chip_latency_simple_s"] = float(chip.sum())
            whole, parts = self.schedule.spans(chans, updated)
            chip_s[:, t] = self._chip(parts, self.barrier)
            st["onchip_latency_s"] = float((whole + self.barrier).sum())
            st["chip_latency_s"] = float(chip_s[:, t].sum())
            st["host_transfer_j"] = st["host_transfers"] * k["e_host_transfer"]
            st["host_transfer_s"] = st["host_transfers"] * k["t_host_transfer"]
            for f in STEP_FIELDS:
                self.step[f][t] += st[f]
        self.sample_j.append(sample_j)
        self.sample_t_j.append(torch.stack(up_to_t, 1))
        self.sample_chip_s.append(chip_s)

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
        return self.samples if self.retime_samples is None else min(self.samples, self.retime_samples)

    def retime(self, profile, samples: int | None = None) -> torch.Tensor:
        """sample_chip_latency of the first `samples` kept samples (None: all kept), re-timed
        with `profile`'s timing constants (t_*, barrier_*, link_buffer) on the same mapping
        and spikes: the re-pricing path for those constants (hw_sim/simulate.py)."""
        n = self.kept_samples() if samples is None else min(samples, self.kept_samples())
        bar = barrier(profile, self.placement.tiles_in_use, self.placement.chips)
        # the spans do not depend on the barrier: scheduled once per set of the other constants
        key = (n, tuple(profile.get(f"mesh.{k}") for k in MESH_REQUIRED if k.startswith("t_")),
               profile.get("mesh.link_buffer"))
        if key not in self._spans:
            schedule = self._schedule(profile)
            parts = torch.zeros(n, self.T, self.onchip.phases, dtype=torch.float64)
            for first, t, chans, updated in self.kept:
                m = min(next(iter(chans.values())).shape[0], n - first)
                if m > 0:
                    parts[first:first + m, t] = schedule.spans({g: c[:m] for g, c in chans.items()},
                                                               {g: u[:m] for g, u in updated.items()})[1]
            self._spans[key] = parts
        return self._chip(self._spans[key], bar)

    def result(self) -> dict:
        """Per-inference figures (sums divided by samples)."""
        n = max(self.samples, 1)
        return {"per_step": {f: [v / n for v in vals] for f, vals in self.step.items()},
                "groups": {name: {f: v / n for f, v in d.items()} for name, d in self.group.items()},
                "barrier_s": self.barrier, "phases": self.onchip.phases, "mapped_neurons": self.neurons,
                "cores": self.placement.cores, "tiles": self.placement.tiles_in_use, "chips": self.placement.chips,
                "samples": self.samples, "scheduled_samples": self.samples}
