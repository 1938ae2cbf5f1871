"""The graph file: exact round trip, and clear errors for every kind of bad file."""
import json
import re
import pickle
import struct

import pytest
import torch

from ecmt import SpikingGraph, SpikingModel, load_graph, save_graph
from ecmt import ir
from ecmt.errors import GraphError, GraphFileError
from ecmt.ir.serialize import META_KEY
from models import ecm_graph, small_graph


def write_raw(path, header: dict, tensors: dict[str, torch.Tensor]):
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(header)})


def test_round_trip_is_bit_identical(tmp_path):
    graph = small_graph()
    x = torch.randn(5, 6)
    before = SpikingModel(graph)(x, 16)
    save_graph(graph, tmp_path / "g.ecmt")
    loaded = load_graph(tmp_path / "g.ecmt")
    after = SpikingModel.from_graph(loaded)(x, 16)
    assert torch.equal(before, after)
    assert [n.name for n in loaded] == [n.name for n in graph]
    assert loaded.shapes == graph.shapes and loaded.spiking == graph.spiking


def test_edges_know_shape_and_spiking():
    edges = {(e.src, e.dst): e for e in small_graph().edges()}
    assert edges[("mt1", "fc2")].spiking and edges[("mt1", "fc2")].shape == (8,)
    assert not edges[("fc1", "mt1")].spiking


