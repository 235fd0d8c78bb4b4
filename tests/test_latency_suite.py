"""The latency suite a pipeline leaves beside its model (write_latency_suite) and the pytest plugin under it.

A random model and a profile of its one architecture (a tiny profile run, about half a second) stand in for an
exported student; the written suite is run by pytest in a subprocess as a service's CI would run it, with the
plugin found through the pytest11 entry point that pyproject.toml declares. Tolerances are chosen far from any real
latency (1000x, 0.001x), so these tests check what the suite says and decides, not how fast this machine is.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

import bortengine
from bortengine import profiling as P
from bortengine.architecture import Architecture
from bortengine.profiling.cpu_probe import rates_differ
from bortengine.search_space import SearchSpace
from conftest import NATIVE, ROOT

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
# pytest-benchmark at a fraction of its default second per benchmark
QUICK_BENCHMARK = ["--benchmark-max-time=0.05", "--benchmark-min-rounds=5"]


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


def _out_dir(root: Path, small_model: Path, profile: P.Profile, target: P.Target | None = None) -> Path:
    """OUT as the pipeline leaves it: model/ and profile.json (the profile with another target if given)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(small_model, root / "model")
    P.Profile(target or profile.target, profile.workloads).save(root / "profile.json")
    return root


def _entry_point_site(root: Path) -> Path:
    """A folder holding only a distribution's metadata with the pytest11 entry points pyproject.toml declares:
    on sys.path, pytest loads the plugin from it exactly as from an installed bortengine."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
    info = root / "bortengine_plugin_under_test-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bortengine-plugin-under-test\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[pytest11]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items()))
    return root


def run_pytest(tmp_path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """python -m pytest ARGS in a fresh process: this source tree, the plugin by its entry point, no other
    configuration from the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    src = str(Path(bortengine.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, str(_entry_point_site(tmp_path / "site"))])
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


