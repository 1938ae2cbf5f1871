"""ecmt models under NeuroBench (Yik et al., Nature Communications 2025) as shipped,
and hw_sim's counts arranged as NeuroBench's metrics.

``NeuroBenchModel(spiking_model, T)`` is a NeuroBench model: NeuroBench's
``Benchmark(model, dataloader, preprocessors, postprocessors, [static, workload]).run()``
takes it unchanged.  It runs the graph with ecmt's executor and shows NeuroBench's
hooks what each step really did:

* every Linear / Conv2d node as an ``nn.Linear`` / ``nn.Conv2d`` with the node's
  weights, called with the node's real input at every step the executor computes
  the node (at step 1 only for the nodes of the constant input stream), so that
  NeuroBench's synaptic operations are counted on the increments the executor
  multiplied;
* every MT neuron as an activation module that the adapter registers, an snnTorch
  ``SpikingNeuron`` (NeuroBench records membranes of those only): at each step it
  takes the neuron's input, returns the executor's spikes and holds the executor's
  membrane after the step as ``mem``;
* every other node's tensors (layer norm weights, constants, scale factors) as
  parameters of a plain module, so that the static metrics cover the whole graph.
  What the other nodes compute (ECMs, products of two spike streams, adds,
  pooling) NeuroBench does not see.

Data come as (batch, timesteps, ...) with the image at step 1, as the executor
takes it (one image, a constant input stream); later steps, if given, must repeat
it.  ``first_step`` is the preprocessor that adds the time axis to images.  The
model returns the output's increment at every step, (batch, T, classes), so that
NeuroBench's ``ChooseMaxCount`` gives the class of the running estimate at T.

``hw_sim_metrics`` arranges hw_sim's per-node counts as NeuroBench's metrics;
``DEFINITIONS`` says, metric by metric, where the two definitions differ
(docs/energy.md, "NeuroBench").
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn

from . import ir
from .errors import DataError, EcmtError
from .ir.dispatch import KindTable
from .runtime import SpikingModel

try:
    import snntorch
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.workload import (ActivationSparsity, ActivationSparsityByLayer, ClassificationAccuracy,
                                             MembraneUpdates, SynapticOperations)
    from neurobench.models import NeuroBenchModel as _NeuroBenchModel
    from neurobench.processors.postprocessors import ChooseMaxCount
except ImportError as err:              # pragma: no cover - the dev extra installs both
    raise EcmtError(f"ecmt.neurobench needs NeuroBench 2.3 and snnTorch ({err})",
                    hint="install them with: .venv/bin/pip install -c constraints.txt -e '.[neurobench]'") from None

# NeuroBench's metrics that apply to a classifier (MSE, sMAPE, R2 and COCO mAP are for
# regression and detection tasks).  NeuronOperations is left out: see DEFINITIONS.
STATIC_METRICS = (ParameterCount, Footprint, ConnectionSparsity)
WORKLOAD_METRICS = (ClassificationAccuracy, ActivationSparsity, ActivationSparsityByLayer, MembraneUpdates,
                    SynapticOperations)


class MTActivation(snntorch.SpikingNeuron):
    """One MT neuron as NeuroBench sees it: called with the neuron's input at a step, it
    returns the spikes the executor computed from it, and ``mem`` is then the executor's
    membrane after the step (a new tensor each step: NeuroBench compares the one before
    a call with the one after it)."""

    def __init__(self, node: ir.MTNeuron):
        # init_hidden: the neuron keeps its own state and returns spikes only.  The MT
        # neuron resets by subtraction; the threshold buffer is the node's positive one.
        # (snnTorch lists every neuron it makes in SpikingNeuron.instances; the membrane
        # is let go after each run, so what that list keeps alive is the thresholds.)
        super().__init__(threshold=node.th_pos.clone(), init_hidden=True, reset_mechanism="subtract")
        if node.th_neg is not None:
            self.register_buffer("threshold_neg", node.th_neg.clone())
        self.mem = torch.zeros(0)
        self.step: tuple[torch.Tensor, torch.Tensor] | None = None   # (spikes, membrane), set by the adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes, self.mem = self.step
        self.step = None
        return spikes

    def reset_mem(self) -> None:
        self.mem = torch.zeros(0)


class NodeTensors(nn.Module):
    """The tensors of a node NeuroBench has no module for, as parameters."""

    def __init__(self, node: ir.Node):
        super().__init__()
        for field, tensor in node.tensors().items():
            self.register_parameter(field, nn.Parameter(tensor.clone(), requires_grad=False))


def _weights(layer: nn.Module, node: ir.Linear | ir.Conv2d) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(node.weight)
        if node.bias is not None:
            layer.bias.copy_(node.bias)
    return layer.requires_grad_(False)


def _linear(node: ir.Linear) -> nn.Module:
    out_f, in_f = node.weight.shape
    return _weights(nn.Linear(in_f, out_f, bias=node.bias is not None), node)


def _conv2d(node: ir.Conv2d) -> nn.Module:
    c_out, c_in_g, kh, kw = node.weight.shape
    return _weights(nn.Conv2d(c_in_g * node.groups, c_out, (kh, kw), node.stride, node.padding, node.dilation,
                              node.groups, bias=node.bias is not None), node)


def _neuron(node: ir.MTNeuron) -> nn.Module:
    return MTActivation(node)


def _hidden(node: ir.Node) -> nn.Module | None:
    return NodeTensors(node) if node.tensors() else None


# What NeuroBench sees of each node kind: a connection layer, a spiking neuron, or only
# the node's tensors (the executor runs it; NeuroBench's hooks have no kind for it).
KINDS = KindTable("NeuroBench", {
    ir.Linear: _linear,
    ir.Conv2d: _conv2d,
    ir.MTNeuron: _neuron,
    ir.MTNeuronPPN: _neuron,
    **{kind: _hidden for kind in (
        ir.Input, ir.Constant, ir.Output, ir.NonlinearityECM, ir.MaxPool2d, ir.ProductECM, ir.Add, ir.Scale,
        ir.Reshape, ir.Permute, ir.Slice, ir.Select, ir.Concat, ir.Mean, ir.AvgPool2d)},
})


def first_step(batch):
    """NeuroBench preprocessor: (images [B, ...], labels) -> (images [B, 1, ...], labels)."""
    x, y = batch
    return x.unsqueeze(1), y


class NeuroBenchModel(_NeuroBenchModel):
    """A SpikingModel (or SpikingGraph) run for T steps, as a NeuroBench model."""

    def __init__(self, spiking_model: SpikingModel | ir.SpikingGraph, T: int):
        super().__init__()
        if isinstance(spiking_model, ir.SpikingGraph):
            spiking_model = SpikingModel(spiking_model)
        if int(T) < 1:
            raise EcmtError(f"NeuroBenchModel: T must be >= 1, got {T}")
        self.spiking_model, self.T = spiking_model, int(T)
        modules = {}                         # by module name: node names with '/' for '.'
        self.watched: dict[str, nn.Module] = {}          # the modules NeuroBench's hooks watch, by node
        for node in spiking_model.graph:     # every node's kind is looked up before any work
            module = KINDS(node)(node)
            if module is None:
                continue
            key = node.name.replace(".", "/")
            if key in modules:
                raise EcmtError(f"NeuroBenchModel: node {node.name!r} and another node both become module {key!r}",
                                hint="rename one of them")
            modules[key] = module
            if isinstance(module, (nn.Linear, nn.Conv2d, MTActivation)):
                self.watched[node.name] = module
        self.net = nn.ModuleDict(modules).eval()
        self.add_activation_module(MTActivation)

    def __net__(self) -> nn.Module:
        return self.net

    def _image(self, data: torch.Tensor) -> torch.Tensor:
        shape = tuple(self.spiking_model.graph.shapes[self.spiking_model.graph.input.name])
        if data.dim() != len(shape) + 2 or tuple(data.shape[2:]) != shape:
            raise DataError(f"NeuroBenchModel: data of shape {list(data.shape)}; the graph takes (batch, "
                            f"timesteps, {', '.join(map(str, shape))})",
                            hint="add the time axis with the preprocessor ecmt.neurobench.first_step")
        steps = data.shape[1]
        if steps not in (1, self.T):
            raise DataError(f"NeuroBenchModel: data with {steps} time steps; the model runs T = {self.T} steps "
                            "from the image at step 1", hint="give 1 step, or T equal ones")
        if steps > 1 and not bool((data == data[:, :1]).all()):
            raise DataError("NeuroBenchModel: the time steps of the data differ; ecmt's executor takes one "
                            "image and feeds it at every step", hint="give the image at step 1 only")
        return data[:, 0]

    def __call__(self, data: torch.Tensor) -> torch.Tensor:
        """(batch, timesteps, ...) -> the output's increments, (batch, T, ...)."""
        x = self._image(data)
        tensors = [*self.net.parameters(), *self.net.buffers()]
        device = tensors[0].device if tensors else x.device     # where NeuroBench put the model
        executor = self.spiking_model.executor(device)
        static = {step.node.name for step in executor.steps if step.static}
        output = self.spiking_model.graph.output.name
        batch = x.shape[0]
        full = lambda z: z.expand(batch, *z.shape[1:])     # nodes of constants run with batch 1
        increments = []

        def observe(node, inputs, out, t):
            if node.name == output:
                increments.append(full(out))
            module = self.watched.get(node.name)
            if module is None or (t > 1 and node.name in static):
                return
            if isinstance(module, MTActivation):
                module.step = (full(out), full(executor.state(node.name).v).clone())
            module(full(inputs[0]))

        neurons = [m for m in self.watched.values() if isinstance(m, MTActivation)]
        for m in neurons:
            m.reset_mem()
        executor.run(x, self.T, observer=observe)
        for m in neurons:                    # let go of the last membranes
            m.reset_mem()
        return torch.stack(increments, dim=1)


