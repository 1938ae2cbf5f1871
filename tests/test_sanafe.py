"""hw_sim's neuromorphic engine (the loihi profile, SANA-FE's Loihi): mapping limits, messages
and hops against brute force, barriers per host phase, and the cross-check against SANA-FE
itself (run in its own environment, tools/sanafe_env.sh, as a subprocess)."""
import dataclasses
import os
import re
import sys

import pytest
import torch

import hw_sim
from ecmt import SpikingGraph, ir
from hw_sim import load_profile
from hw_sim.engine import mesh
from hw_sim import sanafe_export as sx


def graph_of(*nodes):
    return SpikingGraph([ir.Input("input", (), shape=nodes[0]), *nodes[1:]])


def variant(tmp_path, replace: dict, name="variant", **head):
    """loihi with some constants / head fields changed, as a user profile file."""
    text = (hw_sim.profile.PROFILE_DIR / "loihi.toml").read_text()
    text = text.replace('name = "loihi"', f'name = "{name}"')
    for key, value in head.items():
        old = {"mt_form": 'mt_form = "channels"', "weight_sharing": "weight_sharing = false"}[key]
        text = text.replace(old, f'{key} = {value}')
    for key, value in replace.items():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(f"{key} = {{ value = "):
                rest = re.sub(r' range = \[[^]]*\], range_source = "[^"]*",', "", line.split(",", 1)[1])
                lines[i] = f"{key} = {{ value = {value},{rest}"
        text = "\n".join(lines) + "\n"
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return sx.sanafe_view(load_profile(path))


def mlp(seed=0, sizes=(12, 10, 6, 4), levels=3):
    g = torch.Generator().manual_seed(seed)
    nodes, prev = [], "input"
    for i in range(len(sizes) - 1):
        nodes.append(ir.Linear(f"fc{i}", (prev,), weight=torch.randn(sizes[i + 1], sizes[i], generator=g),
                               bias=0.1 * torch.randn(sizes[i + 1], generator=g)))
        prev = f"fc{i}"
        if i < len(sizes) - 2:
            nodes.append(ir.MTNeuron(f"mt{i}", (prev,), th_pos=torch.tensor(0.6), th_neg=torch.tensor(0.5),
                                     levels=levels))
            prev = f"mt{i}"
    return graph_of((sizes[0],), *nodes, ir.Output("output", (prev,)))


# -- mapping -----------------------------------------------------------------------------
def vit_b_fc2():
    return graph_of((197, 3072),
                    ir.MTNeuron("act", ("input",), th_pos=torch.tensor(0.5), th_neg=torch.tensor(0.5), levels=8),
                    ir.Linear("fc2", ("act",), weight=torch.zeros(768, 3072)),
                    ir.MTNeuron("out", ("fc2",), th_pos=torch.tensor(0.5), th_neg=torch.tensor(0.5), levels=8),
                    ir.Output("output", ("out",)))


def test_vit_b_fc2_is_refused_in_channel_form_naming_input_axons():
    graph = vit_b_fc2()
    profile = load_profile("loihi")
    onchip = mesh.extract(graph, profile)
    with pytest.raises(mesh.MappingError) as err:
        mesh.place(onchip, profile)
    # one output element reads 3072 features x 16 level channels = 49152 axons > 4096
    assert "'out'" in str(err.value) and "fc2" in str(err.value) and "input axons" in str(err.value)
    assert "49152" in str(err.value)


