"""ECMT against SpikingJelly's ANN-to-SNN converters on the same trained weights:
accuracy at every step, conversion and simulation cost, and energy.

    python benchmarks/peers.py [--limit 2000] [-T 32]
        # writes docs/benchmarks/peers.{md,json} and peers_{accuracy,energy}.png

Needs the `peers` extra: spikingjelly 2.0.0 (its ann2snn package), loguru and
requests (`pip install -e .[peers]`, or spikingjelly with --no-deps plus the two
others).  The product never imports spikingjelly; only this script does.

Models: the demo ViT (`load_model("demo")`) and the demo CNN (`"demo-cnn"`).
* ViT: ECMT (paper calibration, p = 0.99, and the sparser p = 0.999; search with
  target_T=2; multi-level neurons, k = 4 levels per spike with thresholds q/16 and
  12 levels) against SpikingJelly's
  STATransformerRecipe, mode 'spiking_encoder' (threshold_mode 'mse'), whose
  thresholds are the calibrated range divided by `time_steps`: it is converted
  and run once per time_steps in 1, 2, 4, ..., T; and mode 'equivalent', which
  does not spike (analog time-difference execution), shown for reference.  The
  timm ViT is ported to torchvision's VisionTransformer (the layout the recipe
  traces), checked to compute the same function.  Input: the image at step 1,
  zeros after (SpikingJelly's protocol); the estimate is the cumulative output.
* CNN: ECMT (the same three settings, search with target_T=4) against
  RateCodingRecipe in modes 'max', '99.9%', 1.0/2, and '99.9%' channel-wise with
  half thresholds.  Input: the analog image at every step; the estimate is the
  running mean of the outputs.
Calibration for every method: the same 512 training images (one batch).

Energy (cmos45-fp32, SNN energy up to step t over one ANN forward of the same
model as hw_sim prices it): ECMT with hw_sim (full mode).  hw_sim cannot replay
SpikingJelly's graphs, so forward hooks count their events into hw_sim's count
fields, each unit described as the ir node it equals (an IF neuron as a one-level
MT neuron), and hw_sim.energy.snn_energy prices them at the same rates as ECMT's:
one price table; see ENERGY_RULE below and the .md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import gc
import importlib.metadata
import io
import itertools
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from machine import machine_info, machine_markdown, write_result

import ecmt
import hw_sim
from ecmt import data, ir
from ecmt.runtime import GraphExecutor
from ecmt.zoo import load_model
from ecmt.ir import analysis
from hw_sim.counting import FIELDS as COUNT_FIELDS
from hw_sim.counting import Counter, EventCounts, conv_fanout, event_counts
from hw_sim.energy import snn_energy
from hw_sim.simulate import build as hw_sim_build

try:
    from spikingjelly.activation_based import ann2snn, functional, neuron
    from spikingjelly.activation_based.ann2snn.modules import ChannelVoltageScaler, VoltageScaler
    from spikingjelly.activation_based.ann2snn.operators import TDConv2d, TDLinear, TDMultiheadAttention
    from spikingjelly.activation_based.ann2snn.recipes.sta_transformer import _STASpikeEncoder
    from spikingjelly.activation_based.ann2snn.recipes.step_mode_adapters import _StepModeTensorOp
except ImportError as err:  # pragma: no cover - the optional extra is missing
    sys.exit(f"benchmarks/peers.py needs SpikingJelly 2.0.0 and its import-time deps "
             f"(pip install -e '.[peers]'): {err}")

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"
PROFILE = "cmos45-fp32"
BATCH = 256

ENERGY_RULE = (
    "One price table for every method: hw_sim's full-mode rates on the profile (hw_sim/energy.py, CMOS "
    "branch): a synaptic event into a weight costs one `sram_read_64b` scaled to the value width (the "
    "weight read) plus one `energy.add` per level it carries; a multiply-accumulate costs `energy.mac` "
    "plus the same weight read; an MT neuron update costs the adds hw_sim/costs.py `mt_update_ops` "
    "charges (levels + 2; 2 levels + 2 when it sends k > 1 levels per step) plus its state reads and "
    "writes at the same SRAM price. "
    "ECMT is priced by hw_sim in full mode (every event it counts: synaptic ops, ECM nonlinearities and "
    "their bookkeeping, products, residual adds, state traffic). SpikingJelly's graphs cannot be "
    "replayed by hw_sim, so forward hooks count their events into hw_sim's count fields, each unit "
    "described as the ir node it equals, and hw_sim prices them (hw_sim.energy.snn_energy): "
    "(1) synaptic ops into every Conv2d / Linear (also the q/k/v/out projections inside attention), "
    "each input element times its exact fan-out (for convolutions from hw_sim's fan-out map); an "
    "input that is a spike count k (an IF spike, an STA encoder's multi-level output, or spikes summed "
    "by an average pool folded into the next layer) is k events per connection (a graded value of k "
    "thresholds counts as k binary events); an analog input costs one MAC per connection for each "
    "non-zero element, and an analog input identical to the previous step's (the rate-coded image) is "
    "charged once, as hw_sim charges ECMT's static nodes once; (2) the attention products (QK^T and AV, "
    "analog operands) as dense MACs at every step in which an operand changes; (3) neuron updates every "
    "step: an IF neuron is a one-level MT neuron (3 adds) plus 2 state accesses; an STA encoder "
    "(integrate, divide, truncate, multiply, subtract) the same plus 2 multiplies. Not charged on the "
    "SpikingJelly side: LayerNorm, GELU, softmax, residual adds, voltage scalers, pooling, biases and "
    "the time-difference bookkeeping of its TD modules, so its numbers are lower bounds of what "
    "hw_sim's full mode would charge. For a like-for-like view the same subset (synaptic layers, "
    "products, neurons: hw_sim's count fields sops, level_sops and macs of Linear, Conv2d and product "
    "nodes, neuron_updates, state_rw and mults of MT neurons) is also priced for ECMT from hw_sim's own "
    "counts ('ECMT subset'), and both sides are given with each synaptic event charged one weight read "
    "and one add under two rules: one event per non-zero graded value (hw_sim's graded-spike rule), "
    "and k events per graded value of k thresholds (for ECMT from its level histograms: a spike at "
    "level 2^j counts 2^j events; exact for linear layers, the mean multiplicity for convolutions, and "
    "the product of both operands' multiplicities, an upper bound, for products). "
    "The denominator is one ANN forward of the same model as hw_sim prices it in full mode (its graph "
    "from ECMT's conversion; MACs, adds, nonlinearities and one weight read per MAC).")


# ---------------------------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------------------------
def quiet(fn, *args, **kwargs):
    """SpikingJelly's calibration draws a tqdm bar on stderr."""
    with contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set size above the level at entry, sampled every millisecond
    by a thread (torch releases the GIL in its kernels).  Freed heap is handed back
    to the OS first (malloc_trim) so that earlier runs do not hide this one's peak."""

    def __enter__(self):
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.mib = (self.peak - self.base) / 2 ** 20


