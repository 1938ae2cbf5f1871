"""Energy report, schema version 3, on a small graph: determinism, the JSON Schema, real HTML
tables per section, ranges, sensitivity against a hand computation, intervals over samples."""
import json
from html.parser import HTMLParser

import jsonschema
import pytest
import torch
from models import relu_mlp

import ecmt
import hw_sim
from ecmt import ir
from hw_sim.profile import load_profile
from hw_sim.report import SCHEMA_FILE


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    x = torch.rand(24, 1, 8, 8)
    y = torch.randint(0, 10, (24,))
    graph = ecmt.convert(relu_mlp(), [x[:16]], progress=False).graph
    return graph, x, y


def run(small, hw=("cmos45-fp32", "loihi"), mode=None, T=3):
    graph, x, y = small
    return hw_sim.simulate(graph, x, T, list(hw), mode=mode, labels=y, batch_size=10, progress=False)


@pytest.fixture(scope="module")
def report(small):
    return run(small)


def test_same_inputs_give_byte_identical_json_markdown_and_html(small, report, tmp_path):
    again = run(small)
    a, b = report.write(tmp_path / "a"), again.write(tmp_path / "b")
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_report_json_validates_against_the_schema_file(report):
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = json.loads(report.to_json())
    jsonschema.validate(data, schema)
    assert data["version"] == 3
    broken = json.loads(report.to_json())
    del broken["hardware"][0]["range"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


class Sections(HTMLParser):
    """Per <section>: its <h2> title and how many <table>s it holds; and any external reference."""

    def __init__(self):
        super().__init__()
        self.sections, self.external, self._h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.sections.append({"title": "", "tables": 0})
        elif tag == "h2":
            self._h2 = True
        elif tag == "table":
            self.sections[-1]["tables"] += 1
        for name, value in attrs:
            if name in ("src", "href") and not value.startswith("data:"):
                self.external.append(value)
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)

    def handle_endtag(self, tag):
        if tag == "h2":
            self._h2 = False

    def handle_data(self, data):
        if self._h2:
            self.sections[-1]["title"] += data


def test_html_has_a_table_per_section_and_is_self_contained(report):
    html = report.to_html()
    assert html.startswith("<!doctype html>") and "<pre>" not in html
    parser = Sections()
    parser.feed(html)
    parser.close()
    titles = [s["title"] for s in parser.sections]
    assert titles[:3] == ["Headline", "Operating point", "How to read this"]
    for s in parser.sections:
        if s["title"] == "How to read this":
            continue
        if s["title"] == "Operating point" and report.data["operating_point"]["t"] is None:
            continue
        assert s["tables"] == 1, s
    # a layer table for every entry, and the constants of every profile
    assert sum(t.startswith("Layers on ") for t in titles) == len(report.hardware)
    assert {t for t in titles if t.startswith("Constants of ")} == {"Constants of cmos45-fp32", "Constants of loihi"}
    assert parser.external == []


def test_every_range_holds_min_nominal_max(report):
    for r in report.hardware:
        for key in ("energy_j", "latency_s"):
            lo, nominal, hi = r["range"][key]
            assert lo <= nominal <= hi, (r["profile"]["name"], key)
        assert r["range"]["energy_j"][1] == r["total_j"] and r["range"]["latency_s"][1] == r["latency_s"]
        for s in r["sensitivity"]:
            lo, nominal, hi = r["range"]["energy_j"]
            assert lo * (1 - 1e-12) <= min(s["energy_j"]) and max(s["energy_j"]) <= hi * (1 + 1e-12)


