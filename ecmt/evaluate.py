"""Accuracy of the ANN and of its spiking version at every time step."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .data import Split


@torch.no_grad()
def ann_accuracy(model: torch.nn.Module, split: Split, batch_size: int = 256, progress: bool = True) -> float:
    model.eval()
    correct = 0
    for x, y in tqdm(split.batches(batch_size), total=-(-len(split) // batch_size), desc="ANN eval",
                     unit="batch", disable=not progress, leave=False):
        correct += (model(x).argmax(-1) == y).sum().item()
    return correct / len(split)


@torch.no_grad()
def snn_accuracy(spiking, split: Split, T: int, batch_size: int = 256, progress: bool = True,
                 device=None) -> list[float]:
    """Accuracy after every step t = 1..T, from one T-step pass per batch."""
    correct = torch.zeros(T, dtype=torch.long)
    for x, y in tqdm(split.batches(batch_size), total=-(-len(split) // batch_size),
                     desc=f"SNN eval (T={T})", unit="batch", disable=not progress, leave=False):
        if device is not None:
            x = x.to(device)
        est = spiking(x, T)                                   # [T, B, classes]
        correct += (est.argmax(-1).cpu() == y.unsqueeze(0)).sum(dim=1)
    return (correct.double() / len(split)).tolist()
