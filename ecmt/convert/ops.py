"""The conversion table: one handler per torch operation that can take an
input-dependent tensor.  A handler emits IR nodes for per-sample tensors and
returns the lowered value (see lower.py); it raises Unsupported for a use it
cannot express.  Constant-only computations never reach this table.
"""
from __future__ import annotations

import builtins
import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .. import ir
from .lower import Lowering, Unsupported, Val, batch_axis


def result(low: Lowering, name: str, r1, r2) -> Val:
    """Wrap an emitted IR node; its inferred shape must match torch's."""
    val = Val(r1, r2, name, batch_axis(r1, r2))
    if val.bp is None:
        raise Unsupported("reduces or indexes away the batch axis")
    if low.shapes[name] != val.shape:
        raise AssertionError(f"lowering bug at {name}: IR shape {low.shapes[name]} "
                             f"!= torch shape {val.shape}")
    return val


def same(x: Val, r1, r2) -> Val:
    """An operation that is the identity in eval mode."""
    return Val(r1, r2, x.node, batch_axis(r1, r2))


def const_tensor(v) -> torch.Tensor:
    """A constant for the graph: float32, on the CPU (graphs are device-free)."""
    v = v.v1 if isinstance(v, Val) else v
    return torch.as_tensor(v, dtype=torch.float32).detach().cpu().clone()


def _require_dynamic(*vals):
    for v in vals:
        if not (isinstance(v, Val) and v.dynamic):
            raise Unsupported("expects an input-dependent tensor here")


# -- synaptic layers -----------------------------------------------------------
def emit_linear(low, x: Val, weight, bias, r1, r2, label=None):
    _require_dynamic(x)
    x.axis(-1)  # features may not be the batch axis
    name = low.emit(ir.Linear, [x.node], label=label, weight=const_tensor(weight),
                    bias=None if bias is None else const_tensor(bias))
    return result(low, name, r1, r2)


def emit_conv(low, x: Val, weight, bias, stride, padding, dilation, groups, r1, r2, label=None):
    _require_dynamic(x)
    if x.bp != 0 or x.v1.dim() != 4:
        raise Unsupported("conv2d needs a [B, C, H, W] input")
    weight = const_tensor(weight)
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same" and all(k % 2 == 1 for k in weight.shape[2:]):
            dil = (dilation, dilation) if isinstance(dilation, int) else dilation
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dil, weight.shape[2:]))
        else:
            raise Unsupported(f"padding={padding!r}")
    name = low.emit(ir.Conv2d, [x.node], label=label, weight=weight,
                    bias=None if bias is None else const_tensor(bias), stride=stride,
                    padding=padding, dilation=dilation, groups=groups)
    return result(low, name, r1, r2)


def linear_module(low, node, gm, args, kwargs, r1, r2):
    m = gm.get_submodule(node.target)
    return emit_linear(low, args[0], m.weight, m.bias, r1, r2, label=node.target)


def conv_module(low, node, gm, args, kwargs, r1, r2):
    m = gm.get_submodule(node.target)
    if m.padding_mode != "zeros":
        raise Unsupported(f"padding_mode={m.padding_mode!r}")
    return emit_conv(low, args[0], m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups,
                     r1, r2, label=node.target)


def linear_function(low, node, gm, args, kwargs, r1, r2):
    a = _bind_names(["input", "weight", "bias"], args, kwargs)
    if isinstance(a["weight"], Val) and a["weight"].dynamic:
        raise Unsupported("weights computed from the input")
    return emit_linear(low, a["input"], a["weight"], a.get("bias"), r1, r2)


def conv_function(low, node, gm, args, kwargs, r1, r2):
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    a = {**defaults, **dict(zip(names, args)), **kwargs}
    a = {k: (v.v1 if isinstance(v, Val) and not v.dynamic and k not in ("weight", "bias") else v)
         for k, v in a.items()}
    return emit_conv(low, a["input"], a["weight"], a["bias"], a["stride"], a["padding"],
                     a["dilation"], a["groups"], r1, r2)


