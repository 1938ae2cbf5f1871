"""Lower a torch model to the analog IR by tracing it with torch.fx.

The traced graph is interpreted twice at once, on two batches of different
sizes.  Every value keeps both concrete results, which lets the lowering
(1) fold everything that does not depend on the input into constants,
(2) find the batch axis of every input-dependent tensor (the one axis whose
size differs between the runs) and (3) check each emitted IR node's shape
against what torch computed.  Input-dependent operations go through the
conversion rules of ``ops.py`` (registered beside their handlers); each emits
IR nodes for per-sample tensors, through the Lowering of ``lowering.py``.

Operations without a handler do not stop the walk: all of them are collected
and reported together in one UnsupportedModelError.

A model whose forward traces symbolically is traced once.  Else it is traced
once per batch size with concrete shapes (_ConcreteTracer): Python code and
branches on shapes run as in eager mode, so the graph holds for the calibration
input's shape only, as the IR's fixed-shape Input does anyway.
"""
from __future__ import annotations

import copy
import inspect
import os
import re
import traceback
from typing import Any

import torch
import torch.fx as fx

from .. import ir
from ..errors import UnsupportedModelError
from .lowering import RUNS, Lowering, Unsupported, Val, batch_axis
from .ops import handler_for
from .passes import prune


def _map(fn, value):
    if isinstance(value, Val):
        return fn(value)
    if isinstance(value, (list, tuple)):
        out = [_map(fn, v) for v in value]
        return type(value)(out) if not hasattr(value, "_fields") else type(value)(*out)
    if isinstance(value, dict):
        return {k: _map(fn, v) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_map(fn, value.start), _map(fn, value.stop), _map(fn, value.step))
    return value


def _any_dynamic(value) -> bool:
    found = []
    _map(lambda v: found.append(v.dynamic), value)
    return any(found)


class _Unknown:
    """A value the concrete run could not compute (the op failed on real tensors)."""


_UNKNOWN = _Unknown()
# Tensor attributes that say nothing about the tensor's values.
_METADATA_ATTRS = ("shape", "ndim", "dtype", "device", "is_cuda", "layout")


class _ConcreteProxy(fx.Proxy):
    """A proxy whose tensor metadata (x.shape, x.size(), x.dim(), ...) is concrete."""

    def __getattr__(self, k):
        tracer = self.tracer
        if isinstance(tracer, _ConcreteTracer) and k in _METADATA_ATTRS + ("size", "dim"):
            got = tracer.metadata(self, k)
            if got is not None:
                return got
        return super().__getattr__(k)

    def __len__(self):
        tracer = self.tracer
        if isinstance(tracer, _ConcreteTracer):
            shape = tracer.metadata(self, "shape")
            if shape:
                return shape[0]
        return super().__len__()


