"""The netx-native layout: a ReLU MLP / CNN as a lava-dl netx sigma-delta network.

``lava.lib.dl.netx.hdf5.Network`` builds a file in this layout with its own
blocks and neuron models (an ``Input`` block with a ``Delta`` encoder,
``Dense`` / ``Conv`` blocks with ``SigmaDelta`` ReLU neurons, a ``Sigma``
readout) and runs it with Loihi2SimCfg's fixed-point models, unchanged.  What
netx computes (lava-nc 0.10 ``lava/proc/sdn/models.py``, lava-dl 0.6
``netx/hdf5.py``; default exponents spike_exp = state_exp = 6):

* ``Delta`` (input): a_in is an integer x_int; scaled by 2^12; the change
  since the last value sent leaves when |change| >= vThMant 2^12, shifted
  right by 6 (so 64 x per unit of x_int);
* dense / conv synapses: a_in = W_int s with integer weights (netx's
  optimize_weight_bits keeps an 8-bit weight exactly), one step late;
* ``SigmaDelta``: sigma += a_in; act = max(sigma + bias_mant 2^12, 0);
  delta = act - act_prev + residue; if |delta| >= vThMant 2^12 the spike is
  delta >> 6 and the residue 0 (the 6 bits the shift drops are lost for
  good), else the residue is delta;
* ``Sigma`` (last layer): sigma += a_in, sent as is.

A layer's mantissa unit (that of biases and thresholds) is 2^12 of its sigma
units and a spike has 6 more fraction bits.  ecmt gives every layer its own
scale r_l (mantissa units per real unit; a ReLU network computes the same
when a layer's activations are scaled by r_l and the weights after it by
1 / r_l):

    x_int = round(r_0 x),  W_int = round(64 r_l / r_(l-1) W),  bias_mant = round(r_l b),
    vThMant = round(r_l vth),  output = sigma_L / (4096 r_L)

chosen so that every weight fits 8 signed bits and every state and synaptic
input 24 bits (Loihi 2's width, from the pre-activation ranges measured on
``calib``, with 2x headroom), losing the fewest bits in the worst place
(``allocate``).

* A positive-only MT neuron of threshold theta becomes a SigmaDelta neuron
  with vth = ``delta`` theta (default theta / 16: an MT neuron fed less than
  theta / 16 per step stays silent for 8 steps).  With an input held
  constant, every layer sends one change per input and the output is the
  quantized ANN's after ``latency`` steps (one per synaptic layer), the same
  at every later step: netx has nothing like the running estimate's
  refinement over T.  The same holds at any ``spikes_per_step`` k: a
  sigma-delta neuron sends its whole change as one graded payload, the
  limit of an MT neuron with k = levels, so the file does not depend on k.
* netx's Sigma readout has no bias: the last layer's bias is carried by one
  extra constant unit (a channel, for a map) of the layer before it.
* netx's ``flatten`` uses Lava's reshape ports, which fail at run time with
  numpy 2: a linear layer after a convolution is written as a convolution
  whose kernel covers the whole map (the same weights), and an MLP's input
  layer is the flat vector.
* netx's Input block leaves its own input port unconnected: ``run`` feeds
  the Delta encoder's port, as lava-dl's own tests do.

Graphs netx cannot express (signed or PPN MT neurons, ECMs, residual adds,
pooling, other shape operations) are refused with ``NetxLayoutError``,
naming the node.  ``emulate`` is netx's integer arithmetic in numpy (equal to
netx's output bit for bit; tests/test_export_lava.py), ``reference`` what
netx's output is compared with, ``run`` runs a file in netx itself.
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import torch

from ecmt import ir
from ecmt.ir.dispatch import KindTable, Refused

from .errors import LavaExportError

SPIKE_EXP = STATE_EXP = 6               # netx.hdf5.Network's defaults for SDNN neurons
STATE_LIMIT = 2 ** 23                   # signed 24-bit state and synaptic input (Loihi 2)
WEIGHT_LIMIT = 127                      # signed 8-bit weights
DEFAULT_DELTA = 1 / 16                  # vth = theta / 16: what an MT neuron leaves unsent for T = 8 steps
RANGE_THETAS = 8                        # without calibration data: |pre-activation| <= 8 theta
HEADROOM = 2                            # a change of input can move a pre-activation by 2x its range


class NetxLayoutError(LavaExportError):
    """The graph has a node that netx's sigma-delta blocks cannot express."""


