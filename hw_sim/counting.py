"""Event counts from a real run: an executor observer that counts, per node and
per step, from the actual tensors.

Counted (summed over the batch; report.py divides by the number of samples):

* ``spikes``: non-zero MT outputs (graded events); ``levels``: the levels
  fired, by level (-n..-1, 1..n); ``level_spikes``: their sum, the binary
  events.  A neuron with spikes_per_step k > 1 fires up to k levels in one
  spike (their sum); with k = 1 a spike is one level and the two coincide.
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
* ``level_sops``: ``sops`` with each spike input counted once per level it
  carries (a binary-spike chip's synaptic events; a CMOS adder's shifted adds):
  equal to ``sops`` where every feeding neuron has k = 1.

How, cheaply: work that depends only on shapes (dense work, neuron updates,
analog ops, state traffic) is computed once per node from the graph and
multiplied by the number of samples.  What depends on the data is counted
from the run: each MT neuron's kernel writes a one-byte event code per element
(MTState.record; two bytes for k > 1), and one histogram of it gives the spikes by level and the
active updates (for k = 1 the fast step's kernels count, per sample, the elements of each level
and the active updates themselves: MTState.counts); a linear layer fed by an MT neuron (through
reshapes) gets its synaptic operations from that neuron's spike count; products count non-zero
pairs from their operands' non-zero counts along each axis (one native pass, or, for the running
operands the fast step updates, counted in that update: native.add_count), convolutions
from a fan-out weighted sum.

Per sample, the counts that depend on the data (spikes, active updates, SOPs,
paper SOPs) are also kept as totals over the T steps (``Counter.per_sample``),
for the reports' 95% intervals over samples: every other count is the same for
every sample.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ecmt import ir
from ecmt.errors import GraphError
from ecmt.ir import analysis
from ecmt.ir.dispatch import KindTable
from ecmt.memory import run_bytes
from ecmt.runtime import GraphExecutor, native

from .costs import ECM_BOOKKEEPING, PRODUCT_BOOKKEEPING, forward_work
from .histogram import histogram, mt_counts

# The counts that depend on the data, kept per sample.
SAMPLE_FIELDS = ("spikes", "active_updates", "sops", "paper_sops", "level_spikes", "level_sops")
FIELDS = ("spikes", "sops", "macs", "dense", "neuron_updates", "active_updates", "adds", "mults",
          "specials", "state_rw", "paper_sops", "paper_dense", "level_spikes", "level_sops")
# The per-sample totals kept per node: MT neurons, and nodes whose SOPs are measured.
MT_SAMPLE = ("spikes", "active_updates", "level_spikes")
SOP_SAMPLE = ("sops", "paper_sops", "level_sops")


def energy_bytes(graph: ir.SpikingGraph, batch: int, T: int) -> int:
    """Bytes of hw_sim.simulate, for ecmt.memory.check: the run, plus the per-step
    counts it keeps for every node and counted quantity (MT level histograms as
    int64 tensors, per sample for the batch running (Counter.pending), then Python lists
    for the report at about 32 bytes an entry)."""
    histograms = sum(2 * n.levels + 2 for n in graph.of_kind(ir.MTNeuron))
    return run_bytes(graph, batch, T) + T * (8 * (batch + 1) * histograms + 32 * len(FIELDS) * len(graph))


# The counting kernels run eagerly (no compilation wait on the first count); a product's pairs
# are counted by the fast step's native kernels where they can (native.product_counts), else by
# product_pairs below.
def count_nonzero(x: torch.Tensor) -> torch.Tensor:
    """Non-zero elements per sample (dimension 0)."""
    return torch.count_nonzero(x.reshape(x.shape[0], -1), dim=1)


def weighted_nonzero(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per sample, the sum of `weight` (int64, broadcast over the batch) where x is non-zero."""
    return torch.where(x != 0, weight, 0).flatten(1).sum(1)


def _along(z: torch.Tensor, dim: int, th: tuple | None = None) -> torch.Tensor:
    """z's non-zero elements counted along dim (or, with an MT neuron's thresholds th, the
    levels they carry), as int64."""
    return (z != 0).sum(dim=dim) if th is None else fired_levels(z, *th, 32).to(torch.int64).sum(dim=dim)


