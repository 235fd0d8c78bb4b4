"""bortengine's pytest plugin (entry point pytest11 `bortengine`): fixtures that hold a model's latency to its CPU
profile's prediction, used by the latency suite the pipeline writes (latency_suite.py) and usable in any test.

Fixtures, each a session-scoped factory (call it in a test):

    bortengine_engine(model_dir, dtype="float32", num_threads=None) -> Engine       loaded once per argument set
    bortengine_profile(path) -> Profile                                              read once per file
    bortengine_inputs(model, workload) -> {"input_ids": [B, T]}                      engine(**inputs)
    bortengine_expectation(model, profile, workload, tolerance=None) -> LatencyExpectation
    bortengine_cpu_target(profile_or_expectation) -> Target                          fails (or skips) elsewhere
    bortengine_latency(measured, expectation, engine=None) -> LatencyVerdict          fails when too slow

`measured` is a pytest-benchmark `benchmark` fixture after its run (its median), a callable (timed here), a
Timing, or a number of milliseconds. Options: --bortengine-tolerance RATIO (overrides every expectation's tolerance)
and --bortengine-allow-other-cpu (skip rather than fail on another CPU target).

Loaded into every pytest run where bortengine is installed, so it adds only those fixtures and options, no hook
that changes collection, and nothing heavy at import (never torch; the native module loads when a fixture first
needs it). A run that checked a CPU target ends with one summary section: each profile's probe rate against this
machine's and the verdict, since a probe that read differently is what turns a pass into a warning or a failure.
`-p no:bortengine` turns it off.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from bortengine.engine import available_cpus, load
from bortengine.errors import BortEngineError
from bortengine.profiling.latency_check import (LatencyExpectation, LatencyVerdict, Timing, check_tolerance,
                                                busy_core_note, cpu_target_mismatch, time_calls, workload_inputs)
from bortengine.profiling.errors import ProfileMismatchWarning
from bortengine.profiling.profile_file import Profile
from bortengine.profiling.target import Target
from bortengine.profiling.workload import Workload


def _ratio(text: str) -> float:
    """--bortengine-tolerance's type: a positive ratio."""
    try:
        return check_tolerance(float(text))
    except (ValueError, BortEngineError):
        raise argparse.ArgumentTypeError(f"a tolerance is a positive ratio to the prediction such as 1.5, got "
                                         f"{text!r}") from None


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("bortengine", "bortengine latency checks (bortengine_* fixtures)")
    group.addoption("--bortengine-tolerance", type=_ratio, default=None, metavar="RATIO",
                    help="a call may take at most RATIO x the profile's prediction; overrides the tolerance every "
                         "latency check was given (e.g. TOLERANCE in a latency suite)")
    group.addoption("--bortengine-allow-other-cpu", action="store_true", default=False,
                    help="on another CPU target than the profile's, skip the latency checks instead of failing")


# the CPU-target checks of this run, for the terminal summary: (profile, expected, found, verdict) once per profile
_TARGET_CHECKS = pytest.StashKey[dict]()


def pytest_configure(config: Any) -> None:
    config.stash[_TARGET_CHECKS] = {}


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    checks = config.stash.get(_TARGET_CHECKS, {})
    if not checks:
        return
    terminalreporter.section("bortengine CPU target")
    for where, (expected, found, verdict) in checks.items():
        terminalreporter.write_line(f"{where}: this machine's calibration probe {found.probe_gflops} GFLOP/s "
                                    f"against the profile's {expected.probe_gflops}: {verdict}")


def _clean_failures(fn: Callable) -> Callable:
    """bortengine's own errors (a missing model, a profile that does not cover the workload) fail the test with
    their message, not a traceback through the plugin."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BortEngineError as e:
            message = str(e)
        pytest.fail(message, pytrace=False)   # outside the except: a failure raised there chains to the error
    return wrapper


class EngineCache:
    """bortengine_engine: each (model directory, dtype, threads) loaded once for the session."""

    def __init__(self) -> None:
        self._engines: dict[tuple[Path, str, int], Any] = {}

    @_clean_failures
    def __call__(self, model_dir: str | os.PathLike, dtype: str = "float32", num_threads: Optional[int] = None):
        threads = available_cpus() if num_threads is None else num_threads
        key = (Path(model_dir).resolve(), dtype, threads)
        if key not in self._engines:
            self._engines[key] = load(model_dir, num_threads=threads, dtype=dtype)
        return self._engines[key]

    def for_workload(self, model: Any, workload: Workload) -> Any:
        """model as an Engine: itself, or its directory loaded for the workload's dtype and threads."""
        if not isinstance(workload, Workload):   # e.g. (1, 32): the tuple an architecture may be
            pytest.fail(f"the workload must be a bortengine.profiling.Workload(batch_size, seq_len, num_threads, "
                        f"dtype), got {workload!r}", pytrace=False)
        if isinstance(model, (str, os.PathLike)):
            return self(model, dtype=workload.dtype, num_threads=workload.num_threads)
        return model


