"""Lava exporter: an HDF5 file in lava-dl netx's layout -- the netx layout,
which netx itself runs (a ReLU MLP / CNN as a sigma-delta network, ``netx.py``),
or the extended one for any graph -- and a runnable network of ecmt's own
Lava processes (``build``).

Lava itself is imported only by ``build``/``LavaNetwork`` and ``netx.run``:
importing it sets multiprocessing's start method, which fails in a process
that has already chosen one (after torch.compile, for example), and the HDF5
export does not need it.
"""
from .hdf5 import export, load


def build(path_or_graph, fixed_point: bool = False, record_spikes: bool = False):
    """A runnable Lava process network (`LavaNetwork`) from a graph or an exported file."""
    from ecmt import ir

    from .network import LavaNetwork
    graph = path_or_graph if isinstance(path_or_graph, ir.SpikingGraph) else load(path_or_graph)
    return LavaNetwork(graph, fixed_point=fixed_point, record_spikes=record_spikes)


def __getattr__(name):
    if name == "LavaNetwork":
        from .network import LavaNetwork
        return LavaNetwork
    raise AttributeError(name)


__all__ = ["LavaNetwork", "build", "export", "load"]
