"""A mutation fuzzer and hypothesis properties over the graph file format.

Every mutated file must either be refused with the project's error class
(EcmtError) or load and then run, summarize and save cleanly; no case may
hang or take unbounded memory.  The mutations are seeded, so a failure
names a reproducible case.
"""
import contextlib
import json
import random
import resource
import signal
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from ecmt import SpikingGraph, SpikingModel, ir, load_graph, save_graph, summarize
from ecmt.errors import EcmtError, GraphFileError
from ecmt.ir.serialize import CHECKSUM_KEY, META_KEY, tensor_checksum
from models import ecm_graph, every_kind_graph, small_graph

pytestmark = pytest.mark.slow

CASE_SECONDS = 5            # a case slower than this is a hang
MEMORY_GROWTH_MB = 512      # peak resident memory may grow by at most this over all cases
PER_SEED = 800              # mutated files per seed graph


SEEDS = {"small": small_graph, "ecm": ecm_graph, "every_kind": every_kind_graph,
         "ppn": lambda: ir.expand_ppn(every_kind_graph())}


def _parts(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()[META_KEY]), {k: f.get_tensor(k) for k in f.keys()}


def _write(path, header, tensors, checksum=True):
    text = header if isinstance(header, str) else json.dumps(header)
    meta = {META_KEY: text, **({CHECKSUM_KEY: tensor_checksum(tensors)} if checksum else {})}
    save_file(tensors, str(path), metadata=meta)


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def alarm(signum, frame):
        raise Hang(f"no answer in {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def load_and_use(path) -> str:
    """'refused' or 'ran'; any other exception escapes (a bug)."""
    try:
        graph = load_graph(path)
        summarize(graph)
        x = torch.randn(2, *graph.shapes[graph.input.name])
        model = SpikingModel(graph)
        model(x, 2)
        model.analog(x)
        save_graph(graph, path.with_name("resaved.ecmt"))
    except EcmtError:
        return "refused"
    return "ran"


# -- the mutations --------------------------------------------------------
HOSTILE_VALUES = [None, True, False, 0, -1, 1, 2, 33, -2**31, 2**31, 2**63, 10**30, 1e30, -1e-300, 0.5,
                  float("nan"), float("inf"), -float("inf"), "", "x", "8", "input", [], [1], [[1]], {}, {"a": 1},
                  [0] * 20, ["input", "input"]]


def _paths(value, prefix=()):
    """Every (path, value) in a JSON value."""
    out = [(prefix, value)]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _nest(value, depth):
    for _ in range(depth):
        value = [value]
    return value


def mutate_json(header: dict, rng: random.Random):
    """One hostile change to the description: a type swap, an extreme number, deep
    nesting, a missing or an extra key."""
    paths = [p for p, _ in _paths(header) if p]
    path = rng.choice(paths)
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    what = rng.randrange(6)
    if what == 0:
        parent[last] = rng.choice(HOSTILE_VALUES)
    elif what == 1 and isinstance(parent[last], (int, float)) and not isinstance(parent[last], bool):
        parent[last] = rng.choice([-parent[last], parent[last] * 10**rng.randrange(1, 40), parent[last] + 0.5,
                                   float(parent[last]), parent[last] - 1])
    elif what == 2:
        parent[last] = _nest(parent[last], rng.choice([40, 200]))
    elif what == 3:
        if isinstance(parent, dict):
            del parent[last]
        else:
            parent.pop(last)
    elif what == 4 and isinstance(parent, dict):
        parent[rng.choice(["extra", "levels", "scale", "eps", "axis", "shape", "bias"])] = rng.choice(HOSTILE_VALUES)
    elif what == 5 and isinstance(parent[last], list):
        parent[last].append(rng.choice(HOSTILE_VALUES))
    else:
        parent[last] = rng.choice(HOSTILE_VALUES)
    return header


def mutate_tensors(tensors: dict, rng: random.Random):
    """A tensor of the wrong shape, dtype or with non-finite values (checksum recomputed)."""
    key = rng.choice(sorted(tensors))
    t = tensors[key]
    tensors[key] = rng.choice([
        lambda: t.double(), lambda: t.to(torch.int32), lambda: t.reshape(-1),
        lambda: torch.cat([t.reshape(-1), t.reshape(-1)]), lambda: torch.zeros(0),
        lambda: t.clone().fill_(float("nan")), lambda: t.clone().fill_(float("inf")),
        lambda: t.clone().fill_(3e38), lambda: -t.abs(), lambda: torch.zeros_like(t),
    ])()
    if rng.random() < 0.3:
        tensors.pop(rng.choice(sorted(tensors)))
    return tensors


def cases(per_seed: int):
    """(name, seed graph, mutation) for every case, reproducible."""
    for seed_name in SEEDS:
        for i in range(per_seed):
            yield f"{seed_name}#{i}", seed_name, random.Random(f"{seed_name}/{i}")


class Seed:
    """A saved seed graph: its bytes, description text and tensors."""

    def __init__(self, path):
        self.raw = path.read_bytes()
        header, self.tensors = _parts(path)
        self.text = json.dumps(header)


def run_case(tmp_path, seed: Seed, rng: random.Random) -> str:
    raw, header, tensors = seed.raw, json.loads(seed.text), dict(seed.tensors)
    out = tmp_path / "case.ecmt"
    what = rng.randrange(5)
    if what == 0:                                   # byte flips anywhere
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        out.write_bytes(bytes(data))
    elif what == 1:                                 # truncation
        out.write_bytes(raw[:rng.randrange(len(raw))])
    elif what == 2:                                 # one or more field mutations
        for _ in range(rng.randint(1, 3)):
            header = mutate_json(header, rng)
        _write(out, json.dumps(header, allow_nan=True), tensors)
    elif what == 3:                                 # a bad tensor behind a valid checksum
        _write(out, header, mutate_tensors(tensors, rng))
    else:                                           # a hostile JSON text
        text = json.dumps(header)
        cut = rng.randrange(len(text))
        _write(out, rng.choice([text[:cut], text[:cut] + "[" * 5000 + text[cut:], text.replace("1", "1" * 5000, 1),
                                text.replace(": ", ":NaN,", 1), text.replace('"nodes"', '"nodes":[],"nodes"', 1)]),
               tensors)
    return load_and_use(out)


def test_the_seeds_hold_every_node_kind():
    assert {n.KIND for build in SEEDS.values() for n in build()} == set(ir.NODE_KINDS)


def test_mutated_graph_files_give_the_projects_error_or_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ECMT_COMPILE", "0")           # eager kernels: thousands of graphs, no compile per graph
    seeds = {}
    for name, build in SEEDS.items():
        save_graph(build(), tmp_path / f"{name}.ecmt")
        assert load_and_use(tmp_path / f"{name}.ecmt") == "ran"
        seeds[name] = Seed(tmp_path / f"{name}.ecmt")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts, escapes, slowest = {"refused": 0, "ran": 0}, [], (0.0, "")
    start = time.perf_counter()
    for name, seed_name, rng in cases(PER_SEED):
        t0 = time.perf_counter()
        try:
            with time_limit(CASE_SECONDS):
                counts[run_case(tmp_path, seeds[seed_name], rng)] += 1
        except Exception as err:  # noqa: BLE001 - every escape is collected and reported
            escapes.append(f"{name}: {type(err).__name__}: {str(err)[:200]}")
        slowest = max(slowest, (time.perf_counter() - t0, name))
    total = time.perf_counter() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(f"fuzz: {sum(counts.values()) + len(escapes)} cases in {total:.1f} s, {counts}, "
          f"{len(escapes)} escapes, slowest {slowest[1]} {slowest[0]:.2f} s, peak RSS +{grown_mb:.0f} MB")
    assert not escapes, "\n".join(escapes[:20])
    assert counts["refused"] > PER_SEED * len(SEEDS) * 0.8 and counts["ran"] > 0
    assert grown_mb < MEMORY_GROWTH_MB


# -- hypothesis properties -------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def seed_parts(tmp_path_factory):
    path = tmp_path_factory.mktemp("seed") / "g.ecmt"
    save_graph(every_kind_graph(), path)
    return _parts(path)


@PROPERTY
@given(data=st.data(), value=json_values)
def test_any_json_value_in_any_field_is_refused_or_runs(tmp_path, monkeypatch, seed_parts, data, value):
    monkeypatch.setenv("ECMT_COMPILE", "0")
    header, tensors = json.loads(json.dumps(seed_parts[0])), seed_parts[1]
    path = data.draw(st.sampled_from([p for p, _ in _paths(header) if p]))
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    _write(tmp_path / "p.ecmt", json.dumps(header, allow_nan=True), tensors)
    with time_limit(CASE_SECONDS):
        assert load_and_use(tmp_path / "p.ecmt") in ("refused", "ran")


@PROPERTY
@given(version=json_values.filter(lambda v: not (type(v) is int and v == 1)))
def test_only_the_whole_number_1_is_version_1(tmp_path, seed_parts, version):
    header = {**seed_parts[0], "version": version}
    _write(tmp_path / "v.ecmt", json.dumps(header, allow_nan=True), seed_parts[1])
    with pytest.raises(GraphFileError, match="not an ecmt graph|unsupported graph version"):
        load_graph(tmp_path / "v.ecmt")


@PROPERTY
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_as_graph_files(tmp_path, data):
    (tmp_path / "b.ecmt").write_bytes(data)
    with pytest.raises(GraphFileError):
        load_graph(tmp_path / "b.ecmt")


@PROPERTY
@given(widths=st.lists(st.integers(1, 12), min_size=2, max_size=4), levels=st.integers(1, 32),
       signed=st.booleans(), th=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_any_valid_mlp_round_trips_bit_identically(tmp_path, monkeypatch, widths, levels, signed, th, seed):
    monkeypatch.setenv("ECMT_COMPILE", "0")
    g = torch.Generator().manual_seed(seed)
    nodes, prev = [ir.Input("input", (), shape=(widths[0],))], "input"
    for i, (w_in, w_out) in enumerate(zip(widths, widths[1:])):
        nodes += [ir.Linear(f"fc{i}", (prev,), weight=torch.randn(w_out, w_in, generator=g)),
                  ir.MTNeuron(f"mt{i}", (f"fc{i}",), th_pos=torch.tensor(th),
                              th_neg=torch.tensor(th / 2) if signed else None, levels=levels)]
        prev = f"mt{i}"
    graph = SpikingGraph([*nodes, ir.Output("output", (prev,))])
    save_graph(graph, tmp_path / "m.ecmt")
    loaded = load_graph(tmp_path / "m.ecmt")
    x = torch.randn(3, widths[0], generator=g)
    assert torch.equal(SpikingModel(graph)(x, 3), SpikingModel(loaded)(x, 3))
    assert [n.levels for n in loaded.of_kind(ir.MTNeuron)] == [levels] * (len(widths) - 1)
