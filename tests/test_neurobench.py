"""NeuroBench 2.3 as shipped on ecmt models (ecmt/neurobench.py), and its counts as an
independent check of hw_sim's: NeuroBench binarizes the inputs and weights of every
Linear / Conv2d layer and runs the layer again, hw_sim counts non-zero inputs times
their fan-out (docs/energy.md, "NeuroBench").  Where the definitions agree the numbers
are equal, to the operation."""
import pytest
import torch

import ecmt
from ecmt import data, ir
from ecmt import neurobench as enb
from ecmt.errors import DataError, EcmtError
from ecmt.ir.ppn import expand_ppn
from ecmt.ir.unit import unit_thresholds
from ecmt.runtime import GraphExecutor
from ecmt.zoo import load_model
from hw_sim.counting import Counter, event_counts
from models import every_kind_graph, relu_mlp

T = 3
SAMPLES, BATCH = 16, 8
# every neuron role of the demo CNN, for thresholds fixed at 1
CNN_ROLES = ("relu", "maxpool2d_ecm", "avgpool2d")


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("ECMT_COMPILE", "0")      # compiling kernels would dominate these small runs


@pytest.fixture(scope="module")
def fashion():
    try:
        train, test = data.fashion_mnist("train"), data.fashion_mnist("test").take(SAMPLES)
    except EcmtError as err:
        pytest.skip(str(err))
    return train.sample(128), test


def hw_sim_counts(graph, images, labels):
    """hw_sim's counts of the same run (batches of BATCH), as integer totals over every
    sample and step; the accuracy at T; and, counted from the executor's membranes, how
    many updates after the first step left a membrane as it was."""
    executor = GraphExecutor(graph, record_levels=True)
    counter = Counter(executor, T)
    previous, unchanged = {}, [0]

    def observe(node, inputs, out, t):
        counter(node, inputs, out, t)
        if isinstance(node, ir.MTNeuron):
            v = executor.state(node.name).v
            if t > 1:
                unchanged[0] += int((v == previous[node.name]).sum())
            previous[node.name] = v.clone()

    correct = 0
    for i in range(0, len(images), BATCH):
        estimates = executor.run(images[i:i + BATCH], T, observer=observe)
        correct += int((estimates[-1].argmax(-1) == labels[i:i + BATCH]).sum())
    counts = event_counts(counter)
    totals = {name: {f: sum(v) for f, v in fields.items() if f != "levels"} for name, fields in counts.nodes.items()}
    return totals, correct / len(images), unchanged[0]


def check_against_hw_sim(graph, images, labels, unit: bool | None, membranes: bool = True):
    """NeuroBench's metrics equal hw_sim's counts where the definitions agree.  unit: every
    spike is -1, 0 or 1 (True), none is (False), or some are (None)."""
    n = len(images)
    nb = enb.run(graph, images, labels, T, batch_size=BATCH)
    totals, accuracy, unchanged = hw_sim_counts(graph, images, labels)
    hw = enb.hw_sim_metrics(graph, totals)
    per_sample = lambda v: round(v * n)
    syn = nb["SynapticOperations"]
    # preconditions of the exact equalities: every weight non-zero (NeuroBench skips zero
    # weights, hw_sim charges a whole fan-out) and no zero pixel (hw_sim counts the first
    # layer's analog inputs densely)
    assert nb["ConnectionSparsity"] == 0 and bool((images != 0).all())
    if unit is not None:
        assert all(enb.unit_spikes(mt) == unit for mt in graph.of_kind(ir.MTNeuron))
        assert (hw["Effective_ACs"] > 0) == unit
    assert per_sample(syn["Effective_ACs"]) == hw["Effective_ACs"]
    assert per_sample(syn["Effective_MACs"]) == hw["Effective_MACs"] > 0
    assert per_sample(syn["Dense"]) == hw["Dense"]
    if membranes:
        # NeuroBench counts an update only where the membrane changed (every neuron at step 1)
        assert per_sample(nb["MembraneUpdates"]) == hw["MembraneUpdates"] - unchanged
    assert nb["ActivationSparsity"] == pytest.approx(hw["ActivationSparsity"], abs=1e-12)
    assert nb["ActivationSparsityByLayer"] == pytest.approx(hw["ActivationSparsityByLayer"], abs=1e-12)
    assert nb["ClassificationAccuracy"] == pytest.approx(accuracy, abs=1e-12)
    thresholds = sum(t.numel() for mt in graph.of_kind(ir.MTNeuron) for t in (mt.th_pos, mt.th_neg)
                     if t is not None)
    assert nb["ParameterCount"] == graph.param_count() - thresholds
    return nb, hw, unchanged


def demo_graph(name, form, calib):
    model = load_model(name)
    if form == "graded":
        return ecmt.convert(model, calib, progress=False).graph          # 8 levels, calibrated thresholds
    if name == "demo-mlp":                  # `--unit-thresholds`: thresholds moved into the weights
        graph, moved = unit_thresholds(ecmt.convert(model, calib, levels=1, progress=False).graph)
        assert len(moved) == len(graph.of_kind(ir.MTNeuron))
        return graph
    # the CNN's residual neurons cannot move their thresholds: fix them at 1
    return ecmt.convert(model, calib, levels=1, fixed_thresholds={r: (1.0, 1.0) for r in CNN_ROLES},
                        progress=False).graph


