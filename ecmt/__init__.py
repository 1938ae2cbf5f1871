"""ecmt: convert trained Vision Transformers to spiking networks (ECMT) and
deploy them to neuromorphic toolchains.

    spiking = ecmt.convert(model, calib_batches)    # -> SpikingModel
    estimates = spiking(x, T=8)                      # [T, B, classes]
    spiking.graph.save("model.ecmt")                 # the intermediate spiking graph
"""
from .convert import convert
from .errors import EcmtError
from .ir import SpikingGraph
from .runtime import SpikingModel

__version__ = "0.1.0"
__all__ = ["EcmtError", "SpikingGraph", "SpikingModel", "convert", "__version__"]
