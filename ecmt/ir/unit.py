"""Unit thresholds: the same network with every eligible MT neuron's threshold at 1.

Consumers that run ecmt's NIR files with their own neurons (snnTorch, Norse,
sinabs) emit spikes of size 1, while an MT neuron's spike carries its level
value th * 2^k.  Dividing the neuron's input layer by th and multiplying its
output layers by th moves the threshold into the weights, the usual weight
normalization of ANN-to-SNN conversion:

    W_in, b_in <- W_in / th, b_in / th;   th <- 1;   W_out <- W_out * th.

The spikes are then the level numbers 2^k, and the graph computes the same
estimates (up to float rounding).  A neuron qualifies when it is positive-only
(a converted ReLU) with one threshold, its input is a linear or conv layer
that feeds nothing else, and all its consumers are linear or conv layers.
"""
from __future__ import annotations

import dataclasses

import torch

from .graph import SpikingGraph
from .neuron import MTNeuron
from .ppn import MTNeuronPPN
from .synapse import Conv2d, Linear

SYNAPTIC = (Linear, Conv2d)


def unit_thresholds(graph: SpikingGraph) -> tuple[SpikingGraph, list[str]]:
    """The normalized graph and the names of the neurons it normalized."""
    consumers = graph.consumers()
    nodes = {n.name: dataclasses.replace(n, inputs=tuple(n.inputs), meta=dict(n.meta)) for n in graph}
    done = []
    for node in graph:
        if not isinstance(node, MTNeuron) or isinstance(node, MTNeuronPPN) or node.signed \
                or node.th_pos.numel() != 1:
            continue
        source, users = graph[node.inputs[0]], [graph[c] for c in consumers[node.name]]
        if not isinstance(source, SYNAPTIC) or consumers[source.name] != [node.name] \
                or not users or not all(isinstance(u, SYNAPTIC) for u in users):
            continue
        th = node.th_pos.reshape(()).float()
        src = nodes[source.name]
        src.weight = src.weight / th
        if src.bias is not None:
            src.bias = src.bias / th
        nodes[node.name].th_pos = torch.ones_like(node.th_pos)
        nodes[node.name].meta["unit_threshold"] = float(th)
        for user in users:
            nodes[user.name].weight = nodes[user.name].weight * th
        done.append(node.name)
    return SpikingGraph(list(nodes.values()), meta={**graph.meta, "unit_thresholds": len(done)}), done
