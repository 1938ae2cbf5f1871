"""ecmt's NIR files in the field's NIR libraries as shipped: snnTorch 1.0.0, Norse 1.1.0
and sinabs 3.1.3 load them with their own import functions and run them with their
own models (tools/nir_consumer_run.py, in the environments tools/nir_consumers.sh
builds; `make test` builds them first)."""
import os

import numpy as np
import pytest
import torch

import ecmt
from ecmt import SpikingGraph, SpikingModel, ir
from exporters import nir as enir

pytestmark = pytest.mark.slow



def run_consumer(consumer: str, nir_path, x: torch.Tensor, T: int, tmp_path=None) -> np.ndarray:
    """The consumer's per-step outputs [T, N, ...] for x fed at every step (exporters/verify.py,
    what `ecmt export --verify` runs)."""
    from exporters.verify import ConsumerUnavailable, run_consumer as run
    try:
        return run(consumer, nir_path, x, T)
    except ConsumerUnavailable as err:
        message = f"{err}; build it with tools/nir_consumers.sh"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


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


def documented_spikes(consumer: str, currents: np.ndarray, th: float, T: int) -> np.ndarray:
    """Spike counts per step of each library's neuron (docs/nir.md) for constant currents:
    sinabs subtracts its threshold and may fire several times a step; Norse's IF and the
    LIF that snnTorch reads fire once when v > th and reset to 0."""
    v, out = np.zeros_like(currents), []
    for _ in range(T):
        v = v + currents
        if consumer == "sinabs":
            s = np.floor(v / th)
            v = v - s * th
        else:
            s = (v > th).astype(float)
            v = np.where(s > 0, 0.0, v)
        out.append(s)
    return np.stack(out)


@pytest.mark.parametrize("consumer", sorted(NEURON))
def test_size_nodes_give_consumer_spikes_their_size_on_a_skip_path(consumer, tmp_path):
    """A neuron whose spikes travel a skip path cannot move its threshold into weights;
    with --unit-thresholds a size node multiplies each consumer spike by th, so the
    output (skip + 2 x skip) is 3 th per spike in every library."""
    th, T = 0.77, 12
    currents = np.array([0.3, 0.85, 1.9])
    graph = SpikingGraph([ir.Input("input", (), shape=(3,)),
                          ir.Linear("fc", ("input",), weight=torch.eye(3)),
                          ir.MTNeuron("mt", ("fc",), th_pos=torch.tensor(th), th_neg=None, levels=4),
                          ir.Linear("body", ("mt",), weight=2 * torch.eye(3)),
                          ir.Add("add", ("mt", "body")),
                          ir.Output("output", ("add",))])
    summary = enir.export(graph, tmp_path / "s.nir", neuron=NEURON[consumer], unit_thresholds=True)
    assert summary.spike_sizes == ["mt"] and summary.unit_thresholds == []
    out = run_consumer(consumer, tmp_path / "s.nir", torch.tensor(currents[None], dtype=torch.float32), T,
                       tmp_path)
    np.testing.assert_allclose(out[:, 0], 3 * th * documented_spikes(consumer, currents, th, T), rtol=1e-6)


def speck(nir_path) -> dict:
    from exporters.verify import speck_fitness
    verdict = speck_fitness(nir_path)
    if verdict["fits"] is None and "not built" in verdict["reason"]:
        message = f"sinabs: {verdict['reason']}"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return verdict


def two_layer_speck_net(path, channels: int):
    """conv -> IF -> strided conv -> IF with one threshold per layer, as sinabs' Speck
    backend wants it (NIR's type check off: its IF types want per-neuron arrays)."""
    import nir
    rng, f = np.random.default_rng(0), np.float32
    conv = lambda c_in, stride: nir.Conv2d(input_shape=(16, 16), weight=rng.normal(0, .3, (channels, c_in, 3, 3)).astype(f),
                                           stride=stride, padding=1, dilation=1, groups=1, bias=np.zeros(channels, f))
    neuron = lambda: nir.IF(r=np.ones(1, f), v_threshold=np.ones(1, f), v_reset=np.zeros(1, f))
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 16, 16])}), "c1": conv(1, 1), "n1": neuron(),
             "c2": conv(channels, 2), "n2": neuron(), "output": nir.Output(output_type={"output": np.array([channels, 8, 8])})}
    edges = [("input", "c1"), ("c1", "n1"), ("n1", "c2"), ("c2", "n2"), ("n2", "output")]
    nir.write(str(path), nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    enir._drop_zero_v_reset(path)
    return path


def test_speck_fitness_is_sinabs_verdict(demo_graphs, tmp_path):
    """sinabs' own Speck check (tools/nir_consumer_run.py --speck; the verdicts docs/nir.md
    lists): a small conv net fits (two layers on two cores); the same with 128 channels
    exceeds the cores' memory; a sequential CNN's and the demo MLP's readout (a weight layer
    without a neuron) is named as what does not fit; the residual demo CNN fails earlier."""
    fit = speck(two_layer_speck_net(tmp_path / "fit.nir", 8))
    assert fit["fits"] is True and fit["layers"] == 2 and len(fit["cores"]) == 2, fit
    big = speck(two_layer_speck_net(tmp_path / "big.nir", 128))
    assert big["fits"] is False and "No valid mapping found" in big["reason"], big
    # A sequential CNN, and the demo MLP: their linear readout is a weight layer without a neuron.
    seq = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(16 * 7 * 7, 10)).eval()
    enir.export(ecmt.convert(seq, torch.randn(32, 1, 28, 28), progress=False).graph, tmp_path / "seq.nir")
    enir.export(demo_graphs["demo-mlp"], tmp_path / "mlp.nir")
    for name in ("seq", "mlp"):
        verdict = speck(tmp_path / f"{name}.nir")
        assert verdict["fits"] is False and "Linear" in verdict["reason"] \
            and "followed by a spiking layer" in verdict["reason"], verdict
    # The demo CNN: sinabs' backend fails to build chip layers from the residual network.
    enir.export(demo_graphs["demo-cnn"], tmp_path / "cnn.nir")
    cnn = speck(tmp_path / "cnn.nir")
    assert cnn["fits"] is False and cnn["stage"] == "DynapcnnNetwork (chip layers)", cnn


