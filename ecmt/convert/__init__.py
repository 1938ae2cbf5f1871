"""ANN -> SNN conversion with the ECMT method: lower, simplify, place neurons, calibrate."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from .. import ir
from ..errors import EcmtError
from ..runtime import SpikingModel
from .calibrate import calibrate
from .lower import lower
from .passes import place_neurons, simplify

__all__ = ["convert", "calibration_batches"]


def calibration_batches(calib, batch_size: int = 128) -> list[torch.Tensor]:
    """Normalize `calib` (a tensor, or an iterable of tensors or (x, y) pairs)
    to a list of input batches."""
    if isinstance(calib, torch.Tensor):
        return list(calib.split(batch_size))
    out = []
    for item in calib:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise EcmtError(f"calibration batches must be tensors or (x, y) pairs, got {type(x).__name__}")
        out.append(x)
    if not out:
        raise EcmtError("calibration data is empty")
    return out


def convert(model: torch.nn.Module, calib, *, levels: int = 8, quantile: float = 0.99,
            per_channel: bool = False, fixed_thresholds: dict[str, tuple[float, float]] | None = None,
            spiking: bool = True, target_T: int | None = None, device=None,
            progress: bool = True) -> SpikingModel:
    """Convert a trained ANN into a spiking model (ECMT).

    model: a torch module in eval mode (timm ViT / DeiT / EVA with GELU MLP, or a
        ReLU MLP / CNN).  calib: calibration inputs (a tensor, or an iterable of
        batches or (x, y) pairs), never the evaluation split.
    levels: MT levels per sign (2 * levels spike values).  quantile: the
        calibration quantile p.  per_channel: one threshold per channel instead
        of per tensor.  fixed_thresholds: {role: (th_pos, th_neg)} overrides
        for neurons by role ("softmax", "gelu", "layernorm", "linear", "product", "relu").
    spiking: False stops before neurons and calibration: the analog graph, in
        which every nonlinearity is an ECM (what sigma-delta hardware runs).
    target_T: after the quantile calibration, search every neuron's threshold
        and levels for the best estimate at this T (convert/search.py), on the
        calibration data only.
    """
    batches = calibration_batches(calib)
    model = model.eval()
    nodes, info = lower(model, batches[0])
    graph = ir.SpikingGraph(nodes)           # validates the lowering
    _check_analog(model, graph, info)
    nodes = simplify(list(graph), graph.shapes)
    if not spiking:
        graph = ir.SpikingGraph(nodes, meta={"source": type(model).__name__, "spiking": False})
        return SpikingModel(graph)
    graph = ir.SpikingGraph(place_neurons(nodes, levels=levels))
    summary = calibrate(graph, batches, quantile=quantile, per_channel=per_channel,
                        fixed=fixed_thresholds, device=device, progress=progress)
    graph.meta.update({
        "source": type(model).__name__,
        "calibration": {"method": "quantile", "levels": levels, **summary},
    })
    if target_T is not None:
        from .search import search
        graph.meta["calibration"].update(search(graph, batches, target_T, device=device, progress=progress))
    return SpikingModel(graph)


def _check_analog(model, graph: ir.SpikingGraph, info: dict) -> None:
    """The lowered graph must compute what the model computes."""
    ref = info["reference_output"]
    got = SpikingModel(graph).analog(info["reference_input"])
    err = (got - ref).abs().max().item()
    scale = ref.abs().max().item() or 1.0
    if err > 1e-4 * scale + 1e-6:
        raise EcmtError(f"internal error: the lowered graph of {type(model).__name__} differs from "
                        f"the model by {err:.3g} (output scale {scale:.3g})",
                        hint="please report this model; the conversion is not trustworthy")
