"""Expectation compensation modules (docs/method.md §3): the state kept
between steps.  The per-step arithmetic lives in kernels.py."""
from __future__ import annotations

import torch

from .kernels import ECM_KERNELS, product_update, product_update_incremental


class NonlinearityECMState:
    """y_t = t f(S_t / t) - (t-1) f(S_{t-1} / (t-1)).  Keeps S_t and the running
    output t f(S_t / t), so f runs once per step.  `function` names f in
    kernels.ECM_KERNELS; `params` are its extra arguments."""

    def __init__(self, function: str, *params):
        (self.f, self.update), self.params = ECM_KERNELS[function], params
        self.reset()

    def reset(self):
        self.sum = self.out_sum = None

    def analog(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): what the ECM computes in the ANN (no state kept)."""
        return self.f(x, *self.params)

    def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        if t == 1:
            self.sum = x.clone(memory_format=torch.contiguous_format)
            self.out_sum = self.f(x, *self.params).contiguous()
            return self.out_sum.clone()
        y, self.sum, self.out_sum = self.update(self.sum, x.contiguous(), self.out_sum, torch.tensor(float(t)),
                                                *self.params)
        return y


class ProductECMState:
    """Running product of two streams, scale * A_t @ B_t / t, emitted as increments.

    ``form="direct"`` multiplies the running sums once per step.
    ``form="incremental"`` is the spiking form of the spec: it keeps
    P_t = A_t @ B_t and adds x_t @ B_{t-1} + A_{t-1} @ y_t + x_t @ y_t, where
    x_t, y_t are the spike increments; products with spikes are accumulates.
    Both give the same numbers up to rounding.
    """

    def __init__(self, transpose_a: bool, transpose_b: bool, scale: float, form: str = "direct"):
        if form not in ("direct", "incremental"):
            raise ValueError(f"product form must be 'direct' or 'incremental', got {form!r}")
        self.ta, self.tb, self.scale, self.form = transpose_a, transpose_b, float(scale), form
        self.reset()

    def reset(self):
        self.a = self.b = self.prod = self.out_sum = self.x = self.y = None
        self.counted = None     # count mode (runtime/program.py): x, a, y, b's counts along k, for hw_sim

    def analog(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """scale x @ y: what the product computes in the ANN (no state kept)."""
        x = x.transpose(-1, -2) if self.ta else x
        y = y.transpose(-1, -2) if self.tb else y
        return torch.matmul(x, y) * self.scale

    def step(self, x: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
        if self.ta:
            x = x.transpose(-1, -2)
        if self.tb:
            y = y.transpose(-1, -2)
        x, y = x.contiguous(), y.contiguous()   # one compiled kernel for every layout
        self.x, self.y = x, y                   # this step's operand increments, as multiplied (hw_sim reads them)
        if t == 1:
            self.a = x.clone(memory_format=torch.contiguous_format)
            self.b = y.clone(memory_format=torch.contiguous_format)
            self.prod = torch.matmul(x, y)
            self.out_sum = self.prod * self.scale
            return self.out_sum.clone()
        scale_over_t = torch.tensor(self.scale / t)
        if self.form == "direct":
            z, self.a, self.b, self.out_sum = product_update(self.a, self.b, x, y, self.out_sum, scale_over_t)
        else:
            z, self.a, self.b, self.prod, self.out_sum = product_update_incremental(
                self.a, self.b, self.prod, x, y, self.out_sum, scale_over_t)
        return z
