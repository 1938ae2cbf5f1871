"""PyTorch execution of the intermediate spiking graph."""
from .executor import GraphExecutor, Observer
from .model import SpikingModel

__all__ = ["GraphExecutor", "Observer", "SpikingModel"]
