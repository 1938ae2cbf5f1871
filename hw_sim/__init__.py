"""Cycle-level hardware simulator and energy reports for ecmt spiking graphs.

    report = hw_sim.simulate(graph, images, T=4, hardware=["loihi", "cmos45-fp32"])
    report.write("runs/energy")        # report.json, report.md, report.html

Four stages, each with a typed result: count (counting.Counter over a real run ->
counting.EventCounts), map (mapping.map_units, or mesh.place for profiles with a
[mesh] table -> a core per unit), time (mapping.step_latency, or mesh.Accounting's
per-step schedule), price (energy.rates: joules per counted event by category, times
the counts; simulate builds the report entry and re-prices it for ranges).
"""
from .counting import EventCounts
from .profile import HardwareProfile, ProfileError, available_profiles, load_profile
from .report import Report
from .simulate import MODES, EnergyRatio, ModeError, plan, simulate

__all__ = ["EnergyRatio", "EventCounts", "HardwareProfile", "MODES", "ModeError", "ProfileError", "Report", "available_profiles",
           "load_profile", "plan", "simulate"]