def per_step_ms(run, batches: list[torch.Tensor], T: int) -> tuple[float, list[float]]:
    """Median over batches of (wall time of a T-step run) / T, after a warm-up run
    (which also compiles ECMT's fused kernels); and every batch's time."""
    run(batches[0], min(T, 2))
    times = []
    for x in batches:
        t0 = time.perf_counter()
        run(x, T)
        times.append((time.perf_counter() - t0) / T * 1e3)
    return statistics.median(times), times


def ann_ms(model, batches) -> float:
    with torch.no_grad():
        model(batches[0])
        times = []
        for x in batches:
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def first_within(acc: list[float], ann: float, gap: float) -> int | None:
    return next((i + 1 for i, a in enumerate(acc) if a >= ann - gap - 1e-12), None)


def cumulative(per_step: list[float]) -> list[float]:
    return list(itertools.accumulate(per_step))


# ---------------------------------------------------------------------------------------------
# timm ViT -> torchvision ViT (the layout SpikingJelly's transformer recipes trace)
# ---------------------------------------------------------------------------------------------
def timm_to_torchvision(vit: nn.Module) -> nn.Module:
    """The demo's timm VisionTransformer (class token, learned position embedding,
    pre-norm blocks with a fused qkv projection and exact GELU, final norm, class-token
    readout) as a torchvision VisionTransformer with the same weights."""
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT
    pe, blocks = vit.patch_embed, list(vit.blocks)
    identity = nn.Identity
    ok = (vit.cls_token is not None and vit.num_prefix_tokens == 1 and vit.global_pool == "token"
          and isinstance(vit.fc_norm, identity) and isinstance(vit.norm_pre, identity)
          and isinstance(pe.norm, identity) and pe.patch_size[0] == pe.patch_size[1]
          and pe.img_size[0] == pe.img_size[1] and abs(vit.norm.eps - 1e-6) < 1e-12)
    for b in blocks:
        ok &= (isinstance(b.ls1, identity) and isinstance(b.ls2, identity)
               and isinstance(b.attn.q_norm, identity) and isinstance(b.attn.k_norm, identity)
               and isinstance(b.mlp.act, nn.GELU) and b.mlp.act.approximate == "none"
               and b.attn.qkv.bias is not None and abs(b.norm1.eps - 1e-6) < 1e-12
               and abs(b.norm2.eps - 1e-6) < 1e-12)
    if not ok:
        raise SystemExit("timm_to_torchvision: this ViT's layout is not the demo's; cannot port it")
    dim = vit.embed_dim
    tv = TorchvisionViT(image_size=pe.img_size[0], patch_size=pe.patch_size[0], num_layers=len(blocks),
                        num_heads=blocks[0].attn.num_heads, hidden_dim=dim,
                        mlp_dim=blocks[0].mlp.fc1.out_features, num_classes=vit.num_classes)
    tv.conv_proj = nn.Conv2d(pe.proj.in_channels, dim, kernel_size=pe.patch_size[0], stride=pe.patch_size[0])
    state = {"conv_proj.weight": pe.proj.weight, "conv_proj.bias": pe.proj.bias,
             "class_token": vit.cls_token, "encoder.pos_embedding": vit.pos_embed,
             "encoder.ln.weight": vit.norm.weight, "encoder.ln.bias": vit.norm.bias,
             "heads.head.weight": vit.head.weight, "heads.head.bias": vit.head.bias}
    for i, b in enumerate(blocks):
        p = f"encoder.layers.encoder_layer_{i}."
        # torchvision's in_proj rows are [q; k; v], each head-major: timm's qkv layout.
        state.update({p + "ln_1.weight": b.norm1.weight, p + "ln_1.bias": b.norm1.bias,
                      p + "self_attention.in_proj_weight": b.attn.qkv.weight,
                      p + "self_attention.in_proj_bias": b.attn.qkv.bias,
                      p + "self_attention.out_proj.weight": b.attn.proj.weight,
                      p + "self_attention.out_proj.bias": b.attn.proj.bias,
                      p + "ln_2.weight": b.norm2.weight, p + "ln_2.bias": b.norm2.bias,
                      p + "mlp.0.weight": b.mlp.fc1.weight, p + "mlp.0.bias": b.mlp.fc1.bias,
                      p + "mlp.3.weight": b.mlp.fc2.weight, p + "mlp.3.bias": b.mlp.fc2.bias})
    tv.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return tv.eval()


# ---------------------------------------------------------------------------------------------
# energy pricing: hw_sim's rates for both sides
# ---------------------------------------------------------------------------------------------
# What both sides are charged for in the like-for-like views: synaptic events and MACs of synaptic
# layers and products, updates and state traffic of neurons (an STA encoder's multiplies are
# counted as its `mults`).  Priced by hw_sim.energy.snn_energy at its CMOS full-mode rates.
SYNAPTIC = ("sops", "level_sops", "macs")
SUBSET = {ir.Linear: SYNAPTIC, ir.Conv2d: SYNAPTIC, ir.ProductECM: SYNAPTIC,
          ir.MTNeuron: ("neuron_updates", "state_rw", "mults")}


def one_price_per_event(counts: EventCounts, events: dict[str, list[float]]) -> EventCounts:
    """`counts` with each listed node's synaptic events replaced by `events[name]` (per step,
    summed over the samples), each charged as one weight read and one add: hw_sim's CMOS rates
    price `sops` as a weight read and `level_sops` as an add, so both fields get the events."""
    nodes = {name: {**c, "sops": events[name], "level_sops": events[name]} if name in events else c
             for name, c in counts.nodes.items()}
    return dataclasses.replace(counts, nodes=nodes)


def subset_energy(units, counts: EventCounts, profile) -> list[float]:
    """J per step and inference of the SUBSET fields of `units` (ir nodes named as in `counts`)."""
    energy = snn_energy(units, counts, profile, "full", fields=SUBSET)
    return [sum(per[c][t] for per in energy.values() for c in per) for t in range(counts.T)]