def batchnorm_module(low, node, gm, args, kwargs, r1, r2):
    m = gm.get_submodule(node.target)
    x = args[0]
    _require_dynamic(x)
    if x.bp != 0 or not m.track_running_stats:
        raise Unsupported("batch norm needs running statistics and a [B, C, ...] input")
    scale = (m.weight if m.affine else 1.0) / torch.sqrt(m.running_var + m.eps)
    shift = (m.bias if m.affine else 0.0) - m.running_mean * scale
    shape = (-1,) + (1,) * (x.v1.dim() - 2)
    s = low.emit(ir.Scale, [x.node], label=f"{node.target}.scale",
                 factor=const_tensor(scale.reshape(shape)))
    c = low.emit(ir.Constant, [], label=f"{node.target}.shift", value=const_tensor(shift.reshape(shape)))
    return result(low, low.emit(ir.Add, [s, c], label=node.target), r1, r2)


# -- nonlinearities (ECMs) ------------------------------------------------------
def emit_layernorm(low, x: Val, normalized_shape, weight, bias, eps, r1, r2, label=None):
    _require_dynamic(x)
    normalized_shape = tuple(normalized_shape) if not isinstance(normalized_shape, int) else (normalized_shape,)
    if len(normalized_shape) != 1 or x.bp == x.v1.dim() - 1:
        raise Unsupported("layer norm over more than the last axis")
    name = low.emit(ir.LayerNormECM, [x.node], label=label,
                    weight=None if weight is None else const_tensor(weight),
                    bias=None if bias is None else const_tensor(bias),
                    eps=float(eps), features=int(normalized_shape[0]))
    return result(low, name, r1, r2)


def layernorm_module(low, node, gm, args, kwargs, r1, r2):
    m = gm.get_submodule(node.target)
    return emit_layernorm(low, args[0], m.normalized_shape, m.weight, m.bias, m.eps, r1, r2,
                          label=node.target)


def layernorm_function(low, node, gm, args, kwargs, r1, r2):
    a = _bind_names(["input", "normalized_shape", "weight", "bias", "eps"], args, kwargs)
    return emit_layernorm(low, a["input"], _plain(a["normalized_shape"]), a.get("weight"),
                          a.get("bias"), _plain(a.get("eps", 1e-5)), r1, r2)


def emit_unary(low, cls, x: Val, r1, r2, label=None, **fields):
    _require_dynamic(x)
    return result(low, low.emit(cls, [x.node], label=label, **fields), r1, r2)


def gelu(low, node, gm, args, kwargs, r1, r2):
    if node.op == "call_module":
        approx = gm.get_submodule(node.target).approximate
    else:
        approx = _plain(kwargs.get("approximate", args[1] if len(args) > 1 else "none"))
    return emit_unary(low, ir.GELUECM, args[0], r1, r2, label=_label(node), approximate=approx)


def relu(low, node, gm, args, kwargs, r1, r2):
    return emit_unary(low, ir.ReLUECM, args[0], r1, r2, label=_label(node))


def softmax(low, node, gm, args, kwargs, r1, r2):
    if node.op == "call_module":
        dim = gm.get_submodule(node.target).dim
    else:
        dim = _plain(kwargs.get("dim", args[1] if len(args) > 1 else None))
    if dim is None:
        raise Unsupported("softmax without dim")
    x = args[0]
    _require_dynamic(x)
    return emit_unary(low, ir.SoftmaxECM, x, r1, r2, label=_label(node), axis=x.axis(dim))


def sdpa(low, node, gm, args, kwargs, r1, r2):
    a = _bind_names(["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale"],
                    args, kwargs)
    q, k, v = a["query"], a["key"], a["value"]
    _require_dynamic(q, k, v)
    if _plain(a.get("attn_mask")) is not None or _plain(a.get("is_causal", False)) \
            or _plain(a.get("dropout_p", 0.0)) or _plain(kwargs.get("enable_gqa", False)):
        raise Unsupported("attention masks, causal attention, dropout and GQA")
    scale = _plain(a.get("scale"))
    scale = 1.0 / math.sqrt(q.v1.shape[-1]) if scale is None else float(scale)
    path = low.source
    scores = low.emit(ir.ProductECM, [q.node, k.node], label=f"{path}.qk", transpose_b=True, scale=scale)
    attn = low.emit(ir.SoftmaxECM, [scores], label=f"{path}.softmax", axis=-1)
    out = low.emit(ir.ProductECM, [attn, v.node], label=f"{path}.av")
    return result(low, out, r1, r2)