def _refuse(node: ir.Node, why: str) -> NetxLayoutError:
    return NetxLayoutError(
        f"netx layout: node {node.name!r} ({node.KIND}) cannot be expressed in lava-dl netx: {why}",
        hint="export with layout='extended' (ecmt's own Lava processes run it: exporters.lava.build)")


@dataclasses.dataclass
class Stage:
    """One netx block: a synaptic layer, the flatten before it, the ReLU after it."""
    synapse: ir.Linear | ir.Conv2d
    flatten: bool = False
    neuron: ir.Node | None = None        # positive-only MTNeuron or ReLUECM; None on the last layer


class _Chain:
    """The walk of `stages`: the blocks so far, a flatten not yet used, the previous node."""

    def __init__(self, prev: str):
        self.out: list[Stage] = []
        self.flatten = False
        self.prev = prev


# -- what each node kind adds to the chain: (chain, node, its input's shape) -> None ----------
def _start(c: _Chain, node, in_shape) -> None:
    pass            # the input starts the chain (stages walks the nodes after it)


def _flatten(c: _Chain, node: ir.Reshape, in_shape) -> None:
    if len(node.shape) != 1 or c.flatten or (c.out and c.out[-1].neuron is None):
        raise _refuse(node, "the only shape operation netx has is a flatten before a dense layer")
    c.flatten = True


def _synapse(c: _Chain, node, in_shape) -> None:
    if c.out and c.out[-1].neuron is None:
        raise _refuse(node, "two synaptic layers without a ReLU between them")
    if isinstance(node, ir.Linear) and len(in_shape) != 1:
        raise _refuse(node, f"a linear layer over a {list(in_shape)} input (netx's dense takes a vector)")
    if isinstance(node, ir.Conv2d) and c.flatten:
        raise _refuse(node, "a convolution after a flatten")
    c.out.append(Stage(node, flatten=c.flatten))
    c.flatten = False


def _mt_neuron(c: _Chain, node: ir.MTNeuron, in_shape) -> None:
    if node.signed:
        raise _refuse(node, "a signed MT neuron (th_neg): netx's sigma-delta neurons are ReLU "
                            "and its Delta encoder has no power-of-two levels")
    if not c.out or c.out[-1].neuron is not None or c.out[-1].synapse.name != c.prev:
        raise _refuse(node, "an MT neuron that does not follow a linear or conv layer")
    c.out[-1].neuron = node


def _relu(c: _Chain, node: ir.ReLUECM, in_shape) -> None:
    if not c.out or c.out[-1].neuron is not None or c.out[-1].synapse.name != c.prev:
        raise _refuse(node, "a ReLU that does not follow a linear or conv layer")
    c.out[-1].neuron = node


def _output(c: _Chain, node: ir.Output, in_shape) -> None:
    if c.flatten:
        raise _refuse(node, "a flatten at the output")


# What the netx layout expresses of each node kind, and what it refuses (with why).
KINDS = KindTable("netx", {
    ir.Input: _start,
    ir.Reshape: _flatten,
    ir.Linear: _synapse,
    ir.Conv2d: _synapse,
    ir.MTNeuron: _mt_neuron,
    ir.ReLUECM: _relu,
    ir.Output: _output,
    ir.MTNeuronPPN: Refused("an MT neuron with one-hot binary outputs (PPN): export the graph before expand_ppn"),
    **{kind: Refused("an expectation compensation module") for kind in (
        ir.GELUECM, ir.ElementwiseECM, ir.SoftmaxECM, ir.LayerNormECM, ir.ProductECM, ir.MaxPool2d)},
    **{kind: Refused(f"netx has no {kind.KIND} block") for kind in (
        ir.Constant, ir.Add, ir.Scale, ir.Permute, ir.Slice, ir.Select, ir.Concat, ir.Mean, ir.AvgPool2d)},
}, error=lambda node, message, hint: _refuse(node, message))


