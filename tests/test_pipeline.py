"""ecmt pipeline: one config -> graph, accuracy, exports verified in their runtimes, energy, manifest;
and ecmt export --verify, which runs the same verification (exporters/verify.py) for one export."""
import hashlib
import json
import os

import pytest
import torch

from ecmt.cli import main

VIT_ARGS = {"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 10, "depth": 1, "embed_dim": 32,
            "num_heads": 2}


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("ECMT_COMPILE", "0")    # compiling kernels would dominate these small runs


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def tensor_data(path, n=12, size=28, seed=0):
    """A small data set as a tensor file (the pipeline's --data file form)."""
    g = torch.Generator().manual_seed(seed)
    torch.save({"images": torch.rand(n, 1, size, size, generator=g) * 2 - 1,
                "labels": torch.randint(0, 10, (n,), generator=g)}, path)
    return path


def write_config(tmp_path, text: str):
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_pipeline_end_to_end_on_a_small_vit_and_cnn(tmp_path, capsys):
    tensor_data(tmp_path / "small28.pt")
    tensor_data(tmp_path / "small8.pt", size=8)
    config = write_config(tmp_path, f"""
out = "runs"
[[model]]
name = "vit"
model = "timm:vit_tiny_patch16_224"
model_args = {{ {", ".join(f"{k} = {v}" for k, v in VIT_ARGS.items())} }}
data = "small8.pt"
calib_samples = 8
convert = {{ levels = 4 }}
export = ["onnx", "nir"]
verify_samples = 3
hardware = ["cmos45-fp32"]
energy_samples = 4
T = 3

[[model]]
name = "cnn"
model = "demo-cnn"
data = "small28.pt"
calib_samples = 12
convert = {{ levels = 8 }}
export = ["onnx", "nir", "lava"]
nir = {{ unit_thresholds = true, consumers = false }}
verify_samples = 3
lava_samples = 1
hardware = ["loihi", "cmos45-fp32"]
energy_samples = 4
T = 2
""")
    assert main(["--quiet", "pipeline", str(config)]) == 0
    out = tmp_path / "runs"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ok"] and manifest["versions"]["ecmt"] and manifest["versions"]["torch"]
    assert manifest["config"]["sha256"] == sha256(config)
    for name, data_file, formats in (("vit", "small8.pt", {"onnx", "nir"}), ("cnn", "small28.pt",
                                                                           {"onnx", "nir", "lava"})):
        entry = manifest["models"][name]
        assert entry["inputs"]["data"]["sha256"] == sha256(tmp_path / data_file)
        assert entry["graph"]["sha256"] == sha256(out / name / f"{name}.ecmt")
        assert set(entry["exports"]) == formats
        for fmt, e in entry["exports"].items():
            assert e["sha256"] == sha256(e["path"]) and os.path.dirname(e["path"]) == str(out / name)
            checks = {c["export"]: c for c in e["verification"]}
            exact = checks[fmt]
            # the runtimes that compute what the executor computes: every class the same, no deviation
            assert exact["ok"] and exact["agreement"] == 1.0 and exact["max_rel_diff"] <= 1e-5, exact
        assert len(entry["accuracy"]["snn_accuracy"]) == entry["options"]["T"]
        for path, digest in entry["energy"]["files"].items():
            assert digest == sha256(path)
    # the demo CNN at 8 levels does not fit a Loihi core in channel form: the manifest and a
    # warning say why, the report covers the CMOS profile
    energy = manifest["models"]["cnn"]["energy"]
    assert energy["profiles"] == ["cmos45-fp32"] and set(energy["refused"]) == {"loihi"}
    assert "input axons" in energy["refused"]["loihi"] and "over" in energy["refused"]["loihi"]
    assert "warning: energy on loihi: the network does not fit" in capsys.readouterr().err
    assert manifest["models"]["vit"]["energy"]["refused"] == {}
    assert manifest["models"]["cnn"]["inputs"]["checkpoint"]["sha256"]       # the packaged demo CNN
    lava = {c["export"]: c for c in manifest["models"]["cnn"]["exports"]["lava"]["verification"]}["lava"]
    assert lava["samples"] == 1 and lava["decisions"] > 0


