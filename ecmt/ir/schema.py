"""The graph description's schema, checked before any node is built.

A graph file's JSON description is untrusted input.  ``check_description``
checks every field's type and range, so that node constructors, shape
inference, the runtime and the exporters only ever see well-typed values, and
a bad file gives one GraphError naming the node and field.

The attribute types are the node kinds' own dataclass annotations (a
``Range`` in an ``Annotated`` annotation bounds a number, see node.py), so a
new node kind needs no entry here.  The record around the attributes (name,
inputs, tensors, ...) and the metadata keys that code reads are listed below.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing

import torch

from ..errors import GraphError, GraphFileError
from .node import Node, Range

MAX_INT = 2**31 - 1        # every whole number: sizes, axes, indices (torch's int32 limit)
MAX_RANK = 16              # axes in a shape
MAX_DEPTH = 32             # nesting of free-form metadata
MAX_NAME = 1024            # characters in a node name or string attribute


class _Bad(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _show(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _scalar(hint, rng: Range | None, value, field: str):
    """The checked value of one int / float / bool / str field."""
    if hint is bool:
        if type(value) is not bool:
            raise _Bad(field, f"expected true or false, got {_show(value)}")
        return value
    if hint is str:
        if not isinstance(value, str) or len(value) > MAX_NAME:
            raise _Bad(field, f"expected a string (at most {MAX_NAME} characters), got {_show(value)}")
        return value
    if hint is int:
        if type(value) is not int:               # not 1.0, not true
            raise _Bad(field, f"expected a whole number, got {_show(value)}")
        if abs(value) > MAX_INT:
            raise _Bad(field, f"{value} is out of range (at most {MAX_INT} in size)")
    elif hint is float:
        if type(value) not in (int, float):
            raise _Bad(field, f"expected a number, got {_show(value)}")
        if not math.isfinite(value) or abs(value) > 3.4e38:
            raise _Bad(field, f"must be a finite float32 number, got {_show(value)}")
        value = float(value)
    else:
        raise TypeError(f"schema: unsupported attribute type {hint!r}")
    bound = rng.violated(value) if rng is not None else None
    if bound is not None:
        raise _Bad(field, f"must be {bound}, got {_show(value)}")
    return value


def check_value(annotation, value, field: str):
    """`value` checked against a field annotation (int, float, bool, str or a tuple
    of those, optionally Annotated with a Range); lists become tuples."""
    rng = None
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        rng = next((e for e in extras if isinstance(e, Range)), None)
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, list):
            raise _Bad(field, f"expected a list, got {_show(value)}")
        if args[-1] is Ellipsis:
            if len(value) > MAX_RANK:
                raise _Bad(field, f"{len(value)} entries, at most {MAX_RANK}")
        elif len(value) != len(args):
            raise _Bad(field, f"expected a list of {len(args)} entries, got {len(value)}")
        return tuple(_scalar(args[0], rng, v, f"{field}[{i}]") for i, v in enumerate(value))
    return _scalar(annotation, rng, value, field)


@functools.cache
def attribute_specs(cls: type[Node]) -> dict[str, tuple[object, bool]]:
    """{attribute: (annotation, required)} of a node kind, from its dataclass fields."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
            if f.name not in ("name", "inputs", "meta") and f.name not in cls.TENSORS}


