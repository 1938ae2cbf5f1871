"""NIR exporter and importer (NIR 1.0.8), with the ecmt-nir convention v1.

NIR's node set is closed and it type-checks every edge (the producer's output
type must equal the consumer's input type).  It has synaptic layers, pooling,
flatten, scale and single-threshold neurons, but no multi-threshold neuron, no
ECMs, no products, constants or general shape operations.  The convention
(docs/nir.md) is:

* **Standard nodes** where NIR has the operation: Input, Output; a linear layer
  on a vector becomes ``Affine`` (``Linear`` without bias); a token-wise linear
  layer on [tokens, features] becomes ``Conv1d`` with kernel 1 over the token
  axis (types channels-first: (features, tokens)); ``Conv2d``; ``AvgPool2d``;
  a reshape that merges consecutive axes becomes ``Flatten``; ``Scale``; a
  residual add of equal shapes is a ``Scale`` of ones fed by several edges
  (NIR sums the edges into a node).
* **Convention nodes** for everything else: a standard NIR node of the right
  input/output types whose metadata holds ``ecmt.op`` (JSON: convention name
  and version, IR kind, attributes, ordered inputs) and its tensors as
  ``ecmt.tensor.<field>``.  Carriers: ``IF`` for MT neurons (its parameters are
  a single-level, reset-to-zero approximation for consumers that ignore the
  metadata), ``Scale`` of ones for other shape-preserving nodes, ``SumPool2d``
  for max pooling, and ``Conv1d`` (zero weights) for nodes that change shape,
  on a flat layout (1, elements).
* **Adapters**: NIR-only nodes that change an edge's declared layout between
  what the producer declares and what the consumer needs (``Flatten``, or a
  zero-weight ``Conv1d`` with metadata ``ecmt.adapter``), and *ports*: an
  operand of a multi-input node (product, concat, broadcasting add) is placed
  at its own offset in a shared flat vector by an exact ``Conv1d`` (weights
  0/1), so that NIR's sum of the incoming edges is their concatenation.
* The graph metadata ``ecmt.description`` holds the whole IR description
  (ecmt's own JSON graph format, without tensors), so that import is lossless.

Import reads the file with ``nir.read`` and rebuilds the SpikingGraph from the
description and the tensors (standard NIR fields, or convention metadata).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from ecmt import ir
from ecmt.atomic import atomic_path
from ecmt.errors import EcmtError, GraphError
from ecmt.ir.serialize import graph_from_json, graph_to_json

CONVENTION = "ecmt-nir"
VERSION = 1


class NirExportError(EcmtError):
    """The graph cannot be written as NIR (names the node)."""


class NirImportError(EcmtError):
    """A NIR file cannot be read back as an ecmt graph."""


@dataclasses.dataclass
class ExportSummary:
    standard: dict[str, int]          # IR kind -> nodes exported as standard NIR nodes
    convention: dict[str, int]        # IR kind -> nodes exported with the convention
    adapters: int                     # NIR-only layout adapters and ports

    def __str__(self) -> str:
        fmt = lambda d: ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"
        return (f"NIR export: {sum(self.standard.values())} standard nodes ({fmt(self.standard)}); "
                f"{sum(self.convention.values())} convention nodes ({fmt(self.convention)}); "
                f"{self.adapters} adapters")


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _conv1d_fit(length_in: int, length_out: int) -> tuple[int, int]:
    """(padding, dilation) with which a 2-tap Conv1d maps length_in to length_out."""
    if length_out < length_in:
        return 0, length_in - length_out
    pad = (length_out - length_in + 2) // 2
    return pad, length_in + 2 * pad - length_out


class _Writer:
    def __init__(self, graph: ir.SpikingGraph):
        import nir
        self.nir, self.g = nir, graph
        self.nodes: dict[str, object] = {}
        self.edges: list[tuple[str, str]] = []
        self.declared: dict[str, tuple[int, ...]] = {}   # NIR node -> its output type
        self.source_of: dict[str, str] = {}               # IR node -> NIR node holding its output
        self.adapted: dict[tuple[str, tuple], str] = {}
        self.summary = ExportSummary(collections.Counter(), collections.Counter(), 0)
        self.consumer = ""

    # -- helpers ---------------------------------------------------------------------
    def add(self, name: str, node, out_type, inputs: list[str]) -> str:
        self.nodes[name] = node
        self.declared[name] = tuple(int(d) for d in out_type)
        self.edges.extend((src, name) for src in inputs)
        return name

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.nodes or name in self.g.nodes:
            i += 1
            name = f"{base}_{i}"
        return name

    def carrier_conv1d(self, in_type, out_type, metadata, weight=None, pad_dil=None):
        c_in, l_in = in_type
        c_out, l_out = out_type
        pad, dil = pad_dil or _conv1d_fit(l_in, l_out)
        w = np.zeros((c_out, c_in, 2), np.float32) if weight is None else weight
        return self.nir.Conv1d(input_shape=l_in, weight=w, stride=1, padding=pad, dilation=dil, groups=1,
                               bias=np.zeros(c_out, np.float32), metadata=metadata)

    def adapter(self, src: str, want: tuple[int, ...]) -> str:
        """A NIR node whose output is `src`'s value in the layout `want`."""
        have = self.declared[src]
        if have == want:
            return src
        key = (src, want)
        if key in self.adapted:
            return self.adapted[key]
        meta = {"ecmt.adapter": json.dumps({"convention": CONVENTION, "version": VERSION, "role": "layout",
                                            "from": list(have), "to": list(want)})}
        if math.prod(have) != math.prod(want):
            raise NirExportError(f"node {self.consumer!r}: internal layout mismatch {have} -> {want}")
        name = self.unique(f"{src}.layout")
        self.summary.adapters += 1
        if len(have) == 3:                   # (C, H, W) -> (C, H*W), then on
            node = self.nir.Flatten(input_type={"input": np.array(have)}, start_dim=1, end_dim=2, metadata=meta)
            step = self.add(name, node, node.output_type["output"], [src])
        elif len(want) == 1 and have == (1, want[0]):
            node = self.nir.Flatten(input_type={"input": np.array(have)}, start_dim=0, end_dim=1, metadata=meta)
            step = self.add(name, node, want, [src])
        elif len(have) == 2 and len(want) == 2:
            step = self.add(name, self.carrier_conv1d(have, want, meta), want, [src])
        elif len(have) == 2 and len(want) == 1:
            step = self.adapter(self.adapter(src, (1, want[0])), want)
        else:
            raise NirExportError(
                f"node {self.consumer!r}: NIR cannot change the layout {list(have)} -> {list(want)} "
                "(it has no operation that adds axes)", hint="see docs/nir.md for what can be exported")
        result = self.adapter(step, want) if self.declared[step] != want else step
        self.adapted[key] = result
        return result

    def fits(self, src: str, want: tuple[int, ...]) -> bool:
        return _can_adapt(self.declared[src], tuple(want))

    def ports(self, sources: list[str], sizes: list[int]) -> list[str]:
        """Each operand placed at its offset in a shared flat vector (exact Conv1d)."""
        total, offset, out = sum(sizes), 0, []
        for src, n in zip(sources, sizes):
            flat = self.adapter(src, (1, n))
            if len(sources) == 1:
                return [flat]
            o, gap = offset, total - n
            if 2 * o >= gap + 1:        # late offsets: tap 0 reads x[j - pad]
                w, pad, dil = [1.0, 0.0], o, n + 2 * o - total
            elif 2 * o <= gap - 1:      # early offsets: tap 1 reads x[j - pad + dil]
                w, pad, dil = [0.0, 1.0], gap - o, gap - 2 * o
            else:                       # the middle: a 3-tap kernel, centre tap
                w, pad, dil = [0.0, 1.0, 0.0], o + 1, 1
            meta = {"ecmt.adapter": json.dumps({"convention": CONVENTION, "version": VERSION, "role": "port",
                                                "offset": o, "size": n, "total": total})}
            weight = np.array(w, np.float32).reshape(1, 1, -1)
            node = self.carrier_conv1d((1, n), (1, total), meta, weight=weight, pad_dil=(pad, dil))
            out.append(self.add(self.unique(f"{self.consumer}.port{len(out)}"), node, (1, total), [flat]))
            self.summary.adapters += 1
            offset += n
        return out

    # -- per node ----------------------------------------------------------------------
    def op_meta(self, node: ir.Node, standard: bool, extra: dict | None = None) -> dict:
        meta = {"ecmt.op": json.dumps({"convention": CONVENTION, "version": VERSION, "kind": node.KIND,
                                       "standard": standard, "inputs": list(node.inputs),
                                       "attrs": {k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in node.attrs().items()}, **(extra or {})})}
        if not standard:
            for field, t in node.tensors().items():     # 1-d: HDF5 cannot compress scalars
                meta[f"ecmt.tensor.{field}"] = _np(t).reshape(-1)
        return meta

    def emit(self, node: ir.Node) -> None:
        self.consumer = node.name
        nir, shape = self.nir, self.g.shapes[node.name]
        in_shapes = [self.g.shapes[s] for s in node.inputs]
        src = [self.source_of[s] for s in node.inputs]
        std = lambda: self.summary.standard.update([node.KIND])
        if isinstance(node, ir.Input):
            self.add(node.name, nir.Input(input_type={"input": np.array(shape)},
                                          metadata=self.op_meta(node, True)), shape, [])
            std()
        elif isinstance(node, ir.Output):
            self.add(node.name, nir.Output(output_type={"output": np.array(shape)}, metadata=self.op_meta(node, True)),
                     shape, [self.adapter(src[0], shape)])
            std()
        elif isinstance(node, ir.Linear) and len(in_shapes[0]) in (1, 2) and self.fits(src[0], (
                in_shapes[0] if len(in_shapes[0]) == 1 else (in_shapes[0][1], in_shapes[0][0]))):
            w = _np(node.weight)
            meta = self.op_meta(node, True, {"bias": node.bias is not None})
            if len(in_shapes[0]) == 1:
                nn = (nir.Affine(weight=w, bias=_np(node.bias), metadata=meta) if node.bias is not None
                      else nir.Linear(weight=w, metadata=meta))
                self.add(node.name, nn, shape, [self.adapter(src[0], in_shapes[0])])
            else:   # [tokens, features]: Conv1d with kernel 1, channels-first
                tokens, feats = in_shapes[0]
                bias = _np(node.bias) if node.bias is not None else np.zeros(w.shape[0], np.float32)
                nn = nir.Conv1d(input_shape=tokens, weight=w[:, :, None], stride=1, padding=0, dilation=1,
                                groups=1, bias=bias, metadata=meta)
                self.add(node.name, nn, (w.shape[0], tokens), [self.adapter(src[0], (feats, tokens))])
            std()
        elif isinstance(node, ir.Conv2d) and node.groups == 1 and self.fits(src[0], in_shapes[0]):
            # (NIR 1.0.8 types a grouped Conv2d's input as C / groups channels, which no
            # producer can match; grouped convolutions use the convention.)
            bias = _np(node.bias) if node.bias is not None else np.zeros(node.weight.shape[0], np.float32)
            nn = nir.Conv2d(input_shape=tuple(in_shapes[0][1:]), weight=_np(node.weight), stride=node.stride,
                            padding=node.padding, dilation=node.dilation, groups=node.groups, bias=bias,
                            metadata=self.op_meta(node, True, {"bias": node.bias is not None}))
            self.add(node.name, nn, shape, [self.adapter(src[0], in_shapes[0])])
            std()
        elif isinstance(node, ir.AvgPool2d) and self.fits(src[0], in_shapes[0]):
            nn = nir.AvgPool2d(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride),
                               padding=np.array(node.padding))
            self.add(node.name, nn, shape, [self.adapter(src[0], in_shapes[0])])
            std()
        elif isinstance(node, ir.Reshape) and _flatten_dims(in_shapes[0], shape) is not None \
                and self.fits(src[0], in_shapes[0]):
            start, end = _flatten_dims(in_shapes[0], shape)
            nn = nir.Flatten(input_type={"input": np.array(in_shapes[0])}, start_dim=start, end_dim=end,
                             metadata=self.op_meta(node, True))
            self.add(node.name, nn, shape, [self.adapter(src[0], in_shapes[0])])
            std()
        elif isinstance(node, ir.Scale) and node.factor.numel() == 1:
            have = self.declared[src[0]]
            nn = nir.Scale(scale=np.full(have, float(node.factor), np.float32), metadata=self.op_meta(node, True))
            self.add(node.name, nn, have, [src[0]])
            std()
        elif isinstance(node, ir.Scale) and self.fits(src[0], shape):
            factor = np.broadcast_to(_np(node.factor), shape).copy()
            nn = nir.Scale(scale=factor, metadata=self.op_meta(node, True))
            self.add(node.name, nn, shape, [self.adapter(src[0], in_shapes[0])])
            std()
        elif isinstance(node, ir.Add) and all(s == shape for s in in_shapes):
            target = self.declared[src[0]]
            nn = nir.Scale(scale=np.ones(target, np.float32), metadata=self.op_meta(node, True))
            self.add(node.name, nn, target, [self.adapter(s, target) for s in src])
            std()
        elif isinstance(node, (ir.MTNeuron, ir.NonlinearityECM)) and in_shapes[0] == shape:
            have = self.declared[src[0]]
            meta = self.op_meta(node, False)
            if isinstance(node, ir.MTNeuron):
                nn = nir.IF(r=np.ones(have, np.float32), v_threshold=np.full(have, float(node.th_pos.mean()),
                                                                             np.float32),
                            v_reset=np.zeros(have, np.float32), metadata=meta)
            else:
                nn = nir.Scale(scale=np.ones(have, np.float32), metadata=meta)
            self.add(node.name, nn, have, [src[0]])
            self.summary.convention.update([node.KIND])
        elif isinstance(node, ir.MaxPool2d) and self.fits(src[0], in_shapes[0]):
            nn = nir.SumPool2d(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride),
                               padding=np.array(node.padding), metadata=self.op_meta(node, False))
            self.add(node.name, nn, shape, [self.adapter(src[0], in_shapes[0])])
            self.summary.convention.update([node.KIND])
        else:
            self.generic(node, src, in_shapes, shape)
        self.source_of[node.name] = node.name

    def generic(self, node, src, in_shapes, shape):
        """Any other node: a zero-weight Conv1d carrier on flat layouts."""
        if not src:    # a constant: fed by the graph input, which it ignores
            src, in_shapes = [self.source_of[self.g.input.name]], [self.g.shapes[self.g.input.name]]
        sizes = [math.prod(s) for s in in_shapes]
        ports = self.ports(src, sizes)
        operands = [{"name": n, "size": s} for n, s in zip(node.inputs, sizes)]
        meta = self.op_meta(node, False, {"operands": operands})
        out = (1, math.prod(shape))
        self.add(node.name, self.carrier_conv1d((1, sum(sizes)), out, meta), out, ports)
        self.summary.convention.update([node.KIND])


