"""The calibration search: better estimates at the target T, from calibration data only."""
import torch
import torch.nn as nn

import ecmt
from ecmt import data, ir


def small_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    train = data.digits("train")
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(train.images), train.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), train


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_search_improves_the_estimate_at_the_target_T():
    model, train = small_cnn()
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
    rows = {line.split()[0]: line for line in searched.graph.summary().splitlines() if line.startswith("  ")}
    for n in searched.graph.of_kind(ir.MTNeuron):
        choice = n.meta["search"]
        assert rows[n.name].endswith(f"x{choice['multiplier']:g}, T=2"), rows[n.name]


def test_search_reads_only_the_calibration_iterable():
    model, train = small_cnn()
    seen = []

    def calibration():
        for i in range(0, 192, 64):
            seen.append(i)
            yield train.images[i:i + 64], train.labels[i:i + 64]

    spiking = ecmt.convert(model, calibration(), target_T=1, progress=False)
    assert seen == [0, 64, 128]
    cal = spiking.graph.meta["calibration"]
    assert cal["samples"] == 192 and cal["search_samples"] == 192
