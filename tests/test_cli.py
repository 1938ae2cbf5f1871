"""The command line, the demo model and its training recipe."""
import json
import os
import subprocess
import sys

import pytest
import torch

from ecmt import data
from ecmt.zoo import DEMO_CHECKPOINT, load_model, load_state_dict, train_demo
from models import TINY_VIT


def ecmt_cli(*args, env=None, cwd=None):
    """`python -m ecmt --quiet ARGS` in a new process (torch on one thread)."""
    import os
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ecmt", "--quiet", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=600)


def cli(capsys, *args):
    """`ecmt --quiet ARGS` in this process: (exit status, stdout, stderr)."""
    from ecmt.cli import main
    rc = main(["--quiet", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A one-block ViT converted by `ecmt convert` on 64 digits images (in this process)."""
    from ecmt.cli import main
    graph = tmp_path_factory.mktemp("tiny") / "g.ecmt"
    assert main(["--quiet", "convert", *TINY_VIT, "--data", "digits", "--calib-samples", "64", "-o", str(graph)]) == 0
    return graph


def test_convert_inspect_eval_round_trip(tmp_path, capsys):
    graph = tmp_path / "g.ecmt"
    rc, out, err = cli(capsys, "convert", *TINY_VIT, "--data", "digits", "--calib-samples", "64", "-o", str(graph))
    assert rc == 0, err
    assert graph.exists() and "MT neurons" in out
    rc, out, err = cli(capsys, "inspect", str(graph))
    assert rc == 0, err
    for text in ("mt_neuron", "product_ecm", "softmax_ecm", "MT neurons (8)", "spiking", "th_pos"):
        assert text in out
    rc, out, err = cli(capsys, "eval", str(graph), "--data", "digits", "-T", "4", "--limit", "64",
                       "--json", str(tmp_path / "r.json"))
    assert rc == 0, err
    assert "ANN accuracy" in out and len([ln for ln in out.splitlines() if "%" in ln]) == 5
    result = json.loads((tmp_path / "r.json").read_text())
    assert len(result["snn_accuracy"]) == 4 and result["samples"] == 64


@pytest.mark.slow
def test_eval_node_by_node_gives_the_fast_steps_accuracies(tiny_vit, tmp_path, capsys):
    # --node-by-node (the reference executor): the same accuracies as the fast default step,
    # up to an image whose class a rounding difference flips
    runs = {}
    for name, flags in (("fast", ()), ("reference", ("--node-by-node",))):
        rc, _, err = cli(capsys, "eval", str(tiny_vit), "--data", "digits", "-T", "4", "--limit", "64", *flags,
                         "--json", str(tmp_path / f"{name}.json"))
        assert rc == 0, err
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())["snn_accuracy"]
    assert max(abs(a - b) for a, b in zip(runs["reference"], runs["fast"])) <= 1 / 64 + 1e-9


def test_energy_reports_float_and_deployed_accuracy(tiny_vit, tmp_path, capsys):
    rc, out, err = cli(capsys, "energy", str(tiny_vit), "--data", "digits", "-T", "2", "--limit", "16",
                       "--hw", "cmos45-fp32,cmos45-int8,loihi2", "--report", str(tmp_path / "r"))
    assert rc == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(report["deployed"]) == {"int8-weights", "lava-fixed-point"}
    for fmt, users in (("int8-weights", "cmos45-int8"), ("lava-fixed-point", "loihi2")):
        dep = report["deployed"][fmt]
        assert (f"accuracy at T=2 ({users}): float {100 * report['accuracy'][-1]:.2f}%, deployed "
                f"({dep['format']}) {100 * dep['accuracy'][-1]:.2f}%") in out
    assert "accuracy (deployed, t=2)" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, fashion_mnist):
    """The one whole-program run: `python -m ecmt demo` in its own process."""
    r = ecmt_cli("demo", "--out", str(tmp_path), "-T", "2", "--limit", "64", "--energy-samples", "8",
                 "--calib-samples", "64")
    assert r.returncode == 0, r.stderr
    for name in ("demo_vit.ecmt", "demo_vit_multilevel.ecmt", "accuracy.json", "demo_vit.onnx", "demo_vit.nir",
                 "demo_vit.h5", "energy/report.json", "energy/report.md", "energy/report.html",
                 "energy_multi-level/report.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    result = json.loads((tmp_path / "accuracy.json").read_text())
    assert [len(result[g]["snn_accuracy"]) for g in ("demo_vit", "demo_vit_multilevel")] == [2, 2]
    assert "onnx export" in r.stdout and "lava export" in r.stdout
    # both SNN columns, the multi-level point's k and thresholds named, an operating point each
    assert "SNN, paper" in r.stdout and "SNN, multi-level" in r.stdout
    assert "thresholds x 0.0625, 12 levels, k = 4" in r.stdout
    points = r.stdout.split("demo: operating points")[1]
    assert "paper:" in points and "multi-level:" in points


USER_ERRORS = [
    (["inspect", "/nonexistent.ecmt"], None, "no such graph file"),
    (["eval", "/nonexistent.ecmt"], None, "no such graph file"),
    (["convert", "--model", "timm:not_a_model", "-o", "x.ecmt"], None, "cannot build timm model"),
    (["convert", "--model", "timm:not_a_model", "--levels", "2", "--spikes-per-step", "3", "-o", "x.ecmt"], None,
     "--spikes-per-step 3 exceeds --levels 2"),
    (["convert", "--model", "demo", "--data", "fashion-mnist", "-o", "x.ecmt"],
     {"ECMT_FASHION_MNIST": "/nonexistent"}, "Fashion-MNIST not found"),
    (["export", "/nonexistent.ecmt", "--to", "nir", "-o", "x.onnx"], None,
     "a nir export is written to a .nir file, not .onnx"),
    (["export", "/nonexistent.ecmt", "--to", "onnx", "-o", "model"], None, "not a file without an ending"),
    (["export", "/tmp/g.nir", "--to", "nir", "-o", "/tmp/g.nir"], None, "is the input graph"),
    (["export", "/nonexistent.ecmt", "--to", "onnx", "-o", "/tmp/"], None, "not a file without an ending"),
]


def assert_one_line_with_hints(err, expected):
    assert "Traceback" not in err
    first, *rest = err.strip().splitlines()
    assert first.startswith("ecmt: error:") and expected in first
    assert all(line.startswith("hint:") for line in rest)


@pytest.mark.parametrize("args, env, expected", USER_ERRORS)
def test_user_errors_are_one_line_with_a_hint(args, env, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    rc, _, err = cli(capsys, *args)
    assert rc == 2
    assert_one_line_with_hints(err, expected)


def test_a_user_error_exits_with_status_2_from_the_shell(tmp_path):
    """The same, as a process: exit status 2, one line and a hint on stderr, no traceback."""
    args, env, expected = USER_ERRORS[4]
    r = ecmt_cli(*args, env=env, cwd=tmp_path)
    assert r.returncode == 2
    assert_one_line_with_hints(r.stderr, expected)


@pytest.mark.parametrize("args, option, reason", [
    (["eval", "g.ecmt", "--limit", "0"], "--limit", "must be >= 1"),
    (["eval", "g.ecmt", "--limit", "-1"], "--limit", "must be >= 1"),
    (["eval", "g.ecmt", "--batch-size", "0"], "--batch-size", "must be >= 1"),
    (["eval", "g.ecmt", "-T", "0"], "-T", "must be >= 1"),
    (["energy", "g.ecmt", "--report", "r", "--hw", ""], "--hw", "names nothing"),
    (["energy", "g.ecmt", "--report", "r", "--mode", ","], "--mode", "names nothing"),
    (["convert", "-o", "x.ecmt", "--quantile", "1.5"], "--quantile", "must be in (0.5, 1]"),
    (["convert", "-o", "x.ecmt", "--quantile", "nan"], "--quantile", "must be in (0.5, 1]"),
    (["convert", "-o", "x.ecmt", "--target-T", "0"], "--target-T", "must be >= 1"),
    (["convert", "-o", "x.ecmt", "--calib-samples", "0"], "--calib-samples", "must be >= 1"),
    (["convert", "-o", "x.ecmt", "--device", "gpu0"], "--device", "is not a device"),
    (["demo", "--energy-samples", "0"], "--energy-samples", "must be >= 1"),
])
def test_bad_options_are_refused_before_any_work(args, option, reason, capsys):
    from ecmt.cli import main
    with pytest.raises(SystemExit) as exit_info:          # argparse: usage, then one error line
        main(args)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}" in last and reason in last, last


def test_export_options_for_another_format_are_refused(capsys):
    from ecmt.cli import main
    for args, expected in ((["--to", "nir", "-o", "x.nir", "--lava-layout", "netx"], "--lava-layout applies to"),
                           (["--to", "lava", "-o", "x.h5", "--unit-thresholds"], "--unit-thresholds applies to"),
                           (["--to", "onnx", "-o", "x.onnx", "--ppn"], "--ppn applies to"),
                           (["--to", "onnx", "-o", "x.onnx", "--nir-target", "norse"], "--nir-target applies to"),
                           (["--to", "nir", "-o", "x.nir", "--nir-target", "sinabs", "--ppn"],
                            "--nir-target writes the file for one library")):
        assert main(["export", "/nonexistent.ecmt", *args]) == 2
        assert expected in capsys.readouterr().err


def test_unknown_mode_and_profile_are_refused_before_any_work(tmp_path, capsys):
    from ecmt.cli import main
    for args, expected in ((["--mode", "fast"], "--mode fast: unknown mode 'fast'"),
                           (["--hw", "loihi,nope"], "hardware profile 'nope' not found"),
                           (["--hw", "cmos45-fp32,loihi", "--mode", "full,paper"],
                            "profile loihi (neuromorphic): mode 'paper'")):
        assert main(["energy", "/nonexistent.ecmt", "--report", str(tmp_path / "r"), *args]) == 2
        assert expected in capsys.readouterr().err
        assert not (tmp_path / "r").exists()


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.fashion_mnist("test", tmp_path)
    assert "apt-get install dataset-fashion-mnist" in err.value.hint


def test_user_tensor_file_and_image_folder(tmp_path):
    images = torch.rand(5, 1, 8, 8)
    torch.save({"images": images, "labels": torch.arange(5)}, tmp_path / "d.pt")
    split = data.load(str(tmp_path / "d.pt"), "test")
    assert torch.equal(split.images, images) and split.labels.tolist() == [0, 1, 2, 3, 4]
    from PIL import Image
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (6, 6), (i * 100, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    split = data.load(str(tmp_path / "imgs"), "test")
    assert split.images.shape == (4, 3, 6, 6) and split.labels.tolist() == [0, 0, 1, 1]
    # pixels scaled to [0, 1] then normalized (x - 0.5) / 0.5, channels first, files in name
    # order within each class
    red = (torch.tensor([0, 100, 0, 100]) / 255 - 0.5) / 0.5
    torch.testing.assert_close(split.images[:, 0], red.view(4, 1, 1).expand(4, 6, 6))
    assert torch.all(split.images[:, 1:] == -1)


def test_checkpoints_load_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"w": Boom()}, tmp_path / "evil.pt")
    from ecmt.errors import EcmtError
    with pytest.raises(EcmtError, match="cannot read checkpoint safely"):
        load_state_dict(tmp_path / "evil.pt")


def test_committed_demo_vit_reaches_85_percent(fashion_mnist):
    model = load_model("demo")
    test = fashion_mnist[1]
    with torch.no_grad():
        correct = sum((model(x).argmax(-1) == y).sum().item() for x, y in test.batches(500))
    accuracy = correct / len(test)
    recorded = json.loads(DEMO_CHECKPOINT.with_suffix(".json").read_text())["test_accuracy"]
    assert accuracy >= 0.85
    assert accuracy == pytest.approx(recorded, abs=1e-4)


def test_demo_training_is_reproducible(tmp_path, fashion_mnist):
    a = train_demo(tmp_path / "a.safetensors", epochs=1, limit=256, progress=False)
    b = train_demo(tmp_path / "b.safetensors", epochs=1, limit=256, progress=False)
    sa, sb = load_state_dict(tmp_path / "a.safetensors"), load_state_dict(tmp_path / "b.safetensors")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["test_accuracy"] == b["test_accuracy"]


def test_train_demo_trains_a_given_builder_and_recipe(tmp_path, fashion_mnist):
    # The path benchmarks/trained_zoo.py takes: a Demo with its own builder (here a
    # one-block EVA-02-like model) and recipe; its checkpoint loads strictly into a
    # fresh build, which reproduces the recorded test accuracy.
    from timm.models.eva import Eva
    from ecmt.evaluate import ann_accuracy
    from ecmt.errors import EcmtError
    from ecmt.zoo import DEMO_RECIPE, Demo

    def build():
        return Eva(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16, depth=1, num_heads=2,
                   mlp_ratio=2.0, swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4))

    recipe = {**DEMO_RECIPE, "batch_size": 64, "lr": 3e-3}
    demo = Demo(build, tmp_path / "unused.safetensors", recipe, {"model": "tiny eva"}, name="tiny-eva")
    info = train_demo(tmp_path / "eva.safetensors", model=demo, epochs=1, limit=256, progress=False)
    assert info["model"] == "tiny-eva" and info["recipe"] == {**recipe, "epochs": 1}
    assert info["train_images"] == 256 and not (tmp_path / "unused.safetensors").exists()
    model = build()
    model.load_state_dict(load_state_dict(tmp_path / "eva.safetensors"))          # strict
    assert ann_accuracy(model, fashion_mnist[1], progress=False) == info["test_accuracy"]
    assert json.loads((tmp_path / "eva.json").read_text())["test_accuracy"] == info["test_accuracy"]
    # a trained model differs from a fresh seeded build
    torch.manual_seed(recipe["seed"])
    fresh = build().state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in model.state_dict().items())
    with pytest.raises(EcmtError, match="unknown model 'demo-rnn'"):
        train_demo(tmp_path / "x.safetensors", model="demo-rnn")


@pytest.mark.parametrize("command", [
    ["energy", "/nonexistent.ecmt", "--report", "{taken}"],
    ["energy", "/nonexistent.ecmt", "--report", "/proc/ecmt-report"],
    ["convert", "--model", "demo-mlp", "-o", "/proc/ecmt/g.ecmt"],
    ["eval", "/nonexistent.ecmt", "--json", "/proc/ecmt.json"],
    ["export", "/nonexistent.ecmt", "--to", "nir", "-o", "/proc/ecmt.nir"],
    ["demo", "--out", "{taken}"],
    ["train-demo", "-o", "/proc/ecmt.safetensors"],
])
def test_every_command_checks_its_output_before_any_work(command, tmp_path, capsys):
    """An output where a file already is (a folder target), or in a place where nothing can be
    created (/proc refuses even root, whom permission bits do not stop): one line, exit 2,
    before the input is even read (the graph paths do not exist)."""
    from ecmt.cli import main
    (tmp_path / "taken").write_text("a file")
    args = [a.replace("{taken}", str(tmp_path / "taken")) for a in command]
    assert main(["--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("is a file, not a folder" in err or "cannot create a file in /proc" in err), err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_report_in_a_read_only_folder_is_refused(tmp_path, capsys):
    from ecmt.cli import main
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    assert main(["energy", "/nonexistent.ecmt", "--report", str(ro / "r")]) == 2
    assert "permission denied" in capsys.readouterr().err
