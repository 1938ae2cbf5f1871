"""hw_sim's mesh model (loihi-sanafe): mapping limits, messages and hops against brute
force, barriers per host phase, and the cross-check against SANA-FE itself (run in its
own environment, tools/sanafe_env.sh, as a subprocess)."""
import dataclasses
import os

import pytest
import torch

import hw_sim
from ecmt import SpikingGraph, ir
from hw_sim import load_profile, mesh
from hw_sim import sanafe_export as sx


def graph_of(*nodes):
    return SpikingGraph([ir.Input("input", (), shape=nodes[0]), *nodes[1:]])


def variant(tmp_path, replace: dict, name="variant", **head):
    """loihi-sanafe with some constants / head fields changed, as a user profile file."""
    text = (hw_sim.profile.PROFILE_DIR / "loihi-sanafe.toml").read_text()
    text = text.replace('name = "loihi-sanafe"', f'name = "{name}"')
    for key, value in head.items():
        old = {"mt_form": 'mt_form = "channels"', "weight_sharing": "weight_sharing = false"}[key]
        text = text.replace(old, f'{key} = {value}')
    for key, value in replace.items():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(f"{key} = {{ value = "):
                rest = line.split(",", 1)[1]
                lines[i] = f"{key} = {{ value = {value},{rest}"
        text = "\n".join(lines) + "\n"
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return load_profile(path)


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
    profile = load_profile("loihi-sanafe")
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
    T = next(iter(rasters.values())).chan.shape[0]
    out = {"synaptic_events": [0] * T, "messages": [0] * T, "hops": [0] * T}
    for t in range(T):
        for name, g in onchip.groups.items():
            fired = [e for e in range(g.elements) if int(rasters[name].chan[t, 0, e]) >= 0]
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


def test_one_barrier_per_host_phase(tmp_path):
    """Two chip segments in a step (chip -> host ReLU ECM -> chip): two barriers."""
    profile = load_profile("loihi-sanafe")
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
    out["latency_per_step"] = max(rel(a, b) for a, b in zip(ps["onchip_latency_s"], sf["per_step"]["latency_s"]["detailed"]))
    out["latency_simple"] = max(rel(a, b) for a, b in zip(ps["onchip_latency_s"], sf["per_step"]["latency_s"]["simple"]))
    for key in ("synaptic_events", "neurons_fired", "neurons_updated", "messages", "hops"):
        out[key] = max(rel(a, b) for a, b in zip(ps[key], sf["per_step"][key]))
    return out


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
    # the accounting is SANA-FE's: counts agree exactly, and so does its simple latency model
    for key in ("synaptic_events", "neurons_fired", "neurons_updated", "messages", "hops", "latency_simple"):
        assert diff[key] <= 1e-9, (key, diff)
