"""Errors a user can act on.  The CLI prints them as one line plus a hint."""
from __future__ import annotations


class EcmtError(Exception):
    """A user-facing error: `str(err)` says what is wrong, `err.hint` what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class GraphError(EcmtError):
    """An intermediate spiking graph is malformed (names the node and field)."""


class GraphFileError(EcmtError):
    """A graph file cannot be read: corrupt, truncated, pickled or of an unknown version."""


class UnsupportedModelError(EcmtError):
    """The converter met operations it cannot express; lists every one of them."""


class DataError(EcmtError):
    """A data set is missing or malformed."""
