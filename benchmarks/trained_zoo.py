"""Trained transformers of three families on Fashion-MNIST: ANN accuracy against SNN
accuracy at t = 1, 2, 4, 8.

    OMP_NUM_THREADS=2 python benchmarks/trained_zoo.py      # writes docs/benchmarks/trained_zoo.{md,json}
    python benchmarks/trained_zoo.py --only eva --limit 256 --no-write  # a subset, printed only
    python benchmarks/trained_zoo.py --merge a.json b.json  # one table from runs of --only subsets

The models, all at the demo's size (28x28 grey images, 4x4 patches, width 64,
4 blocks, 4 heads, about 139 k parameters):

* ViT: the shipped demo checkpoint (ecmt/assets/demo_vit.safetensors), not retrained;
* DeiT-3-like: a timm VisionTransformer with DeiT-3's flags (LayerScale, position
  embedding without the class token);
* EVA-02-like: a timm Eva with EVA-02's flags (SwiGLU MLP with its inner norm,
  rotary position embedding).

Each family is first checked to convert exactly (random weights: analog graph
against the model).  The two new ones are trained with the demo's seeded recipe
(ecmt.zoo.train_demo) for --epochs epochs; their checkpoints go to --cache and are
reused on a re-run (--retrain trains again).  Each model is converted twice, both
times calibrated on 512 training images: the paper's neuron (0.99-quantile
thresholds, 8 levels, one level per step) and the multi-level operating point of
docs/benchmarks/multilevel.md (thresholds / 16, 12 levels, up to 2 levels per
step).  One T = 8 pass per test batch gives the SNN accuracy after t = 1..8.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks"
CACHE = ROOT / ".cache" / "trained_zoo"
TS = (1, 2, 4, 8)
CALIBRATION_IMAGES = 512
TRAIN_IMAGES = 60_000
# name -> (convert options, threshold divisor exponent m): thresholds q / 2^m after conversion
NEURONS = {
    "paper (8 levels, k = 1)": ({}, 0),
    "multi-level (q/16, 12 levels, k = 2)": ({"levels": 12, "spikes_per_step": 2}, 4),
}


def build_deit3():
    """DeiT-3's flags (timm deit3_*: no_embed_class, LayerScale) at the demo's size.  timm's
    deit3 entries start LayerScale at 1e-6 (for hundreds of ImageNet epochs); a start of
    1e-4 lets a few epochs move the blocks' branches."""
    from timm.models.vision_transformer import VisionTransformer
    from ecmt.zoo import DEMO_CONFIG
    return VisionTransformer(**DEMO_CONFIG, no_embed_class=True, init_values=1e-4)


EVA02_FLAGS = dict(swiglu_mlp=True, scale_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(7, 7))


def build_eva02():
    """EVA-02's flags (timm eva02_*: SwiGLU MLP, the MLP's inner LayerNorm of the base and
    larger models, rotary position embedding on the 7x7 patch grid) at the demo's size;
    the SwiGLU hidden width 2/3 of the demo MLP's doubled width keeps the parameters equal."""
    from timm.models.eva import Eva
    from ecmt.zoo import DEMO_CONFIG
    return Eva(**{**DEMO_CONFIG, "mlp_ratio": 2.0 * 2 / 3}, **EVA02_FLAGS)


def families(cache: Path):
    from ecmt.zoo import DEMO_CONFIG, DEMO_RECIPE, DEMOS, Demo
    return {
        "ViT": DEMOS["demo"],
        "DeiT-3-like": Demo(build_deit3, cache / "deit3_like.safetensors", DEMO_RECIPE,
                            {**DEMO_CONFIG, "model": "timm VisionTransformer", "no_embed_class": True,
                             "init_values": 1e-4}, name="deit3-like"),
        "EVA-02-like": Demo(build_eva02, cache / "eva02_like.safetensors", DEMO_RECIPE,
                            {**DEMO_CONFIG, "model": "timm Eva", "mlp_ratio": 2.0 * 2 / 3,
                             **{k: list(v) if isinstance(v, tuple) else v for k, v in EVA02_FLAGS.items()}},
                            name="eva02-like"),
    }


