"""SpikingGraph -> NIR graph (the ecmt-nir convention, docs/nir.md).

Every IR node becomes the NIR node that says what it computes, where NIR has
one, and otherwise a *convention node*: a NIR node of the right types whose
metadata ``ecmt.op`` holds the IR kind, attributes, IR shapes and layout, and
whose tensors travel as ``ecmt.tensor.<field>``.  Residual adds of equal
shapes write no node at all: their operands' edges converge on the consumer,
which NIR defines to sum them.

The file is written for the consumers as shipped (docs/nir.md, "Other NIR
consumers"): only nodes whose NIR meaning differs from what they compute
carry node metadata (nir 1.0.4, sinabs' pin, rejects metadata on Input,
Output, Linear, Scale, Conv2d and AvgPool2d); the graph metadata
``ecmt.nodes`` says what every NIR node is.  Bias-free linear layers are
Affine with a zero bias and average pools without padding are SumPool2d
(the node types every consumer maps), and IF nodes have no ``v_reset``
dataset (nir 1.0.8 reads it as 0, nir 1.0.4 has no such field).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math

import numpy as np

from ecmt import ir
from ecmt.errors import EcmtError
from ecmt.ir.dispatch import KindTable
from ecmt.ir.serialize import graph_to_json

from .layout import Layout, can_adapt, carrier_layout, channels_first, flatten_dims, identity

CONVENTION = "ecmt-nir"
VERSION = 2


class NirExportError(EcmtError):
    """The graph cannot be written as NIR (names the node)."""


@dataclasses.dataclass
class ExportSummary:
    standard: dict[str, int]          # IR kind -> nodes written as standard NIR nodes (or as edges)
    convention: dict[str, int]        # IR kind -> nodes written with the convention
    adapters: int                     # NIR-only nodes: layout changes, operand ports, PPN fan-outs
    depth_first_ok: bool = True       # Norse / sinabs (depth-first from the Input) run it in order
    unit_thresholds: list[str] | None = None   # MT neurons whose threshold moved into the weights
    spike_sizes: list[str] = dataclasses.field(default_factory=list)   # MT neurons followed by a size node
    target: str | None = None         # the consumer the file is written for (TARGETS), None: any
    computed: list[str] = dataclasses.field(default_factory=list)   # IR nodes written as the target computes them

    def __str__(self) -> str:
        fmt = lambda d: ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"
        text = (f"NIR export: {sum(self.standard.values())} standard nodes ({fmt(self.standard)}); "
                f"{sum(self.convention.values())} convention nodes ({fmt(self.convention)}); "
                f"{self.adapters} adapters")
        if self.unit_thresholds is not None:
            mt = sum(v for k, v in self.convention.items() if k.startswith("mt_neuron"))
            text += (f"\nunit thresholds: {len(self.unit_thresholds)} of {mt} MT neurons; spike sizes restored by "
                     f"{len(self.spike_sizes)} inserted standard nodes (1x1 Conv2d / Affine / Conv1d)")
        if self.target is not None:
            text += (f"\nwritten for {self.target}: {len(self.computed)} MT neurons and max pools as standard "
                     "subgraphs that library computes (docs/nir.md)")
        if not self.depth_first_ok:
            text += ("\nnote: consumers that run nodes depth-first from the Input (Norse, sinabs) would read "
                     "some inputs a step late in this graph (docs/nir.md)")
        return text


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _json_meta(key: str, **fields) -> dict:
    return {key: json.dumps({"convention": CONVENTION, "version": VERSION, **fields}, separators=(",", ":"))}


def _conv1d_fit(length_in: int, length_out: int) -> tuple[int, int]:
    """(padding, dilation) with which a 2-tap Conv1d maps length_in to length_out."""
    if length_out < length_in:
        return 0, length_in - length_out
    pad = (length_out - length_in + 2) // 2
    return pad, length_in + 2 * pad - length_out


class _Writer:
    def __init__(self, graph: ir.SpikingGraph, neuron: str = "IF", spike_sizes: bool = False,
                 target: str | None = None):
        import nir
        self.nir, self.g, self.neuron, self.spike_sizes, self.target = nir, graph, neuron, spike_sizes, target
        self.users: dict[str, list[ir.Node]] = collections.defaultdict(list)
        for n in graph:
            for i in n.inputs:
                self.users[i].append(n)
        self.windows: dict[str, int] = {}                # (norse, snntorch) max pool written as its window -> K
        self.units: dict[str, np.ndarray | None] = {}    # (sinabs) MT neuron -> a spike's value per channel
        self.head_start: list[tuple[str, np.ndarray]] = []   # (sinabs) IF node, its charge at step 1 per channel
        self.recurrent: list[tuple[str, str]] = []       # edges that carry the previous step's value
        self.roles: dict[str, dict] = {}                 # NIR node -> what it is (graph metadata ecmt.nodes)
        self.gain: dict[str, float] = {}                 # NIR node -> its NIR output / its IR value, where not 1
        self.nodes: dict[str, object] = {}
        self.edges: list[tuple[str, str]] = []
        self.layout: dict[str, Layout] = {}              # NIR node -> how its output holds its IR value
        self.value_of: dict[str, list[str]] = {}         # IR node -> NIR nodes whose sum is its value
        self.adapted: dict[tuple[str, Layout], str] = {}
        self.summary = ExportSummary(collections.Counter(), collections.Counter(), 0)
        self.consumer = ""

    # -- helpers ---------------------------------------------------------------------
    def add(self, name: str, node, layout: Layout, inputs: list[str], role: str = "standard",
            ir_node: str | None = None) -> str:
        self.nodes[name] = node
        self.layout[name] = layout
        self.roles[name] = {"node": ir_node, "role": role, "layout": layout.to_json()}
        self.edges.extend((src, name) for src in inputs)
        return name

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.nodes or name in self.g.nodes:
            i += 1
            name = f"{base}_{i}"
        return name

    def carrier_conv1d(self, in_shape, out_shape, metadata, weight=None, pad_dil=None):
        """A Conv1d of the right types; its metadata says what it really computes."""
        (c_in, l_in), (c_out, l_out) = in_shape, out_shape
        pad, dil = pad_dil or _conv1d_fit(l_in, l_out)
        w = np.zeros((c_out, c_in, 2), np.float32) if weight is None else weight
        return self.nir.Conv1d(input_shape=l_in, weight=w, stride=1, padding=pad, dilation=dil, groups=1,
                               bias=np.zeros(c_out, np.float32), metadata=metadata)

    def first_layout(self, ir_name: str) -> Layout:
        return self.layout[self.value_of[ir_name][0]]

    def feed(self, ir_name: str, want: Layout) -> list[str]:
        """The NIR nodes holding IR node `ir_name`'s value, each in layout `want`."""
        return [self.adapt(src, self.g.shapes[ir_name], want) for src in self.value_of[ir_name]]

    def fits(self, ir_name: str, want: Layout) -> bool:
        return all(can_adapt(self.layout[s], want) for s in self.value_of[ir_name])

    def adapt(self, src: str, ir_shape, want: Layout) -> str:
        """A NIR node whose output is `src`'s value in the layout `want`."""
        have = self.layout[src]
        if have == want:
            return src
        key = (src, want)
        if key in self.adapted:
            return self.adapted[key]
        if not can_adapt(have, want):
            raise NirExportError(
                f"node {self.consumer!r}: NIR cannot change the layout {list(have.shape)} -> {list(want.shape)} "
                "(it has no operation that adds axes)", hint="see docs/nir.md for what can be exported")
        meta = _json_meta("ecmt.adapter", role="layout", ir_shape=list(ir_shape),
                          **{"from": have.to_json(), "to": want.to_json()})
        name = self.unique(f"{src}.layout")
        dims = flatten_dims(have.shape, want.shape) if have.perm == want.perm else None
        if dims is not None:                                   # merging axes: a real Flatten
            node = self.nir.Flatten(input_type={"input": np.array(have.shape)}, start_dim=dims[0],
                                    end_dim=dims[1])
            result = self.add(name, node, want, [src], role="layout")
        elif len(have.shape) == 3:
            step = Layout((have.shape[0], have.shape[1] * have.shape[2]), have.perm)
            result = self.adapt(self.adapt(src, ir_shape, step), ir_shape, want)
        elif len(want.shape) == 1:
            result = self.adapt(self.adapt(src, ir_shape, Layout((1, want.shape[0]))), ir_shape, want)
        else:                                                  # any 2-d -> 2-d reordering
            result = self.add(name, self.carrier_conv1d(have.shape, want.shape, meta), want, [src], role="layout")
        self.adapted[key] = result
        return result

    def ports(self, operands: list[str]) -> list[str]:
        """Each operand, flat, placed at its offset in a shared flat vector by an
        exact Conv1d (weights 0 and 1), so NIR's sum of the edges concatenates them."""
        sizes = [math.prod(self.g.shapes[o]) for o in operands]
        total, offset, out = sum(sizes), 0, []
        for operand, n in zip(operands, sizes):
            flats = self.feed(operand, Layout((1, n)))
            if len(operands) == 1:
                return flats
            o, gap = offset, total - n
            if 2 * o >= gap + 1:        # late offsets: tap 0 reads x[j - pad]
                w, pad, dil = [1.0, 0.0], o, n + 2 * o - total
            elif 2 * o <= gap - 1:      # early offsets: tap 1 reads x[j - pad + dil]
                w, pad, dil = [0.0, 1.0], gap - o, gap - 2 * o
            else:                       # the middle: a 3-tap kernel, centre tap
                w, pad, dil = [0.0, 1.0, 0.0], o + 1, 1
            meta = _json_meta("ecmt.adapter", role="port", offset=o, size=n, total=total)
            weight = np.array(w, np.float32).reshape(1, 1, -1)
            for flat in flats:
                node = self.carrier_conv1d((1, n), (1, total), meta, weight=weight, pad_dil=(pad, dil))
                out.append(self.add(self.unique(f"{self.consumer}.port{len(out)}"), node, Layout((1, total)),
                                    [flat], role="port"))
            offset += n
        return out

    def op_meta(self, node: ir.Node, layout: Layout, input_layout: Layout | None = None, **extra) -> dict:
        """A convention node's metadata: ``ecmt.op`` (the IR kind, attributes, IR shapes,
        the layouts its NIR input and output hold the values in) and its tensors."""
        attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in node.attrs().items()}
        fields = dict(kind=node.KIND, standard=False, inputs=list(node.inputs), attrs=attrs,
                      shape=list(self.g.shapes[node.name]), input_shapes=[list(self.g.shapes[s]) for s in node.inputs],
                      tensor_shapes={f: list(t.shape) for f, t in node.tensors().items()}, layout=layout.to_json(),
                      **extra)
        if input_layout is not None:
            fields["input_layout"] = input_layout.to_json()
        meta = _json_meta("ecmt.op", **fields)
        for field, t in node.tensors().items():     # 1-d: HDF5 cannot compress scalars
            meta[f"ecmt.tensor.{field}"] = _np(t).reshape(-1)
        return meta

    # -- per node ----------------------------------------------------------------------
    def emit(self, node: ir.Node) -> None:
        """Write `node` in the first of its kind's forms (KINDS) that fits: a standard
        NIR node (the form returns True), a convention node (False); None: next form."""
        self.consumer = node.name
        shape = self.g.shapes[node.name]
        in_shapes = [self.g.shapes[s] for s in node.inputs]
        for form in KINDS(node):
            standard = form(self, node, shape, in_shapes)
            if standard is not None:
                break
        (self.summary.standard if standard else self.summary.convention).update([node.KIND])

    # -- standard forms: the NIR node that computes it; True, or None if NIR cannot --------
    def _standard(self, node, nn, layout: Layout, inputs: list[str]) -> bool:
        self.add(node.name, nn, layout, inputs, ir_node=node.name)
        self.value_of.setdefault(node.name, [node.name])
        return True

    def input(self, node, shape, in_shapes):
        return self._standard(node, self.nir.Input(input_type={"input": np.array(shape)}), identity(shape), [])

    def output(self, node, shape, in_shapes):
        nir, x = self.nir, node.inputs[0]
        want = identity(shape)
        sources = self.feed(x, want)
        if len(sources) > 1:     # a sum of edges: consumers do not sum into an Output, so a node does
            n = math.prod(shape)
            total = (nir.Affine(weight=np.eye(n, dtype=np.float32), bias=np.zeros(n, np.float32))
                     if len(shape) == 1 else nir.Scale(scale=np.ones(shape, np.float32)))
            sources = [self.add(self.unique(f"{x}.sum"), total, want, sources, role="sum")]
        return self._standard(node, nir.Output(output_type={"output": np.array(shape)}), want, sources)

    def converging_edges(self, node, shape, in_shapes):
        if len(set(node.inputs)) != len(node.inputs) or any(s != shape for s in in_shapes):
            return None
        # NIR sums the edges into a node: the add is the consumers' converging edges.
        self.value_of[node.name] = [s for i in node.inputs for s in self.value_of[i]]
        return True

    def linear(self, node, shape, in_shapes):
        nir, x = self.nir, node.inputs[0]
        if len(in_shapes[0]) not in (1, 2):
            return None
        w, bias = _np(node.weight), node.bias is not None
        b = _np(node.bias) if bias else np.zeros(w.shape[0], np.float32)
        if len(in_shapes[0]) == 1:      # Affine even without a bias: sinabs maps no Linear
            want, out = identity(in_shapes[0]), identity(shape)
            nn = nir.Affine(weight=w, bias=b)
        else:   # [tokens, features]: Conv1d with kernel 1, channels-first
            want, out = channels_first(in_shapes[0]), channels_first(shape)
            nn = nir.Conv1d(input_shape=in_shapes[0][0], weight=w[:, :, None], stride=1, padding=0,
                            dilation=1, groups=1, bias=b)
        if not self.fits(x, want):
            return None
        return self._standard(node, nn, out, self.feed(x, want))

    def conv2d(self, node, shape, in_shapes):
        x = node.inputs[0]
        # (NIR 1.0.8 types a grouped Conv2d's input as C / groups channels, which no
        # producer can match; grouped convolutions use the convention.)
        if node.groups != 1 or not self.fits(x, identity(in_shapes[0])):
            return None
        bias = _np(node.bias) if node.bias is not None else np.zeros(node.weight.shape[0], np.float32)
        nn = self.nir.Conv2d(input_shape=tuple(in_shapes[0][1:]), weight=_np(node.weight), stride=node.stride,
                             padding=node.padding, dilation=node.dilation, groups=node.groups, bias=bias)
        return self._standard(node, nn, identity(shape), self.feed(x, identity(in_shapes[0])))

    def avgpool2d(self, node, shape, in_shapes):
        x = node.inputs[0]
        # (Without padding it is a SumPool2d, below: Norse and sinabs map no AvgPool2d.)
        if not any(node.padding) or not self.fits(x, identity(in_shapes[0])):
            return None
        nn = self.nir.AvgPool2d(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride),
                                padding=np.array(node.padding))
        return self._standard(node, nn, identity(shape), self.feed(x, identity(in_shapes[0])))

    def flatten(self, node, shape, in_shapes):
        x = node.inputs[0]
        if flatten_dims(in_shapes[0], shape) is None or not self.fits(x, identity(in_shapes[0])):
            return None
        start, end = flatten_dims(in_shapes[0], shape)
        nn = self.nir.Flatten(input_type={"input": np.array(in_shapes[0])}, start_dim=start, end_dim=end)
        return self._standard(node, nn, identity(shape), self.feed(x, identity(in_shapes[0])))

    def scale(self, node, shape, in_shapes):
        x = node.inputs[0]
        # The factor, laid out like the value it scales.
        lay = self.first_layout(x)
        factor = np.broadcast_to(_np(node.factor), shape)
        if lay.perm is not None:
            factor = factor.transpose(lay.perm)
        nn = self.nir.Scale(scale=np.ascontiguousarray(factor).reshape(lay.shape))
        return self._standard(node, nn, lay, self.feed(x, lay))

    # -- convention forms: a NIR node of the same types; False, or None -------------------
    def neuron_or_ecm(self, node, shape, in_shapes):
        """An MT neuron as a NIR neuron, an elementwise / row-wise ECM as a Scale by 1."""
        x = node.inputs[0]
        lay = self.first_layout(x)
        meta, size = self.op_meta(node, lay, lay), None
        if isinstance(node, ir.MTNeuron):
            # For consumers that ignore the metadata: one threshold at the first positive
            # level (times the gain of a pool written as a sum).
            gain = self.gain.get(self.value_of[x][0], 1.0)
            th = np.broadcast_to(_np(node.th_pos), shape) * gain
            size = self.size_node(node, shape, lay) if self.spike_sizes else None
            if size is not None:
                meta = self.op_meta(node, lay, lay, spike_unit={"shape": list(node.th_pos.shape),
                                                                "values": size[1].reshape(-1).tolist()})
            nn = self.neuron_node(lay, th, meta)
        else:
            nn = self.nir.Scale(scale=np.ones(lay.shape, np.float32), metadata=meta)
        self.add(node.name, nn, lay, self.feed(x, lay), role="convention", ir_node=node.name)
        self.value_of[node.name] = [node.name]
        if isinstance(node, ir.MTNeuron) and self.target == "sinabs":
            half = self.channel_values(th * np.float32(0.5), shape, lay)
            if half is not None:
                self.head_start.append((node.name, half))
            # the value of one of sinabs' spikes, per channel (max_levels): u after a size node, else 1 if th is
            unit = size[1] if size is not None else _np(node.th_pos) if bool((node.th_pos == 1).all()) else None
            if unit is not None and lay == identity(shape) and len(shape) == 3:
                self.units[node.name] = self.channel_values(unit, shape, lay)
        if size is not None:
            self.value_of[node.name] = [self.add(self.unique(f"{node.name}.size"), size[0], lay, [node.name],
                                                 role="spike_size")]
            self.summary.spike_sizes.append(node.name)
        return False

    def size_node(self, node: ir.MTNeuron, shape, lay: Layout):
        """For consumers whose spikes are 1: the standard node that multiplies the neuron
        node's output by its threshold (a 1x1 Conv2d, an Affine or a kernel-1 Conv1d with a
        diagonal weight), and that unit u (node.th_pos's shape).  ecmt's node map divides
        the MT neuron's spikes by u, so that the size node gives them back bit for bit;
        u is th_pos, or the nearest float for which that holds for every level (spike_unit).
        None where no such node fits: spikes_per_step > 1, a threshold of 1 (moved into the
        weights), or a threshold that varies along a NIR axis other than the channels."""
        if node.spikes_per_step != 1:
            return None
        unit = spike_unit(node)
        if unit is None or bool((unit == 1).all()):
            return None
        per_channel = self.channel_values(unit, shape, lay)
        if per_channel is None or len(lay.shape) > 3:
            return None
        return self.pointwise(np.diag(per_channel), lay), unit

    # -- standard subgraphs for one consumer (target): docs/nir.md, "Files for one consumer" --
    def channel_values(self, t, shape, lay: Layout) -> np.ndarray | None:
        """A per-channel tensor (broadcasting to the IR `shape`) as one value per channel of
        the NIR layout (its first axis; a vector's elements); None if it varies within one."""
        full = np.broadcast_to(t if isinstance(t, np.ndarray) else _np(t), shape)
        if lay.perm is not None:
            full = full.transpose(lay.perm)
        full = np.ascontiguousarray(full).reshape(lay.shape)
        per = full.reshape(full.shape[0], -1) if len(lay.shape) > 1 else full.reshape(-1, 1)
        return per[:, 0].astype(np.float32) if (per == per[:, :1]).all() else None

    def pointwise(self, weight: np.ndarray, lay: Layout, bias: np.ndarray | None = None):
        """The standard node that maps the channels at every position by weight [out, in]:
        an Affine for vectors, a kernel-1 Conv1d for (C, L), a 1x1 Conv2d for (C, H, W)."""
        w = np.ascontiguousarray(weight, np.float32)
        zeros, nir = np.zeros(len(w), np.float32) if bias is None else np.asarray(bias, np.float32), self.nir
        if len(lay.shape) == 1:
            return nir.Affine(weight=w, bias=zeros)
        if len(lay.shape) == 2:
            return nir.Conv1d(input_shape=lay.shape[1], weight=w[:, :, None], stride=1, padding=0, dilation=1,
                              groups=1, bias=zeros)
        return nir.Conv2d(input_shape=tuple(lay.shape[1:]), weight=w[:, :, None, None], stride=1, padding=0,
                          dilation=1, groups=1, bias=zeros)

    def comparator(self, lay: Layout, threshold: float, metadata: dict | None = None):
        """A stateless comparison x > threshold per element: an LIF whose time constant is the
        consumer's own step (Norse 1e-3, snnTorch 1e-4), so that it keeps none of its membrane
        (Norse: v + dt / tau (x - v) = x; snnTorch: beta = 1 - dt / tau = 0)."""
        ones = np.ones(lay.shape, np.float32)
        return self.nir.LIF(tau=COMPARATOR_TAU[self.target] * ones, r=ones, v_leak=0 * ones,
                            v_threshold=np.float32(threshold) * ones, v_reset=0 * ones, metadata=metadata or {})

    def recurrent_mt(self, node, shape, in_shapes):
        """(Norse, snnTorch) The MT neuron itself, from standard nodes and recurrent edges:

        * membrane: an identity Affine / Conv whose own output (the previous step's) and the
          reset node's return to it: U_t = U_{t-1} + x_t - s_{t-1}, the MT membrane before
          the step's spike;
        * levels: U divided by each level's bound th (2^k - 1/2) (signed neurons: -U by th_neg's);
        * the comparator (an LIF that keeps no membrane) fires where U reaches a bound; after a
          max pool written as its window (max_window), U holds every window element and a
          second comparator takes the OR of the K elements (positive levels: max >= bound) or
          their AND (negative levels: max <= -bound);
        * spike: the levels' sum with weights th, th, 2 th, 4 th, ... is th 2^k for the highest
          level k crossed (the MT neuron's spike), and reset sends its negative back.
        Exact up to float rounding in the sums; None where this does not fit."""
        if self.target not in RECURRENT or type(node) is not ir.MTNeuron or node.spikes_per_step != 1:
            return None
        x = node.inputs[0]
        K = self.windows.get(x, 1)
        lay = identity(shape) if K > 1 else self.first_layout(x)
        if len(lay.shape) > 3:
            return None
        signs = [(1.0, self.channel_values(node.th_pos, shape, lay))]
        if node.signed:
            signs.append((-1.0, self.channel_values(node.th_neg, shape, lay)))
        if any(th is None for _, th in signs):
            return None
        sources = [x] if K > 1 else self.feed(x, lay)
        gain = np.float32(self.gain.get(self.value_of[x][0], 1.0))   # a SumPool2d's k^2 (the membrane holds gain U)
        C, L, rest = lay.shape[0], node.levels, lay.shape[1:]
        P = L * len(signs)
        bound, value = np.zeros((C, P), np.float32), np.zeros((C, P), np.float32)
        sign = np.repeat([s for s, _ in signs], L).astype(np.float32)
        for i, (s, th) in enumerate(signs):
            for k in range(L):
                bound[:, i * L + k] = th * np.float32(2.0 ** k) - th * np.float32(0.5)
                value[:, i * L + k] = s * th * np.float32(1.0 if k == 0 else 2.0 ** (k - 1))
        shaped = lambda channels: Layout((channels, *rest))  # noqa: E731
        meta = self.op_meta(node, lay, lay, target=self.target)
        membrane = self.unique(f"{node.name}.membrane")
        self.add(membrane, self.pointwise(np.eye(K * C), shaped(K * C)), shaped(K * C), sources + [membrane],
                 role="membrane")
        self.recurrent.append((membrane, membrane))
        a = np.arange(K * C)
        fan = np.zeros((K * C * P, K * C), np.float32)
        fan[(a[:, None] * P + np.arange(P)).ravel(), np.repeat(a, P)] = (sign[None, :] / (bound[a // K] * gain)).ravel()
        levels = self.add(self.unique(f"{node.name}.levels"), self.pointwise(fan, shaped(K * C)),
                          shaped(K * C * P), [membrane], role="levels")
        below_one = float(np.nextafter(np.float32(1), np.float32(0)))     # x > below_one: x >= 1
        if K == 1:
            bits = self.add(node.name, self.comparator(shaped(C * P), below_one, meta), shaped(C * P), [levels],
                            role="convention", ir_node=node.name)
        else:
            crossed = self.add(self.unique(f"{node.name}.crossed"), self.comparator(shaped(K * C * P), below_one),
                               shaped(K * C * P), [levels], role="levels")
            # OR of the K elements: sum > 1/2; AND: sum / (2K - 1) > 1/2, i.e. sum > K - 1/2
            join = np.zeros((C * P, K * C * P), np.float32)
            c, j, q = np.meshgrid(np.arange(C), np.arange(K), np.arange(P), indexing="ij")
            join[(c * P + q).ravel(), ((c * K + j) * P + q).ravel()] = np.where(sign[q] > 0, 1.0,
                                                                                1.0 / (2 * K - 1)).ravel()
            joined = self.add(self.unique(f"{node.name}.window"), self.pointwise(join, shaped(K * C * P)),
                              shaped(C * P), [crossed], role="levels")
            bits = self.add(node.name, self.comparator(shaped(C * P), 0.5, meta), shaped(C * P), [joined],
                            role="convention", ir_node=node.name)
        spike = np.zeros((C, C * P), np.float32)
        spike[np.repeat(np.arange(C), P), np.arange(C * P)] = value.ravel()
        reset = self.add(self.unique(f"{node.name}.reset"), self.pointwise(-gain * np.repeat(spike, K, axis=0),
                                                                          shaped(C * P)),
                         shaped(K * C), [bits], role="reset")
        self.edges.append((reset, membrane))
        self.recurrent.append((reset, membrane))
        self.value_of[node.name] = [self.add(self.unique(f"{node.name}.spike"), self.pointwise(spike, shaped(C * P)),
                                             lay, [bits], role="spike")]
        self.summary.computed.append(node.name)
        return False

    def add_head_starts(self) -> None:
        """(sinabs) An MT neuron fires level 0 from th / 2 on (it rounds); sinabs' IF fires at
        th (it floors).  Every MT neuron's IF node gets th / 2 at step 1 only (max_levels' IFs
        their own charges, the same way): a constant 1 and a constant
        1 - 2^-10 (a zero-weight node with those biases) each feed an IF with threshold 1;
        the first fires from step 1 on, the second from step 2 until step 1024, so their
        difference, times th / 2, is a pulse at step 1.  The chain hangs off the neuron's
        producer through which a depth-first walk (sinabs' order) reaches the neuron, its
        edge just before that one, so the walk still meets every node after its producers."""
        eps = np.float32(2.0 ** -10)
        parent, seen = {}, set()
        children = collections.defaultdict(list)
        for src, dst in self.edges:
            children[src].append(dst)
        stack = [(next(n for n, v in self.nodes.items() if type(v).__name__ == "Input"), None)]
        while stack:
            name, via = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            parent[name] = via
            stack.extend((c, name) for c in reversed(children[name]))
        for name, half in self.head_start:
            src, lay = parent.get(name), self.layout[name]
            if src is None or self.layout[src].shape[1:] != lay.shape[1:] or len(lay.shape) > 3:
                continue
            ones = np.ones((2, *lay.shape[1:]), np.float32)
            const = self.add(self.unique(f"{name}.const"),
                             self.pointwise(np.zeros((2, self.layout[src].shape[0])), self.layout[src],
                                            bias=np.array([1.0, 1.0 - eps], np.float32)),
                             Layout(ones.shape), [], role="head_start")
            self.edges.insert(self.edges.index((src, name)), (src, const))
            steps = self.add(self.unique(f"{name}.steps"), self.nir.IF(r=ones, v_threshold=ones, v_reset=0 * ones),
                             Layout(ones.shape), [const], role="head_start")
            pulse = self.add(self.unique(f"{name}.head_start"),
                             self.pointwise(np.stack([half, -half], 1), Layout(ones.shape)), lay, [steps],
                             role="head_start")
            self.edges.append((pulse, name))
            if name in self.g.nodes:
                self.summary.computed.append(name)

    def avg_conv(self, node, shape, in_shapes):
        """(Any target) An average pool as the Conv2d that computes it (weight 1 / k^2 on each
        channel's own window, zero padding counted): every consumer maps Conv2d, and no
        neuron need fold the SumPool2d's k^2 into its threshold (the demo CNN's last pool
        feeds the linear classifier, whose bias a k^2 would outweigh)."""
        x = node.inputs[0]
        if self.target is None or not self.fits(x, identity(in_shapes[0])):
            return None
        C, (kh, kw) = in_shapes[0][0], node.kernel_size
        w = np.zeros((C, C, kh, kw), np.float32)
        w[np.arange(C), np.arange(C)] = np.float32(1.0 / (kh * kw))
        nn = self.nir.Conv2d(input_shape=tuple(in_shapes[0][1:]), weight=w, stride=node.stride, padding=node.padding,
                             dilation=1, groups=1, bias=np.zeros(C, np.float32))
        return self._standard(node, nn, identity(shape), self.feed(x, identity(in_shapes[0])))

    def window_conv(self, node, in_shape):
        """The Conv2d that lays each pooling window's K elements out as K channels per
        channel (channel c K + j, the window read row by row), and K."""
        C, (kh, kw) = in_shape[0], node.kernel_size
        K = kh * kw
        w = np.zeros((C * K, C, kh, kw), np.float32)
        c, j = np.meshgrid(np.arange(C), np.arange(K), indexing="ij")
        w[(c * K + j).ravel(), c.ravel(), (j // kw).ravel(), (j % kw).ravel()] = 1.0
        return self.nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=w, stride=node.stride, padding=0, dilation=1,
                               groups=1, bias=np.zeros(C * K, np.float32)), K

    def max_window(self, node, shape, in_shapes):
        """(Norse, snnTorch) A max pool whose one consumer is an MT neuron: a Conv2d that lays
        each window's K elements out as K channels per channel (channel c K + j), from which
        that neuron (recurrent_mt) computes the max's comparisons exactly."""
        users = self.users[node.name]
        if (self.target not in RECURRENT or any(node.padding) or len(users) != 1
                or type(users[0]) is not ir.MTNeuron or users[0].spikes_per_step != 1
                or not self.fits(node.inputs[0], identity(in_shapes[0]))):
            return None
        mt = users[0]
        if any(t is not None and self.channel_values(t, shape, identity(shape)) is None
               for t in (mt.th_pos, mt.th_neg)):
            return None
        nn, K = self.window_conv(node, in_shapes[0])
        self.add(node.name, nn, Layout((in_shapes[0][0] * K, *shape[1:])),
                 self.feed(node.inputs[0], identity(in_shapes[0])), role="window", ir_node=node.name)
        self.windows[node.name] = K
        self.value_of[node.name] = [node.name]
        self.summary.computed.append(node.name)
        return True

    def max_levels(self, node, shape, in_shapes):
        """(sinabs, no recurrence) A max pool over a neuron's spikes, from IFs whose inputs
        only ever grow, so that sinabs' IF computes them exactly (its membrane never goes
        below -threshold, where sinabs clips it).  Each element's running input is a count n
        of spike units u, written in unary:

        * `<pool>.levels` (1x1 Conv2d, weight 1 / u) copies n to K channels per channel;
        * `<pool>.bits`: channel k < K - 1 is an IF with threshold BIT_THRESHOLD, charged at
          step 1 to BIT_THRESHOLD - (k + 1/2): one spike when n reaches k + 1, none after;
          channel K - 1 (threshold 1, charged 1/2) sends n itself;
        * `<pool>.window` (SumPool2d, the pool's window): w_k, how many elements of the window
          have reached level k + 1, and the window's sum of n;
        * `<pool>.extra`: an IF with threshold 1 charged to -1 (the clip, exactly) on the level
          channels sends w_k - 1 once w_k > 0, the elements that reach a level after the first;
          charged 1/2 on the count channel, it sends the sum of n;
        * `<pool>` (1x1 Conv2d): u (sum of n - sum_k (w_k - 1)) = u max_j n_j.
        Exact while at most one element of a window is above level K - 1 (then the sum of
        what they exceed it by, not the max)."""
        x = node.inputs[0]
        unit = self.units.get(x)
        if (self.target != "sinabs" or any(node.padding) or unit is None
                or not self.fits(x, identity(in_shapes[0]))):
            return None
        C, K = in_shapes[0][0], POOL_LEVELS
        full, pooled = Layout((C * K, *in_shapes[0][1:])), Layout((C * K, *shape[1:]))
        c, level = np.repeat(np.arange(C), K), np.tile(np.arange(K), C)       # channel c K + k
        bit = level < K - 1
        def per_channel(v, lay: Layout) -> np.ndarray:
            return np.broadcast_to(np.asarray(v, np.float32).reshape(-1, 1, 1), lay.shape)
        copy = np.zeros((C * K, C), np.float32)
        copy[np.arange(C * K), c] = np.float32(1) / unit[c]
        levels = self.add(self.unique(f"{node.name}.levels"), self.pointwise(copy, identity(in_shapes[0])), full,
                          self.feed(x, identity(in_shapes[0])), role="max")
        th = np.where(bit, np.float32(BIT_THRESHOLD), np.float32(1)).astype(np.float32)
        bits = self.add(self.unique(f"{node.name}.bits"), self.neuron_node(full, per_channel(th, full), {}), full,
                        [levels], role="max")
        charge = np.where(bit, th - (level + np.float32(0.5)), np.float32(0.5))      # step 1
        self.head_start.append((bits, charge.astype(np.float32)))
        window = self.add(self.unique(f"{node.name}.window"),
                          self.nir.SumPool2d(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride),
                                             padding=np.zeros(2, np.int64)), pooled, [bits], role="max")
        extra = self.add(self.unique(f"{node.name}.extra"), self.neuron_node(pooled, per_channel(1, pooled), {}),
                         pooled, [window], role="max")
        self.head_start.append((extra, np.where(bit, np.float32(-1), np.float32(0.5)).astype(np.float32)))
        total = np.zeros((C, C * K), np.float32)
        total[c, np.arange(C * K)] = np.where(bit, -unit[c], unit[c])
        self.add(node.name, self.pointwise(total, pooled), identity(shape), [extra], role="max", ir_node=node.name)
        self.value_of[node.name] = [node.name]
        self.summary.computed.append(node.name)
        return True

    def sum_pool(self, node, shape, in_shapes):
        # Max pooling (an ECM) and average pooling without padding, as a SumPool2d: the
        # pooling node every consumer maps.  A consumer that ignores the metadata sums.
        x = node.inputs[0]
        if not self.fits(x, identity(in_shapes[0])):
            return None
        nn = self.nir.SumPool2d(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride),
                                padding=np.array(node.padding),
                                metadata=self.op_meta(node, identity(shape), identity(in_shapes[0])))
        self.add(node.name, nn, identity(shape), self.feed(x, identity(in_shapes[0])), role="convention",
                 ir_node=node.name)
        if isinstance(node, ir.AvgPool2d):
            self.gain[node.name] = float(math.prod(node.kernel_size))
        self.value_of[node.name] = [node.name]
        return False

    def ppn_neuron(self, node: ir.MTNeuronPPN, shape, in_shapes):
        """The binary-channel neuron: a fan-out copies each channel's input current
        to its L level channels (a synaptic node with weights 1), and a neuron node
        of the expanded shape fires at most one of them."""
        nir, in_shape = self.nir, in_shapes[0]
        L = node.channels_per_value
        rank, axis = len(in_shape), node.axis
        channels = in_shape[axis]
        copy = np.zeros((channels * L, channels), np.float32)
        copy[np.arange(channels * L), np.repeat(np.arange(channels), L)] = 1.0
        zeros = np.zeros(channels * L, np.float32)
        if rank == 3 and axis == 0:
            want, out = identity(in_shape), identity(shape)
            fan = nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=copy[:, :, None, None], stride=1, padding=0,
                             dilation=1, groups=1, bias=zeros)
        elif rank == 1:
            want, out = identity(in_shape), identity(shape)
            fan = nir.Affine(weight=copy, bias=zeros)
        elif rank == 2 and axis == 1:
            want, out = channels_first(in_shape), channels_first(shape)
            fan = nir.Conv1d(input_shape=in_shape[0], weight=copy[:, :, None], stride=1, padding=0, dilation=1,
                             groups=1, bias=zeros)
        else:
            return None
        if not self.fits(node.inputs[0], want):
            return None
        fan_name = self.add(self.unique(f"{node.name}.fan_out"), fan, out, self.feed(node.inputs[0], want),
                            role="fan_out")
        lam = ir.ppn.level_values(node, channels)                         # [channels, L]
        th = np.abs(_np(lam)).reshape(-1)                                 # one threshold per binary channel
        view = [1] * rank
        view[axis] = channels * L
        th = np.broadcast_to(th.reshape(view), shape)
        nn = self.neuron_node(out, th, self.op_meta(node, out, out, fan_out=fan_name))
        self.add(node.name, nn, out, [fan_name], role="convention", ir_node=node.name)
        self.value_of[node.name] = [node.name]
        return False

    def neuron_node(self, layout: Layout, threshold: np.ndarray, metadata: dict):
        """The NIR neuron that carries an MT neuron: what a consumer that ignores the
        metadata runs.  "IF": NIR's IF, r = 1, reset to 0.  "LIF": an LIF with tau = 1e4
        and r = tau / 1e-4, which snnTorch 1.0.0 (dt = 1e-4) reads as a reset-to-zero IF
        that, unlike its IF import, chains into the next layer."""
        th = threshold.transpose(layout.perm) if layout.perm is not None else threshold
        th = np.ascontiguousarray(th, np.float32).reshape(layout.shape)
        ones, zeros = np.ones(layout.shape, np.float32), np.zeros(layout.shape, np.float32)
        if self.neuron == "LIF":
            return self.nir.LIF(tau=1e4 * ones, r=1e8 * ones, v_leak=zeros, v_threshold=th, v_reset=zeros,
                                metadata=metadata)
        return self.nir.IF(r=ones, v_threshold=th, v_reset=zeros, metadata=metadata)

    def generic(self, node, shape, in_shapes):
        """Any node: a Conv1d carrier fed by its operands' ports (convention: False)."""
        operands = list(node.inputs) or [self.g.input.name]   # a constant ignores the graph input it hangs on
        ports = self.ports(operands)
        sizes = [math.prod(self.g.shapes[o]) for o in operands]
        out = carrier_layout(shape)
        meta = self.op_meta(node, out, operand_sizes=sizes)
        self.add(node.name, self.carrier_conv1d((1, sum(sizes)), out.shape, meta), out, ports, role="convention",
                 ir_node=node.name)
        self.value_of[node.name] = [node.name]
        return False


# Each node kind's NIR forms, tried in order (see _Writer.emit): every kind ends with the
# generic carrier, which always fits, except the three that are always standard.
_G = _Writer.generic
KINDS = KindTable("NIR", {
    ir.Input: (_Writer.input,),
    ir.Output: (_Writer.output,),
    ir.Scale: (_Writer.scale,),
    ir.Constant: (_G,),
    ir.Linear: (_Writer.linear, _G),
    ir.Conv2d: (_Writer.conv2d, _G),
    ir.AvgPool2d: (_Writer.avg_conv, _Writer.avgpool2d, _Writer.sum_pool, _G),
    ir.MaxPool2d: (_Writer.max_window, _Writer.max_levels, _Writer.sum_pool, _G),
    ir.MTNeuron: (_Writer.recurrent_mt, _Writer.neuron_or_ecm, _G),
    ir.MTNeuronPPN: (_Writer.ppn_neuron, _G),
    **{ecm: (_Writer.neuron_or_ecm, _G)
       for ecm in (ir.GELUECM, ir.ReLUECM, ir.ElementwiseECM, ir.SoftmaxECM, ir.LayerNormECM)},
    ir.ProductECM: (_G,),
    ir.Add: (_Writer.converging_edges, _G),
    ir.Reshape: (_Writer.flatten, _G),
    **{op: (_G,) for op in (ir.Permute, ir.Slice, ir.Select, ir.Concat, ir.Mean)},
}, error=lambda node, message, hint: NirExportError(f"node {node.name!r} ({node.KIND}): {message}", hint=hint))

NEURONS = ("IF", "LIF")
# Files for one consumer (docs/nir.md): Norse and snnTorch give a recurrent edge the previous
# step's value, so MT neurons and max pools are written exactly (recurrent_mt, max_window); sinabs runs all
# steps in one call and no recurrence, so its file has IF neurons, size nodes and max_levels.
TARGETS = ("norse", "snntorch", "sinabs")
RECURRENT = ("norse", "snntorch")
COMPARATOR_TAU = {"norse": 1e-3, "snntorch": 1e-4}      # each library's step dt (norse.from_nir, snntorch's import)
# (sinabs) max_levels: the levels per element (K - 1 unary levels and the count; 32 keep the demo CNN's
# pool exact at T = 32 on 99.9% of the windows, docs/nir.md), and the threshold of a level's IF, so high
# that it fires once (2^16 units: T up to 512 at 128 units a step; float32 keeps half-units there).
POOL_LEVELS = 32
BIT_THRESHOLD = 2.0 ** 16


def spike_unit(node: ir.MTNeuron) -> np.ndarray | None:
    """u (th_pos's shape, float32) with (s / u) * u == s in float32 for every spike s the
    neuron sends with one level per step (+th_pos 2^k, -th_neg 2^k): th_pos where that
    holds, else the nearest float to it that does; None if none within 64 ulps."""
    th = _np(node.th_pos)
    levels = 2.0 ** np.arange(node.levels, dtype=np.float32)
    unit = np.empty_like(th)
    for i, t in np.ndenumerate(th):
        spikes = [t * levels]
        if node.th_neg is not None:
            spikes.append(-np.broadcast_to(_np(node.th_neg), th.shape)[i] * levels)
        s = np.concatenate(spikes).astype(np.float32)
        down = up = np.float32(t)
        for _ in range(64):
            found = next((u for u in (down, up) if ((s / u).astype(np.float32) * u == s).all()), None)
            if found is not None:
                unit[i] = found
                break
            down, up = np.nextafter(down, np.float32(0)), np.nextafter(up, np.float32(np.inf))
        else:
            return None
    return unit


def to_nir(graph: ir.SpikingGraph, neuron: str = "IF", spike_sizes: bool = False, target: str | None = None):
    """The NIR graph of `graph`, and the export summary.  `neuron` names the NIR neuron
    that carries MT neurons for consumers that ignore the metadata (see neuron_node);
    with spike_sizes=True a standard node after each MT neuron whose threshold is not
    1 gives a consumer's unit spike its size (size_node).  `target` (one of TARGETS)
    writes MT neurons and max pools as standard subgraphs that library computes them
    with (recurrent_mt, max_window, max_levels)."""
    import nir
    if neuron not in NEURONS:
        raise NirExportError(f"neuron {neuron!r}: must be one of {', '.join(NEURONS)}")
    if target is not None and target not in TARGETS:
        raise NirExportError(f"target {target!r}: must be one of {', '.join(TARGETS)}")
    graph.validate()
    w = _Writer(graph, neuron, spike_sizes, target)
    for node in graph:
        w.emit(node)
    w.add_head_starts()
    desc = graph_to_json(graph)
    desc["convention"] = {"name": CONVENTION, "version": VERSION}
    meta = {"ecmt.description": json.dumps(desc, separators=(",", ":")),
            "ecmt.nodes": json.dumps(w.roles, separators=(",", ":"))}
    if target is not None:
        meta["ecmt.target"] = target
    w.summary.adapters = sum(r["role"] in ("layout", "port", "fan_out", "sum") for r in w.roles.values())
    w.summary.target = target
    w.summary.depth_first_ok = depth_first_is_topological(w.nodes, w.edges, w.recurrent)
    return nir.NIRGraph(nodes=w.nodes, edges=w.edges, metadata=meta), w.summary


def depth_first_is_topological(nodes: dict, edges: list[tuple[str, str]], recurrent=()) -> bool:
    """Whether a depth-first walk from the Input, children in edge-list order (how
    nirtorch's legacy loader, and so Norse and sinabs, order a graph), meets every
    node after all its producers and ends at the Output.  `recurrent` edges are meant
    to carry the previous step's value and do not count."""
    children, producers = collections.defaultdict(list), collections.defaultdict(set)
    for src, dst in edges:
        children[src].append(dst)
        if (src, dst) not in recurrent:
            producers[dst].add(src)
    start = next(n for n, node in nodes.items() if type(node).__name__ == "Input")
    order, seen, stack = [], set(), [start]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        order.append(name)
        stack.extend(reversed(children[name]))
    position = {n: i for i, n in enumerate(order)}
    return (len(order) == len(nodes) and type(nodes[order[-1]]).__name__ == "Output"
            and all(position[p] < position[n] for n in order for p in producers[n]))
