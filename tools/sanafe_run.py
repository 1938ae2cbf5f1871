"""Run a network that ecmt describes on SANA-FE's Loihi model, replaying recorded spikes.

Runs INSIDE the env built by tools/sanafe_env.sh (it never imports ecmt or torch), and
is meant to be started as a subprocess: an exception that SANA-FE's C++ core raises
inside its OpenMP loops terminates the process instead of reaching Python.

    $(tools/sanafe_env.sh --python) tools/sanafe_run.py NET.json -o RESULT.json

SANA-FE (Boyle et al., IEEE TCAD 2025; PyPI `sanafe`, GPL-3.0) is used as installed; its
Loihi description is the `examples/loihi.yaml` shipped inside the wheel (or --arch).

Input: NET.json ("ecmt.sanafe.net", version 1)
----------------------------------------------
    {
      "schema": "ecmt.sanafe.net", "version": 1,
      "T": 3,                                   # time steps to run
      "soma_hw": "loihi_lif",                   # optional: soma unit (a leaky_integrate_fire model)
      "synapse_hw": "loihi_dense_synapse",      # optional: default synapse unit
      "groups": [                               # mapped (and processed) in this order
        {"name": "in", "count": 4,
         "placement": [{"tile": 0, "core": 0, "count": 4}],
         "spikes": [[0, 2], [1], []]},          # per step t = 1..T: offsets that spike
        {"name": "h1", "count": 3,
         "placement": [{"tile": 1, "core": 0, "count": 3}],
         "spikes": [[], [0], [2]],
         "updates": [[], [], [1]],              # optional: also update (no spike) at step t
         "force_update": false},                # optional: every neuron updates every step
        ...
      ],
      "connections": [
        {"from": "in", "to": "h1", "dense": true},                  # every (src, dst) pair
        {"from": "h1", "to": "out", "weights": [[...], ...]},       # [dst][src] (torch Linear)
        {"from": "h1", "to": "out", "edges": [[0, 1], [2, 0, 0.5]]} # [src, dst] or [src, dst, w]
      ]
    }

* groups: `name` (unique), `count` neurons.  `placement`: consecutive runs of neurons, in
  offset order, each on core `core` (0..3, the core's index in its tile) of tile `tile`
  (0..31; tile id = 4 x + y on Loihi's 8 x 4 mesh); the counts add up to `count`.  A
  per-neuron placement is runs of count 1.  At most 1024 neurons per core.  Neurons are
  mapped, and on each core processed every step, in the order of the groups and offsets.
* `spikes[t-1]`: the offsets of the neurons that fire at step t (an empty list for none);
  T lists.  Every group is replayed: SANA-FE fires exactly these neurons at these steps.
  `updates[t-1]` (optional): neurons whose soma also does an update (not a spike) at
  step t, on top of those SANA-FE updates anyway (see below).  `force_update`: SANA-FE's
  own flag: every neuron of the group updates every step.
* connections: `dense` (every pair), `weights` (a [dst][src] matrix: a synapse for every
  entry, or only for the non-zero ones with "skip_zero": true) or `edges` ([src, dst] or
  [src, dst, weight] lists).  Optional `synapse_hw` (a synapse unit of the architecture,
  e.g. loihi_sparse_synapse).  Weight values never reach SANA-FE: its energy and latency
  do not depend on them, and every synapse is programmed with weight 0 so that no
  current disturbs the replay.  Several connections from one source neuron into the same
  core share one axon: one message per (spiking neuron, destination core).

How the replay works (no plug-in): every neuron is a `loihi_lif` (leaky_integrate_fire)
compartment with threshold 1, leak 1, hard reset to 0, and all synaptic weights 0.  The
run advances one step at a time (chip.sim(1)); before step t the membrane potential of
each neuron in spikes[t-1] is set to 2 (it fires, then resets to 0) and that of each
neuron in updates[t-1] to 1/128 (non-zero, so its soma updates; Loihi's 1/64
quantization then zeroes it, so it never fires).  The run checks SANA-FE's spike trace
against the rasters and fails (exit 4) on any difference.

What SANA-FE then charges, as the real network on the chip would incur it: every
synaptic event of a real spike (per (spike, synapse)), every message (per (spiking
neuron, destination core)) and its hops, each mapped neuron's soma access every step,
the spike-out of every spike, and a soma update for each neuron that fires, that
received a synaptic event in the previous step (SANA-FE delivers step t's synaptic input
to the soma at step t + 1), that is in `updates`, or whose group has force_update.  What
it would not match: the real network's membrane dynamics decide which non-firing neurons
update (in SANA-FE's LIF any neuron with a non-zero potential updates every step); here
the potential is zero between replayed spikes, so such updates appear only through
`updates` / force_update.  Dendrite updates cost 0 J and 0 s on Loihi.

Output: RESULT.json ("ecmt.sanafe.result", version 1)
-----------------------------------------------------
    sanafe_version, arch (path), T, timing_models
    energy_j          {total, synapse, dendrite, soma, network}: as SANA-FE reports them
    latency_s         {timing model: seconds over T steps}       (sum of per-step times)
    per_step          lists of T values: energy_{total,synapse,dendrite,soma,network}_j,
                      synaptic_events (SANA-FE's "spikes": synapse look-ups),
                      neurons_fired, neurons_updated, messages ("packets_sent"), hops,
                      latency_s {timing model: [T]}
    mapped_tiles, mapped_cores, sync_s (the per-step barrier SANA-FE adds)
    per_core          (unless --no-breakdown) per used core: tile, core, id, neurons, and
                      per step: messages_out, messages_in, synaptic_events_in, hops_in,
                      generation_s (its neuron-processing time: sum of its messages'
                      generation delays), processing_s (sum of its received messages'
                      processing delays)
    per_group         (unless --no-breakdown) per group and step: fired, messages_out,
                      synaptic_events_out, hops_out
    constants         the architecture constants the closed-form accounting uses
    expected          the closed-form accounting below, from this description alone:
                      per-step counts, energies and the "simple" timing model's latency;
                      and `max_rel_diff` against SANA-FE's figures (~1e-15 when they agree)
    replay            {ok, mismatches: [first few {group, step, expected, got}]}
    run               {build_s, load_s, sim_s (per timing model), peak_rss_mb}

The closed-form accounting (SANA-FE 2.2.9, Loihi description; the runner checks it on
every run), per step t, e(...) and l(...) being the architecture's energies and latencies:
    synapse  = sum over spikes at t of their synapses x e(synapse unit) [35.5 pJ dense]
    dendrite = the same synaptic events x e(dendrite update)            [0 on Loihi]
    soma     = mapped neurons x e(access) [51.2 pJ] + updated x e(update) [21.6 pJ]
               + fired x e(spike out) [69.3 pJ]
    network  = messages x (e(message out) [111 pJ] + e(message in) [0])
               + x-hops x e(east/west hop) [3.0 pJ] + y-hops x e(north/south hop) [4.2 pJ]
  with one message per (spiking neuron, destination core), hops the Manhattan distance
  between the tiles (tile id = height x X + Y), and "updated" = fired, or received a
  synaptic event at t - 1, or in updates / force_update.  Latency ("simple" model):
    max(max over cores of sum over its neurons of l(access) [6 ns] + updated x l(update)
        [3.7 ns] + fired x l(spike out) [30 ns], plus messages sent x l(message out) [5.1 ns];
        max over cores of sum over messages received of l(message in) [16 ns] + its
        synapses x l(synapse) [3.8 ns dense])
    + the barrier: the sync table's value for the largest key <= tiles in use
      [1 tile 0.6 us, 2-3 1.0 us, 4-28 1.4 us, 29-32 1.8 us].
  The "detailed" model (the default) schedules the same delays as events: each core sends
  its messages one after another, each message reaches its core after max(hop latency,
  a congestion estimate from the messages in flight on its route and the link buffer)
  and may be held back when its route is full, and each core processes what it receives
  one message at a time; the step takes the last event's time plus the barrier
  (hw_sim/schedule.py's StepSchedule reimplements it; --messages writes SANA-FE's schedule
  message by message to check it).

Exit status: 0 ok; 2 bad input (one line on stderr: sanafe_run: <what>); 3 SANA-FE
raised an error; 4 the replayed spikes differ from the rasters (the result is written).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

SCHEMA_IN, SCHEMA_OUT, VERSION = "ecmt.sanafe.net", "ecmt.sanafe.result", 1
FIRE_POTENTIAL = 2.0           # above the threshold: the neuron fires, then resets to 0
UPDATE_POTENTIAL = 1.0 / 128   # non-zero (soma updates), quantized to 0 (never fires)
THRESHOLD = 1.0
TIMING_MODELS = ("detailed", "simple", "cycle")
MESSAGE_FIELDS = ("src_core", "dest_core", "generation_s", "processing_s", "network_s", "blocking_s", "sent_s",
                  "received_s", "processed_s", "hops")
ENERGY_KEYS = ("total", "synapse", "dendrite", "soma", "network")


class BadInput(Exception):
    pass


# -- the description ---------------------------------------------------------------------
def _int(value, what: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise BadInput(f"{what}: expected an integer in [{low}, {high if high is not None else 'inf'}], got {value!r}")
    return value


def load_description(path: str) -> dict:
    try:
        with open(path) as f:
            net = json.load(f)
    except (OSError, ValueError) as err:
        raise BadInput(f"cannot read {path}: {err}") from None
    if not isinstance(net, dict) or net.get("schema") != SCHEMA_IN or net.get("version") != VERSION:
        raise BadInput(f"{path}: not an {SCHEMA_IN} v{VERSION} description (schema/version keys)")
    T = _int(net.get("T"), "T", 1)
    groups = net.get("groups")
    if not isinstance(groups, list) or not groups:
        raise BadInput("groups: expected a non-empty list")
    names = set()
    for gi, g in enumerate(groups):
        where = f"groups[{gi}]"
        name = g.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise BadInput(f"{where}.name: missing, empty or repeated")
        names.add(name)
        where = f"group {name!r}"
        n = _int(g.get("count"), f"{where}.count", 1)
        runs = g.get("placement")
        if not isinstance(runs, list) or not runs:
            raise BadInput(f"{where}.placement: expected a list of {{tile, core, count}}")
        total = 0
        for r in runs:
            if not isinstance(r, dict):
                raise BadInput(f"{where}.placement: expected {{tile, core, count}} entries")
            _int(r.get("tile"), f"{where}.placement.tile")
            _int(r.get("core"), f"{where}.placement.core")
            total += _int(r.get("count"), f"{where}.placement.count", 1)
        if total != n:
            raise BadInput(f"{where}.placement: counts add up to {total}, not count={n}")
        for key in ("spikes", "updates"):
            raster = g.get(key)
            if raster is None and key == "updates":
                continue
            if not isinstance(raster, list) or len(raster) != T:
                raise BadInput(f"{where}.{key}: expected T={T} lists of neuron offsets")
            for t, step in enumerate(raster):
                if not isinstance(step, list):
                    raise BadInput(f"{where}.{key}[{t}]: expected a list of offsets")
                for i in step:
                    _int(i, f"{where}.{key}[{t}] entry", 0, n - 1)
                if len(set(step)) != len(step):
                    raise BadInput(f"{where}.{key}[{t}]: repeated offsets")
    counts = {g["name"]: g["count"] for g in groups}
    conns = net.get("connections", [])
    if not isinstance(conns, list):
        raise BadInput("connections: expected a list")
    for ci, c in enumerate(conns):
        where = f"connections[{ci}]"
        for end in ("from", "to"):
            if c.get(end) not in counts:
                raise BadInput(f"{where}.{end}: unknown group {c.get(end)!r}")
        kinds = [k for k in ("dense", "weights", "edges") if k in c]
        if len(kinds) != 1 or ("dense" in c and c["dense"] is not True):
            raise BadInput(f"{where}: give exactly one of dense: true, weights, edges")
        ns, nd = counts[c["from"]], counts[c["to"]]
        if "weights" in c:
            w = c["weights"]
            if not isinstance(w, list) or len(w) != nd or any(not isinstance(r, list) or len(r) != ns for r in w):
                raise BadInput(f"{where}.weights: expected a [{nd}][{ns}] matrix ([dst][src])")
        if "edges" in c:
            for e in c["edges"]:
                if not isinstance(e, list) or len(e) not in (2, 3):
                    raise BadInput(f"{where}.edges: expected [src, dst] or [src, dst, weight] entries")
                _int(e[0], f"{where}.edges src", 0, ns - 1)
                _int(e[1], f"{where}.edges dst", 0, nd - 1)
    return net


def connection_pairs(c: dict, ns: int, nd: int) -> list[tuple[int, int]] | None:
    """(src, dst) pairs of a connection; None for dense (every pair)."""
    if "dense" in c:
        return None
    if "weights" in c:
        skip = bool(c.get("skip_zero", False))
        return [(s, d) for d, row in enumerate(c["weights"]) for s, w in enumerate(row) if not (skip and w == 0)]
    return [(int(e[0]), int(e[1])) for e in c["edges"]]


# -- architecture constants ----------------------------------------------------------------
def _expand(name: str) -> list[str]:
    m = re.fullmatch(r"(.*)\[(\d+)\.\.(\d+)\]", name)
    return [f"{m.group(1)}[{i}]" for i in range(int(m.group(2)), int(m.group(3)) + 1)] if m else [name]


def noc_constants(arch_path: str) -> dict:
    """NoC size and link buffer, per-tile hop energies/latencies and the sync table, from the
    YAML (the Python API does not expose them)."""
    import yaml
    with open(arch_path) as f:
        doc = yaml.safe_load(f)["architecture"]
    attrs = doc.get("attributes", {})
    tiles = []
    for entry in doc["tile"]:
        a = entry.get("attributes", {})
        hop = {k: float(a.get(f"{k}", 0.0)) for k in
               ("energy_north_hop", "latency_north_hop", "energy_east_hop", "latency_east_hop",
                "energy_south_hop", "latency_south_hop", "energy_west_hop", "latency_west_hop")}
        tiles += [hop] * len(_expand(entry["name"]))
    model = attrs.get("sync_model", "fixed")
    raw = attrs.get("latency_sync", 0.0)
    if model == "fixed" or not isinstance(raw, (dict, list)):
        table = {0: float(raw or 0.0)}
    elif isinstance(raw, list):
        table = {i: float(v) for i, v in enumerate(raw)}
    else:
        table = {int(k): float(v) for k, v in raw.items()}
    return {"width": int(attrs["width"]), "height": int(attrs["height"]),
            "link_buffer_size": attrs.get("link_buffer_size"), "tiles": tiles,
            "sync_table": {str(k): v for k, v in sorted(table.items())}}


def trimmed_arch(arch_path: str, folder: str) -> str:
    """A copy of the architecture without its `input`-model soma units, written to `folder`
    (a temporary folder; never into the repository).  The replay does not use them, and
    SANA-FE's Loihi description has 1024 per core, each with its own random generator:
    they take ~1.5 GB and ~4 s per chip.  Units that no neuron uses are never charged
    (only the units in use enter the energy sums), so the figures do not change."""
    import yaml
    with open(arch_path) as f:
        doc = yaml.safe_load(f)
    for tile in doc["architecture"]["tile"]:
        for core in tile["core"]:
            core["soma"] = [u for u in core.get("soma", [])
                            if (u.get("attributes") or {}).get("model") != "input"]
    out = os.path.join(folder, "arch.yaml")
    with open(out, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return out


def resized_arch(arch_path: str, tiles: int, folder: str) -> str:
    """A copy of a one-tile-type architecture with `tiles` tiles, its NoC `width` grown to hold
    them (SANA-FE refuses or corrupts memory on a message beyond the width), written to
    `folder` (a temporary folder; never into the repository)."""
    import yaml
    with open(arch_path) as f:
        doc = yaml.safe_load(f)
    entries = doc["architecture"]["tile"]
    m = re.fullmatch(r"(.*)\[(\d+)\.\.(\d+)\]", entries[0]["name"]) if len(entries) == 1 else None
    if m is None or tiles < 1:
        raise BadInput(f"--tiles {tiles}: needs N >= 1 and an architecture with one tile type named name[a..b]")
    entries[0]["name"] = f"{m.group(1)}[0..{tiles - 1}]"
    attrs = doc["architecture"]["attributes"]          # the mesh grows along x: a strip of tiles
    attrs["width"] = -(-tiles // int(attrs["height"]))
    out = os.path.join(folder, "arch-resized.yaml")
    with open(out, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return out


def sync_delay(table: dict, mapped_tiles: int) -> float:
    """SANA-FE's LookupTable: the value of the largest key <= mapped_tiles (else the first)."""
    keys = sorted(int(k) for k in table)
    below = [k for k in keys if k <= mapped_tiles]
    return table[str(below[-1] if below else keys[0])]


