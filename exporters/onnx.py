"""ONNX exporter: one time step as a graph, or T steps unrolled.

Step form (default).  Inputs: ``x`` (the input increment; the image at every
step), ``t`` (the step number, float, 1-based) and one input per state tensor;
outputs: ``y`` (the output increment) and the next value of every state.  The
runtime starts from all-zero states and keeps the running sum of ``y``; its
estimate after step t is that sum / t.  State names, shapes and meanings are
in the model's metadata (``ecmt.states``) and docs/onnx.md.

Unrolled form (``unroll=T``).  Input ``x`` once; output ``estimates``
[T, batch, ...], the running estimate after every step, like SpikingModel.

Standard operators only (default domain, opset 17), dynamic batch axis.
Every node kind of the IR has an emitter below, declared in the table `KINDS`
(the PPN neuron is declared as refused); a kind without one fails with an
error naming the node, and no file is written.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ecmt import ir
from ecmt.atomic import atomic_path
from ecmt.errors import EcmtError
from ecmt.ir import analysis
from ecmt.ir.dispatch import KindTable, Refused

OPSET = 17
BATCH = "batch"


class OnnxExportError(EcmtError):
    """The graph cannot be expressed in ONNX (names the node)."""


class _Builder:
    """Accumulates ONNX nodes and initializers with unique names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}#{self._n}"

    def op(self, op_type: str, inputs: list[str], hint: str, n_out: int = 1, **attrs):
        outs = [self.fresh(f"{hint}/{op_type}") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(hint), **attrs))
        return outs[0] if n_out == 1 else outs

    def tensor(self, value, hint: str, dtype=np.float32, key: str | None = None) -> str:
        """An initializer; with `key`, made once and shared (weights across unrolled steps)."""
        if key is not None and ("t", key) in self._consts:
            return self._consts[("t", key)]
        arr = np.asarray(value, dtype=dtype)
        name = key or self.fresh(f"{hint}/const")
        self.inits.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._consts[("t", key)] = name
        return name

    def param(self, node: ir.Node, field: str, value: np.ndarray) -> str:
        return self.tensor(value, node.name, key=f"{node.name}.{field}")

    def scalar(self, value: float) -> str:
        key = ("f", float(value))
        if key not in self._consts:
            self._consts[key] = self.tensor(np.float32(value), f"scalar_{value}")
        return self._consts[key]

    def ints(self, values) -> str:
        key = ("i", tuple(int(v) for v in values))
        if key not in self._consts:
            self._consts[key] = self.tensor(np.array(values, dtype=np.int64), "ints", np.int64)
        return self._consts[key]


def _batched(t) -> np.ndarray:
    """A per-sample constant with a leading batch axis of 1 (broadcasts over the batch)."""
    return t.detach().cpu().numpy().astype(np.float32)[None]


def _aligned(t, rank: int) -> np.ndarray:
    """A threshold or factor tensor aligned to a per-sample rank, with the batch axis."""
    a = t.detach().cpu().numpy().astype(np.float32)
    return a.reshape((1,) * (rank + 1 - a.ndim) + a.shape)