@pytest.mark.parametrize("body, key", [
    ('name = "m"\nmodel = "demo-mlp"\ncheckpoint = "missing.safetensors"\nexport = ["onnx"]', "checkpoint"),
    ('name = "m"\nmodel = "demo-mlp"\nexport = ["onnx", "tflite"]', "export"),
    ('name = "m"\nmodel = "demo-mlp"\nexport = ["onnx"]\nverify_samples = 0', "verify_samples"),
    ('name = "m"\nmodel = "demo-mlp"\nexport = ["onnx"]\nT = "4"', "T"),
    ('name = "m"\nmodel = "demo-mlp"\nexport = ["onnx"]\nverify_sample = 4', "verify_sample"),
    ('name = "m"\nmodel = "demo-mlp"\nconvert = { levels = 8, quantile = 2.0 }', "convert.quantile"),
    ('name = "m"\nmodel = "demo-mlp"\nconvert = { level = 8 }', "level"),
    ('name = "m"\nmodel = "demo-mlp"\nhardware = ["loihi", "nope"]', "hardware"),
    ('name = "m"\ngraph = "missing.ecmt"', "graph"),
    ('name = "m"\nmodel = "demo-mlp"\ndata = "missing.pt"', "data"),
    ('name = "m"\nmodel = "demo-mlp"\nexport = ["nir"]\nnir = { target = "loihi" }', "nir.target"),
    ('name = "m"\nmodel = "demo-mlp"\nexport = ["nir"]\nnir = { target = "norse", ppn = true }', "nir.target"),
])
def test_hostile_configs_fail_before_any_work_naming_the_key(body, key, tmp_path, capsys):
    config = write_config(tmp_path, f'out = "runs"\n[[model]]\n{body}\n')
    assert main(["pipeline", str(config)]) == 2
    err = capsys.readouterr().err
    first = err.strip().splitlines()[0]
    assert first.startswith("ecmt: error:") and key in first and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()                # nothing was done, nothing written


