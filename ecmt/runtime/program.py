"""The fast step (GraphExecutor's default): every step of the graph as a fixed
sequence of fused operations on buffers allocated once per batch size.

On the CPU the stateful nodes run native.c's kernels: an MT neuron, an ECM and
an ECM fused with the MT neuron after it are one pass over memory each, with no
compilation at run time (the C library is built once per machine, in about a
second).  On CUDA they run the reference's own eager kernel functions
(kernels.py), and the whole step is recorded once as a CUDA graph and replayed.
Either way (NativeKernels or TorchKernels below), the step keeps the state of some node chains
shared, since what a step costs beyond an ANN forward is mostly the state it
reads and writes; in exact arithmetic:

* ECM -> MT (a nonlinearity ECM whose only consumer is an MT neuron): the
  neuron's membrane is the ECM's running output minus the spikes sent so far,
  v_t = t f(S_t / t) - C_(t-1).  The pair keeps S and C instead of S, the
  running output and v.
* product -> ECM (a direct-form product ECM whose only consumer is a
  nonlinearity ECM): the ECM's input sum is the product's running output,
  S_t = scale A_t B_t / t.  Neither the product's running output nor S is kept.
* MT -> product (an MT neuron, of such a pair or not, whose only consumer is a
  direct-form product ECM): the product's running operand is the neuron's spike
  sum C, and the spikes themselves are not written where nothing else reads them.
* product -> views -> MT (a direct-form product whose only consumer, through
  views, is an MT neuron): the membrane is the product's running output minus
  the spikes sent, v_t = scale A_t B_t / t - C_(t-1), as for an ECM -> MT pair.

Passes over memory that a layer-by-layer run makes are skipped too: an MT neuron
reads its input where it lies (a select, a permute, a reshape of a permuted
tensor: strided, no copy); a linear layer whose output reaches only MT neurons and
ECMs (through views) leaves its bias to their kernels; the native kernels read
the state as zeros at step 1 instead of it being zeroed before a run.

The numbers are the node-by-node executor's up to rounding (a rounding
difference can flip a spike whose membrane sits on a threshold), which
tests/test_fast_step.py checks.  With an observer nothing is shared: every node
emits its increment and the observer sees what it sees node by node, MT event
codes included; hw_sim's Counter, which reads no ECM output, gets the shared
chains with the MT events counted in the kernels (Program's `count`).  Nodes the
kernels do not cover (state objects replaced after construction, as
hw_sim.deployed does) run their own step function in place.
"""
from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import sys

import torch

from .. import ir
from . import native
from .ecm import NonlinearityECMState, ProductECMState
from .kernels import mt_multi_update_coded, mt_update, mt_update_coded
from .neuron import MTState, PPNState


@dataclasses.dataclass
class Role:
    """How one stateful node runs.  pair: an ECM -> MT pair (on both members);
    from_total: an ECM whose input is its product's running output; total: a product
    that emits its running output; shared: a product's operand positions whose running
    sum is an MT neuron's spike sum; into_product: an MT neuron whose only consumer is such
    a product (it keeps its spike sum; nothing else reads its spikes); from_product: an MT
    neuron whose input is, through views only, a direct-form product's (that product's
    step index), the product's only consumer: the neuron's membrane is the product's running
    output minus its spike sum (the pair form), the product emits its raw A_t B_t."""
    pair: bool = False
    from_total: bool = False
    total: bool = False
    shared: tuple = ()
    into_product: bool = False
    from_product: int | None = None


VIEWS = (ir.Reshape, ir.Permute, ir.Select, ir.Slice)


def consumers_of(steps) -> list[list[int]]:
    """Per step, the steps that read it (a step that reads it twice: twice)."""
    consumers: list[list[int]] = [[] for _ in steps]
    for i, step in enumerate(steps):
        for j in step.srcs:
            consumers[j].append(i)
    return consumers