def check_json(value, field: str, depth: int = 0) -> None:
    """Free-form metadata: plain JSON, finite numbers, nested at most MAX_DEPTH deep
    (it is written back out and printed)."""
    stack = [(value, field, depth)]
    while stack:
        v, where, d = stack.pop()
        if d > MAX_DEPTH:
            raise _Bad(where, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(v, float) and not math.isfinite(v):
            raise _Bad(where, f"must be a finite number, got {v}")
        if isinstance(v, dict):
            stack.extend((item, f"{where}.{key}", d + 1) for key, item in v.items())
        elif isinstance(v, list):
            stack.extend((item, f"{where}[{i}]", d + 1) for i, item in enumerate(v))
        elif not (v is None or isinstance(v, (bool, int, float, str))):
            raise _Bad(where, f"not a JSON value: {_show(v)}")


# Metadata keys that code reads or formats (summary, calibration, search); any other
# key is free-form JSON.
GRAPH_META = {"source": str, "calibration": dict, "ppn": bool, "spiking": bool, "unit_thresholds": int}
NODE_META = {"source": str, "role": str, "ppn": bool, "unit_threshold": float,
             # "?": optional (graphs searched before k was a choice have no spikes_per_step)
             "search": {"target_T": int, "multiplier": float, "levels": int, "spikes_per_step?": int}}


def _check_meta(meta, spec: dict, field: str, required: bool = False) -> dict:
    """Metadata against `spec`: its keys are optional at the top, required in a nested record."""
    if not isinstance(meta, dict):
        raise _Bad(field, f"expected an object, got {_show(meta)}")
    check_json(meta, field)
    for key, want in spec.items():
        optional, key = key.endswith("?"), key.rstrip("?")
        where = f"{field}.{key}"
        if key not in meta:
            if required and not optional:
                raise _Bad(where, "missing")
            continue
        if isinstance(want, dict):
            _check_meta(meta[key], want, where, required=True)
        elif want is dict:
            if not isinstance(meta[key], dict):
                raise _Bad(where, f"expected an object, got {_show(meta[key])}")
        else:
            _scalar(want, None, meta[key], where)
    return meta


def _typed(value, kind, field: str, what: str):
    if not isinstance(value, kind):
        raise _Bad(field, f"expected {what}, got {_show(value)}")
    return value


# The record around each node's attributes, as graph_to_json writes it.
NODE_KEYS = ("name", "kind", "inputs", "attrs", "tensors", "tensor_shapes", "shape", "spiking", "meta")
TOP_KEYS = ("format", "version", "meta", "nodes")


def check_node(nd, tensors: dict[str, torch.Tensor], kinds: dict[str, type[Node]], index: int,
               source: str) -> dict:
    """One node record checked; returns the constructor's keyword arguments."""
    name = nd.get("name") if isinstance(nd, dict) else None
    label = f"node {name!r}" if isinstance(name, str) and len(name) <= MAX_NAME else f"node #{index}"
    kind = nd.get("kind") if isinstance(nd, dict) else None
    where = f"{source}: {label}" + (f" ({kind})" if isinstance(kind, str) and len(kind) <= 64 else "")
    try:
        _typed(nd, dict, "node", "an object")
        extra = sorted(set(nd) - set(NODE_KEYS))
        if extra:
            raise _Bad(extra[0][:40], f"unknown key (a node has {', '.join(NODE_KEYS)})")
        missing = [k for k in NODE_KEYS if k not in nd]
        if missing:
            raise _Bad(missing[0], "missing")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise _Bad("name", f"expected a non-empty string, got {_show(name)}")
        cls = kinds.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise _Bad("kind", f"unknown op {_show(kind)} (known: {', '.join(sorted(kinds))})")
        inputs = _typed(nd["inputs"], list, "inputs", "a list of node names")
        for i, src in enumerate(inputs):
            _scalar(str, None, src, f"inputs[{i}]")
        _typed(nd["spiking"], bool, "spiking", "true or false")
        check_value(tuple[int, ...], nd["shape"], "shape")
        kwargs = {"name": name, "inputs": tuple(inputs), "meta": _check_meta(nd["meta"], NODE_META, "meta")}
        kwargs.update(_check_attrs(cls, nd["attrs"]))
        kwargs.update(_check_tensors(cls, nd["tensors"], nd["tensor_shapes"], tensors))
    except _Bad as bad:
        raise GraphError(f"{where}: field {bad.field}: {bad}") from None
    return kwargs


def _check_attrs(cls: type[Node], attrs) -> dict:
    specs = attribute_specs(cls)
    _typed(attrs, dict, "attrs", "an object")
    for key in attrs:
        if key not in specs:
            raise _Bad(key[:40], f"not an attribute of {cls.KIND} "
                            f"(its attributes: {', '.join(specs) or 'none'})")
    out = {}
    for field, (annotation, required) in specs.items():
        if field in attrs:
            out[field] = check_value(annotation, attrs[field], field)
        elif required:
            raise _Bad(field, "missing")
    return out


def _check_tensors(cls: type[Node], refs, shapes, tensors: dict[str, torch.Tensor]) -> dict:
    _typed(refs, dict, "tensors", "an object")
    _typed(shapes, dict, "tensor_shapes", "an object")
    out = {}
    for field in cls.TENSORS:
        key = refs.get(field)
        if key is None:
            if field not in cls.OPTIONAL_TENSORS:
                raise _Bad(field, "missing tensor")
            out[field] = None
            continue
        _scalar(str, None, key, f"tensors.{field}")
        if key not in tensors:
            raise _Bad(field, f"missing tensor {key!r}")
        recorded = check_value(tuple[int, ...], shapes.get(field), f"tensor_shapes.{field}")
        if recorded != tuple(tensors[key].shape):
            raise _Bad(f"tensor_shapes.{field}", f"records {list(recorded)} but the tensor is "
                                                 f"{list(tensors[key].shape)}")
        out[field] = tensors[key]
    for field in (*refs, *shapes):
        if field not in cls.TENSORS:
            raise _Bad(field[:40], f"not a tensor field of {cls.KIND}")
    for field in shapes:
        if field not in refs:
            raise _Bad(f"tensor_shapes.{field}", "a shape for a tensor the node does not have")
    return out


def check_description(desc, source: str, fmt: str, version: int) -> tuple[dict, list]:
    """The top level checked: (graph meta, node records)."""
    if not isinstance(desc, dict):
        raise GraphFileError(f"{source}: not an ecmt graph (the description is {_show(desc)}, not an object)")
    if desc.get("format") != fmt:
        raise GraphFileError(f"{source}: not an ecmt graph (format {_show(desc.get('format'))})")
    got = desc.get("version")
    if type(got) is not int or got != version:      # 1.0 and true are not version 1
        raise GraphFileError(f"{source}: unsupported graph version {_show(got)} "
                             f"(this ecmt reads version {version}, the whole number)",
                             hint="convert the model again with this ecmt version")
    try:
        extra = sorted(set(desc) - set(TOP_KEYS))
        if extra:
            raise _Bad(extra[0][:40], f"unknown key (a graph has {', '.join(TOP_KEYS)})")
        if "meta" not in desc or "nodes" not in desc:
            raise _Bad("meta" if "meta" not in desc else "nodes", "missing")
        meta = _check_meta(desc["meta"], GRAPH_META, "meta")
        nodes = _typed(desc["nodes"], list, "nodes", "a list of nodes")
    except _Bad as bad:
        raise GraphError(f"{source}: graph: field {bad.field}: {bad}") from None
    return meta, nodes