def stages(graph: ir.SpikingGraph) -> list[Stage]:
    """The graph as a chain of netx blocks, or NetxLayoutError naming the first
    node that does not fit."""
    nodes = list(graph)
    consumers = graph.consumers()
    chain = _Chain(graph.input.name)
    for node in nodes[1:]:
        if node.inputs != (chain.prev,) or (not isinstance(node, ir.Output) and len(consumers[node.name]) != 1):
            raise _refuse(node, "netx networks are a single chain of layers (no branches or residual adds)")
        KINDS(node)(chain, node, graph.shapes[chain.prev])
        chain.prev = node.name
    out = chain.out
    if not out:
        raise NetxLayoutError("netx layout: the graph has no linear or conv layer",
                              hint="export with layout='extended'")
    if out[-1].neuron is not None:
        raise _refuse(out[-1].neuron, "the output must be a linear layer's value (netx's Sigma readout)")
    last = out[-1].synapse
    if last.bias is not None and len(out) < 2:
        raise _refuse(last, "the output layer's bias needs a hidden layer to carry it (netx's Sigma "
                            "readout has no bias)")
    if last.bias is not None and isinstance(last, ir.Conv2d):
        raise _refuse(last, "a bias on a convolutional output layer (netx's Sigma readout has no bias)")
    return out


def _theta(neuron) -> float | None:
    """The delta threshold's base: the MT neuron's threshold (the smallest, if per channel)."""
    if isinstance(neuron, ir.MTNeuron):
        return float(neuron.th_pos.min())
    return None


# -- scales -----------------------------------------------------------------------------------
def ranges(graph: ir.SpikingGraph, chain: list[Stage], calib: torch.Tensor | None) -> tuple[float, list[float]]:
    """Largest |input| and largest |pre-activation| of every synaptic layer:
    measured on `calib` (the analog network), else from the thresholds
    (|x| <= 4, |pre-activation| <= RANGE_THETAS theta, and for the output layer
    every input at its threshold)."""
    if calib is not None:
        from ecmt.runtime import GraphExecutor
        calib = torch.as_tensor(calib).float()
        want = tuple(graph.shapes[graph.input.name])
        if calib.dim() != len(want) + 1 or tuple(calib.shape[1:]) != want or not len(calib):
            raise LavaExportError(f"netx layout: calib has shape {list(calib.shape)}; the graph takes "
                                  f"[N, {', '.join(map(str, want))}]",
                                  hint="pass calibration inputs (training images) shaped like the graph's input")
        seen: dict[str, float] = {}

        def observe(node, inputs, output, t):
            seen[node.name] = max(seen.get(node.name, 0.0), float(output.abs().max()))

        executor = GraphExecutor(graph)
        for batch in calib.split(256):
            executor.run_analog(batch, observe)
        return seen[graph.input.name], [seen[s.synapse.name] for s in chain]
    z = []
    prev = 4.0
    for s in chain:
        th = _theta(s.neuron)
        w = s.synapse.weight.reshape(s.synapse.weight.shape[0], -1).abs().sum(1)
        bias = 0 if s.synapse.bias is None else s.synapse.bias.abs()
        bound = float((w * prev + bias).max())
        z.append(min(bound, RANGE_THETAS * th) if th is not None else bound)
        prev = th if th is not None else z[-1]
    return 4.0, z