def test_vit_b_fc2_splits_in_element_form_limited_by_synapse_memory(tmp_path):
    graph = vit_b_fc2()
    profile = variant(tmp_path, {}, mt_form='"element"')
    onchip = mesh.extract(graph, profile)
    placement = mesh.place(onchip, profile)
    layers = {l.name: l for l in placement.layers}
    # by hand: 1 neuron per element; one output element stores 3072 synapses x 8 bits =
    # 24576 bits, so 1 Mbit holds 42; a core holds outputs of one token only (two tokens
    # would need 2 x 3072 input axons > 4096): 768 = 18 x 42 + 12 -> 19 cores per token.
    assert layers["out"].cores == 197 * 19
    assert layers["out"].limiting_resource == "synapse memory"
    # the input layer: each element sends to the 19 cores of its token, so 1024 per core
    # would need 19456 output axons > 4096: floor(4096 / 19) = 215 elements per core
    assert layers["act"].cores == -(-197 * 3072 // 215) and layers["act"].limiting_resource == "output axons"
    assert placement.chips == -(-(197 * 19 + 2815) // 128)


def test_weight_sharing_is_per_profile(tmp_path):
    graph = vit_b_fc2()
    shared = variant(tmp_path, {}, name="shared", mt_form='"element"', weight_sharing="true")
    placement = mesh.place(mesh.extract(graph, shared), shared)
    out = {l.name: l for l in placement.layers}["out"]
    # sharing changes nothing within one token (every output has its own weight row);
    # the limit per core is the same 42 rows of 3072 weights
    assert out.cores == 197 * 19 and out.limiting_resource == "synapse memory"


# -- messages and hops against brute force -------------------------------------------------
def brute_force(onchip, placement, rasters, profile):
    """Per step: synaptic events, messages, hops, straight from the synapse list."""
    x, y = mesh.core_xy(profile, placement.cores)
    T = next(iter(rasters.values())).fired.shape[0]
    out = {"synaptic_events": [0] * T, "messages": [0] * T, "hops": [0] * T}
    for t in range(T):
        for name, g in onchip.groups.items():
            fired = [e for e in range(g.elements) if int(rasters[name].fired[t, 0, e]) != 0]
            for e in fired:
                cores, events = set(), 0
                for c in onchip.outgoing(name):
                    for i, o in c.pairs().tolist():
                        if int(c.src_index[i]) == e and int(c.dst_index[o]) >= 0:
                            events += 1
                            cores.add(int(placement.core_of[c.dst][int(c.dst_index[o])]))
                src = int(placement.core_of[name][e])
                out["synaptic_events"][t] += events
                out["messages"][t] += len(cores)
                out["hops"][t] += sum(abs(int(x[k] - x[src])) + abs(int(y[k] - y[src])) for k in cores)
    return out


@pytest.mark.parametrize("form", ["channels", "element"])
def test_messages_and_hops_equal_brute_force_on_a_two_core_network(tmp_path, form):
    # 2 elements per core and 1 core per tile: the 3-element layer splits over two cores
    # in two tiles, so one spike sends up to two messages over 1 and 2 hops.
    profile = variant(tmp_path, {"neurons_per_core": 12 if form == "channels" else 2, "cores_per_tile": 1},
                      mt_form=f'"{form}"')
    graph = mlp(sizes=(5, 4, 3, 2), levels=3)
    onchip = mesh.extract(graph, profile)
    placement = mesh.place(onchip, profile)
    assert len(torch.unique(placement.core_of["mt1"])) == 2
    x = torch.randn(1, 5, generator=torch.Generator().manual_seed(3)) * 2
    T = 6
    rasters = mesh.record(graph, x, T, onchip)
    acc = mesh.Accounting(onchip, placement, profile, T)
    acc.add(rasters)
    got = acc.result()["per_step"]
    want = brute_force(onchip, placement, rasters, profile)
    assert sum(want["messages"]) > 0 and sum(want["hops"]) > sum(want["messages"])
    for key in want:
        assert got[key] == [float(v) for v in want[key]], key


# -- the detailed step schedule --------------------------------------------------------------
def hand_built(sizes: dict, cores: dict, links: list, fired: list):
    """An on-chip part of single-neuron elements: groups of `sizes` placed whole on `cores`
    (global ids, 4 per tile), each link (src, src elements, dst) a linear layer from those
    source elements to every element of dst; fired[t] = {group: elements firing at t + 1}."""
    groups = {n: mesh.Group(n, "mt", (k,), 1) for n, k in sizes.items()}
    conns = [mesh.Connection(src, dst, f"fc{i}", "linear", torch.tensor(elems), torch.arange(sizes[dst]),
                             (len(elems),), (sizes[dst],)) for i, (src, elems, dst) in enumerate(links)]
    onchip = mesh.OnChip(groups, conns, 1)
    used = max(cores.values()) + 1
    placement = mesh.Placement({n: torch.full((k,), cores[n]) for n, k in sizes.items()}, used, 1,
                               len({c // 4 for c in cores.values()}), [], {}, [])
    T = len(fired)
    rasters = {}
    for n, k in sizes.items():
        mask = torch.zeros(T, 1, k, dtype=torch.int64)
        for t, step in enumerate(fired):
            mask[t, 0, step.get(n, [])] = 1
        rasters[n] = mesh.Raster(mask, torch.zeros(T, 1, k, dtype=torch.bool))
    return onchip, placement, rasters


def test_detailed_step_latency_by_hand(tmp_path):
    """Two tiles: a (3 neurons, core 0 = tile 0 at (0, 0)) sends a0, a1 to b (17 neurons,
    core 20 = tile 5 at (1, 1): one x- and one y-hop) and a2 to c (13 neurons, core 1 in
    tile 0: no hop).  Step 1: a0, a1, a2 fire.  Step 2: nothing fires; b and c update (they
    received synaptic events at step 1)."""
    profile = variant(tmp_path, {}, mt_form='"element"')
    onchip, placement, rasters = hand_built({"a": 3, "b": 17, "c": 13}, {"a": 0, "b": 20, "c": 1},
                                            [("a", [0, 1], "b"), ("a", [2], "c")],
                                            [{"a": [0, 1, 2]}, {}])
    acc = mesh.Accounting(onchip, placement, profile, 2)
    acc.add(rasters)
    got = acc.result()["per_step"]
    k = lambda name: profile[f"mesh.{name}"]
    idle, upd, out = k("t_neuron_access"), k("t_neuron_access") + k("t_neuron_update"), k("t_message_out")
    fire = upd + k("t_spike_out")
    proc_b, proc_c = k("t_message_in") + 17 * k("t_synaptic_event"), k("t_message_in") + 13 * k("t_synaptic_event")
    hop = k("t_hop_x") + k("t_hop_y")
    sync = k("barrier_2")                                      # 2 tiles in use
    # step 1: core 0 sends m1 (a0 -> core 20), m2 (a1 -> core 20), m3 (a2 -> core 1), each
    # after one neuron's firing time and a message-out time; cores 1 and 20 only access
    # their neurons (13 and 17 x idle, sent as slots with no message, ending before m3).
    s1, s2, s3 = fire + out, 2 * (fire + out), 3 * (fire + out)
    done1 = s1 + hop + proc_b                                  # m1 reached an idle core 20
    assert s1 + hop < s2                                       # m1 has left the network when m2 is sent
    done2 = max(done1, s2 + hop) + proc_b                      # m2 waits for core 20 until done1
    taken2 = max(done1, s2 + hop)
    assert taken2 > s3                                         # m2 is still in the network when m3 is sent
    # m3's route (0 hops) has one router input: core 0's port, which m2 (2 hops: 3 inputs)
    # loads with 1 / (2 + 2); the mean processing time in flight is m2's: the trip takes
    # load x mean / (0 + 1) instead of 0 (load 1/4 < 1 x link_buffer: not held back)
    trip3 = (1 / 4) * proc_b / 1
    done3 = s3 + trip3 + proc_c
    step1 = max(done2, done3, 17 * idle, 13 * idle) + sync
    assert done3 > done2                                       # the network load decides step 1
    step2 = max(3 * idle, 17 * upd, 13 * upd) + sync
    assert got["onchip_latency_s"] == pytest.approx([step1, step2], rel=1e-12)
    assert got["chip_latency_s"] == pytest.approx([step1, step2], rel=1e-12)    # one phase
    # the simple model: max over cores of serial sending work and serial receiving work
    simple1 = max(3 * (fire + out), 2 * proc_b, proc_c) + sync
    assert got["onchip_latency_simple_s"] == pytest.approx([simple1, step2], rel=1e-12)


def test_congested_schedule_against_sanafe(tmp_path):
    """200 neurons of one core fire at once, the first 190 into a slower core of the same
    tile: the messages waiting there load the sending core's router input past its link
    buffer, so the last 10 messages, to an idle core, are held back and end the step late;
    SANA-FE's detailed model agrees."""
    sanafe_or_skip()
    profile = variant(tmp_path, {}, mt_form='"element"')
    onchip, placement, rasters = hand_built({"a": 200, "b": 30, "c": 200}, {"a": 0, "b": 1, "c": 2},
                                            [("a", list(range(190)), "b"), ("a", list(range(190, 200)), "c")],
                                            [{"a": list(range(200))}])
    acc = mesh.Accounting(onchip, placement, profile, 1)
    acc.add(rasters)
    got = acc.result()["per_step"]["onchip_latency_s"][0]
    free = mesh.Accounting(onchip, placement, mesh.without_network_load(profile), 1)
    free.add(rasters)
    assert got > 1.05 * free.result()["per_step"]["onchip_latency_s"][0]
    sf = sx.run(sx.describe(onchip, placement, rasters, profile))
    assert got == pytest.approx(sf["per_step"]["latency_s"]["detailed"][0], rel=1e-9)


def test_one_barrier_per_host_phase(tmp_path):
    """Two chip segments in a step (chip -> host ReLU ECM -> chip): two barriers."""
    profile = load_profile("loihi")
    g = torch.Generator().manual_seed(1)
    graph = graph_of((6,),
                     ir.MTNeuron("a", ("input",), th_pos=torch.tensor(0.5), th_neg=None, levels=2),
                     ir.Linear("fc", ("a",), weight=torch.randn(5, 6, generator=g)),
                     ir.MTNeuron("b", ("fc",), th_pos=torch.tensor(0.5), th_neg=None, levels=2),
                     ir.ReLUECM("relu", ("b",)),
                     ir.MTNeuron("c", ("relu",), th_pos=torch.tensor(0.5), th_neg=None, levels=2),
                     ir.Linear("head", ("c",), weight=torch.randn(3, 5, generator=g)),
                     ir.Output("output", ("head",)))
    onchip = mesh.extract(graph, profile)
    assert onchip.phases == 2
    assert [onchip.groups[n].phase for n in ("a", "b", "c", "head")] == [1, 1, 2, 2]
    placement = mesh.place(onchip, profile)
    T = 2
    acc = mesh.Accounting(onchip, placement, profile, T)
    acc.add(mesh.record(graph, torch.zeros(1, 6), T, onchip))     # nothing fires, nothing updates
    res = acc.result()
    assert res["per_step"]["neurons_updated"] == [0.0, 0.0]
    access = profile["mesh.t_neuron_access"]
    per_core = {}
    for name, grp in onchip.groups.items():
        for core in placement.core_of[name].tolist():
            per_core[core] = per_core.get(core, 0) + grp.channels
    phase_of = {c: onchip.groups[n].phase for n in onchip.groups for c in placement.core_of[n].tolist()}
    expected = sum(max(v for c, v in per_core.items() if phase_of[c] == p) * access for p in (1, 2)) \
        + 2 * res["barrier_s"]
    assert res["per_step"]["chip_latency_s"] == pytest.approx([expected] * T, rel=1e-12)
    # SANA-FE's view (one step, one barrier) of the same cores
    one = max(per_core.values()) * access + res["barrier_s"]
    assert res["per_step"]["onchip_latency_s"] == pytest.approx([one] * T, rel=1e-12)


# -- the cross-check against SANA-FE -------------------------------------------------------
def sanafe_or_skip():
    python = sx.sanafe_python()
    if python is None:
        if os.environ.get("CI") == "true":
            pytest.fail("SANA-FE's environment is missing under CI: `make test` runs tools/sanafe_env.sh first")
        pytest.skip("SANA-FE env not built (tools/sanafe_env.sh)")


def compare(hw: dict, sf: dict) -> dict:
    """Relative differences of hw_sim's mesh figures (one sample) against SANA-FE's."""
    ps = hw["mesh"]["per_step"]
    rel = lambda a, b: abs(a - b) / abs(b) if b else abs(a)
    cats = {"synapse": ("synapse_j", "synapse"), "neuron": ("neuron_j", "soma"), "network": ("network_j", "network")}
    out = {c: rel(sum(ps[a]), sf["energy_j"][b]) for c, (a, b) in cats.items()}
    out["total"] = rel(sum(sum(ps[a]) for a, _ in cats.values()), sf["energy_j"]["total"])
    # SANA-FE's view is one schedule of every core and one barrier: the report's chip latency
    # where the network is one chip phase (the report leaves the single-step view out)
    assert hw["mesh"]["phases"] == 1
    out["latency_per_step"] = max(rel(a, b) for a, b in zip(ps["chip_latency_s"], sf["per_step"]["latency_s"]["detailed"]))
    out["latency_simple"] = max(rel(a, b) for a, b in zip(ps["onchip_latency_simple_s"],
                                                          sf["per_step"]["latency_s"]["simple"]))
    for key in ("synaptic_events", "neurons_fired", "neurons_updated", "messages", "hops"):
        out[key] = max(rel(a, b) for a, b in zip(ps[key], sf["per_step"][key]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("form", ["channels", "element"])
def test_mlp_against_sanafe(tmp_path, form):
    sanafe_or_skip()
    profile = variant(tmp_path, {}, name=f"ls-{form}", mt_form=f'"{form}"')
    graph = mlp(seed=2, sizes=(40, 96, 64, 10), levels=4)
    x = torch.randn(1, 40, generator=torch.Generator().manual_seed(5)) * 2
    T = 5
    report = hw_sim.simulate(graph, x, T, str(profile.path), progress=False)
    hw = report.result(profile.name)
    assert set(hw["energy_by_category_j"]) >= {"synapse", "neuron", "network", "host", "static"}
    assert all("cores" in m and "limiting_resource" in m for m in hw["mapping"]) and hw["chips"] == 1
    onchip = mesh.extract(graph, profile)
    placement = mesh.place(onchip, profile)
    description = sx.describe(onchip, placement, mesh.record(graph, x, T, onchip), profile)
    sf = sx.run(description)
    assert sf["replay"]["ok"]
    diff = compare(hw, sf)
    assert diff["total"] <= 0.05, diff
    for c in ("synapse", "neuron", "network"):
        assert diff[c] <= 0.10, (c, diff)
    assert diff["latency_per_step"] <= 0.25, diff
    # the accounting is SANA-FE's: counts agree exactly, and so do both its timing models
    for key in ("synaptic_events", "neurons_fired", "neurons_updated", "messages", "hops", "latency_simple",
                "latency_per_step"):
        assert diff[key] <= 1e-9, (key, diff)


def test_every_sample_is_scheduled_whatever_the_batches(tmp_path, monkeypatch):
    """The detailed schedule runs on every sample: the same per-sample chip latencies and
    per-step figures from one batch of 3 as from batches of 2 and 1, and as from one batch
    that add() takes a sample at a time (CHUNK_VALUES); retime keeps the spikes of the first
    `retime_samples` only."""
    profile = variant(tmp_path, {"neurons_per_core": 2, "cores_per_tile": 1}, mt_form='"element"')
    graph = mlp(sizes=(5, 4, 3, 2), levels=3)
    onchip = mesh.extract(graph, profile)
    placement = mesh.place(onchip, profile)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(3)) * 2
    T = 4
    rasters = mesh.record(graph, x, T, onchip)
    split = mesh.Accounting(onchip, placement, profile, T, retime_samples=2)
    split.add({n: dataclasses.replace(r, fired=r.fired[:, :2], extra=r.extra[:, :2]) for n, r in rasters.items()})
    split.add({n: dataclasses.replace(r, fired=r.fired[:, 2:], extra=r.extra[:, 2:]) for n, r in rasters.items()})
    every = mesh.Accounting(onchip, placement, profile, T)
    every.add(rasters)
    monkeypatch.setattr(sys.modules["hw_sim.engine.mesh.account"], "CHUNK_VALUES", 1)
    pieces = mesh.Accounting(onchip, placement, profile, T, retime_samples=2)
    pieces.add(rasters)
    got, full = split.result(), every.result()
    assert pieces.result() == got
    assert torch.equal(pieces.sample_energy_per_t(), split.sample_energy_per_t())
    assert (got["samples"], got["scheduled_samples"], full["scheduled_samples"]) == (3, 3, 3)
    assert torch.equal(split.sample_chip_latency(), every.sample_chip_latency())
    assert every.sample_chip_latency().shape == (3, T)
    assert full["per_step"]["chip_latency_s"] == pytest.approx(every.sample_chip_latency().mean(0).tolist(),
                                                               rel=1e-12)
    for key in ("onchip_latency_s", "chip_latency_s", "synapse_j", "neuron_j", "network_j", "messages",
                "onchip_latency_simple_s"):
        assert got["per_step"][key] == pytest.approx(full["per_step"][key], rel=1e-12), key
    assert torch.equal(split.retime(profile), every.sample_chip_latency()[:2])     # the first 2 kept
    assert torch.equal(every.retime(profile), every.sample_chip_latency())
    with pytest.raises(ValueError, match="retime_samples must be >= 0 or None, got -1"):
        mesh.Accounting(onchip, placement, profile, T, retime_samples=-1)


def test_demo_vit_maps_to_the_core_count_derived_by_hand(fashion_mnist):
    """The whole demo ViT (4 blocks, 50 tokens x 64 features, 4 heads, MLP 128, MT
    neurons of 8 signed levels = 16 binary channels) on loihi-sanafe, derived by hand
    per block from the per-core limits (1024 neurons, 1 Mbit of 8-bit synapses, 4096
    input and 4096 output axons, no weight sharing):

    * norm1 MT (3200 elements): each element feeds the 64 q/k/v outputs of its
      token, which sit on 4 cores (one per head) in each of q, k and v: 12 destination
      cores, so 12 output axons per channel; 4096 // (12 x 16) = 21 elements per core,
      ceil(3200 / 21) = 153 cores (output axons);
    * q, k, v MT (3200 each): 1024 // 16 = 64 elements per core = 4 tokens of one head,
      whose inputs are 4 x 64 x 16 = 4096 input axons (exactly the limit) and
      64 x 64 x 16 x 8 bit = 0.5 Mbit; 3200 / 64 = 50 cores each (neurons);
    * softmax MT (4 x 50 x 50 = 10000): ceil(10000 x 16 / 1024) = 157 (neurons);
    * attention-output, norm2 MT (3200 each): 50 cores each; GELU MT (6400): 100;
    * proj and fc1 accumulators (fan-in 64 x 16 channels x 8 bit = 8192 bit each):
      2^20 // 8192 = 128 per core: 3200 / 128 = 25 and 6400 / 128 = 50 (synapse memory);
      fc2 (fan-in 128): 64 per core, 3200 / 64 = 50 (synapse memory).

    Per block 153 + 3 x 50 + 157 + 50 + 50 + 100 + 25 + 50 + 50 = 785 cores; four
    blocks 3140 cores, ceil(3140 / 128) = 25 chips."""
    from ecmt import convert
    from ecmt.zoo import load_model
    graph = convert(load_model("demo"), fashion_mnist[0].images[:16], progress=False).graph
    placement = mesh.place(mesh.extract(graph, load_profile("loihi")), load_profile("loihi"))
    expected = {"norm1.layernorm_ecm.mt": (153, "output axons"), "attn.select0.mt": (50, "neurons"),
                "attn.select1.mt": (50, "neurons"), "attn.select2.mt": (50, "neurons"),
                "attn.softmax.mt": (157, "neurons"), "attn.reshape_2.mt": (50, "neurons"),
                "norm2.layernorm_ecm.mt": (50, "neurons"), "mlp.act.mt": (100, "neurons"),
                "attn.proj": (25, "synapse memory"), "mlp.fc1": (50, "synapse memory"),
                "mlp.fc2": (50, "synapse memory")}
    got = {l.name: (l.cores, l.limiting_resource) for l in placement.layers}
    assert got == {f"blocks.{b}.{k}": v for b in range(4) for k, v in expected.items()}
    assert (placement.cores, placement.chips) == (3140, 25)


def test_mesh_profiles_get_an_interval_from_each_samples_energy(tmp_path):
    """The per-sample on-chip energies sum to the accounting's total, and simulate()
    turns them into a 95% interval around the entry's energy."""
    profile = variant(tmp_path, {"neurons_per_core": 2, "cores_per_tile": 1}, mt_form='"element"')
    graph = mlp(sizes=(5, 4, 3, 2), levels=3)
    onchip = mesh.extract(graph, profile)
    placement = mesh.place(onchip, profile)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(4)) * 2
    acc = mesh.Accounting(onchip, placement, profile, 4)
    acc.add(mesh.record(graph, x, 4, onchip))
    per = acc.result()["per_step"]
    onchip_j = sum(sum(per[f]) for f in ("synapse_j", "neuron_j", "network_j", "host_transfer_j"))
    energies = acc.sample_energy()
    assert len(energies) == 6 and energies.std() > 0
    assert float(energies.mean()) == pytest.approx(onchip_j, rel=1e-12)
    entry = hw_sim.simulate(graph, x, 4, str(profile.path), progress=False).result(profile.name)
    lo, hi = entry["interval95"]["energy_j"]
    assert lo < entry["total_j"] < hi


def test_a_network_over_three_chips_against_sanafe_loihi_large(tmp_path):
    """Groups on tiles 0, 31, 40 and 80 of a row of 32-tile chips (chips 0, 0, 1, 2): messages
    cross two chip boundaries, in hw_sim's view of SANA-FE's 1,024-tile Loihi
    (sanafe_view) and in SANA-FE itself (tools/sanafe_run.py --tiles 1024): every count and
    energy agree to rounding, and so does the latency per step less its barrier.  The
    barriers differ by design here: SANA-FE's is its table's at the 4 tiles in use, hw_sim's
    grows with the chips (Frady et al. 2020); a placement that fills its chips uses 29+
    tiles, where the two are the same (docs/benchmarks/sanafe.md)."""
    sanafe_or_skip()
    profile = variant(tmp_path, {}, mt_form='"element"')
    onchip, placement, rasters = hand_built(
        {"a": 12, "b": 9, "c": 7, "d": 5}, {"a": 0, "b": 124, "c": 160, "d": 320},
        [("a", list(range(8)), "b"), ("a", list(range(4, 12)), "c"), ("b", list(range(9)), "d"),
         ("c", [0, 2, 4], "d")],
        [{"a": list(range(12))}, {"a": [1, 5, 9], "b": [0, 3, 8], "c": [1, 2]}, {"b": [2], "c": [0, 6], "d": [4]}])
    placement = dataclasses.replace(placement, chips=3)
    assert mesh.core_chip(profile, placement.cores)[[0, 124, 160, 320]].tolist() == [0, 0, 1, 2]
    acc = mesh.Accounting(onchip, placement, profile, 3)
    acc.add(rasters)
    hw = {"mesh": acc.result()}
    sf = sx.run(sx.describe(onchip, placement, rasters, profile, tiles=1024), tiles=1024)
    assert sf["replay"]["ok"]
    diff = compare(hw, sf)
    assert sum(hw["mesh"]["per_step"]["hops_x"]) > 80                 # messages went past chip 0
    for key in ("total", "synapse", "neuron", "network", "synaptic_events", "neurons_fired", "neurons_updated",
                "messages", "hops"):
        assert diff[key] <= 1e-9, (key, diff)
    ps, table = hw["mesh"]["per_step"], mesh.barrier(profile, placement.tiles_in_use, 1)
    assert acc.barrier > table
    for ours, theirs in (("onchip_latency_s", "detailed"), ("onchip_latency_simple_s", "simple")):
        assert [v - acc.barrier for v in ps[ours]] == pytest.approx(
            [v - table for v in sf["per_step"]["latency_s"][theirs]], rel=1e-9), ours