def _header(tmp_path):
    save_graph(small_graph(), tmp_path / "g.ecmt")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "g.ecmt"), "pt") as f:
        return json.loads(f.metadata()[META_KEY]), {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("mutate, message", [
    (lambda h, t: h.update(version=99), "unsupported graph version 99"),
    (lambda h, t: h["nodes"][1].update(kind="conv3d"), "node 'fc1' (conv3d): field kind: unknown op"),
    (lambda h, t: h["nodes"][3].update(inputs=["nowhere"]), "node 'fc2' (linear): field inputs: dangling"),
    (lambda h, t: h["nodes"][3]["attrs"].clear() or t.pop("fc1.weight"), "node 'fc1' (linear): field weight: missing tensor"),
    (lambda h, t: t.update({"fc2.weight": torch.randn(3, 7)}),
     "node 'fc2' (linear): field tensor_shapes.weight: records [3, 8] but the tensor is [3, 7]"),
    (lambda h, t: t.update({"fc2.weight": torch.randn(3, 7)}) or h["nodes"][3]["tensor_shapes"].update(weight=[3, 7]),
     "node 'fc2' (linear): field inputs"),
    (lambda h, t: t.update({"fc2.weight": torch.randn(3, 8).double()}), "node 'fc2' (linear): field weight: wrong dtype"),
    (lambda h, t: h["nodes"][2].update(shape=[9]), "node 'mt1' (mt_neuron): field shape: recorded [9]"),
    (lambda h, t: h["nodes"][2]["attrs"].update(levels=0), "node 'mt1' (mt_neuron): field levels"),
])
def test_bad_description_gives_one_clear_error(tmp_path, mutate, message):
    header, tensors = _header(tmp_path)
    mutate(header, tensors)
    write_raw(tmp_path / "bad.ecmt", header, tensors)
    with pytest.raises((GraphError, GraphFileError)) as err:
        load_graph(tmp_path / "bad.ecmt")
    assert message in str(err.value)


def _nested(depth: int) -> dict:
    deep: dict = {}
    for _ in range(depth):
        deep = {"x": deep}
    return deep


@pytest.mark.parametrize("graph, mutate, message", [
    (small_graph, lambda h: h.update(version=1.0), "unsupported graph version 1.0"),
    (small_graph, lambda h: h.update(version=True), "unsupported graph version True"),
    (small_graph, lambda h: [h], "not an ecmt graph (the description is a list, not an object)"),
    (small_graph, lambda h: h.update(extra=1), "graph: field extra: unknown key"),
    (small_graph, lambda h: h.update(nodes={}), "graph: field nodes: expected a list of nodes, got an object"),
    (small_graph, lambda h: h["meta"].update(deep=_nested(40)), "graph: field meta.deep.x"),
    (small_graph, lambda h: h["meta"].update(source=["a"]), "graph: field meta.source: expected a string"),
    (small_graph, lambda h: h["nodes"][2]["attrs"].update(levels=1e30),
     "node 'mt1' (mt_neuron): field levels: expected a whole number, got 1e+30"),
    (small_graph, lambda h: h["nodes"][2]["attrs"].update(levels=2**40),
     "node 'mt1' (mt_neuron): field levels: 1099511627776 is out of range"),
    (small_graph, lambda h: h["nodes"][2]["attrs"].update(levels=33), "node 'mt1' (mt_neuron): field levels: must be <= 32"),
    (small_graph, lambda h: h["nodes"][2]["attrs"].update(levels="8"),
     "node 'mt1' (mt_neuron): field levels: expected a whole number, got '8'"),
    (small_graph, lambda h: h["nodes"][2]["attrs"].pop("levels") and h["nodes"][2]["attrs"].update(level=8),
     "node 'mt1' (mt_neuron): field level: not an attribute of mt_neuron (its attributes: levels, spikes_per_step)"),
    (small_graph, lambda h: h["nodes"][2]["attrs"].update(spikes_per_step=0),
     "node 'mt1' (mt_neuron): field spikes_per_step: must be >= 1"),
    (small_graph, lambda h: h["nodes"][2]["attrs"].update(spikes_per_step=2.5),
     "node 'mt1' (mt_neuron): field spikes_per_step: expected a whole number"),
    (small_graph, lambda h: h["nodes"][2]["attrs"].update(levels=2, spikes_per_step=3),
     "node 'mt1' (mt_neuron): field spikes_per_step: spikes_per_step must be in 1..levels = 2, got 3"),
    (small_graph, lambda h: h["nodes"][2]["meta"].update(role=[1]), "node 'mt1' (mt_neuron): field meta.role"),
    (small_graph, lambda h: h["nodes"][1].update(inputs="input"),
     "node 'fc1' (linear): field inputs: expected a list of node names"),
    (small_graph, lambda h: h["nodes"][1].pop("spiking"), "node 'fc1' (linear): field spiking: missing"),
    (small_graph, lambda h: h["nodes"][1]["tensors"].update(weight=["fc1.weight"]),
     "node 'fc1' (linear): field tensors.weight: expected a string"),
    (small_graph, lambda h: h["nodes"][0]["attrs"].update(shape=["6"]),
     "node 'input' (input): field shape[0]: expected a whole number, got '6'"),
    (small_graph, lambda h: h["nodes"][0]["attrs"].update(shape=[0]), "node 'input' (input): field shape[0]: must be >= 1"),
    (small_graph, lambda h: h["nodes"].__setitem__(1, "fc1"), "node #1: field node: expected an object"),
    (ecm_graph, lambda h: h["nodes"][1]["attrs"].update(eps="1e-5"),
     "node 'ln' (layernorm_ecm): field eps: expected a number, got '1e-5'"),
    (ecm_graph, lambda h: h["nodes"][1]["attrs"].update(eps=0), "node 'ln' (layernorm_ecm): field eps: must be > 0"),
    (ecm_graph, lambda h: h["nodes"][2]["attrs"].update(scale="0.5"),
     "node 'qk' (product_ecm): field scale: expected a number, got '0.5'"),
    (ecm_graph, lambda h: h["nodes"][2]["attrs"].update(scale=float("nan")),
     "node 'qk' (product_ecm): field scale: must be a finite float32 number, got nan"),
    (ecm_graph, lambda h: h["nodes"][2]["attrs"].update(transpose_b=1),
     "node 'qk' (product_ecm): field transpose_b: expected true or false, got 1"),
])
def test_every_field_is_typed_and_range_checked(tmp_path, graph, mutate, message):
    save_graph(graph(), tmp_path / "g.ecmt")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "g.ecmt"), "pt") as f:
        header, tensors = json.loads(f.metadata()[META_KEY]), {k: f.get_tensor(k) for k in f.keys()}
    header = mutate(header) or header
    write_raw(tmp_path / "bad.ecmt", header, tensors)
    with pytest.raises((GraphError, GraphFileError)) as err:
        load_graph(tmp_path / "bad.ecmt")
    assert message in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "not valid JSON (RecursionError"),
    ('{"format": "ecmt.spiking_graph", "version": 1' + "0" * 5000 + "}", "not valid JSON (ValueError: Exceeds the limit"),
])
def test_hostile_json_text(tmp_path, text, message):
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(1)}, str(tmp_path / "j.ecmt"), metadata={META_KEY: text})
    with pytest.raises(GraphFileError, match=re.escape(message)):
        load_graph(tmp_path / "j.ecmt")


