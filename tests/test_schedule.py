"""The mesh model's detailed step schedule in C (hw_sim/schedule.c) against the Python
schedule that was checked against SANA-FE (tests/reference.py): bit for bit, on converted
graphs (demo CNN, a tiny ViT), multi-phase, with and without the network load (the routes
walked in C against the oracle's X-then-Y walk), and on a graph built for ties; its
destinations against the synapse list."""
import dataclasses
import warnings

import pytest
import timm
import torch

import ecmt
import reference
from ecmt.zoo import load_model
from ecmt.runtime import cbuild
from hw_sim import histogram, load_profile
from hw_sim.engine import mesh
from hw_sim.engine.mesh import schedule
from hw_sim.engine.mesh.record import mask_dtype
from hw_sim.sanafe_export import sanafe_view
from models import randomize


def element(profile):
    return dataclasses.replace(profile, mt_form="element")


def unloaded(profile):
    return mesh.without_network_load(profile)


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, in_chans=1,
                              num_classes=10, depth=1, embed_dim=32, num_heads=2)
    return ecmt.convert(randomize(model), torch.randn(16, 1, 8, 8), progress=False).graph, torch.randn(3, 1, 8, 8) * 2


@pytest.fixture(scope="module")
def demo_cnn():
    torch.manual_seed(0)
    graph = ecmt.convert(load_model("demo-cnn"), torch.rand(64, 1, 28, 28), progress=False).graph
    return graph, torch.rand(1, 1, 28, 28)


def tied():
    """Eight single-core layers of 6 neurons; every neuron of the first four fires into all
    of the last four, so equal send times meet in the heap at every turn.  Two phases."""
    sizes = {f"g{i}": 6 for i in range(8)}
    groups = {n: mesh.Group(n, "mt", (k,), 1, phase=1 if i < 4 else 2) for i, (n, k) in enumerate(sizes.items())}
    conns = [mesh.Connection(f"g{i}", f"g{j}", f"fc{i}{j}", "linear", torch.arange(6), torch.arange(6), (6,), (6,))
             for i in range(4) for j in range(4, 8)]
    onchip = mesh.OnChip(groups, conns, 2)
    cores = {n: i * 3 for i, n in enumerate(sizes)}                 # spread over tiles: hops in x and y
    placement = mesh.Placement({n: torch.full((6,), cores[n]) for n in sizes}, 22, 1, 6, [], {}, [])
    return onchip, placement


def schedule_inputs(onchip, rasters, t):
    """The schedule's input at step t: each group's fired channels, and as `updated` the
    element's own work (the recorded `extra`)."""
    return {g: rasters[g].fired[t] for g in onchip.groups}, {g: rasters[g].extra[t] for g in onchip.groups}


def assert_equal_to_oracle(onchip, placement, profile, steps):
    acc = mesh.Accounting(onchip, placement, profile, 1)
    oracle = reference.StepSchedule(onchip, placement, profile)
    phase_of = acc.phase_of_core.tolist()
    checked = 0
    for chans, updated in steps:
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            spans = acc.schedule.spans(chans, updated, acc.timing)      # samples in parallel
            torch.set_num_threads(1)
            one_thread = acc.schedule.spans(chans, updated, acc.timing)
        finally:
            torch.set_num_threads(threads)
        whole, parts = spans.whole, spans.parts
        assert all(torch.equal(a, b) for a, b in zip(dataclasses.astuple(one_thread), dataclasses.astuple(spans)))
        for b in range(len(whole)):
            w, ps = oracle.spans({g: c[b].tolist() for g, c in chans.items()},
                                 {g: u[b].tolist() for g, u in updated.items()}, phase_of, onchip.phases)
            assert float(whole[b]) == w
            assert parts[b].tolist() == [0.0 if p is None else p for p in ps]
            checked += w > 0
    return checked


@pytest.mark.parametrize("form", ["channels", "element"])
@pytest.mark.parametrize("loaded", [True, False])
def test_tiny_vit_schedule_equals_the_python_schedule_bit_for_bit(tiny_vit, form, loaded):
    graph, x = tiny_vit
    profile = sanafe_view(load_profile("loihi"))
    profile = element(profile) if form == "element" else profile
    profile = profile if loaded else unloaded(profile)
    onchip = mesh.extract(graph, profile)
    assert onchip.phases > 1                                 # host round trips: several phases
    placement = mesh.place(onchip, profile)
    rasters = mesh.record(graph, x, 3, onchip)
    assert assert_equal_to_oracle(onchip, placement, profile, [schedule_inputs(onchip, rasters, t)
                                                               for t in range(3)]) == 9