def run(spiking_model: SpikingModel | ir.SpikingGraph, images: torch.Tensor, labels: torch.Tensor, T: int,
        batch_size: int = 256, device=None) -> dict:
    """NeuroBench's metrics (STATIC_METRICS, WORKLOAD_METRICS) of the model run for T steps
    on `images` [N, ...] with `labels`, from ``Benchmark(...).run()`` as shipped."""
    from torch.utils.data import DataLoader, TensorDataset
    model = NeuroBenchModel(spiking_model, T)
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size)
    bench = Benchmark(model, loader, [first_step], [ChooseMaxCount()], [list(STATIC_METRICS), list(WORKLOAD_METRICS)])
    return bench.run(quiet=True, device=None if device is None else str(device))


def hook_bytes(graph: ir.SpikingGraph, batch: int, T: int) -> int:
    """Bytes NeuroBench's hooks keep for one batch (for ecmt.memory.check): every watched
    layer's input of every step, and each MT neuron's input, output and two membranes."""
    size = lambda name: math.prod(graph.shapes[name])
    per_step = (sum(size(n.inputs[0]) for n in graph if isinstance(n, (ir.Linear, ir.Conv2d)))
                + sum(size(n.inputs[0]) + 3 * size(n.name) for n in graph.of_kind(ir.MTNeuron)))
    return 4 * batch * T * per_step


