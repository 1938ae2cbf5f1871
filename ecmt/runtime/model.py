"""SpikingModel: the user-facing module around a SpikingGraph."""
from __future__ import annotations

import torch

from ..ir import SpikingGraph, load_graph, save_graph
from .executor import GraphExecutor, Observer


class SpikingModel(torch.nn.Module):
    """``model(x, T)`` -> [T, B, ...]: the running estimate of the ANN output
    after each step t = 1..T (running sum / t), from one T-step pass.

    The executor is compiled for the device of the input on first use.
    ``product_form`` picks how product ECMs compute ("direct": one product of
    the running sums per step; "incremental": the spiking form of the spec).
    ``capture=True`` (the default) runs each step as the fast step (fused
    native kernels on the CPU, a CUDA graph on CUDA; runtime/program.py);
    ``capture=False`` runs the reference executor node by node.
    """

    def __init__(self, graph: SpikingGraph, product_form: str = "direct", capture: bool = True):
        super().__init__()
        graph.validate()
        self.graph = graph
        self.product_form = product_form
        self.capture = capture
        self._executors: dict[torch.device, GraphExecutor] = {}

    @classmethod
    def from_graph(cls, graph: SpikingGraph, **kwargs) -> "SpikingModel":
        return cls(graph, **kwargs)

    @classmethod
    def load(cls, path, **kwargs) -> "SpikingModel":
        return cls(load_graph(path), **kwargs)

    def save(self, path) -> None:
        save_graph(self.graph, path)

    def executor(self, device=None) -> GraphExecutor:
        device = torch.device(device or "cpu")
        if device not in self._executors:
            self._executors[device] = GraphExecutor(self.graph, device, self.product_form, capture=self.capture)
        return self._executors[device]

    def forward(self, x: torch.Tensor, T: int, observer: Observer | None = None) -> torch.Tensor:
        return self.executor(x.device).run(x, T, observer)

    def analog(self, x: torch.Tensor, observer: Observer | None = None) -> torch.Tensor:
        """The source ANN's output, computed from the graph (MT neurons as identity / ReLU)."""
        return self.executor(x.device).run_analog(x, observer)
