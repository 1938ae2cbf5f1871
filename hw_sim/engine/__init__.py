"""Hardware models behind one interface (base.HardwareModel): a CMOS accelerator
(cmos.py) and a neuromorphic mesh of chips (mesh/), chosen by the profile's kind."""
from __future__ import annotations

from .base import HardwareModel, Interval, Priced
from .cmos import CmosModel
from .mesh import MappingError, MeshModel, extract, place

MODELS = {"cmos": CmosModel, "neuromorphic": MeshModel}


def model(graph, profile, T: int) -> HardwareModel:
    """The model of `profile`'s kind for `graph` run for T steps (mapped now: a network that
    does not fit is refused here, before any run)."""
    return MODELS[profile.kind](graph, profile, T)


def check_fit(graph, profile) -> None:
    """Raise MappingError (naming the layer, the resource, by how much it is over and what
    would make it fit) where `graph` does not fit `profile`'s hardware; CMOS always fits."""
    if profile.kind == "neuromorphic":
        place(extract(graph, profile), profile)


__all__ = ["CmosModel", "HardwareModel", "Interval", "MODELS", "MappingError", "MeshModel", "Priced", "check_fit",
           "model"]
