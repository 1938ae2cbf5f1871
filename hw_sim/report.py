"""Energy reports: versioned JSON, a Markdown summary, an HTML page with plots."""
from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path

from ecmt.atomic import write_text

SCHEMA = "ecmt.hw_sim.report"
VERSION = 1


@dataclasses.dataclass
class Report:
    data: dict

    # -- machine-readable ---------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, sort_keys=True, allow_nan=False) + "\n"

    @property
    def hardware(self) -> list[dict]:
        return self.data["hardware"]

    def result(self, profile: str, mode: str = "full") -> dict:
        for r in self.hardware:
            if r["profile"]["name"] == profile and r["mode"] == mode:
                return r
        raise KeyError(f"{profile} ({mode})")

    # -- human-readable -------------------------------------------------------------------
    def to_markdown(self) -> str:
        d = self.data
        lines = ["# Energy report", "",
                 f"Graph: {d['graph']['source']} ({d['graph']['nodes']} nodes, {d['graph']['mt_neurons']} MT "
                 f"neurons).  T = {d['T']} steps, {d['samples']} samples; figures are per inference.", "",
                 "Counting modes: `paper` counts only Linear layers and product ECMs (SNN energy = E_AC x "
                 "synaptic ops over T steps, ANN energy = E_MAC x dense MACs of one forward, as the ECMT "
                 "paper); `full` counts every operation (docs/energy.md).", "",
                 "| profile | mode | SNN energy (uJ) | ANN energy (uJ) | ratio | latency (ms) | cores | chips | "
                 "constants (silicon / pre-silicon / assumption) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in self.hardware:
            s = r["profile"]["statuses"]
            lines.append(
                f"| {r['profile']['name']} | {r['mode']} | {1e6 * r['energy_j']:.4g} | {1e6 * r['ann']['energy_j']:.4g} "
                f"({r['ann']['profile']}) | {r['energy_ratio']:.3f} | {1e3 * r['latency_s']:.4g} | "
                f"{r['cores_used'] if r['cores_used'] is not None else '-'} | "
                f"{r['chips'] if r['chips'] is not None else '-'} | "
                f"{s['silicon']} / {s['pre-silicon']} / {s['assumption']} |")
        lines += ["", "## Against T (one run: energy up to step t)", "",
                  "| t | accuracy | " + " | ".join(f"{r['profile']['name']} ({r['mode']})" for r in self.hardware)
                  + " |",
                  "|---|---|" + "---|" * len(self.hardware)]
        acc = d.get("accuracy")
        for t in range(d["T"]):
            a = f"{100 * acc[t]:.2f}%" if acc else "-"
            lines.append(f"| {t + 1} | {a} | " + " | ".join(
                f"{r['energy_ratio_per_t'][t]:.3f}" for r in self.hardware) + " |")
        counts = d["counts"]["per_step"]
        lines += ["", "## Events per step (per inference)", "",
                  "| t | spikes | synaptic ops | MACs | neuron updates |", "|---|---|---|---|---|"]
        for t in range(d["T"]):
            lines.append(f"| {t + 1} | {counts['spikes'][t]:.0f} | {counts['sops'][t]:.0f} | "
                         f"{counts['macs'][t]:.0f} | {counts['neuron_updates'][t]:.0f} |")
        first = self.hardware[0]
        top = sorted(first["layers"], key=lambda l: -l["energy_j"])[:12]
        lines += ["", f"## Largest consumers on {first['profile']['name']} ({first['mode']} mode)", "",
                  "| node | kind | energy (nJ) | core | host | memory |", "|---|---|---|---|---|---|"]
        for l in top:
            lines.append(f"| {l['name']} | {l['kind']} | {1e9 * l['energy_j']:.4g} | {1e9 * l['core_j']:.4g} | "
                         f"{1e9 * l['host_j']:.4g} | {1e9 * l['memory_j']:.4g} |")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        figures = "".join(f'<h2>{title}</h2><img src="data:image/png;base64,{png}"/>'
                          for title, png in self._figures())
        md = self.to_markdown()
        return ("<!doctype html><html><head><meta charset='utf-8'><title>ecmt energy report</title>"
                "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}pre{white-space:pre-wrap}"
                "img{max-width:100%}</style></head><body>"
                f"<h1>ecmt energy report</h1>{figures}<h2>Tables</h2><pre>{_escape(md)}</pre></body></html>\n")

    def _figures(self):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        d = self.data
        out = []
        first = self.hardware[0]
        layers = [l for l in first["layers"] if l["energy_j"] > 0]
        fig, ax = plt.subplots(figsize=(11, 4))
        names = [l["name"] for l in layers]
        bottom = [0.0] * len(layers)
        for part in ("core_j", "host_j", "memory_j"):
            vals = [1e9 * l[part] for l in layers]
            ax.bar(range(len(layers)), vals, bottom=bottom, label=part[:-2])
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(range(len(layers)), names, rotation=90, fontsize=5)
        ax.set_ylabel("nJ per inference")
        ax.legend()
        ax.set_title(f"Energy per node on {first['profile']['name']} ({first['mode']} mode, T={d['T']})")
        out.append(("Energy per layer", _png(fig, plt)))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(range(1, d["T"] + 1), d["counts"]["per_step"]["spikes"], marker="o")
        ax.set_xlabel("t")
        ax.set_ylabel("spikes per inference")
        ax.set_title("Spikes per step")
        out.append(("Spikes per step", _png(fig, plt)))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for r in self.hardware:
            ax.plot(range(1, d["T"] + 1), r["energy_ratio_per_t"], marker="o",
                    label=f"{r['profile']['name']} ({r['mode']})")
        ax.set_xlabel("T")
        ax.set_ylabel("SNN / ANN energy")
        if d.get("accuracy"):
            ax2 = ax.twinx()
            ax2.plot(range(1, d["T"] + 1), [100 * a for a in d["accuracy"]], "k--", label="accuracy")
            ax2.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7)
        ax.set_title("Energy ratio (and accuracy) against T")
        out.append(("Energy and accuracy against T", _png(fig, plt)))
        return out

    def write(self, folder) -> list[Path]:
        """report.json, report.md and report.html in `folder`, each written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        texts = {"report.json": self.to_json(), "report.md": self.to_markdown(), "report.html": self.to_html()}
        for name, text in texts.items():
            write_text(folder / name, text)
        return [folder / name for name in texts]


def _png(fig, plt) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
