"""The system's geometry: chips on a grid (or joined by listed links), tiles on each chip,
cores on each tile; where each core sits, which cores each source element reaches and the
barrier of a step."""
from __future__ import annotations

import math

import torch

from .extract import OnChip
from .schedule import Fanout, Geometry


def tiles_per_chip(profile) -> int:
    """Tiles on one chip: [mesh] tiles, or the whole width x height mesh."""
    return int(profile.get("mesh.tiles") or profile["mesh.width"] * profile["mesh.height"])


def core_chip(profile, cores: int) -> torch.Tensor:
    """The chip of each core (cores are numbered tile by tile, chip by chip)."""
    return torch.arange(cores) // int(profile["mesh.cores_per_tile"]) // tiles_per_chip(profile)


def core_xy(profile, cores: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of each core's tile on the system's tile mesh: tile = core // cores_per_tile;
    on its chip, local tile id = height * x + y (SANA-FE's numbering); chip k sits at column
    k % columns, row k // columns of the chip grid, the tile mesh continuing across chips
    (32 chips in one row is SANA-FE's loihi_large strip of 1,024 tiles)."""
    cpt = int(profile["mesh.cores_per_tile"])
    w, h, cols = int(profile["mesh.width"]), int(profile["mesh.height"]), int(profile["chips.columns"])
    tile = torch.arange(cores) // cpt
    chip, local = tile // tiles_per_chip(profile), tile % tiles_per_chip(profile)
    return (chip % cols) * w + local // h, (chip // cols) * h + local % h


def chip_distance(profile, chips: int) -> torch.Tensor:
    """[chips, chips]: the chip-to-chip links a message crosses between two chips: on the chip
    grid the chips' column and row distances (X-then-Y routing), with listed links the
    shortest path over them."""
    if profile.links is None:
        k = torch.arange(chips)
        cols = int(profile["chips.columns"])
        col, row = k % cols, k // cols
        return (col.unsqueeze(1) - col).abs() + (row.unsqueeze(1) - row).abs()
    n = int(profile["chips.count"])
    dist = torch.full((n, n), -1, dtype=torch.long)
    nbr = {c: [] for c in range(n)}
    for a, b in profile.links:
        nbr[a].append(b)
        nbr[b].append(a)
    for start in range(n):                      # breadth first from every chip
        dist[start, start] = 0
        frontier = [start]
        while frontier:
            nxt = []
            for c in frontier:
                for d in nbr[c]:
                    if dist[start, d] < 0:
                        dist[start, d] = dist[start, c] + 1
                        nxt.append(d)
            frontier = nxt
    return dist[:chips, :chips]


def fanout(onchip: OnChip, placement: "Placement", chunk: int = 64) -> dict[str, Fanout]:
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
        out[name] = Fanout(start, (pair % C).to(torch.int32), synapses.to(torch.int32))
    return out


def geometry(profile, cores: int) -> Geometry:
    """Where the profile's system puts `cores` cores (the schedule walks its routes X then Y
    over the system's tile mesh, every chip boundary one chip-to-chip link)."""
    x, y = core_xy(profile, cores)
    h = int(profile["mesh.height"])
    chip = core_chip(profile, cores)
    return Geometry(x, y, chip, chip_distance(profile, int(chip.max()) + 1 if cores else 1),
                    (int(y.max()) // h + 1) * h if cores else h)      # rows of routers over the chip rows in use


def barrier(profile, tiles: int, chips: int) -> float:
    """The barrier of one step: on one chip, the [mesh] barrier table's value for the largest
    key <= tiles in use (SANA-FE's lookup); across chips, interpolated in log2(chips) from
    the one-chip value at 1 chip to [chips] barrier_256 at 256 chips (Frady et al. 2020's
    measured point; the interpolation and the extrapolation beyond are assumptions)."""
    table = {int(k.split("_")[1]): c.value for k, c in profile.constants["mesh"].items()
             if k.startswith("barrier_") and k.split("_")[1].isdigit()}
    keys = sorted(table)
    below = [k for k in keys if k <= tiles]
    one = table[below[-1] if below else keys[0]]
    if chips <= 1:
        return one
    return one + (profile["chips.barrier_256"] - one) * math.log2(chips) / 8
