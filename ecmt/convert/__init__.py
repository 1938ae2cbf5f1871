"""ANN -> SNN conversion with the ECMT method: lower, simplify, place neurons, calibrate."""
from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

from .. import ir
from ..errors import DataError, EcmtError
from ..runtime import SpikingModel
from .calibrate import calibrate, check_threshold_scale
from .lower import lower
from .passes import place_neurons, simplify

__all__ = ["convert", "calibration_batches", "MULTI_LEVEL"]

# The multi-level operating point (docs/conversion.md, docs/benchmarks/multilevel.md): every
# calibrated threshold divided by 16 (exact in float32), 4 more levels so that the largest
# level stays where the quantile's eighth level was, and up to k = 4 levels sent in one step.
# Within a point of the ANN at t = 1 on the demo ViT, where the paper's neuron needs t = 4.
MULTI_LEVEL = {"threshold_scale": 1 / 16, "levels": 12, "spikes_per_step": 4}


def calibration_batches(calib, batch_size: int = 128) -> list[torch.Tensor]:
    """Normalize `calib` (a tensor, or an iterable of tensors or (x, y) pairs)
    to a list of input batches."""
    out = list(calib.split(batch_size)) if isinstance(calib, torch.Tensor) else []
    for item in [] if isinstance(calib, torch.Tensor) else calib:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise EcmtError(f"calibration batches must be tensors or (x, y) pairs, got {type(x).__name__}")
        out.append(x)
    if not out:
        raise EcmtError("calibration data is empty")
    for i, x in enumerate(out):
        bad = int((~torch.isfinite(x)).sum())
        if bad:      # one NaN moves every threshold it reaches, silently
            raise DataError(f"calibration batch {i + 1} of {len(out)}: {bad} of {x.numel()} values are NaN "
                            "or infinite", hint="clean the calibration data")
    return out


def _keeps_training_modes(fn):
    """convert() traces and calibrates in eval mode (dropout off, batch norm on its
    running statistics); the caller's model gets its own train/eval flags back."""
    @functools.wraps(fn)
    def run(model: torch.nn.Module, *args, **kwargs):
        modes = [(m, m.training) for m in model.modules()]
        try:
            return fn(model, *args, **kwargs)
        finally:
            for m, training in modes:
                m.training = training
    return run


@_keeps_training_modes
def convert(model: torch.nn.Module, calib, *, levels: int = 8, spikes_per_step: int = 1, quantile: float = 0.99,
            threshold_scale: float = 1.0, per_channel: bool = False,
            fixed_thresholds: dict[str, tuple[float, float]] | None = None, spiking: bool = True,
            target_T: int | None = None, energy_budget: float | None = None, energy=None,
            device=None, progress: bool = True) -> SpikingModel:
    """Convert a trained ANN into a spiking model (ECMT).

    model: a trained torch module, converted in eval mode (its own train/eval
        flags are left as they were): a timm transformer (docs/conversion.md lists
        the supported operations) or a ReLU MLP / CNN.  calib: calibration inputs (a tensor, or an iterable of
        batches or (x, y) pairs), never the evaluation split.
    levels: MT levels per sign (2 * levels spike values).  spikes_per_step: how
        many distinct levels an MT neuron may send in one step, as one graded
        value (1..levels; 1, the default, is the paper's neuron; docs/method.md §2).
        quantile: the
        calibration quantile p.  threshold_scale: multiply every calibrated
        threshold by this (> 0; a power of two keeps them exact): 1/16 with
        levels=12 puts 16x finer steps under the same largest level
        (MULTI_LEVEL = {"threshold_scale": 1/16, "levels": 12, "spikes_per_step": 4}
        is the multi-level operating point: ``convert(model, calib, **MULTI_LEVEL)``).
        per_channel: one threshold per channel instead of per tensor.
        fixed_thresholds: {role: (th_pos, th_neg)} overrides for neurons by role
        ("softmax", "gelu", "layernorm", "linear", "product", "relu"); not scaled.
    spiking: False stops before neurons and calibration: the analog graph, in
        which every nonlinearity is an ECM (what sigma-delta hardware runs).
    target_T: after the quantile calibration, search every neuron's threshold
        and levels for the best estimate at this T (convert/search.py), on the
        calibration data only.  energy_budget: with target_T, keep the energy up
        to step target_T, relative to the ANN, within this (> 0), as the `energy`
        model prices it on calibration images (convert/search.py's EnergyModel,
        e.g. hw_sim.EnergyRatio("cmos45-fp32"): full mode on that profile); the
        search then also chooses levels and k per role.
    """
    if not 1 <= int(spikes_per_step) <= int(levels):
        raise EcmtError(f"spikes_per_step must be in 1..levels = {levels}, got {spikes_per_step}",
                        hint="`spikes_per_step` K needs K <= `levels`")
    check_threshold_scale(threshold_scale)
    if energy_budget is not None:       # checked before any work
        from .search import check_budget
        check_budget(target_T, energy_budget, energy)
    batches = calibration_batches(calib)
    model = model.eval()
    nodes, info = lower(model, batches[0])
    graph = ir.SpikingGraph(nodes)           # validates the lowering
    try:
        _check_analog(model, graph, info)
    except EcmtError:
        raise
    except Exception as err:  # noqa: BLE001 - a graph the executor cannot run is our bug, said as such
        raise EcmtError(f"internal error: the lowered graph of {type(model).__name__} cannot run: "
                        f"{type(err).__name__}: {err}", hint="please report this model") from err
    nodes = simplify(list(graph), graph.shapes)
    if not spiking:
        graph = ir.SpikingGraph(nodes, meta={"source": type(model).__name__, "spiking": False})
        return SpikingModel(graph)
    graph = ir.SpikingGraph(place_neurons(nodes, levels=levels, spikes_per_step=spikes_per_step))
    summary = calibrate(graph, batches, quantile=quantile, per_channel=per_channel,
                        fixed=fixed_thresholds, threshold_scale=threshold_scale, device=device, progress=progress)
    graph.meta.update({
        "source": type(model).__name__,
        "calibration": {"method": "quantile", "levels": levels, "spikes_per_step": spikes_per_step, **summary},
    })
    if target_T is not None:
        from .. import memory
        from .search import search
        memory.check(memory.run_bytes(graph, min(256, sum(len(b) for b in batches)), target_T),
                     f"the threshold search at target T = {target_T}", "`target_T`", device)
        graph.meta["calibration"].update(search(graph, batches, target_T, energy_budget=energy_budget,
                                                energy=energy, device=device, progress=progress))
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
