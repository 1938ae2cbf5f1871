"""Analog work per element, in primitive operations.

Neuromorphic cores only add; everything else (the ECM nonlinearities and their
bookkeeping, products' output bookkeeping, residual adds, layers fed by analog
values) runs on a host or embedded processor and is charged as the primitive
operations below.  A "special" is one transcendental (exp, erf, rsqrt), charged
as SPECIAL_MACS multiply-accumulates (a short polynomial).  These counts are
our assumptions, stated once here; docs/energy.md explains them.
"""
from __future__ import annotations

import math

from ecmt import ir
from ecmt.ir.dispatch import KindTable

SPECIAL_MACS = 8

# f itself, per input element: (adds, mults, specials).  Row-wise functions
# spread their per-row work (a sum, a division, a square root) over the row.
FUNCTION_OPS = {
    "softmax_ecm": (3, 1, 1),     # max, subtract, exp, sum, divide
    "layernorm_ecm": (4, 3, 0),   # mean, centre, square, variance sum, normalize, affine (+1 rsqrt per row)
    "gelu_ecm": (2, 4, 1),        # 0.5 x (1 + erf(x / sqrt 2))
    "relu_ecm": (1, 0, 0),        # one compare
    "elementwise_ecm": (1, 2, 1),  # sigmoid 1 / (1 + exp(-x)) and SiLU's x * it (hardswish: less)
    "maxpool2d_ecm": (0, 0, 0),   # compares counted per window element
}

# Expectation-compensation bookkeeping per element and step: S += x, S / t,
# f(.) * t, minus the previous running output.
ECM_BOOKKEEPING = (2, 2)          # (adds, mults)

# Product ECM per output element and step: P * scale / t, minus the previous running output.
PRODUCT_BOOKKEEPING = (1, 1)


def mt_update_ops(node) -> int:
    """Adds (and compares) of one MT neuron update on a CMOS datapath: add the input, compare
    against each level, subtract the spike.  With spikes_per_step k > 1 each level's compare
    is against the remainder |v| - s (a subtract, a compare) and a fired level adds into s."""
    return node.levels + 2 if node.spikes_per_step == 1 else 2 * node.levels + 2


def forward_work(graph, node) -> dict[str, int]:
    """The ANN's own work at `node` in one forward of one sample: macs (a convolution
    counted over its zero-padded window, as an accelerator runs it), adds, mults and
    specials.  counting.shape_work (the spiking run) and energy.ann_work (the baseline)
    both start from this one table (`KINDS`).  MT neurons are the ANN's identity (or
    ReLU: one compare per element)."""
    size = lambda name: math.prod(graph.shapes[name])
    w = {"macs": 0, "adds": 0, "mults": 0, "specials": 0}
    w.update(KINDS(node)(graph, node, size, size(node.name)))
    return w


# -- the work of one node kind: (graph, node, size of a node's output, own output size) -> counts
def _linear(graph, node, size, out):
    return dict(macs=size(node.inputs[0]) * node.weight.shape[0], adds=out if node.bias is not None else 0)


def _conv2d(graph, node, size, out):
    _, c_in_g, kh, kw = node.weight.shape
    return dict(macs=out * c_in_g * kh * kw, adds=out if node.bias is not None else 0)


def _product(graph, node, size, out):
    a = graph.shapes[node.inputs[0]]
    return dict(macs=out * (a[-2] if node.transpose_a else a[-1]))


def _mt_neuron(graph, node, size, out):
    return dict(adds=0 if node.signed else out)


def _function(graph, node, size, out):
    adds, mults, specials = FUNCTION_OPS[node.KIND]
    return dict(adds=adds * out, mults=mults * out, specials=specials * out)


def _maxpool2d(graph, node, size, out):
    _, mults, specials = FUNCTION_OPS[node.KIND]
    adds = node.kernel_size[0] * node.kernel_size[1]     # compares per output
    return dict(adds=adds * out, mults=mults * out, specials=specials * out)


def _no_work(graph, node, size, out):
    return {}


KINDS = KindTable("hw_sim pricing", {
    ir.Linear: _linear,
    ir.Conv2d: _conv2d,
    ir.ProductECM: _product,
    ir.MTNeuron: _mt_neuron,
    ir.MTNeuronPPN: _mt_neuron,
    **{ecm: _function for ecm in (ir.SoftmaxECM, ir.LayerNormECM, ir.GELUECM, ir.ReLUECM, ir.ElementwiseECM)},
    ir.MaxPool2d: _maxpool2d,
    ir.Add: lambda graph, node, size, out: dict(adds=(len(node.inputs) - 1) * out),
    ir.Scale: lambda graph, node, size, out: dict(mults=out),
    ir.Mean: lambda graph, node, size, out: dict(adds=size(node.inputs[0]), mults=out),
    ir.AvgPool2d: lambda graph, node, size, out: dict(adds=node.kernel_size[0] * node.kernel_size[1] * out,
                                                      mults=out),
    **{kind: _no_work for kind in (ir.Input, ir.Constant, ir.Output, ir.Reshape, ir.Permute, ir.Slice,
                                   ir.Select, ir.Concat)},
})