def test_sensitivity_order_matches_a_hand_computation(report, small):
    graph, _, _ = small
    r = report.result("cmos45-fp32", "full")
    layers = report.data["counts"]["layers"]
    total = lambda f: sum(l[f] for l in layers)
    levels = {n.name: n.levels for n in graph.of_kind(ir.MTNeuron)}
    # joules per unit of each constant, from the counts (docs/energy.md, CMOS full mode)
    per_unit = {
        "energy.add": total("sops") + total("adds") + sum(l["neuron_updates"] * (levels[l["name"]] + 2)
                                                          for l in layers if l["name"] in levels),
        "energy.mac": total("macs") + 8 * total("specials"),
        "energy.mult": total("mults"),
        "energy.sram_read_64b": (total("sops") + total("macs") + total("state_rw")) * 32 / 64,
        "energy.static_power": r["latency_s"],
    }
    p = load_profile("cmos45-fp32")
    expected = []
    for key in p.keys():
        section, name = key.split(".", 1)
        c = p.constants[section][name]
        k = per_unit.get(key, 0.0)                # clock and parallelism change latency only
        expected.append((key, r["total_j"] + k * (c.low - c.value), r["total_j"] + k * (c.high - c.value)))
    expected.sort(key=lambda e: (-abs(e[2] - e[1]), e[0]))
    assert [s["constant"] for s in r["sensitivity"]] == [e[0] for e in expected]
    for s, (_, low, high) in zip(r["sensitivity"], expected):
        assert s["energy_j"] == pytest.approx([low, high], rel=1e-9, abs=1e-21)
    # all at once: every energy constant at its low (high) end; at the high end, static power
    # times the longest latency (slowest clock, fewest parallel units)
    dynamic = {k: v for k, v in per_unit.items() if k != "energy.static_power"}
    low = r["total_j"] + sum(k * (_end(p, key, "low") - p[key]) for key, k in dynamic.items())
    high = r["total_j"] + sum(k * (_end(p, key, "high") - p[key]) for key, k in dynamic.items())
    slowest = r["latency_s"] * (p["timing.clock_hz"] / _end(p, "timing.clock_hz", "low")) \
        * (p["timing.ops_per_cycle"] / _end(p, "timing.ops_per_cycle", "low"))
    assert r["range"]["latency_s"][2] == pytest.approx(slowest, rel=1e-9)
    assert r["range"]["energy_j"] == pytest.approx(
        [low, r["total_j"], high + _end(p, "energy.static_power", "high") * slowest], rel=1e-9)


def _end(profile, key, which):
    section, name = key.split(".", 1)
    c = profile.constants[section][name]
    return c.low if which == "low" else c.high


def test_interval95_is_the_mean_over_samples(small):
    graph, x, y = small
    report = run(small, hw=("cmos45-fp32",), mode="full")
    r = report.result("cmos45-fp32")
    # the same run, one sample at a time: the per-sample energies at every t and latencies,
    # their mean and spread (CMOS: energy and latency are linear in the counts)
    each = [hw_sim.simulate(graph, x[i:i + 1], 3, "cmos45-fp32", progress=False).result("cmos45-fp32")
            for i in range(len(x))]

    def normal(values):
        v = torch.tensor(values, dtype=torch.float64)
        half = 1.96 * float(v.std()) / len(values) ** 0.5
        return float(v.mean()), [float(v.mean()) - half, float(v.mean()) + half]
    for t in range(3):
        mean, interval = normal([e["energy_per_t_j"][t] for e in each])
        assert mean == pytest.approx(r["energy_per_t_j"][t], rel=1e-9)
        assert r["interval95"]["energy_per_t_j"][t] == pytest.approx(interval, rel=1e-9)
        assert interval[0] < interval[1]
    assert r["interval95"]["energy_j"] == r["interval95"]["energy_per_t_j"][-1]
    mean, interval = normal([e["latency_s"] for e in each])
    assert mean == pytest.approx(r["latency_s"], rel=1e-9)
    # (the latency's derivative is taken by adding one event: float rounding at 1e-8 of it)
    assert r["interval95"]["latency_s"] == pytest.approx(interval, rel=1e-7)
    assert interval[0] < r["latency_s"] < interval[1]
    lo, hi = r["interval95"]["spikes"]
    assert lo <= sum(report.data["counts"]["per_step"]["spikes"]) <= hi