def unit_constants(arch, soma_hw: str) -> dict:
    core = arch.tiles[0].cores[0]
    units = {}
    for u in core.pipeline_hw:
        if re.search(r"\[\d+\]$", u.name) and not u.name.endswith("[0]"):
            continue                            # replicated units (loihi_inputs[0..1023]): one entry
        units[u.name] = {"model": u.model_info.name, "synapse": u.implements_synapse,
                         "dendrite": u.implements_dendrite, "soma": u.implements_soma,
                         **{k: float(v) for k, v in u.model_info.model_attributes.items()
                            if k.startswith(("energy_", "latency_"))}}
    out = {"units": units, "axon_in": {"energy_message_in": float(core.axon_in[0].metrics.energy_message_in),
                                       "latency_message_in": float(core.axon_in[0].metrics.latency_message_in)},
           "axon_out": {"energy_message_out": float(core.axon_out[0].metrics.energy_message_out),
                        "latency_message_out": float(core.axon_out[0].metrics.latency_message_out)}}
    if soma_hw not in units or units[soma_hw]["model"] != "leaky_integrate_fire":
        raise BadInput(f"soma_hw {soma_hw!r}: the replay needs a leaky_integrate_fire soma unit of the architecture")
    return out


# -- building and running ------------------------------------------------------------------
def build_network(sanafe, arch, net: dict, soma_hw: str, synapse_hw: str):
    network = sanafe.Network()
    groups = {}
    lif = {"threshold": THRESHOLD, "leak_decay": 1.0, "reset": 0.0, "reset_mode": "hard"}
    for g in net["groups"]:
        attrs = dict(lif)
        if g.get("force_update"):
            attrs["force_update"] = True
        groups[g["name"]] = network.create_neuron_group(
            g["name"], g["count"], model_attributes=attrs, default_synapse_hw_name=synapse_hw,
            log_spikes=True, soma_hw_name=soma_hw)
    ntiles = len(arch.tiles)
    for g in net["groups"]:                     # mapping order = group order, then offset
        neurons, start = groups[g["name"]].neurons, 0
        for r in g["placement"]:
            if r["tile"] >= ntiles or r["core"] >= len(arch.tiles[r["tile"]].cores):
                raise BadInput(f"group {g['name']!r}: no core {r['core']} in tile {r['tile']}")
            core = arch.tiles[r["tile"]].cores[r["core"]]
            for i in range(start, start + r["count"]):
                neurons[i].map_to_core(core)
            start += r["count"]
    counts = {g["name"]: g["count"] for g in net["groups"]}
    for c in net.get("connections", []):
        src, dst = groups[c["from"]], groups[c["to"]]
        ns, nd = counts[c["from"]], counts[c["to"]]
        hw = c.get("synapse_hw", synapse_hw)
        if hw != synapse_hw:                    # a connection takes its destination's default unit
            for n in dst.neurons:
                n.set_attributes(default_synapse_hw_name=hw)
        pairs = connection_pairs(c, ns, nd)
        if pairs is None:
            src.connect_neurons_dense(dst, {"w": [0.0] * (ns * nd)})
        elif pairs:
            src.connect_neurons_sparse(dst, {"w": [0.0] * len(pairs)}, pairs)
        if hw != synapse_hw:
            for n in dst.neurons:
                n.set_attributes(default_synapse_hw_name=synapse_hw)
    return network