class _ConcreteTracer(fx.Tracer):
    """torch.fx tracing that also runs the model on a real input, so that shapes
    are plain ints while tracing.

    Python code on shapes (``if H % ws: pad``, SAME padding, ``int(N ** 0.5)``,
    ``buffer.expand(B, ...)``) runs on ints, and a branch on a value computed from
    shapes only (not from tensor values) is decided by its concrete value.  The
    graph is specialized to that input shape, batch size included; ``trace``
    traces twice (batches RUNS) and the lowering reads the batch axis from the
    difference, as it does for every value.  A branch on tensor values still fails.
    """

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.record_stack_traces = True      # the source line of every op, for error messages
        self.x = x
        self.values: dict[fx.Node, Any] = {}
        self._first_placeholder: fx.Node | None = None
        self._data_dep: dict[fx.Node, bool] = {}
        self._running = False      # inside a concrete run: modules and parameters are plain

    def call_module(self, m, forward, args, kwargs):
        if self._running:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._running:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, *rest, **kw):
        p = super().create_proxy(kind, target, args, kwargs, *rest, **kw)
        with torch.no_grad():
            self.value(p.node)
        self.data_dependent(p.node)
        return p

    def value(self, node: fx.Node):
        """The concrete result of `node`, or _UNKNOWN."""
        if node in self.values:
            return self.values[node]
        running, self._running = self._running, True
        try:
            if node.op == "placeholder":
                if self._first_placeholder is None:
                    self._first_placeholder = node
                out = self.x if node is self._first_placeholder else (node.args[0] if node.args else None)
            elif node.op == "get_attr":
                out = self.root
                for part in str(node.target).split("."):
                    out = getattr(out, part)
            elif node.op in ("call_module", "call_method", "call_function"):
                unknown = []

                def pick(n):
                    v = self.value(n)
                    if v is _UNKNOWN:
                        unknown.append(n)
                    return v
                args = fx.node.map_arg(node.args, pick)
                kwargs = fx.node.map_arg(node.kwargs, pick)
                if unknown:
                    raise LookupError
                if node.op == "call_module":
                    out = self.root.get_submodule(node.target)(*args, **kwargs)
                elif node.op == "call_method":
                    out = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    out = node.target(*args, **kwargs)
            else:
                out = _UNKNOWN
        except Exception:  # noqa: BLE001 - the lowering reports the op; tracing only loses its value
            out = _UNKNOWN
        finally:
            self._running = running
        self.values[node] = out
        return out

    def data_dependent(self, node: fx.Node) -> bool:
        """Does `node` depend on the input's values (not only on its shape)?
        Memoized as nodes are created, so the recursion is shallow."""
        if node not in self._data_dep:
            if node.op == "placeholder":
                dep = node is self._first_placeholder
            elif node.op == "get_attr":
                dep = False
            elif (node.op == "call_method" and node.target in ("size", "dim")) or \
                    (node.op == "call_function" and node.target is getattr and len(node.args) > 1 and
                     node.args[1] in _METADATA_ATTRS):
                dep = False
            else:
                dep = any(self.data_dependent(i) for i in node.all_input_nodes)
            self._data_dep[node] = dep
        return self._data_dep[node]

    def metadata(self, proxy: fx.Proxy, attr: str):
        """Concrete x.shape, x.size, x.dim, x.ndim, x.dtype, ... of a tensor proxy, or
        None to trace the attribute symbolically."""
        v = self.value(proxy.node)
        if not isinstance(v, torch.Tensor):
            return None
        if attr == "dim":
            return v.dim
        if attr == "size":
            return v.size
        if attr in ("shape", "ndim"):
            return getattr(v, attr)
        # dtype and device stay symbolic: code that caches per device (LeViT's attention
        # biases) would keep one trace's proxies for the next trace and for the model
        return None

    def to_bool(self, obj: fx.Proxy) -> bool:
        v = self.value(obj.node)
        if v is _UNKNOWN or self.data_dependent(obj.node):
            return super().to_bool(obj)         # a branch on tensor values: the usual TraceError
        return bool(v)

    def iter(self, obj: fx.Proxy):
        v = self.value(obj.node)
        if v is not _UNKNOWN and not self.data_dependent(obj.node) and isinstance(v, (tuple, list)):
            return iter([obj[i] for i in range(len(v))])
        return super().iter(obj)


def trace(model: torch.nn.Module, sample: torch.Tensor | None = None):
    """Trace `model` with torch.fx, every argument but the first fixed to its default.

    Without `sample`: one symbolic trace, a GraphModule.  With `sample` (one input;
    its first item is used): a pair of GraphModules of identical structure for
    batches of RUNS[0] and RUNS[1] copies of it.  Where the forward traces
    symbolically (no Python decision on a shape), that one trace serves both
    batches; else two traces with concrete shapes (_ConcreteTracer), which differ
    in baked-in sizes.
    """
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {p.name: p.default for p in params[1:] if p.default is not inspect.Parameter.empty}
    if sample is None:
        tracer = fx.Tracer()
        tracer.record_stack_traces = True  # the source line of every op, for error messages
        graph = _trace_with(tracer, model, concrete)
        return fx.GraphModule(tracer.root, graph)
    try:          # on a copy: a forward may cache proxies on its modules (see below)
        tracer = fx.Tracer()
        tracer.record_stack_traces = True
        root = copy.deepcopy(model)
        gm = fx.GraphModule(root, tracer.trace(root, concrete_args=concrete or None))
        return gm, gm
    except Exception:  # noqa: BLE001 - Python code decides on shapes: trace them concretely
        pass
    one = sample[:1].float()
    gms = []
    for n in RUNS:
        tracer = _ConcreteTracer(one.expand(n, *one.shape[1:]).clone())
        tracer.record_stack_traces = not gms     # messages cite the first trace; recording is slow
        # each trace on its own copy: what a forward caches on its module (ConViT's
        # relative indices, LeViT's attention biases) must not leak into the other
        # trace, and a trace's proxies must not stay in the caller's model
        try:
            root = copy.deepcopy(model)
        except Exception:  # noqa: BLE001 - a model that cannot be copied is traced in place
            root = model
        try:
            graph = _trace_with(tracer, root, concrete)
        finally:
            tracer.values.clear()           # the activations of the run
        gms.append(fx.GraphModule(tracer.root, graph))
    _same_structure(model, *gms)
    return tuple(gms)


