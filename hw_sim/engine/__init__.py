"""Hardware models behind one interface (base.HardwareModel): a CMOS accelerator
(cmos.py) and a neuromorphic mesh of chips (mesh/), chosen by the profile's kind."""
from __future__ import annotations

from .base import HardwareModel, Interval, Priced
from .cmos import CmosModel
from .mesh import MeshModel

MODELS = {"cmos": CmosModel, "neuromorphic": MeshModel}


def model(graph, profile, T: int) -> HardwareModel:
    """The model of `profile`'s kind for `graph` run for T steps (mapped now: a network that
    does not fit is refused here, before any run)."""
    return MODELS[profile.kind](graph, profile, T)


__all__ = ["CmosModel", "HardwareModel", "Interval", "MODELS", "MeshModel", "Priced", "model"]
