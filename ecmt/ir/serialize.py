"""One-file graph format: a safetensors file whose header metadata holds the
versioned JSON description under the key ``ecmt_graph``.

safetensors is data only (a JSON header and raw little-endian buffers), so
loading a graph never runs code.  Tensors are stored under ``<node>.<field>``.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_path
from ..errors import GraphError, GraphFileError
from .graph import NODE_KINDS, SpikingGraph
from .schema import check_description, check_node

META_KEY = "ecmt_graph"
CHECKSUM_KEY = "ecmt_sha256"


def graph_to_json(graph: SpikingGraph) -> dict:
    nodes = []
    for node in graph:
        attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in node.attrs().items()}
        nodes.append({
            "name": node.name,
            "kind": node.KIND,
            "inputs": list(node.inputs),
            "attrs": attrs,
            "tensors": {f: f"{node.name}.{f}" for f in node.tensors()},
            "tensor_shapes": {f: list(t.shape) for f, t in node.tensors().items()},
            "shape": list(graph.shapes[node.name]),
            "spiking": graph.spiking[node.name],
            "meta": node.meta,
        })
    return {"format": SpikingGraph.FORMAT, "version": SpikingGraph.VERSION,
            "meta": graph.meta, "nodes": nodes}


def save_graph(graph: SpikingGraph, path) -> None:
    """Validate (the graph, and its description as load checks it), then write
    atomically (a temporary file renamed into place)."""
    graph.validate()
    path = Path(path)
    tensors = {f"{node.name}.{f}": t.detach().contiguous().clone()
               for node in graph for f, t in node.tensors().items()}
    desc = graph_to_json(graph)
    # The checks load applies, so that nothing is saved that would be refused on load
    # (e.g. node metadata with a malformed record).
    check_description(desc, str(path), SpikingGraph.FORMAT, SpikingGraph.VERSION)
    for i, nd in enumerate(desc["nodes"]):
        check_node(nd, tensors, NODE_KINDS, i, str(path))
    header = json.dumps(desc, separators=(",", ":"), allow_nan=False)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: header, CHECKSUM_KEY: tensor_checksum(tensors)})


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, shape and bytes, in name order: safetensors
    has no checksum of its own, and a flipped byte in a weight would load silently."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        digest.update(f"{key}:{list(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_HINT = "graphs are written by `ecmt convert` or ecmt.save_graph"


def _looks_like(head: bytes) -> str | None:
    """What a file that is not a safetensors graph seems to be, from its first bytes."""
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file (a NIR or Lava/netx export?), not an ecmt graph"
    if head[:2] == b"PK":
        return "a zip / torch.save archive, not an ecmt graph; ecmt never unpickles files"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle, not an ecmt graph; ecmt never unpickles files"
    if head[:1] == b"\x08" and head[2:3] == b"\x12":     # ONNX ModelProto: ir_version, then producer_name
        return "an ONNX model, not an ecmt graph"
    return None


def _sniff(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(16)
    # A safetensors file: 8-byte little-endian header length, then the JSON header.
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > path.stat().st_size - 8:
            raise GraphFileError(f"{path}: truncated or corrupt (header of {header_len} bytes "
                                 f"in a {path.stat().st_size}-byte file)")
        return
    what = _looks_like(head)
    if what is not None:
        hint = {"HDF5": "read NIR files with exporters.nir.load and Lava files with exporters.lava.load",
                "ONNX": "ONNX exports run in onnxruntime; ecmt reads its own .ecmt graphs"}
        raise GraphFileError(f"{path}: is {what}",
                             hint=next((h for k, h in hint.items() if k in what), _HINT))
    if len(head) < 8:
        raise GraphFileError(f"{path}: truncated ({len(head)} bytes)")
    raise GraphFileError(f"{path}: not an ecmt graph (no safetensors header)", hint=_HINT)


def load_graph(path) -> SpikingGraph:
    path = Path(path)
    if not path.is_file():
        raise GraphFileError(f"{path}: no such graph file")
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            header = metadata.get(META_KEY)
            if header is None:
                raise GraphFileError(f"{path}: a safetensors file without an ecmt graph description "
                                     f"(no '{META_KEY}' metadata)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise GraphFileError(f"{path}: corrupt or truncated graph file ({err})") from None
    expected = metadata.get(CHECKSUM_KEY)      # (files written before the checksum have none)
    if expected is not None and tensor_checksum(tensors) != expected:
        raise GraphFileError(f"{path}: tensor data do not match the file's checksum (the file is corrupt)",
                             hint="convert or export the graph again")
    try:
        desc = json.loads(header)
    except (ValueError, RecursionError) as err:     # also numbers of > 4300 digits, nesting too deep
        raise GraphFileError(f"{path}: graph description is not valid JSON "
                             f"({type(err).__name__}: {str(err)[:200]})") from None
    return graph_from_json(desc, tensors, source=str(path))


def graph_from_json(desc, tensors: dict[str, torch.Tensor], source: str = "graph") -> SpikingGraph:
    """Build a graph from its description; every field is checked (schema.py)
    before any node is built."""
    meta, records = check_description(desc, source, SpikingGraph.FORMAT, SpikingGraph.VERSION)
    nodes = []
    for i, nd in enumerate(records):
        kwargs = check_node(nd, tensors, NODE_KINDS, i, source)
        nodes.append((NODE_KINDS[nd["kind"]](**kwargs), nd))
    try:
        graph = SpikingGraph([n for n, _ in nodes], meta=meta, validate=False)
        graph.validate()
    except GraphError as err:
        raise GraphError(f"{source}: {err}") from None
    for node, nd in nodes:
        if tuple(nd["shape"]) != graph.shapes[node.name]:
            raise GraphError(f"{source}: node {node.name!r} ({node.KIND}): field shape: recorded "
                             f"{nd['shape']} but inputs give {list(graph.shapes[node.name])}")
        if nd["spiking"] != graph.spiking[node.name]:
            raise GraphError(f"{source}: node {node.name!r} ({node.KIND}): field spiking: recorded "
                             f"{nd['spiking']} but the graph gives {graph.spiking[node.name]}")
    return graph
