"""One declared table of node kinds per backend (docs/ir.md, "Node kinds in the backends").

Every backend (executor, ONNX, NIR, Lava, hw_sim) maps each node class to what
it does with it in one `KindTable` at module level, instead of a chain of
isinstance tests.  A kind a backend cannot express is still declared, as
``Refused(reason)``, so that `missing()` can tell "refused on purpose" from
"forgotten", and tests/test_backend_tables.py fails when a backend forgets one.

Lookup is by exact class, then up the class's MRO, but never through another
node kind: MTNeuronPPN (a subclass of MTNeuron) is not handled as an MT neuron
unless a table says so, since a subclass kind rarely means the same thing
everywhere.  Bases that are not kinds (NonlinearityECM) may hold shared entries.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import EcmtError, GraphError
from .node import Node

HINT = "declare the kind in the backend's table (see docs/ir.md, 'Node kinds in the backends')"


@dataclasses.dataclass(frozen=True)
class Refused:
    """A kind the backend declares it cannot express, and why (shown to the user)."""
    reason: str
    hint: str | None = None


def _is_kind(cls: type) -> bool:
    # a class that names its own kind (Node and family bases like NonlinearityECM do not)
    return bool(vars(cls).get("KIND"))


class KindTable:
    """{node class: handler or Refused} for one backend.

    `error(node, message, hint)` builds the exception raised for a refused or
    undeclared kind (default: GraphError naming the backend, node and kind)."""

    def __init__(self, backend: str, entries: Mapping[type, Any],
                 error: Callable[[Node, str, str | None], EcmtError] | None = None):
        self.backend = backend
        self.entries = dict(entries)
        self._error = error or (lambda node, message, hint: GraphError(
            f"{backend}: node {node.name!r} ({node.KIND}): {message}", hint=hint))

    def entry(self, cls: type) -> Any:
        """The handler or Refused declared for `cls`, or None."""
        for base in cls.__mro__:
            if base is not cls and _is_kind(base):
                return None         # another kind: its entry is not this one's
            if base in self.entries:
                return self.entries[base]
        return None

    def __call__(self, node: Node) -> Any:
        """The handler for `node`; raises for a refused or undeclared kind."""
        found = self.entry(type(node))
        if isinstance(found, Refused):
            raise self._error(node, found.reason, found.hint)
        if found is None:
            raise self._error(node, f"kind {node.KIND!r} is not declared in the {self.backend} node-kind table",
                              HINT)
        return found

    def missing(self, kinds: Mapping[str, type] | None = None) -> list[str]:
        """The kinds of `kinds` (default: every registered kind) with no entry."""
        if kinds is None:
            from .graph import NODE_KINDS
            kinds = NODE_KINDS
        return sorted(kind for kind, cls in kinds.items() if self.entry(cls) is None)

    def refused(self) -> dict[str, str]:
        """{kind: reason} of the kinds declared as refused."""
        return {getattr(cls, "KIND", "") or cls.__name__: e.reason
                for cls, e in self.entries.items() if isinstance(e, Refused)}
