"""NIR export and import (NIR 1.0.8) with the ecmt-nir convention, and a
nirtorch node map that runs the files exactly (docs/nir.md).

* ``export(graph, path)``: write a NIR file; ``load(path)``: read it back.
* ``torch_node_map()``: run an ecmt NIR file with ``nirtorch.nir_to_torch``.
"""
from __future__ import annotations

from pathlib import Path

from ecmt import ir
from ecmt.atomic import atomic_path
from ecmt.ir.unit import unit_thresholds as unit_threshold_graph

from .reader import NirImportError, load
from .torch_map import torch_node_map
from .writer import CONVENTION, NEURONS, TARGETS, VERSION, ExportSummary, NirExportError, to_nir

__all__ = ["CONVENTION", "NEURONS", "TARGETS", "VERSION", "ExportSummary", "NirExportError", "NirImportError",
           "export", "load", "to_nir", "torch_node_map"]

TARGET_NEURON = {"norse": "IF", "snntorch": "LIF", "sinabs": "IF"}   # for the nodes written as before


def export(graph: ir.SpikingGraph, path, *, ppn: bool = False, neuron: str = "IF",
           unit_thresholds: bool = False, target: str | None = None, verbose: bool = False) -> ExportSummary:
    """Write `graph` as a NIR file (HDF5).  With ppn=True, MT neurons that feed
    synaptic layers are written in parallel-parameter-normalized binary form
    (ecmt.ir.ppn).  `neuron` ("IF" or "LIF") is the NIR neuron that stands for
    an MT neuron in consumers that ignore ecmt's metadata ("LIF" for snnTorch
    1.0.0, docs/nir.md); with unit_thresholds=True the thresholds that can move
    into the weights do (ecmt.ir.unit), and a standard node after every other MT
    neuron multiplies by its threshold, so that those consumers' unit spikes
    have the right size on skip paths and pools too.  `target` ("norse", "snntorch" or
    "sinabs") writes the file for that library: MT neurons and max pools as standard
    subgraphs that it computes like the executor (docs/nir.md, "Files for one consumer");
    it sets `neuron`, and sinabs' file has unit thresholds.  Returns (and with verbose
    prints) how many nodes are standard and how many use the convention, by kind."""
    import nir
    if target is not None:
        if target not in TARGETS:
            raise NirExportError(f"target {target!r}: must be one of {', '.join(TARGETS)}")
        if ppn:
            raise NirExportError(f"target {target!r}: a file for one consumer has no binary-spike (ppn) form")
        neuron, unit_thresholds = TARGET_NEURON[target], unit_thresholds or target == "sinabs"
    normalized = None
    if unit_thresholds:
        graph, normalized = unit_threshold_graph(graph)
    if ppn:
        graph = ir.expand_ppn(graph)
    nir_graph, summary = to_nir(graph, neuron, spike_sizes=unit_thresholds, target=target)
    summary.unit_thresholds = normalized
    with atomic_path(Path(path)) as tmp:
        nir.write(str(tmp), nir_graph)
        _drop_zero_v_reset(tmp)
        nir.read(str(tmp))            # what we write must be what NIR accepts
    if verbose:
        print(summary)
    return summary


def _drop_zero_v_reset(path) -> None:
    """Delete the all-zero ``v_reset`` datasets of neuron nodes: nir 1.0.8 reads a missing
    v_reset as 0, and nir 1.0.4 (sinabs' pin) refuses IF / LIF nodes that have one."""
    import h5py
    with h5py.File(path, "r+") as f:
        for node in f["node/nodes"].values():
            if "v_reset" in node and not node["v_reset"][()].any():
                del node["v_reset"]
