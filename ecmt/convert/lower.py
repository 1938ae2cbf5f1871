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
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape (batch axis removed)."""
        s = list(self.v1.shape)
        del s[self.bp]
        return tuple(s)

    def axis(self, full_axis: int) -> int:
        """Per-sample axis of a full-tensor axis."""
        full_axis %= self.v1.dim()
        if full_axis == self.bp:
            raise Unsupported("operates on the batch axis")
        return full_axis - (full_axis > self.bp)


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


def batch_axis(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The axis whose size differs between the two runs; None if none does."""
    if a.dim() != b.dim():
        raise Unsupported(f"rank depends on the batch size ({list(a.shape)} vs {list(b.shape)})")
    diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
    if len(diff) > 1:
        raise Unsupported("mixes the batch axis with other axes")
    return diff[0] if diff else None


class Lowering:
    """State of one lowering: the IR nodes emitted so far and their names."""

    def __init__(self):
        self.nodes: list[ir.Node] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._names: set[str] = set()
        self.source = ""           # module path of the FX node being lowered

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
            if bp is not None:       # a constant expanded over the batch (class token)
                first = t.narrow(bp, 0, 1)
                if not torch.equal(t, first.expand_as(t)):
                    raise Unsupported("a constant differs across the batch")
                return first.squeeze(bp).cpu().clone().contiguous()
        else:
            t = torch.as_tensor(value, dtype=torch.float32)
        t = t.detach().cpu()
        full = like.v1.dim()
        if t.dim() > full:
            raise Unsupported(f"a constant of shape {list(t.shape)} has more axes than its operand")
        t = t.reshape((1,) * (full - t.dim()) + tuple(t.shape))
        if t.shape[like.bp] != 1:
            raise Unsupported("a constant varies along the batch axis")
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
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as err:  # noqa: BLE001 - any tracing failure means the same to the user
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx: {type(err).__name__}: {err}",
            hint="the converter needs a model whose forward has no data-dependent control flow") from None
    return fx.GraphModule(tracer.root, graph)


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


def lower(model: torch.nn.Module, sample: torch.Tensor) -> tuple[list[ir.Node], dict]:
    """Return the analog IR nodes of `model` (no neurons yet) and lowering info.

    `sample` is one input example (its first item along the batch axis is used).
    """
    from .ops import handler_for

    model = model.eval()
    gm = trace(model)
    one = sample[:1].float()
    x1, x2 = one.expand(2, *one.shape[1:]).clone(), one.expand(3, *one.shape[1:]).clone()
    low = Lowering()
    env: dict[fx.Node, Any] = {}
    unsupported: list[tuple[str, str, str]] = []
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
            r1 = fn(*_map(lambda v: v.v1, args), **_map(lambda v: v.v1, kwargs))
            r2 = fn(*_map(lambda v: v.v2, args), **_map(lambda v: v.v2, kwargs))
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
            except Unsupported as why:
                unsupported.append((low.source or "<top>", _op_label(node, gm), str(why)))
                env[node] = _poison(low, r1, r2)
    if unsupported:
        lines = [f"  {path}: {op} ({why})" for path, op, why in unsupported]
        raise UnsupportedModelError(
            f"cannot convert {type(model).__name__}: {len(unsupported)} unsupported operation(s):\n"
            + "\n".join(lines),
            hint="see docs/conversion.md for the supported operations")
    if not isinstance(out_val, Val) or not out_val.dynamic:
        raise UnsupportedModelError(f"cannot convert {type(model).__name__}: the output must be "
                                    "one tensor that depends on the input")
    low.source = ""
    low.emit(ir.Output, [out_val.node], label="output")
    if out_val.bp != 0:
        raise UnsupportedModelError("the model output must have its batch axis first")
    with torch.no_grad():
        reference = model(x1)
    return low.nodes, {"reference_input": x1, "reference_output": reference}


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
                low.shapes[name] = tuple(d for i, d in enumerate(a.shape) if i != bp)
                return Val(a, b, name, bp)
        return Val(a, b)
    if isinstance(r1, (tuple, list)):
        return type(r1)(mk(a, b) for a, b in zip(r1, r2))
    return mk(r1, r2)
