"""Build and run an ecmt graph as a network of Lava processes."""
from __future__ import annotations

import math

import numpy as np
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.io.sink import PyReceiveModelFloat, RingBuffer as Sink
from lava.proc.io.source import PySendModelFloat, RingBuffer as Source

from ecmt import ir
from ecmt.ir.dispatch import KindTable

from . import processes as P
from .errors import LavaExportError

F32 = np.float32


class LavaNetwork:
    """Lava processes for one graph.  ``run(x, T)`` runs every sample of x for
    T steps in one Lava run (all state restarts every T steps) and returns the
    running estimates [T, N, ...], like SpikingModel.

    Every port carries the node's tensor in C order; where a Lava process
    needs another layout (Conv's (X, Y, C) images, a per-token linear as a 1x1
    Conv over (tokens, 1, features)) the producing or consuming ecmt process
    reshapes, and image axes are swapped with Lava's transpose ports.  (Lava
    0.10's reshape ports fail at run time, so they are not used.)
    """

    def __init__(self, graph: ir.SpikingGraph, fixed_point: bool = False, record_spikes: bool = False):
        graph.validate()
        self.graph, self.fixed_point, self.record_spikes = graph, fixed_point, record_spikes
        self.kinds: dict[str, int] = {}

    # -- construction ------------------------------------------------------------------------
    def _build(self, x: np.ndarray, T: int):
        g = self.graph
        self.period, self.steps = T, len(x) * T
        self.procs, self.neurons = [], {}
        self.ports: dict[str, object] = {}              # node -> OutPort carrying its output
        data = np.repeat(np.asarray(x, F32), T, axis=0)  # each sample for T steps
        self.source = self._keep(Source(data=np.moveaxis(data, 0, -1).copy()), None)
        for node in g:
            self.ports[node.name] = self._process(node)
        out = self.ports[g.output.name]
        self.sink = Sink(shape=tuple(out.shape), buffer=self.steps)
        out.connect(self.sink.a_in)

    def _keep(self, proc, kind):
        self.procs.append(proc)
        if kind:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return proc

    def _feed(self, src: str, shape: tuple[int, ...]):
        """An OutPort with `src`'s values laid out as `shape` (same size)."""
        port = self.ports[src]
        if tuple(port.shape) == tuple(shape):
            return port
        reshape = ir.Reshape(name=f"{src}.layout", inputs=("x",), shape=tuple(shape))
        proc = self._keep(P.HostNode(node=reshape, in_shapes=[self.graph.shapes[src]], out_shape=shape,
                                     port_shapes=[tuple(port.shape)], period=self.period), "host")
        port.connect(proc.in0)
        return proc.out

    def _host(self, node, inputs: list[str], in_shapes):
        cls = P.host_node_class(len(inputs))
        proc = self._keep(cls(node=node, in_shapes=in_shapes, out_shape=self.graph.shapes.get(node.name, in_shapes[0]
                                                                                                if in_shapes else None),
                              port_shapes=[tuple(self.ports[s].shape) for s in inputs], period=self.period,
                              name=node.name), "host")
        for i, src in enumerate(inputs):
            self.ports[src].connect(getattr(proc, f"in{i}"))
        return proc.out

    def _process(self, node: ir.Node):
        """The OutPort carrying `node`'s output, from the process its kind maps to (KINDS)."""
        return KINDS(node)(self, node)

    def _input(self, node: ir.Input):
        return self.source.s_out

    def _output(self, node: ir.Output):
        return self._feed(node.inputs[0], self.graph.shapes[node.name])

    def _mt_neuron(self, node: ir.MTNeuron):
        src = self.ports[node.inputs[0]]
        proc = self._keep(P.MTNeuron(shape=self.graph.shapes[node.name], th_pos=node.th_pos.numpy(),
                                     th_neg=None if node.th_neg is None else node.th_neg.numpy(),
                                     levels=node.levels, period=self.period, in_shape=tuple(src.shape),
                                     record=self.steps if self.record_spikes else 0, name=node.name,
                                     spikes_per_step=node.spikes_per_step),
                          "mt_neuron")
        src.connect(proc.a_in)
        self.neurons[node.name] = proc
        return proc.s_out

    def _host_node(self, node: ir.Node):
        """A host process stepping the node with ecmt's runtime (executor.compile_node)."""
        return self._host(node, list(node.inputs), [self.graph.shapes[s] for s in node.inputs])

    def _bias(self, node, port, shape):
        """Lava's Dense and Conv have no bias: the host adds it at every step."""
        if node.bias is None:
            return port
        b = node.bias.reshape((-1, 1, 1)) if len(shape) == 3 else node.bias
        const = ir.Constant(name=f"{node.name}.b", inputs=(), value=b)
        add = ir.Add(name=f"{node.name}.bias", inputs=("x", "b"))
        c = self._keep(P.HostNode0(node=const, in_shapes=[], out_shape=tuple(b.shape), period=self.period), "host")
        proc = self._keep(P.HostNode2(node=add, in_shapes=[shape, tuple(b.shape)], out_shape=shape,
                                      port_shapes=[tuple(port.shape), tuple(b.shape)], period=self.period), "host")
        port.connect(proc.in0)
        c.out.connect(proc.in1)
        return proc.out

    def _linear(self, node: ir.Linear):
        in_shape, shape = self.graph.shapes[node.inputs[0]], self.graph.shapes[node.name]
        w = node.weight.numpy().astype(F32)
        if len(in_shape) == 1:
            proc = self._keep(Dense(weights=w, num_message_bits=24, name=node.name), "dense")
            self._feed(node.inputs[0], in_shape).connect(proc.s_in)
        else:   # a linear per token: a 1x1 convolution over the token positions
            positions = math.prod(in_shape[:-1])
            proc = self._keep(Conv(weight=w[:, None, None, :], input_shape=(positions, 1, in_shape[-1]),
                                   num_message_bits=24, name=node.name), "conv")
            self._feed(node.inputs[0], (positions, 1, in_shape[-1])).connect(proc.s_in)
        return self._bias(node, proc.a_out, shape)

    def _conv(self, node: ir.Conv2d):
        in_shape, shape = self.graph.shapes[node.inputs[0]], self.graph.shapes[node.name]
        wt = node.weight.numpy().astype(F32)                      # [out, in/g, kh, kw]
        # Lava's Conv takes (C_out, W, H, C_in) kernels in convolution (flipped) order, XY axes.
        w_lava = wt.transpose(0, 3, 2, 1)[:, ::-1, ::-1, :].copy()
        proc = self._keep(Conv(weight=w_lava, input_shape=(in_shape[2], in_shape[1], in_shape[0]),
                               padding=node.padding[::-1], stride=node.stride[::-1], dilation=node.dilation[::-1],
                               groups=node.groups, num_message_bits=24, name=node.name), "conv")
        self._feed(node.inputs[0], in_shape).transpose([2, 1, 0]).connect(proc.s_in)
        return self._bias(node, proc.a_out.transpose([2, 1, 0]), shape)

    # -- running ---------------------------------------------------------------------------------
    def run_config(self) -> Loihi2SimCfg:
        """Our models for our processes and for Lava's Dense / Conv (keyed by
        process instance, as Lava's compiler looks them up)."""
        tag = "fixed_pt" if self.fixed_point else "floating_pt"
        by_class = {Dense: P.SYNAPSE_MODELS[(Dense, self.fixed_point)],
                    Conv: P.SYNAPSE_MODELS[(Conv, self.fixed_point)],
                    P.MTNeuron: P.PyMTNeuronFixed if self.fixed_point else P.PyMTNeuronFloat}
        for cls in (P.HostNode0, P.HostNode, P.HostNode2, P.HostNode3):
            by_class[cls] = P.host_model(cls, tag)
        models = {proc: by_class[type(proc)] for proc in self.procs if type(proc) in by_class}
        # The image in and the estimates out stay floating point (the host's side).
        models[self.source] = PySendModelFloat
        models[self.sink] = PyReceiveModelFloat
        return Loihi2SimCfg(select_tag=tag, exception_proc_model_map=models)

    def run(self, x: np.ndarray, T: int) -> np.ndarray:
        """x: [N, *input]; returns the running estimates [T, N, *output]."""
        x = np.asarray(x, F32)
        self._build(x, T)
        try:
            self.sink.run(condition=RunSteps(num_steps=self.steps), run_cfg=self.run_config())
            out = self.sink.data.get()                                # [*out, N*T]
            self.spikes = {name: p.history.get() for name, p in self.neurons.items()} if self.record_spikes else {}
        finally:
            self.sink.stop()
        out = np.moveaxis(out, -1, 0).reshape(len(x), T, *self.graph.shapes[self.graph.output.name])
        estimates = np.cumsum(out, axis=1) / np.arange(1, T + 1).reshape(1, T, *([1] * (out.ndim - 2)))
        return np.swapaxes(estimates, 0, 1).astype(F32)

    def spike(self, node: str, t: int, sample: int = 0) -> np.ndarray:
        """Recorded spikes of an MT neuron at step t (1-based) of a sample."""
        return self.spikes[node][sample * self.period + t - 1]


# The Lava process each node kind becomes: Lava's own Dense / Conv for synapses, ecmt's MT
# neuron process, and a host process (the executor's step) for everything else, PPN neurons
# included (their one-hot channels have no Lava neuron).
KINDS = KindTable("Lava", {
    ir.Input: LavaNetwork._input,
    ir.Output: LavaNetwork._output,
    ir.Linear: LavaNetwork._linear,
    ir.Conv2d: LavaNetwork._conv,
    ir.MTNeuron: LavaNetwork._mt_neuron,
    **{kind: LavaNetwork._host_node for kind in (
        ir.MTNeuronPPN, ir.Constant, ir.GELUECM, ir.ReLUECM, ir.ElementwiseECM, ir.SoftmaxECM, ir.LayerNormECM,
        ir.MaxPool2d, ir.ProductECM, ir.Add, ir.Scale, ir.Reshape, ir.Permute, ir.Slice, ir.Select, ir.Concat,
        ir.Mean, ir.AvgPool2d)},
}, error=lambda node, message, hint: LavaExportError(f"node {node.name!r} ({node.KIND}): {message}", hint=hint))