@pytest.mark.parametrize("form", ["binary", "graded"])
@pytest.mark.parametrize("name", ["demo-mlp", "demo-cnn"])
def test_neurobench_counts_equal_hw_sim_counts(fashion, name, form):
    calib, test = fashion
    graph = demo_graph(name, form, calib)
    nb, hw, unchanged = check_against_hw_sim(graph, test.images, test.labels, unit=form == "binary")
    if name == "demo-mlp":
        # every MLP neuron receives its layer's bias at every step: its membrane always
        # moves, and NeuroBench's membrane updates are hw_sim's neuron updates
        assert unchanged == 0 and per(nb["MembraneUpdates"]) == hw["MembraneUpdates"]
    else:
        # the CNN's neurons after its pooling layers often receive nothing
        assert unchanged > 0


def per(v):
    return round(v * SAMPLES)


def test_ppn_channels_are_unit_spikes():
    """PPN neurons send one-hot level channels: NeuroBench counts their synaptic ops as ACs,
    hw_sim one per spike and weight; random inputs, no data set needed."""
    torch.manual_seed(0)
    model = relu_mlp()
    x = torch.randn(SAMPLES, 1, 8, 8)
    y = model(x).argmax(-1)
    graph = expand_ppn(ecmt.convert(model, torch.randn(64, 1, 8, 8), levels=4, progress=False).graph)
    assert len(graph.of_kind(ir.MTNeuronPPN)) == 2
    # (hw_sim counts a PPN neuron's updates per level channel, NeuroBench per membrane)
    nb, hw, _ = check_against_hw_sim(graph, x, y, unit=True, membranes=False)
    assert hw["MembraneUpdates"] == 4 * per(nb["MembraneUpdates"])


@pytest.mark.parametrize("ppn", [False, True])
def test_every_node_kind_runs_under_neurobench(ppn):
    """One graph of every node kind (constants, ECMs, products, pooling; and its PPN form):
    NeuroBench sees its synaptic layers and neurons, and counts what hw_sim counts."""
    graph = expand_ppn(every_kind_graph()) if ppn else every_kind_graph()
    x = torch.randn(SAMPLES, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    y = torch.arange(SAMPLES) % 3
    _, hw, _ = check_against_hw_sim(graph, x, y, unit=None, membranes=not ppn)
    assert hw["ProductMACs"] > 0                      # what NeuroBench cannot see


def small_graph():
    torch.manual_seed(0)
    return ecmt.convert(relu_mlp(), torch.randn(64, 1, 8, 8), progress=False).graph


def test_data_must_hold_the_image_at_step_1():
    model = enb.NeuroBenchModel(small_graph(), T=2)
    x = torch.randn(4, 1, 8, 8)
    out = model(x.unsqueeze(1))
    assert out.shape == (4, 2, 10)
    # the increments sum to T times the estimate at T
    estimate = ecmt.SpikingModel(small_graph())(x, T=2)[-1]
    assert torch.allclose(out.sum(1), 2 * estimate, atol=1e-5)
    assert torch.equal(model(x.unsqueeze(1).expand(4, 2, 1, 8, 8)), out)   # T equal steps
    with pytest.raises(DataError, match="takes \\(batch, timesteps, 1, 8, 8\\)") as err:
        model(x)
    assert "first_step" in err.value.hint
    with pytest.raises(DataError, match="3 time steps"):
        model(x.unsqueeze(1).expand(4, 3, 1, 8, 8))
    with pytest.raises(DataError, match="steps of the data differ"):
        model(torch.stack([x, x + 1], dim=1))
    with pytest.raises(EcmtError, match="T must be >= 1"):
        enb.NeuroBenchModel(small_graph(), T=0)


def test_energy_prints_neurobench_beside_hw_sim(tmp_path, capsys):
    from ecmt.cli import main
    graph = small_graph()
    ecmt.save_graph(graph, tmp_path / "g.ecmt")
    x = torch.randn(8, 1, 8, 8)
    torch.save({"images": x, "labels": torch.arange(8) % 10}, tmp_path / "d.pt")
    assert main(["--quiet", "energy", str(tmp_path / "g.ecmt"), "--data", str(tmp_path / "d.pt"), "-T", "2",
                 "--hw", "cmos45-fp32", "--report", str(tmp_path / "r"), "--neurobench"]) == 0
    out = capsys.readouterr().out
    nb = enb.run(graph, x, torch.arange(8) % 10, 2)
    syn = nb["SynapticOperations"]
    for metric, value in (("Effective_MACs", syn["Effective_MACs"]), ("Dense", syn["Dense"])):
        line = next(ln for ln in out.splitlines() if ln.startswith(metric))
        assert line.split()[1:] == [f"{value:,.1f}"] * 2, line        # NeuroBench, then hw_sim
    assert (tmp_path / "r" / "neurobench.json").exists()


def test_docs_state_each_difference_as_the_code_does():
    from pathlib import Path
    text = (Path(__file__).parent.parent / "docs" / "energy.md").read_text()
    for metric, sentence in enb.DEFINITIONS.items():
        assert f"| {metric} | {sentence} |" in text, metric
