"""The deployed number format: a graph run in the torch executor as a fixed-point
deployment would run it, for the energy report's "accuracy (deployed)" next to the
float accuracy.  A profile names its format in ``profile.deployment``:

* ``int8-weights`` (cmos45-int8): every Linear / Conv2d weight rounded to 8 bits with one
  scale per output channel, exactly as the Lava exporter's fixed-point synapses quantize
  (exporters/lava/fixed_point.py's ``quantize_int8``, the same function).  Modelled: the
  weights only.  Not modelled: activations, membranes, accumulators and ECM state stay
  float32 (an int8 CMOS datapath would also round those; how is not fixed by the profile).
* ``lava-fixed-point`` (loihi2): what ``exporters.lava.build(graph, fixed_point=True)``
  runs (Lava's ``fixed_pt`` models, docs/lava.md): the same 8-bit weights, and every MT
  neuron (except PPN neurons, which Lava runs on the host) with PyMTNeuronFixed's
  integer membrane: thresholds and levels in units of min(th_pos, th_neg) / 2^F (F =
  ``fraction_bits(levels)``), each step's input rounded to the unit, integer comparisons,
  the spike sent as (integer level) x unit.  Modelled exactly, in the same float32 /
  integer operations; host nodes stay float32 as in Lava.  What is not bit-identical:
  the synaptic sums (Lava's numpy and torch add in different orders, so a membrane input
  may differ in its last float32 bit and, rarely, round to the other integer).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from ecmt import ir
from ecmt.errors import EcmtError
from ecmt.runtime import GraphExecutor
from exporters.lava.fixed_point import fraction_bits, quantize_int8

# The formats, as the report names them.
FORMATS = {
    "float": "float32",
    "int8-weights": "int8 weights, per-channel scales",
    "lava-fixed-point": "Lava fixed point: int8 weights, integer membranes",
}
# What each format models and what it leaves out, for the report.
MODELLED = {
    "int8-weights": ("weights rounded as exporters/lava/fixed_point.quantize_int8 (per output channel)",
                     "activations, membranes, accumulators and ECM state stay float32"),
    "lava-fixed-point": ("weights as quantize_int8; MT membranes as Lava's PyMTNeuronFixed (integer, "
                         "unit min threshold / 2^fraction_bits(levels)), exactly",
                         "host nodes (ECMs, products, adds, biases, PPN neurons) stay float32, as in Lava; "
                         "synaptic sums in torch's order, not numpy's"),
}


class DeploymentError(EcmtError, ValueError):
    """An unknown deployed number format."""


def quantized_weights(graph: ir.SpikingGraph) -> ir.SpikingGraph:
    """The graph with every Linear / Conv2d weight as the fixed-point Lava synapses hold it:
    round(w / s_c) * s_c in float32, s_c = max |w| of output channel c / 127."""
    nodes = []
    for node in graph:
        if isinstance(node, (ir.Linear, ir.Conv2d)):
            q, scale = quantize_int8(node.weight.detach().cpu().numpy())
            node = copy.copy(node)
            node.weight = torch.from_numpy((q * scale).astype(np.float32))
        nodes.append(node)
    return ir.SpikingGraph(nodes, meta=graph.meta)


class FixedPointMT:
    """An MT neuron with PyMTNeuronFixed's integer membrane (exporters/lava/processes.py),
    in torch: inputs [B, *shape] float32, spikes float32."""

    def __init__(self, node: ir.MTNeuron, shape: tuple[int, ...], device):
        th_pos = torch.broadcast_to(node.th_pos.float(), shape).to(device)
        th_neg = th_pos if node.th_neg is None else torch.broadcast_to(node.th_neg.float(), shape).to(device)
        # float32 as Lava computes them: the unit is exact (a power of two below the threshold)
        self.unit = torch.minimum(th_pos, th_neg) / np.float32(2 ** fraction_bits(node.levels))
        self.th_pos = torch.round(th_pos / self.unit).long()
        self.th_neg = torch.round(th_neg / self.unit).long()
        self.levels, self.k, self.signed = int(node.levels), int(node.spikes_per_step), node.th_neg is not None
        self.v = None

    def reset(self):
        self.v = None

    def step(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.round(x.float() / self.unit).long()
        v = q if self.v is None else self.v + q
        pos = v >= 0
        th = torch.where(pos, self.th_pos, self.th_neg)
        mag = v.abs()
        level = torch.zeros_like(v)
        fired = torch.zeros_like(v)
        for k in range(self.levels - 1, -1, -1):          # from the top: |v| - s >= th 2^k - th / 2
            value = th << k
            crossed = (2 * (mag - level) >= 2 * value - th) & (fired < self.k)
            level = torch.where(crossed, level + value, level)
            fired = fired + crossed.long()
        s = torch.where(pos, level, -level if self.signed else torch.zeros_like(level))
        self.v = v - s
        return (s.double() * self.unit.double()).float()


def executor(graph: ir.SpikingGraph, fmt: str, device=None) -> GraphExecutor:
    """A GraphExecutor that runs `graph` in the deployed number format `fmt`."""
    if fmt not in FORMATS:
        raise DeploymentError(f"deployment {fmt!r}: not one of {', '.join(FORMATS)}")
    if fmt == "float":
        return GraphExecutor(graph, device)
    g = quantized_weights(graph)
    ex = GraphExecutor(g, device)
    if fmt == "lava-fixed-point":
        for step in ex.steps:
            node = step.node
            if isinstance(node, ir.MTNeuron) and not isinstance(node, ir.MTNeuronPPN):
                state = FixedPointMT(node, tuple(g.shapes[node.name]), ex.device)
                step.fn = (lambda s: (lambda xs, t: s.step(xs[0])))(state)
                step.state = state
                ex._states[node.name] = state
    return ex