# -- hw_sim's counts as NeuroBench's metrics ------------------------------------------------

def _spike_sources(graph: ir.SpikingGraph, name: str) -> list[ir.MTNeuron]:
    """The MT neurons whose spikes reach `name` unchanged in value (through shape-only nodes)."""
    node = graph[name]
    if isinstance(node, ir.MTNeuron):
        return [node]
    return [mt for s in node.inputs for mt in _spike_sources(graph, s)] if node.SHAPE_ONLY else []


def unit_spikes(neuron: ir.MTNeuron) -> bool:
    """Whether every spike of `neuron` is -1, 0 or 1 (NeuroBench's test for an accumulate):
    one level of threshold 1, or PPN's one-hot level channels."""
    if isinstance(neuron, ir.MTNeuronPPN):
        return True
    return neuron.levels == 1 and bool((neuron.th_pos == 1).all()) and (
        neuron.th_neg is None or bool((neuron.th_neg == 1).all()))


def hw_sim_metrics(graph: ir.SpikingGraph, totals: Mapping[str, Mapping[str, float]]) -> dict:
    """hw_sim's counts arranged as NeuroBench's metrics.  `totals`: per node name, hw_sim's
    counts per inference (fields of hw_sim.counting.FIELDS), as report.json's
    ``counts.layers`` has them (summed over the steps that are compared).

    Effective_ACs: synaptic ops of the Linear / Conv2d layers fed by unit spikes;
    Effective_MACs: those of the layers fed by graded spikes, plus the layers fed by
    analog values (a Linear's non-zero inputs times its width, hw_sim's paper count; a
    convolution's dense MACs, as hw_sim counts no zero inputs there); Dense; and the
    neuron counts.  ProductSOPs / ProductMACs are hw_sim's counts of the products of two
    streams, which NeuroBench does not see."""
    acs = macs = dense = 0.0
    for n in graph:
        if not isinstance(n, (ir.Linear, ir.Conv2d)):
            continue
        c = totals[n.name]
        dense += c["dense"]
        if graph.spiking[n.inputs[0]]:
            unit = all(unit_spikes(mt) for mt in _spike_sources(graph, n.inputs[0]))
            acs, macs = (acs + c["sops"], macs) if unit else (acs, macs + c["sops"])
        else:
            macs += c["paper_sops"] if isinstance(n, ir.Linear) else c["macs"]
    neurons = graph.of_kind(ir.MTNeuron)
    updates = sum(totals[n.name]["neuron_updates"] for n in neurons)
    spikes = sum(totals[n.name]["spikes"] for n in neurons)
    products = graph.of_kind(ir.ProductECM)
    return {
        "Effective_ACs": acs, "Effective_MACs": macs, "Dense": dense,
        "MembraneUpdates": updates,
        "ActiveUpdates": sum(totals[n.name]["active_updates"] for n in neurons),
        "ActivationSparsity": 1 - spikes / updates if updates else 0.0,
        "ActivationSparsityByLayer": {
            n.name.replace(".", "/"): 1 - totals[n.name]["spikes"] / totals[n.name]["neuron_updates"]
            for n in neurons if totals[n.name]["neuron_updates"]},
        "ProductSOPs": sum(totals[n.name]["sops"] for n in products),
        "ProductMACs": sum(totals[n.name]["macs"] for n in products),
    }