def subset_totals(units, counts: EventCounts, **extra: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per SUBSET field (and each of `extra`, per node per step), the per-sample total per step."""
    out = {}
    for field in sorted({f for fs in SUBSET.values() for f in fs}):
        out[field] = [sum(counts.nodes[u.name][field][t] for u in units
                          if any(isinstance(u, k) and field in fs for k, fs in SUBSET.items())) / counts.samples
                      for t in range(counts.T)]
    for name, per_node in extra.items():
        out[name] = [sum(v[t] for v in per_node.values()) / counts.samples for t in range(counts.T)]
    return out


# ---------------------------------------------------------------------------------------------
# SpikingJelly event counter (forward hooks)
# ---------------------------------------------------------------------------------------------
ONE = torch.tensor(1.0)


class SJCounter:
    """Counts, per step, the events of a SpikingJelly model run in single-step mode into
    hw_sim's count fields (see ENERGY_RULE), per unit: each hooked module, described as
    the ir node hw_sim prices it as (`self.units`).  `level_sops` counts a spike count k
    as k events (a value of k thresholds: k binary events); `sops` counts it once.

    Spike-count tensors are followed from the neuron that emits them through
    scalers, pooling, dropout and reshaping modules to the synaptic layers that
    consume them: `self.k[id(tensor)] = (tensor, counts)` for the current step
    (the tensor is held, so its id cannot be reused within the step)."""

    SHAPE_OPS = {"flatten", "transpose", "unsqueeze", "unflatten", "permute", "reshape", "expand", "getitem"}

    def __init__(self, model: nn.Module, T: int):
        self.T = T
        self.t = 0
        self.units: list[ir.Node] = []
        self.unit: dict[int, str] = {}           # id(module) -> its unit's name
        self.counts: dict[str, dict[str, list[float]]] = {}
        self.k: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.prev_input: dict[int, torch.Tensor] = {}
        self.fanout: dict[tuple[int, tuple], torch.Tensor] = {}
        self.handles = []
        inside_attention = set()
        for m in model.modules():
            if isinstance(m, TDMultiheadAttention):
                inside_attention.update(id(s) for s in m.modules() if s is not m)
        for name, m in model.named_modules():
            hook = None
            if isinstance(m, (neuron.BaseNode, _STASpikeEncoder)):
                # an IF neuron is hw_sim's one-level MT neuron; an STA encoder is priced as one
                # too, plus its divide and multiply (counted as mults)
                hook = self._if_neuron if isinstance(m, neuron.BaseNode) else self._sta_encoder
                self._describe(m, ir.MTNeuron(name, (), th_pos=ONE, th_neg=None, levels=1))
            elif isinstance(m, (VoltageScaler, ChannelVoltageScaler, nn.Dropout, nn.Identity)):
                hook = self._same_counts
            elif isinstance(m, nn.Flatten):
                hook = self._flatten
            elif isinstance(m, _StepModeTensorOp) and m.op_name in self.SHAPE_OPS:
                hook = self._tensor_op
            elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                hook = self._pool
            elif isinstance(m, TDMultiheadAttention):
                hook = self._attention
                for proj in (m.q_proj, m.k_proj, m.v_proj, m.out_proj):
                    self._describe(proj, ir.Linear(f"{name}.{self._child_name(m, proj)}", (), weight=proj.weight))
                self._describe(m, ir.ProductECM(f"{name}.products", ("q", "k")))
            elif isinstance(m, (nn.Conv2d, TDConv2d, nn.Linear, TDLinear)) and id(m) not in inside_attention:
                hook = self._synaptic
                kind = ir.Linear if isinstance(m, (nn.Linear, TDLinear)) else ir.Conv2d
                self._describe(m, kind(name, (), weight=m.weight))
            if hook is not None:
                self.handles.append(m.register_forward_hook(hook, with_kwargs=True))

    @staticmethod
    def _child_name(parent: nn.Module, child: nn.Module) -> str:
        return next(n for n, c in parent.named_modules() if c is child)

    def _describe(self, m: nn.Module, node: ir.Node):
        self.units.append(node)
        self.unit[id(m)] = node.name
        self.counts[node.name] = {f: [0.0] * self.T for f in COUNT_FIELDS}

    def event_counts(self, samples: int) -> EventCounts:
        return EventCounts(self.counts, samples)

    # -- bookkeeping --------------------------------------------------------------------------
    def step(self, t: int):
        """Start step t (0-based); forget the previous step's spike tensors."""
        self.t = t
        self.k.clear()

    def reset(self):
        """A new batch: analog inputs are no longer 'the same as the previous step'."""
        self.prev_input.clear()
        self.k.clear()

    def remove(self):
        for h in self.handles:
            h.remove()
        self.k.clear()
        self.prev_input.clear()

    def _add(self, m, field, value):
        self.counts[self.unit[id(m)]][field][self.t] += float(value)

    def _counts_of(self, x) -> torch.Tensor | None:
        entry = self.k.get(id(x)) if isinstance(x, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0] is x else None

    def _register(self, out, counts):
        if isinstance(out, torch.Tensor) and counts is not None:
            self.k[id(out)] = (out, counts)

    # -- spike sources ------------------------------------------------------------------------
    def _if_neuron(self, m, args, kwargs, out):
        self._register(out, out.abs())
        n = out.numel()
        self._add(m, "neuron_updates", n)
        self._add(m, "state_rw", 2 * n)          # the membrane read and written, as hw_sim counts it

    def _sta_encoder(self, m, args, kwargs, out):
        dim = m.channel_dim % out.dim()
        shape = [1] * out.dim()
        shape[dim] = m.v_threshold.numel()
        th = m.v_threshold.view(shape).clamp(min=torch.finfo(out.dtype).eps)
        self._register(out, torch.round(out / th).abs())
        n = out.numel()
        self._add(m, "neuron_updates", n)
        self._add(m, "mults", 2 * n)             # the divide and the multiply
        self._add(m, "state_rw", 2 * n)

    # -- modules that move spike counts along ---------------------------------------------------
    def _same_counts(self, m, args, kwargs, out):
        self._register(out, self._counts_of(args[0] if args else None))

    def _flatten(self, m, args, kwargs, out):
        k = self._counts_of(args[0])
        if k is not None:
            self._register(out, m(k))

    def _tensor_op(self, m, args, kwargs, out):
        k = self._counts_of(args[0]) if args else None
        if k is not None:
            self._register(out, m._single_step(k, *args[1:]))

    def _pool(self, m, args, kwargs, out):
        """Pooling spikes into a synaptic layer is folded into its synapses: max
        pooling passes counts on; an average pool passes the sum of the counts in
        its window (each spike reaches the next layer through the pooled weight)."""
        k = self._counts_of(args[0])
        if k is None:
            return
        if isinstance(m, nn.MaxPool2d):
            self._register(out, F.max_pool2d(k, m.kernel_size, m.stride, m.padding, m.dilation,
                                             ceil_mode=m.ceil_mode))
        elif isinstance(m, nn.AvgPool2d) and m.divisor_override is None:
            kh, kw = (m.kernel_size, m.kernel_size) if isinstance(m.kernel_size, int) else m.kernel_size
            if m.padding in (0, (0, 0)):
                self._register(out, F.avg_pool2d(k, m.kernel_size, m.stride, 0, m.ceil_mode) * (kh * kw))
        elif isinstance(m, nn.AdaptiveAvgPool2d) and out.shape[-2:] == (1, 1):
            self._register(out, k.sum(dim=(-2, -1), keepdim=True))

    # -- synaptic layers ----------------------------------------------------------------------------
    def _fan(self, m, x) -> torch.Tensor | int:
        """Fan-out of each input element: exact per position for convolutions."""
        if isinstance(m, (nn.Linear, TDLinear)):
            return m.out_features
        key = (id(m), tuple(x.shape[1:]))
        if key not in self.fanout:
            self.fanout[key] = conv_fanout(m, tuple(x.shape[1:])).to(torch.float64)
        return self.fanout[key]

    def _synaptic_input(self, m, x, fan, td: bool):
        k = self._counts_of(x)
        if k is not None:                                   # spikes: k events per connection
            k = k.double()
            if isinstance(fan, int):
                self._add(m, "level_sops", k.sum() * fan)
                self._add(m, "sops", (k != 0).sum() * fan)
            else:
                self._add(m, "level_sops", (k * fan).sum())
                self._add(m, "sops", ((k != 0) * fan).sum())
            return
        if not td:
            prev = self.prev_input.get(id(m))
            same = prev is not None and prev.shape == x.shape and torch.equal(prev, x)
            self.prev_input[id(m)] = x
            if same:                                        # unchanged analog input: output reused
                return
        nz = (x != 0)
        self._add(m, "macs", nz.sum() * fan if isinstance(fan, int) else (nz.double() * fan).sum())

    def _synaptic(self, m, args, kwargs, out):
        x = args[0]
        self._synaptic_input(m, x, self._fan(m, x), td=isinstance(m, (TDLinear, TDConv2d)))

    def _attention(self, m, args, kwargs, out):
        names = ("query", "key", "value")
        query, key, value = [args[i] if i < len(args) else kwargs[names[i]] for i in range(3)]
        changed = self.t == 0
        for x, proj in ((query, m.q_proj), (key, m.k_proj), (value, m.v_proj)):
            self._synaptic_input(proj, x, proj.out_features, td=True)
            changed = changed or bool((x != 0).any())
        if changed:                                         # QK^T and AV on analog q, k, v; then out_proj
            b, n, d = query.shape
            self._add(m, "macs", 2 * b * n * n * d)
            self._add(m.out_proj, "macs", b * n * d * m.out_proj.out_features)


# ---------------------------------------------------------------------------------------------
# running the methods
# ---------------------------------------------------------------------------------------------
def run_sj(snn, x: torch.Tensor, T: int, protocol: str, counter: SJCounter | None = None) -> torch.Tensor:
    """[T, B, classes] estimates.  protocol 'rate': x at every step, running mean;
    'first': x at step 1 then zeros, cumulative sum (SpikingJelly's STA protocol)."""
    functional.reset_net(snn)
    if counter is not None:
        counter.reset()
    zeros = torch.zeros_like(x) if protocol == "first" else None
    total, out = None, []
    with torch.no_grad():
        for t in range(T):
            if counter is not None:
                counter.step(t)
            y = snn(x if protocol == "rate" or t == 0 else zeros)
            total = y.clone() if total is None else total + y
            out.append(total / (t + 1) if protocol == "rate" else total.clone())
    if counter is not None:
        counter.step(0)
    return torch.stack(out)


def evaluate_sj(snn, images, labels, T, protocol, ann_j: float, profile) -> dict:
    counter = SJCounter(snn, T)
    correct = torch.zeros(T, dtype=torch.long)
    for s in range(0, len(images), BATCH):
        est = run_sj(snn, images[s:s + BATCH], T, protocol, counter)
        correct += (est.argmax(-1) == labels[s:s + BATCH].unsqueeze(0)).sum(dim=1)
    counter.remove()
    counts = counter.event_counts(len(images))
    synaptic = [u.name for u in counter.units if not isinstance(u, ir.MTNeuron)]
    view = lambda field: one_price_per_event(counts, {u: counts.nodes[u][field] for u in synaptic})
    return {"accuracy": (correct.double() / len(images)).tolist(),
            "counts_per_step": subset_totals(counter.units, counts),
            "energy_k": [e / ann_j for e in cumulative(subset_energy(counter.units, view("level_sops"), profile))],
            "energy_1": [e / ann_j for e in cumulative(subset_energy(counter.units, view("sops"), profile))]}


def value_events(graph: ir.SpikingGraph, counts: EventCounts) -> dict[str, list[float]]:
    """Per synaptic layer and product, its synaptic events per step with each spike input counted
    as its value in thresholds (a spike at level 2^j is 2^j events: the k-events rule): its SOPs
    times the mean value of a spike of the neuron behind each input at that step, from the
    neuron's level histogram (exact for a linear layer, the mean for a convolution, the product
    of both operands' means, an upper bound, for a product)."""
    mean = {}
    for node in graph.of_kind(ir.MTNeuron):
        n = node.levels
        value = [2.0 ** j for j in reversed(range(n))] + [2.0 ** j for j in range(n)]   # levels -n..-1, 1..n
        c = counts.nodes[node.name]
        mean[node.name] = [sum(v * fired for v, fired in zip(value, step)) / spikes if spikes else 1.0
                           for step, spikes in zip(c["levels"], c["spikes"])]
    out = {}
    for node in graph:
        if isinstance(node, (ir.Linear, ir.Conv2d, ir.ProductECM)):
            events = list(counts.nodes[node.name]["sops"])
            for s in node.inputs:
                src = analysis.spike_source(graph, s)
                if src is not None:
                    events = [e * m for e, m in zip(events, mean[src.neuron.name])]
            out[node.name] = events
    return out


def evaluate_ecmt(spiking, images, labels, T, profile) -> dict:
    """One pass with hw_sim's counter (exactly what hw_sim.simulate does), accuracy at every t,
    hw_sim's full-mode energy ratio, and the like-for-like subset at the same rates."""
    graph = spiking.graph
    executor = GraphExecutor(graph, record_levels=True)
    counter = Counter(executor, T)
    correct = torch.zeros(T, dtype=torch.long)
    for s in range(0, len(images), BATCH):
        est = executor.run(images[s:s + BATCH], T, observer=counter)
        correct += (est.argmax(-1) == labels[s:s + BATCH].unsqueeze(0)).sum(dim=1)
    n = len(images)
    acc = (correct.double() / n).tolist()
    events = event_counts(counter)
    report = hw_sim.Report(hw_sim_build(graph, events, [profile], ["full"], acc))
    full = report.result(PROFILE, "full")
    ann_j = full["ann"]["energy_j"]
    k_events = value_events(graph, events)
    graded = one_price_per_event(events, {name: events.nodes[name]["sops"] for name in k_events})
    return {"accuracy": acc, "hw_sim_full": full["energy_ratio_per_t"], "ann_energy_j": ann_j,
            "energy_k": [e / ann_j for e in cumulative(
                subset_energy(graph, one_price_per_event(events, k_events), profile))],
            "energy_1": [e / ann_j for e in cumulative(subset_energy(graph, graded, profile))],
            "counts_per_step": subset_totals(list(graph), events, value_events=k_events),
            "spikes_per_step": report.data["counts"]["per_step"]["spikes"]}


def sj_estimator(snn, ann, x, T, protocol) -> dict:
    """SpikingJelly's own estimator (op_counter.SimpleEnergyProfiler: MAC / AC counts from the
    aten ops PyTorch executes, Horowitz fp32 costs, weight and neuron-state bytes at 24.96
    pJ/byte), SNN energy up to step t over the same estimator's ANN forward: in total, and
    compute only (MAC + AC energy)."""
    from spikingjelly.activation_based.op_counter import SimpleEnergyProfiler, estimate_simple_energy
    for p in list(snn.parameters()) + list(ann.parameters()):
        p.requires_grad_(False)       # its module hooks fail on parameters returned as outputs
    fastpath = getattr(torch.backends, "mha", None)
    if fastpath is not None:          # the fused attention kernel is invisible to its counters
        fastpath.set_fastpath_enabled(False)
    try:
        ann_rep = estimate_simple_energy(ann, x)
    finally:
        if fastpath is not None:
            fastpath.set_fastpath_enabled(True)
    profiler = SimpleEnergyProfiler()
    profiler.bind_model(snn)
    functional.reset_net(snn)
    zeros = torch.zeros_like(x)
    total, compute = [], []
    with profiler, torch.no_grad():
        for t in range(T):
            snn(x if protocol == "rate" or t == 0 else zeros)
            rep = profiler.get_report()
            total.append(rep.energy_total_pj / ann_rep.energy_total_pj)
            compute.append(rep.energy_compute_pj / ann_rep.energy_compute_pj)
    functional.reset_net(snn)
    return {"ratio_total_per_t": total, "ratio_compute_per_t": compute, "samples": len(x),
            "snn_counts_at_T": rep.counts, "ann_counts": ann_rep.counts, "warnings": rep.warnings}


# ---------------------------------------------------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000, help="test images for accuracy and energy")
    parser.add_argument("-T", type=int, default=32)
    parser.add_argument("--timing-batches", type=int, default=3, help="batches of 256 for step time")
    parser.add_argument("--sj-estimator-samples", type=int, default=32,
                        help="images for SpikingJelly's own energy estimator (slow: it inspects every op)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--models", default="vit,cnn")
    parser.add_argument("--note", help="a line for the report, e.g. on the machine's load")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    T = args.T
    started = time.time()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    calib_x = train.sample(512)
    sj_calib = [calib_x]                                  # one batch: every image weighs the same
    split = test.take(args.limit)
    images, labels = split.images, split.labels
    timing = [test.images[i * BATCH:(i + 1) * BATCH] for i in range(args.timing_batches)]
    profile = hw_sim.load_profile(PROFILE)
    sta_steps = sorted({t for t in (1, 2, 4, 8, 16, 32, 64, 128) if t <= T} | {T})
    result = {"machine": machine_info(), "versions": versions(), "T": T, "limit": len(images),
              "timing_batch": BATCH, "timing_batches": args.timing_batches, "profile": PROFILE,
              "prices": {**{f"energy.{k}": profile[f"energy.{k}"] for k in ("add", "mult", "mac", "sram_read_64b")},
                         "value_bits": profile.value_bits}, "energy_rule": ENERGY_RULE, "note": args.note, "threads": args.threads, "models": {}}

    for model_name in args.models.split(","):
        model = load_model("demo" if model_name == "vit" else "demo-cnn")
        sj_ann = timm_to_torchvision(model) if model_name == "vit" else model
        with torch.no_grad():
            port_diff = float((model(timing[0]) - sj_ann(timing[0])).abs().max())
            correct = sum(int((model(images[s:s + BATCH]).argmax(-1) == labels[s:s + BATCH]).sum())
                          for s in range(0, len(images), BATCH))
        ann_acc = correct / len(images)
        ann_step = ann_ms(model, timing)
        with PeakRSS() as mem, torch.no_grad():
            model(timing[0])
        entry = {"ann_accuracy": ann_acc, "ann_forward_ms": ann_step, "ann_peak_rss_mib": mem.mib,
                 "constant_accuracy": float(torch.bincount(labels).max()) / len(labels),
                 "parameters": sum(p.numel() for p in model.parameters()), "methods": []}
        if model_name == "vit":
            entry["torchvision_port_max_abs_diff"] = port_diff
        print(f"[{model_name}] ANN accuracy {100 * ann_acc:.2f}%, forward {ann_step:.1f} ms / {BATCH}", flush=True)
        ann_j = None

        # -- ECMT -----------------------------------------------------------------------------
        searches = {"vit": 2, "cnn": 4}
        # The one-step operating point of docs/benchmarks/multilevel.md: thresholds 16x
        # finer with 4 more levels (same top level), up to 4 levels per spike.  The
        # calibration quantile 0.999 (ECMT_SPEC's "other quantiles" option) is the
        # cheap end of the frontier: higher thresholds, fewer spikes per step.
        for label, options in ((f"ECMT (paper calibration)", {}),
                               ("ECMT (calibration p = 0.999)", {"quantile": 0.999}),
                               (f"ECMT (search, target T={searches[model_name]})", {"target_T": searches[model_name]}),
                               ("ECMT (k = 4 levels per spike, thresholds q/16, 12 levels)", ecmt.MULTI_LEVEL)):
            t0 = time.time()
            spiking = ecmt.convert(model, calib_x, progress=False, **options)
            convert_s = time.time() - t0
            ev = evaluate_ecmt(spiking, images, labels, T, profile)
            ann_j = ev.pop("ann_energy_j")
            step, step_all = per_step_ms(lambda x, n: spiking(x, n), timing, T)
            with PeakRSS() as mem:
                spiking(timing[0], T)
            entry["methods"].append({"name": label, "family": "ECMT", "spiking": True, "time_steps": None,
                                     "convert_seconds": convert_s, "step_ms": step, "step_ms_batches": step_all,
                                     "step_x_ann": step / ann_step, "peak_rss_mib": mem.mib, **ev})
            report_line(model_name, entry["methods"][-1], ann_acc)
        entry["ann_energy_j"] = ann_j

        # -- SpikingJelly ------------------------------------------------------------------------
        if model_name == "vit":
            recipes = [(f"SJ STA spiking_encoder (time_steps={ts})", ts,
                        lambda ts=ts: ann2snn.STATransformerRecipe(dataloader=sj_calib, time_steps=ts,
                                                                    mode="spiking_encoder",
                                                                    threshold_mode="mse"), True)
                       for ts in sta_steps]
            recipes.append(("SJ STA equivalent (analog, not spiking)", T,
                            lambda: ann2snn.STATransformerRecipe(time_steps=T, mode="equivalent"), False))
            protocol = "first"
        else:
            recipes = [(f"SJ rate coding {name}", T,
                        lambda kw=kw: ann2snn.RateCodingRecipe(sj_calib, **kw), True)
                       for name, kw in (("'max'", dict(mode="max")), ("'99.9%'", dict(mode="99.9%")),
                                        ("1.0/2", dict(mode=1.0 / 2)),
                                        ("'99.9%' channel-wise + half threshold",
                                         dict(mode="99.9%", channel_wise=True, half_threshold=True)))]
            protocol = "rate"
        for label, steps, make, is_spiking in recipes:
            t0 = time.time()
            snn = quiet(ann2snn.Converter(recipe=make()).convert, copy.deepcopy(sj_ann))
            convert_s = time.time() - t0
            functional.set_step_mode(snn, "s")
            snn.eval()
            ev = evaluate_sj(snn, images, labels, steps, protocol, ann_j, profile)
            method = {"name": label, "family": "SpikingJelly", "spiking": is_spiking,
                      "time_steps": steps if model_name == "vit" else None,
                      "convert_seconds": convert_s, **ev}
            if steps == T:          # cost per step and memory: the T-step run of every method
                step, step_all = per_step_ms(lambda x, n: run_sj(snn, x, n, protocol), timing, T)
                with PeakRSS() as mem:
                    run_sj(snn, timing[0], T, protocol)
                method.update(step_ms=step, step_ms_batches=step_all, step_x_ann=step / ann_step,
                              peak_rss_mib=mem.mib)
                if args.sj_estimator_samples:
                    method["sj_estimator"] = quiet(sj_estimator, snn, sj_ann,
                                                   test.images[:args.sj_estimator_samples], T, protocol)
            entry["methods"].append(method)
            report_line(model_name, method, ann_acc)
        entry["targets"] = targets(entry)
        result["models"][model_name] = entry

    result["wall_seconds"] = time.time() - started
    write_result(OUT, "peers", result, render(result), indent=1)
    plot_accuracy(result, OUT / "peers_accuracy.png")
    plot_energy(result, OUT / "peers_energy.png")
    print(f"took {result['wall_seconds']:.0f} s")


def versions() -> dict:
    out = {}
    for pkg in ("spikingjelly", "torch", "torchvision", "timm", "ecmt"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def report_line(model_name, m, ann_acc):
    acc = m["accuracy"]
    energy = m.get("hw_sim_full", m["energy_k"])
    print(f"[{model_name}] {m['name']}: convert {m['convert_seconds']:.1f} s, acc t=1 {100 * acc[0]:.2f}% "
          f"t={len(acc)} {100 * acc[-1]:.2f}% (ANN {100 * ann_acc:.2f}%), energy t={len(acc)} {energy[-1]:.3f}"
          + (f", {m['step_ms']:.1f} ms/step" if "step_ms" in m else ""), flush=True)


# ---------------------------------------------------------------------------------------------
# targets: the accuracy-energy plane and the per-step cost
# ---------------------------------------------------------------------------------------------
VIEWS = {   # name: (ECMT energy key, SpikingJelly energy key, description)
    "requested": ("hw_sim_full", "energy_k",
                  "ECMT priced by hw_sim full mode; SpikingJelly by the hook counter, k events per graded value"),
    "same subset, graded = 1 event": ("energy_1", "energy_1",
                                      "both: synaptic layers, products and neurons only; one event per "
                                      "non-zero graded value (hw_sim's rule)"),
    "same subset, graded = k events": ("energy_k", "energy_k",
                                       "both: synaptic layers, products and neurons only; k events per "
                                       "graded value of k thresholds (ECMT: level 2^j = 2^j events)"),
}


def targets(entry) -> dict:
    chance = entry["constant_accuracy"]       # the best constant answer, at zero energy
    ecmt_methods = [m for m in entry["methods"] if m["family"] == "ECMT"]
    sj_methods = [m for m in entry["methods"] if m["family"] == "SpikingJelly" and m["spiking"]]
    out = {"chance_accuracy": chance, "views": {}}
    for view, (ekey, skey, desc) in VIEWS.items():
        front = [(0.0, chance)] + [(e, a) for m in ecmt_methods for e, a in zip(m[ekey], m["accuracy"])]
        below = []
        margins = []
        for m in sj_methods:
            for t, (e, a) in enumerate(zip(m[skey], m["accuracy"]), start=1):
                best = max(acc for en, acc in front if en <= e)
                margins.append(best - a)
                if best < a:
                    below.append({"method": m["name"], "t": t, "energy": e, "accuracy": a,
                                  "ecmt_best_at_this_energy": best})
        out["views"][view] = {"description": desc, "sj_points": len(margins),
                              "ecmt_on_or_above_all": not below, "points_above_ecmt": below,
                              "min_margin": min(margins) if margins else None}
    e_step = {m["name"]: m["step_ms"] for m in ecmt_methods}
    s_step = {m["name"]: m["step_ms"] for m in entry["methods"]
              if m["family"] == "SpikingJelly" and "step_ms" in m}
    out["step_cost"] = {"ecmt_ms": e_step, "sj_ms": s_step,
                        "ecmt_over_sj": {e: {s: ev / sv for s, sv in s_step.items()} for e, ev in e_step.items()}}
    return out


# ---------------------------------------------------------------------------------------------
# plots and report
# ---------------------------------------------------------------------------------------------
MODEL_TITLES = {"vit": "demo ViT", "cnn": "demo CNN"}


def _styles(methods):
    import matplotlib.pyplot as plt
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    style, i = {}, 0
    for m in methods:
        key = "SJ STA spiking_encoder" if m["name"].startswith("SJ STA spiking_encoder") else m["name"]
        if key not in style:
            style[key] = colors[i % len(colors)]
            i += 1
    return lambda m: style["SJ STA spiking_encoder" if m["name"].startswith("SJ STA spiking_encoder")
                           else m["name"]]


def _all_accuracies(e) -> list[float]:
    return [a for m in e["methods"] for a in m["accuracy"]] + [e["ann_accuracy"]]


def _finish(ax, e, log_energy: bool = False):
    import matplotlib.ticker as ticker
    ax.axhline(100 * e["ann_accuracy"], color="k", ls="--", lw=0.8, label="ANN")
    ax.set_ylim(max(0.0, 100 * min(_all_accuracies(e)) - 3), 100 * max(_all_accuracies(e)) + 2)
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    if log_energy:      # label 2x and 5x too: the energy range may span less than a decade
        ax.xaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    else:
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylabel("accuracy after step t (%)")
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)


def _plot_per_model(r, path, height: float, draw) -> None:
    """One panel per model, side by side: draw(r, ax, model name, its entry, colour of a method)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(r["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), height), squeeze=False)
    for ax, name in zip(axes[0], models):
        e = r["models"][name]
        draw(r, ax, name, e, _styles(e["methods"]))
    fig.subplots_adjust(wspace=0.22)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def plot_accuracy(r, path):
    _plot_per_model(r, path, 4.6, _draw_accuracy)


def plot_energy(r, path):
    _plot_per_model(r, path, 4.8, _draw_energy)


def _draw_accuracy(r, ax, name, e, color):
    sta = [m for m in e["methods"] if m["name"].startswith("SJ STA spiking_encoder")]
    for m in e["methods"]:
        if m in sta:
            continue
        ts = range(1, len(m["accuracy"]) + 1)
        ax.plot(ts, [100 * a for a in m["accuracy"]], marker="o" if m["family"] == "ECMT" else ".",
                ms=3, lw=2 if m["family"] == "ECMT" else 1.2, ls="-" if m["spiking"] else ":",
                color=color(m), label=m["name"])
    if sta:
        ax.plot([m["time_steps"] for m in sta], [100 * m["accuracy"][-1] for m in sta], marker="s", ms=4,
                color=color(sta[0]), label="SJ STA spiking_encoder, converted per time_steps = t "
                                            "(accuracy after its t steps)")
    ax.set_xscale("log", base=2)
    ax.set_xticks([t for t in (1, 2, 4, 8, 16, 32, 64, 128) if t <= r["T"]])
    ax.set_xlabel("time step t")
    ax.set_title(f"{MODEL_TITLES.get(name, name)}, Fashion-MNIST ({r['limit']} test images)")
    _finish(ax, e)


def _draw_energy(r, ax, name, e, color):
    labelled = set()
    for m in e["methods"]:
        acc = [100 * a for a in m["accuracy"]]
        if m["family"] == "ECMT":
            ax.plot(m["hw_sim_full"], acc, marker="o", ms=3, lw=2, color=color(m),
                    label=m["name"] + ": hw_sim full")
            ax.plot(m["energy_1"], acc, ls="--", lw=0.9, color=color(m), alpha=0.6,
                    label=m["name"] + ": same subset as SJ, 1 event per graded spike")
            continue
        key = "SJ STA spiking_encoder" if m["name"].startswith("SJ STA spiking_encoder") else m["name"]
        first = key not in labelled
        labelled.add(key)
        label = (key + " (every time_steps)") if key != m["name"] else m["name"]
        ax.plot(m["energy_k"], acc, marker="." if m["spiking"] else "x", ms=5, lw=1,
                ls="-" if m["spiking"] else ":", color=color(m),
                label=(label + (": k events per graded value" if m["spiking"] else "")) if first else None)
        if m["spiking"]:
            ax.plot(m["energy_1"], acc, marker=".", mfc="none", ms=5, lw=0.8, ls="--", alpha=0.6,
                    color=color(m), label=(label + ": 1 event per graded value") if first else None)
    ax.set_xscale("log")
    ax.set_xlabel(f"SNN energy up to step t / one ANN forward ({r['profile']}, full)")
    ax.set_title(f"{MODEL_TITLES.get(name, name)}: accuracy against energy, t = 1..T")
    _finish(ax, e, log_energy=True)


def _pct(a):
    return f"{100 * a:.2f}%"


def _t(v):
    return "-" if v is None else f"t = {v}"


def render(r) -> str:
    T = r["T"]
    ts = sorted({t for t in (1, 2, 4, 8, 16, 32) if t <= T} | {T})
    v = r["versions"]
    sta = [m for m in r["models"].get("vit", {}).get("methods", []) if m["name"].startswith("SJ STA spiking")]
    sta_flat = all(max(m["accuracy"]) == min(m["accuracy"]) for m in sta)
    lines = ["# ECMT against SpikingJelly's ANN-to-SNN conversion", "",
             f"Produced by `python benchmarks/peers.py --limit {r['limit']} -T {T}"
             + (f" --threads {r['threads']}" if r.get("threads") else "") + "` in "
             f"{r['wall_seconds'] / 60:.1f} min.  " + machine_markdown(r["machine"]), "",
             *([f"Note: {r['note']}", ""] if r.get("note") else []),
             "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", "",
             f"Same trained weights for every method (the demo ViT and demo CNN), {r['limit']} Fashion-MNIST "
             "test images for accuracy and energy, the same 512 training images for every calibration "
             "(one batch).  ECMT: `ecmt.convert(model, calib)` (the paper's calibration, p = 0.99), with "
             "the calibration quantile p = 0.999 (sparser spikes), with the threshold search, and with "
             "multi-level neurons (`levels=12, spikes_per_step=4`, every threshold divided by 16: the "
             "one-step operating point of multilevel.md).  SpikingJelly 2.0.0 `ann2snn`: the ViT through `STATransformerRecipe` (the "
             "timm model ported to torchvision's VisionTransformer; max abs difference of the logits "
             f"{r['models'].get('vit', {}).get('torchvision_port_max_abs_diff', float('nan')):.1e}), fed "
             "the image at step 1 and zeros after (SpikingJelly's protocol), estimate = cumulative output; "
             "the CNN through `RateCodingRecipe`, fed the analog image every step, estimate = running mean. "
             "All SpikingJelly models run in single-step mode.", "",
             "STA 'spiking_encoder' divides each calibrated range by `time_steps`, so one conversion serves "
             "one T: it is converted and run separately for time_steps = "
             + ", ".join(str(m["time_steps"]) for m in sta)
             + ".  With the input given once, its encoders emit their whole multi-level count at step 1; "
             + ("in every run its accuracy is the same at every t (its output settles at step 1).  "
                if sta_flat else "its accuracy still changes after step 1 in some runs (see below).  ")
             + "STA 'equivalent' "
             "does not spike: it is the ANN executed as analog time differences, shown for reference and "
             "left out of every spiking comparison.", "",
             "## Energy rule", "", r["energy_rule"], "",
             "Constants used (" + r["profile"] + "): " + ", ".join(f"{k} = {val:g}" for k, val in r["prices"].items())
             + ".", ""]
    for name, e in r["models"].items():
        ann = e["ann_accuracy"]
        lines += [f"## {MODEL_TITLES.get(name, name)}", "",
                  f"ANN accuracy {_pct(ann)} on these {r['limit']} images; {e['parameters']:,} parameters; one "
                  f"ANN forward of a batch of {r['timing_batch']}: {e['ann_forward_ms']:.1f} ms (peak RSS increase "
                  f"{e['ann_peak_rss_mib']:.0f} MiB); ANN energy "
                  f"(hw_sim, {r['profile']}, full) {e['ann_energy_j'] * 1e6:.3f} uJ per image.", "",
                  "### Accuracy after step t", "",
                  "| method | " + " | ".join(f"t={t}" for t in ts) + " | within 1 point | within 0.3 points |",
                  "|---|" + "---|" * (len(ts) + 2)]
        for m in e["methods"]:
            acc = m["accuracy"]
            cells = [_pct(acc[t - 1]) if t <= len(acc) else "" for t in ts]
            lines.append(f"| {m['name']} | " + " | ".join(cells) + f" | {_t(first_within(acc, ann, 0.01))} | "
                         f"{_t(first_within(acc, ann, 0.003))} |")
        lines += ["", "### Energy up to step t over one ANN forward", "",
                  "ECMT: hw_sim full mode, and in brackets the subset the SpikingJelly counter charges. "
                  "SpikingJelly: the hook counter, k events per graded value, and in brackets one event "
                  "per non-zero graded value.", "",
                  "| method | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
        for m in e["methods"]:
            main, alt = (m["hw_sim_full"], m["energy_1"]) if m["family"] == "ECMT" else (m["energy_k"], m["energy_1"])
            cells = [f"{main[t - 1]:.3f} ({alt[t - 1]:.3f})" if t <= len(main) else "" for t in ts]
            lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
        lines += ["", "### Cost", "",
                  f"Conversion time (including calibration); simulation time per step, median over "
                  f"{r['timing_batches']} batches of {r['timing_batch']} test images (the same batches for "
                  f"every method, a T = {T} run divided by T, after a warm-up run), and as multiples of one "
                  "ANN forward of the same batch; peak memory: the increase of the process's resident set "
                  f"size (RSS, sampled every ms) while running one batch of {r['timing_batch']} for T = {T} "
                  "steps.", "",
                  "| method | convert (s) | ms / step | x ANN forward | peak RSS increase (MiB) | "
                  "energy per step (x ANN) |", "|---|---|---|---|---|---|"]
        for m in e["methods"]:
            if "step_ms" not in m:
                lines.append(f"| {m['name']} | {m['convert_seconds']:.2f} | (time_steps = {T} row) | | | "
                             f"{(m.get('hw_sim_full') or m['energy_k'])[-1] / len(m['accuracy']):.3f} |")
                continue
            energy = m.get("hw_sim_full") or m["energy_k"]
            lines.append(f"| {m['name']} | {m['convert_seconds']:.2f} | {m['step_ms']:.1f} | "
                         f"{m['step_x_ann']:.2f} | {m['peak_rss_mib']:.0f} | {energy[-1] / len(energy):.3f} |")
        tg = e["targets"]
        lines += ["", "### Targets", "",
                  "Is ECMT on or above every spiking SpikingJelly recipe on the accuracy-energy plane?  Every "
                  "SpikingJelly point (each spiking recipe, each t) is compared with the best ECMT accuracy "
                  "(any ECMT method, any t) reachable at no more energy; the zero-energy point of the best "
                  f"constant answer ({_pct(tg['chance_accuracy'])}, the most frequent class among these images) "
                  "is part of ECMT's frontier, so SpikingJelly points at chance do not count against it.  One "
                  f"standard error of an accuracy near the ANN's on {r['limit']} images is "
                  f"{100 * math.sqrt(ann * (1 - ann) / r['limit']):.2f} points: smaller margins are within "
                  "sampling noise.", "",
                  "| energy view | SJ points | ECMT on or above all | smallest margin (points) | SJ points above ECMT |",
                  "|---|---|---|---|---|"]
        for view, vv in tg["views"].items():
            worst = "; ".join(f"{p['method']} t={p['t']}: {_pct(p['accuracy'])} at {p['energy']:.3f} "
                              f"(ECMT {_pct(p['ecmt_best_at_this_energy'])})"
                              for p in sorted(vv["points_above_ecmt"],
                                              key=lambda p: p["ecmt_best_at_this_energy"] - p["accuracy"])[:4])
            more = len(vv["points_above_ecmt"]) - 4
            lines.append(f"| {view}: {vv['description']} | {vv['sj_points']} | "
                         f"{'yes' if vv['ecmt_on_or_above_all'] else 'no'} | "
                         f"{100 * vv['min_margin']:+.2f} | {worst or '-'}{f' (+{more} more)' if more > 0 else ''} |")
        sc = tg["step_cost"]
        timed = [m for m in e["methods"] if "step_ms" in m]
        spans = {}
        for fam, spiking in (("ECMT", True), ("SpikingJelly", True)):
            ms = [m for m in timed if m["family"] == fam and m["spiking"] == spiking]
            if ms:
                lo, hi = min(ms, key=lambda m: m["step_ms"]), max(ms, key=lambda m: m["step_ms"])
                eps = [(m.get("hw_sim_full") or m["energy_k"])[-1] / len(m["accuracy"]) for m in ms]
                spans[fam] = (f"{lo['step_ms']:.1f}-{hi['step_ms']:.1f} ms per step "
                              f"({lo['step_x_ann']:.2f}-{hi['step_x_ann']:.2f} x the ANN forward), "
                              f"{min(eps):.3f}-{max(eps):.3f} x the ANN's energy per step at T = {T}")
        if len(spans) == 2:
            lines += ["", f"Per-step cost: ECMT {spans['ECMT']}; SpikingJelly's spiking recipes "
                      f"{spans['SpikingJelly']} (wall clock on this machine, batch of {r['timing_batch']}; energy "
                      "as in the energy table, requested view)."]
        lines += ["", "Per-step wall-clock cost, ECMT over SpikingJelly (ratio of ms per step; below 1: ECMT "
                  "is faster per step):", "",
                  "| ECMT | " + " | ".join(sc["sj_ms"]) + " |", "|---|" + "---|" * len(sc["sj_ms"])]
        for en, row in sc["ecmt_over_sj"].items():
            lines.append(f"| {en} ({sc['ecmt_ms'][en]:.1f} ms) | "
                         + " | ".join(f"{x:.2f}" for x in row.values()) + " |")
        est = [m for m in e["methods"] if "sj_estimator" in m]
        if est:
            lines += ["", "SpikingJelly's own estimator (`op_counter.SimpleEnergyProfiler`, on the first "
                      f"{est[0]['sj_estimator']['samples']} test images): SNN energy up to step t over the same "
                      "estimator's ANN forward.  It counts the aten ops PyTorch executes: an input counts as a "
                      "spike only if it is exactly 0/1, so rate-coded spikes multiplied by their threshold (the "
                      "voltage scalers) and the TD modules' recomputation on cumulative inputs are charged as "
                      "dense MACs; memory is 24.96 pJ/byte for weights and neuron state, but its memory counter "
                      "does not recognise SpikingJelly's own TD modules (0 bytes for the STA models, while the "
                      "ANN's weight reads are counted), so for them only the compute ratio is comparable; the "
                      "fused attention kernel of the torchvision ANN is disabled while it counts, and SDPA "
                      "products are invisible to it on both sides.  It measures this "
                      "PyTorch execution, not an event-driven chip, and is not applied to ECMT (whose graded "
                      "spikes it would likewise charge as MACs).", "",
                      "| method | " + " | ".join(f"compute, t={t}" for t in ts) + f" | total, t={T} |",
                      "|---|" + "---|" * (len(ts) + 1)]
            for m in est:
                rr, tot = m["sj_estimator"]["ratio_compute_per_t"], m["sj_estimator"]["ratio_total_per_t"]
                no_memory = m["sj_estimator"]["snn_counts_at_T"].get("memory_access_bytes", 0) == 0
                lines.append(f"| {m['name']} | " + " | ".join(f"{rr[t - 1]:.3f}" for t in ts)
                             + f" | {tot[-1]:.3f}{' (no SNN memory counted)' if no_memory else ''} |")
        lines.append("")
    lines += ["![accuracy against t](peers_accuracy.png)", "", "![accuracy against energy](peers_energy.png)", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
