"""hw_sim: counts against brute force, the paper's formula, determinism, profiles."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import hw_sim
from ecmt import SpikingGraph, SpikingModel, ir
from ecmt.runtime import GraphExecutor
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


def brute_linear(x, out_features):
    return sum(out_features for v in x.flatten().tolist() if v != 0)


def brute_conv(x, weight_shape, stride, padding, groups):
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
                                    count += 1
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


@pytest.fixture(scope="module")
def demo_graph():
    import ecmt
    from ecmt import data
    from ecmt.zoo import load_model
    train = data.fashion_mnist("train")
    return ecmt.convert(load_model("demo"), train.images[:256], progress=False).graph


def test_paper_mode_matches_an_independent_implementation(demo_graph):
    from ecmt import data
    x = data.fashion_mnist("test").images[:32]
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


def test_reports_are_byte_identical_for_the_same_inputs(demo_graph, tmp_path):
    from ecmt import data
    x = data.fashion_mnist("test").take(16)
    texts = []
    for run in range(2):
        torch.manual_seed(run)
        report = hw_sim.simulate(demo_graph, x.images, 3, ["cmos45-fp32", "loihi"], mode=None,
                                 labels=x.labels, progress=False)
        report.write(tmp_path / str(run))
        texts.append((tmp_path / str(run) / "report.json").read_bytes())
    assert texts[0] == texts[1]
    data_ = json.loads(texts[0])
    assert data_["schema"] == "ecmt.hw_sim.report" and data_["version"] == 2
    # no mode given: full everywhere, the paper's formula on the CMOS profile only
    assert [(r["profile"]["name"], r["mode"]) for r in data_["hardware"]] == [
        ("cmos45-fp32", "full"), ("loihi", "full"), ("cmos45-fp32", "paper")]
    loihi = [r for r in data_["hardware"] if r["profile"]["name"] == "loihi" and r["mode"] == "full"][0]
    # By hand, per block of the demo ViT (50 tokens x 64, MT levels 8: 16 binary channels feed
    # each synapse; 1024 compartments, 131072 synapses per core): MT neurons norm1, q, k, v,
    # attention output, norm2 (3200 each: 4 cores), softmax (10000: 10), GELU (6400: 7);
    # linears qkv 50*192*64*16 synapses = 75 cores, proj 50*64*64*16 = 25, fc1 50*128*64*16 = 50,
    # fc2 50*64*128*16 = 50.  6*4 + 10 + 7 + 75 + 25 + 50 + 50 = 241 per block, 964 in 4 blocks.
    assert (loihi["cores_used"], loihi["chips"]) == (964, 8)
    # a step is the slowest core, the host's share and one barrier (465 ns) per step
    phases = loihi["latency_by_phase_s"]
    assert phases["barrier"] == pytest.approx(3 * 465e-9, rel=1e-9)
    assert loihi["latency_s"] == pytest.approx(sum(loihi["latency_per_step_s"]), rel=1e-12)
    assert loihi["latency_s"] == pytest.approx(sum(phases.values()), rel=1e-12)
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
    assert all(c.status == "assumption" for c in load_profile("loihi2").constants["energy"].values())


def test_every_shipped_constant_has_a_sourced_range():
    for name in hw_sim.available_profiles():
        text = (hw_sim.profile.PROFILE_DIR / f"{name}.toml").read_text()
        p = load_profile(name)
        lines = [l for l in text.splitlines() if l.split(" = { value", 1)[0].isidentifier() and "= { value" in l]
        assert len(lines) == len(p.keys())
        assert all("range = [" in l for l in lines), name            # stated, even where low = high
        for key in p.keys():
            section, k = key.split(".", 1)
            c = p.constants[section][k]
            assert c.low <= c.value <= c.high and c.range_source, (name, key)
    sop = load_profile("loihi").constants["energy"]["sop"]
    assert (sop.low, sop.value, sop.high) == (23.6e-12, 23.6e-12, 35.5e-12)      # Davies vs SANA-FE
    barrier = load_profile("loihi").constants["timing"]["barrier"]
    assert (barrier.low, barrier.high) == (113e-9, 465e-9)


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
    bad.update({
        "cores.toml": (loihi.replace("cores = { value = 128", "cores = { value = 0", 1),
                       "key architecture.cores.value: a count"),
        "host.toml": (loihi.replace("value = 1.0e9", "value = 0.0", 1),
                      "key timing.host_ops_per_second.value: expected a number > 0"),
        "baseline.toml": (loihi.replace('ann_baseline = "cmos45-fp32"\n', ""), "key profile.ann_baseline"),
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


def test_recording_levels_leaves_the_run_unchanged(demo_graph):
    from ecmt import data
    x = data.fashion_mnist("test").images[:16]
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
