"""Profiling: measured latencies of the engine's own kernels on this CPU, and the latency model built on them.

The inference-cost objective of the hardware-aware search: `predict_latency(architecture, workload, profile)` says
how long the engine's forward takes for an architecture on the CPU the profile was measured on. `profile()`
measures (and saves) a profile, `load_profile()` reads one, `validate()` checks the model against measured
forwards. The forward's steps are described once, by `forward_steps()`. `write_latency_suite()` writes the pytest
suite that holds an exported model to its prediction on its CPU target (with the fixtures of the pytest plugin,
`bortengine.profiling.pytest_plugin`). A profile names its exact CPU target (Target: CPUID, caches, kernel paths
and the rate of a calibration probe, cpu_probe); a profile of another target, or from before exact targets, loads
with a ProfileMismatchWarning, and `profile_for_search()` measures this CPU rather than use one. See
docs/profiler.md.

Modules, bottom up: errors, workload, ops (the forward's steps and the kernel calls they make), cpu_probe (the
calibration probe), target (this CPU), disturbance and timing (measuring a callable), measurements, latency (the
model), calibration, profile_file (Profile, load_profile, find_profiles, predict_latency), runners (the ops on the
native module), measure (profile()), choice (profile_for_search()), validation (validate()), latency_check (a
model's expected latency and the check of a measurement), latency_suite (write_latency_suite()), fleet
(profile_fleet(): a profile per CPU target of a Ray cluster); pytest_plugin (the fixtures; loaded by pytest, not
by this package).
"""
from __future__ import annotations

from bortengine.profiling.calibration import calibrate, calibration_note
from bortengine.profiling.choice import ProfileChoice, covers_space, profile_for_search
from bortengine.profiling.cpu_probe import LOAD_SLOWDOWN, PROBE, PROBE_TOLERANCE, probe_gflops
from bortengine.profiling.errors import ProfileError, ProfileInterrupted, ProfileMismatchWarning, ProfileVersionError
from bortengine.profiling.fleet import (FleetTarget, fleet_table, profile_fleet, profile_of_target,
                                        target_profile_path)
from bortengine.profiling.latency import LatencyModel, Prediction
from bortengine.profiling.latency_check import (DEFAULT_TOLERANCE, LatencyExpectation, LatencyVerdict, Timing,
                                                architecture_of, busy_core_note, cpu_target_mismatch, time_calls,
                                                workload_inputs)
from bortengine.profiling.latency_suite import write_latency_suite
from bortengine.profiling.measure import profile
from bortengine.profiling.measurements import Measurement, WorkloadProfile
from bortengine.profiling.ops import (OpSpec, barriers, calibration_ops, forward_steps, position_bias_ops,
                                      qkv_gemm_before, required_ops, residency_ops)
from bortengine.profiling.profile_file import (Profile, default_profile_dir, default_profile_path, find_profiles,
                                               load_profile, predict_latency, profile_path_for, resolve_space,
                                               shipped_profiles)
from bortengine.profiling.target import Target, TargetMatch
from bortengine.profiling.timing import BlockStats, Settings
from bortengine.profiling.validation import (ValidationReport, ValidationRow, kendall_tau, validate,
                                             validation_seconds)
from bortengine.profiling.workload import DTYPES, Workload

__all__ = [
    "Workload", "Target", "Profile", "OpSpec", "Prediction", "LatencyModel", "ValidationReport",
    "ProfileError", "ProfileVersionError", "ProfileMismatchWarning", "ProfileInterrupted", "profile", "load_profile",
    "predict_latency",
    "validate", "validation_seconds", "required_ops", "residency_ops", "position_bias_ops", "default_profile_path",
    "default_profile_dir",
    "shipped_profiles", "kendall_tau",
    "DTYPES", "calibration_note", "calibrate", "calibration_ops", "forward_steps", "barriers", "Settings",
    "WorkloadProfile", "Measurement", "BlockStats", "ValidationRow", "write_latency_suite", "LatencyExpectation",
    "LatencyVerdict", "Timing", "DEFAULT_TOLERANCE", "architecture_of", "workload_inputs", "time_calls",
    "cpu_target_mismatch", "busy_core_note", "TargetMatch", "find_profiles", "profile_path_for", "resolve_space",
    "profile_for_search",
    "ProfileChoice", "covers_space", "PROBE", "PROBE_TOLERANCE", "LOAD_SLOWDOWN", "probe_gflops", "FleetTarget",
    "profile_fleet", "fleet_table", "target_profile_path", "profile_of_target", "qkv_gemm_before",
]