# One sentence per metric: what NeuroBench counts, what hw_sim counts beside it, and
# where the definitions differ (docs/energy.md repeats them).
DEFINITIONS = {
    "ClassificationAccuracy": "the same: the class of the running estimate at T (the model returns the output's "
                              "increments and ChooseMaxCount takes the class of their sum).",
    "ParameterCount": "the graph's tensors, less the MT thresholds, which NeuroBench (after snnTorch) keeps as "
                      "buffers; hw_sim reports no parameter count.",
    "Footprint": "the graph's tensors in float32 plus snnTorch's 12 bytes of buffers per MT neuron; hw_sim "
                 "reports no footprint (it prices weight reads at its profile's value width).",
    "ConnectionSparsity": "the share of zero weights; hw_sim charges every weight of a fan-out, zero or not, so "
                          "where this is above 0 NeuroBench's effective operations are lower than hw_sim's.",
    "ActivationSparsity": "the same: the share of MT outputs that are zero, over neurons and steps (1 - spikes / "
                          "neuron updates; a PPN neuron's outputs are its level channels in both).",
    "ActivationSparsityByLayer": "the same, per MT neuron.",
    "MembraneUpdates": "NeuroBench counts every neuron at the first step and afterwards only those whose membrane "
                       "changed, hw_sim's neuron updates every neuron at every step: they differ by the updates "
                       "whose input equals the spike (no input and no spike included); hw_sim's active updates "
                       "count non-zero inputs instead (and hw_sim counts a PPN neuron's updates per level "
                       "channel).",
    "Effective_ACs": "the same: non-zero input times non-zero weight of a Linear or Conv2d layer, where the "
                     "input is a unit spike (-1, 0 or 1: one level with threshold 1, or PPN channels), hw_sim's "
                     "synaptic ops of those layers.",
    "Effective_MACs": "NeuroBench calls every other non-zero input a MAC: a graded spike th * 2^k, which "
                      "hw_sim counts as one synaptic op (an add on neuromorphic hardware), and an analog value, "
                      "which hw_sim counts densely in a convolution (so NeuroBench's count is lower where such "
                      "an input is zero) and by non-zero inputs in a Linear layer.",
    "Dense": "the same: every (input, weight) pair of every Linear and Conv2d layer at every step it runs, "
             "convolution borders excluded, the layers of the constant input stream once.",
    "NeuronOperations": "not reported: NeuroBench prices snnTorch's Leaky, Synaptic, Lapicque and Alpha neurons "
                        "from a table and fails on any other neuron (it then reports 0); hw_sim prices an MT "
                        "update as levels + 2 adds on CMOS, or as a compartment update.",
    "ProductSOPs": "NeuroBench has no connection layer for a product of two activations (attention's Q K^T and "
                   "A V): only hw_sim counts their synaptic ops and MACs.",
    "ECMs": "ECM nonlinearities, adds, scales and pooling are neither connection nor activation layers for "
            "NeuroBench; hw_sim counts their adds, multiplies and special functions.",
}


