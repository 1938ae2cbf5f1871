"""The deployed number format: a graph run in the torch executor as a fixed-point
deployment would run it, for the energy report's "accuracy (deployed)" next to the
float accuracy.  A profile names its format in ``profile.deployment``; the executor runs
it through per-kind overrides (ecmt/runtime/fixed_point.py, shared with the Lava
exporter's fixed-point models):

* ``int8-weights`` (cmos45-int8): every Linear / Conv2d weight rounded to 8 bits with one
  scale per output channel, exactly as the Lava exporter's fixed-point synapses quantize.
  Modelled: the weights only.  Not modelled: activations, membranes, accumulators and ECM
  state stay float32 (an int8 CMOS datapath would also round those; how is not fixed by
  the profile).
* ``lava-fixed-point`` (loihi2): what ``exporters.lava.build(graph, fixed_point=True)``
  runs (Lava's ``fixed_pt`` models, docs/lava.md): the same 8-bit weights, and every MT
  neuron (except PPN neurons, which Lava runs on the host) with the integer membrane
  (unit min(th_pos, th_neg) / 2^fraction_bits(levels)).  Modelled exactly, in the same
  float32 / integer operations; host nodes stay float32 as in Lava.  What is not
  bit-identical: the synaptic sums (Lava's numpy and torch add in different orders, so a
  membrane input may differ in its last float32 bit and, rarely, round to the other integer).
"""
from __future__ import annotations

from ecmt import ir
from ecmt.errors import EcmtError
from ecmt.runtime import GraphExecutor
from ecmt.runtime.fixed_point import deployed_overrides

# The formats, as the report names them.
FORMATS = {
    "float": "float32",
    "int8-weights": "int8 weights, per-channel scales",
    "lava-fixed-point": "Lava fixed point: int8 weights, integer membranes",
}
# What each format models and what it leaves out, for the report.
MODELLED = {
    "int8-weights": ("weights rounded as ecmt/runtime/fixed_point.quantize_int8 (per output channel)",
                     "activations, membranes, accumulators and ECM state stay float32"),
    "lava-fixed-point": ("weights as quantize_int8; MT membranes as Lava's PyMTNeuronFixed (integer, "
                         "unit min threshold / 2^fraction_bits(levels)), exactly",
                         "host nodes (ECMs, products, adds, biases, PPN neurons) stay float32, as in Lava; "
                         "synaptic sums in torch's order, not numpy's"),
}


class DeploymentError(EcmtError, ValueError):
    """An unknown deployed number format."""


def executor(graph: ir.SpikingGraph, fmt: str, device=None) -> GraphExecutor:
    """A GraphExecutor that runs `graph` in the deployed number format `fmt`."""
    if fmt not in FORMATS:
        raise DeploymentError(f"deployment {fmt!r}: not one of {', '.join(FORMATS)}")
    return GraphExecutor(graph, device, overrides=deployed_overrides(fmt))
