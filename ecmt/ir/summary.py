"""Human-readable summary of a graph (what `ecmt inspect` prints)."""
from __future__ import annotations

import collections

from .graph import SpikingGraph
from .neuron import MTNeuron


def _fmt_th(t) -> str:
    if t is None:
        return "-"
    if t.numel() == 1:
        return f"{t.item():.4g}"
    return f"[{t.numel()}] {t.min().item():.3g}..{t.max().item():.3g}"


def summarize(graph: SpikingGraph) -> str:
    lines = []
    meta = graph.meta
    lines.append(f"ecmt spiking graph v{graph.VERSION}: {len(graph)} nodes, "
                 f"{graph.param_count():,} parameters")
    if meta.get("source"):
        lines.append(f"source: {meta['source']}")
    if meta.get("calibration"):
        cal = meta["calibration"]
        lines.append("calibration: " + ", ".join(f"{k}={v}" for k, v in cal.items()))
    lines.append(f"input {list(graph.shapes[graph.input.name])} -> output "
                 f"{list(graph.shapes[graph.output.name])}")
    lines.append("")
    lines.append(f"{'kind':<16}{'nodes':>7}{'params':>12}")
    by_kind: dict[str, list] = collections.defaultdict(list)
    for node in graph:
        by_kind[node.KIND].append(node)
    for kind, nodes in sorted(by_kind.items()):
        lines.append(f"{kind:<16}{len(nodes):>7}{sum(n.param_count() for n in nodes):>12,}")
    edges = graph.edges()
    n_spk = sum(e.spiking for e in edges)
    lines.append("")
    lines.append(f"edges: {len(edges)} ({n_spk} spiking, {len(edges) - n_spk} analog)")
    neurons = graph.of_kind(MTNeuron)
    if neurons:
        lines.append("")
        lines.append(f"MT neurons ({len(neurons)}):")
        # k: the levels a neuron may send in one step (spikes_per_step, docs/method.md §2)
        lines.append(f"  {'name':<34}{'shape':<16}{'levels':>6}{'k':>3}  {'th_pos':<22}{'th_neg':<22}{'role':<11}search")
        for n in neurons:
            lines.append(f"  {n.name:<34}{str(list(graph.shapes[n.name])):<16}{n.levels:>6}{n.spikes_per_step:>3}  "
                         f"{_fmt_th(n.th_pos):<22}{_fmt_th(n.th_neg):<22}{n.meta.get('role', ''):<11}"
                         + (f"x{n.meta['search']['multiplier']:g}, T={n.meta['search']['target_T']}"
                            if "search" in n.meta else "-"))
    return "\n".join(lines)
