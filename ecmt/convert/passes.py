"""Graph passes between lowering and calibration.

``simplify`` folds what the IR can say more directly (a transpose or a scalar
scale next to a product ECM, a per-channel scale or shift after a synaptic
layer, which is how batch norm and LayerScale arrive, no-op shape ops).  ``place_neurons`` inserts the
MT neurons (docs/method.md §4) by one rule, the same for ViTs and ReLU
networks:

* every ReLU becomes a positive-only MT neuron;
* every operand of a synaptic layer or product ECM that is analog gets an MT
  neuron in front, unless it is (a) computed from the input image by linear
  operations only (the patch embedding / first layer stays analog) or (b) the
  consumer is a readout layer, whose output reaches the model output through
  linear operations only (the classifier head stays analog).
"""
from __future__ import annotations

import torch

from .. import ir
from ..ir import analysis

SYNAPTIC = (ir.Linear, ir.Conv2d, ir.ProductECM)


def _consumers(nodes: list[ir.Node]) -> dict[str, list[ir.Node]]:
    out: dict[str, list[ir.Node]] = {n.name: [] for n in nodes}
    for n in nodes:
        for src in n.inputs:
            out[src].append(n)
    return out


def _rewire(nodes: list[ir.Node], old: str, new: str, only: set[str] | None = None) -> None:
    for n in nodes:
        if only is None or n.name in only:
            n.inputs = tuple(new if i == old else i for i in n.inputs)


def prune(nodes: list[ir.Node]) -> list[ir.Node]:
    """The nodes the output depends on (a model may compute what it never uses)."""
    live = {n.name for n in nodes if isinstance(n, ir.Output)}
    for n in reversed(nodes):
        if n.name in live:
            live.update(n.inputs)
    return [n for n in nodes if n.name in live]


def _per_channel(t: torch.Tensor, out_shape: tuple[int, ...], channel_axis: int) -> torch.Tensor | None:
    """t as a vector over the layer's output channels, if t broadcasts to the
    layer output [.., C, ..] varying along the channel axis only; else None."""
    channels = out_shape[channel_axis]
    if t.numel() == 1:
        return t.reshape(1).expand(channels)
    if t.dim() > len(out_shape):
        return None
    shape = (1,) * (len(out_shape) - t.dim()) + tuple(t.shape)
    if shape[channel_axis] == channels and t.numel() == channels:
        return t.reshape(channels)
    return None


def _fold_into_synapses(nodes: list[ir.Node], shapes: dict[str, tuple[int, ...]]) -> None:
    """A scale by a per-channel factor, or an add of a per-channel constant, whose
    input is a linear/conv layer used by nothing else becomes part of that layer's
    weight and bias (batch norm, LayerScale): one synaptic layer instead of three
    nodes, so the simulator and exporters see the network the hardware runs."""
    by_name = {n.name: n for n in nodes}
    consumers = _consumers(nodes)
    folded: set[str] = set()
    for n in nodes:
        if isinstance(n, ir.Scale):
            layer, other = by_name[n.inputs[0]], None
        elif isinstance(n, ir.Add) and len(n.inputs) == 2:
            a, b = (by_name[i] for i in n.inputs)
            layer, other = (a, b) if isinstance(b, ir.Constant) else (b, a)
            if not isinstance(other, ir.Constant):
                continue
        else:
            continue
        if not isinstance(layer, (ir.Linear, ir.Conv2d)) or len(consumers[layer.name]) != 1:
            continue
        axis = 0 if isinstance(layer, ir.Conv2d) else len(shapes[layer.name]) - 1
        vec = _per_channel(n.factor if other is None else other.value, shapes[layer.name], axis)
        if vec is None:
            continue
        vec = vec.to(layer.weight.dtype)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(vec)
        if other is None:
            layer.weight = (layer.weight * vec.reshape(-1, *[1] * (layer.weight.dim() - 1))).contiguous()
            layer.bias = None if layer.bias is None else (bias * vec).contiguous()
        else:
            layer.bias = (bias + vec).contiguous()
        # the layer now computes what n computed: its consumers read the layer
        _rewire(nodes, n.name, layer.name)
        folded.add(n.name)
        consumers = _consumers([m for m in nodes if m.name not in folded])