def test_ecm_graph_round_trips(tmp_path):
    save_graph(ecm_graph(), tmp_path / "g.ecmt")
    loaded = load_graph(tmp_path / "g.ecmt")
    assert loaded["ln"].eps == 1e-5 and loaded["qk"].scale == 0.5 and loaded["qk"].transpose_b is True


def test_truncated_file(tmp_path):
    save_graph(small_graph(), tmp_path / "g.ecmt")
    data = (tmp_path / "g.ecmt").read_bytes()
    for cut in (4, 100, len(data) - 10):
        (tmp_path / "t.ecmt").write_bytes(data[:cut])
        with pytest.raises(GraphFileError, match="truncated|corrupt"):
            load_graph(tmp_path / "t.ecmt")


def test_corrupt_header(tmp_path):
    save_graph(small_graph(), tmp_path / "g.ecmt")
    data = bytearray((tmp_path / "g.ecmt").read_bytes())
    data[10:20] = b"#" * 10
    (tmp_path / "c.ecmt").write_bytes(bytes(data))
    with pytest.raises(GraphFileError, match="corrupt"):
        load_graph(tmp_path / "c.ecmt")


def test_pickled_files_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "p.ecmt").write_bytes(pickle.dumps(Boom()))
    torch.save({"x": torch.zeros(1)}, tmp_path / "z.ecmt")
    for name in ("p.ecmt", "z.ecmt"):
        with pytest.raises(GraphFileError, match="never unpickles"):
            load_graph(tmp_path / name)
    assert not marker.exists()


