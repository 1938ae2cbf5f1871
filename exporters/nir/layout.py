"""How a NIR tensor holds an ecmt value.

NIR types every edge with a per-sample shape, and its synaptic nodes want
their own layouts (a token-wise Conv1d wants channels first, (features,
tokens)).  A ``Layout`` says how the NIR tensor relates to the IR value it
carries:

    nir = ir.permute(perm).reshape(shape)        (perm None: no permutation)

The writer tracks one per NIR node; convention nodes and adapters record it
in their metadata so that a reader (``torch_map``) can go back to the IR
value.  Batched tensors keep the batch axis first.
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Layout:
    shape: tuple[int, ...]
    perm: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.perm is not None:
            perm = tuple(int(p) for p in self.perm)
            object.__setattr__(self, "perm", None if perm == tuple(range(len(perm))) else perm)

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "perm": None if self.perm is None else list(self.perm)}

    @classmethod
    def from_json(cls, d: dict) -> "Layout":
        return cls(tuple(d["shape"]), None if d.get("perm") is None else tuple(d["perm"]))


def identity(shape) -> Layout:
    return Layout(tuple(shape))


def channels_first(shape) -> Layout:
    """[tokens, features] held as (features, tokens), as NIR's Conv1d types it."""
    a, b = shape
    return Layout((b, a), (1, 0))


def carrier_layout(shape) -> Layout:
    """The layout of a value computed by a Conv1d carrier (always 2-d in NIR)."""
    if len(shape) == 2:
        return channels_first(shape)
    return Layout((1, math.prod(shape)))


def flatten_dims(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int] | None:
    """Negative (start, end) if b is a with the axes start..end merged, else None.

    Negative axes count from the end, so NIR's per-sample type inference and a
    batched torch.flatten (the consumers' reading) agree on them."""
    if len(b) >= len(a):
        return None
    for start in range(len(a)):
        end = start + len(a) - len(b)
        if a[:start] == b[:start] and a[end + 1:] == b[start + 1:] and math.prod(a[start:end + 1]) == b[start]:
            return start - len(a), end - len(a)
    return None


def can_adapt(have: Layout, want: Layout) -> bool:
    """Whether the writer's adapters turn `have` into `want` (NIR cannot add axes)."""
    if have == want:
        return True
    if math.prod(have.shape) != math.prod(want.shape):
        return False
    if have.perm == want.perm and flatten_dims(have.shape, want.shape) is not None:
        return True
    if len(want.shape) > 2:
        return False
    if len(have.shape) == 3:
        return can_adapt(Layout((have.shape[0], have.shape[1] * have.shape[2]), have.perm), want)
    return len(have.shape) == 2


# -- torch side (the node map) --------------------------------------------------------
def to_ir(x, layout: Layout, ir_shape: tuple[int, ...]):
    """Batched NIR tensor [B, *layout.shape] -> IR value [B, *ir_shape]."""
    batch = x.shape[0]
    if layout.perm is None:
        return x.reshape(batch, *ir_shape)
    permuted = [ir_shape[p] for p in layout.perm]
    inverse = [layout.perm.index(i) for i in range(len(ir_shape))]
    return x.reshape(batch, *permuted).permute(0, *(i + 1 for i in inverse))


def from_ir(y, layout: Layout):
    """IR value [B, *ir_shape] -> batched NIR tensor [B, *layout.shape]."""
    if layout.perm is not None:
        y = y.permute(0, *(p + 1 for p in layout.perm))
    return y.reshape(y.shape[0], *layout.shape)
