"""Energy report, schema version 2, on a small graph: determinism, the JSON Schema, real HTML
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
    assert data["version"] == 2
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
    # the same energy, one sample at a time: the per-sample energies' mean and spread
    each = [hw_sim.simulate(graph, x[i:i + 1], 3, "cmos45-fp32", progress=False).result("cmos45-fp32")["total_j"]
            for i in range(len(x))]
    e = torch.tensor(each, dtype=torch.float64)
    half = 1.96 * float(e.std()) / len(each) ** 0.5
    assert float(e.mean()) == pytest.approx(r["total_j"], rel=1e-9)
    assert r["interval95"]["energy_j"] == pytest.approx([r["total_j"] - half, r["total_j"] + half], rel=1e-9)
    lo, hi = r["interval95"]["spikes"]
    assert lo <= sum(report.data["counts"]["per_step"]["spikes"]) <= hi


def test_operating_point_is_the_first_t_within_one_point_of_the_ann(report):
    d = report.data
    assert d["ann_accuracy"] is not None and len(d["accuracy"]) == d["T"]
    t = d["operating_point"]["t"]
    within = [i + 1 for i, a in enumerate(d["accuracy"]) if a >= d["ann_accuracy"] - 0.01]
    assert t == (within[0] if within else None)
    for r in report.hardware:
        assert r["energy_per_t_j"][-1] == pytest.approx(r["total_j"], rel=1e-12)


def test_mesh_energy_constants_reprice_as_the_mesh_model_prices_them(small):
    from hw_sim.simulate import MESH_LINEAR
    report = run(small, hw=("loihi-sanafe",), mode="full")
    r = report.result("loihi-sanafe")
    ps, p = r["mesh"]["per_step"], load_profile("loihi-sanafe")
    # the per-step energies are the counts times the constants, as MESH_LINEAR states
    for field in ("synapse_j", "neuron_j", "network_j", "host_transfer_j"):
        for t in range(report.data["T"]):
            rebuilt = sum(p[key] * (ps[count][t] if count else r["mesh"]["mapped_neurons"])
                          for key, (f, count) in MESH_LINEAR.items() if f == field)
            assert rebuilt == pytest.approx(ps[field][t], rel=1e-9, abs=1e-18), (field, t)
    s = next(s for s in r["sensitivity"] if s["constant"] == "mesh.e_synaptic_event")
    c = p.constants["mesh"]["e_synaptic_event"]
    events = sum(ps["synaptic_events"])
    assert s["energy_j"] == pytest.approx([r["total_j"] + events * (c.low - c.value),
                                           r["total_j"] + events * (c.high - c.value)], rel=1e-9)
    assert "mesh.t_synaptic_event" in r["sensitivity_not_covered"]
    lo, hi = r["interval95"]["energy_j"]
    assert lo < r["total_j"] < hi
