"""The Lava HDF5 file: lava-dl netx's layout, extended for what netx lacks.

netx reads ``/layer/<i>`` groups in order, each with ``type`` (input, dense,
conv, flatten, ...), ``shape`` (C, H, W order), ``weight``, ``bias`` and a
``neuron`` group whose ``type`` is a netx neuron model (CUBA, SDNN, RF).

* **netx layout** (``netx.py``): a ReLU MLP or CNN -- a chain of linear /
  conv layers with positive-only MT neurons (or ReLUs) between them -- as a
  netx sigma-delta network with integer weights, biases and thresholds, which
  ``lava.lib.dl.netx.hdf5.Network`` builds and runs with its own blocks and
  neuron models.  Other graphs are refused (``netx.NetxLayoutError``).
* **extended layout**, for any graph: one layer per ecmt node in topological
  order; netx types where the node is one (input, dense, conv, flatten),
  otherwise ``ecmt.<kind>`` (``ecmt.mt_neuron``, ``ecmt.softmax_ecm``,
  ``ecmt.product_ecm``, ``ecmt.add``, ...); every layer has ``name``,
  ``inputs`` (its ordered producers: the edges netx lacks), ``attrs`` (JSON)
  and its tensors as datasets; an MT neuron's ``neuron`` group has type
  ``ECMT_MT`` with ``thPos``, ``thNeg``, ``levels``, ``spikesPerStep`` (k:
  the graded payload is the sum of up to k levels).  netx cannot run it;
  ``exporters.lava.build`` does.

Both forms carry ``/ecmt/description``: ecmt's own JSON graph description, so
``load`` rebuilds the graph exactly from any file this module writes.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from ecmt import ir
from ecmt.atomic import atomic_path
from ecmt.ir.serialize import graph_from_json, graph_to_json

from .errors import LavaExportError

FORMAT, VERSION = "ecmt.lava_hdf5", 1
NETX_TYPES = {"input": "input", "linear": "dense", "conv2d": "conv", "reshape": "flatten"}
LAYOUTS = ("auto", "netx", "extended")


def export(graph: ir.SpikingGraph, path, layout: str = "auto", *, delta: float | None = None,
           calib=None) -> str:
    """Write the file; returns the layout used, "netx" or "extended".

    layout: "netx" (refused with netx.NetxLayoutError, naming the node, for a
    graph netx cannot express), "extended", or "auto" (netx where it can).
    delta: the netx layout's delta threshold as a fraction of each MT neuron's
    threshold (default netx.DEFAULT_DELTA); calib: inputs whose analog
    activations set the netx layout's integer ranges (default: from the
    thresholds).  Nothing is written when the export fails."""
    from . import netx
    if layout not in LAYOUTS:
        raise LavaExportError(f"unknown Lava layout {layout!r}", hint=f"use one of {', '.join(LAYOUTS)}")
    graph.validate()
    netx_plan = None
    if layout != "extended":
        try:
            netx_plan = netx.plan(graph, delta=netx.DEFAULT_DELTA if delta is None else delta, calib=calib)
        except netx.NetxLayoutError:
            if layout == "netx":
                raise
    used = "netx" if netx_plan is not None else "extended"
    with atomic_path(Path(path)) as tmp, h5py.File(tmp, "w") as f:
        layers = f.create_group("layer")
        e = f.create_group("ecmt")
        if netx_plan is not None:
            netx.write(netx_plan, layers, e)
        else:
            _write_extended(graph, layers)
        e["format"], e["version"] = FORMAT, VERSION
        e["layout"] = used
        e["description"] = json.dumps(graph_to_json(graph), separators=(",", ":"))
        if netx_plan is not None:     # the netx layers hold integers: keep the exact tensors too
            for node in graph:
                for field, t in node.tensors().items():
                    e[f"tensors/{node.name}.{field}"] = t.numpy()
    return used


def _write_extended(graph, layers):
    for i, node in enumerate(graph):
        g = layers.create_group(str(i))
        kind = node.KIND
        g["type"] = NETX_TYPES.get(kind, f"ecmt.{kind}") if not (
            kind == "reshape" and len(graph.shapes[node.name]) != 1) else f"ecmt.{kind}"
        g["name"] = node.name
        g["inputs"] = json.dumps(list(node.inputs))
        g["shape"] = np.array(graph.shapes[node.name])
        g["attrs"] = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in node.attrs().items()})
        for field, t in node.tensors().items():
            g[field] = t.numpy()
        if isinstance(node, ir.MTNeuron):
            n = g.create_group("neuron")
            n["type"], n["levels"] = "ECMT_MT", node.levels
            n["spikesPerStep"] = node.spikes_per_step       # the graded payload is the sum of up to this many levels
            n["thPos"] = node.th_pos.numpy()
            if node.th_neg is not None:
                n["thNeg"] = node.th_neg.numpy()


def load(path) -> ir.SpikingGraph:
    path = Path(path)
    if not path.is_file():
        raise LavaExportError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            e = f.get("ecmt")
            if e is None or e["format"][()].decode() != FORMAT:
                raise LavaExportError(f"{path}: not an ecmt Lava file (no /ecmt/format)")
            if int(e["version"][()]) != VERSION:
                raise LavaExportError(f"{path}: unsupported version {int(e['version'][()])}")
            desc = json.loads(e["description"][()])
            tensors = {}
            if e["layout"][()].decode() == "netx":
                for key, ds in e["tensors"].items():
                    tensors[key] = torch.from_numpy(np.asarray(ds[()], np.float32))
            else:
                for g in f["layer"].values():
                    name = g["name"][()].decode()
                    for key in g.keys():
                        if key not in ("type", "name", "inputs", "shape", "attrs", "neuron"):
                            tensors[f"{name}.{key}"] = torch.from_numpy(np.asarray(g[key][()], np.float32))
    except (OSError, KeyError) as err:
        raise LavaExportError(f"{path}: unreadable ecmt Lava file ({err})") from None
    return graph_from_json(desc, tensors, source=str(path))
