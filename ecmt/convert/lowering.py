"""The state a conversion rule sees: the lowered value (Val), the lowering that
collects emitted IR nodes (Lowering), the batch axis of a pair of results
(batch_axis) and the exception for a use a rule cannot express (Unsupported).

lower.py walks the traced model and calls the rules; ops.py defines the rules.
Both import this module and neither imports the other's internals, so the
rules can be registered where they are defined without an import cycle.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .. import ir


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
