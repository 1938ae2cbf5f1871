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
from ecmt.runtime.kernels import fused

from .costs import ECM_BOOKKEEPING, FUNCTION_OPS, PRODUCT_BOOKKEEPING

FIELDS = ("spikes", "sops", "macs", "dense", "neuron_updates", "active_updates", "adds", "mults",
          "specials", "state_rw", "paper_sops", "paper_dense")


def nonzero_pairs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of (i, k, j) with x[..., i, k] != 0 and y[..., k, j] != 0."""
    cx = (x != 0).sum(dim=-2, dtype=torch.int64)      # per k, over rows of x
    cy = (y != 0).sum(dim=-1, dtype=torch.int64)      # per k, over columns of y
    return (cx * cy).sum()


@fused
def level_counts(s: torch.Tensor, x: torch.Tensor, th_pos: torch.Tensor, th_neg: torch.Tensor,
                 levels: int) -> torch.Tensor:
    """Spikes per level, most negative first ([-th_neg 2^(n-1), ..., -th_neg,
    th_pos, ..., th_pos 2^(n-1)]), then the number of non-zero inputs x.
    Spike values are exactly th * 2^k, so equality is exact.  One pass."""
    neg = [(s == -(th_neg * float(2 ** k))).sum() for k in reversed(range(levels))]
    pos = [(s == th_pos * float(2 ** k)).sum() for k in range(levels)]
    return torch.stack(neg + pos + [(x != 0).sum()])


@fused
def product_pairs(x, y, a_prev, b_prev):
    """Non-zero pairs of the spiking form (x B_{t-1} + A_{t-1} y + x y) and of
    the reference's count (x B_t + A_t y + x y), and the updated sums."""
    a_now, b_now = a_prev + x, b_prev + y
    cx, cy = (x != 0).sum(dim=-2), (y != 0).sum(dim=-1)
    ca_prev, cb_prev = (a_prev != 0).sum(dim=-2), (b_prev != 0).sum(dim=-1)
    ca_now, cb_now = (a_now != 0).sum(dim=-2), (b_now != 0).sum(dim=-1)
    xy = (cx * cy).sum()
    full = xy + (cx * cb_prev).sum() + (ca_prev * cy).sum()
    paper = xy + (cx * cb_now).sum() + (ca_now * cy).sum()
    return full, paper, a_now, b_now


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
        self.spike_totals: dict[str, torch.Tensor] = {}    # this step's spike count per MT neuron
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

    def _nonzero(self, node: ir.Node, x: torch.Tensor) -> torch.Tensor:
        """Non-zero elements of node's input: the producing MT neuron's spike
        count when the input is its output reshaped or permuted, else counted."""
        src = self.graph[node.inputs[0]]
        while isinstance(src, (ir.Reshape, ir.Permute)):
            src = self.graph[src.inputs[0]]
        if isinstance(src, ir.MTNeuron) and src.name in self.spike_totals:
            return self.spike_totals[src.name]
        return torch.count_nonzero(x)

    def _per_batch(self, x: torch.Tensor) -> int:
        """Constants run with batch 1 but stand for every sample."""
        return self.batch // x.shape[0]

    # -- synaptic layers -----------------------------------------------------------
    def _count_linear(self, node, inputs, out, c, i):
        x = inputs[0]
        rep = self._per_batch(x)
        out_f = node.weight.shape[0]
        nnz = self._nonzero(node, x) * out_f * rep
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
        th_pos = node.th_pos.to(out.device)
        th_neg = th_pos if node.th_neg is None else node.th_neg.to(out.device)
        counts = level_counts(out, inputs[0].contiguous(), th_pos, th_neg, node.levels)
        per_level, active = counts[:-1], counts[-1]
        self.levels[node.name][i] += per_level
        spikes = per_level.sum()
        self.spike_totals[node.name] = spikes
        c["spikes"][i] += spikes
        c["neuron_updates"][i] += out.numel()
        c["active_updates"][i] += active
        c["state_rw"][i] += 2 * out.numel()

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
        if i == 0:           # a new run: the running operand sums start at zero
            self.sums[node.name] = (torch.zeros_like(x), torch.zeros_like(y))
        full, paper, a_now, b_now = product_pairs(x.contiguous(), y.contiguous(), *self.sums[node.name])
        self.sums[node.name] = (a_now, b_now)
        if spiking:
            c["sops"][i] += full
        else:
            c["macs"][i] += dense
        c["dense"][i] += dense
        c["paper_sops"][i] += paper
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
