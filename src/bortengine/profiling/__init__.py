"""Profiling: measured latencies of the engine's own kernels on this CPU, and the latency model built on them.

The inference-cost objective of the hardware-aware search: `predict_latency(architecture, workload, profile)` says
how long the engine's forward takes for an architecture on the CPU the profile was measured on. See
docs/profiler.md.
"""
from __future__ import annotations

from bortengine.profiling.profiler import (DTYPES, LatencyModel, OpSpec, Prediction, Profile, ProfileError,
                                           ProfileInterrupted, ProfileMismatchWarning, Target, ValidationReport,
                                           Workload, default_profile_dir, default_profile_path, kendall_tau,
                                           load_profile, predict_latency, profile, required_ops, shipped_profiles,
                                           validate)

__all__ = [
    "Workload", "Target", "Profile", "OpSpec", "Prediction", "LatencyModel", "ValidationReport",
    "ProfileError", "ProfileMismatchWarning", "ProfileInterrupted", "profile", "load_profile", "predict_latency",
    "validate", "required_ops", "default_profile_path", "default_profile_dir", "shipped_profiles", "kendall_tau",
    "DTYPES",
]