class ProfileCache:
    """bortengine_profile: each profile file read once for the session (without the mismatch warning: the CPU
    target is what bortengine_cpu_target checks)."""

    def __init__(self) -> None:
        self._profiles: dict[Path, Profile] = {}

    @_clean_failures
    def __call__(self, path: str | os.PathLike | Profile) -> Profile:
        if isinstance(path, Profile):
            return path
        if not isinstance(path, (str, os.PathLike)):
            pytest.fail(f"the profile must be a Profile or the path of its file, got {path!r}", pytrace=False)
        key = Path(path).resolve()
        if key not in self._profiles:
            self._profiles[key] = Profile.load(path)
        return self._profiles[key]


@pytest.fixture(scope="session")
def bortengine_engine() -> EngineCache:
    """bortengine_engine(model_dir, dtype="float32", num_threads=None): the loaded Engine, one per argument set for
    the session (num_threads None: every CPU this process may use)."""
    return EngineCache()


@pytest.fixture(scope="session")
def bortengine_profile() -> ProfileCache:
    """bortengine_profile(path): the Profile in that file, read once for the session."""
    return ProfileCache()


@pytest.fixture(scope="session")
def bortengine_inputs(bortengine_engine: EngineCache) -> Callable[[Any, Workload], dict]:
    """bortengine_inputs(model, workload): {"input_ids": int64 [B, T]} for engine(**inputs), B sequences of exactly
    T tokens of English text from the model's tokenizer, the same at every call (model: an Engine or its directory,
    then loaded for the workload's dtype and threads)."""
    @_clean_failures
    def inputs(model: Any, workload: Workload) -> dict:
        return workload_inputs(bortengine_engine.for_workload(model, workload), workload)
    return inputs


@pytest.fixture(scope="session")
def bortengine_expectation(pytestconfig: Any, bortengine_engine: EngineCache, bortengine_profile: ProfileCache
                           ) -> Callable[..., LatencyExpectation]:
    """bortengine_expectation(model, profile, workload, tolerance=None): the LatencyExpectation of the model (an
    Engine or its directory) at the workload from the profile (a Profile or its file). The tolerance is
    --bortengine-tolerance if given, else the argument, else DEFAULT_TOLERANCE."""
    override = pytestconfig.getoption("bortengine_tolerance")

    @_clean_failures
    def expectation(model: Any, profile: Any, workload: Workload, tolerance: Optional[float] = None
                    ) -> LatencyExpectation:
        engine = bortengine_engine.for_workload(model, workload)
        chosen = override if override is not None else tolerance
        args = {} if chosen is None else {"tolerance": chosen}
        return LatencyExpectation.of(engine, bortengine_profile(profile), workload, **args)
    return expectation


@pytest.fixture(scope="session")
def bortengine_cpu_target(pytestconfig: Any, bortengine_profile: ProfileCache) -> Callable[[Any], Target]:
    """bortengine_cpu_target(profile): this machine's Target if it is the CPU target of the profile (a Profile, its
    file, or a LatencyExpectation); otherwise the test fails, or skips with --bortengine-allow-other-cpu, saying
    which target was expected and which was found."""
    allow_other = pytestconfig.getoption("bortengine_allow_other_cpu")
    checks = pytestconfig.stash[_TARGET_CHECKS]
    current: list[Target] = []
    confirmed: dict[str, Target] = {}   # per profile: this machine's target as the first check confirmed it

    def check(profile: Any) -> Target:
        if isinstance(profile, LatencyExpectation):
            expected, where, dtype = profile.target, profile.profile, profile.workload.dtype
        else:
            loaded = bortengine_profile(profile)
            expected, where, dtype = loaded.target, str(loaded.path or "the profile"), None
        if not current:
            current.append(_clean_failures(Target.current)())
        # (a probe that ran slow against the profile's is re-run first: load slows it, another CPU stays slow). Once
        # per profile: a later re-probe on this shared core can read otherwise, and every test of one profile gets
        # the verdict the summary states
        if where not in confirmed:
            confirmed[where] = current[0].confirmed_against(expected)
        found = confirmed[where]
        threads = profile.workload.num_threads if isinstance(profile, LatencyExpectation) else 0
        if threads > available_cpus():
            # (the machine's CPU count matched, as a CI runner under taskset or a container's quota reports it)
            short = (f"this process may run on {available_cpus()} CPU(s) (its affinity or cgroup CPU quota: taskset, "
                     f"a container's limit), fewer than the {threads} threads of the workload {profile.workload} "
                     f"the latency was predicted for: its threads would share cores and the timings mean nothing. "
                     f"Give the run {threads} CPUs")
            checks[where] = (expected, found, f"{available_cpus()} CPU(s) for {threads} threads")
            if allow_other:
                pytest.skip(f"--bortengine-allow-other-cpu: {short}")
            pytest.fail(short, pytrace=False)
        if expected.apart_by_load_alone(found):
            # a busy core (now or when profiled) or another clock: the latency measured tells, so this warns
            checks[where] = (expected, found, "apart by what load causes (warned)")
            warnings.warn(busy_core_note(expected, found, where), ProfileMismatchWarning, stacklevel=2)
            return current[0]
        mismatch = cpu_target_mismatch(expected, found, where, dtype, advise=not allow_other)
        if not mismatch and not expected.checkable:
            # (it passed as "the same CPU target": the Zen 4 / Zen 5 case that exact targets were made to catch)
            checks[where] = (expected, found, "cannot be checked (warned)")
            warnings.warn(f"{where} was written before bortengine recorded exact CPU targets (no calibration probe "
                          f"rate, no CPUID): whether this machine is its CPU target cannot be checked, since CPUs of "
                          f"two generations can report the same name and flags; the latency checks run and judge "
                          f"the time measured. Re-profile on the target (bortengine profile) to make it checkable",
                          ProfileMismatchWarning, stacklevel=2)
            return current[0]
        checks[where] = (expected, found, "another CPU target" if mismatch else "the same CPU target")
        if mismatch and allow_other:
            pytest.skip(f"--bortengine-allow-other-cpu: {mismatch}")
        if mismatch:
            pytest.fail(mismatch, pytrace=False)
        return current[0]
    return check


