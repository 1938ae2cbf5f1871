"""Cycle-level hardware simulator and energy reports for ecmt spiking graphs.

    report = hw_sim.simulate(graph, images, T=4, hardware=["loihi", "cmos45-fp32"])
    report.write("runs/energy")        # report.json, report.md, report.html
"""
from .profile import HardwareProfile, ProfileError, available_profiles, load_profile
from .report import Report
from .simulate import MODES, ModeError, plan, simulate

__all__ = ["HardwareProfile", "MODES", "ModeError", "ProfileError", "Report", "available_profiles",
           "load_profile", "plan", "simulate"]
