"""The conversion rules: one handler per torch operation that can take an
input-dependent tensor, registered beside its definition with ``@rule(...)``.
A handler emits IR nodes for per-sample tensors and returns the lowered value
(the Lowering and Val of lowering.py); it raises Unsupported for a use it
cannot express.  Constant-only computations never reach a rule.
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
from .lowering import Lowering, Unsupported, Val, batch_axis

# The rules, by the FX node's op: nn.Module classes (call_module), functions
# (call_function: torch, F, operator, builtins) and Tensor method names (call_method).
RULES: dict[str, dict] = {"call_module": {}, "call_function": {}, "call_method": {}}


def rule(*targets):
    """Register the decorated handler for each target: an nn.Module subclass, a
    Tensor method name (str) or a function.  A target has one rule."""
    def register(handler):
        for target in targets:
            if isinstance(target, str):
                op = "call_method"
            elif isinstance(target, type):
                if not issubclass(target, nn.Module):
                    raise TypeError(f"conversion rule {handler.__name__}: target {target.__name__} is a class "
                                    "but not an nn.Module")
                op = "call_module"
            elif callable(target):
                op = "call_function"
            else:
                raise TypeError(f"conversion rule {handler.__name__}: target {target!r} is not a module class, "
                                "method name or function")
            if RULES[op].get(target, handler) is not handler:
                raise ValueError(f"conversion rule {handler.__name__}: {target!r} already converts with "
                                 f"{RULES[op][target].__name__}")
            RULES[op][target] = handler
        return handler
    return register


def handler_for(node: fx.Node, gm: fx.GraphModule):
    """The rule for a traced call, or None."""
    if node.op == "call_module":
        return RULES["call_module"].get(type(gm.get_submodule(node.target)))
    return RULES.get(node.op, {}).get(node.target)


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
    if x.fold != 1:
        # k maps per sample folded into the batch (TNT's patches): one conv over the k
        # maps stacked as channel groups, the weight repeated per map
        k, c, h, w = x.shape
        stacked = low.emit(ir.Reshape, [x.node], shape=(k * c, h, w))
        rb1, rb2 = (r.reshape(r.shape[0] // k, k * r.shape[1], *r.shape[2:]) for r in (r1, r2))
        out = emit_conv(low, Val(x.v1.reshape(-1, k * c, h, w), x.v2.reshape(-1, k * c, h, w), stacked, 0),
                        weight.repeat(k, 1, 1, 1), None if bias is None else const_tensor(bias).repeat(k),
                        stride, padding, dilation, groups * k, rb1, rb2, label=label)
        return result(low, low.emit(ir.Reshape, [out.node], shape=(k, *r1.shape[1:])), r1, r2)
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


@rule(nn.Unfold, F.unfold)
def unfold(low, node, gm, args, kwargs, r1, r2):
    """nn.Unfold / F.unfold (TNT's patches): for non-overlapping patches a pure
    layout change (reshape, permute, reshape); otherwise a grouped conv with
    one-hot weights, one output channel per (channel, kernel position)."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        cfg = dict(kernel_size=m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    else:
        a = _bind_names(["input", "kernel_size", "dilation", "padding", "stride"], args, kwargs)
        cfg = {k: _plain(a.get(k, d)) for k, d in (("kernel_size", None), ("dilation", 1), ("padding", 0),
                                                  ("stride", 1))}
    x = args[0]
    _require_dynamic(x)
    if x.bp != 0 or x.fold != 1 or x.v1.dim() != 4:
        raise Unsupported("unfold needs a [B, C, H, W] input")
    pair = lambda v: (int(v), int(v)) if isinstance(v, int) else tuple(int(i) for i in v)  # noqa: E731
    (kh, kw), dil, pad, stride = (pair(cfg[k]) for k in ("kernel_size", "dilation", "padding", "stride"))
    c, h, w = x.shape
    if stride == (kh, kw) and dil == (1, 1) and pad == (0, 0):
        oh, ow = h // kh, w // kw
        name = x.node
        if (oh * kh, ow * kw) != (h, w):
            name = low.emit(ir.Slice, [name], axis=1, start=0, stop=oh * kh)
            name = low.emit(ir.Slice, [name], axis=2, start=0, stop=ow * kw)
        name = low.emit(ir.Reshape, [name], shape=(c, oh, kh, ow, kw))
        name = low.emit(ir.Permute, [name], dims=(0, 2, 4, 1, 3))
        return result(low, low.emit(ir.Reshape, [name], label=_label(node), shape=(c * kh * kw, oh * ow)),
                      r1, r2)
    eye = torch.eye(kh * kw).reshape(kh * kw, 1, kh, kw)
    conv = emit_conv(low, x, eye.repeat(c, 1, 1, 1), None, stride, pad, dil, c,
                     *(F.conv2d(v, eye.repeat(c, 1, 1, 1), None, stride, pad, dil, c) for v in (x.v1, x.v2)),
                     label=_label(node))
    return result(low, low.emit(ir.Reshape, [conv.node], shape=tuple(r1.shape[1:])), r1, r2)


@rule(nn.Linear)
def linear_module(low, node, gm, args, kwargs, r1, r2):
    m = gm.get_submodule(node.target)
    return emit_linear(low, args[0], m.weight, m.bias, r1, r2, label=node.target)


@rule(nn.Conv2d)
def conv_module(low, node, gm, args, kwargs, r1, r2):
    m = gm.get_submodule(node.target)
    if m.padding_mode != "zeros":
        raise Unsupported(f"padding_mode={m.padding_mode!r}")
    return emit_conv(low, args[0], m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups,
                     r1, r2, label=node.target)


@rule(F.linear)
def linear_function(low, node, gm, args, kwargs, r1, r2):
    a = _bind_names(["input", "weight", "bias"], args, kwargs)
    if isinstance(a["weight"], Val) and a["weight"].dynamic:
        raise Unsupported("weights computed from the input")
    return emit_linear(low, a["input"], a["weight"], a.get("bias"), r1, r2)


@rule(F.conv2d)
def conv_function(low, node, gm, args, kwargs, r1, r2):
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    a = {**defaults, **dict(zip(names, args)), **kwargs}
    a = {k: (v.v1 if isinstance(v, Val) and not v.dynamic and k not in ("weight", "bias") else v)
         for k, v in a.items()}
    return emit_conv(low, a["input"], a["weight"], a["bias"], a["stride"], a["padding"],
                     a["dilation"], a["groups"], r1, r2)


def emit_batchnorm(low, x: Val, mean, var, weight, bias, eps, r1, r2, label=None):
    """Eval-mode batch norm as a per-channel scale and shift (simplify folds them
    into the layer before)."""
    _require_dynamic(x)
    if x.bp != 0 or x.v1.dim() < 2:
        raise Unsupported("batch norm needs a [B, C, ...] input")
    scale = (1.0 if weight is None else const_tensor(weight)) / torch.sqrt(const_tensor(var) + eps)
    shift = (0.0 if bias is None else const_tensor(bias)) - const_tensor(mean) * scale
    # channels are full axis 1; with tokens folded into the batch (LeViT's [B * N, C]) the
    # per-sample tensor keeps the folded axis in front of them
    shape = (-1,) + (1,) * (len(x.shape) - x.axis(1) - 1)
    base = label or low.source
    s = low.emit(ir.Scale, [x.node], label=f"{base}.scale" if base else None, factor=scale.reshape(shape))
    c = low.emit(ir.Constant, [], label=f"{base}.shift" if base else None, value=shift.reshape(shape))
    return result(low, low.emit(ir.Add, [s, c], label=label), r1, r2)


@rule(nn.BatchNorm1d, nn.BatchNorm2d)
def batchnorm_module(low, node, gm, args, kwargs, r1, r2):
    m = gm.get_submodule(node.target)
    if not m.track_running_stats:
        raise Unsupported("batch norm needs running statistics")
    return emit_batchnorm(low, args[0], m.running_mean, m.running_var, m.weight if m.affine else None,
                          m.bias if m.affine else None, m.eps, r1, r2, label=node.target)


@rule(F.batch_norm)
def batchnorm_function(low, node, gm, args, kwargs, r1, r2):
    """F.batch_norm, as timm's BatchNormAct2d calls it."""
    a = _bind_names(["input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
                     "eps"], args, kwargs)
    if _plain(a.get("training", False)) or a.get("running_mean") is None:
        raise Unsupported("batch norm in training mode or without running statistics")
    return emit_batchnorm(low, a["input"], a["running_mean"], a["running_var"], a.get("weight"),
                          a.get("bias"), float(_plain(a.get("eps", 1e-5))), r1, r2)


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


@rule(nn.LayerNorm)
def layernorm_module(low, node, gm, args, kwargs, r1, r2):
    m = gm.get_submodule(node.target)
    return emit_layernorm(low, args[0], m.normalized_shape, m.weight, m.bias, m.eps, r1, r2,
                          label=node.target)


@rule(F.layer_norm)
def layernorm_function(low, node, gm, args, kwargs, r1, r2):
    a = _bind_names(["input", "normalized_shape", "weight", "bias", "eps"], args, kwargs)
    return emit_layernorm(low, a["input"], _plain(a["normalized_shape"]), a.get("weight"),
                          a.get("bias"), _plain(a.get("eps", 1e-5)), r1, r2)


@rule(F.normalize)
def normalize(low, node, gm, args, kwargs, r1, r2):
    """F.normalize (p=2; cosine attention, XCiT) as a layer norm ECM: the row
    [x, -x] has mean 0 and variance |x|^2 / n, so its layer norm with weights
    1 / sqrt(n) and eps = eps_F^2 / n starts with x / sqrt(|x|^2 + eps_F^2),
    which is x / max(|x|, eps_F) to float precision."""
    a = _bind_names(["input", "p", "dim", "eps"], args, kwargs)
    x = a["input"]
    _require_dynamic(x)
    if float(_plain(a.get("p", 2.0))) != 2.0:
        raise Unsupported("norms other than L2")
    axis = x.axis(_plain(a.get("dim", 1)))
    eps = float(_plain(a.get("eps", 1e-12)))
    rank = len(x.shape)
    name = x.node
    if axis != rank - 1:                 # the layer norm works on the last axis
        order = [i for i in range(rank) if i != axis] + [axis]
        name = low.emit(ir.Permute, [name], dims=tuple(order))
    n = low.shapes[name][-1]
    both = low.emit(ir.Concat, [name, low.emit(ir.Scale, [name], factor=torch.tensor(-1.0))], axis=-1)
    normed = low.emit(ir.LayerNormECM, [both], label=f"{low.source}.normalize" if low.source else "normalize",
                      weight=torch.full((2 * n,), n ** -0.5), bias=None, eps=eps * eps / n, features=2 * n)
    name = low.emit(ir.Slice, [normed], axis=rank - 1, start=0, stop=n)
    if axis != rank - 1:
        name = low.emit(ir.Permute, [name], dims=tuple(order.index(i) for i in range(rank)))
    return result(low, name, r1, r2)


def emit_unary(low, cls, x: Val, r1, r2, label=None, **fields):
    _require_dynamic(x)
    return result(low, low.emit(cls, [x.node], label=label, **fields), r1, r2)


@rule(nn.GELU, F.gelu)
def gelu(low, node, gm, args, kwargs, r1, r2):
    if node.op == "call_module":
        approx = gm.get_submodule(node.target).approximate
    else:
        approx = _plain(kwargs.get("approximate", args[1] if len(args) > 1 else "none"))
    return emit_unary(low, ir.GELUECM, args[0], r1, r2, label=_label(node), approximate=approx)


def elementwise(function: str, *targets):
    """The handler of an elementwise nonlinearity without parameters (SiLU, sigmoid,
    hardswish), registered for `targets`."""
    @rule(*targets)
    def handler(low, node, gm, args, kwargs, r1, r2):
        return emit_unary(low, ir.ElementwiseECM, args[0], r1, r2, label=_label(node), function=function)
    return handler


silu = elementwise("silu", nn.SiLU, F.silu)
sigmoid = elementwise("sigmoid", nn.Sigmoid, torch.sigmoid, F.sigmoid, "sigmoid")
hardswish = elementwise("hardswish", nn.Hardswish, F.hardswish)


@rule(nn.ReLU, F.relu, torch.relu, "relu")
def relu(low, node, gm, args, kwargs, r1, r2):
    return emit_unary(low, ir.ReLUECM, args[0], r1, r2, label=_label(node))


@rule(nn.Softmax, F.softmax, torch.softmax, "softmax")
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


@rule(F.scaled_dot_product_attention)
def sdpa(low, node, gm, args, kwargs, r1, r2):
    a = _bind_names(["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale"],
                    args, kwargs)
    q, k, v = a["query"], a["key"], a["value"]
    _require_dynamic(k, v)
    mask = a.get("attn_mask")
    if _plain(a.get("is_causal", False)) or _plain(a.get("dropout_p", 0.0)) \
            or _plain(kwargs.get("enable_gqa", False)):
        raise Unsupported("causal attention, dropout and GQA")
    if isinstance(mask, Val) and mask.v1 is not None and mask.v1.dtype == torch.bool:
        raise Unsupported("boolean attention masks")
    scale = _plain(a.get("scale"))
    scale = 1.0 / math.sqrt(q.v1.shape[-1]) if scale is None else float(scale)
    path = low.source
    if q.dynamic:
        scores = low.emit(ir.ProductECM, [q.node, k.node], label=f"{path}.qk", transpose_b=True, scale=scale)
    else:
        scores = constant_query_scores(low, q, k, scale)
    if mask is not None and not (isinstance(mask, Val) and mask.v1 is None):
        # A bias or mask (relative position bias, shifted windows) is added before the softmax ECM.
        s1, s2 = (a_ @ b_.transpose(-2, -1) * scale for a_, b_ in ((q.v1, k.v1), (q.v2, k.v2)))
        like = result(low, scores, s1, s2)
        scores = low.emit(ir.Add, [scores, low.operand(mask, like)], label=f"{path}.bias")
    attn = low.emit(ir.SoftmaxECM, [scores], label=f"{path}.softmax", axis=-1)
    out = low.emit(ir.ProductECM, [attn, v.node], label=f"{path}.av")
    return result(low, out, r1, r2)


def constant_query_scores(low, q: Val, k: Val, scale: float) -> str:
    """scale * Q @ K^T for a learned query Q (attention pooling): linear in K, so
    one linear layer per head, with Q's rows as its weights."""
    *lead, n, d = k.shape
    heads = math.prod(lead)
    query = low.per_sample_constant(q, k)
    query = query.reshape((1,) * (len(k.shape) - query.dim()) + tuple(query.shape))
    query = query.expand(*lead, -1, d).reshape(heads, -1, d) * scale
    flat = low.emit(ir.Reshape, [k.node], shape=(heads, n, d))
    per_head = []
    for h in range(heads):
        key = low.emit(ir.Select, [flat], axis=0, index=h)
        lin = low.emit(ir.Linear, [key], label=f"{low.source}.query{h}", weight=query[h].contiguous())
        per_head.append(low.emit(ir.Reshape, [lin], shape=(1, n, query.shape[1])))
    scores = low.emit(ir.Concat, per_head, axis=0) if heads > 1 else per_head[0]
    scores = low.emit(ir.Permute, [scores], dims=(0, 2, 1))
    return low.emit(ir.Reshape, [scores], shape=(*lead, query.shape[1], n))


@rule(nn.MultiheadAttention)
def multihead_attention(low, node, gm, args, kwargs, r1, r2):
    """nn.MultiheadAttention (torchvision's ViT): input projections, per-head
    attention as in sdpa, output projection."""
    m = gm.get_submodule(node.target)
    a = _bind_names(["query", "key", "value", "key_padding_mask", "need_weights", "attn_mask"], args, kwargs)
    q, k, v = a["query"], a["key"], a["value"]
    _require_dynamic(q, k, v)
    if any(_plain(a.get(f)) is not None for f in ("key_padding_mask", "attn_mask")) \
            or _plain(a.get("is_causal", False)) or m.in_proj_weight is None or m.bias_k is not None:
        raise Unsupported("masks, separate key/value sizes and bias_k/bias_v")
    if _plain(a.get("need_weights", True)):
        raise Unsupported("returning the attention weights (call with need_weights=False)")
    if any(t.fold != 1 or len(t.shape) != 2 for t in (q, k, v)):
        raise Unsupported("inputs other than [batch, tokens, features]")
    e, h = m.embed_dim, m.num_heads
    path = str(node.target)
    bias = m.in_proj_bias if m.in_proj_bias is not None else torch.zeros(3 * e)
    heads = []
    for i, (t, tag) in enumerate(((q, "q"), (k, "k"), (v, "v"))):
        rows = slice(i * e, (i + 1) * e)
        lin = low.emit(ir.Linear, [t.node], label=f"{path}.{tag}", weight=const_tensor(m.in_proj_weight[rows]),
                       bias=const_tensor(bias[rows]))
        split = low.emit(ir.Reshape, [lin], shape=(t.shape[0], h, e // h))
        heads.append(low.emit(ir.Permute, [split], dims=(1, 0, 2)))
    scores = low.emit(ir.ProductECM, heads[:2], label=f"{path}.qk", transpose_b=True,
                      scale=1.0 / math.sqrt(e // h))
    attn = low.emit(ir.SoftmaxECM, [scores], label=f"{path}.softmax", axis=-1)
    out = low.emit(ir.ProductECM, [attn, heads[2]], label=f"{path}.av")
    out = low.emit(ir.Permute, [out], dims=(1, 0, 2))
    out = low.emit(ir.Reshape, [out], shape=(q.shape[0], e))
    out = low.emit(ir.Linear, [out], label=f"{path}.out_proj", weight=const_tensor(m.out_proj.weight),
                   bias=None if m.out_proj.bias is None else const_tensor(m.out_proj.bias))
    return result(low, out, r1[0], r2[0]), Val(None, None)


@rule(nn.AvgPool2d, nn.MaxPool2d, F.avg_pool2d, F.max_pool2d)
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
    if x.bp != 0 or x.fold != 1 or x.v1.dim() != 4:
        raise Unsupported("pooling needs a [B, C, H, W] input")
    if cfg.get("ceil_mode") or cfg.get("return_indices") or cfg.get("divisor_override") \
            or cfg.get("dilation", 1) not in (1, (1, 1)):
        raise Unsupported("ceil_mode, dilation, divisor_override and return_indices")
    kernel = cfg["kernel_size"]
    stride = cfg.get("stride") or kernel
    padding = cfg.get("padding", 0)
    cls = ir.MaxPool2d if is_max else ir.AvgPool2d
    name = low.emit(cls, [x.node], label=_label(node), kernel_size=kernel, stride=stride, padding=padding)
    if not is_max and not cfg.get("count_include_pad", True) and padding not in (0, (0, 0)):
        # Excluding the padding from the average is a constant rescaling per output position.
        counted = F.avg_pool2d(torch.ones(1, *x.v1.shape[2:]), kernel, stride, padding)
        name = low.emit(ir.Scale, [name], label=f"{_label(node) or low.source}.uncount_pad",
                        factor=(1.0 / counted).contiguous())
    return result(low, name, r1, r2)


@rule(nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d)
def adaptive_avg_pool(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    if x.bp != 0 or x.fold != 1 or x.v1.dim() != 4:
        raise Unsupported("pooling needs a [B, C, H, W] input")
    (h, w), (oh, ow) = x.v1.shape[2:], r1.shape[2:]
    if h % oh or w % ow:
        raise Unsupported("adaptive pooling with uneven windows")
    kernel = (h // oh, w // ow)
    return result(low, low.emit(ir.AvgPool2d, [x.node], label=_label(node), kernel_size=kernel,
                                stride=kernel), r1, r2)


# -- products and arithmetic -------------------------------------------------------
@rule(operator.matmul, torch.matmul, torch.bmm, "matmul")
def matmul(low, node, gm, args, kwargs, r1, r2):
    a, b = args[0], args[1]
    if isinstance(a, Val) and a.dynamic and isinstance(b, Val) and b.dynamic:
        return result(low, low.emit(ir.ProductECM, [a.node, b.node], label=_label(node)), r1, r2)
    if isinstance(a, Val) and a.dynamic and const_tensor(b).dim() == 2:
        return emit_linear(low, a, const_tensor(b).t().contiguous(), None, r1, r2)
    raise Unsupported("a matrix product with a constant on the left")


@rule(operator.add, operator.iadd, torch.add, "add")
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


@rule(operator.sub, torch.sub, "sub")
def sub(low, node, gm, args, kwargs, r1, r2):
    return add(low, node, gm, args, kwargs, r1, r2, sign=-1.0)


@rule(operator.mul, torch.mul, "mul")
def mul(low, node, gm, args, kwargs, r1, r2, invert: bool = False):
    a, b = args[0], args[1]
    if invert and not (isinstance(a, Val) and a.dynamic):
        raise Unsupported("division by an input-dependent tensor")
    if isinstance(b, Val) and b.dynamic:
        if invert:
            raise Unsupported("division by an input-dependent tensor")
        if isinstance(a, Val) and a.dynamic:
            return elementwise_product(low, node, a, b, r1, r2)
        a, b = b, a
    factor = low.per_sample_constant(b, a)
    if invert:
        factor = 1.0 / factor
    return result(low, low.emit(ir.Scale, [a.node], label=_label(node), factor=factor), r1, r2)


def elementwise_product(low, node, a: Val, b: Val, r1, r2) -> Val:
    """a * b of two streams (a gated MLP's gate, a squeeze-excite gate): a product
    ECM of [..., 1, 1] operands, one 1 x 1 @ 1 x 1 product per element.  An
    operand that broadcasts is first repeated by concats (a layout op)."""
    if a.bp != b.bp or a.v1.dim() != b.v1.dim():
        raise Unsupported("elementwise product of two input-dependent tensors with different batch layouts")
    out = Val(r1, r2, "", batch_axis(r1, r2)).shape
    cols = []
    for v in (a, b):
        name = v.node
        for axis, (have, want) in enumerate(zip(v.shape, out)):
            if have != want:
                name = low.emit(ir.Concat, [name] * want, axis=axis)
        cols.append(low.emit(ir.Reshape, [name], shape=(*out, 1, 1)))
    prod = low.emit(ir.ProductECM, cols, label=f"{low.source}.gate" if low.source else "gate")
    return result(low, low.emit(ir.Reshape, [prod], shape=out), r1, r2)


@rule(operator.truediv, torch.div, "div")
def div(low, node, gm, args, kwargs, r1, r2):
    if _plain(kwargs.get("rounding_mode")) is not None:
        raise Unsupported("rounding division")
    return mul(low, node, gm, args, kwargs, r1, r2, invert=True)


@rule(operator.neg)
def neg(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    return result(low, low.emit(ir.Scale, [x.node], factor=torch.tensor(-1.0)), r1, r2)


# -- shape operations ----------------------------------------------------------------
@rule(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, "reshape", "view", "flatten", "unflatten",
      "squeeze", "unsqueeze", "reshape_as", "view_as")
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
    dims = [x.axis(p) for p in perm if p != x.bp] if x.fold == 1 else perm
    if dims == sorted(dims):
        return Val(r1, r2, x.node, perm.index(x.bp))
    name = low.emit(ir.Permute, [x.node], label=_label(node), dims=tuple(dims))
    return result(low, name, r1, r2)


@rule(torch.permute, "permute")
def permute(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    perm = kwargs.get("dims", args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list))
                      else args[1])
    return emit_permute(low, node, x, [_plain(p) for p in _plain(perm)], r1, r2)


@rule(torch.transpose, "transpose")
def transpose(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    d0, d1 = (_plain(a) % x.v1.dim() for a in args[1:3])
    perm = list(range(x.v1.dim()))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return emit_permute(low, node, x, perm, r1, r2)


@rule(torch.unbind, "unbind")
def unbind(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    dim = _plain(kwargs.get("dim", args[1] if len(args) > 1 else 0))
    axis = x.axis(dim)
    return tuple(result(low, low.emit(ir.Select, [x.node], label=f"{low.source}.select{i}",
                                      axis=axis, index=i), a, b)
                 for i, (a, b) in enumerate(zip(r1, r2)))


@rule(torch.chunk, torch.split, "chunk", "split")
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


@rule(operator.getitem, "__getitem__")
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
            if step < 1:
                raise Unsupported("negative-step slicing")
            if step > 1:
                ops.append(("strided", dict(axis=axis, start=start, count=len(range(start, stop, step)),
                                            step=step, size=size)))
            elif (start, stop) != (0, size):
                ops.append((ir.Slice, dict(axis=axis, start=start, stop=stop)))
        else:
            raise Unsupported(f"index {item!r}")
    shape = list(x.shape)
    for cls, fields in ops:
        if cls == "strided":
            name = emit_strided(low, name, shape, **fields)
        else:
            name = low.emit(cls, [name], label=_label(node), **fields)
        shape = list(low.shapes[name])
    return result(low, name, r1, r2) if ops else Val(r1, r2, x.node, x.bp)


def emit_strided(low, name: str, shape: list[int], axis: int, start: int, count: int, step: int,
                 size: int) -> str:
    """x[start::step] along one axis (rotary embeddings' even/odd features, LeViT's
    subsampling) with layout ops only: slice a whole number of steps (zero-padded at
    the end if the axis is short), split the axis into (count, step), take index 0."""
    span = count * step
    stop = min(size, start + span)
    if (start, stop) != (0, size):
        name = low.emit(ir.Slice, [name], axis=axis, start=start, stop=stop)
    if stop - start < span:
        zeros = torch.zeros(*shape[:axis], span - (stop - start), *shape[axis + 1:])
        name = low.emit(ir.Concat, [name, low.emit(ir.Constant, [], value=zeros)], axis=axis)
    name = low.emit(ir.Reshape, [name], shape=(*shape[:axis], count, step, *shape[axis + 1:]))
    return low.emit(ir.Select, [name], axis=axis + 1, index=0)


@rule(torch.roll, "roll")
def roll(low, node, gm, args, kwargs, r1, r2):
    """torch.roll (Swin's cyclic shift): per axis, two slices swapped by a concat."""
    x = args[0]
    _require_dynamic(x)
    a = _bind_names(["input", "shifts", "dims"], args, kwargs)
    shifts, dims = _plain(a["shifts"]), _plain(a.get("dims"))
    if dims is None:
        raise Unsupported("roll of the flattened tensor")
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    name = x.node
    for shift, dim in zip(shifts, dims):
        axis, size = x.axis(dim), x.full_shape[dim]
        cut = size - shift % size
        if cut == size:
            continue
        tail = low.emit(ir.Slice, [name], axis=axis, start=cut, stop=size)
        head = low.emit(ir.Slice, [name], axis=axis, start=0, stop=cut)
        name = low.emit(ir.Concat, [tail, head], label=f"{low.source}.roll" if low.source else "roll",
                        axis=axis)
    return result(low, name, r1, r2) if name != x.node else same(x, r1, r2)


@rule(F.pad)
def pad(low, node, gm, args, kwargs, r1, r2):
    """F.pad with zeros: a concat with zero constants on each padded side."""
    a = _bind_names(["input", "pad", "mode", "value"], args, kwargs)
    x, widths = a["input"], _plain(a["pad"])
    _require_dynamic(x)
    value = float(_plain(a.get("value")) or 0.0)
    if _plain(a.get("mode", "constant")) != "constant" or value not in (0.0, -math.inf):
        raise Unsupported("padding other than with zeros (or with -inf before max pooling)")
    if any(w < 0 for w in widths):
        raise Unsupported("negative padding (cropping)")
    if value == -math.inf:
        return pad_for_max_pool(low, node, gm, x, widths, r1, r2)
    name, shape = x.node, list(x.shape)
    for axis, before, after in _padded_axes(x, widths):
        parts = []
        for width in (before, after):
            if width:
                zeros = torch.zeros(*shape[:axis], width, *shape[axis + 1:])
                parts.append(low.emit(ir.Constant, [], label=f"{low.source}.pad" if low.source else "pad",
                                      value=zeros))
        parts.insert(1 if before else 0, name)
        name = low.emit(ir.Concat, parts, axis=axis)
        shape[axis] += before + after
    return result(low, name, r1, r2) if name != x.node else same(x, r1, r2)


def _padded_axes(x: Val, widths):
    """(axis, before, after) of each padded axis of x, from F.pad's widths (pairs start at the last axis)."""
    for i in range(len(widths) // 2):
        before, after = widths[2 * i], widths[2 * i + 1]
        if before or after:
            yield x.axis(x.v1.dim() - 1 - i), before, after


def pad_for_max_pool(low, node, gm, x: Val, widths, r1, r2) -> Val:
    """-inf padding read only by max pooling (timm's SAME max pool): repeating the
    edge row / column instead changes no maximum when every pooling window that
    covers padding also covers the edge, i.e. when each width is below the kernel."""
    for user in node.users:
        if user.op == "call_module" and isinstance(gm.get_submodule(user.target), nn.MaxPool2d):
            m = gm.get_submodule(user.target)
            kernel, padding = m.kernel_size, m.padding
        elif user.op == "call_function" and user.target is F.max_pool2d:
            k = _bind_names(["input", "kernel_size", "stride", "padding"], user.args, user.kwargs)
            kernel, padding = k["kernel_size"], k.get("padding", 0)
        else:
            raise Unsupported("padding with -inf that is not read by max pooling only")
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        if padding not in (0, (0, 0)) or max(widths) >= min(kernel):
            raise Unsupported("padding with -inf as wide as the pooling kernel")
    name, shape = x.node, list(x.shape)
    for axis, before, after in _padded_axes(x, widths):
        first = low.emit(ir.Slice, [name], axis=axis, start=0, stop=1)
        last = low.emit(ir.Slice, [name], axis=axis, start=shape[axis] - 1, stop=shape[axis])
        name = low.emit(ir.Concat, [first] * before + [name] + [last] * after,
                        label=f"{low.source}.edge_pad" if low.source else "edge_pad", axis=axis)
        shape[axis] += before + after
    # the padded tensor differs from torch's (edges, not -inf) but every max over it agrees
    return Val(r1, r2, name, batch_axis(r1, r2))


@rule(nn.GroupNorm, F.group_norm)
def group_norm(low, node, gm, args, kwargs, r1, r2):
    """Group norm as a layer norm ECM over each group's [C / G, H, W] values (flattened),
    then the per-channel scale and shift."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        x, groups, weight, bias, eps = args[0], m.num_groups, m.weight, m.bias, m.eps
    else:
        a = _bind_names(["input", "num_groups", "weight", "bias", "eps"], args, kwargs)
        x, groups, weight, bias = a["input"], int(_plain(a["num_groups"])), a.get("weight"), a.get("bias")
        eps = float(_plain(a.get("eps", 1e-5)))
    _require_dynamic(x)
    if x.bp != 0 or x.fold != 1 or x.v1.dim() < 3:
        raise Unsupported("group norm needs a [B, C, ...] input")
    c, *rest = x.shape
    per_group = c // groups * math.prod(rest)
    name = low.emit(ir.Reshape, [x.node], shape=(groups, per_group))
    name = low.emit(ir.LayerNormECM, [name], label=f"{_label(node) or low.source}.norm",
                    weight=None, bias=None, eps=eps, features=per_group)
    name = low.emit(ir.Reshape, [name], shape=tuple(x.shape))
    channel = (-1,) + (1,) * len(rest)
    if weight is not None:
        name = low.emit(ir.Scale, [name], factor=const_tensor(weight).reshape(channel))
    if bias is not None:
        shift = low.emit(ir.Constant, [], value=const_tensor(bias).reshape(channel))
        name = low.emit(ir.Add, [name, shift], label=_label(node))
    return result(low, name, r1, r2)


@rule(torch.stack)
def stack(low, node, gm, args, kwargs, r1, r2):
    """torch.stack of input-dependent tensors: each gains the new axis, then one concat."""
    tensors = args[0]
    dim = _plain(kwargs.get("dim", args[1] if len(args) > 1 else 0))
    _require_dynamic(*tensors)
    out = Val(r1, r2, "", batch_axis(r1, r2))
    axis = out.axis(dim % r1.dim())
    piece = list(out.shape)
    piece[axis] = 1
    names = [low.emit(ir.Reshape, [t.node], shape=tuple(piece)) for t in tensors]
    return result(low, low.emit(ir.Concat, names, label=_label(node), axis=axis), r1, r2)


@rule(torch.sum, "sum")
def sum_(low, node, gm, args, kwargs, r1, r2):
    """A sum over axes: their mean times their size (both linear node kinds)."""
    x = args[0]
    _require_dynamic(x)
    dims = _plain(kwargs.get("dim", args[1] if len(args) > 1 else None))
    if dims is None:
        raise Unsupported("sum over all axes, the batch axis included")
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if len(dims) == 1:
        rows = row_sum(low, x.node, x.axis(dims[0]))
        if rows is not None:
            # rows that sum to a constant whatever the input (a mix of softmaxes, ConViT's
            # gated attention renormalized by its row sum): the sum is that constant
            got = r1 if keepdim_of(args, kwargs) else r1.unsqueeze(dims[0])
            want = rows.reshape((1,) * (got.dim() - rows.dim()) + tuple(rows.shape))
            if not torch.allclose(got, want.expand_as(got), rtol=1e-4, atol=1e-6):
                raise AssertionError("lowering bug: the row sum is not the constant the graph implies")
            return Val(r1, r2)
    count = math.prod(x.full_shape[d] for d in dims)
    name = mean(low, node, gm, args, kwargs, r1 / count, r2 / count).node
    return result(low, low.emit(ir.Scale, [name], factor=torch.tensor(float(count))), r1, r2)


def keepdim_of(args, kwargs) -> bool:
    return bool(_plain(kwargs.get("keepdim", args[2] if len(args) > 2 else False)))


def row_sum(low, name: str, axis: int) -> torch.Tensor | None:
    """The sum along per-sample `axis` of IR node `name` if the graph fixes it
    regardless of the input (softmax rows, scaled per row and mixed with
    constants), as a per-sample tensor with that axis of size 1; else None."""
    node = next((n for n in reversed(low.nodes) if n.name == name), None)
    shape = low.shapes.get(name)
    if node is None or shape is None:
        return None
    rank = len(shape)
    axis %= rank

    def aligned(t):
        t = torch.as_tensor(t, dtype=torch.float32)
        return t.reshape((1,) * (rank - t.dim()) + tuple(t.shape)) if t.dim() <= rank else None
    if isinstance(node, ir.SoftmaxECM):
        return torch.ones((1,) * rank) if node.axis % rank == axis else None
    if isinstance(node, ir.Constant):
        v = aligned(node.value)
        if v is None:
            return None
        return v * shape[axis] if v.shape[axis] == 1 else v.sum(axis, keepdim=True)
    if isinstance(node, ir.Scale):
        f, inner = aligned(node.factor), row_sum(low, node.inputs[0], axis)
        if f is None or inner is None or f.shape[axis] != 1:
            return None
        return f * inner
    if isinstance(node, ir.Add):
        total = torch.zeros((1,) * rank)
        for i in node.inputs:
            if len(low.shapes[i]) != rank:
                return None
            part = row_sum(low, i, axis)
            if part is None:
                return None
            total = total + part
        return total
    return None


@rule(torch.cat, torch.concat)
def cat(low, node, gm, args, kwargs, r1, r2):
    tensors = args[0]
    dim = _plain(kwargs.get("dim", args[1] if len(args) > 1 else 0))
    like = next(t for t in tensors if isinstance(t, Val) and t.dynamic)
    if any(isinstance(t, Val) and t.dynamic and t.bp != like.bp for t in tensors):
        raise Unsupported("concatenating tensors with different batch axes")
    names = [low.operand(t, like) for t in tensors]
    return result(low, low.emit(ir.Concat, names, label=_label(node), axis=like.axis(dim)), r1, r2)


@rule(torch.mean, "mean")
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
        name = low.emit(ir.Reshape, [name], label=_label(node), shape=Val(r1, r2, name, x.bp).shape)
    return result(low, name, r1, r2)


@rule(nn.Flatten)
def flatten_module(low, node, gm, args, kwargs, r1, r2):
    return reshape(low, node, gm, args, kwargs, r1, r2)


@rule(nn.Dropout, nn.Identity, F.dropout, "contiguous", "clone", "float", "to", "type_as", "detach")
def passthrough(low, node, gm, args, kwargs, r1, r2):
    x = args[0]
    _require_dynamic(x)
    if isinstance(r1, torch.Tensor) and r1.dtype not in (torch.float32,):
        raise Unsupported(f"casts to {r1.dtype}")
    return same(x, r1, r2)


@rule(builtins.getattr, "size", "dim")
def metadata(low, node, gm, args, kwargs, r1, r2):
    """x.shape, x.size(), x.dim(), ...: plain values, no IR."""
    return Val(r1, r2)


@rule("expand")
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
    if isinstance(v, slice):       # bounds read from .shape arrive wrapped
        return slice(_plain(v.start), _plain(v.stop), _plain(v.step))
    return v


def _bind_names(names, args, kwargs):
    return {**dict(zip(names, args)), **kwargs}


def _label(node: fx.Node) -> str | None:
    return str(node.target) if node.op == "call_module" else None