def product_pairs(x, y, a_now, b_now, ca_prev, cb_prev):
    """Non-zero pairs of the spiking form (x B_{t-1} + A_{t-1} y + x y) and of
    the reference's count (x B_t + A_t y + x y), per sample as a [batch, 2] int64 tensor, from
    the increments x, y and the updated sums A_t, B_t (all as multiplied); with the non-zero
    counts of A_t's columns and B_t's rows, the next step's ca_prev, cb_prev (what
    native.product_counts computes in one pass)."""
    cx, cy, ca, cb = _along(x, -2), _along(y, -1), _along(a_now, -2), _along(b_now, -1)
    per_sample = lambda z: z.flatten(1).sum(1)
    xy = per_sample(cx * cy)
    full = xy + per_sample(cx * cb_prev) + per_sample(ca_prev * cy)
    paper = xy + per_sample(cx * cb) + per_sample(ca * cy)
    return torch.stack([full, paper], dim=1), ca, cb


def fired_levels(x: torch.Tensor, th_pos: torch.Tensor, th_neg: torch.Tensor | None, levels: int) -> torch.Tensor:
    """Per element of a spike tensor x of an MT neuron (thresholds broadcast against x),
    how many levels its spike carries: the binary digits of m = |x| / th (x = sign th m;
    rounding makes m exact, x being a sum of th 2^j)."""
    th = th_pos if th_neg is None else torch.where(x >= 0, th_pos, th_neg)
    m = torch.round(x.abs() / th).to(torch.int64)
    count = torch.zeros_like(m)
    for j in range(levels):
        count += (m >> j) & 1
    return count.to(x.dtype)


