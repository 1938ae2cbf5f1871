"""Lava exporter: an HDF5 file in lava-dl netx's layout (extended for what
netx lacks), and a runnable network of Lava processes."""
from .network import LavaNetwork


def build(path_or_graph, fixed_point: bool = False, record_spikes: bool = False) -> LavaNetwork:
    """A runnable Lava process network from a graph or an exported file."""
    from ecmt import ir
    graph = path_or_graph if isinstance(path_or_graph, ir.SpikingGraph) else load(path_or_graph)
    return LavaNetwork(graph, fixed_point=fixed_point, record_spikes=record_spikes)


def export(graph, path):
    from .hdf5 import export as _export
    return _export(graph, path)


def load(path):
    from .hdf5 import load as _load
    return _load(path)


__all__ = ["LavaNetwork", "build", "export", "load"]