def test_a_flipped_byte_in_the_tensor_data_is_caught(tmp_path):
    save_graph(small_graph(), tmp_path / "g.ecmt")
    raw = (tmp_path / "g.ecmt").read_bytes()
    data_start = 8 + int.from_bytes(raw[:8], "little")
    for offset in (data_start, len(raw) - 1, (data_start + len(raw)) // 2):
        bad = bytearray(raw)
        bad[offset] ^= 0x01                       # the lowest mantissa bit of one weight
        (tmp_path / "b.ecmt").write_bytes(bytes(bad))
        with pytest.raises(GraphFileError, match="do not match the file's checksum"):
            load_graph(tmp_path / "b.ecmt")


def test_nan_or_inf_tensors_are_refused(tmp_path):
    graph = small_graph()
    graph.nodes["fc1"].weight[2, 3] = float("nan")
    graph.nodes["fc1"].bias[0] = float("inf")
    with pytest.raises(GraphError, match=re.escape("node 'fc1' (linear): field weight: 1 of 48 values are NaN")):
        save_graph(graph, tmp_path / "g.ecmt")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_is_not_an_output_file(tmp_path):
    from ecmt.errors import EcmtError
    (tmp_path / "d").mkdir()
    with pytest.raises(EcmtError, match="is a directory"):
        save_graph(small_graph(), tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and not list((tmp_path / "d").iterdir())


def test_exports_are_named_for_what_they_are(tmp_path):
    from exporters import nir as enir
    from exporters import onnx as eonnx
    graph = small_graph()
    enir.export(graph, tmp_path / "g.nir")
    eonnx.export(graph, tmp_path / "g.onnx")
    for name, what in (("g.nir", "is an HDF5 file (a NIR or Lava/netx export?)"), ("g.onnx", "is an ONNX model")):
        with pytest.raises(GraphFileError, match=re.escape(what)):
            load_graph(tmp_path / name)


def test_a_header_length_with_low_byte_0x80_is_not_a_pickle(tmp_path):
    graph = small_graph()
    for pad in range(300):                # pad the metadata until the header length's low byte is 0x80
        graph.meta["pad"] = "x" * pad
        save_graph(graph, tmp_path / "g.ecmt")
        if (tmp_path / "g.ecmt").read_bytes()[0] == 0x80:
            break
    assert (tmp_path / "g.ecmt").read_bytes()[0] == 0x80
    assert load_graph(tmp_path / "g.ecmt").meta["pad"] == graph.meta["pad"]


def test_safetensors_without_graph(tmp_path):
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(GraphFileError, match="without an ecmt graph"):
        load_graph(tmp_path / "w.safetensors")


def test_failed_save_leaves_no_file(tmp_path):
    graph = small_graph()
    graph.nodes["fc2"].weight = torch.randn(3, 5)          # now invalid
    with pytest.raises(GraphError, match="fc2"):
        save_graph(graph, tmp_path / "out.ecmt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where, meta, field", [
    ("node", {"search": {"target_T": 2}}, "meta.search.multiplier"),       # an incomplete record
    ("node", {"role": 3}, "meta.role"),
    ("graph", {"calibration": [1, 2]}, "meta.calibration"),
    ("graph", {"source": float("nan")}, "meta.source"),
])
def test_save_refuses_what_load_would_refuse(tmp_path, where, meta, field):
    """Metadata is checked on save as on load: no file that ecmt cannot read back."""
    graph = small_graph()
    target = graph.nodes["fc1"].meta if where == "node" else graph.meta
    target.update(meta)
    with pytest.raises(GraphError, match=re.escape(field)):
        save_graph(graph, tmp_path / "out.ecmt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("build, message", [
    (lambda: [ir.Input("input", (), shape=(3,)), ir.Output("output", ("missing",))], "dangling"),
    (lambda: [ir.Input("input", (), shape=(3,)), ir.Output("output", ("later",)),
              ir.Scale("later", ("input",), factor=torch.tensor(2.0))], "topological"),
    (lambda: [ir.Input("input", (), shape=(3,)),
              ir.Linear("fc", ("input",), weight=torch.zeros(2, 4)), ir.Output("output", ("fc",))],
     "node 'fc' (linear): field inputs"),
    (lambda: [ir.Input("input", (), shape=(3,)), ir.Scale("dead", ("input",), factor=torch.tensor(1.0)),
              ir.Output("output", ("input",))], "does not reach the output"),
    (lambda: [ir.Input("input", (), shape=(3,))], "exactly one output"),
    (lambda: [ir.Input("input", (), shape=(3,)),
              ir.MTNeuron("mt", ("input",), th_pos=torch.tensor(-1.0), th_neg=None),
              ir.Output("output", ("mt",))], "node 'mt' (mt_neuron): field th_pos"),
])
def test_validate_names_node_and_field(build, message):
    with pytest.raises(GraphError, match=re.escape(message)):
        SpikingGraph(build())


def test_graph_files_without_spikes_per_step_mean_one(tmp_path):
    """Files written before the field existed load as the paper's neuron (k = 1)."""
    header, tensors = _header(tmp_path)
    for node in header["nodes"]:
        if node["kind"] == "mt_neuron":
            node["attrs"].pop("spikes_per_step")
    write_raw(tmp_path / "old.ecmt", header, tensors)
    graph = load_graph(tmp_path / "old.ecmt")
    assert [n.spikes_per_step for n in graph.of_kind(ir.MTNeuron)] == [1]
