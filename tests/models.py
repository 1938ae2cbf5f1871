"""Small ReLU networks shared by the conversion and exporter tests."""
import torch
import torch.nn as nn


def relu_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 10)).eval()
