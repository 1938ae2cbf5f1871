"""ecmt: convert trained Vision Transformers to spiking networks (ECMT) and
deploy them to neuromorphic toolchains.

    spiking = ecmt.convert(model, calib_batches)    # -> SpikingModel
    one_step = ecmt.convert(model, calib_batches, **ecmt.MULTI_LEVEL)   # the multi-level operating point
    estimates = spiking(x, T=8)                      # [T, B, classes]
    ecmt.save_graph(spiking.graph, "model.ecmt")     # the intermediate spiking graph, one file
    graph = ecmt.load_graph("model.ecmt")
    print(ecmt.summarize(graph))                     # what `ecmt inspect` prints
"""
from .convert import MULTI_LEVEL, convert
from .errors import EcmtError
from .ir import SpikingGraph, load_graph, save_graph, summarize
from .runtime import SpikingModel

__version__ = "0.1.0"
__all__ = ["EcmtError", "MULTI_LEVEL", "SpikingGraph", "SpikingModel", "convert", "load_graph", "save_graph", "summarize",
           "__version__"]
