"""Energy reports: versioned JSON, a Markdown summary, a self-contained HTML page.

Both human-readable forms open with the headline (per profile and mode: accuracy,
energy per inference with its range and 95% interval, ratio to the ANN baseline,
latency, throughput, power, cores / chips), then the operating point, how to read
the report, energy by category, latency by phase, the constants that move the
result most, the curves against t and per-layer tables for every entry.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
from pathlib import Path

from ecmt.atomic import write_text

SCHEMA = "ecmt.hw_sim.report"
VERSION = 3
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")
TOP_LAYERS = 15          # layers plotted per entry (every layer is in the table)
TOP_CONSTANTS = 5        # constants listed per entry in the sensitivity tables
# One colour per energy category in every plot.
COLOURS = {"synapse": "#4477aa", "neuron": "#ee6677", "network": "#228833", "chip_links": "#117733",
           "host": "#ccbb44", "analog": "#66ccee", "memory": "#aa3377", "static": "#bbbbbb"}
# Column order of categories and phases (report.json stores its keys sorted).
CATEGORY_ORDER = ("synapse", "neuron", "network", "chip_links", "host", "analog", "memory", "static")
PHASE_ORDER = ("cores", "chip_links", "barrier", "host", "compute")

HOW_TO_READ = [
    "Every figure is per inference: counts from a real run on the samples, divided by their number.",
    "Counting (docs/energy.md): a synaptic op is one (non-zero spike, weight) pair, whatever the spike's level; "
    "MT neurons update every step; what neuromorphic cores cannot do (ECM nonlinearities, products of two "
    "spike streams, analog layers) is charged to the profile's host processor.",
    "Mode `full` prices every operation; mode `paper` is the ECMT paper's formula (E_AC x synaptic ops over "
    "E_MAC x dense MACs, Linear layers and products only) and is given on CMOS profiles only.",
    "Ratio: the spiking network's energy over one forward of the ANN on the baseline profile named beside it "
    "(neuromorphic profiles: cmos45-fp32).",
    "Range: every constant at the end of its stated range that lowers (min) or raises (max) the result, all "
    "at once, with the counts of this run.  Sensitivity: one constant at a time at each end of its range, the "
    "others nominal.  Ranges come from the sources' own spread or are marked as assumptions in each "
    "profile's constants table.",
    "95% interval: of the mean over samples (1.96 standard errors), for the energy up to every t and for the "
    "latency; it covers the sampling of inputs, not the constants.  Latency: per sample on CMOS (operations "
    "over throughput); on neuromorphic profiles each sample's detailed schedule plus its host time; 'fixed' "
    "where the latency does not depend on the data.",
    "Deployed accuracy: on a profile deployed in a fixed-point format (its `deployment`), the graph run in "
    "the executor in that format (int8 weights as the Lava exporter rounds them; on Lava fixed point also "
    "integer MT membranes, as Lava's fixed-point model), next to the float accuracy.",
    "Throughput = 1 / latency (one inference at a time, no pipelining); power = energy / latency.",
    "Operating point: the first t whose accuracy is within 1 point of the ANN's on the same samples.",
]


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

    # -- the sections, as (title, intro, headers, rows) shared by Markdown and HTML -------------
    def _label(self, r: dict) -> str:
        return f"{r['profile']['name']} ({r['mode']})"

    def _accuracy(self, t: int | None) -> str:
        acc = self.data.get("accuracy")
        return f"{100 * acc[t - 1]:.2f}%" if acc and t else "-"

    def _deployed(self, r: dict, t: int) -> str:
        """The accuracy at step t of the entry's deployed number format, with the format."""
        fmt = r.get("deployment")
        dep = self.data.get("deployed", {}).get(fmt) if fmt else None
        if dep is None:
            return "-" if not fmt else f"({fmt}: no labels)"
        return f"{100 * dep['accuracy'][t - 1]:.2f}% ({dep['format']})"

    def _headline(self):
        d = self.data
        T = d["T"]
        headers = ["profile", "mode", f"accuracy (float, t={T})", f"accuracy (deployed, t={T})", "energy (uJ)",
                   "range (uJ)", "95% interval (uJ)", "ratio to ANN", "ANN baseline (uJ)", "latency (ms)",
                   "latency 95% interval (ms)", "throughput (inf/s)", "power (mW)", "cores / chips"]
        rows = []
        for r in self.hardware:
            lo, _, hi = r["range"]["energy_j"]
            iv = r["interval95"]["energy_j"] if r["interval95"] else None
            cores = "-" if r["cores_used"] is None else f"{r['cores_used']} / {r['chips']}"
            lat = (r["interval95"] or {}).get("latency_s")
            lat = f"{_g(1e3 * lat[0])} - {_g(1e3 * lat[1])}" if lat else "fixed" if r["interval95"] else "-"
            rows.append([r["profile"]["name"], r["mode"], self._accuracy(T), self._deployed(r, T),
                         _g(1e6 * r["total_j"]),
                         f"{_g(1e6 * lo)} - {_g(1e6 * hi)}", f"{_g(1e6 * iv[0])} - {_g(1e6 * iv[1])}" if iv else "-",
                         f"{r['energy_ratio']:.3f}", f"{_g(1e6 * r['ann']['energy_j'])} ({r['ann']['profile']})",
                         _g(1e3 * r["latency_s"]), lat, _g(1 / r["latency_s"]) if r["latency_s"] else "-",
                         _g(1e3 * r["total_j"] / r["latency_s"]) if r["latency_s"] else "-", cores])
        ann = d.get("ann_accuracy")
        intro = (f"At T = {T} steps, {d['samples']} samples; ANN accuracy on the same samples "
                 f"{100 * ann:.2f}%." if ann is not None else f"At T = {T} steps, {d['samples']} samples.")
        formats = {r["profile"]["name"]: r["spike_format"] for r in self.hardware if "spike_format" in r}
        if formats:      # how each profile prices a spike of several levels (hw_sim/energy.py)
            intro += "  Spikes: " + "; ".join(f"{name}: {f['rule']}" + (
                f" ({f['payload_bits']}-bit payload)" if "payload_bits" in f else "") for name, f in formats.items()) + "."
        return "Headline", intro, headers, rows

    def _operating_point(self):
        d = self.data
        t = d["operating_point"]["t"]
        within = 100 * d["operating_point"]["within"]
        if d.get("ann_accuracy") is None:
            return ("Operating point", "Accuracy unknown (no labels): see the headline at T.", [], [])
        if t is None:
            return ("Operating point", f"No t <= {d['T']} reaches within {within:g} point of the ANN's "
                    f"{100 * d['ann_accuracy']:.2f}%: the headline at T is the figure to use.", [], [])
        headers = ["profile", "mode", "t", "accuracy", "energy (uJ)", "ratio to ANN", "latency (ms)",
                   f"energy at T={d['T']} (uJ)"]
        rows = [[r["profile"]["name"], r["mode"], str(t), self._accuracy(t), _g(1e6 * r["energy_per_t_j"][t - 1]),
                 f"{r['energy_ratio_per_t'][t - 1]:.3f}", _g(1e3 * sum(r["latency_per_step_s"][:t])),
                 _g(1e6 * r["total_j"])] for r in self.hardware]
        return ("Operating point", f"t = {t}: the first step whose accuracy is within {within:g} point of the "
                f"ANN's {100 * d['ann_accuracy']:.2f}%; energy and latency up to that step.", headers, rows)

    def _categories(self):
        cats = _ordered(c for r in self.hardware for c in r["energy_by_category_j"])
        rows = [[self._label(r)] + [_g(1e6 * r["energy_by_category_j"].get(c, 0.0)) for c in cats]
                + [_g(1e6 * r["total_j"])] for r in self.hardware]
        return ("Energy by category (uJ)", "Synapse, neuron and network: on the cores (neuromorphic); chip_links: "
                "messages between chips; host: the host cores' operations, memory traffic and chip-host "
                "transfers; analog and memory: CMOS operations other than synaptic adds and MT updates, and SRAM "
                "traffic; static: static power x chips x latency.",
                ["entry"] + cats + ["total"], rows)

    def _phases(self):
        phases = _ordered((p for r in self.hardware for p in r["latency_by_phase_s"]), PHASE_ORDER)
        rows = [[self._label(r)] + [_g(1e3 * r["latency_by_phase_s"].get(p, 0.0)) if p in r["latency_by_phase_s"]
                                    else "-" for p in phases] + [_g(1e3 * r["latency_s"])] for r in self.hardware]
        return ("Latency by phase (ms)", "Summed over the T steps.  cores: the detailed schedule of each chip phase "
                "(at least a tick where the chip has one); chip_links: chip-to-chip link delays; barrier: one "
                "synchronization per chip phase; host: the host cores' operations and chip-host transfers (host "
                "and cores do not overlap); compute: a CMOS accelerator's operations.",
                ["entry"] + phases + ["total"], rows)

    def _sensitivity(self):
        rows = []
        for r in self.hardware:
            for s in [s for s in r["sensitivity"] if s["energy_j"][0] != s["energy_j"][1]][:TOP_CONSTANTS]:
                c = r["profile"]["constants"][s["constant"]]
                rows.append([self._label(r), s["constant"], f"{c['value']:.4g} [{c['range'][0]:.4g}, "
                             f"{c['range'][1]:.4g}] {c['unit']}", c["status"],
                             f"{_g(1e6 * s['energy_j'][0])} / {_g(1e6 * s['energy_j'][1])}",
                             c["range_source"] or c["source"]])
            if r["sensitivity_not_covered"]:
                rows.append([self._label(r), "not re-priced", ", ".join(r["sensitivity_not_covered"]), "", "",
                             "mapping constants: they change the placement on the cores, which is not redone"])
        return ("Which constants decide the result", f"The {TOP_CONSTANTS} constants per entry whose range moves "
                "the energy most, one at a time (the others nominal): energy with the constant at the low / "
                "high end of its range.", ["entry", "constant", "value [low, high]", "status",
                                           "energy at low / high (uJ)", "range from"], rows)

    def _against_t(self):
        d = self.data
        formats = list(d.get("deployed", {}))
        headers = (["t", "accuracy"] + [f"accuracy ({f})" for f in formats]
                   + [f"{self._label(r)} uJ ± 95% (ratio)" for r in self.hardware])

        def cell(r, t):
            iv = (r["interval95"] or {}).get("energy_per_t_j")
            pm = f" ± {_g(1e6 * (iv[t][1] - iv[t][0]) / 2)}" if iv else ""
            return f"{_g(1e6 * r['energy_per_t_j'][t])}{pm} ({r['energy_ratio_per_t'][t]:.3f})"
        rows = [[str(t + 1), self._accuracy(t + 1)]
                + [f"{100 * d['deployed'][f]['accuracy'][t]:.2f}%" for f in formats]
                + [cell(r, t) for r in self.hardware] for t in range(d["T"])]
        return ("Against t (one run: energy up to step t)", "Energy ± the half-width of its 95% interval over "
                "samples; accuracy in float and, where a profile is deployed in a fixed-point format, in that "
                "format.", headers, rows)

    def _events(self):
        c = self.data["counts"]["per_step"]
        rows = [[str(t + 1)] + [f"{c[f][t]:.0f}" for f in ("spikes", "sops", "macs", "neuron_updates")]
                for t in range(self.data["T"])]
        return "Events per step (per inference)", "", ["t", "spikes", "synaptic ops", "MACs", "neuron updates"], rows

    def _layers(self, r: dict, limit: int | None = None):
        cats = [c for c in _ordered(r["energy_by_category_j"]) if c != "static"]
        layers = sorted((l for l in r["layers"] if l["energy_j"] > 0), key=lambda l: (-l["energy_j"], l["name"]))
        total = sum(l["energy_j"] for l in layers) or 1.0
        rows = [[l["name"], l["kind"], _g(1e9 * l["energy_j"]), f"{100 * l['energy_j'] / total:.1f}%"]
                + [_g(1e9 * l["by_category_j"].get(c, 0.0)) for c in cats] for l in layers[:limit]]
        note = "" if limit is None or len(layers) <= limit else f"The {limit} largest of {len(layers)} layers."
        if "mesh" in r:
            note += (" On-chip energies are per group of neurons (an MT neuron's group also carries the "
                     "synaptic events and messages of its spikes); static energy belongs to no layer.")
        return (f"Layers on {self._label(r)}, by energy (nJ)", note.strip(),
                ["node", "kind", "energy", "share"] + cats, rows)

    def _constants(self, r: dict):
        constants = r["profile"]["constants"]
        sections = ("energy", "timing", "mesh", "chips", "host")
        keys = sorted(constants, key=lambda k: (sections.index(k.split(".")[0]) if k.split(".")[0] in sections
                                                else len(sections), k))
        rows = [[k, f"{c['value']:.4g}", f"{c['range'][0]:.4g} - {c['range'][1]:.4g}", c["unit"], c["status"],
                 c["source"], c["range_source"] or "no range stated"] for k, c in ((k, constants[k]) for k in keys)]
        return (f"Constants of {r['profile']['name']}", r["profile"]["description"],
                ["constant", "value", "range", "unit", "status", "source", "range from"], rows)

    def _sections(self, layer_limit: int | None):
        d = self.data
        out = [self._headline(), self._operating_point(), self._categories(), self._phases(),
               self._sensitivity(), self._against_t(), self._events()]
        out += [self._layers(r, layer_limit) for r in self.hardware]
        seen = set()
        for r in self.hardware:
            if r["profile"]["name"] not in seen:
                seen.add(r["profile"]["name"])
                out.append(self._constants(r))
        head = (f"Graph: {d['graph']['source']} ({d['graph']['nodes']} nodes, {d['graph']['mt_neurons']} MT "
                f"neurons).  T = {d['T']} steps, {d['samples']} samples; figures per inference.")
        return head, out

    # -- human-readable -------------------------------------------------------------------
    def to_markdown(self) -> str:
        head, sections = self._sections(layer_limit=10)
        lines = ["# Energy report", "", head]
        for i, (title, intro, headers, rows) in enumerate(sections):
            if i == 2:       # after the headline and the operating point
                lines += ["", "## How to read this", ""] + [f"* {s}" for s in HOW_TO_READ]
            lines += ["", f"## {title}", ""]
            if intro:
                lines += [intro, ""]
            if headers:
                lines.append("| " + " | ".join(headers) + " |")
                lines.append("|" + "---|" * len(headers))
                lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        head, sections = self._sections(layer_limit=None)
        figures = dict(self._figures())
        parts = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
                 "<title>ecmt energy report</title>", f"<style>{CSS}</style></head><body>",
                 "<h1>ecmt energy report</h1>", f"<p>{_e(head)}</p>"]
        # section title -> the figure shown under it
        placed = {"Headline": "compare", "Energy by category (uJ)": "categories",
                  "Against t (one run: energy up to step t)": "against_t"}
        for i, (title, intro, headers, rows) in enumerate(sections):
            parts.append(f"<section><h2>{_e(title)}</h2>")
            if intro:
                parts.append(f"<p>{_e(intro)}</p>")
            if title in figures:             # a layer table: its top layers plotted above it
                parts.append(_img(figures[title], title))
            if headers:
                parts.append(_html_table(headers, rows))
            if title in placed and placed[title] in figures:
                parts.append(_img(figures[placed[title]], title))
            parts.append("</section>")
            if i == 1:       # after the headline and the operating point
                parts.append("<section><h2>How to read this</h2><ul>"
                             + "".join(f"<li>{_e(s)}</li>" for s in HOW_TO_READ) + "</ul></section>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def _figures(self):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        plt.rcParams.update({"font.size": 11})
        d = self.data
        out = []
        entries = self.hardware
        if len({r["profile"]["name"] for r in entries}) > 1:
            fig, ax = plt.subplots(figsize=(10, 0.6 * len(entries) + 1.6))
            labels = [self._label(r) for r in entries]
            vals = [1e6 * r["total_j"] for r in entries]
            lo = [1e6 * (r["total_j"] - r["range"]["energy_j"][0]) for r in entries]
            hi = [1e6 * (r["range"]["energy_j"][2] - r["total_j"]) for r in entries]
            ax.barh(range(len(entries)), vals, xerr=[lo, hi], color="#4477aa", capsize=4)
            ax.set_yticks(range(len(entries)), labels)
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.set_xlabel(f"energy per inference at T={d['T']} (uJ); bars: range over the constants")
            ax.set_title("Profiles side by side")
            out.append(("compare", _png(fig, plt)))
        full = [r for r in entries if r["mode"] == "full"] or entries
        fig, axes = plt.subplots(1, len(full), figsize=(max(6, 4.5 * len(full)), 4.8), squeeze=False)
        steps = range(1, d["T"] + 1)
        for ax, r in zip(axes[0], full):
            bottom = [0.0] * d["T"]
            for c in _ordered(r["energy_by_category_per_step_j"]):
                v = [1e6 * x for x in r["energy_by_category_per_step_j"][c]]
                if any(v):
                    ax.bar(steps, v, bottom=bottom, label=c, color=COLOURS.get(c))
                    bottom = [b + x for b, x in zip(bottom, v)]
            ax.set_title(self._label(r), fontsize=11)
            ax.set_xlabel("step t")
            ax.set_ylabel("uJ per inference in step t")
            ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, frameon=False)
        fig.suptitle("Energy by category, per step (static power included)")
        out.append(("categories", _png(fig, plt)))
        fig, ax = plt.subplots(figsize=(10, 5.2))
        for r in entries:
            line, = ax.plot(steps, [1e6 * e for e in r["energy_per_t_j"]], marker="o", label=self._label(r))
            iv = (r["interval95"] or {}).get("energy_per_t_j")
            if iv:            # the 95% interval over samples at every t
                ax.fill_between(steps, [1e6 * a for a, _ in iv], [1e6 * b for _, b in iv], color=line.get_color(),
                                alpha=0.25, linewidth=0)
        ax.set_yscale("log")
        ax.set_xlabel("t (steps run)")
        ax.set_ylabel("energy up to step t (uJ per inference)")
        t_op = d["operating_point"]["t"]
        if t_op:
            ax.axvline(t_op, color="grey", linestyle=":", label=f"operating point t={t_op}")
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
        if d.get("accuracy"):
            ax2 = ax.twinx()
            ax2.plot(steps, [100 * a for a in d["accuracy"]], "k--", label="SNN accuracy")
            for (f, dep), style in zip(d.get("deployed", {}).items(), ("-.", ":", (0, (5, 1)))):
                ax2.plot(steps, [100 * a for a in dep["accuracy"]], color="#7f7f7f", linestyle=style,
                         label=f"SNN accuracy, {f}")
            if d.get("ann_accuracy") is not None:
                ax2.axhline(100 * d["ann_accuracy"], color="k", linewidth=0.8, label="ANN accuracy")
            ax2.set_ylabel("accuracy (%)")
            ax2.legend(fontsize=9, loc="lower right")
        ax.set_title("Energy (band: its 95% interval over samples) and accuracy against t")
        out.append(("against_t", _png(fig, plt)))
        for r in entries:
            title = self._layers(r)[0]
            layers = sorted((l for l in r["layers"] if l["energy_j"] > 0),
                            key=lambda l: (-l["energy_j"], l["name"]))[:TOP_LAYERS]
            if not layers:
                continue
            fig, ax = plt.subplots(figsize=(10, 0.32 * len(layers) + 1.4))
            left = [0.0] * len(layers)
            for c in _ordered(r["energy_by_category_j"]):
                v = [1e9 * l["by_category_j"].get(c, 0.0) for l in layers]
                if any(v):
                    ax.barh(range(len(layers)), v, left=left, label=c, color=COLOURS.get(c))
                    left = [a + b for a, b in zip(left, v)]
            ax.set_yticks(range(len(layers)), [l["name"] for l in layers], fontsize=10)
            ax.invert_yaxis()
            ax.set_xlabel("nJ per inference")
            ax.legend(fontsize=9, loc="lower right")
            ax.set_title(f"The {len(layers)} largest layers on {self._label(r)}")
            out.append((title, _png(fig, plt)))
        return out

    def write(self, folder) -> list[Path]:
        """report.json, report.md and report.html in `folder`, each written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        texts = {"report.json": self.to_json(), "report.md": self.to_markdown(), "report.html": self.to_html()}
        for name, text in texts.items():
            write_text(folder / name, text)
        return [folder / name for name in texts]


CSS = ("body{font-family:system-ui,sans-serif;max-width:1240px;margin:auto;padding:0 12px;color:#222}"
       "table{border-collapse:collapse;margin:8px 0 16px;font-size:14px}"
       "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top;white-space:nowrap}"
       "td.text{text-align:left;white-space:normal;min-width:18em}td.wrap{white-space:normal}"
       "th{background:#eef2f7;white-space:normal}td:first-child,th:first-child{text-align:left}"
       "tr:nth-child(even) td{background:#fafafa}img{max-width:100%;display:block;margin:8px 0}"
       "section{margin-bottom:18px}h2{border-bottom:1px solid #ddd;padding-bottom:2px}")


def _ordered(keys, order=CATEGORY_ORDER) -> list[str]:
    keys = set(keys)
    return [k for k in order if k in keys] + sorted(keys - set(order))


def _g(v: float) -> str:
    return f"{v:.4g}"


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


# Columns of prose: left-aligned and wrapped; of pairs: wrapped where the page is narrow
# (every other cell stays on one line).
TEXT_COLUMNS = {"source", "range from"}
WRAP_COLUMNS = {"range (uJ)", "95% interval (uJ)", "ANN baseline (uJ)", "latency 95% interval (ms)"}


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    cls = [" class='text'" if h in TEXT_COLUMNS else " class='wrap'" if h in WRAP_COLUMNS
           or h.startswith("accuracy (deployed") else "" for h in headers]
    body = "".join("<tr>" + "".join(f"<td{k}>{_e(c)}</td>" for k, c in zip(cls, row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: str, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{png}'>"


def _png(fig, plt) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()
