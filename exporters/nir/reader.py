"""NIR file written by ecmt -> SpikingGraph (lossless).

The graph metadata ``ecmt.description`` is ecmt's own JSON description of the
graph (docs/ir.md); tensors come from the standard NIR fields (weights,
biases, scales) or from the convention metadata.  Adds written as
converging edges have no tensors and no NIR node of their own.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ecmt.errors import EcmtError, GraphError
from ecmt.ir.serialize import graph_from_json

from .layout import Layout, to_ir
from .writer import CONVENTION, VERSION

STANDARD_TYPES = ("Input", "Output", "Affine", "Linear", "Conv1d", "Conv2d", "AvgPool2d", "Flatten", "Scale")


class NirImportError(EcmtError):
    """A NIR file cannot be read back as an ecmt graph."""


def decode(raw) -> dict:
    """A JSON metadata entry as NIR hands it back (str, bytes or numpy bytes)."""
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


def load(path):
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
    desc = decode(raw)
    conv = desc.pop("convention", {})          # NIR's own key; the rest is the graph description
    if conv.get("name") != CONVENTION or conv.get("version") != VERSION:
        raise NirImportError(f"{path}: unsupported convention {conv} (this ecmt reads {CONVENTION} v{VERSION})",
                             hint="export the graph again with this ecmt version")
    roles = decode(g.metadata["ecmt.nodes"]) if "ecmt.nodes" in g.metadata else {}
    tensors = {}
    for nd in desc["nodes"]:
        name = nd["name"]
        if name not in g.nodes:
            if not nd["tensors"] and nd["kind"] == "add":       # written as converging edges
                continue
            raise NirImportError(f"{path}: node {name!r} ({nd['kind']}) is missing from the NIR graph")
        for field, t in _node_tensors(g.nodes[name], nd, roles.get(name), path).items():
            tensors[nd["tensors"][field]] = t
    try:
        return graph_from_json(desc, tensors, source=str(path))
    except GraphError as err:
        raise NirImportError(str(err)) from None


def _node_tensors(nn, nd: dict, role: dict | None, path) -> dict[str, torch.Tensor]:
    """The IR tensors of one node, from standard NIR fields or convention metadata."""
    name, kind, fields = nd["name"], nd["kind"], nd["tensors"]
    meta = getattr(nn, "metadata", {}) or {}
    op = decode(meta["ecmt.op"]) if "ecmt.op" in meta else None
    where = f"{path}: node {name!r} ({kind})"
    if op is not None and (op.get("convention") != CONVENTION or op.get("version") != VERSION):
        raise NirImportError(f"{where}: unsupported convention {op.get('convention')} v{op.get('version')}")
    if op is not None and op.get("kind") != kind:
        raise NirImportError(f"{where}: metadata says kind {op.get('kind')!r}")
    if op is not None:          # a convention node: its tensors travel in the metadata
        out = {}
        for field in fields:
            arr = meta.get(f"ecmt.tensor.{field}")
            if arr is None:
                raise NirImportError(f"{where}: missing metadata 'ecmt.tensor.{field}'")
            out[field] = torch.from_numpy(np.array(arr, dtype=np.float32).reshape(nd["tensor_shapes"][field]))
        return out
    if type(nn).__name__ not in STANDARD_TYPES:
        raise NirImportError(f"{where}: convention node without 'ecmt.op' metadata")
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
        # reshape: t() makes a 0-d factor (a scalar scale, x * -1) 1-d
        return {"factor": t(_unlayout_factor(np.asarray(nn.scale), nd, role)).reshape(nd["tensor_shapes"]["factor"])}
    return {}


def _unlayout_factor(scale: np.ndarray, nd: dict, role: dict | None) -> np.ndarray:
    """A Scale node's factor back in the IR's shape: the writer broadcast it to the
    value's shape and laid it out like the value (its layout in ``ecmt.nodes``)."""
    shape = nd["tensor_shapes"]["factor"]
    value = tuple(nd["shape"])
    if role is None or "layout" not in role or scale.size != math.prod(value):
        raise NirImportError(f"node {nd['name']!r} (scale): field factor: no layout metadata, or a NIR scale of "
                             f"{scale.size} elements for a value of shape {list(value)}")
    full = to_ir(torch.from_numpy(np.ascontiguousarray(scale, np.float32))[None], Layout.from_json(role["layout"]),
                 value)[0].numpy()
    aligned = (1,) * (len(value) - len(shape)) + tuple(shape)
    index = tuple(slice(0, 1) if d == 1 else slice(None) for d in aligned)
    return full[index].reshape(shape)