# ================================================================================= the suite, as CI runs it
def test_suite_passes_when_the_prediction_is_generous_and_the_folder_moved(tmp_path, small_model, profile):
    out = _out_dir(tmp_path / "out", small_model, profile)
    suite = P.write_latency_suite(out / "test_latency.py", out / "model", out / "profile.json", W, tolerance=1000)
    expected = P.LatencyExpectation.of(out / "model", profile, W, tolerance=1000)
    text = suite.read_text(encoding="utf-8")
    # the numbers it holds the model to, readable in the file
    assert f"PREDICTED_MS = {round(expected.predicted_ms, 6)!r}" in text
    assert f'TARGET = "{profile.target.signature}"' in text and "TOLERANCE = 1000.0" in text
    assert "MODEL = HERE / 'model'" in text and "PROFILE = HERE / 'profile.json'" in text
    assert str(tmp_path) not in text  # nothing absolute: the folder can move
    moved = shutil.move(str(out), str(tmp_path / "elsewhere"))
    result = run_pytest(tmp_path, "test_latency.py", *QUICK_BENCHMARK, cwd=Path(moved))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_suite_fails_past_the_tolerance_saying_what_to_do(tmp_path, small_model, profile):
    out = _out_dir(tmp_path / "out", small_model, profile)
    P.write_latency_suite(out / "test_latency.py", out / "model", out / "profile.json", W, tolerance=0.001)
    result = run_pytest(tmp_path, str(out / "test_latency.py"), *QUICK_BENCHMARK, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    report = result.stdout
    assert "1 failed, 2 passed" in report
    assert "bortengine latency check FAILED" in report and "⟨2, 4, 64, 96⟩" in report
    for words in ("measured", "pytest-benchmark", "predicted", "ratio", "the tolerance is 0.001x", "What to do",
                  "bortengine profile --batch 1 --seq 16 --threads 1", "--bortengine-tolerance"):
        assert words in report, words
    # the option loosens the bound for one run
    loose = run_pytest(tmp_path, str(out / "test_latency.py"), "--bortengine-tolerance", "1000", *QUICK_BENCHMARK,
                       cwd=tmp_path)
    assert loose.returncode == 0, loose.stdout + loose.stderr


def test_suite_fails_on_another_cpu_target_or_skips_when_allowed(tmp_path, small_model, profile):
    other = dataclasses.replace(profile.target, model="Other CPU 9000", logical_cpus=64)
    out = _out_dir(tmp_path / "out", small_model, profile, target=other)
    P.write_latency_suite(out / "test_latency.py", out / "model", out / "profile.json", W, tolerance=1000)
    result = run_pytest(tmp_path, str(out / "test_latency.py"), *QUICK_BENCHMARK, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 failed, 1 passed" in result.stdout  # the target test and the latency test; the records still agree
    assert "this machine is not the CPU target the model was extracted for" in result.stdout
    assert f"expected  {other.signature}" in result.stdout
    assert f"found     {P.Target.current().signature}" in result.stdout
    assert "logical_cpus 64 vs" in result.stdout and "--bortengine-allow-other-cpu" in result.stdout
    assert "benchmark 'bortengine latency'" not in result.stdout   # refused before anything was timed
    allowed = run_pytest(tmp_path, str(out / "test_latency.py"), "--bortengine-allow-other-cpu", "-rs",
                         *QUICK_BENCHMARK, cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "1 passed, 2 skipped" in allowed.stdout and other.signature in allowed.stdout
    assert "or pass --bortengine-allow-other-cpu" not in allowed.stdout   # not advised what was done


def test_a_profile_whose_target_cannot_be_checked_warns_instead_of_passing_as_the_same_cpu(tmp_path, small_model,
                                                                                           profile):
    """A profile from before exact targets (no calibration probe rate) passed the target check as "the same CPU
    target", though a Zen 4 and a Zen 5 report the same name and flags: the check says it cannot tell and warns,
    and the latency checks judge the time measured."""
    stored = dataclasses.replace(profile.target, probe_gflops=None)
    out = _out_dir(tmp_path / "out", small_model, profile, target=stored)
    P.write_latency_suite(out / "test_latency.py", out / "model", out / "profile.json", W, tolerance=1000)
    result = run_pytest(tmp_path, str(out / "test_latency.py"), *QUICK_BENCHMARK, cwd=tmp_path)
    report = " ".join(result.stdout.split())        # the warnings summary wraps its lines
    assert result.returncode == 0, result.stdout + result.stderr
    assert "against the profile's None: cannot be checked (warned)" in report and "the same CPU target" not in report
    assert "whether this machine is its CPU target cannot be checked" in report


def test_an_mpnet_models_expectation_prices_its_position_bias(tmp_path, make_encoder):
    """MPNet's attention adds a relative position bias: its expectation is priced with the profile's pair of
    attentions timed with and without it, not as BERT's attention."""
    model = make_encoder(model_type="mpnet", head="model")
    engine = bortengine.load(model, num_threads=1)
    arch = P.architecture_of(engine)
    space = SearchSpace("mpnet-suite", layers=[arch.layers], heads=[arch.heads], hidden=[arch.hidden],
                        intermediate=[arch.intermediate], vocab_size=arch.vocab_size,
                        max_positions=arch.max_positions)
    P.profile(space, W, out=tmp_path / "profile.json", progress=False, settings=FAST)
    # the biased attention made 3x slower in the file, so that its price shows whatever this machine measured
    data = json.loads((tmp_path / "profile.json").read_text())
    biased = data["workloads"][W.key]["ops"]["attention A=12 Dh=64 after qkv position bias"]
    biased["blocks"] = [{k: 3 * v if k.endswith("ms") else v for k, v in b.items()} for b in biased["blocks"]]
    (tmp_path / "profile.json").write_text(json.dumps(data))
    prof = P.load_profile(tmp_path / "profile.json")
    expected = P.LatencyExpectation.of(engine, prof, W)
    assert prof.model(W).position_bias_factor() > 2
    assert expected.predicted_ms == pytest.approx(P.predict_latency(arch, W, prof, position_bias=True))
    assert expected.predicted_ms > P.predict_latency(arch, W, prof)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to run a suite on fewer")
def test_a_run_on_fewer_cpus_than_the_workloads_threads_fails_the_target_check(tmp_path, small_model):
    """A CI runner pinned to fewer CPUs (taskset, a container's quota) passed the target check, its CPU count being
    the machine's, and the latency check failed at ~2x, the cause a RuntimeWarning in the warnings summary."""
    two = P.Workload(batch_size=1, seq_len=16, num_threads=2)
    arch = P.architecture_of(bortengine.load(small_model, num_threads=1))
    space = SearchSpace("suite", layers=[arch.layers], heads=[arch.heads], hidden=[arch.hidden],
                        intermediate=[arch.intermediate])
    measured = P.profile(space, two, out=tmp_path / "profile.json", progress=False, settings=FAST)
    out = _out_dir(tmp_path / "out", small_model, measured)
    P.write_latency_suite(out / "test_latency.py", out / "model", out / "profile.json", two, tolerance=1000)
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})      # the suite's process inherits one CPU
    try:
        result = run_pytest(tmp_path, str(out / "test_latency.py"), *QUICK_BENCHMARK, cwd=tmp_path)
    finally:
        os.sched_setaffinity(0, cpus)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 failed, 1 passed" in result.stdout        # the target test and the latency test
    assert "this process may run on 1 CPU(s)" in result.stdout and "fewer than the 2 threads" in result.stdout
    assert "benchmark 'bortengine latency'" not in result.stdout    # refused before anything was timed


@pytest.mark.parametrize("ratio", [1.2, 1 / 1.5, 3.0])
def test_a_probe_apart_by_what_load_causes_warns_and_beyond_it_fails(tmp_path, small_model, profile, ratio):
    # the profile's rate `ratio` x this machine's best: 1.2x (taken quiet, checked on a busy core) and 1/1.5 (taken
    # on a busy core) are load or another clock, which the measured latency judges; 3x is not load (Zen 4 running a
    # Zen 5 profile: 2.4x). The suite probes again, and this shared VM's probe moves by up to 1.5x between readings
    # seconds apart, so which verdict is right follows from the rate the suite read, which its summary states
    stored = dataclasses.replace(profile.target, probe_gflops=round(ratio * profile.target.probe_gflops, 2))
    out = _out_dir(tmp_path / "out", small_model, profile, target=stored)
    P.write_latency_suite(out / "test_latency.py", out / "model", out / "profile.json", W, tolerance=1000)
    result = run_pytest(tmp_path, str(out / "test_latency.py"), *QUICK_BENCHMARK, cwd=tmp_path)
    report = " ".join(result.stdout.split())        # the warnings summary wraps its lines
    read = re.search(r"this machine's calibration probe ([0-9.]+) GFLOP/s against the profile's ([0-9.]+): "
                     r"([A-Za-z ]+)", report)
    assert read, result.stdout + result.stderr
    assert float(read[2]) == stored.probe_gflops
    found = dataclasses.replace(stored, probe_gflops=float(read[1]))
    if stored.apart_by_load_alone(found):
        assert read[3].startswith("apart by what load causes")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "3 passed" in report and "this machine's calibration probe ran" in report
        assert f"against {stored.probe_gflops:.0f} GFLOP/s" in report and "when the machine is quiet" in report
    elif rates_differ(stored.probe_gflops, found.probe_gflops):
        assert read[3].startswith("another CPU target")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "2 failed, 1 passed" in report and "this machine is not the CPU target" in report
        assert f"calibration probe {stored.probe_gflops:.0f} vs" in report and "(more than 15% apart)" in report
    else:  # the suite's probe read within 15% of the stored rate: the same target, no note
        assert read[3].startswith("the same CPU target")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "3 passed" in report and "calibration probe ran" not in report


PROBE_READS_SLOW_THEN_AT_RATE = '''
import dataclasses
from bortengine.profiling.target import Target

readings = iter([0.8, 1.0, 1.0, 1.0, 1.0])     # x the profile's rate: a busy core at the first reading only


def confirmed_against(self, expected):
    return dataclasses.replace(self, probe_gflops=round(next(readings) * expected.probe_gflops, 2))


Target.confirmed_against = confirmed_against
'''


def test_every_test_of_a_profile_gets_the_verdict_its_summary_states(tmp_path, small_model, profile):
    # a re-probe seconds later may read otherwise on a shared core (CI: 174 then 212 GFLOP/s against 214): the first
    # reading decides for the whole run, so the warning the tests raised and the summary's verdict agree
    out = _out_dir(tmp_path / "out", small_model, profile)
    P.write_latency_suite(out / "test_latency.py", out / "model", out / "profile.json", W, tolerance=1000)
    (out / "conftest.py").write_text(PROBE_READS_SLOW_THEN_AT_RATE)
    result = run_pytest(tmp_path, str(out / "test_latency.py"), *QUICK_BENCHMARK, cwd=tmp_path)
    report = " ".join(result.stdout.split())
    assert result.returncode == 0, result.stdout + result.stderr
    slow = round(0.8 * profile.target.probe_gflops, 2)
    assert f"this machine's calibration probe {slow} GFLOP/s against the profile's" in report, report
    assert "apart by what load causes (warned)" in report and "the same CPU target" not in report
    assert "this machine's calibration probe ran slower" in report and "3 passed" in report


def test_the_note_on_a_probe_apart_by_load_says_which_way(profile):
    here = dataclasses.replace(profile.target, probe_gflops=100.0)
    profiled_quiet = dataclasses.replace(here, probe_gflops=150.0)
    assert profiled_quiet.apart_by_load_alone(here) and here.apart_by_load_alone(profiled_quiet)
    note = P.busy_core_note(profiled_quiet, here, "OUT/profile.json")
    assert "ran slower than the profile's (OUT/profile.json)" in note and "100 against 150 GFLOP/s" in note
    assert "ran faster than the profile's" in P.busy_core_note(here, profiled_quiet)
    assert not here.apart_by_load_alone(dataclasses.replace(here, probe_gflops=110.0))      # within tolerance
    assert not here.apart_by_load_alone(dataclasses.replace(here, probe_gflops=240.0))      # not load: 2.4x
    assert not here.apart_by_load_alone(dataclasses.replace(here, probe_gflops=150.0, logical_cpus=64))


PLAIN_TESTS = '''
import pytest
from bortengine.profiling import Workload

MODEL, PROFILE = {model!r}, {profile!r}
W = Workload(batch_size=2, seq_len=16, num_threads=1)


def test_a_test_that_uses_no_fixture():
    assert 1 + 1 == 2


def test_engine_inputs_and_a_timed_callable(bortengine_engine, bortengine_inputs, bortengine_expectation,
                                           bortengine_latency, bortengine_cpu_target, bortengine_profile):
    engine = bortengine_engine(MODEL, num_threads=1)
    assert bortengine_engine(MODEL, "float32", 1) is engine            # loaded once
    inputs = bortengine_inputs(MODEL, Workload(1, 16, 1))
    assert inputs["input_ids"].shape == (1, 16)
    assert bortengine_cpu_target(PROFILE) == bortengine_cpu_target(bortengine_profile(PROFILE))
    expectation = bortengine_expectation(engine, PROFILE, Workload(1, 16, 1), tolerance=1000)
    verdict = bortengine_latency(lambda: engine(**inputs), expectation, engine=engine)
    assert verdict.passed and verdict.timing.calls >= 10
    assert bortengine_latency(expectation.predicted_ms, expectation).ratio == 1.0


def test_failures_are_clean(bortengine_engine, bortengine_expectation, bortengine_latency, bortengine_inputs,
                            bortengine_cpu_target):
    with pytest.raises(pytest.fail.Exception, match="does not cover the workload"):
        bortengine_expectation(MODEL, PROFILE, W)
    with pytest.raises(pytest.fail.Exception, match="must be a bortengine.profiling.Workload"):
        bortengine_inputs(MODEL, (1, 16))
    with pytest.raises(pytest.fail.Exception, match="must be a Profile or the path of its file, got 42"):
        bortengine_cpu_target(42)
    expectation = bortengine_expectation(MODEL, PROFILE, Workload(1, 16, 1))
    with pytest.raises(pytest.fail.Exception, match="runs float32 on 2 thread"):
        bortengine_latency(1.0, expectation, engine=bortengine_engine(MODEL, num_threads=2))
    with pytest.raises(pytest.fail.Exception, match="call benchmark"):
        bortengine_latency(type("Unrun", (), {{"stats": None, "disabled": False}})(), expectation)
    with pytest.raises(pytest.fail.Exception, match="does not exist") as failed:
        bortengine_engine("no-such-model")
    assert failed.value.__context__ is None     # said once, not again after "During handling of the above ..."
'''


def test_the_fixtures_serve_a_plain_test_file(tmp_path, small_model, profile_path):
    (tmp_path / "test_plain.py").write_text(PLAIN_TESTS.format(model=str(small_model), profile=str(profile_path)))
    result = run_pytest(tmp_path, "test_plain.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_the_plugin_is_cheap_to_load_and_can_be_turned_off(tmp_path):
    code = ("import sys, bortengine.profiling.pytest_plugin\n"
            "print(*(m in sys.modules for m in ('torch', 'transformers', 'bortengine._core')))")
    env = dict(os.environ, PYTHONPATH=str(Path(bortengine.__file__).resolve().parents[1]))
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert loaded.stdout.split() == ["False", "False", "False"], loaded.stderr
    on = run_pytest(tmp_path, "--help", cwd=tmp_path)
    assert "--bortengine-tolerance=RATIO" in on.stdout and "--bortengine-allow-other-cpu" in on.stdout
    off = run_pytest(tmp_path, "-p", "no:bortengine", "--help", cwd=tmp_path)
    assert off.returncode == 0 and "--bortengine-tolerance" not in off.stdout


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


def test_writer_errors(tmp_path, small_model, profile_path):
    with pytest.raises(P.ProfileError, match="must be named test_"):
        P.write_latency_suite(tmp_path / "latency.py", small_model, profile_path, W)
    with pytest.raises(P.ProfileError, match="no model directory"):
        P.write_latency_suite(tmp_path / "test_latency.py", tmp_path / "nope", profile_path, W)
    with pytest.raises(P.ProfileError, match="no profile at"):
        P.write_latency_suite(tmp_path / "test_latency.py", small_model, tmp_path / "nope.json", W)
    with pytest.raises(P.ProfileError, match="bortengine profile --batch 4 --seq 16 --threads 1"):
        P.write_latency_suite(tmp_path / "test_latency.py", small_model, profile_path, P.Workload(4, 16, 1))
    with pytest.raises(P.ProfileError, match="positive ratio"):
        P.write_latency_suite(tmp_path / "test_latency.py", small_model, profile_path, W, tolerance=0)
    assert not (tmp_path / "test_latency.py").exists()
    (tmp_path / "a-file").write_text("")   # a file where the suite's folder should be: was a raw FileExistsError
    with pytest.raises(P.ProfileError, match=r"cannot write the latency suite .*a-file.* cannot be made"):
        P.write_latency_suite(tmp_path / "a-file" / "test_latency.py", small_model, profile_path, W)