def weighted_sum(w: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per sample, the sum of w * weight (weight broadcast over the batch), as int64."""
    return (w.to(torch.int64) * weight).flatten(1).sum(1)


def product_level_pairs(wx, wy, ca_prev, cb_prev):
    """product_pairs' spiking count with each spike input weighted by its levels: wx, wy are
    the levels carried along x's columns and y's rows (the non-zero counts for an operand of
    k = 1 spikes), as int64; a pair of two spikes counts their product."""
    per_sample = lambda z: z.flatten(1).sum(1)
    return per_sample(wx * wy) + per_sample(wx * cb_prev) + per_sample(ca_prev * wy)


def level_tables(levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a k > 1 neuron's signed m = -(2^n - 1)..2^n - 1 (its event code without the active
    flag): the levels fired as [2^(n+1) - 1, 2n] (columns -n..-1, 1..n, as ``levels``) and their count."""
    span = 2 ** levels - 1
    m = torch.arange(-span, span + 1)
    bits = (m.abs().unsqueeze(1) >> torch.arange(levels)) & 1                 # [M, n]: level j + 1 fired
    neg, pos = bits * (m < 0).unsqueeze(1), bits * (m > 0).unsqueeze(1)
    table = torch.cat([neg.flip(1), pos], dim=1).to(torch.int64)
    return table, table.sum(1)


def conv_fanout(node: ir.Conv2d, in_shape: tuple[int, ...]) -> torch.Tensor:
    """For each input element, how many (output element, weight) pairs use it:
    the gradient of the sum of a conv with all-one weights."""
    x = torch.ones(1, *in_shape, requires_grad=True)
    with torch.enable_grad():
        out = F.conv2d(x, torch.ones_like(node.weight), None, node.stride, node.padding, node.dilation,
                       node.groups)
        (grad,) = torch.autograd.grad(out.sum(), x)
    return grad[0].round().to(torch.int64)


def shape_work(graph: ir.SpikingGraph, node: ir.Node) -> dict[str, int]:
    """The counts of one step of `node` for one sample that follow from shapes
    alone (whatever the data): the ANN's work at the node (costs.forward_work), split
    into dense work fed by spikes and analog MACs, plus what the spiking run adds:
    ECM bookkeeping, neuron updates, state traffic, the output's running sum."""
    work = KINDS(node).work
    out = math.prod(graph.shapes[node.name])
    f = forward_work(graph, node)
    spiking_in = bool(node.inputs) and all(graph.spiking[s] for s in node.inputs)
    w = work(graph, node, f, out, spiking_in)
    return {k: v for k, v in w.items() if v}


# -- the shape-determined counts of one node kind: (graph, node, forward work, output size,
# fed by spikes only) -> counts
def _dense(dense: int, f: dict, spiking_in: bool) -> dict[str, int]:
    return dict(dense=dense, macs=0 if spiking_in else dense, adds=f["adds"])


def _linear_work(graph, node, f, out, spiking_in):
    return {**_dense(f["macs"], f, spiking_in), "paper_dense": f["macs"]}


def _conv2d_work(graph, node, f, out, spiking_in):
    # a convolution fed by spikes reaches only real inputs: exact at the borders (and the
    # paper counts no convolution: no paper_dense)
    return _dense(int(conv_fanout(node, graph.shapes[node.inputs[0]]).sum()), f, spiking_in)


def _product_work(graph, node, f, out, spiking_in):
    ba, bm = PRODUCT_BOOKKEEPING
    return {**_linear_work(graph, node, f, out, spiking_in), "adds": ba * out, "mults": bm * out,
            "state_rw": 2 * sum(math.prod(graph.shapes[i]) for i in node.inputs) + 2 * out}


def _neuron_work(graph, node, f, out, spiking_in):
    return dict(neuron_updates=out, state_rw=2 * out)


def _ecm_work(graph, node, f, out, spiking_in):
    ba, bm = ECM_BOOKKEEPING
    return dict(adds=f["adds"] + ba * out, mults=f["mults"] + bm * out, specials=f["specials"], state_rw=4 * out)


def _output_work(graph, node, f, out, spiking_in):
    return dict(adds=out)                   # the running sum


def _forward_work(graph, node, f, out, spiking_in):
    return dict(f)                          # the ANN's own work, once per step


class Counter:
    """Counts the events of runs of `executor` (made with record_levels=True):
    pass it as the observer of ``executor.run``, for any number of batches.
    ``result()`` gives the per-step totals as tensors.

    It reads an MT neuron's events from its state (``counts``, the per-sample histogram
    the fast step's kernels count, else ``code``), never the neuron's input, and no ECM's
    output, and keeps none of the tensors it is given: so the fast step may keep its chains
    shared while it counts and hand it its buffers (``counts_in_kernels``, runtime/program.py)."""
    counts_in_kernels = True

    def __init__(self, executor: GraphExecutor, T: int):
        if not executor.record_levels:
            raise ValueError("hw_sim.Counter needs an executor made with GraphExecutor(..., record_levels=True)")
        graph = self.graph = executor.graph
        self.executor, self.T, self.device = executor, T, executor.device
        self.samples = 0
        # Nodes whose inputs never change are computed at step 1 only (as the executor does).
        self.static = {step.node.name for step in executor.steps if step.static}
        self.fixed = {n.name: shape_work(graph, n) for n in graph}
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.int64, device=self.device)
        # Per MT neuron and step: how many elements fired each level -n..n (k = 1), or each signed
        # m = -(2^n - 1)..2^n - 1 (k > 1: the levels fired are m's binary digits), then how many
        # updates were active (their input non-zero).
        self.multi = {n.name for n in graph.of_kind(ir.MTNeuron) if n.spikes_per_step > 1}
        self.histograms = {n.name: zeros(T, (2 ** (n.levels + 1) - 1 if n.name in self.multi else 2 * n.levels + 1) + 1)
                           for n in graph.of_kind(ir.MTNeuron)}
        # Nodes whose SOPs are counted from the data (their per-step totals: the sum of the batches'
        # per-sample counts, or per_sample for nodes computed from constants).
        self.measured: set[str] = set()
        self.sources: dict[str, str] = {}       # linear layer -> the MT neuron its spike count comes from
        self.fanout: dict[str, torch.Tensor] = {}
        self.previous: dict[str, tuple] = {}    # product ECM -> last step's (ca, cb), int64
        # Nodes computed from constants only run with batch 1 but stand for every
        # sample: their data-dependent counts are kept per sample, once.
        self.constant = analysis.constant_nodes(graph)
        self.per_sample: dict[str, torch.Tensor] = {}
        # Per node computed from the data, per batch: [batch, T, 3] counts per step of
        # MT_SAMPLE for MT neurons, SOP_SAMPLE for measured nodes.
        self.batches: list[dict[str, torch.Tensor]] = []
        # An MT neuron with k = 1's per-sample counts (as its histograms') of each step of the batch
        # running, [T, batch, 2n + 2], reduced once the batch is done (_finish): one copy per step, not a
        # dozen small reductions.
        self.pending: dict[str, torch.Tensor] = {}
        self.unfinished = False
        for n in graph:
            src = analysis.spike_source(graph, n.inputs[0]) if n.inputs else None
            if isinstance(n, ir.Linear) and src is not None and src.keeps_all:
                self.sources[n.name] = src.neuron.name
            elif isinstance(n, (ir.Linear, ir.ProductECM)) or (
                    isinstance(n, ir.Conv2d) and graph.spiking[n.inputs[0]]):
                self.measured.add(n.name)
            if isinstance(n, ir.Conv2d) and graph.spiking[n.inputs[0]]:
                self.fanout[n.name] = conv_fanout(n, graph.shapes[n.inputs[0]]).to(self.device)
        # Convolutions and products fed by k > 1 spikes weigh each input by its levels (level_sops),
        # read from the spike values: input i of node -> the MT neuron whose spikes they are.
        self.leveled: dict[str, dict[int, ir.MTNeuron]] = {}
        for name in self.measured:
            n = graph[name]
            if isinstance(n, ir.Linear):
                continue
            for i, s in enumerate(n.inputs):
                src = analysis.spike_source(graph, s)
                mt = src.neuron if src is not None else None
                if mt is None or mt.name not in self.multi or isinstance(mt, ir.MTNeuronPPN):
                    continue
                scalar = mt.th_pos.numel() == 1 and (mt.th_neg is None or mt.th_neg.numel() == 1)
                if not scalar and (s != mt.name or isinstance(n, ir.ProductECM)):
                    # per-channel thresholds align with the neuron's own layout only
                    raise GraphError(
                        f"node {name!r} ({n.KIND}): input {s!r} carries spikes of {mt.name!r} (spikes_per_step "
                        f"{mt.spikes_per_step}) with per-channel thresholds: hw_sim reads a spike's levels "
                        "against thresholds in the neuron's own layout, i.e. only in a convolution fed by it "
                        "directly", hint="convert with per-tensor thresholds to price this graph")
                self.leveled.setdefault(name, {})[i] = mt

    def __call__(self, node: ir.Node, inputs: list[torch.Tensor], out: torch.Tensor, t: int) -> None:
        if t > 1 and node.name in self.static:
            return
        measure = KINDS(node).measure
        if measure is not None:
            measure(self, node, inputs, out, t - 1)

    # -- what each kind measures from the data at step i + 1 (KINDS) ------------------------
    def _new_run(self, node: ir.Input, inputs, out: torch.Tensor, i: int) -> None:
        if i == 0:
            self._finish()
            self.samples += out.shape[0]
            self.previous.clear()               # a new run: the products' sums start at zero
            self.batches.append({})
            self.unfinished = True
            for per in self.pending.values():
                per.zero_()

    def _finish(self) -> None:
        """The batch that ran last: its MT neurons' pending histograms into the per-step
        histograms and the per-sample counts (in graph order, as the nodes ran)."""
        if not self.unfinished:
            return
        self.unfinished = False
        batch = self.batches[-1]
        for name, per in self.pending.items():
            n = self.graph[name].levels
            self.histograms[name].add_(per.sum(1))           # per: [T, batch, level -n..n, active]
            spikes = per[..., :-1].sum(2) - per[..., n]
            batch[name] = torch.stack([spikes, per[..., -1], spikes], 2).transpose(0, 1)
        self.batches[-1] = {n.name: batch[n.name] for n in self.graph if n.name in batch}

    def _measure_neuron(self, node: ir.MTNeuron, inputs, out: torch.Tensor, i: int) -> None:
        hist = self.histograms[node.name][i]
        state = self.executor.state(node.name)
        code, counts, values = state.code, state.counts, hist.numel() - 1
        if node.name in self.constant:
            hist.zero_()                    # the same every run: kept per sample
        if node.name in self.multi:
            # int16 codes over (input zero / non-zero, sign, m): one pass gives their histogram and,
            # per sample, (spikes, active updates, levels fired)
            codes = torch.zeros(2, values, dtype=torch.int64, device=self.device)
            per_row = mt_counts(code, node.levels, codes, rows=1 if node.name in self.constant else out.shape[0])
            hist[:-1] += codes.sum(0)
            hist[-1] += codes[1].sum()
            if node.name not in self.constant:
                self._slot(node.name, out.shape[0])[:, i] = per_row
            return
        if node.name in self.constant:
            hist.add_(counts.view(-1) if counts is not None else self._code_counts(code, values, 1).view(-1))
            return
        # per sample [batch, level -n..n, active], reduced by _finish
        rows = out.shape[0]
        per = self.pending.get(node.name)
        if per is None or per.shape[1] != rows:
            per = self.pending[node.name] = torch.zeros(self.T, rows, values + 1, dtype=torch.int64,
                                                        device=self.device)
        per[i].copy_(counts if counts is not None else self._code_counts(code, values, rows))

    def _code_counts(self, code: torch.Tensor, values: int, rows: int) -> torch.Tensor:
        """From k = 1 event codes (kernels.mt_update_coded: level + n, plus 2n + 1 where the input
        was non-zero), per sample [rows, level -n..n, active]: what the fast step's kernels count
        (MTState.counts)."""
        codes = histogram(code, 2 * values, rows=rows).view(rows, 2, values)
        return torch.cat([codes.sum(1), codes[:, 1].sum(1, keepdim=True)], dim=1)

    def _measure_product(self, node: ir.ProductECM, inputs, out, i: int) -> None:
        if node.name in self.constant:
            pairs = torch.zeros(out.shape[0], 3, dtype=torch.int64, device=self.device)
            self._count_product(node, pairs)
            self.per_sample[node.name] = pairs.sum(0)
        else:
            self._count_product(node, self._slot(node.name, out.shape[0])[:, i])

    def _measure_conv(self, node: ir.Conv2d, inputs, out, i: int) -> None:
        if node.name not in self.measured:              # fed by analog values: MACs, from shapes
            return
        sops = weighted_nonzero(inputs[0], self.fanout[node.name])
        mt = self.leveled.get(node.name, {}).get(0)
        level_sops = sops if mt is None else weighted_sum(self._fired(inputs[0], mt), self.fanout[node.name])
        # (no paper_sops: the paper counts Linear only)
        self._add_pairs(node, torch.stack([sops, torch.zeros_like(sops), level_sops], dim=1), i)

    def _measure_linear(self, node: ir.Linear, inputs, out, i: int) -> None:
        if node.name not in self.measured:              # fed by an MT neuron: from its spike counts
            return
        nnz = count_nonzero(inputs[0]) * node.weight.shape[0]
        sops = nnz if self.graph.spiking[node.inputs[0]] else torch.zeros_like(nnz)
        self._add_pairs(node, torch.stack([sops, nnz, sops], dim=1), i)

    def _add_pairs(self, node: ir.Node, pairs: torch.Tensor, i: int) -> None:
        """A measured node's [batch, (sops, paper_sops, level_sops)] of step i + 1."""
        if node.name in self.constant:
            self.per_sample[node.name] = pairs.sum(0)
        else:
            self._slot(node.name, pairs.shape[0])[:, i] = pairs

    def _slot(self, name: str, rows: int) -> torch.Tensor:
        """This batch's per-sample counts of `name` per step, [rows, T, 3] (the reports' intervals at
        every t; the per-step totals are their sums)."""
        batch = self.batches[-1]
        if name not in batch:
            batch[name] = torch.zeros(rows, self.T, 3, dtype=torch.int64, device=self.device)
        return batch[name]

    def _count_product(self, node: ir.ProductECM, out: torch.Tensor) -> None:
        """This step's [batch, (sops, paper_sops, level_sops)] of a product ECM, into out."""
        state = self.executor.state(node.name)      # this step's x, y and A_t, B_t, transposed as multiplied
        x, y, a, b = state.x, state.y, state.a, state.b
        if node.name not in self.previous:
            self.previous[node.name] = (torch.zeros(*a.shape[:-2], a.shape[-1], dtype=torch.int64, device=a.device),
                                        torch.zeros(*b.shape[:-1], dtype=torch.int64, device=b.device))
        previous = self.previous[node.name]
        leveled = self.leveled.get(node.name, {})
        th = [self._thresholds(leveled[j]) if j in leveled else None for j in (0, 1)]
        if not native.product_counts(x, a, y, b, *previous, out, *th, counted=state.counted):
            pairs, ca, cb = product_pairs(x, y, a, b, *previous)
            if leveled:
                wx, wy = _along(x, -2, th[0]), _along(y, -1, th[1])
                level = product_level_pairs(wx, wy, *previous)
            else:
                level = pairs[:, 0]
            self.previous[node.name] = (ca, cb)
            out.copy_(torch.cat([pairs, level.unsqueeze(1)], dim=1))
        if not all(self.graph.spiking[s] for s in node.inputs):
            out[:, 0] = out[:, 2] = 0            # analog operands: MACs, counted from shapes

    def _thresholds(self, mt: ir.MTNeuron) -> tuple:
        """The k > 1 neuron `mt`'s thresholds, as its spikes' levels are read against them."""
        st = self.executor.state(mt.name)
        flat = lambda th: None if th is None else (th.reshape(1) if th.numel() == 1 else th)
        return flat(st.th_pos), flat(st.th_neg)

    def _fired(self, x: torch.Tensor, mt: ir.MTNeuron) -> torch.Tensor:
        """The levels each element of x (spikes of the k > 1 neuron `mt`) carries."""
        return fired_levels(x, *self._thresholds(mt), mt.levels)

    # -- results -----------------------------------------------------------------------
    def result(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per node and field, an int64 tensor [T] of per-step totals over all
        samples seen; MT neurons also have ``levels`` [T, 2n], most negative first."""
        self._finish()
        steps = torch.ones(self.T, dtype=torch.int64, device=self.device)
        first = torch.zeros_like(steps)
        first[0] = 1
        out = {}
        for n in self.graph:
            c = {f: torch.zeros(self.T, dtype=torch.int64, device=self.device) for f in FIELDS}
            ran = first if n.name in self.static else steps
            for f, v in self.fixed[n.name].items():
                c[f] = ran * (v * self.samples)
            if n.name in self.histograms:
                hist = self.histograms[n.name]
                if n.name in self.constant:
                    hist = hist * self.samples
                per_value = hist[:, :-1]
                if n.name in self.multi:
                    table, _ = level_tables(n.levels)
                    # on the CPU: CUDA has no int64 matrix product
                    c["levels"] = (per_value.cpu() @ table.cpu()).to(per_value.device)
                    c["spikes"] = per_value.sum(dim=1) - per_value[:, 2 ** n.levels - 1]
                else:
                    c["levels"] = torch.cat([per_value[:, :n.levels], per_value[:, n.levels + 1:]], dim=1)
                    c["spikes"] = c["levels"].sum(dim=1)
                c["level_spikes"] = c["levels"].sum(dim=1)
                c["active_updates"] = hist[:, -1].clone()
            if n.name in self.measured:
                if n.name in self.per_sample:
                    measured = first.unsqueeze(1) * (self.per_sample[n.name] * self.samples)
                else:
                    measured = torch.zeros(self.T, 3, dtype=torch.int64, device=self.device)
                    for batch in self.batches:
                        measured += batch[n.name].sum(0)
                c["sops"], c["paper_sops"], c["level_sops"] = (v.contiguous() for v in measured.unbind(dim=1))
            out[n.name] = c
        for name, src in self.sources.items():      # linear layers fed by an MT neuron's spikes
            width = self.graph[name].weight.shape[0]
            sops = out[src]["spikes"] * width
            out[name]["sops"], out[name]["paper_sops"] = sops, sops.clone()
            out[name]["level_sops"] = out[src]["level_spikes"] * width
        return out


    def per_sample_totals(self, steps: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """Per node computed from the data, per field of SAMPLE_FIELDS it has: an int64
        tensor [samples] of per-sample totals over the T steps (with `steps`, [samples, T]:
        per step), in the order the samples ran."""
        self._finish()
        out: dict[str, dict[str, torch.Tensor]] = {}
        for name in self.batches[0] if self.batches else ():
            both = torch.cat([b[name] for b in self.batches]).cpu()
            both = both if steps else both.sum(1)
            fields = MT_SAMPLE if name in self.histograms else SOP_SAMPLE
            out[name] = dict(zip(fields, both.unbind(-1)))
        for name, src in self.sources.items():
            if src in out:
                width = self.graph[name].weight.shape[0]
                out[name] = {"sops": out[src]["spikes"] * width, "paper_sops": out[src]["spikes"] * width,
                             "level_sops": out[src]["level_spikes"] * width}
        return out


@dataclasses.dataclass(frozen=True)
class Counting:
    """How hw_sim counts one node kind: `work`, its counts that follow from shapes
    (shape_work), and `measure`, the Counter method that counts its data-dependent
    events at each step (None: shapes say everything)."""
    work: object
    measure: object = None


KINDS = KindTable("hw_sim counting", {
    ir.Input: Counting(_forward_work, Counter._new_run),
    ir.Linear: Counting(_linear_work, Counter._measure_linear),
    ir.Conv2d: Counting(_conv2d_work, Counter._measure_conv),
    ir.ProductECM: Counting(_product_work, Counter._measure_product),
    ir.MTNeuron: Counting(_neuron_work, Counter._measure_neuron),
    ir.MTNeuronPPN: Counting(_neuron_work, Counter._measure_neuron),
    **{ecm: Counting(_ecm_work) for ecm in (
        ir.GELUECM, ir.ReLUECM, ir.ElementwiseECM, ir.SoftmaxECM, ir.LayerNormECM, ir.MaxPool2d)},
    ir.Output: Counting(_output_work),
    **{kind: Counting(_forward_work) for kind in (
        ir.Constant, ir.Add, ir.Scale, ir.Reshape, ir.Permute, ir.Slice, ir.Select, ir.Concat, ir.Mean,
        ir.AvgPool2d)},
})

def to_lists(counts: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, list]]:
    """Counter.result() as Python ints, for reports."""
    return {name: {f: v.tolist() for f, v in fields.items()} for name, fields in counts.items()}


@dataclasses.dataclass(frozen=True)
class EventCounts:
    """The count stage's result, all that the map, time and price stages read.

    ``nodes``: per node and field (FIELDS; MT neurons also ``levels``, [T][2n]) the
    events of each step summed over ``samples`` samples.  ``per_sample``: per node
    computed from the data, the SAMPLE_FIELDS totals over T of each sample (for
    intervals; None where not kept, e.g. under torchrun); ``per_sample_steps``: the
    same per step, [samples, T] (for intervals at every t)."""
    nodes: dict[str, dict[str, list]]
    samples: int
    per_sample: dict[str, dict[str, torch.Tensor]] | None = None
    per_sample_steps: dict[str, dict[str, torch.Tensor]] | None = None

    @property
    def T(self) -> int:
        return len(next(iter(self.nodes.values()))["sops"])

    def per_step(self, name: str, field: str) -> list[float]:
        """One node's events per step and inference."""
        return [v / self.samples for v in self.nodes[name][field]]

    def total_per_step(self, field: str) -> list[float]:
        """Every node's events per step and inference."""
        return [sum(c[field][t] for c in self.nodes.values()) / self.samples for t in range(self.T)]

    def total(self, name: str, field: str) -> float:
        """One node's events over the T steps, per inference."""
        return sum(self.nodes[name][field]) / self.samples


def event_counts(counter: Counter) -> EventCounts:
    """A single process's counts (simulate() sums ranks' counts itself)."""
    return EventCounts(to_lists(counter.result()), counter.samples, counter.per_sample_totals(),
                       counter.per_sample_totals(steps=True))