def run_chip(sanafe, arch, network, net: dict, timing: str, breakdown: bool) -> dict:
    t0 = time.perf_counter()
    chip = sanafe.SpikingChip(arch)
    chip.load(network)
    load_s = time.perf_counter() - t0
    mapped = chip.mapped_neuron_groups
    T = net["T"]
    steps, fired, messages = [], [], []
    t0 = time.perf_counter()
    for t in range(T):
        for g in net["groups"]:
            neurons = mapped[g["name"]]
            for i in g["spikes"][t]:
                neurons[i].set_attributes(model_attributes={"potential": FIRE_POTENTIAL})
            spiking = set(g["spikes"][t])
            for i in (g.get("updates") or [[]] * T)[t]:
                if i not in spiking:
                    neurons[i].set_attributes(model_attributes={"potential": UPDATE_POTENTIAL})
        with contextlib.redirect_stdout(io.StringIO()):      # "Executed steps: [1/1]"
            r = chip.sim(1, timing_model=timing, processing_threads=1, scheduler_threads=0,
                         spike_trace=True, perf_trace=True, message_trace=bool(breakdown))
        steps.append({"energy": dict(r["energy"]), "sim_time": r["sim_time"], "spikes": r["spikes"],
                      "packets_sent": r["packets_sent"], "neurons_updated": r["neurons_updated"],
                      "neurons_fired": r["neurons_fired"], "hops": r["perf_trace"]["hops"][0]})
        fired.append([(a.group_name, a.neuron_offset) for a in r["spike_trace"][0]])
        if breakdown:
            messages.append([m for q in r["message_trace"] for m in q])
    return {"steps": steps, "fired": fired, "messages": messages, "load_s": load_s,
            "sim_s": time.perf_counter() - t0}