def plan(steps, fused: list[bool], count: bool = False, native: bool = True) -> list[Role]:
    """The role of every step (a default Role where nothing is shared); only steps
    with fused[i] take part in a chain.  count (hw_sim's Counter observes): only an ECM -> MT
    pair's neuron hands its spike sum to a product (there a product counts its own running
    operands while it adds them up, native.add_count, cheaper than counting a neuron's spikes
    and spike sum again), and no product -> MT pair (the Counter reads the product's
    increments); native: the native kernels run the steps (the product -> MT pair is theirs)."""
    consumers = consumers_of(steps)
    roles = [Role() for _ in steps]
    kind = lambda i, cls: fused[i] and not steps[i].static and type(steps[i].state) is cls
    is_direct = lambda i: kind(i, ProductECMState) and steps[i].state.form == "direct"
    for i, step in enumerate(steps):
        if kind(i, NonlinearityECMState) and len(step.srcs) == 1:
            (src,) = step.srcs
            if is_direct(src) and consumers[src] == [i]:
                roles[i].from_total = roles[src].total = True
            if len(consumers[i]) == 1:
                (m,) = consumers[i]
                if kind(m, MTState) and steps[m].srcs == [i]:
                    roles[i].pair = roles[m].pair = True
    for m, step in enumerate(steps):
        if kind(m, MTState) and len(consumers[m]) == 1 and (not count or roles[m].pair):
            (p,) = consumers[m]
            if is_direct(p):
                roles[p].shared += (steps[p].srcs.index(m),)
                roles[m].into_product = True
    if native and not count:
        for p, step in enumerate(steps):
            if not is_direct(p) or roles[p].total:
                continue
            j = p                               # through views to the product's one consumer
            while len(consumers[j]) == 1 and isinstance(steps[consumers[j][0]].node, VIEWS):
                j = consumers[j][0]
            if len(consumers[j]) == 1:
                (m,) = consumers[j]
                if kind(m, MTState) and not roles[m].pair:
                    roles[p].total = True
                    roles[m].from_product = p
    return roles


def ecm_function(node: ir.Node, shape: tuple) -> str | None:
    """native.c's name for an ECM node's function, None where the kernels do not cover it."""
    if isinstance(node, ir.GELUECM):
        return "gelu" if node.approximate == "none" else "gelu_tanh"
    if isinstance(node, ir.ReLUECM):
        return "relu"
    if isinstance(node, ir.ElementwiseECM):
        return node.function if node.function in native.FUNCTIONS else None
    if isinstance(node, ir.SoftmaxECM):
        return "softmax" if node.axis in (-1, len(shape) - 1) else None
    if isinstance(node, ir.LayerNormECM):
        return "layer_norm"
    return None


class _MT:
    """An MT neuron's rule for the kernels: native.MTRule (its thresholds laid out per
    element of a sample, or one value) and the batched thresholds for torch."""

    def __init__(self, state: MTState, shape: tuple, device):
        self.state, self.levels, self.k = state, state.levels, state.k
        n = math.prod(shape)
        flat = lambda th: None if th is None else (
            th.reshape(1) if th.numel() == 1 else th.expand(1, *shape).reshape(n)).contiguous()
        self.th_pos, self.th_neg = flat(state.th_pos), flat(state.th_neg)
        self.rule = native.MTRule(self.th_pos.data_ptr(), native.ptr(self.th_neg), self.th_pos.numel(),
                                  self.levels, self.k)
        self.pointer = ctypes.pointer(self.rule)


class NativeKernels:
    """The stateful updates in native.c (CPU)."""

    def __init__(self, lib):
        self.lib, self.threads = lib, torch.get_num_threads()
        self.t, self.first = 1.0, False

    def set_t(self, t: int, first: bool = False):
        """first: step 1 of a run whose state buffers were not zeroed (the kernels read them as zeros)."""
        self.t, self.first = float(t), first

    def scale_t(self, scale: float) -> float:
        return scale / self.t          # rounded to float32 by ctypes, as torch's .float()

    def mt(self, mt: _MT, x, state, out, pair: bool, code=None, counts=None, spike_sum=None):
        """out may be None (the spikes are not written; spike_sum keeps their running sum); x
        any strided view whose elements per sample, in row-major order, are the neuron's."""
        self.mt_call(mt, state, out, pair, code, counts, spike_sum)(x)

    def mt_call(self, mt: _MT, state, out, pair: bool, code=None, counts=None, spike_sum=None, addend=None,
                scale: float | None = None):
        """mt with every argument but the input bound once (a program's buffers stay put): a
        function of x, for every step.  addend: a value per element of a sample added to x;
        scale: x is a product's raw A_t B_t, its running output x scale / t (pair form)."""
        step, batch, n = self.lib.mt_step, state.shape[0], state[0].numel()
        addend = native.ptr(addend)
        bound = (state.data_ptr(), native.ptr(out), native.ptr(spike_sum), mt.rule, int(pair))
        events = native.Events(native.ptr(code), native.ptr(counts))

        def call(x):
            layout = native.strided(x)
            if layout is None:
                x = x.contiguous()
            step(batch, n, x.data_ptr(), layout, addend, 1.0 if scale is None else self.scale_t(scale), *bound,
                 self.first, events, self.threads)
        return call

    def ecm(self, spec: "_ECMSpec", x, total, scale: float | None, out_sum, out, mt: _MT | None = None,
            spike_sum=None, code=None, counts=None):
        self.ecm_call(spec, total, scale, out_sum, out, mt, spike_sum, code, counts)(x)

    def ecm_call(self, spec: "_ECMSpec", total, scale: float | None, out_sum, out, mt: _MT | None = None,
                 spike_sum=None, code=None, counts=None, addend=None):
        """ecm with every argument but the input bound once: a function of x.  addend: a value
        per element of a sample added to x (where the ECM keeps its input sum)."""
        shape = (out if out is not None else spike_sum).shape
        batch, n = shape[0], math.prod(shape[1:])
        io = native.ECMIO(0, native.ptr(total), 0.0, native.ptr(out_sum), native.ptr(out),
                          None if mt is None else mt.pointer, native.ptr(spike_sum),
                          native.Events(native.ptr(code), native.ptr(counts)), n, native.ptr(addend))
        f = native.FUNCTIONS[spec.function]
        if spec.rows:
            rows, weight, bias = n // spec.len, native.ptr(spec.weight), native.ptr(spec.bias)
            run = lambda: self.lib.ecm_rows(batch, rows, spec.len, f, weight, bias, spec.eps, self.t, io, self.threads)
        else:
            run = lambda: self.lib.ecm_map(batch, n, f, self.t, io, self.threads)

        def call(x):
            x = x.contiguous()                  # (kept alive through the call)
            io.x, io.first = x.data_ptr(), self.first
            if scale is not None:
                io.scale_t = self.scale_t(scale)
            run()
        return call

    def scaled_increment(self, p, scale: float, out_sum, out):
        self.lib.scaled_increment(p.numel(), p.data_ptr(), self.scale_t(scale), out_sum.data_ptr(), out.data_ptr(),
                                  self.first, self.threads)