@pytest.fixture(scope="session")
def bortengine_latency(bortengine_cpu_target: Callable[[Any], Target]) -> Callable[..., LatencyVerdict]:
    """bortengine_latency(measured, expectation, engine=None): the LatencyVerdict of the measured median against
    the expectation, after checking the CPU target (as bortengine_cpu_target). Fails, stating measured against
    predicted ms, the ratio, the tolerance and what to do, when the median is above tolerance × the prediction.

    measured: a pytest-benchmark `benchmark` fixture that has run (skips when benchmarks are disabled), a callable
    (timed here: warm-up, then the median of repeated calls), a Timing, or milliseconds. engine: the Engine that was
    timed, checked to run the expectation's dtype and threads.
    """
    def check(measured: Any, expectation: LatencyExpectation, engine: Any = None) -> LatencyVerdict:
        current = bortengine_cpu_target(expectation)
        w = expectation.workload
        if engine is not None and (engine.dtype, engine.num_threads) != (w.dtype, w.num_threads):
            pytest.fail(f"the engine timed runs {engine.dtype} on {engine.num_threads} thread(s), but the latency "
                        f"was predicted for {w}: load it with dtype={w.dtype!r}, num_threads={w.num_threads}",
                        pytrace=False)
        verdict = expectation.judge(_timing(measured, expectation), current)
        if hasattr(measured, "extra_info"):  # pytest-benchmark keeps these with its results (--benchmark-json)
            measured.extra_info.update(bortengine_predicted_ms=round(expectation.predicted_ms, 6),
                                       bortengine_tolerance=expectation.tolerance,
                                       bortengine_ratio=round(verdict.ratio, 4),
                                       bortengine_target=expectation.target.signature)
        if not verdict.passed:
            pytest.fail(verdict.message(), pytrace=False)
        return verdict
    return check


def _timing(measured: Any, expectation: LatencyExpectation) -> Timing:
    """The measured median of what bortengine_latency was given."""
    if isinstance(measured, Timing):
        return measured
    if hasattr(measured, "stats") and hasattr(measured, "disabled"):  # pytest-benchmark's fixture
        if measured.disabled:
            pytest.skip("pytest-benchmark is disabled (--benchmark-disable, or under xdist): nothing was timed "
                        "to check against the prediction")
        if not measured.stats:
            pytest.fail("bortengine_latency(benchmark, ...) reads the benchmark's result: call benchmark(fn) first",
                        pytrace=False)
        stats, iterations = measured.stats.stats, measured.stats.iterations
        rounds = f": {stats.rounds} rounds of {iterations} calls" if iterations > 1 else ""
        return Timing(stats.median * 1e3, stats.rounds * iterations, f"pytest-benchmark{rounds}")
    if callable(measured):
        return time_calls(measured, expectation.workload.num_threads)
    if isinstance(measured, (int, float)) and not isinstance(measured, bool) and math.isfinite(measured) \
            and measured > 0:
        return Timing(float(measured), None, "given")
    pytest.fail(f"bortengine_latency measures a benchmark fixture, a callable, a Timing or milliseconds; got "
                f"{measured!r}", pytrace=False)
