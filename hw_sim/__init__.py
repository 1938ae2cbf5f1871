"""Cycle-level hardware simulator and energy reports for ecmt spiking graphs.

    report = hw_sim.simulate(graph, images, T=4, hardware=["loihi", "cmos45-fp32"])
    report.write("runs/energy")        # report.json, report.md, report.html

The stages, each with a typed result: count (counting.Counter over a real run ->
counting.EventCounts); one hardware model per profile behind one interface
(engine.HardwareModel: engine/cmos.py for a CMOS accelerator, engine/mesh for every
neuromorphic chip: map onto a system of chips, record the spikes, account and schedule
each step) -> engine.Priced (energy by category, latency by phase, per step); price.py
adds ranges, sensitivity and intervals; report.py writes JSON, Markdown and HTML.
"""
from .counting import EventCounts
from .engine import MappingError, check_fit
from .profile import HardwareProfile, ProfileError, available_profiles, load_profile
from .report import Report
from .simulate import MODES, EnergyRatio, ModeError, plan, simulate

__all__ = ["EnergyRatio", "EventCounts", "HardwareProfile", "MODES", "MappingError", "ModeError", "ProfileError",
           "Report", "available_profiles", "check_fit", "load_profile", "plan", "simulate"]
