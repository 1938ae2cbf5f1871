"""The calibration search: better estimates at the target T, from calibration data only."""
import torch
import torch.nn as nn

import ecmt
from ecmt import data, ir, save_graph, summarize


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_search_improves_the_estimate_at_the_target_T(digits_cnn):
    model, train = digits_cnn
    calib = train.images[:256]
    test = data.digits("test").images
    paper = ecmt.convert(model, calib, progress=False)
    searched = ecmt.convert(model, calib, target_T=2, progress=False)
    with torch.no_grad():
        ann = model(test)
    e_paper = rel_err(paper(test, 2)[1], ann)
    e_search = rel_err(searched(test, 2)[1], ann)
    assert e_search < e_paper, (e_search, e_paper)
    cal = searched.graph.meta["calibration"]
    assert cal["method"] == "search" and cal["target_T"] == 2 and cal["choices"] == 2
    for n in searched.graph.of_kind(ir.MTNeuron):
        assert n.meta["search"]["target_T"] == 2 and n.levels == n.meta["search"]["levels"]
    # `ecmt inspect` shows each neuron's chosen multiplier and target T on its own row
    rows = {line.split()[0]: line for line in summarize(searched.graph).splitlines() if line.startswith("  ")}
    for n in searched.graph.of_kind(ir.MTNeuron):
        choice = n.meta["search"]
        assert rows[n.name].endswith(f"x{choice['multiplier']:g}, T=2"), rows[n.name]


def test_search_reads_only_the_calibration_iterable(digits_cnn):
    model, train = digits_cnn
    seen = []

    def calibration():
        for i in range(0, 192, 64):
            seen.append(i)
            yield train.images[i:i + 64], train.labels[i:i + 64]

    spiking = ecmt.convert(model, calibration(), target_T=1, progress=False)
    assert seen == [0, 64, 128]
    cal = spiking.graph.meta["calibration"]
    assert cal["samples"] == 192 and cal["search_samples"] == 192


# -- the energy budget (docs/conversion.md, "Calibration search") -----------------------------------
import hw_sim  # noqa: E402
import pytest  # noqa: E402

from ecmt.cli import main as cli_main  # noqa: E402
from ecmt.convert.search import ENERGY_SAMPLES, EnergyBudgetError  # noqa: E402
from ecmt.errors import EcmtError  # noqa: E402
from ecmt.runtime import GraphExecutor  # noqa: E402


CMOS = hw_sim.EnergyRatio("cmos45-fp32")


def measured_ratio(graph, x, T):
    """The energy ratio as hw_sim reports it, independently of the search's own measurement."""
    report = hw_sim.simulate(graph, x, T, "cmos45-fp32", mode="full", progress=False)
    return report.result("cmos45-fp32", "full")["energy_ratio_per_t"][T - 1]


def output_mse(graph, x, T):
    ex = GraphExecutor(graph)
    return float(((ex.run(x, T) - ex.run_analog(x).unsqueeze(0)) ** 2).mean())


def test_energy_budget_is_met_and_a_looser_one_never_costs_accuracy(digits_cnn):
    model, train = digits_cnn
    calib = train.images[:256]
    paper = ecmt.convert(model, calib, progress=False)
    r_paper = measured_ratio(paper.graph, calib[:ENERGY_SAMPLES], 2)
    results = []
    for scale in (0.8, 1.2, 4.0):           # relative to the paper calibration's own ratio at T = 2
        budget = scale * r_paper
        spiking = ecmt.convert(model, calib, target_T=2, energy_budget=budget, energy=CMOS,
                                       progress=False)
        cal = spiking.graph.meta["calibration"]
        ratio = measured_ratio(spiking.graph, calib[:ENERGY_SAMPLES], 2)
        assert ratio <= budget, (scale, ratio, budget)
        assert ratio == pytest.approx(cal["energy_ratio"], rel=1e-9)
        assert cal["energy_budget"] == budget and cal["energy_profile"] == "cmos45-fp32"
        assert cal["energy_samples"] == ENERGY_SAMPLES
        err = output_mse(spiking.graph, calib, 2)
        assert err == pytest.approx(cal["output_mse"], rel=1e-5)
        for n in spiking.graph.of_kind(ir.MTNeuron):
            s = n.meta["search"]
            assert (s["levels"], s["spikes_per_step"]) == (n.levels, n.spikes_per_step)
        results.append(err)
    assert results[0] >= results[1] >= results[2], results
    # The tight budget binds: the search without one lands above it (else the test shows nothing).
    free = ecmt.convert(model, calib, target_T=2, progress=False)
    assert measured_ratio(free.graph, calib[:ENERGY_SAMPLES], 2) > 0.8 * r_paper


def test_chosen_graph_round_trips_through_a_file(digits_cnn, tmp_path):
    model, train = digits_cnn
    spiking = ecmt.convert(model, train.images[:128], target_T=1, energy_budget=10.0, energy=CMOS, progress=False)
    save_graph(spiking.graph, tmp_path / "g.ecmt")
    back = ir.load_graph(tmp_path / "g.ecmt")
    for a, b in zip(spiking.graph.of_kind(ir.MTNeuron), back.of_kind(ir.MTNeuron)):
        assert a.meta["search"] == b.meta["search"] and b.spikes_per_step == a.spikes_per_step