class _Emitter:
    """Emits one time step of a graph.  `state_source(key, shape)` gives the
    current value of a state; the next values are collected in `state_out`."""

    def __init__(self, graph: ir.SpikingGraph, b: _Builder, batch: str, t: str, state_source):
        self.g, self.b, self.batch, self.t = graph, b, batch, t
        self.static = analysis.static_nodes(graph)
        self.state_source = state_source
        self.states: list[tuple[str, tuple[int, ...]]] = []      # (name, per-sample shape), in order
        self.state_out: dict[str, str] = {}
        self.spikes: dict[str, str] = {}                           # MT node -> its spike value

    def state(self, node: ir.Node, field: str, shape: tuple[int, ...]) -> str:
        key = f"state.{node.name}.{field}"
        self.states.append((key, tuple(shape)))
        return self.state_source(key, tuple(shape))

    def set_state(self, node: ir.Node, field: str, value: str) -> None:
        self.state_out[f"state.{node.name}.{field}"] = value

    def emit(self, node: ir.Node, inputs: list[str], x: str) -> str:
        return KINDS(node)(self, node, inputs, x)

    # -- leaves ------------------------------------------------------------------------
    def _input(self, node, inputs, x):
        return x

    def _constant(self, node, inputs, x):
        return self.b.param(node, "value", _batched(node.value))

    def _output(self, node, inputs, x):
        return inputs[0]

    # -- synapses -------------------------------------------------------------------------
    def _linear(self, node, inputs, x):
        w = self.b.param(node, "weight", node.weight.detach().numpy().T.copy())
        y = self.b.op("MatMul", [inputs[0], w], node.name)
        if node.bias is not None:
            y = self.b.op("Add", [y, self.b.param(node, "bias", node.bias.detach().numpy())], node.name)
        return y

    def _conv2d(self, node, inputs, x):
        args = [inputs[0], self.b.param(node, "weight", node.weight.detach().numpy())]
        if node.bias is not None:
            args.append(self.b.param(node, "bias", node.bias.detach().numpy()))
        ph, pw = node.padding
        return self.b.op("Conv", args, node.name, strides=list(node.stride), pads=[ph, pw, ph, pw],
                         dilations=list(node.dilation), group=node.groups,
                         kernel_shape=list(node.weight.shape[2:]))

    # -- neurons --------------------------------------------------------------------------------
    def _mt_neuron(self, node, inputs, x):
        b, n = self.b, node.name
        rank = len(self.g.shapes[n])
        v = b.op("Add", [self.state(node, "v", self.g.shapes[n]), inputs[0]], n)
        zero = b.scalar(0.0)
        pos = b.op("GreaterOrEqual", [v, zero], n)
        th_p = b.param(node, "th_pos", _aligned(node.th_pos, rank))
        th = th_p if node.th_neg is None else b.op(
            "Where", [pos, th_p, b.param(node, "th_neg", _aligned(node.th_neg, rank))], n)
        mag = b.op("Abs", [v], n)
        half = b.op("Mul", [th, b.scalar(0.5)], n)
        level = b.op("Mul", [mag, zero], n)                       # zeros shaped like v
        if node.spikes_per_step == 1:
            for k in range(node.levels):                           # the spec's comparisons, highest wins
                value = b.op("Mul", [th, b.scalar(float(2 ** k))], n)
                crossed = b.op("GreaterOrEqual", [mag, b.op("Sub", [value, half], n)], n)
                level = b.op("Where", [crossed, value, level], n)
        else:
            # k levels per step: kernels.mt_multi_levels, op for op (level is the sum s so far)
            fired = level
            for k in range(node.levels - 1, -1, -1):
                value = b.op("Mul", [th, b.scalar(float(2 ** k))], n)
                crossed = b.op("GreaterOrEqual", [b.op("Sub", [mag, level], n), b.op("Sub", [value, half], n)], n)
                crossed = b.op("And", [crossed, b.op("Less", [fired, b.scalar(float(node.spikes_per_step))], n)], n)
                level = b.op("Where", [crossed, b.op("Add", [level, value], n), level], n)
                fired = b.op("Add", [fired, b.op("Cast", [crossed], n, to=onnx.TensorProto.FLOAT)], n)
        other = b.op("Neg", [level], n) if node.signed else b.op("Mul", [level, zero], n)
        s = b.op("Where", [pos, level, other], n)
        self.set_state(node, "v", b.op("Sub", [v, s], n))
        self.spikes[n] = s
        return s

    # -- ECMs -----------------------------------------------------------------------------------
    def _ecm(self, node, inputs, x, f):
        b, n = self.b, node.name
        if n in self.static:
            # Fed by the constant image only: its increment is f(input) at every
            # step (t f(c) - (t-1) f(c)), exactly what the executor computes.
            return f(inputs[0])
        shape = self.g.shapes[n]
        total = b.op("Add", [self.state(node, "sum", self.g.shapes[node.inputs[0]]), inputs[0]], n)
        mean = b.op("Div", [total, self.t], n)
        out_sum = b.op("Mul", [f(mean), self.t], n)
        y = b.op("Sub", [out_sum, self.state(node, "out_sum", shape)], n)
        self.set_state(node, "sum", total)
        self.set_state(node, "out_sum", out_sum)
        return y

    def _gelu_ecm(self, node, inputs, x):
        b, n = self.b, node.name

        def gelu(m):
            if node.approximate == "tanh":
                cube = b.op("Mul", [b.op("Mul", [m, m], n), m], n)
                inner = b.op("Mul", [b.op("Add", [m, b.op("Mul", [cube, b.scalar(0.044715)], n)], n),
                                     b.scalar(math.sqrt(2 / math.pi))], n)
                core = b.op("Tanh", [inner], n)
            else:
                core = b.op("Erf", [b.op("Mul", [m, b.scalar(1 / math.sqrt(2))], n)], n)
            return b.op("Mul", [b.op("Mul", [m, b.scalar(0.5)], n), b.op("Add", [core, b.scalar(1.0)], n)], n)
        return self._ecm(node, inputs, x, gelu)

    def _elementwise_ecm(self, node, inputs, x):
        b, n = self.b, node.name
        f = {"sigmoid": lambda m: b.op("Sigmoid", [m], n),
             "silu": lambda m: b.op("Mul", [m, b.op("Sigmoid", [m], n)], n),
             "hardswish": lambda m: b.op("HardSwish", [m], n)}[node.function]
        return self._ecm(node, inputs, x, f)

    def _relu_ecm(self, node, inputs, x):
        return self._ecm(node, inputs, x, lambda m: self.b.op("Relu", [m], node.name))

    def _softmax_ecm(self, node, inputs, x):
        return self._ecm(node, inputs, x, lambda m: self.b.op("Softmax", [m], node.name, axis=node.axis + 1))

    def _layernorm_ecm(self, node, inputs, x):
        b, n = self.b, node.name
        w = node.weight.detach().numpy() if node.weight is not None else np.ones(node.features, np.float32)
        bias = node.bias.detach().numpy() if node.bias is not None else np.zeros(node.features, np.float32)
        scale, shift = b.param(node, "weight", w), b.param(node, "bias", bias)
        return self._ecm(node, inputs, x, lambda m: b.op("LayerNormalization", [m, scale, shift], n,
                                                        axis=-1, epsilon=float(node.eps)))

    def _maxpool2d_ecm(self, node, inputs, x):
        ph, pw = node.padding
        return self._ecm(node, inputs, x, lambda m: self.b.op(
            "MaxPool", [m], node.name, kernel_shape=list(node.kernel_size), strides=list(node.stride),
            pads=[ph, pw, ph, pw]))

    def _product_ecm(self, node, inputs, x):
        b, n = self.b, node.name
        a_in, b_in = inputs
        a_shape, b_shape = list(self.g.shapes[node.inputs[0]]), list(self.g.shapes[node.inputs[1]])
        if node.transpose_a:
            a_in = self._swap_last(a_in, len(a_shape), n)
            a_shape[-1], a_shape[-2] = a_shape[-2], a_shape[-1]
        if node.transpose_b:
            b_in = self._swap_last(b_in, len(b_shape), n)
            b_shape[-1], b_shape[-2] = b_shape[-2], b_shape[-1]
        if n in self.static:      # constant operands: the increment is the plain product
            return b.op("Mul", [b.op("MatMul", [a_in, b_in], n), b.scalar(node.scale)], n)
        a = b.op("Add", [self.state(node, "a", tuple(a_shape)), a_in], n)
        bb = b.op("Add", [self.state(node, "b", tuple(b_shape)), b_in], n)
        scale_over_t = b.op("Div", [b.scalar(node.scale), self.t], n)
        out_sum = b.op("Mul", [b.op("MatMul", [a, bb], n), scale_over_t], n)
        z = b.op("Sub", [out_sum, self.state(node, "out_sum", self.g.shapes[n])], n)
        self.set_state(node, "a", a)
        self.set_state(node, "b", bb)
        self.set_state(node, "out_sum", out_sum)
        return z

    def _swap_last(self, value, rank, hint):
        perm = list(range(rank + 1))
        perm[-1], perm[-2] = perm[-2], perm[-1]
        return self.b.op("Transpose", [value], hint, perm=perm)

    # -- arithmetic and shapes --------------------------------------------------------------------
    def _add(self, node, inputs, x):
        return self.b.op("Sum", inputs, node.name) if len(inputs) > 1 else inputs[0]

    def _scale(self, node, inputs, x):
        factor = self.b.param(node, "factor", _aligned(node.factor, len(self.g.shapes[node.name])))
        return self.b.op("Mul", [inputs[0], factor], node.name)

    def _reshape(self, node, inputs, x):
        return self.b.op("Reshape", [inputs[0], self.b.ints([-1, *node.shape])], node.name)

    def _permute(self, node, inputs, x):
        return self.b.op("Transpose", [inputs[0]], node.name, perm=[0, *(d + 1 for d in node.dims)])

    def _slice(self, node, inputs, x):
        return self.b.op("Slice", [inputs[0], self.b.ints([node.start]), self.b.ints([node.stop]),
                                   self.b.ints([node.axis + 1])], node.name)

    def _select(self, node, inputs, x):
        return self.b.op("Gather", [inputs[0], self.b.tensor(np.int64(node.index), node.name, np.int64,
                                                             key=f"{node.name}.index")],
                         node.name, axis=node.axis + 1)

    def _concat(self, node, inputs, x):
        rank = len(self.g.shapes[node.name])
        target = self.b.op("Concat", [self.batch, self.b.ints([1] * rank)], node.name, axis=0)
        expanded = [self.b.op("Expand", [i, target], node.name) for i in inputs]
        return self.b.op("Concat", expanded, node.name, axis=node.axis + 1)

    def _mean(self, node, inputs, x):
        return self.b.op("ReduceMean", [inputs[0]], node.name, axes=[node.axis + 1], keepdims=0)

    def _avgpool2d(self, node, inputs, x):
        ph, pw = node.padding
        return self.b.op("AveragePool", [inputs[0]], node.name, kernel_shape=list(node.kernel_size),
                         strides=list(node.stride), pads=[ph, pw, ph, pw], count_include_pad=1)


