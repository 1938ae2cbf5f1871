"""The intermediate spiking graph (IR): node kinds, graph, validation, file format."""
from .arith import Add, Scale
from .ecm import GELUECM, ElementwiseECM, LayerNormECM, NonlinearityECM, ProductECM, ReLUECM, SoftmaxECM
from .graph import NODE_KINDS, Edge, SpikingGraph
from .io import Constant, Input, Output
from .neuron import MTNeuron
from .node import Node, Shape
from .pool import AvgPool2d, MaxPool2d
from .ppn import MTNeuronPPN, expand_ppn
from .serialize import load_graph, save_graph
from .shape import Concat, Mean, Permute, Reshape, Select, Slice
from .summary import summarize
from .synapse import Conv2d, Linear

__all__ = [
    "Add", "AvgPool2d", "Concat", "Constant", "Conv2d", "Edge", "ElementwiseECM", "GELUECM", "Input", "LayerNormECM",
    "Linear", "MTNeuron", "MTNeuronPPN", "MaxPool2d", "Mean", "NODE_KINDS", "Node", "NonlinearityECM", "Output",
    "Permute", "ProductECM", "ReLUECM", "Reshape", "Scale", "Select", "Shape", "Slice",
    "SoftmaxECM", "SpikingGraph", "expand_ppn", "load_graph", "save_graph", "summarize",
]
