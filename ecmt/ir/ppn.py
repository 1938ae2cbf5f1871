"""Parallel parameter normalization (docs/method.md §2).

On binary-spike hardware a graded MT spike s = lambda_j (one of 2n levels)
travels as a one-hot binary vector b over the levels, and the next synaptic
layer W becomes 2n parallel binary-input layers lambda_j W, so that
sum_j lambda_j W b_j = W s exactly.

``expand_ppn(graph)`` rewrites every MT neuron whose consumers are all
synaptic layers (linear on its last axis, conv2d on its channel axis) into an
``mt_neuron_ppn`` node that emits the one-hot channels, and expands those
layers' weights.  The expanded axis is channel-major: index c * L + j for
channel c and level j (L = 2n levels, or n for positive-only neurons), which
keeps conv groups contiguous.  Neurons feeding products keep graded spikes.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import GraphError
from .graph import SpikingGraph, register
from .neuron import MTNeuron
from .node import Shape, normalize_axis
from .synapse import Conv2d, Linear


@register
@dataclasses.dataclass(eq=False)
class MTNeuronPPN(MTNeuron):
    """An MT neuron emitting its spike as one-hot binary channels along ``axis``:
    output[..., c * L + j, ...] = 1 if the neuron at channel c fired level j.
    Levels j: th_pos * 2^j for j < n, then -th_neg * 2^(j - n)."""
    KIND = "mt_neuron_ppn"
    axis: int = -1

    def infer_shape(self, shapes: list[Shape]) -> Shape:
        x = super().infer_shape(shapes)
        self.axis = normalize_axis(self.axis, len(x))
        shape = list(x)
        shape[self.axis] *= self.channels_per_value
        return tuple(shape)

    @property
    def channels_per_value(self) -> int:
        return 2 * self.levels if self.signed else self.levels


def level_values(node: MTNeuron, channels: int) -> torch.Tensor:
    """[channels, L] level values per channel (thresholds are per tensor or per channel)."""
    def per_channel(th):
        return th.reshape(-1).expand(channels) if th.numel() == 1 else th.reshape(-1)
    powers = 2.0 ** torch.arange(node.levels, dtype=torch.float32)
    pos = per_channel(node.th_pos)[:, None] * powers
    if node.th_neg is None:
        return pos
    return torch.cat([pos, -per_channel(node.th_neg)[:, None] * powers], dim=1)


def _channel_thresholds_ok(node: MTNeuron, shape: Shape, axis: int) -> bool:
    """Thresholds must be per tensor or vary along the expanded axis only."""
    for th in (node.th_pos, node.th_neg):
        if th is None or th.numel() == 1:
            continue
        aligned = (1,) * (len(shape) - th.dim()) + tuple(th.shape)
        if [i for i, d in enumerate(aligned) if d != 1] != [axis]:
            return False
    return True


def expand_ppn(graph: SpikingGraph) -> SpikingGraph:
    consumers = graph.consumers()
    nodes, replaced = [], {}
    for node in graph:
        node = dataclasses.replace(node, inputs=tuple(node.inputs), meta=dict(node.meta))
        if isinstance(node, MTNeuron) and not isinstance(node, MTNeuronPPN):
            users = [graph[c] for c in consumers[node.name]]
            shape = graph.shapes[node.name]
            axis = -1 if users and all(isinstance(u, Linear) for u in users) else \
                0 if users and len(shape) == 3 and all(isinstance(u, Conv2d) for u in users) else None
            if axis is not None and node.spikes_per_step > 1:
                # A k-level spike is a k-hot vector; this form and its runtimes are one-hot.
                raise GraphError(f"node {node.name!r} (mt_neuron): field spikes_per_step: the PPN (binary "
                                 f"spike) form sends one level per step, this neuron sends up to "
                                 f"{node.spikes_per_step}; export it without --ppn (graded spikes)")
            if axis is not None and _channel_thresholds_ok(node, shape, axis % len(shape)):
                ppn = MTNeuronPPN(name=node.name, inputs=node.inputs, th_pos=node.th_pos, th_neg=node.th_neg,
                                  levels=node.levels, axis=axis, meta={**node.meta, "ppn": True})
                replaced[node.name] = (ppn, level_values(node, shape[axis]))
                node = ppn
        elif isinstance(node, (Linear, Conv2d)) and node.inputs[0] in replaced:
            lam = replaced[node.inputs[0]][1]                     # [channels, L]
            node.weight = _expand_weight(node, lam)
        nodes.append(node)
    return SpikingGraph(nodes, meta={**graph.meta, "ppn": True})


def _expand_weight(node, lam: torch.Tensor) -> torch.Tensor:
    w = node.weight
    L = lam.shape[1]
    if isinstance(node, Linear):                              # [out, in] -> [out, in * L]
        return (w[:, :, None] * lam[None]).reshape(w.shape[0], -1).contiguous()
    out_ch, cg, kh, kw = w.shape                             # conv: per output, its group's channels
    group = torch.arange(out_ch) // (out_ch // node.groups)
    lam_g = lam.view(node.groups, cg, L)[group]              # [out, cg, L]
    return (w[:, :, None] * lam_g[..., None, None]).reshape(out_ch, cg * L, kh, kw).contiguous()