def test_intervals_shrink_as_the_same_samples_repeat(small):
    """The same 24 samples twice (each batch the same 24, so every count repeats exactly):
    the mean is unchanged and each half-width shrinks by sqrt((n - 1) / (2n - 1)), the
    standard error's factor, on every profile kind and at every t."""
    graph, x, y = small
    hw = ["cmos45-fp32", "loihi", "loihi2"]
    once = hw_sim.simulate(graph, x, 3, hw, mode="full", batch_size=24, progress=False)
    twice = hw_sim.simulate(graph, torch.cat([x, x]), 3, hw, mode="full", batch_size=24, progress=False)
    n = len(x)
    factor = ((n - 1) / (2 * n - 1)) ** 0.5
    for a, b in zip(once.hardware, twice.hardware):
        ia, ib = a["interval95"], b["interval95"]
        for t in range(3):
            (lo, hi), (lo2, hi2) = ia["energy_per_t_j"][t], ib["energy_per_t_j"][t]
            assert lo < a["energy_per_t_j"][t] < hi
            assert (lo2 + hi2) / 2 == pytest.approx((lo + hi) / 2, rel=1e-9)
            assert (hi2 - lo2) == pytest.approx(factor * (hi - lo), rel=1e-6), (a["profile"]["name"], t)
        (lo, hi), (lo2, hi2) = ia["latency_s"], ib["latency_s"]
        assert lo < a["latency_s"] < hi
        assert (hi2 - lo2) == pytest.approx(factor * (hi - lo), rel=1e-6), a["profile"]["name"]


def test_latency_interval_says_fixed_where_the_latency_does_not_depend_on_the_data(small):
    """TrueNorth: every phase of this small graph fits in its fixed 1 ms tick, and the graph's
    host work does not depend on the data, so every sample takes the same time: there is no
    latency interval, and the report says why; the energy still has one."""
    report = run(small, hw=("truenorth",), mode="full")
    r = report.hardware[0]
    assert r["interval95"]["latency_s"] is None and r["interval95"]["latency_basis"].startswith("fixed")
    lo, hi = r["interval95"]["energy_j"]
    assert lo < r["total_j"] < hi
    row = next(line for line in report.to_markdown().splitlines() if line.startswith("| truenorth | full"))
    assert "| fixed |" in row


def test_profile_paths_are_relative_to_the_package_or_as_given(small, report, tmp_path, monkeypatch):
    """report.json names a built-in profile by its path inside the package (the same in every
    checkout) and a user's profile as the user gave it: two copies of a profile in different
    folders give byte-identical JSON when given by the same relative path."""
    import pathlib
    root = str(pathlib.Path(hw_sim.__file__).resolve().parent.parent)
    assert root not in report.to_json()
    assert {r["profile"]["path"] for r in report.hardware} == {"hw_sim/profiles/cmos45-fp32.toml",
                                                               "hw_sim/profiles/loihi.toml"}
    source = pathlib.Path(load_profile("loihi").path).read_text()
    texts = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "mine.toml").write_text(source)
        monkeypatch.chdir(tmp_path / folder)
        texts.append(run(small, hw=("mine.toml",), mode="full", T=2).to_json())
    assert texts[0] == texts[1] and '"path": "mine.toml"' in texts[0]
    absolute = [json.loads(run(small, hw=(str(tmp_path / f / "mine.toml"),), mode="full", T=2).to_json())
                for f in ("a", "b")]
    assert [d["hardware"][0]["profile"]["path"] for d in absolute] == [str(tmp_path / f / "mine.toml")
                                                                       for f in ("a", "b")]
    for d in absolute:
        d["hardware"][0]["profile"]["path"] = "mine.toml"
    assert absolute[0] == absolute[1] == json.loads(texts[0])


def test_operating_point_is_the_first_t_within_one_point_of_the_ann(report):
    d = report.data
    assert d["ann_accuracy"] is not None and len(d["accuracy"]) == d["T"]
    t = d["operating_point"]["t"]
    within = [i + 1 for i, a in enumerate(d["accuracy"]) if a >= d["ann_accuracy"] - 0.01]
    assert t == (within[0] if within else None)
    for r in report.hardware:
        assert r["energy_per_t_j"][-1] == pytest.approx(r["total_j"], rel=1e-12)