def _number(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:,.1f}"
    return f"{v:,}"


def comparison(nb: Mapping, hw: Mapping) -> list[tuple[str, str, str]]:
    """(metric, NeuroBench's value, hw_sim's value) rows for a table; `hw` is
    hw_sim_metrics' result, with the accuracy at T as ClassificationAccuracy."""
    syn = nb.get("SynapticOperations", {})
    rows = [("ClassificationAccuracy", nb.get("ClassificationAccuracy"), hw.get("ClassificationAccuracy")),
            ("ParameterCount", nb.get("ParameterCount"), None),
            ("Footprint", nb.get("Footprint"), None),
            ("ConnectionSparsity", nb.get("ConnectionSparsity"), None),
            ("ActivationSparsity", nb.get("ActivationSparsity"), hw["ActivationSparsity"]),
            ("MembraneUpdates", nb.get("MembraneUpdates"), hw["MembraneUpdates"]),
            ("ActiveUpdates", None, hw["ActiveUpdates"]),
            ("Effective_ACs", syn.get("Effective_ACs"), hw["Effective_ACs"]),
            ("Effective_MACs", syn.get("Effective_MACs"), hw["Effective_MACs"]),
            ("Dense", syn.get("Dense"), hw["Dense"]),
            ("ProductSOPs", None, hw["ProductSOPs"]),
            ("ProductMACs", None, hw["ProductMACs"])]
    return [(name, _number(a), _number(b)) for name, a, b in rows]


def table(nb: Mapping, hw: Mapping) -> str:
    """NeuroBench's metrics beside hw_sim's counts, per inference, as printed by `ecmt energy --neurobench`."""
    rows = comparison(nb, hw)
    lines = [f"{'metric':<24}{'NeuroBench':>16}{'hw_sim':>16}"]
    lines += [f"{name:<24}{a:>16}{b:>16}" for name, a, b in rows]
    return "\n".join(lines)
