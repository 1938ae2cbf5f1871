"""hw_sim: counts against brute force, the paper's formula, determinism, profiles."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import hw_sim
from ecmt import SpikingGraph, SpikingModel, ir
from ecmt.runtime import GraphExecutor, native
from hw_sim.counting import Counter, to_lists
from ecmt.errors import EcmtError
from hw_sim.profile import ProfileError, load_profile


def graph_of(*nodes):
    return SpikingGraph([ir.Input("input", (), shape=nodes[0]), *nodes[1:]])


def run_counts(graph, x, T):
    executor = GraphExecutor(graph, record_levels=True)
    counter = Counter(executor, T)
    seen = {}

    def observe(node, inputs, out, t):
        counter(node, inputs, out, t)
        seen[(node.name, t)] = ([i.clone() for i in inputs], out.clone())

    executor.run(x, T, observer=observe)
    return to_lists(counter.result()), seen


def event_counts_of(graph, x, T):
    """hw_sim's EventCounts of one run of `graph` on x (its own counter on a recording executor)."""
    from hw_sim.counting import event_counts
    executor = GraphExecutor(graph, record_levels=True)
    counter = Counter(executor, T)
    executor.run(x, T, observer=counter)
    return event_counts(counter)


def brute_linear(x, out_features):
    return sum(out_features for v in x.flatten().tolist() if v != 0)


def brute_conv(x, weight_shape, stride, padding, groups, weight=None):
    """(output, weight) pairs fed by a non-zero input; with `weight`, each counted weight[input] times."""
    b, c_in, h, w = x.shape
    c_out, c_in_g, kh, kw = weight_shape
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    count = 0
    for n in range(b):
        for co in range(c_out):
            g = co // (c_out // groups)
            for ci in range(g * c_in_g, (g + 1) * c_in_g):
                for i in range(oh):
                    for j in range(ow):
                        for di in range(kh):
                            for dj in range(kw):
                                r, s = i * stride - padding + di, j * stride - padding + dj
                                if 0 <= r < h and 0 <= s < w and x[n, ci, r, s] != 0:
                                    count += 1 if weight is None else int(weight[n, ci, r, s])
    return count


def brute_pairs(a, b):
    a2, b2 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    return sum(1 for m in range(a2.shape[0]) for i in range(a2.shape[1]) for k in range(a2.shape[2])
               for j in range(b2.shape[2]) if a2[m, i, k] != 0 and b2[m, k, j] != 0)


def test_linear_counts_equal_brute_force():
    g = torch.Generator().manual_seed(0)
    graph = graph_of((5,), ir.MTNeuron("mt", ("input",), th_pos=torch.tensor(0.6), th_neg=torch.tensor(0.4), levels=3),
                     ir.Linear("fc", ("mt",), weight=torch.randn(7, 5, generator=g)),
                     ir.Output("output", ("fc",)))
    x = torch.randn(4, 5, generator=g)
    counts, seen = run_counts(graph, x, 6)
    for t in range(1, 7):
        (spk,), _ = seen[("fc", t)]
        assert counts["fc"]["sops"][t - 1] == brute_linear(spk, 7)
        assert counts["fc"]["dense"][t - 1] == 4 * 5 * 7
        _, out = seen[("mt", t)]
        assert counts["mt"]["spikes"][t - 1] == int((out != 0).sum())


