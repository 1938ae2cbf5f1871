"""Cycle-level hardware simulator and energy reports for ecmt spiking graphs.

    report = hw_sim.simulate(graph, images, T=4, hardware=["loihi", "cmos45-fp32"], mode="full")
    report.write("runs/energy")        # report.json, report.md, report.html
"""
from .profile import HardwareProfile, ProfileError, available_profiles, load_profile
from .report import Report
from .simulate import MODES, simulate

__all__ = ["HardwareProfile", "MODES", "ProfileError", "Report", "available_profiles", "load_profile",
           "simulate"]
