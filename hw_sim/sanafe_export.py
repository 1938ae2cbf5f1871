"""Write the on-chip part of a graph, its mapping and one sample's recorded spikes as an
``ecmt.sanafe.net`` v1 description for tools/sanafe_run.py, and run it.

SANA-FE (Boyle et al., IEEE TCAD 2025; PyPI `sanafe`, GPL-3.0) is never imported here:
the runner works in its own environment (tools/sanafe_env.sh) and is started as a
subprocess.  This module only writes JSON and reads the runner's result.

What is written (hw_sim/engine/mesh defines the model):

* one group per on-chip group (MT neuron or accumulator), ``elements x channels``
  neurons, element-major (element e's channel j is neuron e * channels + j), placed
  on the cores hw_sim's mapping chose (tile id and core index within the tile);
* ``spikes[t]``: the neurons of the channels that fired; ``updates[t]``: channel 0 of
  every element with work of its own (non-zero input or membrane) that did not fire
  on channel 0; SANA-FE adds the updates of neurons that received a synaptic event at
  t - 1 itself;
* connections as explicit ``edges`` from every source neuron (element, channel) that
  fires at least once in the run to channel 0 of each destination element it has a
  synapse to.  Synapses of source neurons that never fire are left out: in SANA-FE's
  model they cannot change any count, energy or latency (events, messages, hops and
  input-driven updates all start from a spike), and they would cost ~0.75 KB each.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from ecmt.errors import EcmtError

from .engine.mesh import OnChip, Placement, Raster

REPO = Path(__file__).resolve().parent.parent
ENV_SCRIPT = REPO / "tools" / "sanafe_env.sh"
RUNNER = REPO / "tools" / "sanafe_run.py"


class SanafeError(EcmtError):
    """SANA-FE's environment is missing or its run failed."""


def sanafe_view(profile):
    """`profile` as SANA-FE models a system of chips (its loihi_large: one mesh of tiles): every
    chip in one row, chip boundaries free (no link energy or delay), and the barrier its tile
    table gives (at 256 chips no more than at 29+ tiles).  hw_sim's own multi-chip figures
    (links, the multi-chip barrier) are what it adds to SANA-FE's model."""
    table = [int(k.split("_")[1]) for k in profile.constants["mesh"] if k.startswith("barrier_")
             and k.split("_")[1].isdigit()]
    top = profile[f"mesh.barrier_{max(table)}"]
    view = profile.with_value("chips.columns", 1 << 20).with_value("chips.e_link", 0.0)
    return view.with_value("chips.t_link", 0.0).with_value("chips.barrier_256", top)


def describe(onchip: OnChip, placement: Placement, rasters: dict[str, Raster], profile, sample: int = 0,
             tiles: int = 32) -> dict:
    """`tiles`: the tiles of the SANA-FE architecture it will run on (32: the wheel's one-chip
    Loihi; 1024: its loihi_large, 32 chips in one strip, which equals hw_sim's tile geometry
    with chips.columns = 32)."""
    cpt = int(profile["mesh.cores_per_tile"])
    needed = -(-placement.cores // cpt)
    if needed > tiles:
        raise SanafeError(f"the mapping needs {needed} tiles ({placement.chips} chips); the SANA-FE architecture "
                          f"has {tiles}", hint="run SANA-FE's loihi_large (tiles=1024), or map a smaller network")
    T = next(iter(rasters.values())).fired.shape[0]
    groups, fired_neurons = [], {}
    for name, g in onchip.groups.items():
        cores = placement.core_of[name]
        runs = []
        per_neuron = cores.repeat_interleave(g.channels).tolist()
        for c in per_neuron:
            tile, core = c // cpt, c % cpt
            if runs and runs[-1]["tile"] == tile and runs[-1]["core"] == core:
                runs[-1]["count"] += 1
            else:
                runs.append({"tile": tile, "core": core, "count": 1})
        r = rasters[name]
        mask, extra = r.fired[:, sample].long(), r.extra[:, sample]
        bits = (mask.unsqueeze(-1) >> torch.arange(g.channels)) & 1          # [T, elements, channels]
        neuron = torch.arange(g.neurons).view(g.elements, g.channels)       # element-major
        spikes = [sorted(neuron[bits[t] != 0].tolist()) for t in range(T)]
        updates = [sorted(neuron[:, 0][extra[t] & (bits[t, :, 0] == 0)].tolist()) for t in range(T)]
        fired_neurons[name] = torch.unique(neuron.expand(T, -1, -1)[bits != 0])
        entry = {"name": name, "count": g.neurons, "placement": runs, "spikes": spikes}
        if any(updates):
            entry["updates"] = updates
        groups.append(entry)
    connections = []
    for c in onchip.connections:
        L_src, L_dst = onchip.groups[c.src].channels, onchip.groups[c.dst].channels
        src_neurons = fired_neurons[c.src]
        if not len(src_neurons):
            continue
        pairs = c.pairs()                                          # (op input, op output)
        src_e = c.src_index[pairs[:, 0]]
        dst_e = c.dst_index[pairs[:, 1]]
        keep = dst_e >= 0
        src_e, dst_e = src_e[keep], dst_e[keep]
        elem = src_neurons // L_src
        chans = src_neurons % L_src
        n_src = onchip.groups[c.src].elements
        # join: for every fired source neuron, every pair of its element
        order = torch.argsort(src_e, stable=True)
        src_e, dst_e = src_e[order], dst_e[order]
        count = torch.bincount(src_e, minlength=n_src)
        start = torch.cumsum(count, 0) - count
        lens = count[elem]
        total = int(lens.sum())
        if total == 0:
            continue
        seg = torch.repeat_interleave(torch.arange(len(elem)), lens)
        offset = torch.arange(total) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        d = dst_e[start[elem][seg] + offset]
        s = elem[seg] * L_src + chans[seg]
        edges = torch.stack([s, d * L_dst], 1).tolist()
        connections.append({"from": c.src, "to": c.dst, "edges": edges})
    return {"schema": "ecmt.sanafe.net", "version": 1, "T": T, "groups": groups, "connections": connections}


def sanafe_python() -> str | None:
    """The SANA-FE env's interpreter if tools/sanafe_env.sh has built it, else None."""
    try:
        out = subprocess.run([str(ENV_SCRIPT), "--python"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    path = out.stdout.strip()
    return path if os.path.isfile(path) and (Path(path).parent.parent / ".stamp").is_file() else None


def run(description: dict, *, timing: str = "detailed,simple", breakdown: bool = True,
        workdir: str | os.PathLike | None = None, timeout: float = 1800, tiles: int | None = None) -> dict:
    """Run a description through tools/sanafe_run.py in SANA-FE's env; the result JSON.
    `tiles`: SANA-FE's Loihi with that many tiles (1024: its loihi_large, 32 chips)."""
    python = sanafe_python()
    if python is None:
        raise SanafeError("SANA-FE's environment is not built (.cache/sanafe)", hint="run tools/sanafe_env.sh")
    with tempfile.TemporaryDirectory(prefix="ecmt_sanafe.", dir=workdir) as tmp:
        net, out = Path(tmp) / "net.json", Path(tmp) / "result.json"
        net.write_text(json.dumps(description))
        cmd = [python, str(RUNNER), str(net), "-o", str(out), "--timing", timing]
        if not breakdown:
            cmd.append("--no-breakdown")
        if tiles is not None:
            cmd += ["--tiles", str(tiles)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise SanafeError(f"tools/sanafe_run.py exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return json.loads(out.read_text())