class TorchKernels:
    """The same updates with the reference's eager kernel functions (kernels.py), t as a
    float64 0-d tensor on the device, results copied into the buffers: what a CUDA graph
    records (and what runs on the CPU where the native kernels cannot)."""

    def __init__(self, device):
        self.t_tensor = torch.ones((), dtype=torch.float64, device=device)

    def set_t(self, t: int, first: bool = False):
        self.t_tensor.fill_(float(t))       # (its state buffers are zeroed before a run: first is moot)

    def scale_t(self, scale: float):
        return (scale / self.t_tensor).float()

    @staticmethod
    def _args(mt: _MT):
        return (mt.state.th_pos, mt.state.th_neg, mt.levels, *mt.state._k)

    def mt(self, mt: _MT, x, state, out, pair: bool, code=None, counts=None, spike_sum=None):
        x = x.reshape(state.shape)
        if counts is not None:
            raise ValueError("torch's kernels write event codes; they do not count them")
        if pair:
            s, _ = mt_update.eager(-state, x, *self._args(mt))
            state.add_(s)
        elif code is not None:
            s, v, c = (mt_update_coded if mt.k == 1 else mt_multi_update_coded).eager(state, x, *self._args(mt))
            state.copy_(v)
            code.copy_(c)
        else:
            s, v = mt_update.eager(state, x, *self._args(mt))
            state.copy_(v)
        if out is not None:
            out.copy_(s)
        if spike_sum is not None:
            spike_sum.add_(s)

    def mt_call(self, mt: _MT, state, out, pair: bool, code=None, counts=None, spike_sum=None, addend=None,
                scale=None):
        assert addend is None and scale is None, "the chains through views are the native kernels'"
        return lambda x: self.mt(mt, x, state, out, pair, code, counts, spike_sum)

    def ecm_call(self, spec: "_ECMSpec", total, scale: float | None, out_sum, out, mt: _MT | None = None,
                 spike_sum=None, code=None, counts=None, addend=None):
        assert addend is None, "linear layers keep their bias on torch's kernels"
        return lambda x: self.ecm(spec, x, total, scale, out_sum, out, mt, spike_sum, code, counts)

    def ecm(self, spec: "_ECMSpec", x, total, scale: float | None, out_sum, out, mt: _MT | None = None,
            spike_sum=None, code=None, counts=None):
        if mt is not None and (out_sum is not None or code is not None or counts is not None):
            raise ValueError("torch's kernels run an ECM -> MT pair without events (count mode is native)")
        tf = self.t_tensor.float()
        if total is None:
            s_t = x * self.scale_t(scale)
        else:
            total.add_(x)
            s_t = total
        new = spec.f(s_t / tf, *spec.params) * tf
        if mt is None:
            out.copy_(new - out_sum)
            out_sum.copy_(new)
        else:
            self.mt(mt, new, spike_sum, out, pair=True)

    def scaled_increment(self, p, scale: float, out_sum, out):
        new = p * self.scale_t(scale)
        out.copy_(new - out_sum)
        out_sum.copy_(new)


