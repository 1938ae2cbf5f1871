"""Event counts from a real run: an executor observer that counts, per node and
per step, from the actual tensors.

Counted (summed over the batch; report.py divides by the number of samples):

* ``spikes``: non-zero MT outputs; ``levels``: the same by level (-n..-1, 1..n).
* ``sops``: synaptic operations, one per (non-zero spike input, weight) pair:
  every non-zero input times its real fan-out (exact at conv borders, with
  stride, padding and groups); for a product ECM fed by spikes, the non-zero
  pairs of its three spiking products x_t B_{t-1}, A_{t-1} y_t, x_t y_t.
* ``macs``: multiply-accumulates of synaptic layers and products fed by
  analog values (patch embedding, head).
* ``dense``: what the ANN does at the same place in one forward (all inputs
  non-zero): the denominator of firing rates.
* ``neuron_updates`` / ``active_updates``: MT neuron elements updated per step,
  and those that received a non-zero input.
* ``adds``, ``mults``, ``specials``: analog work (costs.py).
* ``state_rw``: state elements read or written (membranes, ECM sums).
* ``paper_sops`` / ``paper_dense``: the ECMT reference's counting, which
  covers every Linear layer (whatever feeds it) and every product ECM, the
  latter with the updated sums A_t, B_t.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ecmt import ir

from .costs import ECM_BOOKKEEPING, FUNCTION_OPS, PRODUCT_BOOKKEEPING

FIELDS = ("spikes", "sops", "macs", "dense", "neuron_updates", "active_updates", "adds", "mults",
          "specials", "state_rw", "paper_sops", "paper_dense")


def nonzero_pairs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of (i, k, j) with x[..., i, k] != 0 and y[..., k, j] != 0."""
    cx = (x != 0).sum(dim=-2, dtype=torch.int64)      # per k, over rows of x
    cy = (y != 0).sum(dim=-1, dtype=torch.int64)      # per k, over columns of y
    return (cx * cy).sum()


def conv_fanout(node: ir.Conv2d, in_shape: tuple[int, ...]) -> torch.Tensor:
    """For each input element, how many (output element, weight) pairs use it:
    the gradient of the sum of a conv with all-one weights."""
    x = torch.ones(1, *in_shape, requires_grad=True)
    with torch.enable_grad():
        out = F.conv2d(x, torch.ones_like(node.weight), None, node.stride, node.padding, node.dilation,
                       node.groups)
        (grad,) = torch.autograd.grad(out.sum(), x)
    return grad[0].round().to(torch.int64)


