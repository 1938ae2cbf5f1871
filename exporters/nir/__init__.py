"""NIR export and import (NIR 1.0.8) with the ecmt-nir convention, and a
nirtorch node map that runs the files exactly (docs/nir.md).

* ``export(graph, path)``: write a NIR file; ``load(path)``: read it back.
* ``torch_node_map()``: run an ecmt NIR file with ``nirtorch.nir_to_torch``.
"""
from __future__ import annotations

from pathlib import Path

from ecmt import ir
from ecmt.atomic import atomic_path

from .reader import NirImportError, load
from .torch_map import torch_node_map
from .writer import CONVENTION, VERSION, ExportSummary, NirExportError, to_nir

__all__ = ["CONVENTION", "VERSION", "ExportSummary", "NirExportError", "NirImportError", "export", "load",
           "to_nir", "torch_node_map"]


def export(graph: ir.SpikingGraph, path, *, ppn: bool = False, verbose: bool = False) -> ExportSummary:
    """Write `graph` as a NIR file (HDF5).  With ppn=True, MT neurons that feed
    synaptic layers are written in parallel-parameter-normalized binary form
    (ecmt.ir.ppn).  Returns (and with verbose prints) how many nodes are standard
    and how many use the convention, by kind."""
    import nir
    if ppn:
        graph = ir.expand_ppn(graph)
    nir_graph, summary = to_nir(graph)
    with atomic_path(Path(path)) as tmp:
        nir.write(str(tmp), nir_graph)
        nir.read(str(tmp))            # what we write must be what NIR accepts
    if verbose:
        print(summary)
    return summary