@dataclasses.dataclass
class _ECMSpec:
    function: str | None      # native.FUNCTIONS name, or None: torch only
    f: object                 # the eager f (kernels.ECM_KERNELS) and its extra arguments
    params: tuple
    rows: bool = False        # softmax / layer norm: along the last axis of length len
    len: int = 0
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    eps: float = 0.0


class Program:
    """The fast step of `executor`'s graph for inputs of `batch` samples: `run(x, T)`
    gives the output increments of steps 1..T.  `observe`: no shared state (every node
    emits its increment, for an observer); `record`: MT neurons write event codes.
    `count` (native kernels; hw_sim's Counter): the chains stay shared and MT neurons with
    k = 1 count their events per sample inside their kernel (``state.counts``: per level,
    the elements that fired it, then the active updates; an ECM -> MT pair keeps the ECM's
    running output, to tell an active update); the observer is called for every node, with
    None for the values a chain does not materialize (the ECM of a pair)."""

    def __init__(self, executor, batch: int, kernels, observe: bool = False, record: bool = False,
                 count: bool = False):
        # (no reference to the executor: its end hands this program's buffers back, see release)
        self.batch, self.kernels, self.output_index = batch, kernels, executor.output_index
        self.device, self.observe, self.record, self.count = executor.device, observe, record, count
        if count and (observe or not isinstance(kernels, NativeKernels)):
            raise ValueError("count mode runs shared chains on the native kernels")
        steps = self.steps = executor.steps
        self.shapes = [tuple(executor.graph.shapes[s.node.name]) for s in steps]
        # nodes computed from constants only run with batch 1 (as node by node)
        data: set[int] = set()
        for i, step in enumerate(steps):
            if isinstance(step.node, ir.Input) or any(j in data for j in step.srcs):
                data.add(i)
        self.rows = [batch if i in data else 1 for i in range(len(steps))]
        self.specs = [self._ecm_spec(i) for i in range(len(steps))]
        native_ok = isinstance(kernels, NativeKernels)
        fused = [self._fusable(i, native_ok) for i in range(len(steps))]
        self.roles = [Role() for _ in steps] if observe else plan(steps, fused, count, native_ok)
        # an MT neuron's thresholds and state follow its input's shape (a PPN neuron's output has
        # a channel per level)
        self.mts = {i: _MT(s.state, self.shapes[s.srcs[0]], self.device) for i, s in enumerate(steps)
                    if type(s.state) in (MTState, PPNState) and not s.static}
        self.values: list = [None] * len(steps)
        self.state_buffers: list[torch.Tensor] = []     # every buffer that holds state
        self.zeroed: list[torch.Tensor] = []            # those zeroed before every run
        self.spike_sums: dict[int, torch.Tensor] = {}    # MT neuron -> the spike sum C a product reads
        self.torch_kernels: list[TorchKernels] = []      # ECMs the native kernels do not cover
        self.buffers: list[torch.Tensor] = []            # everything _empty gave: back to POOL on release
        self.consumers = consumers_of(steps)
        # the native kernels, and no observer reads node values (count mode's Counter reads MT
        # events and product operands only): views and biases may be left to the kernels
        self.kernels_read = native_ok and not observe
        self.addends: dict[int, torch.Tensor] = {}       # kernel step -> the bias it adds for a linear layer
        self.unbiased = {i for i in range(len(steps)) if self._fold_bias(i)}
        self.ops = [self._build(i) for i in range(len(steps))]
        self.active = [op for op in self.ops if op is not None]
        # steps whose value is a buffer of this program (not a node's own step function's result)
        self.buffered = {i for i, op in enumerate(self.ops)
                         if op is not None and op.__name__ not in ("hosted", "view", "in_order")}
        self.graph = None                                # CUDA: the recorded step (False: not recordable)

    # -- what runs where -------------------------------------------------------------
    def _ecm_spec(self, i: int) -> _ECMSpec | None:
        step = self.steps[i]
        if type(step.state) is not NonlinearityECMState:
            return None
        node, shape = step.node, self.shapes[i]
        spec = _ECMSpec(ecm_function(node, shape), step.state.f, step.state.params)
        if spec.function in ("softmax", "layer_norm"):
            spec.rows, spec.len = True, shape[-1]
        if spec.function == "layer_norm":
            spec.weight, spec.bias, spec.eps = step.state.params[0], step.state.params[1], float(step.state.params[2])
        return spec

    def _fusable(self, i: int, native_ok: bool) -> bool:
        """Whether step i may take part in a shared chain (its kernel computes the chain's form)."""
        state = self.steps[i].state
        if type(state) is NonlinearityECMState:
            return self.specs[i].function is not None or not native_ok
        return type(state) in (MTState, ProductECMState)

    def _state(self, i: int, shape=None):
        """A state buffer of node i (its shape, or `shape`) for its batch; start() zeroes it."""
        return self._empty((self.rows[i], *(self.shapes[i] if shape is None else shape)))

    def _input(self, i: int, pos: int = 0):
        return self.values[self.steps[i].srcs[pos]]

    def _build(self, i: int):
        step, role = self.steps[i], self.roles[i]
        state = step.state
        if step.static:
            return None
        if isinstance(step.node, ir.Linear):
            return self._linear(i)
        if type(state) in (MTState, PPNState):
            return self._pair(i) if role.pair else self._mt(i)
        if type(state) is NonlinearityECMState:
            return None if role.pair else self._ecm(i)
        if type(state) is ProductECMState:
            return self._product(i)
        if isinstance(step.node, ir.Add) and len(step.srcs) == 2:
            return self._add(i)
        if isinstance(step.node, ir.Reshape) and self._read_in_order(i):
            src = step.srcs[0]

            def in_order(t):                  # its neurons read the elements where they lie
                self.values[i] = self.values[src]
            return in_order
        if isinstance(step.node, VIEWS):
            last = [None, None]               # the input it last saw, and its view of it

            def view(t):                      # a view of a buffer that stays put: made once
                x = self.values[step.srcs[0]]
                if x is last[0]:
                    self.values[i] = last[1]
                    return
                y = self.values[i] = step.fn([x], t)
                # (a reshape that had to copy is no view: made again every step)
                shares = y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
                last[:] = (x, y) if shares else (None, None)
            return view
        inputs = [None] * len(step.srcs)

        def hosted(t):                        # the node's own step function (and state)
            for k, j in enumerate(step.srcs):
                inputs[k] = self.values[j]
            self.values[i] = step.fn(inputs, t)
        return hosted

    def _fold_bias(self, i: int) -> bool:
        """Whether linear step i leaves its bias out because every kernel its output reaches (through
        views) adds it to its input: MT neurons and ECMs on the native kernels.  Writing the bias
        into the output costs a pass over it, as large as the layer's output; the kernels add it
        where they read x anyway (self.addends: each its bias laid out as it reads its input)."""
        node = self.steps[i].node
        # (hw_sim's Counter, the one observer of count mode, reads a linear layer's input, not its
        # output, and the MT kernels count an update as active on x plus the bias: count mode folds too)
        if not isinstance(node, ir.Linear) or node.bias is None or self.steps[i].static or not self.kernels_read:
            return False
        found: dict[int, torch.Tensor] = {}
        bias = node.bias.to(self.device, torch.float32).expand(1, *self.shapes[i])

        def reach(j: int, value: torch.Tensor) -> bool:
            for c in self.consumers[j]:
                step, role = self.steps[c], self.roles[c]
                if step.static or step.srcs.count(j) != 1:
                    return False
                if isinstance(step.node, VIEWS):
                    if not reach(c, step.fn([value], 1)):
                        return False
                    continue
                state = step.state
                if type(state) is NonlinearityECMState and not role.from_total and self.specs[c].function:
                    kernel = self.consumers[c][0] if role.pair else c   # a pair runs as its MT neuron's step
                elif type(state) in (MTState, PPNState) and not role.pair:
                    kernel = c
                else:
                    return False
                found[kernel] = value.contiguous().reshape(-1)
            return True
        if not reach(i, bias):
            return False
        self.addends.update(found)
        return True

    def _read_in_order(self, i: int) -> bool:
        """Whether every consumer of step i is an MT neuron on the native kernels, which reads its
        input's elements per sample in row-major order from any strided view: then a reshape
        need not copy (nor may anything else see its value: no observer; count mode's Counter
        reads no reshape and only the batch size of an MT neuron's input)."""
        users = self.consumers[i]
        return self.kernels_read and bool(users) and all(
            type(self.steps[j].state) in (MTState, PPNState) and not self.roles[j].pair and not self.steps[j].static
            for j in users)

    def _add(self, i: int):
        """A two-input add into a buffer of this program (the node's own function allocates)."""
        out = self._empty((self.rows[i], *self.shapes[i]))
        a, b = self.steps[i].srcs

        def add(t):
            torch.add(self.values[a], self.values[b], out=out)
            self.values[i] = out
        return add

    def _linear(self, i: int):
        node = self.steps[i].node
        w = node.weight.to(self.device).t()
        b = None if node.bias is None or i in self.unbiased else node.bias.to(self.device)
        out = self._empty((self.rows[i], *self.shapes[i]))
        flat = out.view(-1, w.shape[1])

        def linear(t):
            x = self._input(i).reshape(-1, w.shape[0])
            if b is None:
                torch.mm(x, w, out=flat)
            else:
                torch.addmm(b, x, w, out=flat)
            self.values[i] = out
        return linear

    def _mt(self, i: int):
        mt, kernels, role = self.mts[i], self.kernels, self.roles[i]
        # the membrane, or after a product (pair form) the spike sum
        v = self._state(i, self.shapes[self.steps[i].srcs[0]])
        pair = role.from_product is not None
        scale = self.steps[role.from_product].state.scale if pair else None
        c = self._state(i) if role.into_product and not pair else None  # the product's running operand
        s = None if self._spikes_unread(i) else self._empty(v.shape)
        code, counts = self._events(mt, v)
        state = mt.state
        ppn = type(state) is PPNState
        self._track(v, c, kernels_start=True)
        if role.into_product:
            self.spike_sums[i] = v if pair else c

        call = kernels.mt_call(mt, v, s, pair, code, counts, c, self.addends.get(i), scale)

        def neuron(t):
            if counts is not None:
                counts.zero_()
            call(self._input(i))
            if self.observe or self.count:
                state.v, state.code, state.counts = v, code, counts
            self.values[i] = state._channels(lambda j, lam: (s == lam).to(s.dtype)) if ppn else s
        return neuron

    def _spikes_unread(self, i: int) -> bool:
        """Whether MT neuron i's spikes go unread: its product reads its spike sum, and no observer,
        count or recording reads the spikes (the native kernels then do not write them)."""
        return self.roles[i].into_product and self.kernels_read and not self.count

    def _events(self, mt: _MT, like: torch.Tensor):
        """An MT neuron's event codes and per-sample counts buffers (None where not kept)."""
        if self.count and mt.k == 1:
            return None, self._empty((like.shape[0], 2 * mt.levels + 2), torch.int64)
        if self.record or self.count:
            return self._empty((like.numel(),), torch.uint8 if mt.k == 1 else torch.int16), None
        return None, None

    def _pair(self, i: int):
        """The MT neuron of an ECM -> MT pair: the ECM's step and the neuron's, fused."""
        e = self.steps[i].srcs[0]
        spec, mt, kernels = self.specs[e], self.mts[i], self.kernels
        from_total = self.roles[e].from_total
        src = self.steps[e].srcs[0]
        total = None if from_total else self._state(e, self.shapes[src])
        scale = self.steps[src].state.scale if from_total else None
        c = self._state(i)
        s = None if self._spikes_unread(i) else self._empty(c.shape)
        running = self._state(i) if self.count else None       # to tell an active update
        code, counts = self._events(mt, c)
        self._track(total, c, running, kernels_start=True)
        self.spike_sums[i] = c
        state = mt.state

        call = kernels.ecm_call(spec, total, scale, running, s, mt, c, code, counts, self.addends.get(i))

        def pair(t):
            if counts is not None:
                counts.zero_()
            call(self.values[src])
            if self.count:
                state.code, state.counts = code, counts
            self.values[i] = s
        return pair

    def _ecm(self, i: int):
        spec, kernels, role = self.specs[i], self.kernels, self.roles[i]
        src = self.steps[i].srcs[0]
        if spec is None or (spec.function is None and isinstance(kernels, NativeKernels)):
            spec = spec or self._ecm_spec(i)
            kernels = TorchKernels(self.device) if spec.function is None else kernels
            if kernels is not self.kernels:
                self.torch_kernels.append(kernels)
        total = None if role.from_total else self._state(i, self.shapes[src])
        scale = self.steps[src].state.scale if role.from_total else None
        out_sum = self._state(i)
        out = self._empty(out_sum.shape)
        self._track(total, out_sum, kernels_start=kernels is self.kernels)

        call = kernels.ecm_call(spec, total, scale, out_sum, out, addend=self.addends.get(i))

        def ecm(t):
            call(self.values[src])
            self.values[i] = out
        return ecm

    def _product(self, i: int):
        step, role = self.steps[i], self.roles[i]
        state = step.state
        flags = (state.ta, state.tb)
        shapes = []
        for pos, j in enumerate(step.srcs):
            shape = list(self.shapes[j])
            if flags[pos]:
                shape[-2:] = shape[-1], shape[-2]
            shapes.append((self.rows[j], *shape))
        sums = [None if pos in role.shared else self._empty(shape)
                for pos, shape in enumerate(shapes)]
        incremental = state.form == "incremental"
        # the direct form's sums start as step 1's increments (copied, where a run is not recorded once
        # as a CUDA graph for every step, nor counted in count mode): no zeroing before a run
        copy_first = not incremental and isinstance(self.kernels, NativeKernels) and not self.count
        self._track(*sums, kernels_start=copy_first)
        # count mode: a running operand's update also counts it and its increment along k (native.add_count),
        # for hw_sim's Counter (state.counted: x, A, y, B as native.product_counts takes them)
        counted = [None] * 4
        if self.count:
            for pos, shape in enumerate(shapes):
                if sums[pos] is not None:
                    k = shape[:-2] + (shape[-1] if pos == 0 else shape[-2],)
                    counted[2 * pos:2 * pos + 2] = self._empty(k, torch.int32), self._empty(k, torch.int32)
        out_sum = None if role.total else self._state(i)
        out = None if role.total else self._empty(out_sum.shape)
        self._track(out_sum, kernels_start=True)
        raw = self._empty((self.rows[i], *self.shapes[i]))
        kernels = self.kernels

        def product(t):
            operands, increments = [], []
            for pos, j in enumerate(step.srcs):
                if pos in role.shared:                  # the MT neuron's spike sum is the running operand
                    c = self.spike_sums[j]
                    operands.append(c.transpose(-1, -2) if flags[pos] else c)
                    if self.count:
                        x = self.values[j]
                        increments.append(x.transpose(-1, -2) if flags[pos] else x)
                    continue
                x = self.values[j]
                x = x.transpose(-1, -2) if flags[pos] else x
                increments.append(x)
                if incremental:
                    operands.append(sums[pos].clone())  # A_(t-1), B_(t-1)
                if counted[2 * pos] is not None:
                    native.add_count(x, sums[pos], pos, *counted[2 * pos:2 * pos + 2])
                elif copy_first and t == 1:
                    sums[pos].copy_(x)
                else:
                    sums[pos].add_(x)
                if not incremental:
                    operands.append(sums[pos])
            if incremental:
                x, y = increments
                a, b = operands
                raw.add_(torch.matmul(x, b)).add_(torch.matmul(a, y)).add_(torch.matmul(x, y))
            else:
                torch.matmul(*operands, out=raw)
            if self.observe or self.count:              # what hw_sim's counting reads, as node by node
                # (the Counter reads views as they lie; an observer that may keep them gets copies)
                state.x, state.y = increments if self.count else (z.contiguous() for z in increments)
                state.a, state.b = (sums[pos] if sums[pos] is not None else operands[pos] for pos in range(2))
                state.counted = tuple(counted) if self.count else None
            if role.total:
                self.values[i] = raw                    # the ECM after it scales it
                return
            kernels.scaled_increment(raw, state.scale, out_sum, out)
            self.values[i] = out
        if incremental:
            self._track(raw)
        return product

    def _empty(self, shape: tuple, dtype=torch.float32) -> torch.Tensor:
        """A buffer, from those of programs that are gone where one of this shape is free
        (a new executor for the same graph and batch, as hw_sim builds for every call, then
        touches no fresh memory)."""
        t = POOL.take(shape, dtype, self.device)
        self.buffers.append(t)
        return t

    def _track(self, *buffers, kernels_start: bool = False):
        """Buffers that hold state: zeroed before every run, unless kernels_start: the native kernels
        read them as zeros at step 1 (a pass over memory less per run)."""
        buffers = [b for b in buffers if b is not None]
        self.state_buffers.extend(buffers)
        if not (kernels_start and isinstance(self.kernels, NativeKernels)):
            self.zeroed.extend(buffers)

    def release(self) -> None:
        """Hand the buffers to the pool (the executor drops this program: a new batch size,
        or its own end); the program cannot run after."""
        self.ops = self.active = None
        self.values = [None] * len(self.values)
        self.spike_sums.clear()
        POOL.give(self.buffers)
        self.buffers = []

    # -- running -----------------------------------------------------------------------
    def start(self, x: torch.Tensor) -> None:
        """Before step 1: zero the state, compute the static nodes once."""
        self.start_state()
        for step in self.steps:
            if step.state is not None:
                step.state.reset()
        for i, step in enumerate(self.steps):
            if step.static:
                self.values[i] = step.fn([self.values[j] for j in step.srcs] if step.srcs else [x], 1)

    def step(self, t: int, observer=None, x: torch.Tensor | None = None) -> torch.Tensor:
        """Step t's output increment; `observer` sees every node as node by node (observe mode:
        tensors it may keep; count mode: hw_sim's Counter, which keeps none, sees the buffers)."""
        self.kernels.set_t(t, first=t == 1)
        for k in self.torch_kernels:
            k.set_t(t)
        if observer is None:
            for op in self.active:
                op(t)
        else:
            for i, (step, op) in enumerate(zip(self.steps, self.ops)):
                if op is not None:
                    op(t)
                    if self.observe and i in self.buffered:
                        # the buffer is overwritten next step: the observer gets this step's values
                        # to keep, as node by node (NeuroBench's hooks and a running mean keep them)
                        self.values[i] = self.values[i].clone()
                observer(step.node, [self.values[j] for j in step.srcs] if step.srcs else [x], self.values[i], t)
        return self.values[self.output_index]

    def run(self, x: torch.Tensor, T: int, observer=None):
        """The output increments of steps 1..T on x (a generator)."""
        self.start(x)
        if observer is None and self.device.type == "cuda" and self.graphable():
            yield from self._replay(x, T)
            return
        for t in range(1, T + 1):
            yield self.step(t, observer, x)

    # -- CUDA graphs ----------------------------------------------------------------------
    def graphable(self) -> bool:
        """A step can be recorded as a CUDA graph where no node's own step function keeps
        state (those take t as a Python number)."""
        return isinstance(self.kernels, TorchKernels) and all(
            op is None or step.state is None or type(step.state) in (MTState, PPNState, NonlinearityECMState,
                                                                     ProductECMState)
            for step, op in zip(self.steps, self.ops))

    def _replay(self, x: torch.Tensor, T: int):
        """Steps 1..T as replays of one recorded CUDA graph (recorded on the first run): the
        static nodes' values are copied into the buffers the graph reads, t into its tensor."""
        if self.graph is None:
            # the buffers the graph reads the static values from (copies: one may be the caller's x)
            self.statics = {i: self.values[i].clone() for i, s in enumerate(self.steps) if s.static}
            for i, buffer in self.statics.items():
                self.values[i] = buffer
            try:
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):           # warm-up: cuBLAS handles, workspaces
                    self.step(1)
                torch.cuda.current_stream(self.device).wait_stream(side)
                self.start_state()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for op in self.active:
                        op(1)
                self.graph, self.graph_out = graph, self.values[self.output_index]
            except Exception as err:  # noqa: BLE001 - any failure to record: run the same ops unrecorded
                warn_once(f"ecmt: could not record the step as a CUDA graph ({type(err).__name__}: {err}); "
                          "running it op by op")
                self.graph = False
        if self.graph is False:
            self.start(x)
            for t in range(1, T + 1):
                yield self.step(t)
            return
        for i, buffer in self.statics.items():
            if self.values[i] is not buffer:
                buffer.copy_(self.values[i])
                self.values[i] = buffer
        self.start_state()
        for t in range(1, T + 1):
            self.kernels.set_t(t)
            self.graph.replay()
            yield self.graph_out

    def start_state(self) -> None:
        for b in self.zeroed:
            b.zero_()


