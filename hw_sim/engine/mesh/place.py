"""Place: every on-chip neuron on a core of a system of chips (``Placement``).

Layer by layer, each layer from a fresh core, consecutive elements fill a core while every
per-core limit the profile states holds: neurons, synapse memory (bits; weight sharing per
profile), input axons (distinct source neurons with a synapse on the core) and output axons
(per source neuron, one per destination core).  An element's channels stay on one core (a
multi-compartment neuron).  A layer that does not fit one core is split over cores and
chips; an element that fits no core is refused before any run (MappingError naming the
layer, the resource, how far over and what would make it fit), and so is a network that
needs more chips than a system with a chip count has.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .extract import Connection, Group, MappingError, OnChip
from .topology import tiles_per_chip


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
    return {"neurons": get("mesh.neurons_per_core", math.inf), "synapse memory": mem or math.inf,
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


LIMIT_KEYS = {"neurons": "mesh.neurons_per_core", "synapse memory": "mesh.synapse_memory_bits",
              "input axons": "mesh.input_axons", "output axons": "mesh.output_axons"}


def _cannot_map(onchip: OnChip, g: Group, why: str, need: float, limits: dict, profile) -> MappingError:
    """One element of `g` needs more of resource `why` than a core has: the error names the
    layer, the resource, by how much it is over, and what would make it fit."""
    limit = limits[why]
    incoming = onchip.incoming(g.name)
    via = sorted({c.node for c in incoming})
    src = max((onchip.groups[c.src].channels for c in incoming), default=1)
    fits = []
    if why == "neurons" and g.channels > 1:
        per_sign = 2 if g.signed else 1
        fits.append(f'the element form (mt_form = "element": 1 neuron per element)')
        if limit >= per_sign:
            fits.append(f"at most {int(limit // per_sign)} levels ({per_sign * int(limit // per_sign)} channels)")
    if why in ("input axons", "synapse memory") and src > 1:
        per_channel = need / src
        if per_channel <= limit:
            fits.append(f'the element form for the layer feeding it (mt_form = "element": {int(per_channel)} '
                        f"{'axons' if why == 'input axons' else 'bits'})")
        per_sign = 2 if any(onchip.groups[c.src].signed for c in incoming) else 1
        levels = int(limit // per_channel) // per_sign if per_channel else 0
        if levels >= 1:
            fits.append(f"at most {levels} levels ({per_sign * levels} channels) in the neurons feeding it")
    if why == "synapse memory":
        bits = limits["synapse_bits"]
        if bits > 1 and need / bits <= limit:
            fits.append(f"at most {int(limit // (need / bits))}-bit synapses (mesh.synapse_bits = {bits:g})")
    if why in ("input axons", "synapse memory"):
        fan_in = need / (src * (limits["synapse_bits"] if why == "synapse memory" else 1))
        fits.append(f"a smaller layer: fan-in at most {int(fan_in * limit / need)} instead of {int(fan_in)}")
    if why == "output axons":
        fits.append("a layer whose neurons reach fewer destination cores (a smaller fan-out)")
    fits.append(f"a profile with more {why} per core ({LIMIT_KEYS[why]})")
    return MappingError(
        f"profile {profile.name}: layer {g.name!r}" + (f" (fed by {', '.join(via)})" if via else "")
        + f": one element ({g.channels} neuron(s)) needs {why} {int(need)} > {int(limit)} per core "
        f"({LIMIT_KEYS[why]}), {need / limit:.2f}x over; an element must fit one core, so more chips do not help",
        hint="it would fit with " + "; or ".join(fits))


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
                raise _cannot_map(onchip, onchip.groups[name], "output axons", used, limits, profile)
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
                raise _cannot_map(onchip, g, why, d.use(a, a + 1).get(why, 0), limits, profile)
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
    per_chip = tiles_per_chip(profile) * cpt
    chips = max(1, math.ceil(next_core / per_chip)) if next_core else 0
    tiles = len({c // cpt for c in range(next_core)})
    available = profile.get("chips.count")
    if available is not None and chips > available:
        big = max(layers, key=lambda l: l.cores)
        raise MappingError(
            f"profile {profile.name}: the network needs {chips} chips of {per_chip} cores ({next_core} cores), "
            f"the system has {int(available)} (chips.count): {chips - int(available)} chip(s) over",
            hint=f"use a system with at least {chips} chips, or a smaller network (the largest layer, "
                 f"{big.name!r}, takes {big.cores} cores, limited by {big.limiting_resource})")
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