@pytest.mark.parametrize("stride, padding, groups", [(1, 1, 1), (2, 1, 1), (2, 0, 2), (3, 2, 4)])
def test_conv_counts_equal_brute_force(stride, padding, groups):
    g = torch.Generator().manual_seed(1)
    graph = graph_of((4, 7, 6),
                     ir.MTNeuron("mt", ("input",), th_pos=torch.tensor(0.8), th_neg=None, levels=2),
                     ir.Conv2d("conv", ("mt",), weight=torch.randn(8, 4 // groups, 3, 3, generator=g),
                               stride=stride, padding=padding, groups=groups),
                     ir.Output("output", ("conv",)))
    x = torch.randn(2, 4, 7, 6, generator=g)
    counts, seen = run_counts(graph, x, 3)
    for t in range(1, 4):
        (spk,), _ = seen[("conv", t)]
        assert counts["conv"]["sops"][t - 1] == brute_conv(spk, (8, 4 // groups, 3, 3), stride, padding, groups)
        assert counts["conv"]["dense"][t - 1] == brute_conv(torch.ones_like(spk), (8, 4 // groups, 3, 3),
                                                            stride, padding, groups)


def test_product_counts_equal_brute_force_for_the_incremental_form():
    g = torch.Generator().manual_seed(2)
    graph = graph_of((2, 4, 6),
                     ir.MTNeuron("qa", ("input",), th_pos=torch.tensor(0.9), th_neg=torch.tensor(0.9), levels=2),
                     ir.MTNeuron("qb", ("input",), th_pos=torch.tensor(1.1), th_neg=torch.tensor(0.7), levels=2),
                     ir.ProductECM("prod", ("qa", "qb"), transpose_b=True, scale=0.5),
                     ir.Output("output", ("prod",)))
    x = torch.randn(3, 2, 4, 6, generator=g)
    counts, seen = run_counts(graph, x, 5)
    a_sum = b_sum = None
    for t in range(1, 6):
        (xa, xb), _ = seen[("prod", t)]
        xb = xb.transpose(-1, -2)
        pairs = brute_pairs(xa, xb)
        if a_sum is not None:
            pairs += brute_pairs(xa, b_sum) + brute_pairs(a_sum, xb)
        a_sum = xa.clone() if a_sum is None else a_sum + xa
        b_sum = xb.clone() if b_sum is None else b_sum + xb
        assert counts["prod"]["sops"][t - 1] == pairs
        assert counts["prod"]["paper_sops"][t - 1] == (brute_pairs(xa, xb) + brute_pairs(xa, b_sum)
                                                      + brute_pairs(a_sum, xb))
        assert counts["prod"]["dense"][t - 1] == 3 * 2 * 4 * 6 * 4


def test_levels_histogram_with_negative_levels():
    graph = graph_of((6,), ir.MTNeuron("mt", ("input",), th_pos=torch.tensor(0.5), th_neg=torch.tensor(0.25),
                                        levels=3), ir.Output("output", ("mt",)))
    x = torch.tensor([[0.5, 1.0, 2.0, -0.25, -1.0, 0.1]])
    counts, seen = run_counts(graph, x, 1)
    # bins: -th_neg*2^2, -2^1, -2^0, +2^0, +2^1, +2^2 -> spikes 0.5, 1.0, 2.0 (+k=0,1,2), -0.25 (k=0), -1.0 (k=2)
    assert counts["mt"]["levels"][0] == [1, 0, 1, 1, 1, 1]
    assert counts["mt"]["spikes"][0] == 5


def test_zero_input_gives_zero_events():
    graph = graph_of((5,), ir.MTNeuron("mt", ("input",), th_pos=torch.tensor(0.5), th_neg=torch.tensor(0.5)),
                     ir.Linear("fc", ("mt",), weight=torch.randn(3, 5)),
                     ir.MTNeuron("mt2", ("fc",), th_pos=torch.tensor(0.5), th_neg=torch.tensor(0.5)),
                     ir.Linear("fc2", ("mt2",), weight=torch.randn(2, 3)), ir.Output("output", ("fc2",)))
    counts, _ = run_counts(graph, torch.zeros(3, 5), 4)
    for name in ("mt", "mt2"):
        assert counts[name]["spikes"] == [0] * 4 and counts[name]["active_updates"] == [0] * 4
    for name in ("fc", "fc2"):
        assert counts[name]["sops"] == [0] * 4


@pytest.fixture
def demo_graph(demo_vit_graph):
    return demo_vit_graph


@pytest.mark.compile          # the counting kernels as they run by default: compiled
def test_paper_mode_matches_an_independent_implementation(demo_graph, fashion_mnist):
    x = fashion_mnist[1].images[:32]
    T = 4
    report = hw_sim.simulate(demo_graph, x, T, "cmos45-fp32", mode="paper", progress=False)
    # Independent: the reference's rule, over the same run.
    sop = dense_first = 0.0
    sums = {}

    def observe(node, inputs, out, t):
        nonlocal sop, dense_first
        if isinstance(node, ir.Linear):
            mask = (inputs[0] != 0).float()
            sop += F.linear(mask, torch.ones_like(node.weight)).sum().item()
            if t == 1:
                dense_first += F.linear(torch.ones_like(mask), torch.ones_like(node.weight)).sum().item()
        elif isinstance(node, ir.ProductECM):
            a, b = inputs[0], inputs[1].transpose(-1, -2) if node.transpose_b else inputs[1]
            sa, sb = sums.get(node.name, (torch.zeros_like(a), torch.zeros_like(b)))
            sa, sb = sa + a, sb + b
            sums[node.name] = (sa, sb)
            nz = lambda z: (z != 0).float()
            sop += (nz(a) @ nz(b) + nz(a) @ nz(sb) + nz(sa) @ nz(b)).sum().item()
            if t == 1:
                dense_first += (torch.ones_like(a) @ torch.ones_like(b)).sum().item()

    SpikingModel(demo_graph)(x, T, observer=observe)
    expected = 0.9 * sop / (4.6 * dense_first)
    got = report.result("cmos45-fp32", "paper")["energy_ratio"]
    assert got == pytest.approx(expected, rel=1e-9)


def test_reports_are_byte_identical_for_the_same_inputs(demo_graph, tmp_path, fashion_mnist):
    x = fashion_mnist[1].take(16)
    texts = []
    for run in range(2):
        torch.manual_seed(run)
        report = hw_sim.simulate(demo_graph, x.images, 3, ["cmos45-fp32", "loihi"], mode=None,
                                 labels=x.labels, progress=False)
        report.write(tmp_path / str(run))
        texts.append((tmp_path / str(run) / "report.json").read_bytes())
    assert texts[0] == texts[1]
    data_ = json.loads(texts[0])
    assert data_["schema"] == "ecmt.hw_sim.report" and data_["version"] == 3
    # no mode given: full everywhere, the paper's formula on the CMOS profile only
    assert [(r["profile"]["name"], r["mode"]) for r in data_["hardware"]] == [
        ("cmos45-fp32", "full"), ("loihi", "full"), ("cmos45-fp32", "paper")]
    loihi = [r for r in data_["hardware"] if r["profile"]["name"] == "loihi" and r["mode"] == "full"][0]
    # the mesh engine's mapping (derived by hand in tests/test_sanafe.py): 3140 cores, 25 chips
    assert (loihi["cores_used"], loihi["chips"]) == (3140, 25)
    assert all("cores" in m and "limiting_resource" in m for m in loihi["mapping"])
    mesh = loihi["mesh"]
    assert mesh["scheduled_samples"] == mesh["samples"] == 16
    # a step is its chip phases' schedules, one barrier per phase, the chip links and the host
    phases = loihi["latency_by_phase_s"]
    assert set(phases) == {"cores", "chip_links", "barrier", "host"}
    assert phases["barrier"] == pytest.approx(3 * mesh["phases"] * mesh["barrier_s"], rel=1e-9)
    assert loihi["latency_s"] == pytest.approx(sum(loihi["latency_per_step_s"]), rel=1e-12)
    assert loihi["latency_s"] == pytest.approx(sum(phases.values()), rel=1e-12)
    assert loihi["static_j"] == pytest.approx(0.104 * 25 * loihi["latency_s"], rel=1e-9)
    assert all(c["source"] and c["status"] in ("silicon", "pre-silicon", "assumption")
               for c in loihi["profile"]["constants"].values())
    html = (tmp_path / "0" / "report.html").read_text()
    # side by side, categories per step, against t, and the top layers of each of the 3 entries
    assert html.count("data:image/png;base64,") == 6


def test_paper_mode_on_a_neuromorphic_profile_is_refused(tmp_path):
    g = graph_of((4,), ir.MTNeuron("mt", ("input",), levels=2, th_pos=torch.tensor(0.5), th_neg=None),
                 ir.Output("output", ("mt",)))
    for name in ("loihi", "loihi-sanafe", "truenorth"):
        with pytest.raises(hw_sim.ModeError) as err:
            hw_sim.simulate(g, torch.rand(2, 4), 2, ["cmos45-fp32", name], mode=["full", "paper"], progress=False)
        assert isinstance(err.value, EcmtError) and name in str(err.value) and "'paper'" in str(err.value)
    pairs = hw_sim.plan([load_profile("loihi"), load_profile("cmos45-fp32")], None)
    assert [(p.name, m) for p, m in pairs] == [("loihi", "full"), ("cmos45-fp32", "full"), ("cmos45-fp32", "paper")]


def test_every_shipped_profile_loads():
    for name in hw_sim.available_profiles():
        p = load_profile(name)
        assert p.kind in ("cmos", "neuromorphic")
    assert {"cmos45-fp32", "cmos45-fp16", "cmos45-int8", "loihi", "loihi2", "truenorth",
            "spinnaker2"} <= set(hw_sim.available_profiles())
    loihi2 = load_profile("loihi2").constants["mesh"]
    assert all(c.status == "assumption" for k, c in loihi2.items() if k.startswith(("e_", "t_")))
    alias = load_profile("loihi-sanafe")
    assert (alias.name, alias.alias_of) == ("loihi-sanafe", "loihi")
    assert alias.constants == load_profile("loihi").constants


def test_every_shipped_constant_has_a_sourced_range():
    for name in hw_sim.available_profiles():
        text = (hw_sim.profile.PROFILE_DIR / f"{name}.toml").read_text()
        p = load_profile(name)
        if p.alias_of:
            continue
        lines = [l for l in text.splitlines() if l.split(" = { value", 1)[0].isidentifier() and "= { value" in l]
        assert len(lines) == len(p.keys())
        assert all("range = [" in l for l in lines), name            # stated, even where low = high
        for key in p.keys():
            section, k = key.split(".", 1)
            c = p.constants[section][k]
            assert c.low <= c.value <= c.high and c.range_source, (name, key)
    sop = load_profile("loihi").constants["mesh"]["e_synaptic_event"]
    assert (sop.low, sop.value, sop.high) == (23.6e-12, 35.5e-12, 35.5e-12)      # Davies vs SANA-FE
    barrier = load_profile("loihi").constants["mesh"]["barrier_1"]
    assert (barrier.low, barrier.high) == (465e-9, 600e-9)


def test_user_profile_file_and_malformed_profiles(tmp_path):
    text = (hw_sim.profile.PROFILE_DIR / "cmos45-fp32.toml").read_text()
    (tmp_path / "mine.toml").write_text(text.replace('name = "cmos45-fp32"', 'name = "mine"'))
    assert load_profile(tmp_path / "mine.toml").name == "mine"
    bad = {
        "broken.toml": ("[profile\n", "not valid TOML"),
        "nokey.toml": (text.replace("mac = {", "macc = {", 1), "key energy.mac: missing"),
        "status.toml": (text.replace('status = "silicon"', 'status = "measured"', 1), "key energy.mac.status"),
        "value.toml": (text.replace("value = 4.6e-12", 'value = "big"', 1), "key energy.mac.value"),
        "bits.toml": (text.replace("value_bits = 32", "value_bits = -32"), "key profile.value_bits"),
        "nan.toml": (text.replace("value = 4.6e-12", "value = nan", 1), "key energy.mac.value: expected a finite"),
        "inf.toml": (text.replace("value = 0.9e-12", "value = inf", 1), "key energy.add.value: expected a finite"),
        "negative.toml": (text.replace("value = 3.7e-12", "value = -3.7e-12", 1), "key energy.mult.value"),
        "clock.toml": (text.replace("value = 1e9", "value = 0", 1), "key timing.clock_hz.value: expected a number > 0"),
        "ops.toml": (text.replace("value = 256", "value = 2.5", 1), "key timing.ops_per_cycle.value: a count"),
        "order.toml": (text.replace("range = [0.5e9, 2e9]", "range = [2e9, 4e9]", 1),
                       "key timing.clock_hz.range: expected low <= value <= high"),
        "nanrange.toml": (text.replace("range = [0.5e9, 2e9]", "range = [nan, 2e9]", 1),
                          "key timing.clock_hz.range: expected a finite"),
    }
    loihi = (hw_sim.profile.PROFILE_DIR / "loihi.toml").read_text()
    links = 'columns = { value = 8, unit = "chips per row", range = [8, 8]'
    assert links in loihi
    bad.update({
        "cores.toml": (loihi.replace("cores_per_tile = { value = 4", "cores_per_tile = { value = 0", 1),
                       "key mesh.cores_per_tile.value: a count"),
        "host.toml": (loihi.replace("ops_per_second = { value = 0.33e9", "ops_per_second = { value = 0.0", 1),
                      "key host.ops_per_second.value: expected a number > 0"),
        "baseline.toml": (loihi.replace('ann_baseline = "cmos45-fp32"\n', ""), "key profile.ann_baseline"),
        # a mesh section missing a field, a negative limit, links that do not join
        "nomesh.toml": (loihi.replace("input_axons = {", "input_axonz = {", 1), "key mesh.input_axons: missing"),
        "limit.toml": (loihi.replace("output_axons = { value = 4096", "output_axons = { value = -4096", 1),
                       "key mesh.output_axons.value: a count, expected a positive integer, got -4096"),
        "apart.toml": (loihi.replace(links, 'links = [[0, 1], [2, 3]]\ncount = { value = 4, unit = "chips", '
                                    'source = "a board", status = "assumption" }\n' + links, 1),
                       "key chips.links: the links do not join every chip: chip(s) 2, 3 cannot be reached"),
        "nochip.toml": (loihi.replace(links, 'links = [[0, 1], [1, 5]]\ncount = { value = 4, unit = "chips", '
                                     'source = "a board", status = "assumption" }\n' + links, 1),
                        "key chips.links[1]: chip 5 does not exist"),
        "nocount.toml": (loihi.replace(links, "links = [[0, 1]]\n" + links, 1), "key chips.count: listed links"),
        "selflink.toml": (loihi.replace(links, 'links = [[1, 1]]\n' + links, 1), "key chips.links[0]"),
        "unknown.toml": (loihi.replace("[host]\n", '[host]\nclock = { value = 1, source = "x", status = "assumption" }\n', 1),
                         "key host.clock: unknown"),
        "tiles.toml": (loihi.replace("[mesh]\n", '[mesh]\ntiles = { value = 64, source = "x", status = "assumption" }\n', 1),
                       "key mesh.tiles: 64 tiles do not fit a 8 x 4 mesh"),
        "nohost.toml": (loihi.replace("cores_per_chip = { value = 3, unit = \"cores\", range = [3, 3]", "cores_per_chip = { value = 0, unit = \"cores\", range = [0, 0]", 1),
                        "key host.cores_per_chip: the host needs at least one core"),
        "table.toml": (loihi.replace("[chips]\n", "[chip]\n", 1), "key chip: not a table of a neuromorphic profile"),
        "alias.toml": ('[profile]\nname = "x"\nalias = "no-such-chip"\n', "hardware profile 'no-such-chip' not found"),
    })
    for name, (content, message) in bad.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(ProfileError) as err:
            load_profile(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and message in str(err.value)


def test_linear_fed_through_a_slice_counts_its_own_input():
    """A layer fed by part of an MT neuron's output cannot reuse the neuron's spike
    count; its synaptic operations are counted from its input."""
    g = torch.Generator().manual_seed(4)
    graph = graph_of((6, 5), ir.MTNeuron("mt", ("input",), th_pos=torch.tensor(0.5), th_neg=torch.tensor(0.5)),
                     ir.Slice("part", ("mt",), axis=0, start=1, stop=4),
                     ir.Linear("fc", ("part",), weight=torch.randn(3, 5, generator=g)),
                     ir.Output("output", ("fc",)))
    x = torch.randn(2, 6, 5, generator=g)
    counts, seen = run_counts(graph, x, 4)
    for t in range(1, 5):
        (spk,), _ = seen[("fc", t)]
        assert counts["fc"]["sops"][t - 1] == brute_linear(spk, 3)


def test_counter_needs_an_executor_that_records_levels():
    graph = graph_of((5,), ir.MTNeuron("mt", ("input",), th_pos=torch.tensor(0.5), th_neg=None),
                     ir.Output("output", ("mt",)))
    with pytest.raises(ValueError, match="record_levels=True"):
        Counter(GraphExecutor(graph), 3)


def test_recording_levels_leaves_the_run_unchanged(demo_graph, fashion_mnist):
    x = fashion_mnist[1].images[:16]
    plain = GraphExecutor(demo_graph).run(x, 4)
    recorded = GraphExecutor(demo_graph, record_levels=True).run(x, 4)
    assert torch.equal(plain, recorded)


@pytest.mark.parametrize("native", [True, False])
def test_histogram_equals_bincount(native, monkeypatch):
    from hw_sim import histogram as hist_mod
    monkeypatch.setenv("ECMT_NATIVE", "1" if native else "0")
    hist_mod._library.cache_clear()
    try:
        assert (hist_mod._library() is not None) == native     # CI has the C compiler torch.compile needs
        g = torch.Generator().manual_seed(5)
        random = torch.randint(0, 34, (300_001,), generator=g, dtype=torch.uint8)
        runs = torch.full((200_003,), 7, dtype=torch.uint8)    # long runs of one value, across blocks
        runs[::1000] = 33
        for codes in (random, runs, random[:5], torch.zeros(0, dtype=torch.uint8)):
            expected = torch.bincount(codes, minlength=34)
            assert torch.equal(hist_mod.histogram(codes, 34), expected)
            out = torch.ones(2, 17, dtype=torch.int64)
            hist_mod.histogram(codes, 34, out=out)               # adds into out
            assert torch.equal(out.view(-1), expected + 1)
        rows = random[:300_000].view(3, -1)                       # one histogram per row (per sample)
        per_row = torch.stack([torch.bincount(r, minlength=34) for r in rows])
        assert torch.equal(hist_mod.histogram(random[:300_000], 34, rows=3), per_row)
        assert torch.equal(hist_mod.histogram(runs[:200_000], 34, rows=4).sum(0), torch.bincount(runs[:200_000]))
        with pytest.raises(ValueError, match="equal rows"):
            hist_mod.histogram(random, 34, rows=2)
        with pytest.raises(ValueError, match="uint8"):
            hist_mod.histogram(random.long(), 34)
    finally:
        hist_mod._library.cache_clear()


def _spikes(shape, th, levels, g, density=0.3):
    """Signed spikes of an MT neuron: sums of distinct levels th 2^j, zero where silent."""
    m = torch.randint(-(2 ** levels - 1), 2 ** levels, shape, generator=g)
    return torch.where(torch.rand(shape, generator=g) < density, m * th, torch.zeros(())).float()


@pytest.mark.skipif(native.library() is None, reason="the fast step's kernels cannot be built here")
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "no heads"])
@pytest.mark.parametrize("leveled", [None, 0, 1])
def test_native_product_counts_equal_torchs(layout, leveled):
    """native.product_counts (one pass over a product's operands as they lie) gives the torch
    count's pairs (product_pairs, product_level_pairs) and next-step column / row counts, over
    two steps, for transposed views and with either operand's spikes weighed by their levels."""
    from hw_sim.counting import _along, product_level_pairs, product_pairs
    g = torch.Generator().manual_seed(21)
    lead = (3,) if layout == "no heads" else (3, 2)
    th = {0: (torch.tensor(0.25), torch.tensor(0.5)), 1: (torch.tensor(0.75), None)}
    th = {j: v for j, v in th.items() if j == leveled}
    n, k, m = 5, 7, 6
    ca, cb = torch.zeros(*lead, k, dtype=torch.int64), torch.zeros(*lead, k, dtype=torch.int64)
    ref_prev = (ca.clone(), cb.clone())
    a_sum = b_sum = 0
    for _ in range(2):
        x = _spikes((*lead, n, k), 0.25, 3, g)
        y = _spikes((*lead, m, k), 0.75, 3, g).transpose(-1, -2) if layout == "transposed" else \
            _spikes((*lead, k, m), 0.75, 3, g)
        a_sum, b_sum = a_sum + x, b_sum + y
        b_now = b_sum if layout != "transposed" else b_sum.transpose(-1, -2).contiguous().transpose(-1, -2)
        out = torch.full((lead[0], 3), -1, dtype=torch.int64)
        assert native.product_counts(x, a_sum, y, b_now, ca, cb, out, th.get(0), th.get(1))
        pairs, ref_ca, ref_cb = product_pairs(x, y, a_sum, b_now, *ref_prev)
        level = product_level_pairs(_along(x, -2, th.get(0)), _along(y, -1, th.get(1)), *ref_prev)
        assert torch.equal(out, torch.cat([pairs, level.unsqueeze(1)], 1))
        assert torch.equal(ca, ref_ca) and torch.equal(cb, ref_cb)
        ref_prev = (ref_ca, ref_cb)
        assert (leveled is None) == bool((out[:, 0] == out[:, 2]).all())    # the levels weigh in where asked


def test_nodes_computed_from_constants_count_for_every_sample():
    """A layer and a neuron fed by a constant run once with batch 1 but stand for every sample."""
    g = torch.Generator().manual_seed(6)
    const = torch.randn(4, 5, generator=g)
    graph = SpikingGraph([
        ir.Constant("table", (), value=const),
        ir.MTNeuron("table_mt", ("table",), th_pos=torch.tensor(0.5), th_neg=torch.tensor(0.5)),
        ir.Linear("embed", ("table_mt",), weight=torch.randn(3, 5, generator=g)),
        ir.Linear("proj", ("table",), weight=torch.randn(3, 5, generator=g)),     # analog: paper SOPs, once
        ir.Input("input", (), shape=(4, 3)),
        ir.Add("sum", ("input", "embed", "proj")),
        ir.Output("output", ("sum",)),
    ])
    T = 3
    single, seen = run_counts(graph, torch.randn(1, 4, 3, generator=g), T)
    for batch in (2, 5):
        counts, _ = run_counts(graph, torch.randn(batch, 4, 3, generator=g), T)
        for name, field in (("table_mt", "spikes"), ("table_mt", "levels"), ("embed", "sops"),
                            ("proj", "paper_sops"), ("proj", "macs"), ("sum", "adds")):
            per_step = counts[name][field]
            expected = [[batch * v for v in row] if isinstance(row, list) else batch * row
                        for row in single[name][field]]
            assert per_step == expected, (name, field, batch)
    (spk,), _ = seen[("embed", 1)]
    assert single["embed"]["sops"][0] == brute_linear(spk, 3)
    assert single["proj"]["paper_sops"] == [brute_linear(const, 3), 0, 0]      # static: step 1 only


# -- spikes of several levels (spikes_per_step k > 1) ------------------------------------------
def decompose(s, th_pos, th_neg, levels):
    """Per element of a spike tensor, the levels it carries, greedily from the top in Python:
    [..., 2n] counts, columns -n..-1, 1..n (as the counter's ``levels``).  th_* broadcast against s."""
    th_p = torch.broadcast_to(torch.as_tensor(th_pos, dtype=torch.float64), s.shape).reshape(-1).tolist()
    th_n = th_p if th_neg is None else \
        torch.broadcast_to(torch.as_tensor(th_neg, dtype=torch.float64), s.shape).reshape(-1).tolist()
    out = torch.zeros(s.numel(), 2 * levels, dtype=torch.long)
    for i, v in enumerate(s.double().reshape(-1).tolist()):
        th, rest = (th_p[i], v) if v > 0 else (th_n[i], -v)
        for j in range(levels - 1, -1, -1):
            if v != 0 and rest >= th * 2 ** j * (1 - 1e-5):
                rest -= th * 2 ** j
                out[i, levels + j if v > 0 else levels - 1 - j] += 1
        assert abs(rest) <= 1e-5 * abs(v), (v, rest)       # the spike is a sum of distinct levels
    return out.view(*s.shape, 2 * levels)


def brute_weighted_pairs(a, b, wa, wb):
    """Sum of wa[i, k] * wb[k, j] over the pairs of non-zero a[i, k], b[k, j]."""
    a2, b2 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    wa2, wb2 = wa.reshape(a2.shape), wb.reshape(b2.shape)
    return sum(int(wa2[m, i, k]) * int(wb2[m, k, j]) for m in range(a2.shape[0]) for i in range(a2.shape[1])
               for k in range(a2.shape[2]) for j in range(b2.shape[2]) if a2[m, i, k] != 0 and b2[m, k, j] != 0)


def k_level_graph(k: int):
    """Two signed MT neurons sending up to k levels: one feeds a linear layer and, with the
    other through a permute, a product."""
    g = torch.Generator().manual_seed(11)
    return SpikingGraph([
        ir.Input("input", (), shape=(2, 4, 6)),
        ir.MTNeuron("mt", ("input",), th_pos=torch.tensor(0.3), th_neg=torch.tensor(0.2), levels=4,
                    spikes_per_step=min(k, 4)),
        ir.Linear("fc", ("mt",), weight=torch.randn(5, 6, generator=g)),
        ir.MTNeuron("mb", ("input",), th_pos=torch.tensor(0.7), th_neg=torch.tensor(0.45), levels=3,
                    spikes_per_step=min(k, 3)),
        ir.Permute("pm", ("mb",), dims=(0, 2, 1)),
        ir.ProductECM("prod", ("mt", "pm"), scale=0.5),
        ir.Linear("fc2", ("prod",), weight=torch.randn(5, 4, generator=g)),
        ir.Add("sum", ("fc", "fc2")),
        ir.Output("output", ("sum",)),
    ])


@pytest.mark.parametrize("k", [1, 3])
def test_k_level_counts_equal_brute_force(k):
    """Graded events (non-zero outputs), per-level events (s / th decomposed), active updates and
    SOPs one per graded input or one per level it carries, from the executor's own spike tensors."""
    graph = k_level_graph(k)
    g = torch.Generator().manual_seed(12)
    x = 2 * torch.randn(3, 2, 4, 6, generator=g)
    T = 4
    counts, seen = run_counts(graph, x, T)
    a_sum = b_sum = wa_sum = wb_sum = None
    multi = 0
    for t in range(1, T + 1):
        i = t - 1
        for name, th_pos, th_neg, n in (("mt", 0.3, 0.2, 4), ("mb", 0.7, 0.45, 3)):
            (inp,), s = seen[(name, t)]
            lv = decompose(s, th_pos, th_neg, n)
            assert counts[name]["spikes"][i] == int((s != 0).sum())
            assert counts[name]["levels"][i] == lv.reshape(-1, 2 * n).sum(0).tolist()
            assert counts[name]["level_spikes"][i] == int(lv.sum())
            assert counts[name]["active_updates"][i] == int((inp != 0).sum())
            assert int(lv.sum(-1).max()) <= k
            multi += int((lv.sum(-1) > 1).sum())
        (spk,), _ = seen[("fc", t)]
        per = decompose(spk, 0.3, 0.2, 4).sum(-1)
        assert counts["fc"]["sops"][i] == brute_linear(spk, 5)
        assert counts["fc"]["level_sops"][i] == 5 * int(per.sum())
        (xa, xb), _ = seen[("prod", t)]
        pa, pb = decompose(xa, 0.3, 0.2, 4).sum(-1), decompose(xb, 0.7, 0.45, 3).sum(-1)
        ones = lambda z: (z != 0).long()
        sops, level = brute_pairs(xa, xb), brute_weighted_pairs(xa, xb, pa, pb)
        if a_sum is not None:
            sops += brute_pairs(xa, b_sum) + brute_pairs(a_sum, xb)
            level += brute_weighted_pairs(xa, b_sum, pa, ones(b_sum)) + brute_weighted_pairs(a_sum, xb, ones(a_sum), pb)
        a_sum = xa.clone() if a_sum is None else a_sum + xa
        b_sum = xb.clone() if b_sum is None else b_sum + xb
        assert counts["prod"]["sops"][i] == sops
        assert counts["prod"]["level_sops"][i] == level
    if k == 1:          # one level per spike: the level counts are the graded ones
        assert multi == 0
        for name, field in (("mt", "spikes"), ("mb", "spikes"), ("fc", "sops"), ("prod", "sops")):
            assert counts[name]["level_" + field] == counts[name][field]
    else:
        assert multi > 0                              # the test exercises spikes of several levels


@pytest.mark.parametrize("levels, k", [(2, 2), (3, 3)])
def test_k_level_conv_counts_with_per_channel_thresholds(levels, k):
    g = torch.Generator().manual_seed(13)
    th_pos, th_neg = torch.rand(4, 1, 1, generator=g) + 0.2, torch.rand(4, 1, 1, generator=g) + 0.2
    graph = graph_of((4, 7, 6),
                     ir.MTNeuron("mt", ("input",), th_pos=th_pos, th_neg=th_neg, levels=levels, spikes_per_step=k),
                     ir.Conv2d("conv", ("mt",), weight=torch.randn(6, 2, 3, 3, generator=g), stride=2, padding=1,
                               groups=2),
                     ir.Output("output", ("conv",)))
    x = 3 * torch.randn(2, 4, 7, 6, generator=g)
    counts, seen = run_counts(graph, x, 3)
    for t in range(1, 4):
        (spk,), _ = seen[("conv", t)]
        per = decompose(spk, th_pos, th_neg, levels).sum(-1)
        assert counts["conv"]["sops"][t - 1] == brute_conv(spk, (6, 2, 3, 3), 2, 1, 2)
        assert counts["conv"]["level_sops"][t - 1] == brute_conv(spk, (6, 2, 3, 3), 2, 1, 2, weight=per)
    assert sum(counts["conv"]["level_sops"]) > sum(counts["conv"]["sops"])


def test_k_level_spikes_rearranged_with_per_channel_thresholds_are_refused():
    graph = graph_of((2, 3),
                     ir.MTNeuron("mt", ("input",), th_pos=torch.tensor([[0.5], [0.7]]), th_neg=None, levels=3,
                                 spikes_per_step=2),
                     ir.Permute("pm", ("mt",), dims=(1, 0)),
                     ir.ProductECM("prod", ("mt", "pm")),
                     ir.Output("output", ("prod",)))
    with pytest.raises(EcmtError, match="node 'prod' \\(product_ecm\\): input 'mt' carries spikes of 'mt' \\(spikes_per_step 2\\) "
                                         "with per-channel thresholds"):
        Counter(GraphExecutor(graph, record_levels=True), 2)


def test_mt_counts_equal_brute_force_native_and_fallback(monkeypatch):
    from hw_sim import histogram as hist_mod
    levels = 5
    span = 2 ** levels - 1
    g = torch.Generator().manual_seed(14)
    codes = torch.randint(0, 2 * (2 * span + 1), (4 * 3001,), generator=g, dtype=torch.int16)
    codes[:2000] = span                                       # a long run of silence
    c = codes.long().view(4, -1)
    active = c >= 2 * span + 1
    m = c - active * (2 * span + 1) - span
    expected = torch.stack([(m != 0).sum(1), active.sum(1),
                            torch.tensor([sum(bin(abs(v)).count("1") for v in row.tolist()) for row in m])], 1)
    for native in ("1", "0"):
        monkeypatch.setenv("ECMT_NATIVE", native)
        hist_mod._library.cache_clear()
        try:
            out = torch.ones(2 * (2 * span + 1), dtype=torch.int64)
            assert torch.equal(hist_mod.mt_counts(codes, levels, out, rows=4), expected)
            assert torch.equal(out, torch.bincount(codes.long(), minlength=out.numel()) + 1)
        finally:
            hist_mod._library.cache_clear()


@pytest.mark.parametrize("k", [1, 3])
def test_binary_chips_send_each_fired_level_graded_ones_one_event(k, tmp_path):
    """The same run on Loihi's binary level channels and on the same chip with graded spikes
    (one element per neuron): binary sends one spike per fired level, each with its synaptic
    events, graded one event per spike; the synaptic events of the layer on the cores are
    the counter's level_sops and sops (one per level, or per spike, and weight).  With k = 1
    the spike and event counts are the same in both formats."""
    graph = k_level_graph(k)
    x = 2 * torch.randn(3, 2, 4, 6, generator=torch.Generator().manual_seed(15))
    text = open(load_profile("loihi").path).read()
    for old, new in (('name = "loihi"', 'name = "loihi-graded"'), ('spikes = "binary"', 'spikes = "graded"'),
                     ('mt_form = "channels"', 'mt_form = "element"')):
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "graded.toml").write_text(text)
    report = hw_sim.simulate(graph, x, 4, ["loihi", str(tmp_path / "graded.toml")], progress=False)
    counts = {c["name"]: c for c in report.data["counts"]["layers"]}
    (b, g) = report.data["hardware"]
    events = lambda r: sum(r["mesh"]["per_step"]["synaptic_events"])
    fired = lambda r: sum(r["mesh"]["groups"][n]["fired"] for n in ("mt", "mb"))
    assert events(b) == pytest.approx(counts["fc"]["level_sops"], rel=1e-12)
    assert events(g) == pytest.approx(counts["fc"]["sops"], rel=1e-12)
    assert fired(b) == pytest.approx(counts["mt"]["level_spikes"] + counts["mb"]["level_spikes"], rel=1e-12)
    assert fired(g) == pytest.approx(counts["mt"]["spikes"] + counts["mb"]["spikes"], rel=1e-12)
    assert (events(b) > events(g)) == (k > 1) and (fired(b) > fired(g)) == (k > 1)


def test_cmos_prices_a_k_level_spike_as_one_weight_read_and_an_add_per_level():
    from hw_sim.energy import snn_energy
    graph = k_level_graph(3)
    x = 2 * torch.randn(3, 2, 4, 6, generator=torch.Generator().manual_seed(16))
    counts = event_counts_of(graph, x, 4)
    p = load_profile("cmos45-fp32")
    energy = snn_energy(graph, counts, p, "full")
    word = p.value_bits / 8 / 8 * p["energy.sram_read_64b"]
    for name in ("fc", "prod"):
        assert sum(energy[name]["synapse"]) == pytest.approx(p["energy.add"] * counts.total(name, "level_sops"))
    assert sum(energy["fc"]["memory"]) == pytest.approx(word * counts.total("fc", "sops"))
    # the k > 1 neuron update: the input, a subtract and a compare per level, the spike
    assert sum(energy["mt"]["neuron"]) == pytest.approx((2 * 4 + 2) * p["energy.add"]
                                                        * counts.total("mt", "neuron_updates"))


def test_pricing_chosen_fields_partitions_the_full_energy():
    """snn_energy with `fields` prices exactly the chosen count fields of the chosen kinds: one
    field at a time, the parts add up to the full energy; the neuron updates alone are what
    costs.mt_update_ops charges (2 levels + 2 adds with k > 1)."""
    from hw_sim.counting import FIELDS
    from hw_sim.energy import snn_energy
    graph = k_level_graph(3)
    x = 2 * torch.randn(3, 2, 4, 6, generator=torch.Generator().manual_seed(19))
    counts = event_counts_of(graph, x, 4)
    p = load_profile("cmos45-fp32")
    total = lambda energy: sum(sum(map(sum, per.values())) for per in energy.values())
    full = total(snn_energy(graph, counts, p, "full"))
    parts = [total(snn_energy(graph, counts, p, "full", fields={ir.Node: (f,)})) for f in FIELDS]
    assert sum(parts) == pytest.approx(full, rel=1e-12) and full > 0
    updates = snn_energy(graph, counts, p, "full", fields={ir.MTNeuron: ("neuron_updates",)})
    assert total(updates) == pytest.approx(
        p["energy.add"] * ((2 * 4 + 2) * counts.total("mt", "neuron_updates")
                           + (2 * 3 + 2) * counts.total("mb", "neuron_updates")), rel=1e-12)
    assert all(sum(map(sum, updates[n].values())) == 0 for n in ("fc", "prod", "input"))
    with pytest.raises(ValueError, match="unknown count field.*'spike'"):
        snn_energy(graph, counts, p, "full", fields={ir.MTNeuron: ("spike",)})


def test_events_counted_on_a_foreign_network_are_priced_at_hw_sims_rates():
    """Units of a network hw_sim cannot run, described as the ir nodes they equal, are priced
    by the same table: a one-level IF neuron's update is 3 adds (input, compare, subtract)
    plus its state traffic, a synaptic event a weight read and an add per level, a MAC a
    MAC and a weight read (the CMOS rules of docs/energy.md, written out here by hand)."""
    from hw_sim.counting import FIELDS, EventCounts
    from hw_sim.energy import snn_energy
    units = [ir.MTNeuron("if", (), th_pos=torch.tensor(1.0), th_neg=None, levels=1),
             ir.Linear("fc", (), weight=torch.zeros(3, 4)),
             ir.ProductECM("attn", ("a", "b"))]
    given = {"if": {"neuron_updates": [10, 20], "state_rw": [20, 40], "mults": [4, 0]},
             "fc": {"sops": [5, 0], "level_sops": [7, 0], "macs": [0, 3]},
             "attn": {"macs": [6, 6]}}
    counts = EventCounts({u.name: {f: given[u.name].get(f, [0, 0]) for f in FIELDS} for u in units}, samples=2)
    p = load_profile("cmos45-fp32")
    add, mult, mac = p["energy.add"], p["energy.mult"], p["energy.mac"]
    word = 32 / 64 * p["energy.sram_read_64b"]
    expected = {"if": [(10 * 3 * add + 20 * word + 4 * mult) / 2, (20 * 3 * add + 40 * word) / 2],
                "fc": [(5 * word + 7 * add) / 2, 3 * (mac + word) / 2],
                "attn": [6 * (mac + word) / 2] * 2}
    energy = snn_energy(units, counts, p, "full")
    for name, per_step in expected.items():
        got = [sum(per[t] for per in energy[name].values()) for t in range(2)]
        assert got == pytest.approx(per_step, rel=1e-12), name


def test_report_states_the_spike_format_of_each_profile():
    graph = k_level_graph(3)
    x = 2 * torch.randn(4, 2, 4, 6, generator=torch.Generator().manual_seed(17))
    report = hw_sim.simulate(graph, x, 3, ["cmos45-fp32", "loihi", "loihi2"], progress=False)
    formats = {e["profile"]["name"]: e["spike_format"] for e in report.data["hardware"]}
    assert formats["loihi"]["kind"] == "binary" and formats["loihi"]["events_per_spike"] == 3
    # graded payload: m < 2^4 of the 4-level neuron plus its sign
    assert formats["loihi2"] == {**formats["loihi2"], "kind": "graded", "events_per_spike": 1, "payload_bits": 5}
    assert formats["cmos45-fp32"]["kind"] == "values" and formats["cmos45-fp32"]["adds_per_synapse"] == 3
    assert "5-bit payload" in report.to_markdown()


def test_mesh_rasters_hold_every_level_channel_and_graded_spikes():
    """Binary level channels: 32 signed levels (the IR's most) are 64 channels, the raster's
    64 bits, the top level's negative spike on bit 63; graded spikes: one bit per element."""
    import dataclasses
    from hw_sim.engine import mesh
    loihi = load_profile("loihi")
    wide = SpikingGraph([ir.Input("input", (), shape=(4,)),
                         ir.MTNeuron("mt", ("input",), th_pos=torch.tensor(1.0), th_neg=torch.tensor(1.0), levels=32),
                         ir.Output("output", ("mt",))])
    v = torch.tensor([[2.0 ** 31, -(2.0 ** 31), 1.0, -1.0]])
    rasters = mesh.record(wide, v, 1, mesh.extract(wide, loihi))
    assert rasters["mt"].fired[0, 0].tolist() == [1 << 31, -(1 << 63), 1, 1 << 32]
    assert mesh.account.popcount(rasters["mt"].fired[0]).tolist() == [[1, 1, 1, 1]]
    graph = k_level_graph(3)
    graded = dataclasses.replace(loihi, spikes="graded")
    onchip = mesh.extract(graph, graded)
    x = 2 * torch.randn(2, 2, 4, 6, generator=torch.Generator().manual_seed(18))
    executor = GraphExecutor(graph, record_levels=True)
    recorder = mesh.Recorder(executor, onchip, 3)
    spikes = {}
    executor.run(x, 3, observer=lambda node, inputs, out, t: (recorder(node, inputs, out, t),
                                                              spikes.__setitem__((node.name, t), out.clone())))
    rasters = recorder.take()
    for t in range(1, 4):
        s = spikes[("mt", t)].reshape(2, -1)
        assert torch.equal(rasters["mt"].fired[t - 1], (s != 0).long())