@pytest.fixture(scope="module")
def cnn_images(fashion_mnist):
    return fashion_mnist[1].take(32).images


@pytest.mark.parametrize("consumer", ["norse", "snntorch"])
def test_file_for_the_library_runs_the_demo_cnn_like_the_executor(consumer, demo_graphs, cnn_images, tmp_path):
    """`--nir-target norse / snntorch`: MT neurons as membrane + level comparators + spike
    and reset with recurrent edges, the max pool as its window: the library's own modules
    compute the executor's outputs (up to float rounding in sums), residual adds and pools
    included, where the default file runs as a constant class (docs/benchmarks/consumers.md)."""
    graph, x, T = demo_graphs["demo-cnn"], cnn_images[:8], 8
    summary = enir.export(graph, tmp_path / "t.nir", target=consumer)
    assert len(summary.computed) == 10 and summary.depth_first_ok       # 9 MT neurons, 1 max pool
    theirs = np.cumsum(run_consumer(consumer, tmp_path / "t.nir", x, T, tmp_path), 0)
    ours = SpikingModel(graph)(x, T).numpy() * np.arange(1, T + 1)[:, None, None]   # running sums
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
    close = np.abs(theirs - ours) <= 1e-4 * np.abs(ours).max()
    assert close.mean() >= 0.99, f"{close.mean():.3f} of the outputs equal the executor's"


def test_file_for_sinabs_computes_the_max_pool_exactly(tmp_path):
    """`--nir-target sinabs` writes a max pool over a neuron's spikes as unary levels of
    each element's count (IFs whose inputs only grow, so sinabs' clip never binds).  With
    inputs in [0, th) an MT neuron and sinabs' IF charged th / 2 send the same single spike
    a step, so sinabs' running pool output must be the executor's: the values (multiples of
    2^-7, th = 1/2) leave no rounding to either neuron, and a wrong count is off by th."""
    graph = SpikingGraph([
        ir.Input("input", (), shape=(3, 8, 8)),
        ir.MTNeuron("mt", ("input",), th_pos=torch.tensor(0.5), th_neg=None, levels=4),
        ir.MaxPool2d("pool", ("mt",), kernel_size=2, stride=2),
        ir.Output("output", ("pool",)),
    ])
    summary = enir.export(graph, tmp_path / "p.nir", target="sinabs")
    assert "pool" in summary.computed and summary.depth_first_ok
    x, T = torch.randint(0, 64, (6, 3, 8, 8), generator=torch.Generator().manual_seed(0)) / 128.0, 24
    theirs = np.cumsum(run_consumer("sinabs", tmp_path / "p.nir", x, T, tmp_path), 0)
    ours = SpikingModel(graph)(x, T).numpy() * np.arange(1, T + 1)[:, None, None, None, None]   # running sums
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5)      # the estimates times t round


def test_file_for_sinabs_classifies_the_demo_cnn_near_the_executor(demo_graphs, cnn_images, tmp_path):
    """`--nir-target sinabs` (no recurrence: IF neurons with a th / 2 head start, the max
    pool as unary levels): argmax agreement with the executor on 32 images at T = 16
    (measured on 1000 images: docs/benchmarks/consumers.md)."""
    graph, T = demo_graphs["demo-cnn"], 16
    summary = enir.export(graph, tmp_path / "s.nir", target="sinabs")
    assert summary.depth_first_ok and "4" in summary.computed
    theirs = run_consumer("sinabs", tmp_path / "s.nir", cnn_images, T, tmp_path).sum(0).argmax(-1)
    ours = SpikingModel(graph)(cnn_images, T)[-1].argmax(-1).numpy()
    assert (theirs == ours).mean() >= 0.9          # 98.0% at t = 16 on 1000 images