class Counter:
    """Executor observer.  ``counts[node][field]`` is an int64 tensor [T] of per-step totals."""

    def __init__(self, graph: ir.SpikingGraph, T: int, device=None):
        self.graph, self.T = graph, T
        self.device = torch.device(device or "cpu")
        self.counts = {n.name: {f: torch.zeros(T, dtype=torch.int64, device=self.device) for f in FIELDS}
                       for n in graph}
        self.levels: dict[str, torch.Tensor] = {}
        self.batch = 1
        # Nodes whose inputs never change over time are computed once and reused
        # (as the executor does); they are charged at step 1 only.
        self.static: set[str] = set()
        for n in graph:
            if isinstance(n, (ir.Input, ir.Constant)) or (
                    not isinstance(n, ir.MTNeuron) and n.inputs and all(s in self.static for s in n.inputs)):
                self.static.add(n.name)
        self.fanout: dict[str, torch.Tensor] = {}
        self.sums: dict[str, list] = {}
        for n in graph:
            if isinstance(n, ir.MTNeuron):
                self.levels[n.name] = torch.zeros(T, 2 * n.levels, dtype=torch.int64, device=self.device)
            elif isinstance(n, ir.Conv2d):
                self.fanout[n.name] = conv_fanout(n, graph.shapes[n.inputs[0]]).to(self.device)

    def __call__(self, node: ir.Node, inputs: list[torch.Tensor], out: torch.Tensor, t: int) -> None:
        if isinstance(node, ir.Input):
            self.batch = out.shape[0]
        if t > 1 and node.name in self.static:
            return
        counter = getattr(self, f"_count_{node.KIND}", None)
        if counter is not None:
            counter(node, inputs, out, self.counts[node.name], t - 1)

    def _per_batch(self, x: torch.Tensor) -> int:
        """Constants run with batch 1 but stand for every sample."""
        return self.batch // x.shape[0]

    # -- synaptic layers -----------------------------------------------------------
    def _count_linear(self, node, inputs, out, c, i):
        x = inputs[0]
        rep = self._per_batch(x)
        out_f = node.weight.shape[0]
        nnz = torch.count_nonzero(x) * out_f * rep
        dense = x.numel() * out_f * rep
        if self.graph.spiking[node.inputs[0]]:
            c["sops"][i] += nnz
        else:
            c["macs"][i] += dense
        c["dense"][i] += dense
        c["paper_sops"][i] += nnz
        c["paper_dense"][i] += dense
        if node.bias is not None:
            c["adds"][i] += out.numel() * rep

    def _count_conv2d(self, node, inputs, out, c, i):
        x = inputs[0]
        fan = self.fanout[node.name]
        rep = self._per_batch(x)
        dense = int(fan.sum().item()) * x.shape[0] * rep
        if self.graph.spiking[node.inputs[0]]:
            c["sops"][i] += ((x != 0) * fan).sum(dtype=torch.int64) * rep
        else:
            c["macs"][i] += dense
        c["dense"][i] += dense
        if node.bias is not None:
            c["adds"][i] += out.numel() * rep

    # -- neurons --------------------------------------------------------------------
    def _count_mt_neuron(self, node, inputs, out, c, i):
        nz = out != 0
        c["spikes"][i] += nz.sum(dtype=torch.int64)
        c["neuron_updates"][i] += out.numel()
        c["active_updates"][i] += torch.count_nonzero(inputs[0])
        c["state_rw"][i] += 2 * out.numel()
        th = torch.where(out > 0, node.th_pos.to(out.device),
                         node.th_neg.to(out.device) if node.th_neg is not None else node.th_pos.to(out.device))
        k = torch.log2(out.abs() / th).round().to(torch.int64).clamp(0, node.levels - 1)
        bins = torch.where(out > 0, node.levels + k, node.levels - 1 - k)[nz]
        self.levels[node.name][i] += torch.bincount(bins, minlength=2 * node.levels)

    # -- ECMs -------------------------------------------------------------------------
    def _count_nonlinearity(self, node, inputs, out, c, i):
        n = out.numel() * self._per_batch(out)
        adds, mults, specials = FUNCTION_OPS[node.KIND]
        if isinstance(node, ir.MaxPool2d):
            kh, kw = node.kernel_size
            adds = kh * kw     # compares per output
        ba, bm = ECM_BOOKKEEPING
        c["adds"][i] += (adds + ba) * n
        c["mults"][i] += (mults + bm) * n
        c["specials"][i] += specials * n
        c["state_rw"][i] += 4 * n

    _count_gelu_ecm = _count_softmax_ecm = _count_layernorm_ecm = _count_relu_ecm = \
        _count_maxpool2d_ecm = _count_nonlinearity

    def _count_product_ecm(self, node, inputs, out, c, i):
        x, y = inputs
        if node.transpose_a:
            x = x.transpose(-1, -2)
        if node.transpose_b:
            y = y.transpose(-1, -2)
        m, k, n = x.shape[-2], x.shape[-1], y.shape[-1]
        dense = out.numel() // (m * n) * m * k * n
        spiking = all(self.graph.spiking[s] for s in node.inputs)
        a_prev, b_prev = self.sums.get(node.name, (None, None))
        a_now = x.clone() if a_prev is None else a_prev + x
        b_now = y.clone() if b_prev is None else b_prev + y
        self.sums[node.name] = (a_now, b_now)
        if spiking:
            pairs = nonzero_pairs(x, y)
            if a_prev is not None:
                pairs = pairs + nonzero_pairs(x, b_prev) + nonzero_pairs(a_prev, y)
            c["sops"][i] += pairs
        else:
            c["macs"][i] += dense
        c["dense"][i] += dense
        c["paper_sops"][i] += nonzero_pairs(x, y) + nonzero_pairs(x, b_now) + nonzero_pairs(a_now, y)
        c["paper_dense"][i] += dense
        ba, bm = PRODUCT_BOOKKEEPING
        c["adds"][i] += ba * out.numel()
        c["mults"][i] += bm * out.numel()
        c["state_rw"][i] += 2 * (x.numel() + y.numel()) + 2 * out.numel()

    # -- arithmetic and readout ---------------------------------------------------------
    def _count_add(self, node, inputs, out, c, i):
        c["adds"][i] += (len(inputs) - 1) * out.numel() * self._per_batch(out)

    def _count_scale(self, node, inputs, out, c, i):
        c["mults"][i] += out.numel() * self._per_batch(out)

    def _count_mean(self, node, inputs, out, c, i):
        c["adds"][i] += inputs[0].numel() * self._per_batch(out)
        c["mults"][i] += out.numel() * self._per_batch(out)

    def _count_avgpool2d(self, node, inputs, out, c, i):
        kh, kw = node.kernel_size
        c["adds"][i] += kh * kw * out.numel() * self._per_batch(out)
        c["mults"][i] += out.numel() * self._per_batch(out)

    def _count_output(self, node, inputs, out, c, i):
        c["adds"][i] += out.numel() * self._per_batch(out)

    # -- results -----------------------------------------------------------------------
    def totals(self) -> dict[str, dict[str, list[int]]]:
        """Per node and field, the per-step counts as Python ints."""
        out = {name: {f: v.tolist() for f, v in fields.items()} for name, fields in self.counts.items()}
        for name, lv in self.levels.items():
            out[name]["levels"] = lv.tolist()
        return out