def test_spikes_per_step_is_chosen_where_hw_sim_prices_it_and_it_helps(digits_cnn):
    model, train = digits_cnn
    calib = train.images[:256]
    spiking = ecmt.convert(model, calib, target_T=1, energy_budget=100.0, energy=CMOS, progress=False)
    cal = spiking.graph.meta["calibration"]
    neurons = spiking.graph.of_kind(ir.MTNeuron)
    why_not = CMOS.multilevel_refused()
    if why_not is not None:
        assert cal["spikes_per_step_searched"] is False and cal["spikes_per_step_note"] == why_not
        assert all(n.spikes_per_step == 1 for n in neurons)
        return
    assert cal["spikes_per_step_searched"] is True
    assert max(n.spikes_per_step for n in neurons) > 1
    # ... and it helps: the same thresholds and levels with k = 1 are further from the ANN at T = 1
    chosen = output_mse(spiking.graph, calib, 1)
    for n in neurons:
        n.spikes_per_step = 1
    assert chosen < output_mse(spiking.graph, calib, 1)


def test_impossible_budget_raises_with_the_lowest_ratio_reached(digits_cnn):
    model, train = digits_cnn
    with pytest.raises(EnergyBudgetError, match="lowest full-mode energy ratio reached is") as info:
        ecmt.convert(model, train.images[:128], target_T=2, energy_budget=1e-3, energy=CMOS,
                      progress=False)
    reached = float(str(info.value).split("reached is ")[1].split("x")[0])
    assert reached > 1e-3 and "`energy_budget`" in info.value.hint


@pytest.mark.parametrize("options, expected", [
    (dict(energy_budget=1.0), "needs a target T"),
    (dict(target_T=2, energy_budget=0.0), "must be a number > 0"),
    (dict(target_T=2, energy_budget=-1.0), "must be a number > 0"),
    (dict(target_T=2, energy_budget=float("nan")), "must be a number > 0"),
    (dict(target_T=2, energy_budget=1.0), "needs an energy model"),
    (dict(target_T=2, energy_budget=1.0, energy="cmos45-fp32"), "needs an energy model"),
])
def test_bad_budget_options_fail_before_any_work(options, expected):
    class Untraceable(nn.Module):       # converting it would fail; the options must fail first
        def forward(self, x):
            raise AssertionError("the model ran")
    with pytest.raises(EcmtError, match=expected):
        ecmt.convert(Untraceable(), torch.zeros(4, 3), **options)


def test_an_unknown_profile_fails_when_the_energy_model_is_made():
    with pytest.raises(EcmtError, match="hardware profile 'no-such-chip' not found"):
        hw_sim.EnergyRatio("no-such-chip")


@pytest.mark.parametrize("args, expected", [
    (["--energy-budget", "1.5"], "needs a target T"),
    (["--target-T", "2", "--energy-budget", "1.5", "--energy-profile", "no-such-chip"], "not found"),
])
def test_cli_budget_errors(args, expected, capsys, tmp_path):
    rc = cli_main(["--quiet", "convert", "--model", "timm:not_a_model", *args, "-o", str(tmp_path / "g.ecmt")])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and "hint:" in err, err


@pytest.mark.parametrize("value", ["0", "-2", "nan", "x"])
def test_cli_budget_must_be_positive(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli_main(["convert", "--model", "demo", "--target-T", "2", "--energy-budget", value,
                  "-o", str(tmp_path / "g.ecmt")])
    assert info.value.code == 2 and "--energy-budget" in capsys.readouterr().err


def test_cli_convert_with_a_budget_on_a_tiny_vit(tmp_path, capsys):
    from models import TINY_VIT
    graph = tmp_path / "g.ecmt"
    rc = cli_main(["--quiet", "convert", *TINY_VIT, "--data", "digits", "--calib-samples", "64", "--target-T", "1",
                   "--energy-budget", "5", "-o", str(graph)])
    assert rc == 0, capsys.readouterr().err
    g = ir.load_graph(graph)
    cal = g.meta["calibration"]
    assert cal["energy_budget"] == 5.0 and cal["energy_profile"] == "cmos45-fp32" and cal["target_T"] == 1
    calib = data.digits("train").sample(64)
    # the CLI's calibration images (the same fixed sample), first 32: hw_sim agrees with the recorded ratio
    assert measured_ratio(g, calib[:ENERGY_SAMPLES], 1) == pytest.approx(cal["energy_ratio"], rel=1e-6)
    assert cal["energy_ratio"] <= 5.0


def test_search_metadata_without_k_still_loads_and_a_bad_k_is_named(tmp_path):
    from models import small_graph
    g = small_graph()
    g["mt1"].meta["search"] = {"target_T": 2, "multiplier": 0.5, "levels": 4}      # written before k was chosen
    save_graph(g, tmp_path / "old.ecmt")
    assert ir.load_graph(tmp_path / "old.ecmt")["mt1"].meta["search"]["levels"] == 4
    g["mt1"].meta["search"]["spikes_per_step"] = "two"
    with pytest.raises(EcmtError, match="meta.search.spikes_per_step: expected a whole number"):
        save_graph(g, tmp_path / "bad.ecmt")        # save reads its file back through the schema
