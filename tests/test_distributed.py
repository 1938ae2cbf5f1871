"""torchrun with 2 gloo processes gives the results of one process over the same data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ecmt import ir, load_graph

from models import TINY_VIT

pytestmark = pytest.mark.slow

TORCHRUN = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "ecmt"]
SINGLE = [sys.executable, "-m", "ecmt"]


def run(prefix, *args, env=None, timeout=600):
    r = subprocess.run([*prefix, "--quiet", *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return r


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    common = ["convert", *TINY_VIT, "--data", "digits", "--calib-samples", "384"]
    r1 = run(SINGLE, *common, "-o", str(d / "single.ecmt"))
    r2 = run(TORCHRUN, *common, "-o", str(d / "dist.ecmt"))
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("wrote") == 1                      # only rank 0 speaks
    return d


def test_thresholds_equal_one_process(graphs):
    single, dist = load_graph(graphs / "single.ecmt"), load_graph(graphs / "dist.ecmt")
    assert single.meta["calibration"]["batches"] == dist.meta["calibration"]["batches"] == 3
    for a, b in zip(single.of_kind(ir.MTNeuron), dist.of_kind(ir.MTNeuron)):
        torch.testing.assert_close(a.th_pos, b.th_pos, rtol=1e-6, atol=0)
        torch.testing.assert_close(a.th_neg, b.th_neg, rtol=1e-6, atol=0)


def test_accuracy_table_equals_one_process(graphs):
    args = ["eval", str(graphs / "single.ecmt"), "--data", "digits", "-T", "4", "--batch-size", "64"]
    r1 = run(SINGLE, *args, "--json", str(graphs / "e1.json"))
    r2 = run(TORCHRUN, *args, "--json", str(graphs / "e2.json"))
    assert r1.returncode == 0 and r2.returncode == 0, r2.stderr
    e1, e2 = json.loads((graphs / "e1.json").read_text()), json.loads((graphs / "e2.json").read_text())
    assert e1["snn_accuracy"] == e2["snn_accuracy"] and e1["ann_accuracy"] == e2["ann_accuracy"]
    assert e2["processes"] == 2 and r2.stdout == r1.stdout


def test_energy_counts_equal_one_process(graphs):
    args = ["energy", str(graphs / "single.ecmt"), "--data", "digits", "-T", "3", "--limit", "300"]
    r1 = run(SINGLE, *args, "--report", str(graphs / "r1"))
    r2 = run(TORCHRUN, *args, "--report", str(graphs / "r2"))
    assert r1.returncode == 0 and r2.returncode == 0, r2.stderr
    a, b = (json.loads((graphs / r / "report.json").read_text()) for r in ("r1", "r2"))
    assert a["counts"] == b["counts"] and a["accuracy"] == b["accuracy"]
    # every profile's energy, the mesh model's included (its event sums are reduced over ranks)
    assert [h["profile"]["name"] for h in a["hardware"]] == [h["profile"]["name"] for h in b["hardware"]]
    assert any(h["profile"]["kind"] == "neuromorphic" for h in b["hardware"])
    for x, y in zip(a["hardware"], b["hardware"]):
        assert y["total_j"] == pytest.approx(x["total_j"], rel=1e-9), x["profile"]["name"]
        assert y["latency_s"] == pytest.approx(x["latency_s"], rel=1e-9), x["profile"]["name"]
        if "mesh" in x:
            assert y["mesh"]["scheduled_samples"] == x["mesh"]["scheduled_samples"] == 300


def test_a_failing_rank_stops_the_run_with_its_error(graphs):
    r = run(TORCHRUN, "eval", str(graphs / "single.ecmt"), "--data", "digits", "-T", "2",
            env={"ECMT_FAULT_RANK": "1"}, timeout=300)
    assert r.returncode != 0
    assert "rank 1 failed" in r.stderr and "injected fault on rank 1" in r.stderr