def pool(low, node, gm, args, kwargs, r1, r2):
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        cfg = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                   ceil_mode=m.ceil_mode)
        is_max = isinstance(m, nn.MaxPool2d)
        if is_max:
            cfg.update(dilation=m.dilation, return_indices=m.return_indices)
        else:
            cfg.update(count_include_pad=m.count_include_pad, divisor_override=m.divisor_override)
    else:
        is_max = node.target is F.max_pool2d
        names = ["input", "kernel_size", "stride", "padding"]
        cfg = {k: _plain(v) for k, v in {**dict(zip(names, args)), **kwargs}.items() if k != "input"}
    x = args[0]
    _require_dynamic(x)
    if x.bp != 0 or x.v1.dim() != 4:
        raise Unsupported("pooling needs a [B, C, H, W] input")
    if cfg.get("ceil_mode") or cfg.get("return_indices") or cfg.get("divisor_override") \
            or cfg.get("dilation", 1) not in (1, (1, 1)):
        raise Unsupported("ceil_mode, dilation, divisor_override and return_indices")
    if not is_max and not cfg.get("count_include_pad", True) and cfg.get("padding", 0) not in (0, (0, 0)):
        raise Unsupported("count_include_pad=False with padding")
    kernel = cfg["kernel_size"]
    stride = cfg.get("stride") or kernel
    cls = ir.MaxPool2d if is_max else ir.AvgPool2d
    return result(low, low.emit(cls, [x.node], label=_label(node), kernel_size=kernel, stride=stride,
                                padding=cfg.get("padding", 0)), r1, r2)