def simplify(nodes: list[ir.Node], shapes: dict[str, tuple[int, ...]]) -> list[ir.Node]:
    _fold_into_synapses(nodes, shapes)
    by_name = {n.name: n for n in nodes}
    consumers = _consumers(nodes)
    for n in nodes:
        if not isinstance(n, ir.ProductECM):
            continue
        for pos, flag in ((0, "transpose_a"), (1, "transpose_b")):
            src = by_name[n.inputs[pos]]
            # A permute that only swaps the last two axes becomes a transpose flag.
            if isinstance(src, ir.Permute) and len(consumers[src.name]) == 1 and \
                    list(src.dims) == [*range(len(src.dims) - 2), len(src.dims) - 1, len(src.dims) - 2]:
                setattr(n, flag, not getattr(n, flag))
                n.inputs = tuple(src.inputs[0] if i == pos else x for i, x in enumerate(n.inputs))
                src = by_name[n.inputs[pos]]
            # A scalar scale on an operand moves into the product's scale.
            if isinstance(src, ir.Scale) and src.factor.numel() == 1 and len(consumers[src.name]) == 1:
                n.scale = float(n.scale * src.factor.item())
                n.inputs = tuple(src.inputs[0] if i == pos else x for i, x in enumerate(n.inputs))
        consumers = _consumers(nodes)
    for n in nodes:   # shape ops that change nothing
        if (isinstance(n, ir.Reshape) and tuple(n.shape) == shapes[n.inputs[0]]) or \
                (isinstance(n, ir.Permute) and list(n.dims) == sorted(n.dims)) or \
                (isinstance(n, ir.Add) and len(n.inputs) == 1):
            _rewire(nodes, n.name, n.inputs[0])
    return prune(nodes)


def _analog_through_linear_only(nodes: list[ir.Node]) -> dict[str, bool]:
    """Nodes computed from the input and constants by linear operations only."""
    raw: dict[str, bool] = {}
    for n in nodes:
        raw[n.name] = isinstance(n, (ir.Input, ir.Constant)) or (
            n.LINEAR and not isinstance(n, ir.Output) and all(raw[i] for i in n.inputs))
    return raw


def _readout(nodes: list[ir.Node]) -> set[str]:
    """Nodes whose output reaches the model output through linear operations only."""
    consumers = _consumers(nodes)
    out: set[str] = set()
    for n in reversed(nodes):
        cs = consumers[n.name]
        if isinstance(n, ir.Output) or (cs and all(c.LINEAR and c.name in out for c in cs)):
            out.add(n.name)
    return out


def _role(name: str, by_name: dict[str, ir.Node]) -> str:
    """What an MT neuron spikes: the producing operation, seen through shape ops."""
    src = analysis.producer(by_name, name).node
    if isinstance(src, ir.ElementwiseECM):
        return src.function
    return {ir.LayerNormECM: "layernorm", ir.GELUECM: "gelu", ir.SoftmaxECM: "softmax",
            ir.ProductECM: "product", ir.Linear: "linear", ir.Conv2d: "conv",
            ir.ReLUECM: "relu"}.get(type(src), src.KIND)


def place_neurons(nodes: list[ir.Node], levels: int = 8, spikes_per_step: int = 1) -> list[ir.Node]:
    """Insert MT neurons (thresholds 1.0 until calibration)."""
    one = torch.tensor(1.0)
    by_name = {n.name: n for n in nodes}
    out: list[ir.Node] = []
    for n in nodes:
        if isinstance(n, ir.ReLUECM):
            mt = ir.MTNeuron(name=n.name, inputs=n.inputs, th_pos=one.clone(), th_neg=None,
                             levels=levels, spikes_per_step=spikes_per_step, meta={**n.meta, "role": "relu"})
            by_name[n.name] = mt
            out.append(mt)
        else:
            out.append(n)
    nodes = out
    spiking = analysis.spiking(nodes)
    raw = _analog_through_linear_only(nodes)
    readout = _readout(nodes)
    need: dict[str, list[str]] = {}       # analog source -> consumers that want spikes
    for n in nodes:
        if isinstance(n, SYNAPTIC) and n.name not in readout:
            for src in n.inputs:
                if not spiking[src] and not raw[src]:
                    need.setdefault(src, []).append(n.name)
    result: list[ir.Node] = []
    for n in nodes:
        result.append(n)
        if n.name in need:
            mt = ir.MTNeuron(name=f"{n.name}.mt", inputs=(n.name,), th_pos=one.clone(),
                             th_neg=one.clone(), levels=levels, spikes_per_step=spikes_per_step,
                             meta={"role": _role(n.name, by_name), "feeds": need[n.name]})
            _rewire(nodes, n.name, mt.name, only=set(need[n.name]))
            result.append(mt)
    return result