def _can_adapt(have: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Whether adapters can turn the layout `have` into `want` (NIR cannot add axes)."""
    if have == want:
        return True
    if math.prod(have) != math.prod(want) or len(want) > 2:
        return False
    if len(have) == 3:
        return _can_adapt((have[0], have[1] * have[2]), want)
    return len(have) == 2


def _flatten_dims(a: tuple[int, ...], b: tuple[int, ...]):
    """(start, end) if reshaping a to b merges the axes start..end, else None."""
    if len(b) >= len(a):
        return None
    for start in range(len(a)):
        end = start + len(a) - len(b)
        if a[:start] == b[:start] and a[end + 1:] == b[start + 1:] and math.prod(a[start:end + 1]) == b[start]:
            return start, end
    return None


def to_nir(graph: ir.SpikingGraph):
    """The NIR graph of `graph`, and the export summary."""
    import nir
    graph.validate()
    w = _Writer(graph)
    for node in graph:
        w.emit(node)
    desc = graph_to_json(graph)
    desc["convention"] = {"name": CONVENTION, "version": VERSION}
    meta = {"ecmt.description": json.dumps(desc, separators=(",", ":"))}
    nir_graph = nir.NIRGraph(nodes=w.nodes, edges=w.edges, metadata=meta)
    return nir_graph, w.summary


def export(graph: ir.SpikingGraph, path, *, ppn: bool = False, verbose: bool = False) -> ExportSummary:
    """Write `graph` as a NIR file (HDF5).  With ppn=True, MT neurons that feed
    synaptic layers are written in parallel-parameter-normalized binary form
    (ecmt.ir.ppn).  Returns (and with verbose prints) how many nodes are standard
    and how many use the convention, by kind."""
    import nir
    if ppn:
        from ecmt.ir.ppn import expand_ppn
        graph = expand_ppn(graph)
    nir_graph, summary = to_nir(graph)
    with atomic_path(Path(path)) as tmp:
        nir.write(str(tmp), nir_graph)
        nir.read(str(tmp))            # what we write must be what NIR accepts
    if verbose:
        print(summary)
    return summary


def load(path) -> ir.SpikingGraph:
    """Read a NIR file written by `export` back into a SpikingGraph (lossless)."""
    import nir
    path = Path(path)
    if not path.is_file():
        raise NirImportError(f"{path}: no such NIR file")
    try:
        g = nir.read(str(path))
    except Exception as err:  # noqa: BLE001 - nir raises many kinds
        raise NirImportError(f"{path}: nir.read failed: {type(err).__name__}: {err}") from None
    raw = g.metadata.get("ecmt.description")
    if raw is None:
        raise NirImportError(f"{path}: not an ecmt NIR file (graph metadata has no 'ecmt.description')",
                             hint="only files written by exporters.nir.export can be imported")
    desc = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    conv = desc.get("convention", {})
    if conv.get("name") != CONVENTION or conv.get("version") != VERSION:
        raise NirImportError(f"{path}: unsupported convention {conv} (this ecmt reads {CONVENTION} v{VERSION})")
    tensors = {}
    for nd in desc["nodes"]:
        name = nd["name"]
        if name not in g.nodes:
            raise NirImportError(f"{path}: node {name!r} ({nd['kind']}) is missing from the NIR graph")
        for field, t in _node_tensors(g.nodes[name], nd, path).items():
            tensors[nd["tensors"][field]] = t
    try:
        return graph_from_json(desc, tensors, source=str(path))
    except GraphError as err:
        raise NirImportError(str(err)) from None


def _node_tensors(nn, nd: dict, path) -> dict[str, torch.Tensor]:
    """The IR tensors of one node, from standard NIR fields or convention metadata."""
    name, kind, fields = nd["name"], nd["kind"], nd["tensors"]
    meta = getattr(nn, "metadata", {}) or {}
    op = meta.get("ecmt.op")
    op = json.loads(op.decode() if isinstance(op, bytes) else op) if op is not None else None
    where = f"{path}: node {name!r} ({kind})"
    if op is not None and (op.get("convention") != CONVENTION or op.get("version") != VERSION):
        raise NirImportError(f"{where}: unsupported convention {op.get('convention')} v{op.get('version')}")
    if op is not None and op.get("kind") != kind:
        raise NirImportError(f"{where}: metadata says kind {op.get('kind')!r}")
    standard = type(nn).__name__ in ("Input", "Output", "Affine", "Linear", "Conv1d", "Conv2d", "AvgPool2d",
                                      "Flatten", "Scale") and (op is None or op.get("standard"))
    if not standard:
        if op is None:
            raise NirImportError(f"{where}: convention node without 'ecmt.op' metadata")
        out = {}
        for field in fields:
            arr = meta.get(f"ecmt.tensor.{field}")
            if arr is None:
                raise NirImportError(f"{where}: missing metadata 'ecmt.tensor.{field}'")
            out[field] = torch.from_numpy(np.array(arr, dtype=np.float32).reshape(nd["tensor_shapes"][field]))
        return out
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if kind == "linear":
        w = np.asarray(nn.weight)
        out = {"weight": t(w[:, :, 0] if w.ndim == 3 else w)}
        if "bias" in fields:
            out["bias"] = t(nn.bias)
        return out
    if kind == "conv2d":
        return {"weight": t(nn.weight), **({"bias": t(nn.bias)} if "bias" in fields else {})}
    if kind == "scale":
        shape = nd["tensor_shapes"]["factor"]
        scale = np.asarray(nn.scale)
        if math.prod(shape) == 1:
            return {"factor": t(scale.reshape(-1)[:1].reshape(shape))}
        aligned = (1,) * (scale.ndim - len(shape)) + tuple(shape)
        index = tuple(slice(0, 1) if d == 1 else slice(None) for d in aligned)
        return {"factor": t(scale[index].reshape(shape))}
    return {}