def adaptive_avg_pool(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    if x.bp != 0 or x.v1.dim() != 4:
        raise Unsupported("pooling needs a [B, C, H, W] input")
    (h, w), (oh, ow) = x.v1.shape[2:], r1.shape[2:]
    if h % oh or w % ow:
        raise Unsupported("adaptive pooling with uneven windows")
    kernel = (h // oh, w // ow)
    return result(low, low.emit(ir.AvgPool2d, [x.node], label=_label(node), kernel_size=kernel,
                                stride=kernel), r1, r2)


# -- products and arithmetic -------------------------------------------------------
def matmul(low, node, gm, args, kwargs, r1, r2):
    a, b = args[0], args[1]
    if isinstance(a, Val) and a.dynamic and isinstance(b, Val) and b.dynamic:
        return result(low, low.emit(ir.ProductECM, [a.node, b.node], label=_label(node)), r1, r2)
    if isinstance(a, Val) and a.dynamic and const_tensor(b).dim() == 2:
        return emit_linear(low, a, const_tensor(b).t().contiguous(), None, r1, r2)
    raise Unsupported("a matrix product with a constant on the left")


def add(low, node, gm, args, kwargs, r1, r2, sign: float = 1.0):
    a, b = args[0], args[1]
    like = a if isinstance(a, Val) and a.dynamic else b
    terms = []
    for value, s in ((a, 1.0), (b, sign * _plain(kwargs.get("alpha", 1)))):
        if isinstance(value, Val) and value.dynamic:
            name = value.node
            if s != 1.0:
                name = low.emit(ir.Scale, [name], factor=torch.tensor(float(s)))
        else:
            name = low.constant(value, like, scale=s)
        terms.append(name)
    return result(low, low.emit(ir.Add, terms, label=_label(node)), r1, r2)


def sub(low, node, gm, args, kwargs, r1, r2):
    return add(low, node, gm, args, kwargs, r1, r2, sign=-1.0)


def mul(low, node, gm, args, kwargs, r1, r2, invert: bool = False):
    a, b = args[0], args[1]
    if invert and not (isinstance(a, Val) and a.dynamic):
        raise Unsupported("division by an input-dependent tensor")
    if isinstance(b, Val) and b.dynamic:
        if isinstance(a, Val) and a.dynamic:
            raise Unsupported("elementwise product of two input-dependent tensors")
        a, b = b, a
    factor = low.per_sample_constant(b, a)
    if invert:
        factor = 1.0 / factor
    return result(low, low.emit(ir.Scale, [a.node], label=_label(node), factor=factor), r1, r2)


def div(low, node, gm, args, kwargs, r1, r2):
    if _plain(kwargs.get("rounding_mode")) is not None:
        raise Unsupported("rounding division")
    return mul(low, node, gm, args, kwargs, r1, r2, invert=True)


def neg(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    return result(low, low.emit(ir.Scale, [x.node], factor=torch.tensor(-1.0)), r1, r2)


# -- shape operations ----------------------------------------------------------------
def reshape(low, node, gm, args, kwargs, r1, r2):
    """Every reshape-like op (view, flatten, squeeze, ...): read the result shape."""
    x = args[0]
    _require_dynamic(x)
    out = Val(r1, r2, x.node, batch_axis(r1, r2))
    if out.bp is None:
        raise Unsupported("merges the batch axis with other axes")
    if math.prod(x.full_shape[:x.bp]) != 1 or math.prod(out.full_shape[:out.bp]) != 1:
        raise Unsupported("a reshape that moves elements across the batch axis")
    if out.shape == x.shape:
        return out
    return result(low, low.emit(ir.Reshape, [x.node], label=_label(node), shape=out.shape), r1, r2)


def emit_permute(low, node, x: Val, perm, r1, r2) -> Val:
    perm = [p % x.v1.dim() for p in perm]
    dims = [x.axis(p) for p in perm if p != x.bp]
    if dims == sorted(dims):
        return Val(r1, r2, x.node, perm.index(x.bp))
    name = low.emit(ir.Permute, [x.node], label=_label(node), dims=tuple(dims))
    return result(low, name, r1, r2)


def permute(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    perm = kwargs.get("dims", args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list))
                      else args[1])
    return emit_permute(low, node, x, [_plain(p) for p in _plain(perm)], r1, r2)


def transpose(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    d0, d1 = (_plain(a) % x.v1.dim() for a in args[1:3])
    perm = list(range(x.v1.dim()))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return emit_permute(low, node, x, perm, r1, r2)


def unbind(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    dim = _plain(kwargs.get("dim", args[1] if len(args) > 1 else 0))
    axis = x.axis(dim)
    return tuple(result(low, low.emit(ir.Select, [x.node], label=f"{low.source}.select{i}",
                                      axis=axis, index=i), a, b)
                 for i, (a, b) in enumerate(zip(r1, r2)))


def split(low, node, gm, args, kwargs, r1, r2):
    """chunk / split / tensor_split: consecutive slices along one axis."""
    x = args[0]
    _require_dynamic(x)
    dim = _plain(kwargs.get("dim", args[2] if len(args) > 2 else 0))
    axis = x.axis(dim)
    pieces, start = [], 0
    for i, (a, b) in enumerate(zip(r1, r2)):
        size = a.shape[dim]
        pieces.append(result(low, low.emit(ir.Slice, [x.node], label=f"{low.source}.slice{i}",
                                           axis=axis, start=start, stop=start + size), a, b))
        start += size
    return tuple(pieces)


def getitem(low, node, gm, args, kwargs, r1, r2):
    x, index = args[0], _plain(args[1])
    _require_dynamic(x)
    if not isinstance(index, tuple):
        index = (index,)
    if any(isinstance(i, torch.Tensor) or i is None for i in index) or index.count(Ellipsis) > 1:
        raise Unsupported("advanced indexing")
    if Ellipsis in index:
        at = index.index(Ellipsis)
        fill = x.v1.dim() - (len(index) - 1)
        index = index[:at] + (slice(None),) * fill + index[at + 1:]
    index = index + (slice(None),) * (x.v1.dim() - len(index))
    name, shape = x.node, list(x.full_shape)
    ops = []
    for full_axis in reversed(range(len(index))):   # last axis first keeps earlier axes valid
        item = index[full_axis]
        size = shape[full_axis]
        if full_axis == x.bp:
            if item != slice(None):
                raise Unsupported("indexing the batch axis")
            continue
        axis = x.axis(full_axis)
        if isinstance(item, int):
            ops.append((ir.Select, dict(axis=axis, index=item % size)))
        elif isinstance(item, slice):
            start, stop, step = item.indices(size)
            if step != 1:
                raise Unsupported("strided slicing")
            if (start, stop) != (0, size):
                ops.append((ir.Slice, dict(axis=axis, start=start, stop=stop)))
        else:
            raise Unsupported(f"index {item!r}")
    for cls, fields in ops:
        name = low.emit(cls, [name], label=_label(node), **fields)
    return result(low, name, r1, r2) if ops else Val(r1, r2, x.node, x.bp)


def cat(low, node, gm, args, kwargs, r1, r2):
    tensors = args[0]
    dim = _plain(kwargs.get("dim", args[1] if len(args) > 1 else 0))
    like = next(t for t in tensors if isinstance(t, Val) and t.dynamic)
    if any(isinstance(t, Val) and t.dynamic and t.bp != like.bp for t in tensors):
        raise Unsupported("concatenating tensors with different batch axes")
    names = [low.operand(t, like) for t in tensors]
    return result(low, low.emit(ir.Concat, names, label=_label(node), axis=like.axis(dim)), r1, r2)


def mean(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    dims = _plain(kwargs.get("dim", args[1] if len(args) > 1 else None))
    keepdim = _plain(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
    if dims is None:
        raise Unsupported("mean over all axes, the batch axis included")
    dims = sorted({d % x.v1.dim() for d in ((dims,) if isinstance(dims, int) else dims)}, reverse=True)
    name = x.node
    for d in dims:
        name = low.emit(ir.Mean, [name], label=_label(node), axis=x.axis(d))
    if keepdim:
        shape = [s for i, s in enumerate(r1.shape) if i != x.bp]
        name = low.emit(ir.Reshape, [name], label=_label(node), shape=tuple(shape))
    return result(low, name, r1, r2)


def flatten_module(low, node, gm, args, kwargs, r1, r2):
    return reshape(low, node, gm, args, kwargs, r1, r2)


def passthrough(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    if isinstance(r1, torch.Tensor) and r1.dtype not in (torch.float32,):
        raise Unsupported(f"casts to {r1.dtype}")
    return same(x, r1, r2)


def metadata(low, node, gm, args, kwargs, r1, r2):
    """x.shape, x.size(), x.dim(), ...: plain values, no IR."""
    return Val(r1, r2)


def expand(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    if tuple(r1.shape) != x.full_shape:
        raise Unsupported("expanding an input-dependent tensor")
    return same(x, r1, r2)


# -- helpers -------------------------------------------------------------------------
def _plain(v):
    """A constant argument's value (the first run's; shapes may differ in batch)."""
    if isinstance(v, Val):
        if v.dynamic:
            raise Unsupported("an argument that depends on the input")
        return v.v1
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(i) for i in v)
    return v


def _bind_names(names, args, kwargs):
    return {**dict(zip(names, args)), **kwargs}


def _label(node: fx.Node) -> str | None:
    return str(node.target) if node.op == "call_module" else None


MODULES = {
    nn.Linear: linear_module, nn.Conv2d: conv_module,
    nn.LayerNorm: layernorm_module, nn.GELU: gelu, nn.ReLU: relu, nn.Softmax: softmax,
    nn.Dropout: passthrough, nn.Identity: passthrough, nn.Flatten: flatten_module,
    nn.BatchNorm1d: batchnorm_module, nn.BatchNorm2d: batchnorm_module,
    nn.AvgPool2d: pool, nn.MaxPool2d: pool, nn.AdaptiveAvgPool2d: adaptive_avg_pool,
}
FUNCTIONS = {
    F.linear: linear_function, F.conv2d: conv_function, F.layer_norm: layernorm_function,
    F.gelu: gelu, F.relu: relu, torch.relu: relu, F.softmax: softmax, torch.softmax: softmax,
    F.scaled_dot_product_attention: sdpa, F.dropout: passthrough,
    F.avg_pool2d: pool, F.max_pool2d: pool, F.adaptive_avg_pool2d: adaptive_avg_pool,
    operator.add: add, operator.iadd: add, torch.add: add, operator.sub: sub, torch.sub: sub,
    operator.mul: mul, torch.mul: mul, operator.truediv: div, torch.div: div, operator.neg: neg,
    operator.matmul: matmul, torch.matmul: matmul, torch.bmm: matmul,
    operator.getitem: getitem, torch.cat: cat, torch.concat: cat,
    torch.flatten: reshape, torch.reshape: reshape, torch.squeeze: reshape, torch.unsqueeze: reshape,
    torch.transpose: transpose, torch.permute: permute, torch.mean: mean, torch.unbind: unbind,
    torch.chunk: split, torch.split: split, builtins.getattr: metadata,
}
METHODS = {
    "reshape": reshape, "view": reshape, "flatten": reshape, "unflatten": reshape,
    "squeeze": reshape, "unsqueeze": reshape, "permute": permute, "transpose": transpose,
    "unbind": unbind, "chunk": split, "split": split, "mean": mean, "softmax": softmax,
    "relu": relu, "add": add, "sub": sub, "mul": mul, "div": div, "matmul": matmul,
    "contiguous": passthrough, "clone": passthrough, "float": passthrough, "to": passthrough,
    "type_as": passthrough, "detach": passthrough, "size": metadata, "dim": metadata,
    "expand": expand, "__getitem__": getitem,
}


def handler_for(node: fx.Node, gm: fx.GraphModule):
    if node.op == "call_module":
        return MODULES.get(type(gm.get_submodule(node.target)))
    if node.op == "call_method":
        return METHODS.get(node.target)
    return FUNCTIONS.get(node.target)