def allocate(gain: list[float], cap: list[float], input_need: float) -> tuple[list[float], float]:
    """Scales r_0..r_L with r_l / r_(l-1) <= gain[l] (the weights fit 8 bits)
    and r_l <= cap[l] (the states fit 24 bits), l = 1..L.  Every bit a layer's
    weights lose (log2 gain[l] - log2 r_l / r_(l-1)) and every bit the input
    loses (log2 input_need - log2 r_0) counts alike: the result loses the
    fewest bits lam in its worst place (bisection on lam).  Returns
    (r_0..r_L, lam)."""
    g = [math.log2(v) for v in gain]
    c = [math.log2(v) for v in cap]
    need = math.log2(input_need)
    L = len(g)

    def upper(lam):           # the largest log2 r_l a chain losing <= lam bits per layer allows
        u = [0.0] * (L + 1)
        u[L] = c[L - 1]
        for l in range(L, 0, -1):
            bound = u[l] - (g[l - 1] - lam)
            u[l - 1] = bound if l == 1 else min(c[l - 2], bound)
        return u

    lo, hi = 0.0, 64.0
    if upper(0.0)[0] >= need:
        hi = 0.0
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if upper(mid)[0] >= need - mid:
            hi = mid
        else:
            lo = mid
    bound = upper(hi)
    u = [min(bound[0], need)]                 # no finer input than needed
    for l in range(1, L + 1):
        u.append(min(bound[l], u[-1] + g[l - 1]))
    return [2.0 ** v for v in u], hi


def encode(x, input_scale: float) -> np.ndarray:
    """The input Delta encoder's integers: round(r_0 x), within its 24-bit state."""
    lim = STATE_LIMIT >> (SPIKE_EXP + STATE_EXP)
    return np.clip(np.round(np.asarray(x, np.float64) * input_scale), -lim + 1, lim - 1).astype(np.int64)


@dataclasses.dataclass
class NetxLayer:
    """One netx block with integer parameters, in netx's form: ``dense`` on a
    vector, or ``conv`` (a linear layer after a convolution is a convolution
    whose kernel covers the whole map: netx's flatten needs Lava's reshape
    ports, which fail at run time with numpy 2)."""
    kind: str                      # "dense" or "conv"
    name: str                      # the ecmt synaptic node
    shape: tuple[int, ...]         # output shape, C order ([C, H, W] or [N]), bias unit included
    weight: np.ndarray             # integers; dense [out, in], conv [out, in / groups, kh, kw]
    bias: np.ndarray | None        # integer mantissas
    vth: int                       # vThMant (0 on the output layer)
    scale: float                   # r_l: mantissa units per real unit
    weight_scale: float            # weight = round(exact_weight x weight_scale) = 64 r_l / r_(l-1)
    exact_weight: np.ndarray       # the graph's weights in this form (float64)
    exact_bias: np.ndarray | None  # the graph's bias (real units; bias = round(exact_bias x scale))
    conv: dict | None = None       # stride, padding, dilation, groups
    theta: float | None = None
    weight_bits_lost: float = 0.0


@dataclasses.dataclass
class NetxPlan:
    input_shape: tuple[int, ...]   # netx's input layer, C order (the graph's input, flattened for an MLP)
    output_shape: tuple[int, ...]  # the graph's output shape
    input_scale: float             # r_0: x_int = round(r_0 x)
    input_range: float
    layers: list[NetxLayer]
    delta: float
    ranges: list[float]
    weight_bits_lost: float = 0.0
    bias_unit: int | None = None   # flat index (in the layer before the last) of the unit carrying the output bias

    @property
    def output_scale(self) -> float:
        """Real output = Sigma's integer state / output_scale."""
        return float(2 ** (SPIKE_EXP + STATE_EXP) * self.layers[-1].scale)

    @property
    def latency(self) -> int:
        """Steps from an input to the output it causes: one per synaptic layer."""
        return len(self.layers)

    def encode(self, x) -> np.ndarray:
        """The input Delta encoder's integers for x [N, *graph input]."""
        x = np.asarray(x)
        return encode(x.reshape(len(x), *self.input_shape), self.input_scale)


