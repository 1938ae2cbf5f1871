"""Lava processes and process models for ecmt graphs.

* ``MTNeuron``: the multi-threshold neuron as a Lava process; graded spikes
  carry the level value (with spikes_per_step k > 1, the sum of the step's
  levels: one graded payload, not k events).  Two models: floating point
  (tag ``floating_pt``) and fixed point (``fixed_pt``: integer membrane and
  thresholds in units of 2^-F of the smaller threshold, F =
  ``fraction_bits(levels)``: 12 for 8 levels, so that the top level,
  2^(F + levels - 1) units, leaves the 24-bit membrane 16x headroom).
* ``HostNode`` (with 0 to 3 inputs): any other ecmt node (ECMs, products,
  residual adds, shape operations, constants, biases) run on the host, by
  ecmt's own executor code for that node, so the host side computes exactly
  what SpikingModel computes.
* Synaptic layers are Lava's own ``Dense`` and ``Conv`` processes.  ecmt's
  time model has every layer act within the same step, while Lava's stock
  Dense/Conv models emit the previous step's result (a one-step synaptic
  delay, which would misalign residual paths); ``ZeroDelayDense`` /
  ``ZeroDelayConv`` models compute the current step's result instead.  Their
  fixed-point versions use 8-bit weights with one scale per output channel
  (a per-neuron factor, which hardware folds into the receiving neuron's
  threshold).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv import utils as conv_utils

# The number format, shared with the executor's deployed formats (ecmt/runtime/fixed_point.py).
from ecmt.runtime.fixed_point import fraction_bits, integer_spike, quantize_int8

F32 = np.float32


# -- MT neuron --------------------------------------------------------------------------------
class MTNeuron(AbstractProcess):
    """Multi-threshold neuron (docs/method.md §2) on a neuromorphic core.
    The membrane restarts at zero every `period` steps (one sample per period).
    `record` > 0 keeps the spikes of the first `record` steps in Var `history`.
    `spikes_per_step` k: up to k levels per step, sent as their sum."""

    def __init__(self, *, shape, th_pos: np.ndarray, th_neg: np.ndarray | None, levels: int, period: int,
                 record: int = 0, in_shape=None, name: str | None = None, spikes_per_step: int = 1):
        th_pos = np.broadcast_to(np.asarray(th_pos, F32), shape).copy()
        signed = th_neg is not None
        th_neg = np.broadcast_to(np.asarray(th_neg if signed else th_pos, F32), shape).copy()
        super().__init__(shape=shape, levels=levels, signed=signed, period=period, record=record, name=name,
                         spikes_per_step=int(spikes_per_step))
        self.a_in = InPort(shape=tuple(in_shape or shape))     # any layout of the same size
        self.s_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=np.zeros(shape, F32))
        self.th_pos = Var(shape=shape, init=th_pos)
        self.th_neg = Var(shape=shape, init=th_neg)
        self.history = Var(shape=(max(record, 1), *shape), init=np.zeros((max(record, 1), *shape), F32))


def mt_spikes(v: np.ndarray, th_pos: np.ndarray, th_neg: np.ndarray, levels: int, signed: bool,
              spikes_per_step: int = 1) -> np.ndarray:
    """The largest crossed level, as the spec compares: |v| >= th 2^k - th / 2;
    with k > 1, up to k levels from the top while the remainder |v| - s crosses
    (ecmt.runtime.kernels.mt_multi_levels, the same float32 operations)."""
    pos = v >= 0
    th = np.where(pos, th_pos, th_neg)
    mag = np.abs(v)
    half = th * F32(0.5)
    level = np.zeros_like(v)
    if spikes_per_step == 1:
        for k in range(levels):
            value = th * F32(2 ** k)
            level = np.where(mag >= value - half, value, level)
    else:
        fired = np.zeros(v.shape, np.int64)
        for k in range(levels - 1, -1, -1):
            value = th * F32(2 ** k)
            crossed = (mag - level >= value - half) & (fired < spikes_per_step)
            level = np.where(crossed, level + value, level)
            fired += crossed
    if not signed:
        return np.where(pos, level, F32(0)).astype(F32)
    return np.where(pos, level, -level).astype(F32)


class _MTModelBase(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, F32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, F32)
    v: np.ndarray = LavaPyType(np.ndarray, F32)
    th_pos: np.ndarray = LavaPyType(np.ndarray, F32)
    th_neg: np.ndarray = LavaPyType(np.ndarray, F32)
    history: np.ndarray = LavaPyType(np.ndarray, F32)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.levels, self.signed = proc_params["levels"], proc_params["signed"]
        self.k = proc_params["spikes_per_step"]
        self.record, self.period = proc_params["record"], proc_params["period"]

    def new_sample(self) -> bool:
        return (self.time_step - 1) % self.period == 0

    def keep(self, s):
        if self.time_step <= self.record:
            self.history[self.time_step - 1] = s


@implements(proc=MTNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyMTNeuronFloat(_MTModelBase):
    def run_spk(self):
        if self.new_sample():
            self.v = np.zeros_like(self.v)
        self.v = (self.v + self.a_in.recv().astype(F32).reshape(self.v.shape)).astype(F32)
        s = mt_spikes(self.v, self.th_pos, self.th_neg, self.levels, self.signed, self.k)
        self.v = (self.v - s).astype(F32)
        self.keep(s)
        self.s_out.send(s)


@implements(proc=MTNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyMTNeuronFixed(_MTModelBase):
    """Integer membrane: unit u = min(th_pos, th_neg) / 2^F (per neuron,
    F = fraction_bits(levels)); thresholds and levels are integers in that
    unit; the input is rounded to it every step; the spike leaves as
    (integer level) x u."""

    def run_spk(self):
        if not hasattr(self, "unit"):
            self.unit = np.minimum(self.th_pos, self.th_neg) / F32(2 ** fraction_bits(self.levels))
            self.th_p_int = np.round(self.th_pos / self.unit).astype(np.int64)
            self.th_n_int = np.round(self.th_neg / self.unit).astype(np.int64)
        if self.new_sample():
            self.v_int = np.zeros(self.v.shape, np.int64)
        self.v_int += np.round(self.a_in.recv().reshape(self.v.shape) / self.unit).astype(np.int64)
        s_int = integer_spike(self.v_int, self.th_p_int, self.th_n_int, self.levels, self.k, self.signed)
        self.v_int -= s_int
        self.v = (self.v_int * self.unit).astype(F32)
        s = (s_int * self.unit).astype(F32)
        self.keep(s)
        self.s_out.send(s)


# -- host nodes -------------------------------------------------------------------------------
class HostNode(AbstractProcess):
    """One ecmt node run on the host processor; `node` is the ecmt IR node."""
    ARITY = 1

    def __init__(self, *, node, in_shapes, out_shape, period: int, port_shapes=None, out_port_shape=None,
                 name: str | None = None):
        """in_shapes / out_shape: the node's (per-sample) IR shapes; port_shapes /
        out_port_shape: the shapes of its Lava ports, if laid out differently."""
        in_shapes = [tuple(s) for s in in_shapes]
        port_shapes = [tuple(s) for s in (port_shapes or in_shapes)]
        super().__init__(node=node, in_shapes=in_shapes, out_shape=tuple(out_shape), period=period, name=name)
        for i, s in enumerate(port_shapes):
            setattr(self, f"in{i}", InPort(shape=s))
        self.out = OutPort(shape=tuple(out_port_shape or out_shape))


class HostNode0(HostNode):
    ARITY = 0


class HostNode2(HostNode):
    ARITY = 2


class HostNode3(HostNode):
    ARITY = 3


def host_node_class(arity: int) -> type[HostNode]:
    return {0: HostNode0, 1: HostNode, 2: HostNode2, 3: HostNode3}[arity]


class _HostModelBase(PyLoihiProcessModel):
    out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, F32)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.params = proc_params
        self.fn = None

    def _setup(self):
        # Lava forks one process per model; torch's thread pool does not survive a fork,
        # so the host side runs single-threaded, and eagerly (no per-process compilation).
        torch.set_num_threads(1)
        os.environ["ECMT_COMPILE"] = "0"
        from ecmt.runtime.executor import compile_node
        self.fn, self.state = compile_node(self.params["node"], self.params["out_shape"], torch.device("cpu"),
                                       "direct")
        self.ports = [getattr(self, f"in{i}") for i in range(len(self.params["in_shapes"]))]
        self.period = self.params["period"]

    def run_spk(self):
        if self.fn is None:
            self._setup()
        xs = [torch.from_numpy(np.asarray(p.recv(), F32).reshape(shape)).unsqueeze(0)
              for p, shape in zip(self.ports, self.params["in_shapes"])]
        t = (self.time_step - 1) % self.period + 1          # the step within this sample
        if t == 1 and self.state is not None:
            self.state.reset()
        with torch.no_grad():
            y = self.fn(xs, t)
        self.out.send(y[0].numpy().astype(F32).reshape(self.out.shape))


def _host_models():
    out = {}
    for proc_cls in (HostNode0, HostNode, HostNode2, HostNode3):
        arity = proc_cls.ARITY
        attrs = {f"in{i}": LavaPyType(PyInPort.VEC_DENSE, F32) for i in range(arity)}
        attrs["__annotations__"] = {f"in{i}": PyInPort for i in range(arity)}
        for t in ("floating_pt", "fixed_pt"):          # host arithmetic is float in both
            cls = type(f"PyHostNode{arity}{t.split('_')[0].title()}", (_HostModelBase,), dict(attrs))
            out[(proc_cls, t)] = tag(t)(requires(CPU)(implements(proc=proc_cls, protocol=LoihiProtocol)(cls)))
    return out


HOST_MODELS = _host_models()


def host_model(proc_cls, tag_name: str):
    return HOST_MODELS[(proc_cls, tag_name)]


# -- synapses without delay ------------------------------------------------------------------
class _ZeroDelayDenseBase(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, F32)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, F32)
    a_buff: np.ndarray = LavaPyType(np.ndarray, F32)
    weights: np.ndarray = LavaPyType(np.ndarray, F32)
    num_message_bits: np.ndarray = LavaPyType(np.ndarray, int, precision=5)
    fixed = False

    def run_spk(self):
        if not hasattr(self, "w"):
            w = np.asarray(self.weights, F32)
            if self.fixed:
                q, scale = quantize_int8(w)
                w = (q * scale).astype(F32)
            self.w = w
        self.a_out.send((self.w @ np.asarray(self.s_in.recv(), F32)).astype(F32))


class _ZeroDelayConvBase(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, F32)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, F32)
    a_buf: np.ndarray = LavaPyType(np.ndarray, F32)
    weight: np.ndarray = LavaPyType(np.ndarray, F32)
    kernel_size: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    stride: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    padding: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    dilation: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    groups: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    num_message_bits: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=5)
    weight_exp: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    num_weight_bits: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=5)
    fixed = False

    def run_spk(self):
        if not hasattr(self, "w"):
            w = np.asarray(self.weight, F32)
            if self.fixed:
                q, scale = quantize_int8(w)
                w = (q * scale).astype(F32)
            self.w = w
        out = conv_utils.conv(np.asarray(self.s_in.recv(), F32), self.w, self.kernel_size, self.stride,
                              self.padding, self.dilation, int(self.groups[0]))
        self.a_out.send(out.astype(F32))


def _synapse_models():
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense
    out = {}
    for proc, base in ((Dense, _ZeroDelayDenseBase), (Conv, _ZeroDelayConvBase)):
        for fixed in (False, True):
            name = f"ZeroDelay{proc.__name__}{'Fixed' if fixed else 'Float'}"
            cls = type(name, (base,), {"fixed": fixed})
            out[(proc, fixed)] = requires(CPU)(implements(proc=proc, protocol=LoihiProtocol)(cls))
    return out


SYNAPSE_MODELS = _synapse_models()
