"""The interface every hardware model implements, and the typed result of a pricing.

simulate() drives a model through one run without asking what kind it is:

1. ``Model(graph, profile, T)`` maps the graph (a network that does not fit is refused
   here, before any simulation runs);
2. ``observer(executor)`` is called with every node's step while the batches run (None: the
   model needs only the counts), ``add_batch()`` after each batch;
3. ``price(counts, profile, mode)`` turns the counts (and what the model recorded) into
   energy by category and latency by phase per step: a ``Priced``.  It is called again with
   variants of the profile (one constant at a range end) for the ranges and sensitivity;
   ``reprices(key)`` says whether such a call reflects a change of constant `key`;
4. ``sample_energy`` / ``sample_latency`` give per-sample figures for the 95% intervals, and
   ``describe()`` what the report shows of the mapping (cores, chips, layers).
"""
from __future__ import annotations

import abc
import dataclasses

import torch

from ecmt import ir

from ..counting import EventCounts
from ..profile import HardwareProfile


@dataclasses.dataclass
class Priced:
    """One pricing of a run, per inference: ``energy[category][t]`` (J, static included as
    "static"), ``latency[t]`` (s), ``phases[phase][t]`` (s; they add up to the latency),
    ``layers[node][category]`` (J over the T steps; static energy belongs to no node)."""
    energy: dict[str, list[float]]
    latency: list[float]
    phases: dict[str, list[float]]
    layers: dict[str, dict[str, float]]

    @property
    def energy_per_step(self) -> list[float]:
        return [sum(v[t] for v in self.energy.values()) for t in range(len(self.latency))]

    @property
    def total_j(self) -> float:
        return sum(self.energy_per_step)

    @property
    def latency_s(self) -> float:
        return sum(self.latency)


@dataclasses.dataclass
class Interval:
    """Per-sample figures for the 95% intervals: ``energy[s, t]`` the energy of sample s at step
    t (or only its part that varies between samples: the interval takes the spread), and
    ``latency[s]`` the latency of sample s over the T steps, with how it was obtained."""
    energy: torch.Tensor | None
    latency: torch.Tensor | None
    latency_basis: str


class HardwareModel(abc.ABC):
    """A hardware model for one profile and one graph run for T steps."""

    kind = ""
    records = False         # whether it records the run (observer)

    def __init__(self, graph: ir.SpikingGraph, profile: HardwareProfile, T: int):
        self.graph, self.profile, self.T = graph, profile, T

    def observer(self, executor):
        """An executor observer recording what the model needs of each batch, or None."""
        return None

    def add_batch(self) -> None:
        """Take what the observer recorded of the batch just run."""

    def reduce(self, sum_over_ranks) -> None:
        """Under torchrun, after the last batch: combine what each rank recorded of its share of
        the batches (`sum_over_ranks`: ecmt.distributed.all_reduce_tree)."""

    @abc.abstractmethod
    def price(self, counts: EventCounts, profile: HardwareProfile, mode: str) -> Priced:
        """The run's energy and latency on `profile` (the model's own or a variant of it)."""

    @abc.abstractmethod
    def reprices(self, key: str) -> bool:
        """Whether price() with a variant of the profile reflects a change of constant `key`."""

    @abc.abstractmethod
    def interval(self, counts: EventCounts, mode: str, priced: Priced) -> Interval:
        """Per-sample energy and latency for the 95% intervals."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """The mapping as the report shows it: cores, chips, per layer (empty where none)."""


def static_energy(power_w: float, latency: list[float]) -> list[float]:
    """Static energy per step: the power over each step's latency."""
    return [power_w * s for s in latency]