def test_mesh_energy_constants_reprice_as_the_mesh_model_prices_them(small):
    from hw_sim.engine.mesh import LINEAR
    report = run(small, hw=("loihi",), mode="full")
    r = report.result("loihi")
    ps, p = r["mesh"]["per_step"], load_profile("loihi")
    # the per-step energies are the counts times the constants, as LINEAR states
    for field in ("synapse_j", "neuron_j", "network_j", "link_j", "host_transfer_j"):
        for t in range(report.data["T"]):
            rebuilt = sum(p[key] * (ps[count][t] if count else r["mesh"]["mapped_neurons"])
                          for key, (f, count) in LINEAR.items() if f == field)
            assert rebuilt == pytest.approx(ps[field][t], rel=1e-9, abs=1e-18), (field, t)
    s = next(s for s in r["sensitivity"] if s["constant"] == "mesh.e_synaptic_event")
    c = p.constants["mesh"]["e_synaptic_event"]
    events = sum(ps["synaptic_events"])
    assert s["energy_j"] == pytest.approx([r["total_j"] + events * (c.low - c.value),
                                           r["total_j"] + events * (c.high - c.value)], rel=1e-9)
    lo, hi = r["interval95"]["energy_j"]
    assert lo < r["total_j"] < hi
    lo, hi = r["interval95"]["latency_s"]
    assert lo < r["latency_s"] < hi


def test_mesh_timing_constants_reprice_as_a_run_with_the_changed_profile(small, monkeypatch, tmp_path):
    """The mesh model's timing constants enter the sensitivity and the latency range: re-timed
    on the recorded spikes (every scheduled sample here), the latency at a constant's range end
    is what a fresh run with that value in the profile gives."""
    import re
    import sys

    monkeypatch.setattr(sys.modules["hw_sim.engine.mesh.model"], "RETIME_SAMPLES", 1000)
    report = run(small, hw=("loihi",), mode="full")
    r = report.result("loihi")
    p = load_profile("loihi")
    timing = [k for k in p.keys() if k.startswith(("mesh.t_", "mesh.barrier_"))
              and p.constants["mesh"][k[5:]].low < p.constants["mesh"][k[5:]].high]
    assert timing and not set(timing) & set(r["sensitivity_not_covered"])
    assert set(r["sensitivity_not_covered"]) <= {"mesh.synapse_bits"}     # the mapping is not redone
    by_key = {s["constant"]: s for s in r["sensitivity"]}
    moved = [k for k in timing if by_key[k]["latency_s"][0] != by_key[k]["latency_s"][1]]
    assert {"mesh.t_synaptic_event", "mesh.t_spike_out", "mesh.t_message_in", "mesh.barrier_1"} <= set(moved)
    lo, nominal, hi = r["range"]["latency_s"]
    for k in timing:
        assert lo * (1 - 1e-12) <= min(by_key[k]["latency_s"]) and max(by_key[k]["latency_s"]) <= hi * (1 + 1e-12)
    text = open(p.path).read()
    for key, end in (("t_synaptic_event", "high"), ("t_spike_out", "low")):
        c = p.constants["mesh"][key]
        value = c.high if end == "high" else c.low
        changed = re.sub(rf"^{key} = {{ value = [^,]+,", f"{key} = {{ value = {value!r},", text, flags=re.M)
        assert changed != text
        (tmp_path / f"{key}.toml").write_text(changed)
        fresh = run(small, hw=(str(tmp_path / f"{key}.toml"),), mode="full").hardware[0]
        at = by_key[f"mesh.{key}"]["latency_s"][0 if end == "low" else 1]
        assert at == pytest.approx(fresh["latency_s"], rel=1e-9), key
        assert at != pytest.approx(r["latency_s"], rel=1e-6)


