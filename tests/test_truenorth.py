"""TrueNorth's profile against Merolla et al. (Science 2014): a network at their operating
point (every neuron firing at a 20 Hz mean rate with 128 active synapses, one chip full)
lands within the published 63-72 mW chip power."""
import pytest
import torch

import hw_sim
from ecmt import ir

LAYERS, TOKENS, WIDTH = 16, 512, 128      # 16 x 512 x 128 = 1,048,576 neurons: one chip of 4,096 x 256
T = 100                                   # 100 ticks of 1 ms: every neuron fires twice (20 Hz)


def chain() -> ir.SpikingGraph:
    """16 layers of one-level MT neurons; each drives the next through 128 synapses per spike
    (a linear layer over the last axis with weights 1/128, so the next layer's input rate is the
    layer's own).  The first layer integrates a constant 0.02 from the host: it fires at steps
    25 and 75 of 100 (threshold 1, the spec's half-threshold offset), and every later layer
    fires in the same steps."""
    nodes = [ir.Input("input", (), shape=(TOKENS, WIDTH))]
    prev = "input"
    for k in range(LAYERS):
        if k:
            nodes.append(ir.Linear(f"w{k}", (prev,), weight=torch.full((WIDTH, WIDTH), 1 / WIDTH), bias=None))
            prev = f"w{k}"
        nodes.append(ir.MTNeuron(f"mt{k}", (prev,), th_pos=torch.tensor(1.0), th_neg=None, levels=1))
        prev = f"mt{k}"
    nodes.append(ir.Output("output", (prev,)))
    return ir.SpikingGraph(nodes)


@pytest.mark.slow
def test_chip_power_at_merolla_operating_point():
    graph = chain()
    x = torch.full((1, TOKENS, WIDTH), 0.02)
    report = hw_sim.simulate(graph, x, T, "truenorth", progress=False)
    r = report.result("truenorth")
    assert (r["cores_used"], r["chips"]) == (4096, 1)
    counts = report.data["counts"]["per_step"]
    neurons = LAYERS * TOKENS * WIDTH
    assert sum(counts["spikes"]) == 2 * neurons                          # 20 Hz over 100 ticks
    mesh = r["mesh"]["per_step"]
    assert sum(mesh["synaptic_events"]) == 2 * (LAYERS - 1) * TOKENS * WIDTH * 128   # 128 synapses a spike
    on_chip = sum(r["energy_by_category_j"][c] for c in ("synapse", "neuron", "network", "chip_links", "static"))
    ticks = sum(r["latency_by_phase_per_step_s"]["cores"])
    assert ticks == pytest.approx(T * 1e-3)                              # one phase per step: one tick
    power = on_chip / ticks
    assert 63e-3 <= power <= 72e-3, power