# The ONNX form of each node kind: an _Emitter method (self, node, inputs, x) -> value name.
KINDS = KindTable("ONNX", {
    ir.Input: _Emitter._input,
    ir.Constant: _Emitter._constant,
    ir.Output: _Emitter._output,
    ir.Linear: _Emitter._linear,
    ir.Conv2d: _Emitter._conv2d,
    ir.MTNeuron: _Emitter._mt_neuron,
    ir.MTNeuronPPN: Refused("no ONNX form for this kind: PPN is the binary-spike form (NIR --ppn); ONNX "
                            "takes the graded graph", hint="export the graph before expand_ppn"),
    ir.GELUECM: _Emitter._gelu_ecm,
    ir.ElementwiseECM: _Emitter._elementwise_ecm,
    ir.ReLUECM: _Emitter._relu_ecm,
    ir.SoftmaxECM: _Emitter._softmax_ecm,
    ir.LayerNormECM: _Emitter._layernorm_ecm,
    ir.MaxPool2d: _Emitter._maxpool2d_ecm,
    ir.ProductECM: _Emitter._product_ecm,
    ir.Add: _Emitter._add,
    ir.Scale: _Emitter._scale,
    ir.Reshape: _Emitter._reshape,
    ir.Permute: _Emitter._permute,
    ir.Slice: _Emitter._slice,
    ir.Select: _Emitter._select,
    ir.Concat: _Emitter._concat,
    ir.Mean: _Emitter._mean,
    ir.AvgPool2d: _Emitter._avgpool2d,
}, error=lambda node, message, hint: OnnxExportError(
    f"node {node.name!r} ({node.KIND}): {message}", hint=hint or "see docs/onnx.md for the supported node kinds"))