def test_mesh_retime_at_the_nominal_profile_is_the_run_chip_latency(small):
    from hw_sim.engine import mesh
    graph, x, _ = small
    p = load_profile("loihi")
    onchip = mesh.extract(graph, p)
    placement = mesh.place(onchip, p)
    acc = mesh.Accounting(onchip, placement, p, 3)
    for start in (0, 4):                     # two batches of 4 samples
        acc.add(mesh.record(graph, x[start:start + 4], 3, onchip))
    chip = acc.result()["per_step"]["chip_latency_s"]
    assert acc.sample_chip_latency().shape == (8, 3)
    assert acc.sample_chip_latency().mean(0).tolist() == pytest.approx(chip, rel=1e-12)
    assert acc.retime(p).mean(0).tolist() == pytest.approx(chip, rel=1e-12)
    assert torch.allclose(acc.retime(p, 2), acc.sample_chip_latency()[:2], rtol=1e-12, atol=0)
    assert acc.sample_energy_per_t()[:, -1].tolist() == pytest.approx(acc.sample_energy().tolist(), rel=1e-12)


# -- deployed accuracy ---------------------------------------------------------------------------
def _brute_int8(w: torch.Tensor) -> torch.Tensor:
    """8 bits, round half to even, one scale per output channel (max |w| / 127), by hand."""
    flat = w.double().reshape(len(w), -1)
    scale = flat.abs().max(1).values / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(flat / scale[:, None]), -127, 127)
    return (q * scale[:, None]).float().reshape(w.shape)


def test_int8_weights_format_runs_the_brute_force_quantized_graph(small):
    import copy

    from ecmt.runtime import GraphExecutor
    from hw_sim import deployed
    graph, x, _ = small
    nodes = []
    for node in graph:
        if isinstance(node, (ir.Linear, ir.Conv2d)):
            node = copy.copy(node)
            node.weight = _brute_int8(node.weight)
        nodes.append(node)
    brute = GraphExecutor(ir.SpikingGraph(nodes, meta=graph.meta)).run(x, 3)
    ours = deployed.executor(graph, "int8-weights").run(x, 3)
    assert torch.equal(ours, brute)
    assert not torch.equal(ours, GraphExecutor(graph).run(x, 3))      # the rounding shows


def test_lava_fixed_point_format_is_lavas_fixed_point_run(small):
    """The executor in the lava-fixed-point format against Lava's own fixed-point models
    (exporters.lava.build(..., fixed_point=True), Loihi2SimCfg): equal to float32 summation
    order, where the float graph is visibly off."""
    pytest.importorskip("lava")
    from exporters import lava as elava
    from hw_sim import deployed
    graph, x, _ = small
    x = x[:4]
    lava_out = torch.from_numpy(elava.build(graph, fixed_point=True).run(x.numpy(), 3))
    ours = deployed.executor(graph, "lava-fixed-point").run(x, 3)
    scale = float(lava_out.abs().max())
    assert float((ours - lava_out).abs().max()) <= 1e-5 * scale
    assert float((deployed.executor(graph, "float").run(x, 3) - lava_out).abs().max()) > 1e-3 * scale


def test_report_gives_float_and_deployed_accuracy_side_by_side(small):
    from hw_sim import deployed
    graph, x, y = small
    report = run(small, hw=("cmos45-fp32", "cmos45-int8", "loihi2"), mode="full")
    d = report.data
    assert set(d["deployed"]) == {"int8-weights", "lava-fixed-point"}
    for fmt, dep in d["deployed"].items():
        out = torch.cat([deployed.executor(graph, fmt).run(x[i:i + 10], 3) for i in range(0, len(x), 10)], 1)
        assert dep["accuracy"] == pytest.approx((out.argmax(-1) == y).double().mean(1).tolist(), abs=1e-12)
    assert [r["deployment"] for r in report.hardware] == [None, "int8-weights", "lava-fixed-point"]
    md = report.to_markdown()
    assert "accuracy (float, t=3)" in md and "accuracy (deployed, t=3)" in md
    row = next(line for line in md.splitlines() if line.startswith("| cmos45-int8 | full"))
    assert f"{100 * d['deployed']['int8-weights']['accuracy'][-1]:.2f}% (int8 weights" in row
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(json.loads(report.to_json()), schema)


def test_unknown_deployment_in_a_profile_is_refused(tmp_path):
    from hw_sim.profile import ProfileError
    text = open(load_profile("cmos45-int8").path).read().replace('deployment = "int8-weights"',
                                                                  'deployment = "int4"')
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(ProfileError, match="profile.deployment: 'int4'"):
        load_profile(tmp_path / "p.toml")