def exactness(build) -> float:
    """Relative error of the analog graph against the model, random weights (benchmarks/zoo.py's check)."""
    import ecmt
    from ecmt.zoo import randomize
    torch.manual_seed(0)
    model = randomize(build())
    gen = torch.Generator().manual_seed(1)
    calib, x = torch.randn(16, 1, 28, 28, generator=gen), torch.randn(8, 1, 28, 28, generator=gen)
    spiking = ecmt.convert(model, calib, progress=False)
    with torch.no_grad():
        ref = model(x)
        return ((spiking.analog(x) - ref).norm() / ref.norm()).item()


def shown(path: Path) -> str:
    """A path as the report states it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def trained(fam: str, demo, epochs: int, train_limit: int | None, retrain: bool,
            progress: bool) -> tuple[torch.nn.Module, dict]:
    """The trained model and its training record: the shipped demo ViT as is; the others
    from the cache when it holds a checkpoint of the same recipe, else trained now."""
    from ecmt.zoo import load_state_dict, train_demo
    path = demo.checkpoint
    record = path.with_suffix(".json")
    cached = json.loads(record.read_text()) if path.exists() and record.exists() else None
    if fam == "ViT":
        if cached is None:
            raise SystemExit(f"{path} or its .json is missing: train it with `ecmt train-demo`")
        info = {**cached, "trained_here": False}
    elif (cached and not retrain and cached["recipe"] == {**demo.recipe, "epochs": epochs}
          and cached["train_images"] == min(train_limit or TRAIN_IMAGES, TRAIN_IMAGES)
          and cached["config"] == json.loads(json.dumps(demo.config))):
        print(f"[{fam}] reusing {shown(path)} ({cached['recipe']['epochs']} epochs)", flush=True)
        info = {**cached, "trained_here": False}
    else:
        if cached and not retrain:
            print(f"[{fam}] the cached checkpoint has another recipe or config; training again", flush=True)
        info = {**train_demo(path, model=demo, epochs=epochs, limit=train_limit, progress=progress),
                "trained_here": True}
        info.pop("checkpoint")
        print(f"[{fam}] trained {epochs} epochs in {info['train_seconds']:.0f} s: test accuracy "
              f"{100 * info['test_accuracy']:.2f}%", flush=True)
    model = demo.build()
    model.load_state_dict(load_state_dict(path))
    return model.eval(), {**info, "checkpoint": shown(path)}


def run_family(fam: str, demo, args, calib, test) -> dict:
    import ecmt
    from ecmt.evaluate import ann_accuracy, snn_accuracy
    err = exactness(demo.build)
    print(f"[{fam}] random weights: analog error {err:.1e}", flush=True)
    if err > 1e-5:
        raise SystemExit(f"{fam}: the analog graph is not exact on random weights ({err:.1e} > 1e-5); "
                         "fix the conversion before measuring accuracy")
    model, train_info = trained(fam, demo, args.epochs, args.train_limit, args.retrain, args.progress)
    ann = ann_accuracy(model, test, progress=False)
    print(f"[{fam}] ANN {100 * ann:.2f}% on {len(test)} images", flush=True)
    row = {"parameters": sum(p.numel() for p in model.parameters()), "config": demo.config,
           "random_weight_analog_error": err, "training": train_info, "ann_accuracy": ann, "neurons": {}}
    for neuron, (options, m) in NEURONS.items():
        t0 = time.time()
        spiking = ecmt.convert(model, calib, progress=False, threshold_scale=2.0 ** -m, **options)
        convert_s = time.time() - t0
        t0 = time.time()
        acc = snn_accuracy(spiking, test, max(TS), batch_size=args.batch_size, progress=False)
        eval_s = time.time() - t0
        row["neurons"][neuron] = {"options": {**options, "threshold_divisor": 2 ** m},
                                  "convert_seconds": round(convert_s, 1), "eval_seconds": round(eval_s, 1),
                                  "snn_accuracy": acc}
        print(f"[{fam}] {neuron}: " + "  ".join(f"t={t} {100 * acc[t - 1]:.2f} ({100 * (acc[t - 1] - ann):+.2f})"
                                                for t in TS)
              + f"  (convert {convert_s:.0f} s, eval {eval_s:.0f} s)", flush=True)
    return row


def produced_by(r: dict) -> str:
    """The command, or the runs (see merge) that made the result."""
    from machine import machine_markdown
    if "runs" not in r:
        return f"Produced by `{r['command']}`.  {machine_markdown(r['machine'])}"
    return "Produced by " + " and ".join(f"`{run['command']}` ({', '.join(run['models'])})"
                                         for run in r["runs"]) + ".  " + "  ".join(
        f"Machine of {', '.join(run['models'])}: {machine_markdown(run['machine'])[9:]}." for run in r["runs"]) + (
        "  Each run contributed the models it finished (`--merge` combined them).")


def merge(paths: list[Path]) -> dict:
    """One result from several runs' JSONs (for instance one run per model, each with
    --only), when they share the test images, epochs and training images."""
    parts = [json.loads(p.read_text()) for p in paths]
    keys = ("test_images", "calibration_images", "T", "epochs", "train_images")
    if any(tuple(q[k] for k in keys) != tuple(parts[0][k] for k in keys) for q in parts):
        raise SystemExit(f"--merge: the runs differ in {keys}; they cannot share one table")
    result = {**{k: parts[0][k] for k in keys}, "models": {},
              "runs": [{"command": q["command"], "machine": q["machine"], "seconds": q.get("seconds"),
                        "models": list(q["models"])} for q in parts]}
    for q in parts:
        result["models"].update(q["models"])
    return result


def render(r: dict) -> str:
    n = r["test_images"]
    lines = ["# Trained transformers of three families: ANN against SNN accuracy", "",
             produced_by(r), "",
             "Fashion-MNIST test split, "
             + (f"the first {n:,} of 10,000 images (the full split did not fit this run's time)" if n < 10_000
                else "all 10,000 images")
             + f".  Calibration: {r['calibration_images']} training images, 0.99-quantile per tensor.  "
             "SNN accuracy after step t of one T = 8 pass, in %; in parentheses SNN minus ANN, in points.  "
             "Two neurons: the paper's (thresholds at the quantile, 8 levels, one level per step) and the "
             "multi-level operating point of [multilevel.md](multilevel.md) (`levels=12, spikes_per_step=2`, "
             "every threshold divided by 16: the same top level with 16x finer steps).", "",
             "| model | neuron | ANN | " + " | ".join(f"t = {t}" for t in TS) + " |",
             "|---|---|---|" + "---|" * len(TS)]
    for fam, m in r["models"].items():
        ann = m["ann_accuracy"]
        for neuron, row in m["neurons"].items():
            cells = [f"{100 * a:.2f} ({100 * (a - ann):+.2f})" for a in (row["snn_accuracy"][t - 1] for t in TS)]
            lines.append(f"| {fam} | {neuron} | {100 * ann:.2f} | " + " | ".join(cells) + " |")
    firsts = []
    for fam, m in r["models"].items():
        for neuron, row in m["neurons"].items():
            t = next((t for t in TS if row["snn_accuracy"][t - 1] >= m["ann_accuracy"] - 0.01 - 1e-12), None)
            firsts.append(f"{fam}, {neuron.split(' (')[0]}: " + (f"t = {t}" if t else f"not by t = {max(TS)}"))
    lines += ["", "First t within 1 point of the ANN: " + "; ".join(firsts) + "."]
    lines += ["", "## The models", "",
              "All at the demo's size (`ecmt.zoo.DEMO_CONFIG`: 28x28x1, 4x4 patches, width 64, 4 blocks, 4 heads), "
              "trained with the demo's seeded recipe (`ecmt.zoo.train_demo`: AdamW, lr 2e-3, weight decay 0.05, "
              "1 warm-up epoch then cosine, batch 128, flips and 2-pixel shifts, label smoothing 0.1).  "
              "The ViT is the shipped demo checkpoint, trained for 12 epochs on all 60,000 training images; "
              f"the other two for {r['epochs']} epochs here, on "
              + (f"the first {r['train_images']:,} (what this run's time allowed)" if r["train_images"] < TRAIN_IMAGES
                 else "all of them")
              + ": the ANN accuracies compare training budgets, not families.  "
              "Exactness: the analog graph's relative error against the model with random weights "
              "(`ecmt.zoo.randomize`; must be <= 1e-5).  Conversion time: lowering + calibration.  Times are "
              "wall times on a 2-core machine shared with other jobs, so they are noisy.", "",
              "| model | family flags | parameters | epochs x images | train time (s) | ANN, full test split | "
              "exactness | convert (s), paper / multi-level | SNN eval (s), paper / multi-level |",
              "|---|---|---|---|---|---|---|---|---|"]
    flags = {"ViT": "timm VisionTransformer (class token, learned position embedding, GELU MLP)",
             "DeiT-3-like": "`no_embed_class=True, init_values=1e-4` (LayerScale)",
             "EVA-02-like": "timm `Eva`: `swiglu_mlp, scale_mlp, use_rot_pos_emb, ref_feat_shape=(7, 7)`, "
                            "mlp_ratio 4/3"}
    for fam, m in r["models"].items():
        t = m["training"]
        conv = " / ".join(f"{row['convert_seconds']:.1f}" for row in m["neurons"].values())
        ev = " / ".join(f"{row['eval_seconds']:.0f}" for row in m["neurons"].values())
        when = "" if t["trained_here"] else (" (shipped)" if fam == "ViT" else " (cached)")
        lines.append(f"| {fam} | {flags.get(fam, '')} | {m['parameters']:,} | {t['recipe']['epochs']} x {t['train_images']:,} | "
                     f"{t['train_seconds']:.0f}{when} on {t['threads']} thread{'s' if t['threads'] != 1 else ''} | {100 * t['test_accuracy']:.2f} | "
                     f"{m['random_weight_analog_error']:.1e} | {conv} | {ev} |")
    lines += ["", "The training time of a cached or shipped checkpoint is the one recorded when it was trained "
              "(its .json).  The ANN column of the first table is on this run's test images; this one on all "
              "10,000."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--limit", type=int, help="first N test images (default: all 10,000)")
    ap.add_argument("--epochs", type=int, default=4, help="training epochs of the DeiT-3- and EVA-02-like models "
                    "(default 4; the shipped demo ViT keeps its 12)")
    ap.add_argument("--train-limit", type=int, help="train on the first N training images (default: all 60,000)")
    ap.add_argument("--progress", action="store_true", help="show training progress bars (stderr)")
    ap.add_argument("--retrain", action="store_true", help="train again even when --cache holds checkpoints")
    ap.add_argument("--cache", type=Path, default=CACHE, help=f"checkpoint folder (default {CACHE.relative_to(ROOT)})")
    ap.add_argument("--only", help="comma-separated substrings of model names (vit, deit, eva)")
    ap.add_argument("--batch-size", type=int, default=256, help="SNN evaluation batch")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks alone")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="only combine earlier runs' JSONs (e.g. one per --only) into one result under --out")
    args = ap.parse_args()
    if args.merge:
        sys.path.insert(0, str(Path(__file__).parent))
        from machine import write_result
        merged = merge(args.merge)
        write_result(args.out, "trained_zoo", merged, render(merged))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from machine import machine_info, write_result
    from ecmt import data
    from ecmt.convert import calibration_batches

    chosen = {f: d for f, d in families(args.cache).items()
              if not args.only or any(s.lower() in f.lower() for s in args.only.split(","))}
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test").take(args.limit)
    calib = calibration_batches(train.sample(CALIBRATION_IMAGES))
    t0 = time.time()
    # the command as the result states it: where it was written does not change it
    argv = [a for i, a in enumerate(sys.argv[1:]) if a != "--out" and sys.argv[i] != "--out"
            and not a.startswith("--out=")]
    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())} "
               f"python benchmarks/trained_zoo.py {shlex.join(argv)}".rstrip())
    result = {"machine": machine_info(), "command": command, "test_images": len(test),
              "calibration_images": CALIBRATION_IMAGES, "T": max(TS), "epochs": args.epochs,
              "train_images": min(args.train_limit or TRAIN_IMAGES, TRAIN_IMAGES), "models": {}}
    for fam, demo in chosen.items():
        result["models"][fam] = run_family(fam, demo, args, calib, test)
        result["seconds"] = round(time.time() - t0, 1)
        # written after every model, so that a run cut short keeps what it measured
        if not args.no_write:
            write_result(args.out, "trained_zoo", result, render(result))
    if args.no_write:
        print(render(result))


if __name__ == "__main__":
    main()