def _expose(b: _Builder, spikes: dict[str, str], graph, outputs: list, suffix: str) -> None:
    for node, value in spikes.items():
        name = f"spikes.{node}{suffix}"
        b.nodes.append(helper.make_node("Identity", [value], [name], name=name))
        outputs.append(_value_info(name, graph.shapes[node]))


def _value_info(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH, *shape])


def build_model(graph: ir.SpikingGraph, unroll: int | None = None,
                expose_spikes: bool = False) -> onnx.ModelProto:
    """The ONNX model.  `expose_spikes` adds every MT neuron's spikes as outputs
    (``spikes.<node>``, unrolled: ``spikes.<node>.t<step>``) for verification."""
    graph.validate()
    b = _Builder()
    in_shape = graph.shapes[graph.input.name]
    out_shape = graph.shapes[graph.output.name]
    batch = b.op("Slice", [b.op("Shape", ["x"], "batch"), b.ints([0]), b.ints([1])], "batch")
    inputs = [_value_info("x", in_shape)]
    if unroll is None:
        inputs.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, []))
        em = _Emitter(graph, b, batch, "t", lambda key, shape: key)   # states are graph inputs
        values: dict[str, str] = {}
        for node in graph:
            values[node.name] = em.emit(node, [values[s] for s in node.inputs], "x")
        b.nodes.append(helper.make_node("Identity", [values[graph.output.name]], ["y"], name="output"))
        outputs = [_value_info("y", out_shape)]
        states = []
        for key, shape in em.states:
            inputs.append(_value_info(key, shape))
            b.nodes.append(helper.make_node("Identity", [em.state_out[key]], [f"{key}.next"], name=f"{key}.next"))
            outputs.append(_value_info(f"{key}.next", shape))
            states.append({"input": key, "output": f"{key}.next", "shape": [BATCH, *shape], "init": "zeros"})
        if expose_spikes:
            _expose(b, em.spikes, graph, outputs, "")
        meta = {"form": "step", "states": states}
    else:
        if unroll < 1:
            raise OnnxExportError(f"unroll must be >= 1, got {unroll}")
        static = analysis.static_nodes(graph)
        previous: dict[str, str] = {}
        cached: dict[str, str] = {}

        def state_source(key, shape):
            if key not in previous:           # step 1: all states start at zero
                target = b.op("Concat", [batch, b.ints(list(shape))], key, axis=0)
                previous[key] = b.op("ConstantOfShape", [target], key,
                                     value=numpy_helper.from_array(np.zeros(1, np.float32)))
            return previous[key]

        acc = None
        estimates = []
        outputs_spikes: list = []
        for step in range(1, unroll + 1):
            t = b.scalar(float(step))
            em = _Emitter(graph, b, batch, t, state_source)
            values = {}
            for node in graph:
                # Nodes fed only by the (constant) image compute the same increment every step.
                if node.name in cached:
                    values[node.name] = cached[node.name]
                    continue
                values[node.name] = em.emit(node, [values[s] for s in node.inputs], "x")
                if node.name in static:
                    cached[node.name] = values[node.name]
            previous.update(em.state_out)
            if expose_spikes:
                _expose(b, em.spikes, graph, outputs_spikes, f".t{step}")
            y = values[graph.output.name]
            acc = y if acc is None else b.op("Add", [acc, y], "readout")
            est = b.op("Div", [acc, t], "readout")
            estimates.append(b.op("Unsqueeze", [est, b.ints([0])], "readout"))
        b.nodes.append(helper.make_node("Concat", estimates, ["estimates"], name="estimates", axis=0))
        outputs = [helper.make_tensor_value_info("estimates", TensorProto.FLOAT, [unroll, BATCH, *out_shape]),
                   *outputs_spikes]
        meta = {"form": "unrolled", "T": unroll}
    meta.update({"ecmt_graph_source": graph.meta.get("source", ""), "opset": OPSET,
                 "input": {"name": "x", "shape": [BATCH, *in_shape]},
                 "output": {"name": "y" if unroll is None else "estimates",
                            "shape": [BATCH, *out_shape] if unroll is None else [unroll, BATCH, *out_shape]}})
    g = helper.make_graph(b.nodes, "ecmt_spiking_step" if unroll is None else "ecmt_spiking_unrolled",
                          inputs, outputs, initializer=b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ecmt")
    model.ir_version = 8
    helper.set_model_props(model, {"ecmt.export": json.dumps(meta)})
    return model


def run(path, x: np.ndarray, T: int) -> tuple[np.ndarray, dict[tuple[str, int], np.ndarray]]:
    """Run an exported model in onnxruntime for T steps, the way docs/onnx.md
    describes: returns the estimates [T, B, ...] and, if the model exposes
    them, every MT neuron's spikes by (node, step)."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["ecmt.export"])
    names = [o.name for o in session.get_outputs()]
    spikes: dict[tuple[str, int], np.ndarray] = {}
    if meta["form"] == "unrolled":
        out = dict(zip(names, session.run(None, {"x": x})))
        for name, value in out.items():
            if name.startswith("spikes."):
                node, step = name[len("spikes."):].rsplit(".t", 1)
                spikes[(node, int(step))] = value
        return out["estimates"][:T], spikes
    states = {s["input"]: np.zeros([x.shape[0], *s["shape"][1:]], np.float32) for s in meta["states"]}
    total, estimates = 0.0, []
    for t in range(1, T + 1):
        out = dict(zip(names, session.run(None, {"x": x, "t": np.array(t, np.float32), **states})))
        total = total + out["y"]
        estimates.append(total / t)
        states = {s["input"]: out[s["output"]] for s in meta["states"]}
        for name, value in out.items():
            if name.startswith("spikes."):
                spikes[(name[len("spikes."):], t)] = value
    return np.stack(estimates), spikes


def export(graph: ir.SpikingGraph, path, *, unroll: int | None = None, expose_spikes: bool = False) -> Path:
    """Write `graph` as an ONNX model (see the module docstring); checked with
    onnx.checker (full check) before the file appears."""
    model = build_model(graph, unroll, expose_spikes)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise OnnxExportError(f"internal error: the exported model fails the ONNX checker: {err}") from None
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
    return path