# -- the closed-form accounting (what hw_sim's loihi-sanafe profile reimplements) --------------
def expected_model(net: dict, arch, consts: dict, noc: dict, soma_hw: str, synapse_hw: str) -> dict:
    T = net["T"]
    groups = net["groups"]
    units = consts["units"]
    soma = units[soma_hw]
    dend_name = next(n for n, u in units.items() if u["dendrite"])     # the first dendrite unit
    dend = units[dend_name]
    e_in, l_in = consts["axon_in"]["energy_message_in"], consts["axon_in"]["latency_message_in"]
    e_out, l_out = consts["axon_out"]["energy_message_out"], consts["axon_out"]["latency_message_out"]
    height = noc["height"]
    # Core of every neuron: global core id = 4 * tile + core (cores per tile from the arch).
    cores_per_tile = [len(t.cores) for t in arch.tiles]
    first_core = [sum(cores_per_tile[:i]) for i in range(len(cores_per_tile))]
    core_of, tile_of_core = {}, {}
    for g in groups:
        cs = []
        for r in g["placement"]:
            cid = first_core[r["tile"]] + r["core"]
            tile_of_core[cid] = r["tile"]
            cs += [cid] * r["count"]
        core_of[g["name"]] = cs
    # Per source neuron: {dest core: [synapses, synapse energy, dendrite energy, latency]}
    # (one axon, so one message, per destination core) and the destination neurons (for
    # the next step's soma updates).  Every synaptic event runs the synapse unit, then the
    # post-synaptic neuron's dendrite unit (the first one of the core).
    counts = {g["name"]: g["count"] for g in groups}
    axons = {g["name"]: [dict() for _ in range(g["count"])] for g in groups}
    targets = {g["name"]: [[] for _ in range(g["count"])] for g in groups}
    e_dend, l_dend = dend.get("energy_update", 0.0), dend.get("latency_update", 0.0)
    for c in net.get("connections", []):
        s, d = c["from"], c["to"]
        syn = units[c.get("synapse_hw", synapse_hw)]
        e_syn, l_syn = syn["energy_process_spike"], syn["latency_process_spike"] + l_dend
        pairs = connection_pairs(c, counts[s], counts[d])
        if pairs is None:
            per_core = {}
            for cid in core_of[d]:
                per_core[cid] = per_core.get(cid, 0) + 1
            for i in range(counts[s]):
                for cid, k in per_core.items():
                    a = axons[s][i].setdefault(cid, [0, 0.0, 0.0, 0.0])
                    a[0] += k; a[1] += k * e_syn; a[2] += k * e_dend; a[3] += k * l_syn
                targets[s][i].append((d, None))
        else:
            for i, j in pairs:
                a = axons[s][i].setdefault(core_of[d][j], [0, 0.0, 0.0, 0.0])
                a[0] += 1; a[1] += e_syn; a[2] += e_dend; a[3] += l_syn
                targets[s][i].append((d, j))

    def hop(src_tile: int, dst_tile: int) -> tuple[int, float, float]:
        sx, sy = divmod(src_tile, height)
        dx, dy = divmod(dst_tile, height)
        st, dt = noc["tiles"][src_tile], noc["tiles"][dst_tile]
        xh, yh = abs(sx - dx), abs(sy - dy)
        energy = xh * dt["energy_east_hop" if sx < dx else "energy_west_hop"] \
            + yh * dt["energy_north_hop" if sy < dy else "energy_south_hop"]
        latency = xh * st["latency_east_hop" if sx < dx else "latency_west_hop"] \
            + yh * st["latency_north_hop" if sy < dy else "latency_south_hop"]
        return xh + yh, energy, latency

    mapped_tiles = len(set(tile_of_core.values()))
    sync = sync_delay(noc["sync_table"], mapped_tiles)
    n_mapped = sum(counts.values())
    received = {g["name"]: set() for g in groups}     # neurons that got a synaptic event last step
    out = {k: [] for k in ("synaptic_events", "neurons_fired", "neurons_updated", "messages", "hops",
                           "energy_synapse_j", "energy_dendrite_j", "energy_soma_j", "energy_network_j",
                           "energy_total_j", "latency_simple_s")}
    for t in range(T):
        events = msgs = hops = 0
        e_syn_t = e_dend_t = e_net = 0.0
        gen = {}            # core -> neuron-processing time (generation delays)
        proc = {}           # core -> message-processing time
        fired_n = updated_n = 0
        now_received = {g["name"]: set() for g in groups}
        e_soma = 0.0
        for g in groups:
            name = g["name"]
            spiking = set(g["spikes"][t])
            forced = set((g.get("updates") or [[]] * T)[t])
            for i in range(g["count"]):
                cid = core_of[name][i]
                f = i in spiking
                u = f or g.get("force_update", False) or i in forced or i in received[name]
                fired_n += f
                updated_n += u
                e_soma += soma["energy_access_neuron"] + u * soma["energy_update_neuron"] \
                    + f * soma["energy_spike_out"]
                gen[cid] = gen.get(cid, 0.0) + soma["latency_access_neuron"] \
                    + u * soma["latency_update_neuron"] + f * soma["latency_spike_out"]
                if not f:
                    continue
                src_tile = tile_of_core[cid]
                for dcid, (k, e_k, e_d, l_k) in axons[name][i].items():
                    h, e_h, _ = hop(src_tile, tile_of_core[dcid])
                    events += k; msgs += 1; hops += h
                    e_syn_t += e_k
                    e_dend_t += e_d
                    e_net += e_out + e_in + e_h
                    gen[cid] += l_out
                    proc[dcid] = proc.get(dcid, 0.0) + l_in + l_k
                for d, j in targets[name][i]:
                    if j is None:
                        if len(now_received[d]) < counts[d]:
                            now_received[d].update(range(counts[d]))
                    else:
                        now_received[d].add(j)
        received = now_received
        out["synaptic_events"].append(events)
        out["neurons_fired"].append(fired_n)
        out["neurons_updated"].append(updated_n)
        out["messages"].append(msgs)
        out["hops"].append(hops)
        out["energy_synapse_j"].append(e_syn_t)
        out["energy_dendrite_j"].append(e_dend_t)
        out["energy_soma_j"].append(e_soma)
        out["energy_network_j"].append(e_net)
        out["energy_total_j"].append(e_syn_t + e_dend_t + e_soma + e_net)
        out["latency_simple_s"].append(max(max(gen.values(), default=0.0), max(proc.values(), default=0.0)) + sync)
    out["mapped_neurons"] = n_mapped
    out["mapped_tiles"] = mapped_tiles
    out["sync_s"] = sync
    return out