def _trace_with(tracer: fx.Tracer, model: torch.nn.Module, concrete: dict) -> fx.Graph:
    try:
        return tracer.trace(model, concrete_args=concrete or None)
    except Exception as err:  # noqa: BLE001 - any tracing failure means the same to the user
        where = _trace_failure_site(model, err.__traceback__)
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx{where}: {type(err).__name__}: {err}",
            hint="the converter needs a model whose forward has no control flow on tensor values "
                 "(branches and loops on shapes are fine: they are decided for the calibration "
                 "input's shape)") from None


def _ops(gm: fx.GraphModule) -> list[fx.Node]:
    """A trace's nodes but attribute reads, whose place in the graph depends on what
    the model cached in an earlier trace (ConViT's relative indices)."""
    return [n for n in gm.graph.nodes if n.op != "get_attr"]


def _same_structure(model: torch.nn.Module, g1: fx.GraphModule, g2: fx.GraphModule) -> None:
    """The two batch sizes' traces must be the same program (sizes aside)."""
    n1, n2 = _ops(g1), _ops(g2)
    for a, b in zip(n1, n2):
        if a.op != b.op or a.target != b.target:
            where = _source_line(a) or _source_line(b)
            raise UnsupportedModelError(
                f"cannot trace {type(model).__name__}: its forward takes a different path for a batch of "
                f"{RUNS[0]} than for {RUNS[1]} in {_module_path(a) or '<top>'}"
                + (f" ({where})" if where else "") + f": {a.op} {a.target} vs {b.op} {b.target}",
                hint="the converter needs a forward whose control flow does not depend on the batch size")
    if len(n1) != len(n2):
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__}: its forward has {len(n1)} operations for a batch of "
            f"{RUNS[0]} and {len(n2)} for {RUNS[1]}",
            hint="the converter needs a forward whose control flow does not depend on the batch size")


def _user_frame(filename: str) -> bool:
    """A frame of the model's code, not of torch's tracing machinery."""
    return f"{os.sep}torch{os.sep}" not in filename and f"{os.sep}ecmt{os.sep}convert{os.sep}" not in filename


def _short_path(filename: str) -> str:
    """A source file relative to its installation directory (timm/layers/mlp.py)."""
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _trace_failure_site(model: torch.nn.Module, tb) -> str:
    """' in <module path> (file:line)' for the innermost model frame of a tracing error."""
    paths = {id(m): name for name, m in model.named_modules()}
    module, where = None, None
    for frame, line in traceback.walk_tb(tb):
        if not _user_frame(frame.f_code.co_filename):
            continue
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and id(owner) in paths:
            module = paths[id(owner)] or "<top>"
        where = f"{_short_path(frame.f_code.co_filename)}:{line}"
    if where is None:
        return ""
    return f" in {module} ({where})" if module else f" at {where}"


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.keys())[-1] if stack else ""


