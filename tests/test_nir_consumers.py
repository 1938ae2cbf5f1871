"""ecmt's NIR files in the field's NIR libraries as shipped: snnTorch 1.0.0, Norse 1.1.0
and sinabs 3.1.3 load them with their own import functions and run them with their
own models (tools/nir_consumer_run.py, in the environments tools/nir_consumers.sh
builds; `make test` builds them first)."""
import os
import subprocess

import numpy as np
import pytest
import torch

import ecmt
from ecmt import SpikingGraph, SpikingModel, ir
from exporters import nir as enir

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def consumer_python(consumer: str) -> str:
    python = subprocess.run([os.path.join(ROOT, "tools", "nir_consumers.sh"), "--python", consumer],
                            capture_output=True, text=True, check=True).stdout.strip()
    if not os.path.exists(python):
        message = f"{consumer}: no environment at {python}; build it with tools/nir_consumers.sh"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return python


def run_consumer(consumer: str, nir_path, x: torch.Tensor, T: int, tmp_path) -> np.ndarray:
    """The consumer's per-step outputs [T, N, ...] for x fed at every step."""
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / f"{consumer}.npy"
    r = subprocess.run([consumer_python(consumer), os.path.join(ROOT, "tools", "nir_consumer_run.py"),
                        "--consumer", consumer, "--nir", str(nir_path), "--inputs", str(tmp_path / "x.npy"),
                        "-T", str(T), "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return np.load(out)


# Which file each consumer runs: snnTorch 1.0.0's IF import returns a (spikes, membrane)
# tuple that breaks the next layer, so it gets the LIF carriers (docs/nir.md).
NEURON = {"snntorch": "LIF", "norse": "IF", "sinabs": "IF"}


@pytest.fixture(scope="module")
def demo_graphs(fashion_mnist):
    from ecmt.zoo import load_model
    calib = fashion_mnist[0].images[:256]
    return {name: ecmt.convert(load_model(name), calib, progress=False).graph for name in ("demo-cnn", "demo-mlp")}


@pytest.mark.parametrize("consumer", sorted(NEURON))
@pytest.mark.parametrize("model", ["demo-cnn", "demo-mlp"])
def test_consumer_loads_and_runs_the_demo_file(consumer, model, demo_graphs, tmp_path):
    enir.export(demo_graphs[model], tmp_path / "m.nir", neuron=NEURON[consumer])
    x = torch.rand(3, 1, 28, 28)
    y = run_consumer(consumer, tmp_path / "m.nir", x, 4, tmp_path)
    assert y.shape == (4, 3, 10) and np.isfinite(y).all()
    assert np.abs(y).sum() > 0                      # the network carries something to the output


def residual_synaptic_graph() -> SpikingGraph:
    """No neurons (every consumer's neuron differs from ecmt's), but everything else the
    consumers must read exactly: Conv2d with padding and stride, a residual add written
    as converging edges, a Flatten of [C, H, W] and an Affine with its bias."""
    g = torch.Generator().manual_seed(0)
    w = lambda *s: torch.randn(*s, generator=g) * 0.3
    return SpikingGraph([
        ir.Input("input", (), shape=(1, 8, 8)),
        ir.Conv2d("conv1", ("input",), weight=w(4, 1, 3, 3), bias=w(4), padding=1),
        ir.Conv2d("body", ("conv1",), weight=w(4, 4, 3, 3), bias=w(4), padding=1),
        ir.Add("add", ("body", "conv1")),
        ir.Conv2d("conv2", ("add",), weight=w(6, 4, 3, 3), bias=w(6), stride=2),
        ir.Reshape("flat", ("conv2",), shape=(6 * 3 * 3,)),
        ir.Linear("head", ("flat",), weight=w(5, 54), bias=w(5)),
        ir.Output("output", ("head",)),
    ])


@pytest.mark.parametrize("consumer", sorted(NEURON))
def test_consumer_computes_the_standard_nodes_exactly(consumer, tmp_path):
    graph = residual_synaptic_graph()
    summary = enir.export(graph, tmp_path / "s.nir")
    assert sum(summary.convention.values()) == 0 and summary.depth_first_ok
    x = torch.randn(4, 1, 8, 8)
    theirs = run_consumer(consumer, tmp_path / "s.nir", x, 3, tmp_path)
    ours = SpikingModel(graph)(x, 3).numpy()      # no neurons: every step's output is the same
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)


def test_sinabs_reads_ecmt_thresholds_as_its_multi_spike_neuron(tmp_path):
    """sinabs' IF (nir 1.0.4 semantics) subtracts its threshold and may emit several
    spikes per step: for a positive-only MT neuron fed a constant current c, it emits
    trunc(v / th) spikes, so over T steps it sends floor(T c / th) of them."""
    th, T = 0.77, 12
    currents = np.array([0.3, 0.85, 1.9])            # T c / th never lands on an integer
    graph = SpikingGraph([ir.Input("input", (), shape=(3,)),
                          ir.Linear("fc", ("input",), weight=torch.eye(3)),
                          ir.MTNeuron("mt", ("fc",), th_pos=torch.tensor(th), th_neg=None, levels=4),
                          ir.Output("output", ("mt",))])
    enir.export(graph, tmp_path / "n.nir")
    spikes = run_consumer("sinabs", tmp_path / "n.nir", torch.tensor(currents[None], dtype=torch.float32), T,
                          tmp_path)
    expected = np.floor(np.arange(1, T + 1)[:, None] * currents / th)
    np.testing.assert_array_equal(np.cumsum(spikes[:, 0], 0), expected)


@pytest.mark.parametrize("consumer", sorted(NEURON))
def test_unit_thresholds_bring_the_mlp_to_the_executor_in_each_consumer(consumer, demo_graphs, tmp_path,
                                                                           fashion_mnist):
    """With thresholds moved into the weights (ecmt.ir.unit), each library's own
    neurons classify like the executor on the demo MLP: within 3 points at t = 16
    (measured in benchmarks/consumers.py: 0-2 points at t = 8 and 32 on 1000 images)."""
    test = fashion_mnist[1].take(200)
    summary = enir.export(demo_graphs["demo-mlp"], tmp_path / "u.nir", neuron=NEURON[consumer],
                          unit_thresholds=True)
    assert summary.unit_thresholds == ["2", "4"]
    outputs = run_consumer(consumer, tmp_path / "u.nir", test.images, 16, tmp_path)
    theirs = (outputs.sum(0).argmax(-1) == test.labels.numpy()).mean()
    ours = (SpikingModel(demo_graphs["demo-mlp"])(test.images, 16)[-1].argmax(-1) == test.labels).float().mean()
    assert abs(theirs - float(ours)) <= 0.03
