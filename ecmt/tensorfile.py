"""Reading a user's tensor file without running code from it: safetensors, or a
torch file read with ``weights_only=True`` (a pickle of tensors and containers only).
Data files (ecmt.data) and checkpoints (ecmt.zoo) share it."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import EcmtError


def read_tensors(path: str | os.PathLike, what: str, error: type[EcmtError] = EcmtError, hint: str | None = None):
    """The file's content (a dict of tensors for safetensors; whatever containers of
    tensors a torch file holds), or `error` naming the path and `what` it should be."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any decoding failure is the file's fault
            raise error(f"{path}: cannot read {what} as safetensors ({err})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise error(f"{path}: cannot read {what} safely ({type(err).__name__}: {err})", hint=hint) from None
