"""Accuracy of the ANN and of its spiking version at every time step.

Under torchrun every rank evaluates its share of the batches and the correct
counts are summed across ranks (ecmt.distributed)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import distributed
from .data import Split


def _bar(split: Split, batch_size: int, desc: str, progress: bool):
    total = -(-len(split) // batch_size)
    return tqdm(distributed.batches(split, batch_size), total=-(-total // distributed.world()), desc=desc,
                unit="batch", disable=not progress or not distributed.is_main(), leave=False)


@torch.no_grad()
def ann_accuracy(model, split: Split, batch_size: int = 256, progress: bool = True, device=None) -> float:
    """Accuracy of `model` (a torch module, or a SpikingModel's analog mode) on `split`."""
    forward = model.analog if hasattr(model, "analog") else model
    if hasattr(model, "eval"):
        model.eval()
    correct = torch.zeros((), dtype=torch.long)
    for x, y in _bar(split, batch_size, "ANN eval", progress):
        if device is not None:
            x = x.to(device)
        correct += (forward(x).argmax(-1).cpu() == y).sum()
    return distributed.all_reduce_sum(correct).item() / len(split)


@torch.no_grad()
def snn_accuracy(spiking, split: Split, T: int, batch_size: int = 256, progress: bool = True,
                 device=None) -> list[float]:
    """Accuracy after every step t = 1..T, from one T-step pass per batch."""
    correct = torch.zeros(T, dtype=torch.long)
    for x, y in _bar(split, batch_size, f"SNN eval (T={T})", progress):
        if device is not None:
            x = x.to(device)
        est = spiking(x, T)                                   # [T, B, classes]
        correct += (est.argmax(-1).cpu() == y.unsqueeze(0)).sum(dim=1)
    return (distributed.all_reduce_sum(correct).double() / len(split)).tolist()
