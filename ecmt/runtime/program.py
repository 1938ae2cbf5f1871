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
* MT -> product (an MT neuron of such a pair whose only consumer is a
  direct-form product ECM): the product's running operand is the spike sum C.

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
    sum is an MT pair's spike sum."""
    pair: bool = False
    from_total: bool = False
    total: bool = False
    shared: tuple = ()


def plan(steps, fused: list[bool]) -> list[Role]:
    """The role of every step (a default Role where nothing is shared); only steps
    with fused[i] take part in a chain."""
    consumers: dict[int, list[int]] = {i: [] for i in range(len(steps))}
    for i, step in enumerate(steps):
        for j in step.srcs:
            consumers[j].append(i)
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
        if roles[m].pair and type(step.state) is MTState and len(consumers[m]) == 1:
            (p,) = consumers[m]
            if is_direct(p) and steps[p].srcs.count(m) == 1:
                roles[p].shared += (steps[p].srcs.index(m),)
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
        self.t = 1.0

    def set_t(self, t: int):
        self.t = float(t)

    def scale_t(self, scale: float) -> float:
        return scale / self.t          # rounded to float32 by ctypes, as torch's .float()

    def mt(self, mt: _MT, x, state, out, pair: bool, code=None, counts=None):
        self.lib.mt_step(out.shape[0], out[0].numel(), x.data_ptr(), state.data_ptr(), out.data_ptr(), mt.rule,
                         int(pair), native.Events(native.ptr(code), native.ptr(counts)), self.threads)

    def ecm(self, spec: "_ECMSpec", x, total, scale: float | None, out_sum, out, mt: _MT | None = None,
            spike_sum=None, code=None, counts=None):
        io = native.ECMIO(x.data_ptr(), native.ptr(total), 0.0 if scale is None else self.scale_t(scale),
                          native.ptr(out_sum), out.data_ptr(), None if mt is None else mt.pointer,
                          native.ptr(spike_sum), native.Events(native.ptr(code), native.ptr(counts)),
                          out[0].numel())
        batch, n = out.shape[0], out[0].numel()
        if spec.rows:
            self.lib.ecm_rows(batch, n // spec.len, spec.len, native.FUNCTIONS[spec.function],
                              native.ptr(spec.weight), native.ptr(spec.bias), spec.eps, self.t, io, self.threads)
        else:
            self.lib.ecm_map(batch, n, native.FUNCTIONS[spec.function], self.t, io, self.threads)

    def scaled_increment(self, p, scale: float, out_sum, out):
        self.lib.scaled_increment(p.numel(), p.data_ptr(), self.scale_t(scale), out_sum.data_ptr(), out.data_ptr(),
                                  self.threads)


class TorchKernels:
    """The same updates with the reference's eager kernel functions (kernels.py), t as a
    float64 0-d tensor on the device, results copied into the buffers: what a CUDA graph
    records (and what runs on the CPU where the native kernels cannot)."""

    def __init__(self, device):
        self.t_tensor = torch.ones((), dtype=torch.float64, device=device)

    def set_t(self, t: int):
        self.t_tensor.fill_(float(t))

    def scale_t(self, scale: float):
        return (scale / self.t_tensor).float()

    @staticmethod
    def _args(mt: _MT):
        return (mt.state.th_pos, mt.state.th_neg, mt.levels, *mt.state._k)

    def mt(self, mt: _MT, x, state, out, pair: bool, code=None, counts=None):
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
        out.copy_(s)

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
        self.roles = [Role() for _ in steps] if observe else plan(steps, fused)
        # an MT neuron's thresholds and state follow its input's shape (a PPN neuron's output has
        # a channel per level)
        self.mts = {i: _MT(s.state, self.shapes[s.srcs[0]], self.device) for i, s in enumerate(steps)
                    if type(s.state) in (MTState, PPNState) and not s.static}
        self.values: list = [None] * len(steps)
        self.state_buffers: list[torch.Tensor] = []     # zeroed before every run
        self.spike_sums: dict[int, torch.Tensor] = {}    # MT pair -> its spike sum C
        self.torch_kernels: list[TorchKernels] = []      # ECMs the native kernels do not cover
        self.buffers: list[torch.Tensor] = []            # everything _empty gave: back to POOL on release
        self.ops = [self._build(i) for i in range(len(steps))]
        self.active = [op for op in self.ops if op is not None]
        # steps whose value is a buffer of this program (not a node's own step function's result)
        self.buffered = {i for i, op in enumerate(self.ops) if op is not None and op.__name__ != "hosted"}
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
        inputs = [None] * len(step.srcs)

        def hosted(t):                        # the node's own step function (and state)
            for k, j in enumerate(step.srcs):
                inputs[k] = self.values[j]
            self.values[i] = step.fn(inputs, t)
        return hosted

    def _linear(self, i: int):
        node = self.steps[i].node
        w = node.weight.to(self.device).t()
        b = None if node.bias is None else node.bias.to(self.device)
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
        mt, kernels = self.mts[i], self.kernels
        v = self._state(i, self.shapes[self.steps[i].srcs[0]])
        s = self._empty(v.shape)
        code, counts = self._events(mt, v)
        state = mt.state
        ppn = type(state) is PPNState
        self._track(v)

        def neuron(t):
            if counts is not None:
                counts.zero_()
            kernels.mt(mt, self._input(i).contiguous(), v, s, False, code, counts)
            if self.observe or self.count:
                state.v, state.code, state.counts = v, code, counts
            self.values[i] = state._channels(lambda j, lam: (s == lam).to(s.dtype)) if ppn else s
        return neuron

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
        s = self._empty(c.shape)
        running = self._state(i) if self.count else None       # to tell an active update
        code, counts = self._events(mt, c)
        self._track(total, c, running)
        self.spike_sums[i] = c
        state = mt.state

        def pair(t):
            if counts is not None:
                counts.zero_()
            kernels.ecm(spec, self.values[src].contiguous(), total, scale, running, s, mt, c, code, counts)
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
        self._track(total, out_sum)

        def ecm(t):
            kernels.ecm(spec, self.values[src].contiguous(), total, scale, out_sum, out)
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
        self._track(*sums)
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
        self._track(out_sum)
        raw = self._empty((self.rows[i], *self.shapes[i]))
        kernels = self.kernels
        incremental = state.form == "incremental"

        def product(t):
            operands, increments = [], []
            for pos, j in enumerate(step.srcs):
                if pos in role.shared:                  # the MT pair's spike sum is the running operand
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

    def _track(self, *buffers):
        """Buffers that hold state: zeroed before every run."""
        self.state_buffers.extend(b for b in buffers if b is not None)

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
        self.kernels.set_t(t)
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
        for b in self.state_buffers:
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