class _Pool:
    """Buffers of programs that are gone, by shape, dtype and device, for the next program:
    at most LIMIT bytes, the oldest dropped first."""
    LIMIT = 4 << 30

    def __init__(self):
        self.free: dict[tuple, list[torch.Tensor]] = {}
        self.bytes = 0

    def take(self, shape: tuple, dtype, device) -> torch.Tensor:
        stack = self.free.get((tuple(shape), dtype, torch.device(device)))
        if stack:
            t = stack.pop()
            self.bytes -= t.numel() * t.element_size()
            return t
        return torch.empty(shape, dtype=dtype, device=device)

    def give(self, buffers: list[torch.Tensor]) -> None:
        for t in buffers:
            self.free.setdefault((tuple(t.shape), t.dtype, t.device), []).append(t)
            self.bytes += t.numel() * t.element_size()
        while self.bytes > self.LIMIT:
            key = next(iter(self.free))
            for t in self.free.pop(key):
                self.bytes -= t.numel() * t.element_size()


POOL = _Pool()
_warned: set[str] = set()


def warn_once(line: str) -> None:
    """One line on stderr, once per process."""
    if line not in _warned:
        _warned.add(line)
        print(line, file=sys.stderr, flush=True)


def kernels_for(device: torch.device):
    """The kernels of the fast step on `device`, or None where it cannot run (then every run
    goes node by node, after one line that says why; silently where ECMT_FAST=0 asks for
    that).  ECMT_FAST=torch: torch's eager kernels on any device (what CUDA runs)."""
    mode = os.environ.get("ECMT_FAST", "1")
    if mode == "0":
        return None
    if device.type == "cuda" or mode == "torch":
        return TorchKernels(device)
    if device.type != "cpu":
        warn_once(f"ecmt: no fast step for device {device.type}; running node by node")
        return None
    lib = native.library()
    if lib is None:
        warn_once(f"ecmt: the fast step's kernels are unavailable ({native.unavailable()}); "
                  "running node by node (slower)")
        return None
    return NativeKernels(lib)