def test_an_unwritable_output_fails_before_any_work(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    for out, expected in ((tmp_path / "taken", "is a file"), ("/proc/ecmt-pipeline", "cannot create a file")):
        config = write_config(tmp_path, f'out = "{out}"\n[[model]]\nname = "m"\nmodel = "demo-mlp"\n')
        assert main(["pipeline", str(config)]) == 2
        first = capsys.readouterr().err.strip().splitlines()[0]
        assert "out:" in first and expected in first, first


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_output_in_a_read_only_folder_fails_before_any_work(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    config = write_config(tmp_path, f'out = "{ro / "runs"}"\n[[model]]\nname = "m"\nmodel = "demo-mlp"\n')
    assert main(["pipeline", str(config)]) == 2
    assert "permission denied" in capsys.readouterr().err


@pytest.fixture(scope="module")
def mlp_graph(tmp_path_factory):
    import ecmt
    from models import relu_mlp
    path = tmp_path_factory.mktemp("g") / "mlp.ecmt"
    ecmt.save_graph(ecmt.convert(relu_mlp(), torch.randn(64, 1, 8, 8), progress=False).graph, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("to, suffix", [("onnx", "onnx"), ("nir", "nir")])
def test_export_verify_prints_one_agreement_line(to, suffix, mlp_graph, tmp_path, capsys):
    data = tensor_data(tmp_path / "d.pt", n=5, size=8)
    out = tmp_path / f"m.{suffix}"
    assert main(["export", str(mlp_graph), "--to", to, "-o", str(out), "--verify", "--data", str(data),
                 "--verify-samples", "4", "-T", "3"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"verify {to} ")]
    assert len(lines) == 1 and "4 images, T = 3" in lines[0] and "argmax agreement 100.0%" in lines[0]


def test_export_verify_fails_on_a_wrong_export_naming_image_and_size(tmp_path, capsys, monkeypatch):
    """A NIR writer that writes one linear layer's weights 1% too large: --verify says which
    export disagrees, on which image, by how much, and exits 1.  (A graph with every node
    kind: no consumer library runs it, so only the node map verifies it.)"""
    import numpy as np

    import ecmt
    from exporters.nir import writer
    from models import every_kind_graph
    ecmt.save_graph(every_kind_graph(), tmp_path / "g.ecmt")
    right = writer._np

    def wrong(t):
        a = right(t)
        return a * np.float32(1.01) if a.shape == (8, 4) else a          # node "fc"'s weight
    monkeypatch.setattr(writer, "_np", wrong)
    data = tensor_data(tmp_path / "d.pt", n=4, size=6)
    assert main(["export", str(tmp_path / "g.ecmt"), "--to", "nir", "-o", str(tmp_path / "m.nir"), "--verify",
                 "--data", str(data), "--verify-samples", "4"]) == 1
    out = capsys.readouterr().out
    assert "verify nir:" not in out                                   # consumers: not for this graph
    line = [ln for ln in out.splitlines() if ln.startswith("verify nir ")][0]
    assert "DISAGREES: image " in line and "step " in line and "deviation" in line, line


@pytest.mark.slow
def test_export_verify_runs_lava_in_lockstep_and_netx_bit_for_bit(mlp_graph, tmp_path, capsys):
    """A ReLU MLP takes the netx layout: Lava's simulator runs ecmt's processes in lockstep
    with the executor, and netx's record must equal ecmt's integer model of netx."""
    data = tensor_data(tmp_path / "d.pt", n=2, size=8)
    assert main(["export", str(mlp_graph), "--to", "lava", "-o", str(tmp_path / "m.h5"), "--verify", "--data",
                 str(data), "--verify-samples", "2", "-T", "3"]) == 0
    out = capsys.readouterr().out
    assert "in the netx layout" in out
    lava = [ln for ln in out.splitlines() if ln.startswith("verify lava ")][0]
    netx = [ln for ln in out.splitlines() if ln.startswith("verify netx ")][0]
    assert "argmax agreement 100.0%" in lava and " ties in " in lava and "DISAGREES" not in lava, lava
    assert "max deviation 0.00e+00" in netx and "DISAGREES" not in netx, netx


def test_pipeline_exits_1_and_records_a_disagreeing_export(tmp_path, capsys, monkeypatch):
    """The same wrong NIR writer inside the pipeline: the manifest is written with ok false
    and the failure (model, export, image, size), and the run exits 1."""
    import numpy as np

    import ecmt
    from exporters.nir import writer
    from models import every_kind_graph
    ecmt.save_graph(every_kind_graph(), tmp_path / "g.ecmt")
    right = writer._np
    monkeypatch.setattr(writer, "_np", lambda t: right(t) * np.float32(1.01) if right(t).shape == (8, 4) else right(t))
    tensor_data(tmp_path / "d.pt", n=4, size=6)
    config = write_config(tmp_path, 'out = "runs"\n[[model]]\nname = "g"\ngraph = "g.ecmt"\ndata = "d.pt"\n'
                                    'export = ["onnx", "nir"]\nverify_samples = 4\nT = 4\n')
    assert main(["--quiet", "pipeline", str(config)]) == 1
    manifest = json.loads((tmp_path / "runs" / "manifest.json").read_text())
    assert manifest["ok"] is False and len(manifest["failures"]) == 1
    assert manifest["failures"][0].startswith("model g, export nir (") and "image " in manifest["failures"][0]
    checks = {e: c["verification"][0]["ok"] for e, c in manifest["models"]["g"]["exports"].items()}
    assert checks == {"onnx": True, "nir": False}
    assert "verification failed: model g, export nir" in capsys.readouterr().err
