"""Export time and peak memory of a 22 M-parameter ViT (vit_small_patch16_224) to ONNX.

    python benchmarks/onnx_export.py          # writes docs/benchmarks/onnx_export.md

Each form is exported in a fresh process so that peak memory (max RSS) is its own.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import machine_info, machine_markdown, write_result

OUT = Path(__file__).parent.parent / "docs" / "benchmarks"


def child(unroll: int | None, path: str) -> dict:
    import timm
    import torch

    import ecmt
    from exporters.onnx import export
    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    params = sum(p.numel() for p in model.parameters())
    t0 = time.time()
    spiking = ecmt.convert(model, torch.randn(8, 3, 224, 224), progress=False)
    convert_s = time.time() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    export(spiking.graph, path, unroll=unroll)
    export_s = time.time() - t0
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"unroll": unroll, "parameters": params, "convert_s": convert_s, "export_s": export_s,
            "peak_rss_mb_before_export": rss_before / 1024, "peak_rss_mb_after_export": rss_after / 1024,
            "file_mb": Path(path).stat().st_size / 2 ** 20}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        unroll = None if sys.argv[2] == "none" else int(sys.argv[2])
        print(json.dumps(child(unroll, sys.argv[3])))
        return
    rows = []
    for unroll in ("none", "4"):
        path = f"/tmp/ecmt_vit_small_{unroll}.onnx"
        out = subprocess.run([sys.executable, __file__, "--child", unroll, path], capture_output=True,
                             text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        Path(path).unlink(missing_ok=True)
        print(rows[-1], flush=True)
    info = machine_info()
    lines = ["# ONNX export of vit_small_patch16_224", "",
             "Produced by `python benchmarks/onnx_export.py`.  " + machine_markdown(info), "",
             "Random weights, converted with default calibration on 8 random images; each form exported "
             "in a fresh process.  Peak memory is the process's max RSS (it includes the model and the "
             "conversion, measured before and after the export).", "",
             "| form | parameters | convert (s) | export (s) | max RSS before export (MB) | "
             "max RSS after export (MB) | file (MB) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        form = "step" if r["unroll"] is None else f"unrolled, T = {r['unroll']}"
        lines.append(f"| {form} | {r['parameters']:,} | {r['convert_s']:.1f} | {r['export_s']:.1f} | "
                     f"{r['peak_rss_mb_before_export']:.0f} | {r['peak_rss_mb_after_export']:.0f} | "
                     f"{r['file_mb']:.1f} |")
    write_result(OUT, "onnx_export", {"machine": info, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
