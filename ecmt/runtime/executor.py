"""Runs a SpikingGraph for T time steps in PyTorch.

Every node receives per-step increments and emits per-step increments.  The
executor accumulates the Output node's increments and returns the running
estimate (sum up to t) / t for every t = 1..T.

Nodes whose inputs are all constant over time (the input image, constants, and
everything computed from them before the first MT neuron: patch embedding,
class token, position embedding, ...) emit the same increment at every step,
so they are computed at step 1 and reused.  (For an ECM on a constant stream
t f(c) - (t-1) f(c) = f(c) exactly.)
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import ir, memory
from ..errors import DataError
from ..ir import analysis
from ..ir.dispatch import KindTable
from . import program
from .ecm import NonlinearityECMState, ProductECMState
from .neuron import MTState, PPNState

# observer(node, inputs, output, t): sees every node's input and output increments.
Observer = Callable[[ir.Node, list[torch.Tensor], torch.Tensor, int], None]
# intervene(node, output, t) -> output: may replace a node's output (lockstep verification).
Intervene = Callable[[ir.Node, torch.Tensor, int], torch.Tensor]


class _Step:
    """A compiled node: `fn(inputs, t)` plus optional state to reset."""
    __slots__ = ("node", "srcs", "fn", "state", "static")

    def __init__(self, node, srcs, fn, state=None, static=False):
        self.node, self.srcs, self.fn, self.state, self.static = node, srcs, fn, state, static


# -- one builder per node kind: (node, shape, device, product_form) -> (fn(inputs, t), state or None)
def _on(t, device):
    return None if t is None else t.to(device)


def _first(node, shape, device, form):
    return (lambda xs, t: xs[0]), None


def _constant(node, shape, device, form):
    value = _on(node.value, device).unsqueeze(0)
    return (lambda xs, t: value), None


def _linear(node, shape, device, form):
    w, b = _on(node.weight, device), _on(node.bias, device)
    return (lambda xs, t: F.linear(xs[0], w, b)), None


def _conv2d(node, shape, device, form):
    w, b = _on(node.weight, device), _on(node.bias, device)
    st, pd, dl, g = node.stride, node.padding, node.dilation, node.groups
    return (lambda xs, t: F.conv2d(xs[0], w, b, st, pd, dl, g)), None


def _neuron(state_cls):
    def build(node, shape, device, form):
        state = state_cls(node, shape, device)
        return (lambda xs, t: state.step(xs[0])), state
    return build


def _ecm(make_state):
    """An ECM of one input: `make_state(node, device)` gives its NonlinearityECMState."""
    def build(node, shape, device, form):
        state = make_state(node, device)
        return (lambda xs, t: state.step(xs[0], t)), state
    return build


def _product(node, shape, device, form):
    state = ProductECMState(node.transpose_a, node.transpose_b, node.scale, form)
    return (lambda xs, t: state.step(xs[0], xs[1], t)), state


def _add(node, shape, device, form):
    def add(xs, t):
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out = out + x
        return out
    return (add if len(node.inputs) > 1 else (lambda xs, t: xs[0])), None


def _scale(node, shape, device, form):
    factor = _on(node.factor, device)
    return (lambda xs, t: xs[0] * factor), None


def _reshape(node, shape, device, form):
    target = node.shape
    return (lambda xs, t: xs[0].reshape(xs[0].shape[0], *target)), None


def _permute(node, shape, device, form):
    dims = (0, *(d + 1 for d in node.dims))
    return (lambda xs, t: xs[0].permute(dims)), None


def _slice(node, shape, device, form):
    axis, start, length = node.axis + 1, node.start, node.stop - node.start
    return (lambda xs, t: xs[0].narrow(axis, start, length)), None


def _select(node, shape, device, form):
    axis, index = node.axis + 1, node.index
    return (lambda xs, t: xs[0].select(axis, index)), None


def _concat(node, shape, device, form):
    axis = node.axis + 1

    def concat(xs, t):
        batch = max(x.shape[0] for x in xs)
        return torch.cat([x.expand(batch, *x.shape[1:]) for x in xs], dim=axis)
    return concat, None


def _mean(node, shape, device, form):
    axis = node.axis + 1
    return (lambda xs, t: xs[0].mean(dim=axis)), None


def _avgpool2d(node, shape, device, form):
    k, s, p = node.kernel_size, node.stride, node.padding
    return (lambda xs, t: F.avg_pool2d(xs[0], k, s, p, count_include_pad=True)), None


# What the executor runs for each node kind (and what Lava's host processes and the NIR
# node map run for single nodes, through compile_node).
KINDS = KindTable("executor", {
    ir.Input: _first,
    ir.Constant: _constant,
    ir.Output: _first,
    ir.Linear: _linear,
    ir.Conv2d: _conv2d,
    ir.MTNeuron: _neuron(MTState),
    ir.MTNeuronPPN: _neuron(PPNState),
    ir.GELUECM: _ecm(lambda n, device: NonlinearityECMState("gelu", n.approximate)),
    ir.ReLUECM: _ecm(lambda n, device: NonlinearityECMState("relu")),
    ir.ElementwiseECM: _ecm(lambda n, device: NonlinearityECMState("elementwise", n.function)),
    ir.SoftmaxECM: _ecm(lambda n, device: NonlinearityECMState("softmax", n.axis + 1)),
    ir.LayerNormECM: _ecm(lambda n, device: NonlinearityECMState(
        "layer_norm", _on(n.weight, device), _on(n.bias, device), float(n.eps))),
    ir.MaxPool2d: _ecm(lambda n, device: NonlinearityECMState("max_pool", n.kernel_size, n.stride, n.padding)),
    ir.ProductECM: _product,
    ir.Add: _add,
    ir.Scale: _scale,
    ir.Reshape: _reshape,
    ir.Permute: _permute,
    ir.Slice: _slice,
    ir.Select: _select,
    ir.Concat: _concat,
    ir.Mean: _mean,
    ir.AvgPool2d: _avgpool2d,
})


def compile_node(node: ir.Node, shape: tuple[int, ...], device, product_form: str = "direct"):
    """Return (fn(inputs, t) -> tensor, state or None) for one node on `device`:
    one node's step, for the executor and for runtimes that host single nodes
    (Lava's host processes, the NIR node map)."""
    return KINDS(node)(node, shape, device, product_form)


class GraphExecutor:
    """Compiled form of a graph for one device; `run` is the whole API.

    ``capture=True`` (the default) runs every step as the fast step of
    program.py: fused native kernels on the CPU, a CUDA graph on CUDA, with the
    state of some node chains shared.  ``capture=False`` runs node by node,
    each node's `step` in turn: the reference the fast step is tested against.
    Runs with `intervene` (lockstep verification) go node by node; where the
    fast step cannot run here (no C compiler, ECMT_FAST=0) every run does, after
    one line on stderr that says why.

    ``record_levels=True`` makes every MT neuron keep its per-element event
    codes of the last step (``state(name).code``, see MTState): what hw_sim
    counts spikes by level from, computed inside the neuron's own kernel.

    ``overrides`` {node class: builder}: per-kind replacements of this module's
    builders (same signature as KINDS' entries), for the exact class only: how a
    deployed number format runs (ecmt.runtime.fixed_point.deployed_overrides).
    Runs with overrides go node by node (the fast step compiles the graph's own
    kinds)."""

    def __init__(self, graph: ir.SpikingGraph, device=None, product_form: str = "direct",
                 record_levels: bool = False, capture: bool = True, overrides: dict | None = None):
        self.graph = graph
        self.record_levels = record_levels
        self.capture = capture
        self._program = None              # the fast step of the last batch size run (program.Program)
        self.device = torch.device(device or "cpu")
        self.product_form = product_form
        static = analysis.static_nodes(graph)
        index = {name: i for i, name in enumerate(graph.nodes)}
        self.steps: list[_Step] = []
        self.overrides = dict(overrides or {})
        for node in graph:
            build = self.overrides.get(type(node)) or KINDS(node)
            fn, state = build(node, graph.shapes[node.name], self.device, product_form)
            if isinstance(state, MTState):
                state.record = record_levels
            self.steps.append(_Step(node, [index[s] for s in node.inputs], fn, state,
                                    node.name in static))
        self.output_index = index[graph.output.name]
        self._states = {step.node.name: step.state for step in self.steps}

    def state(self, name: str):
        """The run-time state of node `name` (MT membrane and codes, ECM sums), or None."""
        return self._states[name]

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        """x on the device; NaN or infinite inputs are refused: the spiking run would turn
        them into confident finite outputs (a NaN membrane never crosses a threshold)."""
        x = x.to(self.device, torch.float32)
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise DataError(f"input: {int(bad.sum())} of {x.numel()} values are NaN or infinite "
                            f"(the first at index {bad.nonzero()[0].tolist()} of the batch)",
                            hint="clean the data; a spiking network cannot represent them")
        return x

    @staticmethod
    def _inputs(step: _Step, values: list, x: torch.Tensor) -> list[torch.Tensor]:
        return [values[j] for j in step.srcs] if step.srcs else [x]

    def reset(self):
        for step in self.steps:
            if step.state is not None:
                step.state.reset()

    def fast(self) -> bool:
        """Whether runs take the fast step (capture=True and it can run here)."""
        return self.capture and not self.overrides and program.kernels_for(self.device) is not None

    def _fast_program(self, batch: int, observer) -> program.Program:
        """The fast step for this batch size, in the mode the observer needs: shared chains
        without one; hw_sim's Counter (``counts_in_kernels``) gets its MT event counts from
        the kernels with the chains still shared; any other observer sees every node's
        increment (no sharing)."""
        kernels = program.kernels_for(self.device)
        count = (self.record_levels and isinstance(kernels, program.NativeKernels)
                 and (observer is None or getattr(observer, "counts_in_kernels", False)))
        observe = not count and (observer is not None or self.record_levels)
        p = self._program
        if p is None or p.batch != batch or p.observe != observe or p.count != count:
            self.release()                      # the old buffers first, to the pool the new one takes from
            p = self._program = program.Program(self, batch, kernels, observe=observe, record=self.record_levels,
                                                count=count)
        return p

    def release(self) -> None:
        """Give the fast step's buffers back (to program.POOL, for the next executor of these
        shapes); the next run allocates again."""
        if self._program is not None:
            self._program.release()
            self._program = None

    def __del__(self):
        self.release()

    @torch.no_grad()
    def run(self, x: torch.Tensor, T: int, observer: Observer | None = None,
            intervene: Intervene | None = None) -> torch.Tensor:
        """Feed x at every step for T steps; return running estimates [T, B, ...]."""
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        memory.check(memory.run_bytes(self.graph, x.shape[0], T), f"a {T}-step run of a batch of {x.shape[0]}",
                     "T or the batch size", self.device)
        x = self._checked(x)
        self.reset()
        estimates = []
        out_sum = None
        if intervene is None and self.fast():
            fast = self._fast_program(x.shape[0], observer)
            for t, inc in enumerate(fast.run(x, T, observer), start=1):
                out_sum = inc.clone() if out_sum is None else out_sum.add_(inc)
                estimates.append(out_sum / t)
        else:
            values: list[torch.Tensor | None] = [None] * len(self.steps)
            for t in range(1, T + 1):
                for i, step in enumerate(self.steps):
                    if step.static and t > 1:
                        out = values[i]
                    else:
                        out = step.fn(self._inputs(step, values, x), t)
                        if intervene is not None:
                            out = intervene(step.node, out, t)
                        values[i] = out
                    if observer is not None:
                        observer(step.node, self._inputs(step, values, x), out, t)
                inc = values[self.output_index]
                out_sum = inc.clone() if out_sum is None else out_sum.add_(inc)
                estimates.append(out_sum / t)
        self.reset()          # release the node-by-node membranes and sums
        batch = x.shape[0]
        return torch.stack([e.expand(batch, *e.shape[1:]) for e in estimates])

    @torch.no_grad()
    def run_analog(self, x: torch.Tensor, observer: Observer | None = None) -> torch.Tensor:
        """The ANN the graph was converted from: one pass with every MT neuron
        replaced by the function it approximates (identity, or ReLU)."""
        memory.check(memory.run_bytes(self.graph, x.shape[0], 1), f"an analog run of a batch of {x.shape[0]}",
                     "the batch size", self.device)
        x = self._checked(x)
        self.reset()
        values: list[torch.Tensor | None] = [None] * len(self.steps)
        for i, step in enumerate(self.steps):
            inputs = self._inputs(step, values, x)
            if isinstance(step.node, ir.MTNeuron) or isinstance(step.state, (NonlinearityECMState, ProductECMState)):
                values[i] = step.state.analog(*inputs)      # identity / ReLU; an ECM's f, keeping no state
            else:
                values[i] = step.fn(inputs, 1)
            if observer is not None:
                observer(step.node, inputs, values[i], 1)
        self.reset()
        out = values[self.output_index]
        return out.expand(x.shape[0], *out.shape[1:])