def plan(graph: ir.SpikingGraph, *, delta: float = DEFAULT_DELTA, calib=None,
         input_bits: int = 8) -> NetxPlan:
    """Integer netx parameters for a chain graph (see the module docstring)."""
    if not (math.isfinite(delta) and delta >= 0):
        raise LavaExportError(f"netx layout: delta must be a finite fraction >= 0 of the threshold, got {delta}")
    chain = stages(graph)
    x_max, z = ranges(graph, chain, calib)
    L = len(chain)
    w_max = [max(float(s.synapse.weight.abs().max()), 1e-12) for s in chain]
    gain = [WEIGHT_LIMIT / (2 ** SPIKE_EXP * m) for m in w_max]
    cap = [STATE_LIMIT / (2 ** (SPIKE_EXP + STATE_EXP) * HEADROOM * max(v, 1e-12)) for v in z]
    r, lam = allocate(gain, cap, 2 ** input_bits / max(x_max, 1e-12))   # input_bits over the input's range
    in_shape = tuple(graph.shapes[graph.input.name])
    if chain[0].flatten:                       # an MLP's flatten happens in how the input is fed
        in_shape = (math.prod(in_shape),)
    shape = in_shape                            # what the next block receives, C order
    layers = []
    for i, s in enumerate(chain):
        syn = s.synapse
        w = syn.weight.double().numpy()
        th = _theta(s.neuron)
        vth = 0 if s.neuron is None or th is None else int(round(delta * th * r[i + 1]))
        b = None if syn.bias is None or i == L - 1 else syn.bias.double().numpy()
        if isinstance(syn, ir.Conv2d):
            conv = dict(stride=tuple(syn.stride), padding=tuple(syn.padding), dilation=tuple(syn.dilation),
                        groups=int(syn.groups))
            out_shape = tuple(graph.shapes[syn.name])
        elif len(shape) == 3:                   # a linear layer on a map: a whole-map convolution
            w = w.reshape(w.shape[0], *shape)
            conv = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)
            out_shape = (w.shape[0], 1, 1)
        else:
            conv, out_shape = None, (w.shape[0],)
        lost = math.log2(gain[i]) - math.log2(r[i + 1] / r[i])
        w_scale = 2 ** SPIKE_EXP * r[i + 1] / r[i]
        layers.append(NetxLayer(kind="conv" if conv else "dense", name=syn.name, shape=out_shape,
                                weight=np.round(w * w_scale), bias=None if b is None else np.round(b * r[i + 1]),
                                vth=vth, scale=r[i + 1], weight_scale=w_scale, exact_weight=w, exact_bias=b,
                                conv=conv, theta=th, weight_bits_lost=max(lost, 0.0)))
        shape = out_shape
    p = NetxPlan(input_shape=in_shape, output_shape=tuple(graph.shapes[graph.output.name]), input_scale=r[0],
                 input_range=x_max, layers=layers, delta=delta, ranges=z, weight_bits_lost=lam)
    if chain[-1].synapse.bias is not None:
        _bias_unit(p, chain[-1].synapse.bias.double().numpy())
    return p


