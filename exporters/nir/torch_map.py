"""A nirtorch node map that runs ecmt's NIR files exactly.

    import nir, nirtorch
    from exporters.nir import torch_node_map
    m = nirtorch.nir_to_torch(nir.read("model.nir"), torch_node_map())
    out, state = m(x)               # step 1 (x: [B, *input shape], fed at every step)
    out, state = m(x, state)        # steps 2, 3, ...

Each step returns the output *increment*; the running mean of the outputs up
to step t is the executor's estimate at t (docs/nir.md).  Standard nodes run
their NIR semantics (nirtorch's own Affine mapping drops the bias, so every
standard type is mapped here); convention nodes rebuild their IR node from the
``ecmt.op`` metadata and step it with ecmt's runtime, converting between the
NIR layout and the IR value with the recorded ``Layout``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ecmt.ir import NODE_KINDS

from .layout import Layout, from_ir, to_ir
from .reader import NirImportError, decode


def _tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _ints(v, n: int) -> tuple[int, ...]:
    a = np.atleast_1d(np.asarray(v)).astype(int).tolist()
    return tuple(a * n if len(a) == 1 else a)


def _meta(node, key: str) -> dict | None:
    meta = getattr(node, "metadata", None) or {}
    return decode(meta[key]) if key in meta else None


class _Function(torch.nn.Module):
    """A stateless NIR node: y = f(x) with fixed tensors."""

    def __init__(self, fn, **tensors):
        super().__init__()
        self.fn = fn
        for name, t in tensors.items():
            self.register_buffer(name, t)

    def forward(self, x):
        return self.fn(self, x)


class _Relayout(torch.nn.Module):
    """A layout adapter (``ecmt.adapter`` role layout): the same IR value, another NIR layout."""

    def __init__(self, info: dict):
        super().__init__()
        self.have, self.want = Layout.from_json(info["from"]), Layout.from_json(info["to"])
        self.ir_shape = tuple(info["ir_shape"])

    def forward(self, x):
        return from_ir(to_ir(x, self.have, self.ir_shape), self.want)


class _ConventionNode(torch.nn.Module):
    """An IR node rebuilt from ``ecmt.op`` and stepped with ecmt's runtime.
    State: (step function, its runtime state, t)."""

    def __init__(self, nir_node, op: dict):
        super().__init__()
        from ecmt.runtime.executor import compile_node
        kind = op["kind"]
        cls = NODE_KINDS.get(kind)
        if cls is None:
            raise NirImportError(f"NIR node of IR kind {kind!r}: unknown to this ecmt")
        meta = nir_node.metadata
        tensors = {f: _tensor(meta[f"ecmt.tensor.{f}"]).reshape(s) for f, s in op["tensor_shapes"].items()}
        tensors.update({f: None for f in cls.OPTIONAL_TENSORS if f not in tensors})
        self.node = cls(name=op.get("name", kind), inputs=tuple(op["inputs"]), **op["attrs"], **tensors)
        self.input_shapes = [tuple(s) for s in op["input_shapes"]]
        self.shape = tuple(op["shape"])
        if self.node.inputs:
            self.node.infer_shape(self.input_shapes)        # normalizes axes
        self.layout = Layout.from_json(op["layout"])
        self.input_layout = Layout.from_json(op["input_layout"]) if "input_layout" in op else None
        self.operand_sizes = op.get("operand_sizes")
        # An MT neuron followed by a spike-size node (writer.size_node) sends its spikes
        # in units of u; the size node multiplies them back, exactly.
        unit = op.get("spike_unit")
        self.unit = None if unit is None else torch.tensor(unit["values"], dtype=torch.float32).reshape(unit["shape"])
        self.compile = lambda: compile_node(self.node, self.shape, torch.device("cpu"), "direct")

    def operands(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.operand_sizes is not None:               # ports: operands side by side in one flat vector
            parts = torch.split(x.reshape(x.shape[0], -1), self.operand_sizes, dim=1)
            return [p.reshape(p.shape[0], *s) for p, s in zip(parts, self.input_shapes)]
        if getattr(self.node, "channels_per_value", None):   # PPN: every level channel holds the same current
            value = to_ir(x, self.input_layout, self.shape)
            axis = self.node.axis + 1
            groups = value.unflatten(axis, (self.shape[self.node.axis] // self.node.channels_per_value,
                                            self.node.channels_per_value))
            return [groups.select(axis + 1, 0)]
        return [to_ir(x, self.input_layout, self.input_shapes[0])]

    def forward(self, x, state=None):
        fn, runtime, t = self.compile() + (0,) if state is None else state
        t += 1
        y = fn(self.operands(x), t)
        if self.unit is not None:
            y = y / self.unit
        return from_ir(y, self.layout), (fn, runtime, t)


def _standard(kind: str, node) -> torch.nn.Module:
    """NIR's own semantics for one standard node, on batched tensors."""
    if kind == "Affine":
        return _Function(lambda m, x: F.linear(x, m.w, m.b), w=_tensor(node.weight), b=_tensor(node.bias))
    if kind == "Linear":
        return _Function(lambda m, x: F.linear(x, m.w), w=_tensor(node.weight))
    if kind in ("Conv1d", "Conv2d"):
        n, conv = (1, F.conv1d) if kind == "Conv1d" else (2, F.conv2d)
        st, pd, dl = (_ints(v, n) for v in (node.stride, node.padding, node.dilation))
        groups = int(node.groups)
        return _Function(lambda m, x: conv(x, m.w, m.b, st, pd, dl, groups), w=_tensor(node.weight),
                         b=_tensor(node.bias))
    if kind in ("AvgPool2d", "SumPool2d"):
        k, s, p = (_ints(v, 2) for v in (node.kernel_size, node.stride, node.padding))
        area = 1 if kind == "AvgPool2d" else k[0] * k[1]
        return _Function(lambda m, x: F.avg_pool2d(x, k, s, p, count_include_pad=True) * area)
    if kind == "Flatten":
        # NIR's axes are per sample: a non-negative axis moves by one past the batch axis.
        start, end = (int(d) + 1 if int(d) >= 0 else int(d) for d in (node.start_dim, node.end_dim))
        return _Function(lambda m, x: torch.flatten(x, start, end))
    if kind == "Scale":
        return _Function(lambda m, x: x * m.s, s=_tensor(node.scale))
    if kind in ("Input", "Output"):
        return torch.nn.Identity()
    raise NirImportError(f"NIR {kind} node without ecmt metadata: ecmt's node map runs the nodes ecmt "
                         "writes (standard synaptic nodes, and neurons with the ecmt-nir convention)",
                         hint="map this node with the consumer's own model instead")


def _map(node) -> torch.nn.Module:
    op = _meta(node, "ecmt.op")
    if op is not None and op.get("target"):
        raise NirImportError(f"this file is written for {op['target']} (--nir-target): its MT neurons are "
                             "standard subgraphs that library runs, not ecmt's convention nodes",
                             hint="export without --nir-target for ecmt's node map")
    if op is not None and not op.get("standard"):
        return _ConventionNode(node, op)
    adapter = _meta(node, "ecmt.adapter")
    if adapter is not None and adapter.get("role") == "layout" and type(node).__name__ == "Conv1d":
        return _Relayout(adapter)
    return _standard(type(node).__name__, node)


def torch_node_map() -> dict:
    """{NIR node type: function(node) -> torch module} for ``nirtorch.nir_to_torch``."""
    import nir
    kinds = ("Input", "Output", "Affine", "Linear", "Conv1d", "Conv2d", "AvgPool2d", "SumPool2d", "Flatten",
             "Scale", "IF", "LIF")
    return {getattr(nir, kind): _map for kind in kinds}