def test_k_level_spikes_fire_one_level_channel_per_level(tiny_vit):
    """k = 3 levels per step on binary level channels: each element's recorded mask has one bit
    per level of its spike (|s| / th's binary digits, on channels n..2n-1 when negative), and
    the schedule of those several spikes per element still equals the Python one."""
    _, x = tiny_vit
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, in_chans=1,
                              num_classes=10, depth=1, embed_dim=32, num_heads=2)
    graph = ecmt.convert(randomize(model), torch.randn(16, 1, 8, 8), progress=False, spikes_per_step=3).graph
    profile = sanafe_view(load_profile("loihi"))
    onchip = mesh.extract(graph, profile)
    placement = mesh.place(onchip, profile)
    ex = ecmt.runtime.GraphExecutor(graph, record_levels=True)
    recorder, spikes = mesh.Recorder(ex, onchip, 3), {}
    ex.run(x, 3, observer=lambda node, inputs, out, t: (recorder(node, inputs, out, t),
                                                        spikes.__setitem__((node.name, t), out.clone())))
    rasters = recorder.take()
    several = 0
    for name, g in onchip.groups.items():
        node = graph[name]
        if g.kind != "mt":                      # an accumulator's outputs go to the host: no spikes
            assert not rasters[name].fired.any()
            continue
        for t in range(3):
            s = spikes[(name, t + 1)]
            th = node.th_pos if node.th_neg is None else torch.where(s < 0, node.th_neg, node.th_pos)
            m = torch.round(s.abs() / th).long().reshape(len(x), -1)
            s = s.reshape(len(x), -1)
            expected = torch.where(s < 0, m << node.levels, m) if node.signed else m
            assert torch.equal(rasters[name].fired[t], expected), (name, t)
            several += int((mesh.account.popcount(expected) > 1).sum())
    assert several > 0
    assert assert_equal_to_oracle(onchip, placement, profile, [schedule_inputs(onchip, rasters, t)
                                                               for t in range(3)]) == 9


@pytest.mark.slow
def test_demo_cnn_schedule_equals_the_python_schedule_bit_for_bit(demo_cnn):
    """The demo CNN (element form, 437 cores on 4 chips, a congested network)."""
    graph, x = demo_cnn
    profile = element(sanafe_view(load_profile("loihi")))
    onchip = mesh.extract(graph, profile)
    placement = mesh.place(onchip, profile)
    assert placement.chips > 1
    rasters = mesh.record(graph, x, 2, onchip)
    assert assert_equal_to_oracle(onchip, placement, profile, [schedule_inputs(onchip, rasters, 1)]) == 1


@pytest.mark.parametrize("loaded", [True, False])
def test_ties_are_broken_as_the_python_heap_breaks_them(loaded):
    profile = sanafe_view(load_profile("loihi"))
    profile = profile if loaded else unloaded(profile)
    onchip, placement = tied()
    g = torch.Generator().manual_seed(4)
    steps = []
    for p_fire in (1.0, 0.7, 0.3):
        chans = {n: (torch.rand(5, 6, generator=g) < p_fire).to(mask_dtype(1)) for n in onchip.groups}
        updated = {n: torch.rand(5, 6, generator=g) < 0.5 for n in onchip.groups}
        steps.append((chans, updated))
    assert assert_equal_to_oracle(onchip, placement, profile, steps) == 15


def test_destinations_equal_the_synapse_list(demo_cnn, tiny_vit):
    """fanout (per element: destination cores and synapses, from the ops' adjoints) against
    the synapse list counted pair by pair, on a two-chip placement."""
    profile = element(sanafe_view(load_profile("loihi")))
    for graph, _ in (demo_cnn, tiny_vit):
        onchip = mesh.extract(graph, profile)
        placement = mesh.place(onchip, profile)
        oracle = reference.StepSchedule(onchip, placement, profile)
        found = mesh.fanout(onchip, placement)
        assert set(found) == set(oracle.dests)
        for name, f in found.items():
            start, cores, procs = oracle.dests[name]
            assert f.start.tolist() == start and f.core.tolist() == cores
            assert schedule.Timing.of(profile).processing(f.synapses).tolist() == procs


def test_without_a_compiler_the_schedule_says_what_is_missing(tmp_path, monkeypatch, tiny_vit):
    """No slow fallback: the schedule refuses before any work, naming the source and the
    compiler; the histogram (which has a torch fallback) warns and counts on."""
    graph, _ = tiny_vit
    profile = sanafe_view(load_profile("loihi"))
    onchip = mesh.extract(graph, profile)
    placement = mesh.place(onchip, profile)
    monkeypatch.setenv("CC", "no-such-cc")
    monkeypatch.setenv("ECMT_CACHE", str(tmp_path / "cache"))
    schedule._library.cache_clear()
    histogram._library.cache_clear()
    try:
        with pytest.raises(cbuild.BuildError, match=r"building hw_sim/engine/mesh/schedule\.c needs a C compiler, "
                                                     r"and 'no-such-cc' is not on PATH") as err:
            mesh.Accounting(onchip, placement, profile, 2)
        assert "CC" in err.value.hint
        with pytest.warns(RuntimeWarning, match="histogram.c"):
            counts = histogram.histogram(torch.tensor([1, 1, 3], dtype=torch.uint8), 4)
        assert counts.tolist() == [0, 2, 0, 1]
        assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    finally:
        schedule._library.cache_clear()
        histogram._library.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.undo()
        assert mesh.Accounting(onchip, placement, profile, 2).schedule is not None


def test_a_system_of_2_to_the_24_cores_is_refused_before_any_work():
    """schedule.c keeps a message's destination core in 24 bits of its queue key."""
    n = 1 << 24
    phase = torch.zeros(n, dtype=torch.int32)
    geometry = schedule.Geometry(phase, phase, phase, torch.zeros(1, 1, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match=r"fewer than 2\^24 cores, got 16777216"):
        schedule.StepSchedule({}, {}, {}, phase, 1, geometry)