def _op_label(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    mod = getattr(target, "__module__", None) or ""
    return f"{mod}.{getattr(target, '__name__', str(target))}".lstrip(".")


def _source_line(node: fx.Node) -> str:
    """file:line of the model code that called the op (the innermost model frame)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', node.stack_trace or "")
    frames = [f for f in frames if _user_frame(f[0])]
    return f"{_short_path(frames[-1][0])}:{frames[-1][1]}" if frames else ""


# What an op is, in the words of a model's author: a keyword found in the
# names of the enclosing modules' classes, of the calling functions or of the
# op itself (lowercase) -> the phrase.  First match wins.
_USER_TERMS = (
    ("rot", "rotary position embedding"),
    ("rope", "rotary position embedding"),
    ("swiglu", "gated MLP (SwiGLU)"),
    ("glu", "gated MLP"),
    ("quickgelu", "QuickGELU activation"),
    ("attentionpool", "attention pooling with a learned query"),
    ("window_partition", "window partition"),
    ("window_reverse", "window reverse"),
    ("roll", "cyclic shift of shifted windows"),
    ("multiheadattention", "nn.MultiheadAttention"),
    ("normalize", "L2 normalization"),
    ("batch_norm", "batch norm called as a function"),
    ("relative_position", "relative position bias"),
    ("rel_pos", "relative position bias"),
    ("scaled_dot_product_attention", "fused attention"),
    ("silu", "SiLU activation"),
    ("sigmoid", "sigmoid"),
    ("hardswish", "hard swish activation"),
    ("stack", "stacking of tensors"),
)


def _user_terms(node: fx.Node, gm: fx.GraphModule, op: str) -> str:
    classes = [t.__name__ if isinstance(t, type) else str(t)
               for _, t in (node.meta.get("nn_module_stack") or {}).values()]
    if node.op == "call_module":
        classes.append(type(gm.get_submodule(node.target)).__name__)
    functions = [fn for file, _, fn in re.findall(r'File "([^"]+)", line (\d+), in (\S+)', node.stack_trace or "")
                 if _user_frame(file)]
    # the op and its caller first: a rotary helper inside an Attention says "rotary"
    for text in [op, *reversed(functions[-3:]), *reversed(classes)]:
        text = text.lower()
        for key, phrase in _USER_TERMS:
            if key in text:
                return phrase
    return ""


def lower(model: torch.nn.Module, sample: torch.Tensor) -> tuple[list[ir.Node], dict]:
    """Return the analog IR nodes of `model` (no neurons yet) and lowering info.

    `sample` is one input example (its first item along the batch axis is used).
    """
    model = model.eval()
    gm, gm2 = trace(model, sample)       # the same program, sizes baked in for batches RUNS
    one = sample[:1].float()
    x1, x2 = (one.expand(n, *one.shape[1:]).clone() for n in RUNS)
    low = Lowering()
    env: dict[fx.Node, Any] = {}
    unsupported: list[str] = []
    params = list(inspect.signature(model.forward).parameters.values())
    placeholders = 0
    out_val = None
    with torch.no_grad():
        for node, node2 in zip(_ops(gm), _ops(gm2)):
            low.source = _module_path(node)
            if node.op == "placeholder":
                if placeholders == 0:
                    name = low.emit(ir.Input, [], shape=tuple(one.shape[1:]), label="input")
                    env[node] = Val(x1, x2, name, 0)
                else:
                    default = params[placeholders].default if placeholders < len(params) else None
                    env[node] = Val(default, default)
                placeholders += 1
                continue
            if node.op == "output":
                out_val = fx.node.map_arg(node.args[0], env.__getitem__)
                break
            args = _merge(node.args, node2.args, env, gm, gm2)
            kwargs = _merge(node.kwargs, node2.kwargs, env, gm, gm2)
            fn = _callable(node, gm)
            try:
                r1 = fn(*_map(lambda v: v.v1, args), **_map(lambda v: v.v1, kwargs))
                r2 = fn(*_map(lambda v: v.v2, args), **_map(lambda v: v.v2, kwargs))
            except Exception as err:  # noqa: BLE001 - the trace cannot run on our two batches
                unsupported.append(_report(node, gm, low.source, f"fails when traced: {type(err).__name__}: {err}"))
                break
            if not _any_dynamic((args, kwargs)):
                env[node] = Val(r1, r2)                       # constant folding
                continue
            if node.op == "call_function" and node.target.__name__ == "getitem" \
                    and isinstance(args[0], (list, tuple)):
                env[node] = args[0][_map(lambda v: v.v1, args[1])]
                continue
            handler = handler_for(node, gm)
            try:
                if handler is None:
                    raise Unsupported("no conversion rule")
                env[node] = handler(low, node, gm, args, kwargs, r1, r2)
            except Exception as why:  # noqa: BLE001 - a rule's failure is reported like a missing rule
                inputs = []
                _map(lambda v: inputs.append(v.node), (args, kwargs))
                # A rule that fails on a stand-in's consequences says nothing new.
                if isinstance(why, Unsupported) or not low.tainted.intersection(inputs):
                    text = str(why) if isinstance(why, Unsupported) else \
                        f"conversion rule failed: {type(why).__name__}: {why}"
                    unsupported.append(_report(node, gm, low.source, text))
                env[node] = _poison(low, r1, r2)
    if unsupported:
        raise UnsupportedModelError(
            f"cannot convert {type(model).__name__}: {len(unsupported)} unsupported operation(s):\n"
            + "\n".join(unsupported),
            hint="see docs/conversion.md for the supported operations")
    if not isinstance(out_val, Val) or not out_val.dynamic:
        raise UnsupportedModelError(f"cannot convert {type(model).__name__}: the output must be "
                                    "one tensor that depends on the input")
    low.source = ""
    low.emit(ir.Output, [out_val.node], label="output")
    if out_val.bp != 0 or out_val.fold != 1:
        raise UnsupportedModelError("the model output must have its batch axis first")
    with torch.no_grad():
        reference = model(x1)
    return prune(low.nodes), {"reference_input": x1, "reference_output": reference}


def _attr(gm: fx.GraphModule, target: str):
    value = gm
    for part in str(target).split("."):
        value = getattr(value, part)
    return value


def _merge(a1, a2, env: dict, gm: fx.GraphModule, gm2: fx.GraphModule):
    """The arguments of a node of the first trace and of its twin in the second:
    nodes -> their lowered values; literals that differ (sizes baked in for each
    batch) -> a constant Val holding both."""
    if isinstance(a1, fx.Node) and a1.op == "get_attr":
        if not (isinstance(a2, fx.Node) and a2.op == "get_attr"):
            raise UnsupportedModelError(f"cannot trace the model: the traces for batches {RUNS[0]} and {RUNS[1]} "
                                        f"differ at {a1.target}", hint="please report this model")
        return Val(_attr(gm, a1.target), _attr(gm2, a2.target))
    if isinstance(a1, fx.Node):
        return env[a1]
    if isinstance(a1, (list, tuple)) and type(a1) is type(a2) and len(a1) == len(a2):
        out = [_merge(x, y, env, gm, gm2) for x, y in zip(a1, a2)]
        return type(a1)(out) if not hasattr(a1, "_fields") else type(a1)(*out)
    if isinstance(a1, dict) and isinstance(a2, dict) and a1.keys() == a2.keys():
        return {k: _merge(a1[k], a2[k], env, gm, gm2) for k in a1}
    if isinstance(a1, slice) and isinstance(a2, slice):
        return slice(*(_merge(getattr(a1, f), getattr(a2, f), env, gm, gm2) for f in ("start", "stop", "step")))
    same = a1 is a2 or (type(a1) is type(a2) and not isinstance(a1, torch.Tensor) and a1 == a2)
    return a1 if same else Val(a1, a2)


def _report(node: fx.Node, gm: fx.GraphModule, path: str, why: str) -> str:
    """One line of the unsupported-model error: where, what (in user terms if known), why."""
    op = _op_label(node, gm)
    terms = _user_terms(node, gm, op)
    line = _source_line(node)
    return (f"  {path or '<top>'}: {op}" + (f" [{terms}]" if terms else "") + f" ({why})"
            + (f" at {line}" if line else ""))


def _callable(node: fx.Node, gm: fx.GraphModule):
    if node.op == "call_module":
        return gm.get_submodule(node.target)
    if node.op == "call_method":
        return lambda self, *a, **k: getattr(self, node.target)(*a, **k)
    return node.target


def _poison(low: Lowering, r1, r2):
    """Stand-in for the result of an unsupported op, so the walk can go on."""
    def mk(a, b):
        if isinstance(a, torch.Tensor):
            try:
                bp = batch_axis(a, b)
            except Unsupported:
                bp = None
            if bp is not None:
                name = low.name("unsupported")
                val = Val(a, b, name, bp)
                low.shapes[name] = val.shape
                low.tainted.add(name)
                return val
        return Val(a, b)
    if isinstance(r1, (tuple, list)):
        return type(r1)(mk(a, b) for a, b in zip(r1, r2))
    return mk(r1, r2)
