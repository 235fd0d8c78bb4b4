"""The latency a model is held to (profiling.latency_check): its expectation from a profile, the verdict on a
measurement, the CPU target check, and the inputs of a workload. A random model and a profile of its one
architecture (a tiny profile run, about half a second) stand in for an exported student.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

import bortengine
from bortengine import profiling as P
from bortengine.architecture import Architecture
from bortengine.search_space import SearchSpace
from conftest import NATIVE

pytestmark = [
    pytest.mark.skipif(not NATIVE, reason="the suite times the native engine and profiles its ops"),
    pytest.mark.filterwarnings("ignore:the machine is busy:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:other processes used:RuntimeWarning"),
]

W = P.Workload(batch_size=1, seq_len=16, num_threads=1)
# one block of three calls per op, no warm-up, one weight copy, no retries or host probe: a profile of one
# architecture in about half a second
FAST = P.Settings(mode="quick", blocks=1, warmup_s=0.0, min_warmup=1, budget_s=0.0, min_repeats=3, max_repeats=3,
                  rotation_factor=0.0, retries=0, host_probe=False)


@pytest.fixture(scope="module")
def profile_path(small_model, tmp_path_factory) -> Path:
    """A real profile (this machine, measured by P.profile) of exactly small_model's architecture at W."""
    arch = P.architecture_of(bortengine.load(small_model, num_threads=1))
    space = SearchSpace("suite", layers=[arch.layers], heads=[arch.heads], hidden=[arch.hidden],
                        intermediate=[arch.intermediate])
    out = tmp_path_factory.mktemp("profile") / "profile.json"
    P.profile(space, W, out=out, progress=False, settings=FAST)
    return out


@pytest.fixture(scope="module")
def profile(profile_path) -> P.Profile:
    return P.load_profile(profile_path)


# ================================================================================== the parts, in process
def test_workload_inputs_are_english_from_the_tokenizer_and_deterministic(small_engine):
    w = P.Workload(batch_size=3, seq_len=40, num_threads=1)
    ids = P.workload_inputs(small_engine, w)["input_ids"]
    assert ids.shape == (3, 40) and ids.dtype.name == "int64"
    assert (ids == P.workload_inputs(small_engine, w)["input_ids"]).all()
    cls, sep = small_engine.tokenizer.token_id("[CLS]"), small_engine.tokenizer.token_id("[SEP]")
    assert (ids[:, 0] == cls).all() and (ids[:, -1] == sep).all()
    assert len({tuple(row) for row in ids}) == 3                        # each row starts elsewhere in the text
    words = small_engine.tokenizer.decode(ids[0].tolist()).split()
    assert words[:4] == ["the", "morning", "train", "to"]
    # longer than the text: it cycles, still [CLS] ... [SEP]
    long = P.workload_inputs(small_engine, P.Workload(1, 512, 1))["input_ids"]
    assert long[0, 0] == cls and long[0, -1] == sep and (long[0, 1:-1] != sep).all()
    with pytest.raises(P.ProfileError, match="max_position_embeddings=512"):
        P.workload_inputs(small_engine, P.Workload(1, 513, 1))


def test_workload_inputs_without_a_tokenizer_are_seeded_ids(small_model, tmp_path):
    bare = shutil.copytree(small_model, tmp_path / "bare",
                           ignore=shutil.ignore_patterns("vocab.txt", "tokenizer*", "special_tokens_map.json"))
    engine = bortengine.load(bare, num_threads=1)
    assert engine.tokenizer is None
    ids = P.workload_inputs(engine, P.Workload(2, 8, 1))["input_ids"]
    assert ids.shape == (2, 8) and (ids == P.workload_inputs(engine, P.Workload(2, 8, 1))["input_ids"]).all()
    assert 0 <= ids.min() and ids.max() < engine.config.vocab_size
    engine(**P.workload_inputs(engine, P.Workload(2, 8, 1)))


def test_architecture_of_a_loaded_model(small_engine, small_model, small_classifier):
    assert P.architecture_of(small_engine) == Architecture.from_hf_config(small_model)
    classifier = P.architecture_of(bortengine.load(small_classifier, num_threads=1))
    assert classifier == Architecture(2, 4, 48, 80, head="classifier", num_labels=3)


def test_the_expectation_is_the_profiles_prediction(small_engine, profile):
    e = P.LatencyExpectation.of(small_engine, profile, W)
    assert e.predicted_ms == P.predict_latency(P.architecture_of(small_engine), W, profile)
    assert e.tolerance == P.DEFAULT_TOLERANCE == 1.5 and e.limit_ms == 1.5 * e.predicted_ms
    assert e.target == profile.target and e.changes_since(e.predicted_ms, profile.target.signature) is None
    changed = e.changes_since(2 * e.predicted_ms, "another-cpu")
    assert "changed since this suite was written" in changed and "another-cpu" in changed
    assert "write the suite again" in changed
    with pytest.raises(P.ProfileError, match="does not cover the workload"):
        P.LatencyExpectation.of(small_engine, profile, P.Workload(1, 32, 1))


@given(st.one_of(st.floats(max_value=0.0), st.just(math.inf), st.just(math.nan), st.booleans(), st.text()))
def test_a_tolerance_is_a_positive_ratio(tolerance):
    with pytest.raises(P.ProfileError, match="positive ratio"):
        P.latency_check.check_tolerance(tolerance)


def test_the_verdict_states_measured_predicted_ratio_and_tolerance(small_engine, profile):
    e = P.LatencyExpectation.of(small_engine, profile, W, tolerance=1.5)
    at_limit = e.judge(P.Timing(e.limit_ms, 100, "pytest-benchmark"))
    assert at_limit.passed and at_limit.ratio == pytest.approx(1.5)
    slow = e.judge(P.Timing(1.51 * e.predicted_ms, 100, "pytest-benchmark"))
    assert not slow.passed
    message = slow.message()
    assert "FAILED" in message and "median of 100 calls, pytest-benchmark" in message
    assert "1.51x" in message and "the tolerance is 1.5x" in message and "What to do" in message
    assert "What to do" not in at_limit.message()
    newer = dataclasses.replace(profile.target, engine_version="99.0")
    assert "bortengine 99.0" in e.judge(P.Timing(1.0), current=newer).message()


def test_cpu_target_mismatch_names_both_targets(profile):
    here = profile.target
    assert P.cpu_target_mismatch(here, here) is None
    assert P.cpu_target_mismatch(here, dataclasses.replace(here, engine_version="99.0")) is None  # same machine
    other = dataclasses.replace(here, vendor="GenuineIntel", isa="avx2")
    message = P.cpu_target_mismatch(here, other, "OUT/profile.json")
    assert "(OUT/profile.json)" in message and f"expected  {here.signature}" in message
    assert f"found     {other.signature}" in message and "isa 'avx512' vs 'avx2'" in message