def _bias_unit(p: NetxPlan, bias: np.ndarray) -> None:
    """Carry the output layer's bias on one extra unit of the layer before it:
    a neuron (or channel) with no inputs and a constant activation C, whose
    weights into the output layer are bias / C.  A grouped convolution gets
    one extra channel per group (each group keeps its size); the first one
    carries the bias, the others stay silent."""
    hidden, last = p.layers[-2], p.layers[-1]
    # the unit's spike is 64 C: bias_int = 64 r_L b / C; the smallest C that keeps it
    # within 8 bits, and above the delta threshold (else the unit never spikes)
    c = max(1, int(math.ceil(2 ** SPIKE_EXP * last.scale * float(np.abs(bias).max()) / WEIGHT_LIMIT)),
            hidden.vth + 1)
    if c << (SPIKE_EXP + STATE_EXP) >= STATE_LIMIT // HEADROOM:
        raise NetxLayoutError(f"netx layout: the bias of {last.name!r} is too large for a 24-bit bias unit",
                              hint="export with layout='extended'")
    units = hidden.weight.shape[0]
    groups = hidden.conv["groups"] if hidden.conv else 1
    at = [(j + 1) * (units // groups) for j in range(groups)]     # after each group's channels
    unit = units // groups                                          # group 0's extra, in the new order
    hidden.weight = np.insert(hidden.weight, at, 0, axis=0)
    hidden.exact_weight = np.insert(hidden.exact_weight, at, 0, axis=0)
    hidden.bias = np.insert(np.zeros(units) if hidden.bias is None else hidden.bias, at, 0)
    hidden.exact_bias = np.insert(np.zeros(units) if hidden.exact_bias is None else hidden.exact_bias, at, 0)
    hidden.bias[unit], hidden.exact_bias[unit] = c, c / hidden.scale
    hidden.shape = (units + groups, *hidden.shape[1:])
    p.bias_unit = unit * math.prod(hidden.shape[1:])
    last.weight = np.insert(last.weight, at, 0, axis=1)
    last.exact_weight = np.insert(last.exact_weight, at, 0, axis=1)
    first = (slice(None), unit) + (0,) * (last.weight.ndim - 2)   # the channel's first position
    last.exact_weight[first] = bias / (c / hidden.scale)
    last.weight[first] = np.round(last.exact_weight[first] * last.weight_scale)


# -- what netx computes, in numpy --------------------------------------------------------------
def schedule(encoded: np.ndarray, T: int, latency: int) -> np.ndarray:
    """The input at every step: each sample held for T steps, the last one
    latency more (to flush the pipeline)."""
    seq = np.repeat(encoded, T, axis=0)
    return np.concatenate([seq, np.repeat(seq[-1:], latency, axis=0)])


def aligned(record: np.ndarray, n: int, T: int, latency: int, output_scale: float) -> np.ndarray:
    """Outputs [T, n, *output] in real units from the per-step Sigma record:
    the output for step t of sample i is the record at step i T + t + latency."""
    idx = np.arange(n)[:, None] * T + np.arange(T)[None] + latency
    return np.swapaxes(record[idx] / output_scale, 0, 1).astype(np.float32)


def emulate(p: NetxPlan, x: np.ndarray, T: int, check: bool = True, stats: dict | None = None) -> np.ndarray:
    """What netx computes, step by step, in numpy: the same per-step integer
    Sigma record [steps, *output] as ``run(..., raw=True)``, for the same
    schedule (each sample of x held for T steps).  Integer arithmetic as in
    lava's fixed-point sdn / dense / conv models, with the one-step delay of
    every synapse (a layer's biases act from step 1, before the input reaches
    it, and a sigma-delta neuron's dead band depends on what it sent before).
    With check=True a synaptic input or state of 24 bits or more raises
    OverflowError.  A `stats` dict receives, per layer name, the largest
    |synaptic input|, |sigma| and |spike| and the number of non-zero spikes."""
    shift = SPIKE_EXP + STATE_EXP
    seq = schedule(p.encode(x), T, p.latency)
    peak = {layer.name: dict(a_in=0, sigma=0, spike=0, spikes=0) for layer in p.layers}
    layers = p.layers
    sigma = [np.zeros(layer.shape, np.int64) for layer in layers]
    act = [np.zeros(layer.shape, np.int64) for layer in layers]
    residue = [np.zeros(layer.shape, np.int64) for layer in layers]
    bias = [0 if layer.bias is None else (layer.bias.astype(np.int64) << shift).reshape(
        (-1,) + (1,) * (len(layer.shape) - 1)) for layer in layers]
    spikes = [np.zeros(p.input_shape, np.int64)] + [np.zeros(layer.shape, np.int64) for layer in layers[:-1]]
    act_in = np.zeros(p.input_shape, np.int64)
    record = []
    for xi in seq:
        previous = spikes                                     # what each synapse received last step
        a = xi << shift                                       # Delta encoder, vThMant 0: sends every change
        spikes = [(a - act_in) >> STATE_EXP]
        act_in = a
        for k, layer in enumerate(layers):
            s = previous[k]
            a_in = layer.weight.astype(np.int64) @ s if layer.kind == "dense" else _conv_int(s, layer)
            sigma[k] = sigma[k] + a_in
            top = peak[layer.name]
            top["a_in"] = max(top["a_in"], int(np.abs(a_in).max(initial=0)))
            top["sigma"] = max(top["sigma"], int(np.abs(sigma[k]).max(initial=0)))
            if check and max(top["a_in"], top["sigma"]) >= STATE_LIMIT:
                raise OverflowError(f"{layer.name}: a state or synaptic input of 24 bits or more")
            if k == len(layers) - 1:
                record.append(sigma[k].copy())
                break
            new = np.maximum(sigma[k] + bias[k], 0)
            d = new - act[k] + residue[k]
            out = np.where(np.abs(d) >= (layer.vth << shift), d, 0)
            residue[k], act[k] = d - out, new
            spikes.append(out >> STATE_EXP)
            top["spike"] = max(top["spike"], int(np.abs(spikes[-1]).max(initial=0)))
            top["spikes"] += int(np.count_nonzero(spikes[-1]))
    if stats is not None:
        stats.update(peak)
    return np.stack(record).reshape(len(record), *p.output_shape)


def _conv_int(s: np.ndarray, layer: NetxLayer) -> np.ndarray:
    """An integer convolution in ecmt's [C, H, W] layout (correlation, like torch)."""
    c = layer.conv
    y = torch.nn.functional.conv2d(torch.from_numpy(s.astype(np.float64))[None],
                                   torch.from_numpy(layer.weight.astype(np.float64)), stride=c["stride"],
                                   padding=c["padding"], dilation=c["dilation"], groups=c["groups"])[0]
    return np.round(y.numpy()).astype(np.int64)


def _apply(layer: NetxLayer, a: torch.Tensor, weight: np.ndarray) -> torch.Tensor:
    w = torch.from_numpy(np.asarray(weight, np.float64))
    if layer.kind == "dense":
        return a @ w.T
    c = layer.conv
    return torch.nn.functional.conv2d(a, w, stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
                                      groups=c["groups"])


@dataclasses.dataclass
class Reference:
    """Float64 references for a netx-layout plan, [N, *output] each."""
    exact: np.ndarray        # the graph's analog network, computed in the file's form from its exact weights
    quantized: np.ndarray    # the same with the file's integers (input, weights, biases) as real numbers
    bound: np.ndarray        # |netx's output - quantized| <= bound (dead bands and dropped spike bits)


def reference(p: NetxPlan, x, steps: int) -> Reference:
    """What netx's output is compared with.  ``quantized`` is the file's
    network without its sigma-delta dead bands; netx differs from it only
    because every hidden neuron sends within vth of its activation and netx's
    shift of each spike drops up to one spike unit, 1 / (64 r), which is never
    sent later (at most one spike per step, so `steps` units).  ``bound``
    propagates those through |weights| (ReLU is 1-Lipschitz): a worst case."""
    xe = torch.from_numpy(np.asarray(x, np.float64).reshape(len(x), *p.input_shape))
    xq = torch.from_numpy(encode(xe.numpy(), p.input_scale).astype(np.float64)) / p.input_scale
    a, aq, e = xe, xq, torch.zeros_like(xe)
    for k, layer in enumerate(p.layers):
        q = layer.weight / layer.weight_scale
        z, zq, err = _apply(layer, a, layer.exact_weight), _apply(layer, aq, q), _apply(layer, e, np.abs(q))
        if layer.bias is not None:
            shape = (-1, *([1] * (len(layer.shape) - 1)))
            z = z + torch.from_numpy(layer.exact_bias).reshape(shape)
            zq = zq + torch.from_numpy(layer.bias / layer.scale).reshape(shape)
        if k == len(p.layers) - 1:
            out = lambda v: v.reshape(len(xe), *p.output_shape).numpy()   # noqa: E731
            return Reference(out(z), out(zq), out(err))
        a, aq = torch.relu(z), torch.relu(zq)
        e = err + layer.vth / layer.scale + steps / (2 ** SPIKE_EXP * layer.scale)


# -- the file ----------------------------------------------------------------------------------
def write(p: NetxPlan, layers_group, meta_group) -> None:
    """netx's /layer/<i> groups, and under /ecmt/netx what ecmt needs to feed
    and read the network (scales, latency, shapes)."""
    g = layers_group.create_group("0")
    g["type"], g["shape"] = "input", np.array(p.input_shape)
    _neuron(g, 0)
    for i, layer in enumerate(p.layers, start=1):
        g = layers_group.create_group(str(i))
        g["type"], g["shape"] = layer.kind, np.array(layer.shape)
        g["weight"] = layer.weight.astype(np.float32)
        if layer.bias is not None:
            g["bias"] = layer.bias.astype(np.float32)
        if layer.conv is not None:
            for key in ("stride", "padding", "dilation"):
                g[key] = np.array(layer.conv[key])
            g["groups"] = layer.conv["groups"]
        _neuron(g, layer.vth, sigma_output=i == len(p.layers))
    m = meta_group.create_group("netx")
    m["input_shape"], m["output_shape"] = np.array(p.input_shape), np.array(p.output_shape)
    m["input_scale"], m["input_range"], m["output_scale"] = p.input_scale, p.input_range, p.output_scale
    m["latency"], m["delta"], m["spike_exp"], m["state_exp"] = p.latency, p.delta, SPIKE_EXP, STATE_EXP
    m["layer_names"] = json.dumps([layer.name for layer in p.layers])
    m["layer_scales"] = np.array([layer.scale for layer in p.layers])
    m["ranges"], m["weight_bits_lost"] = np.array(p.ranges), p.weight_bits_lost
    m["bias_unit"] = -1 if p.bias_unit is None else p.bias_unit


def _neuron(g, vth: int, sigma_output: bool = False) -> None:
    n = g.create_group("neuron")
    n["type"], n["vThMant"] = "SDNN", int(vth)
    if sigma_output:
        n["sigma_output"] = True


@dataclasses.dataclass
class NetxFile:
    """What ecmt needs to feed and read a netx-layout file."""
    path: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_scale: float
    output_scale: float
    latency: int

    @classmethod
    def open(cls, path) -> "NetxFile":
        import h5py
        try:
            with h5py.File(path, "r") as f:
                m = f["ecmt/netx"]
                shape = lambda key: tuple(int(v) for v in m[key][()])   # noqa: E731
                return cls(str(path), shape("input_shape"), shape("output_shape"), float(m["input_scale"][()]),
                           float(m["output_scale"][()]), int(m["latency"][()]))
        except (OSError, KeyError) as err:
            raise LavaExportError(f"{path}: not a netx-layout ecmt file ({err})") from None

    def encode(self, x) -> np.ndarray:
        x = np.asarray(x)
        return encode(x.reshape(len(x), *self.input_shape), self.input_scale)


def _xyz(a: np.ndarray) -> np.ndarray:
    """[steps, C order axes] -> netx's reversed axes (x, y, z), time last."""
    return np.moveaxis(a.transpose(0, *range(a.ndim - 1, 0, -1)), 0, -1)


def run(path, x, T: int, raw: bool = False):
    """Run a netx-layout file in lava-dl netx as shipped (``netx.hdf5.Network``:
    its own blocks and neuron models, Loihi2SimCfg fixed point).  Each sample
    of x [N, *input] is held for T steps; a RingBuffer source feeds the input
    layer's Delta encoder, a sink records the Sigma readout.  Every synaptic
    layer delays by one step, so the output for step t of sample i is read
    ``latency`` steps later, at step i T + t + latency (the run has
    latency more steps, holding the last sample).  Returns the outputs
    [T, N, *output] in real units, or with raw=True the integer record
    [steps, *output]."""
    from lava.lib.dl import netx as lava_netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    info = NetxFile.open(path)
    seq = schedule(info.encode(x), T, info.latency)
    steps = len(seq)
    net = lava_netx.hdf5.Network(net_config=str(path))
    source = Source(data=_xyz(seq).astype(np.int32))
    sink = Sink(shape=net.out.shape, buffer=steps)
    source.s_out.connect(net.in_layer.neuron.a_in)       # netx's Input block leaves its own port unconnected
    net.out.connect(sink.a_in)
    try:
        net.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        out = sink.data.get()
    finally:
        net.stop()
    out = np.moveaxis(out, -1, 0)
    out = out.transpose(0, *range(out.ndim - 1, 0, -1)).reshape(steps, *info.output_shape)
    return out if raw else aligned(out, len(x), T, info.latency, info.output_scale)
