"""Lower a torch model to the analog IR by tracing it with torch.fx.

The traced graph is interpreted twice at once, on two batches of different
sizes.  Every value keeps both concrete results, which lets the lowering
(1) fold everything that does not depend on the input into constants,
(2) find the batch axis of every input-dependent tensor (the one axis whose
size differs between the runs) and (3) check each emitted IR node's shape
against what torch computed.  Input-dependent operations go through the
handler table in ``ops.py``; each emits IR nodes for per-sample tensors.

Operations without a handler do not stop the walk: all of them are collected
and reported together in one UnsupportedModelError.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
import traceback
from typing import Any

import torch
import torch.fx as fx

from .. import ir
from ..errors import UnsupportedModelError


@dataclasses.dataclass
class Val:
    """A value during lowering: concrete results of both runs, and for
    input-dependent tensors the IR node that computes it and its batch axis."""
    v1: Any
    v2: Any
    node: str | None = None      # IR node name; None for constants
    bp: int | None = None        # batch axis in the full (batched) tensor

    @property
    def dynamic(self) -> bool:
        return self.node is not None

    @property
    def full_shape(self) -> tuple[int, ...]:
        return tuple(self.v1.shape)

    @property
    def fold(self) -> int:
        """Per-sample items folded into the batch axis (windows or tokens moved
        there by reshape(-1, ...)), sample-major; 1 for a plain batch axis."""
        return self.v1.shape[self.bp] // RUNS[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape: the batch axis removed, or a folded one kept at its per-sample size."""
        s = list(self.v1.shape)
        if self.fold == 1:
            del s[self.bp]
        else:
            s[self.bp] = self.fold
        return tuple(s)

    def axis(self, full_axis: int) -> int:
        """Per-sample axis of a full-tensor axis."""
        full_axis %= self.v1.dim()
        if full_axis == self.bp:
            raise Unsupported("operates on the batch axis")
        return full_axis - (full_axis > self.bp) if self.fold == 1 else full_axis


class Unsupported(Exception):
    """Raised by a handler: the op exists but this use of it cannot be converted."""


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


# The batch sizes of the two runs.  A batch axis of size RUNS[0] * k and RUNS[1] * k
# holds k per-sample items per sample (see Val.fold).
RUNS = (2, 3)


def batch_axis(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The axis whose size differs between the two runs; None if none does."""
    if a.dim() != b.dim():
        raise Unsupported(f"rank depends on the batch size ({list(a.shape)} vs {list(b.shape)})")
    diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
    if len(diff) > 1:
        raise Unsupported("mixes the batch axis with other axes")
    if diff and (a.shape[diff[0]] % RUNS[0] or a.shape[diff[0]] * RUNS[1] != b.shape[diff[0]] * RUNS[0]):
        raise Unsupported(f"an axis of size {a.shape[diff[0]]} / {b.shape[diff[0]]} in batches of "
                          f"{RUNS[0]} / {RUNS[1]}: not a whole number of items per sample")
    return diff[0] if diff else None


class Lowering:
    """State of one lowering: the IR nodes emitted so far and their names."""

    def __init__(self):
        self.nodes: list[ir.Node] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._names: set[str] = set()
        self.source = ""           # module path of the FX node being lowered
        self.tainted: set[str] = set()   # stand-ins for unsupported results and what is computed from them

    def name(self, base: str) -> str:
        base = base or "node"
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def emit(self, cls: type[ir.Node], inputs: list[str], *, label: str | None = None, **fields) -> str:
        name = self.name(label if label is not None else
                         (f"{self.source}.{cls.KIND}" if self.source else cls.KIND))
        node = cls(name=name, inputs=tuple(inputs), meta={"source": self.source} if self.source else {},
                   **fields)
        if self.tainted.intersection(inputs):
            self.tainted.add(name)
        self.shapes[name] = tuple(node.infer_shape([self.shapes[i] for i in inputs]))
        self.nodes.append(node)
        return name

    # -- constants as IR operands --------------------------------------------
    def per_sample_constant(self, value, like: Val) -> torch.Tensor:
        """`value` (a constant Val, tensor or number) as a per-sample tensor that
        broadcasts against the batched input-dependent tensor `like`."""
        if isinstance(value, Val):
            a, b = torch.as_tensor(value.v1), torch.as_tensor(value.v2)
            bp = batch_axis(a, b) if a.dim() == b.dim() else None
            t = a.to(torch.float32)
            if bp is not None:       # a constant expanded over the batch (class token, window mask)
                fold = t.shape[bp] // RUNS[0]
                first = t.narrow(bp, 0, fold)
                if not torch.equal(t, torch.cat([first] * RUNS[0], bp)):
                    raise Unsupported("a constant differs across the batch")
                return (first.squeeze(bp) if fold == 1 else first).cpu().clone().contiguous()
        else:
            t = torch.as_tensor(value, dtype=torch.float32)
        t = t.detach().cpu()
        full = like.v1.dim()
        if t.dim() > full:
            raise Unsupported(f"a constant of shape {list(t.shape)} has more axes than its operand")
        t = t.reshape((1,) * (full - t.dim()) + tuple(t.shape))
        if t.shape[like.bp] != 1:
            raise Unsupported("a constant varies along the batch axis")
        if like.fold == 1:
            t = t.squeeze(like.bp)
        while t.dim() and t.shape[0] == 1:         # leading ones only broadcast
            t = t.squeeze(0)
        return t.clone().contiguous()

    def constant(self, value, like: Val, scale: float = 1.0) -> str:
        t = self.per_sample_constant(value, like) * scale
        return self.emit(ir.Constant, [], value=t,
                         label=f"{self.source}.const" if self.source else "const")

    def operand(self, value, like: Val) -> str:
        return value.node if isinstance(value, Val) and value.dynamic else self.constant(value, like)


def trace(model: torch.nn.Module) -> fx.GraphModule:
    """Symbolically trace `model` with every argument but the first fixed to its default."""
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {p.name: p.default for p in params[1:] if p.default is not inspect.Parameter.empty}
    tracer = fx.Tracer()
    tracer.record_stack_traces = True      # the source line of every op, for error messages
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as err:  # noqa: BLE001 - any tracing failure means the same to the user
        where = _trace_failure_site(model, err.__traceback__)
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx{where}: {type(err).__name__}: {err}",
            hint="the converter needs a model whose forward has no data-dependent control flow "
                 "(branches or loops on tensor values or shapes)") from None
    return fx.GraphModule(tracer.root, graph)


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
    from .ops import handler_for
    from .passes import prune

    model = model.eval()
    gm = trace(model)
    one = sample[:1].float()
    x1, x2 = (one.expand(n, *one.shape[1:]).clone() for n in RUNS)
    low = Lowering()
    env: dict[fx.Node, Any] = {}
    unsupported: list[str] = []
    params = list(inspect.signature(model.forward).parameters.values())
    placeholders = 0
    out_val = None
    with torch.no_grad():
        for node in gm.graph.nodes:
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
            if node.op == "get_attr":
                value = gm
                for part in str(node.target).split("."):
                    value = getattr(value, part)
                env[node] = Val(value, value)
                continue
            if node.op == "output":
                out_val = fx.node.map_arg(node.args[0], env.__getitem__)
                break
            args = fx.node.map_arg(node.args, env.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
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