# -- results -----------------------------------------------------------------------------
def breakdown_tables(net: dict, run: dict) -> tuple[list, list]:
    T = net["T"]
    per_core, per_group = {}, {}
    for g in net["groups"]:
        per_group[g["name"]] = {k: [0] * T for k in ("fired", "messages_out", "synaptic_events_out", "hops_out")}
    for t, step in enumerate(run["fired"]):
        for name, _ in step:
            per_group[name]["fired"][t] += 1

    def core(cid, tile, offset):
        if cid not in per_core:
            per_core[cid] = {"id": cid, "tile": tile, "core": offset,
                             **{k: [0] * T for k in ("messages_out", "messages_in", "synaptic_events_in", "hops_in")},
                             "generation_s": [0.0] * T, "processing_s": [0.0] * T}
        return per_core[cid]

    for t, msgs in enumerate(run["messages"]):
        for m in msgs:
            src = core(m["src_core_id"], m["src_tile_id"], m["src_core_offset"])
            src["generation_s"][t] += m["generation_delay"]
            if m["placeholder"]:
                continue
            dst = core(m["dest_core_id"], m["dest_tile_id"], m["dest_core_offset"])
            src["messages_out"][t] += 1
            dst["messages_in"][t] += 1
            dst["synaptic_events_in"][t] += m["spikes"]
            dst["hops_in"][t] += m["hops"]
            dst["processing_s"][t] += m["processing_delay"]
            g = per_group[m["src_neuron_group_id"]]
            g["messages_out"][t] += 1
            g["synaptic_events_out"][t] += m["spikes"]
            g["hops_out"][t] += m["hops"]
    neurons = {}
    for g in net["groups"]:
        for r in g["placement"]:
            neurons[(r["tile"], r["core"])] = neurons.get((r["tile"], r["core"]), 0) + r["count"]
    rows = []
    for cid in sorted(per_core):
        row = per_core[cid]
        row["neurons"] = neurons.get((row["tile"], row["core"]), 0)
        rows.append(row)
    return rows, [{"name": n, **v} for n, v in per_group.items()]


