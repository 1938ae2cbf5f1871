"""The Lava HDF5 file: lava-dl netx's layout, extended for what netx lacks.

netx reads ``/layer/<i>`` groups in order, each with ``type`` (input, dense,
conv, flatten, ...), ``shape`` (C, H, W order), ``weight``, ``bias`` and a
``neuron`` group whose ``type`` is a netx neuron model (CUBA, SDNN, RF).

* A graph that fits netx -- a sequential stack of linear / conv layers with
  ReLU ECMs between them and no MT neurons, i.e. the analog form of a network
  (``ecmt.convert(..., spiking=False)``) -- is written in netx's own layout as
  a sigma-delta network (neuron type SDNN, zero threshold, sigma output on
  the last layer), so ``lava.lib.dl.netx.hdf5.Network`` loads it directly.
  Weights are netx's integers: ``round(w * 2^6)``.
* Any other graph is written in the same layout, extended: one layer per ecmt
  node in topological order; netx types where the node is one (input, dense,
  conv, flatten), otherwise ``ecmt.<kind>`` (``ecmt.mt_neuron``,
  ``ecmt.softmax_ecm``, ``ecmt.product_ecm``, ``ecmt.add``, ...); every layer
  has ``name``, ``inputs`` (its ordered producers: the edges netx lacks),
  ``attrs`` (JSON) and its tensors as datasets; an MT neuron's ``neuron``
  group has type ``ECMT_MT`` with ``thPos``, ``thNeg``, ``levels``.

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
from ecmt.errors import EcmtError
from ecmt.ir.serialize import graph_from_json, graph_to_json

FORMAT, VERSION = "ecmt.lava_hdf5", 1
NETX_TYPES = {"input": "input", "linear": "dense", "conv2d": "conv", "reshape": "flatten"}
WEIGHT_SCALE = 2 ** 6


class LavaExportError(EcmtError):
    pass


def netx_sequential(graph: ir.SpikingGraph) -> list[ir.Node] | None:
    """The synaptic layers of a graph netx can load as a sigma-delta network, else None."""
    nodes = list(graph)
    if any(isinstance(n, ir.MTNeuron) for n in nodes):
        return None
    chain, prev = [], graph.input.name
    for n in nodes[1:]:
        if n.inputs != (prev,):
            return None
        if isinstance(n, (ir.Linear, ir.Conv2d, ir.ReLUECM, ir.Output)) or (
                isinstance(n, ir.Reshape) and len(n.shape) == 1):
            chain.append(n)
        else:
            return None
        prev = n.name
    layers = [n for n in chain if isinstance(n, (ir.Linear, ir.Conv2d))]
    # ReLU after every layer but the last, nothing after the last; no bias on the last (sigma output)
    relus = [n for n in chain if isinstance(n, ir.ReLUECM)]
    if not layers or len(relus) != len(layers) - 1 or layers[-1].bias is not None:
        return None
    return chain


def export(graph: ir.SpikingGraph, path) -> str:
    """Write the file; returns "netx" or "extended" (the layout used)."""
    graph.validate()
    chain = netx_sequential(graph)
    with atomic_path(Path(path)) as tmp, h5py.File(tmp, "w") as f:
        layers = f.create_group("layer")
        if chain is not None:
            _write_netx(graph, chain, layers)
        else:
            _write_extended(graph, layers)
        e = f.create_group("ecmt")
        e["format"], e["version"] = FORMAT, VERSION
        e["layout"] = "netx" if chain is not None else "extended"
        e["description"] = json.dumps(graph_to_json(graph), separators=(",", ":"))
        if chain is not None:     # the netx layers hold rounded weights: keep the exact ones too
            for node in graph:
                for field, t in node.tensors().items():
                    e[f"tensors/{node.name}.{field}"] = t.numpy()
    return "netx" if chain is not None else "extended"


def _sdnn(group, sigma_output=False):
    n = group.create_group("neuron")
    n["type"], n["vThMant"] = "SDNN", 0.0
    if sigma_output:
        n["sigma_output"] = True


def _write_netx(graph, chain, layers):
    shape = graph.shapes[graph.input.name]
    g = layers.create_group("0")
    g["type"], g["shape"], g["weight"], g["bias"] = "input", np.array(shape), 1, 0
    _sdnn(g)
    synaptic = [n for n in chain if isinstance(n, (ir.Linear, ir.Conv2d))]
    i = 1
    for n in chain:
        if isinstance(n, ir.Reshape):
            g = layers.create_group(str(i))
            g["type"] = "flatten"
            i += 1
        elif isinstance(n, (ir.Linear, ir.Conv2d)):
            g = layers.create_group(str(i))
            g["type"] = "dense" if isinstance(n, ir.Linear) else "conv"
            g["shape"] = np.array(graph.shapes[n.name])
            g["weight"] = np.round(n.weight.numpy() * WEIGHT_SCALE)
            if n.bias is not None:
                g["bias"] = np.round(n.bias.numpy() * WEIGHT_SCALE)
            if isinstance(n, ir.Conv2d):
                g["stride"], g["padding"] = np.array(n.stride), np.array(n.padding)
                g["dilation"], g["groups"] = np.array(n.dilation), n.groups
            _sdnn(g, sigma_output=n is synaptic[-1])
            i += 1


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
