"""write_latency_suite(): the latency suite a user keeps beside an exported model (OUT/test_latency.py).

The suite is a self-contained pytest-benchmark file: it times the model at its workload with the `benchmark`
fixture and holds the median to the profile's prediction times a tolerance, through the fixtures of bortengine's
pytest plugin (pytest_plugin.py); it fails on another CPU target than the profile's. The numbers it expects
(predicted ms, tolerance, target) are written into it, readable, and recomputed from the profile file at every run
(a test says when the two disagree). Paths inside it are relative to the file, so the folder can move as a whole.
"""
from __future__ import annotations

import os
import string
from pathlib import Path

from bortengine.engine import load
from bortengine.files import atomic_write_text
from bortengine.profiling.errors import ProfileError
from bortengine.profiling.latency_check import DEFAULT_TOLERANCE, LatencyExpectation, ms
from bortengine.profiling.profile_file import Profile
from bortengine.profiling.workload import Workload
from bortengine.version import __version__

SUITE = string.Template('''\
"""Latency suite of the model in ${model}/: fails when a call runs slower than the CPU profile predicts by more than
the tolerance, or on another CPU target than the one the model was extracted for. Written by bortengine ${version}.

    model       ${architecture} (${head} head), ${model}/
    workload    ${workload}
    predicted   ${predicted} ms per call (the latency model of ${profile})
    tolerance   ${tolerance}x the prediction: fails above ${limit} ms
    CPU target  ${signature}
                ${describe}

Run it on the machine that serves the model (needs bortengine, pytest and pytest-benchmark:
pip install 'bortengine[latency]'):

    pytest ${file}                                 # from this folder
    pytest ${file} --bortengine-tolerance 2        # a looser bound for this run
    pytest ${file} --bortengine-allow-other-cpu    # skip instead of fail on another CPU target
    pytest ${file} --benchmark-json latency.json   # pytest-benchmark's options apply

The model and the profile are found relative to this file: move or copy the folder as a whole. The prediction is
recomputed from ${profile} at every run; test_profile_matches_the_suite fails when it no longer gives the numbers
above (the profile or the model was replaced).
"""
from pathlib import Path

import pytest

from bortengine.profiling import Workload

HERE = Path(__file__).resolve().parent
MODEL = HERE / ${model_literal}
PROFILE = HERE / ${profile_literal}
WORKLOAD = Workload(batch_size=${batch_size}, seq_len=${seq_len}, num_threads=${num_threads}, dtype="${dtype}")
PREDICTED_MS = ${predicted_exact}
TARGET = "${signature}"
# A call may take at most TOLERANCE x the prediction. The default, ${default_tolerance}x, is above the slowest of
# the 160 forwards the shipped profile's validation timed (1.47x its prediction, on a VM whose other tenants slowed
# it): slower than that is a regression or another machine, not the latency model's error.
TOLERANCE = ${tolerance_exact}


@pytest.fixture(scope="module")
def expectation(bortengine_expectation):
    """The prediction for the model at WORKLOAD, recomputed from the profile (--bortengine-tolerance overrides
    TOLERANCE)."""
    return bortengine_expectation(MODEL, PROFILE, WORKLOAD, tolerance=TOLERANCE)


def test_cpu_target(bortengine_cpu_target, expectation):
    """This machine is the CPU target the model was extracted for."""
    bortengine_cpu_target(expectation)


def test_profile_matches_the_suite(expectation):
    """The profile and the model still give the prediction and target written above."""
    changed = expectation.changes_since(PREDICTED_MS, TARGET)
    if changed:
        pytest.fail(changed, pytrace=False)


@pytest.mark.benchmark(group="bortengine latency", warmup=True)
def test_latency(benchmark, bortengine_cpu_target, bortengine_engine, bortengine_inputs, bortengine_latency,
                 expectation):
    """The median call at WORKLOAD is at most TOLERANCE x PREDICTED_MS, on the CPU target (checked first)."""
    bortengine_cpu_target(expectation)   # before the timing: another machine's figures mean nothing here
    engine = bortengine_engine(MODEL, dtype=WORKLOAD.dtype, num_threads=WORKLOAD.num_threads)
    inputs = bortengine_inputs(engine, WORKLOAD)
    benchmark(engine, **inputs)
    bortengine_latency(benchmark, expectation, engine=engine)
''')

def relative_to(path: Path, start: Path) -> str:
    """path relative to the folder start, with forward slashes (how the suite names the files beside it)."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def write_latency_suite(out_path: str | os.PathLike, model_dir: str | os.PathLike, profile_path: str | os.PathLike,
                        workload: Workload, tolerance: float = DEFAULT_TOLERANCE) -> Path:
    """Write the latency suite of the model in model_dir at the workload to out_path (e.g. OUT/test_latency.py).

    profile_path: the profile the model was extracted with, kept beside the model (the pipeline copies it to
    OUT/profile.json); it must cover the workload. The suite names both relative to its own folder. tolerance: a
    call may take at most tolerance × the predicted ms (DEFAULT_TOLERANCE, 1.5x, says why). Returns out_path.
    Raises ProfileError when a file is missing, the profile does not cover the workload, or out_path is not named
    test_*.py (pytest would not collect it).
    """
    out_path, model_dir, profile_path = Path(out_path), Path(model_dir), Path(profile_path)
    if not (out_path.name.startswith("test_") and out_path.suffix == ".py"):
        raise ProfileError(f"the latency suite {out_path} must be named test_*.py, or pytest will not collect it "
                           f"(e.g. {out_path.with_name('test_latency.py')})")
    if not model_dir.is_dir():
        raise ProfileError(f"no model directory at {model_dir}: export the model before writing its latency suite")
    profile = Profile.load(profile_path)
    engine = load(model_dir, num_threads=1)  # only its architecture is read
    expectation = LatencyExpectation.of(engine, profile, workload, tolerance)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:   # a file where a folder should be, no permission
        raise ProfileError(f"cannot write the latency suite {out_path}: its folder {out_path.parent} cannot be "
                           f"made ({e.strerror or e}); give a path in a folder you can write") from None
    here = out_path.parent
    target, w = expectation.target, workload
    model, profile_file = relative_to(model_dir, here), relative_to(profile_path, here)
    text = SUITE.substitute(
        model=model, profile=profile_file, model_literal=repr(model), profile_literal=repr(profile_file),
        file=out_path.name,
        version=__version__, architecture=expectation.architecture, head=expectation.architecture.head,
        workload=w, predicted=ms(expectation.predicted_ms), tolerance=f"{expectation.tolerance:g}",
        limit=ms(expectation.limit_ms), signature=target.signature, describe=target.describe(w.dtype),
        batch_size=w.batch_size, seq_len=w.seq_len, num_threads=w.num_threads, dtype=w.dtype,
        predicted_exact=repr(round(expectation.predicted_ms, 6)), tolerance_exact=repr(expectation.tolerance),
        default_tolerance=f"{DEFAULT_TOLERANCE:g}")
    try:
        return atomic_write_text(out_path, text)
    except OSError as e:
        raise ProfileError(f"cannot write the latency suite {out_path}: {e.strerror or e}") from None