def write_messages(path: str, steps: list) -> None:
    keys = ("generation_delay", "processing_delay", "network_delay", "blocking_delay", "send_timestamp",
            "received_timestamp", "processed_timestamp")
    out = [[[m["src_core_id"], -1 if m["placeholder"] else m["dest_core_id"], *(m[k] for k in keys), m["hops"]]
            for m in msgs] for msgs in steps]
    with open(path, "w") as f:
        json.dump({"fields": MESSAGE_FIELDS, "steps": out}, f)


def replay_check(net: dict, fired: list) -> dict:
    mismatches = []
    for t in range(net["T"]):
        got = {}
        for name, i in fired[t]:
            got.setdefault(name, set()).add(i)
        for g in net["groups"]:
            want = set(g["spikes"][t])
            have = got.get(g["name"], set())
            if want != have and len(mismatches) < 10:
                mismatches.append({"group": g["name"], "step": t + 1, "expected": sorted(want), "got": sorted(have)})
    return {"ok": not mismatches, "mismatches": mismatches}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b)) if max(abs(a), abs(b)) > 0 else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("net", help="the network description (ecmt.sanafe.net JSON)")
    ap.add_argument("-o", "--out", required=True, help="where to write the result JSON")
    ap.add_argument("--arch", help="architecture YAML (default: the Loihi description in the sanafe wheel)")
    ap.add_argument("--tiles", type=int, metavar="N",
                    help="the architecture with N tiles of its tile type instead of its own count: with the "
                         "wheel's Loihi description and N = 1024, SANA-FE's own arch/loihi_large.yaml (32 chips "
                         "in one strip of tiles, x = tile // height), which the wheel does not ship")
    ap.add_argument("--timing", default="detailed,simple",
                    help="SANA-FE timing models to run, comma-separated (detailed, simple, cycle); "
                         "energies come from the first")
    ap.add_argument("--full-arch", action="store_true",
                    help="use the architecture file as it is, with its input-model soma units "
                         "(~1.5 GB and ~4 s more per chip; the figures are the same)")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="skip SANA-FE's message trace (per-core and per-group tables); faster on large runs")
    ap.add_argument("--messages", metavar="JSON",
                    help="also write the first timing model's schedule, message by message: per step, in "
                         "SANA-FE's trace order (a core's sending order is its messages by sent_s), "
                         + ", ".join(MESSAGE_FIELDS) + " (dest_core -1: the core's time after its last message)")
    args = ap.parse_args(argv)
    try:
        net = load_description(args.net)
        timings = [m.strip() for m in args.timing.split(",") if m.strip()]
        for m in timings:
            if m not in TIMING_MODELS:
                raise BadInput(f"--timing: unknown model {m!r} (one of {', '.join(TIMING_MODELS)})")
        if not timings:
            raise BadInput("--timing: no model given")
        if args.messages and args.no_breakdown:
            raise BadInput("--messages needs SANA-FE's message trace: drop --no-breakdown")
    except BadInput as err:
        print(f"sanafe_run: {err}", file=sys.stderr)
        return 2

    import sanafe
    from importlib.metadata import version
    from importlib.resources import files
    arch_path = args.arch or str(files("sanafe") / "examples" / "loihi.yaml")
    if not os.path.isfile(arch_path):
        print(f"sanafe_run: --arch {arch_path}: no such file", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="sanafe_run.")
    try:
        if args.tiles is not None:
            arch_path = resized_arch(arch_path, args.tiles, scratch)
        return _run(args, net, timings, sanafe, arch_path, scratch, t_start)
    except BadInput as err:
        print(f"sanafe_run: {err}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(args, net, timings, sanafe, arch_path, scratch, t_start) -> int:
    from importlib.metadata import version
    soma_hw = net.get("soma_hw", "loihi_lif")
    synapse_hw = net.get("synapse_hw", "loihi_dense_synapse")
    try:
        sim_arch = arch_path if args.full_arch else trimmed_arch(arch_path, scratch)
        arch = sanafe.load_arch(sim_arch)
        consts = unit_constants(arch, soma_hw)
        for c in net.get("connections", []):
            hw = c.get("synapse_hw", synapse_hw)
            if not consts["units"].get(hw, {}).get("synapse"):
                raise BadInput(f"synapse_hw {hw!r}: not a synapse unit of {arch_path}")
        noc = noc_constants(arch_path)
        network = build_network(sanafe, arch, net, soma_hw, synapse_hw)
    except BadInput as err:
        print(f"sanafe_run: {err}", file=sys.stderr)
        return 2
    except Exception as err:                                  # SANA-FE's own errors
        print(f"sanafe_run: sanafe {version('sanafe')}: fails to build: {type(err).__name__}: {err}",
              file=sys.stderr)
        return 3
    build_s = time.perf_counter() - t_start
    runs = {}
    try:
        for i, m in enumerate(timings):
            runs[m] = run_chip(sanafe, arch, network, net, m, breakdown=(i == 0 and not args.no_breakdown))
    except Exception as err:
        print(f"sanafe_run: sanafe {version('sanafe')}: fails to run: {type(err).__name__}: {err}", file=sys.stderr)
        return 3

    T = net["T"]
    first = runs[timings[0]]
    steps = first["steps"]
    per_step = {f"energy_{k}_j": [s["energy"][k] for s in steps] for k in ENERGY_KEYS}
    per_step.update({
        "synaptic_events": [s["spikes"] for s in steps],
        "neurons_fired": [s["neurons_fired"] for s in steps],
        "neurons_updated": [s["neurons_updated"] for s in steps],
        "messages": [s["packets_sent"] for s in steps],
        "hops": [s["hops"] for s in steps],
        "latency_s": {m: [s["sim_time"] for s in runs[m]["steps"]] for m in timings},
    })
    expected = expected_model(net, arch, consts, noc, soma_hw, synapse_hw)
    diffs = {}
    for key in ("synaptic_events", "neurons_fired", "neurons_updated", "messages", "hops"):
        diffs[key] = max(_rel(a, b) for a, b in zip(per_step[key], expected[key]))
    for k in ENERGY_KEYS:
        diffs[f"energy_{k}_j"] = max(_rel(a, b) for a, b in zip(per_step[f"energy_{k}_j"], expected[f"energy_{k}_j"]))
    if "simple" in per_step["latency_s"]:
        diffs["latency_simple_s"] = max(_rel(a, b) for a, b in
                                        zip(per_step["latency_s"]["simple"], expected["latency_simple_s"]))
    expected["max_rel_diff"] = diffs
    replay = replay_check(net, first["fired"])
    result = {
        "schema": SCHEMA_OUT, "version": VERSION, "sanafe_version": version("sanafe"), "arch": arch_path,
        "arch_trimmed": not args.full_arch,
        "T": T, "timing_models": timings,
        "energy_j": {k: sum(per_step[f"energy_{k}_j"]) for k in ENERGY_KEYS},
        "latency_s": {m: sum(v) for m, v in per_step["latency_s"].items()},
        "per_step": per_step,
        "mapped_tiles": expected["mapped_tiles"],
        "mapped_cores": len({(r["tile"], r["core"]) for g in net["groups"] for r in g["placement"]}),
        "mapped_neurons": expected["mapped_neurons"],
        "sync_s": expected["sync_s"],
        "constants": {**consts, "noc": noc},
        "expected": expected,
        "replay": replay,
        "run": {"build_s": build_s, "load_s": {m: r["load_s"] for m, r in runs.items()},
                "sim_s": {m: r["sim_s"] for m, r in runs.items()},
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
    }
    if not args.no_breakdown:
        result["per_core"], result["per_group"] = breakdown_tables(net, first)
        if args.messages:
            write_messages(args.messages, first["messages"])
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, args.out)
    if not replay["ok"]:
        print(f"sanafe_run: replayed spikes differ from the rasters: {replay['mismatches'][0]}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
