"""From counts to energy and latency, for one hardware profile.

Two counting modes:

* ``paper``: the ECMT paper's formula.  Only Linear layers and product ECMs
  count; SNN energy = E_AC * (synaptic ops over all T steps), ANN energy =
  E_MAC * (dense MACs of one forward).  With cmos45-fp32 this is exactly the
  paper's 0.9 * SOP / (4.6 * D).
* ``full``: everything.  On a neuromorphic profile, synaptic ops driven by
  MT spikes, neuron updates and spike routing run on the cores; the rest
  (analog layers, ECM nonlinearities and bookkeeping, products of two spike
  streams, whose weights change every step, residual adds, state traffic)
  runs on the profile's host processor as primitive operations.  On a CMOS
  profile everything runs on the accelerator, with a memory access per
  weight used and per state element read or written.

Per-inference figures: counts are divided by the number of samples.
"""
from __future__ import annotations

import math

from ecmt import ir

from .costs import FUNCTION_OPS, SPECIAL_MACS
from .profile import HardwareProfile


def _per_step(counts: dict, field: str, T: int) -> list[float]:
    return [float(sum(node[field][t] for node in counts.values())) for t in range(T)]


# -- the ANN at the same places, analytically ------------------------------------------------
def ann_work(graph: ir.SpikingGraph) -> dict[str, dict[str, int]]:
    """Per node, the work of one ANN forward for one sample: macs, adds, mults, specials,
    weight_reads.  MT neurons are the ANN's identity (or ReLU: one compare)."""
    work = {}
    for node in graph:
        out = math.prod(graph.shapes[node.name])
        w = {"macs": 0, "adds": 0, "mults": 0, "specials": 0}
        if isinstance(node, ir.Linear):
            w["macs"] = math.prod(graph.shapes[node.inputs[0]]) * node.weight.shape[0]
            w["adds"] = out if node.bias is not None else 0
        elif isinstance(node, ir.Conv2d):
            c_out, c_in_g, kh, kw = node.weight.shape
            w["macs"] = out * c_in_g * kh * kw
            w["adds"] = out if node.bias is not None else 0
        elif isinstance(node, ir.ProductECM):
            a = graph.shapes[node.inputs[0]]
            k = a[-2] if node.transpose_a else a[-1]
            w["macs"] = out * k
        elif isinstance(node, ir.MTNeuron):
            w["adds"] = 0 if node.signed else out
        elif node.KIND in FUNCTION_OPS:
            adds, mults, specials = FUNCTION_OPS[node.KIND]
            if isinstance(node, ir.MaxPool2d):
                adds = node.kernel_size[0] * node.kernel_size[1]
            w.update(adds=adds * out, mults=mults * out, specials=specials * out)
        elif isinstance(node, ir.Add):
            w["adds"] = (len(node.inputs) - 1) * out
        elif isinstance(node, (ir.Scale,)):
            w["mults"] = out
        elif isinstance(node, ir.Mean):
            w["adds"] = math.prod(graph.shapes[node.inputs[0]])
            w["mults"] = out
        elif isinstance(node, ir.AvgPool2d):
            w["adds"] = node.kernel_size[0] * node.kernel_size[1] * out
            w["mults"] = out
        w["weight_reads"] = w["macs"]
        work[node.name] = w
    return work


def ann_energy(graph: ir.SpikingGraph, profile: HardwareProfile, mode: str) -> tuple[float, dict]:
    """Energy of one ANN forward on a CMOS profile (J per sample)."""
    if profile.kind != "cmos":
        raise ValueError(f"the ANN baseline needs a CMOS profile, not {profile.name}")
    work = ann_work(graph)
    if mode == "paper":
        macs = sum(w["macs"] for n, w in work.items() if isinstance(graph[n], (ir.Linear, ir.ProductECM)))
        return macs * profile["energy.mac"], {"macs": macs}
    e = profile.constants["energy"]
    total = {k: sum(w[k] for w in work.values()) for k in ("macs", "adds", "mults", "specials", "weight_reads")}
    bytes_per_value = profile.value_bits / 8
    energy = (total["macs"] * e["mac"].value + total["adds"] * e["add"].value
              + total["mults"] * e["mult"].value + total["specials"] * SPECIAL_MACS * e["mac"].value
              + total["weight_reads"] * bytes_per_value / 8 * e["sram_read_64b"].value)
    return energy, total


# -- the spiking network -------------------------------------------------------------------
def snn_energy(graph: ir.SpikingGraph, counts: dict, profile: HardwareProfile, mode: str,
               samples: int) -> dict[str, dict[str, list[float]]]:
    """Per node: energy per step (J per sample), split into 'core', 'host' and 'memory'."""
    T = len(next(iter(counts.values()))["sops"])
    out = {}
    for node in graph:
        c = {k: [v / samples for v in vals] for k, vals in counts[node.name].items() if k != "levels"}
        core, host, memory = [0.0] * T, [0.0] * T, [0.0] * T
        for t in range(T):
            if mode == "paper":
                e_ac = profile["energy.add"] if profile.kind == "cmos" else profile["energy.sop"]
                core[t] = c["paper_sops"][t] * e_ac
            elif profile.kind == "neuromorphic":
                core[t], host[t], memory[t] = _neuromorphic(node, c, t, profile)
            else:
                core[t], memory[t] = _cmos(node, c, t, profile)
        out[node.name] = {"core": core, "host": host, "memory": memory}
    return out


def _neuromorphic(node, c, t, p: HardwareProfile) -> tuple[float, float, float]:
    core = host = memory = 0.0
    if isinstance(node, ir.ProductECM):
        host += c["sops"][t] * p["energy.host_add"]        # dynamic weights: the host accumulates
    else:
        core += c["sops"][t] * p["energy.sop"]
    if isinstance(node, ir.MTNeuron):
        active = c["active_updates"][t]
        core += (active * p["energy.neuron_update_active"]
                 + (c["neuron_updates"][t] - active) * p["energy.neuron_update_inactive"]
                 + c["spikes"][t] * p["energy.spike_route"])
    else:
        memory += c["state_rw"][t] * 4 / 8 * p["energy.host_sram_read_64b"]   # fp32 state on the host
    host += (c["macs"][t] * p["energy.host_mac"] + c["adds"][t] * p["energy.host_add"]
             + c["mults"][t] * p["energy.host_mult"] + c["specials"][t] * SPECIAL_MACS * p["energy.host_mac"])
    return core, host, memory


def _cmos(node, c, t, p: HardwareProfile) -> tuple[float, float]:
    e = lambda k: p[f"energy.{k}"]
    compute = (c["sops"][t] * e("add") + c["macs"][t] * e("mac") + c["adds"][t] * e("add")
               + c["mults"][t] * e("mult") + c["specials"][t] * SPECIAL_MACS * e("mac"))
    if isinstance(node, ir.MTNeuron):
        # add the input, compare against each level, subtract the spike
        compute += c["neuron_updates"][t] * (node.levels + 2) * e("add")
    word = p.value_bits / 8 / 8                                  # fraction of a 64-bit access
    memory = (c["sops"][t] + c["macs"][t] + c["state_rw"][t]) * word * e("sram_read_64b")
    return compute, memory
