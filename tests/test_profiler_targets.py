"""Exact CPU targets (issue 17): the target's CPUID and caches from /proc/cpuinfo and sysfs, the calibration probe
and its tolerance, what loading a profile of another target or from before exact targets says, and the choice of
`extract` and the pipeline to measure this CPU rather than use such a profile.

Probe rates that decide something are injected; the real probe is only compared with itself, with generous margins
(the machine is shared). Profiles are synthetic, or tiny ones measured with minimal repeats.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from bortengine import profiling as P
from bortengine.cli import main
from bortengine.engine import core as native_core
from bortengine.profiling import choice, cpu_probe, profile_file, target
from bortengine.search_space import MINILM_SPACE
from conftest import NATIVE
from test_profiler import FAST, TINY
from test_profiler import W as TINY_W
from test_profiler_model import SMALL, W, synthetic

pytestmark = [
    pytest.mark.skipif(not NATIVE, reason="the target and the probe come from the native core"),
    pytest.mark.filterwarnings("ignore:the machine is busy:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:other processes used:RuntimeWarning"),
]

ZEN4_RATE, ZEN5_RATE = 105.0, 255.0   # the probe's rate on this VM's two CPU generations (about 2.4x apart)
SHIPPED = P.shipped_profiles()


def _cpuinfo(family: int, model: int, stepping: int) -> str:
    block = (f"processor\t: {{n}}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n"
             f"model name\t: AMD EPYC\nstepping\t: {stepping}\nflags\t\t: fpu avx2 avx512f\n")
    return block.format(n=0) + "\n" + block.format(n=1)


def _sysfs(root: Path, l2: str, l3: str) -> Path:
    for index, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"), (2, "Unified", l2),
                                                 (3, "Unified", l3)]):
        d = root / f"index{index}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return root


# Zen 4 (Genoa) and Zen 5 (Turin) as a VM shows them: the same model name and flags, other CPUID
CPUS = {"zen4": dict(family=25, model=17, stepping=1, l2="1024K", l3="32768K"),
        "zen5": dict(family=26, model=2, stepping=1, l2="1024K", l3="32768K")}


class _AmdEpyc:
    """The native core, reporting the vendor and model name a cloud VM shows for both Zen 4 and Zen 5."""
    def __init__(self, native):
        self._native = native

    def cpu_info(self) -> dict:
        return {**self._native.cpu_info(), "vendor": "AuthenticAMD", "model": "AMD EPYC"}

    def __getattr__(self, name):
        return getattr(self._native, name)


@pytest.fixture
def fake_cpu(tmp_path, monkeypatch):
    """fake_cpu(name, rate): Target.current() reads that CPU's /proc/cpuinfo and sysfs, and its probe gives rate."""
    def use(name: str, rate: float) -> P.Target:
        cpu = CPUS[name]
        info = tmp_path / f"{name}-cpuinfo"
        info.write_text(_cpuinfo(cpu["family"], cpu["model"], cpu["stepping"]))
        sysfs = tmp_path / f"{name}-cache"
        if not sysfs.exists():
            _sysfs(sysfs, cpu["l2"], cpu["l3"])
        monkeypatch.setattr(target, "CPUINFO", info)
        # the vendor and model name come from CPUID's brand string, not /proc/cpuinfo: this host's could be Intel
        monkeypatch.setattr(target, "core", lambda: _AmdEpyc(native_core()))
        monkeypatch.setattr(target, "CACHE_SYSFS", sysfs)
        monkeypatch.setattr(cpu_probe, "_best", {})
        monkeypatch.setattr(cpu_probe, "measure_probe", lambda isa: rate)
        monkeypatch.setattr(cpu_probe, "RETRY_PAUSES_S", (0.0,) * len(cpu_probe.RETRY_PAUSES_S))
        return P.Target.current()
    return use


def _old_format(prof: P.Profile, path: Path) -> Path:
    """The profile saved as versions before exact targets wrote it: no CPUID, L2 or probe; the old signature."""
    data = prof.to_dict()
    t = data["target"]
    for key in ("cpu_family", "cpu_model", "cpu_stepping", "l2_bytes", "probe", "probe_gflops"):
        t.pop(key)
    t["signature"] = prof.target.legacy_signature
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# --- the target's facts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, other", [("zen4", "zen5"), ("zen5", "zen4")])
def test_signature_fields_from_cpuinfo_and_sysfs(fake_cpu, name, other):
    cpu = CPUS[name]
    here = fake_cpu(name, ZEN4_RATE if name == "zen4" else ZEN5_RATE)
    assert (here.cpu_family, here.cpu_model, here.cpu_stepping) == (cpu["family"], cpu["model"], cpu["stepping"])
    assert (here.l2_bytes, here.l3_bytes) == (1 << 20, 32 << 20)
    assert here.probe == cpu_probe.PROBE and here.checkable
    assert f"-f{cpu['family']}m{cpu['model']}s{cpu['stepping']}-" in here.signature
    assert here.legacy_signature == f"authenticamd-amd-epyc-{here.isa}-{here.logical_cpus}cpu"
    assert "family" in here.describe() and "L2 1 MiB, L3 32 MiB" in here.describe()
    there = fake_cpu(other, ZEN5_RATE if name == "zen4" else ZEN4_RATE)
    assert here.model == there.model and here.flags == there.flags      # what the old signature compared
    differences = " ".join(here.cpu_differences(there))
    assert "cpu_family" in differences and "cpu_model" in differences and "calibration probe" in differences
    assert here.signature != there.signature
    # a VM that shows both generations with one CPUID: only the probe tells them apart
    masked = replace(there, cpu_family=here.cpu_family, cpu_model=here.cpu_model, cpu_stepping=here.cpu_stepping)
    assert [d.split(" ")[:2] for d in here.cpu_differences(masked)] == [["calibration", "probe"]]
    assert P.Target.from_dict(json.loads(json.dumps(here.to_dict()))) == here


def test_cpuinfo_without_cpuid_and_sysfs_without_caches(tmp_path, monkeypatch):
    """An ARM /proc/cpuinfo has no CPUID family: the signature is the one of earlier versions, the probe still
    tells CPUs apart."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n")
    assert target.cpuid(info) == {"cpu_family": None, "cpu_model": None, "cpu_stepping": None}
    assert target.cpuid(tmp_path / "missing") == {"cpu_family": None, "cpu_model": None, "cpu_stepping": None}
    assert target.cache_bytes(2, tmp_path / "no-sysfs") is None
    monkeypatch.setattr(target, "CPUINFO", info)
    here = P.Target.current()
    assert here.signature == here.legacy_signature and here.checkable


# --- the probe --------------------------------------------------------------------------------------------------
def test_the_probe_agrees_with_itself():
    """Best-of probes repeat within a few % on a quiet machine; here (shared, nice'd) only generous margins hold:
    no flaky bound on this machine's load, only that the probe measures something real and stable in kind."""
    isa = P.Target.current().isa
    rates = [cpu_probe.measure_probe(isa) for _ in range(3)]
    assert all(r > 1.0 for r in rates), rates                       # GFLOP/s of a real GEMM
    assert max(rates) < 3.0 * min(rates), rates                     # not 2.4x apart, as two CPU generations are
    assert cpu_probe.probe_gflops(isa) == cpu_probe.probe_gflops(isa)   # once per process, then kept


def test_a_thread_clock_that_reads_no_time_does_not_make_a_rate(monkeypatch):
    """A call whose thread CPU time reads 0 (a clock glitch seen on a VM) is skipped, not taken as an infinitely fast
    call: with every reading 0, the rate comes from the calls' wall time, a real GEMM's rate."""
    isa = P.Target.current().isa
    quiet = cpu_probe.measure_probe(isa)
    monkeypatch.setattr(cpu_probe.time, "thread_time", lambda: 42.0)
    stuck = cpu_probe.measure_probe(isa)
    assert 1.0 < stuck < 3.0 * quiet, (stuck, quiet)


def test_the_tolerance_and_the_reprobes_with_injected_rates(monkeypatch):
    tol = cpu_probe.PROBE_TOLERANCE
    assert not cpu_probe.rates_differ(100.0, 100.0 * (1 + tol) - 0.01)
    assert cpu_probe.rates_differ(100.0, 100.0 * (1 + tol) + 0.01) and cpu_probe.rates_differ(ZEN5_RATE, ZEN4_RATE)
    retries = len(cpu_probe.RETRY_PAUSES_S)
    monkeypatch.setattr(cpu_probe, "RETRY_PAUSES_S", (0.0,) * retries)
    # a slow probe (a burst of load) is re-run until it agrees; the best is kept for the process
    readings = iter([60.0, 70.0, 101.0, 50.0])
    monkeypatch.setattr(cpu_probe, "_best", {})
    monkeypatch.setattr(cpu_probe, "measure_probe", lambda isa: next(readings))
    assert cpu_probe.confirmed_gflops("avx512", 105.0) == 101.0 and cpu_probe.probe_gflops("avx512") == 101.0
    # one that stays slow (another CPU) counts after the re-probes; a fast one is never re-run (load only slows)
    slow = iter([40.0] * (1 + retries))
    monkeypatch.setattr(cpu_probe, "_best", {})
    monkeypatch.setattr(cpu_probe, "measure_probe", lambda isa: next(slow))
    assert cpu_probe.confirmed_gflops("avx512", ZEN5_RATE) == 40.0 and next(slow, None) is None
    monkeypatch.setattr(cpu_probe, "_best", {"avx512": ZEN5_RATE})
    monkeypatch.setattr(cpu_probe, "measure_probe", lambda isa: pytest.fail("re-probed a fast rate"))
    assert cpu_probe.confirmed_gflops("avx512", ZEN4_RATE) == ZEN5_RATE


def test_a_profile_stores_the_best_of_probes_spread_over_time(monkeypatch):
    # a spell of load (another tenant on the core) slows the first probes; the stored rate is the quiet one's
    readings = iter([100.0, 101.0, 99.0, 157.0, 102.0, 150.0, 100.0])
    slept = []
    monkeypatch.setattr(cpu_probe, "_best", {})
    monkeypatch.setattr(cpu_probe, "measure_probe", lambda isa: next(readings))
    monkeypatch.setattr(cpu_probe.time, "sleep", slept.append)
    assert cpu_probe.probe_gflops("avx512") == 100.0
    assert cpu_probe.reference_gflops("avx512") == 157.0 and next(readings, None) is None
    assert sum(slept) == pytest.approx(cpu_probe.REFERENCE_PROBES * cpu_probe.REFERENCE_PAUSE_S)
    assert cpu_probe.probe_gflops("avx512") == 157.0               # the process keeps it for its later checks


def test_a_profile_measured_in_a_spell_of_load_is_not_another_cpu_later(tmp_path, monkeypatch):
    # the real profiler: its stored rate is the best of the spread probes, so the same CPU checks as itself
    readings = iter([100.0] + [100.0, 157.0] + [120.0] * 10)
    monkeypatch.setattr(cpu_probe, "_best", {})
    monkeypatch.setattr(cpu_probe, "measure_probe", lambda isa: next(readings))
    monkeypatch.setattr(cpu_probe, "REFERENCE_PAUSE_S", 0.0)
    prof = P.profile(TINY, TINY_W, out=tmp_path / "p.json", progress=False, settings=FAST)
    assert prof.target.probe_gflops == 157.0
    assert P.load_profile(tmp_path / "p.json").target.probe_gflops == 157.0


@pytest.mark.parametrize("stored", [1.4, 2.4])
def test_resuming_on_a_busy_core_resumes_and_keeps_the_best_rate(tmp_path, monkeypatch, stored):
    # a profile interrupted and resumed with the core busy: its probe 1/1.4 of the file's is load (resumed, with a
    # warning, the file's best rate kept); 1/2.4 is another CPU (Zen 4 resuming a Zen 5 profile), which is refused
    monkeypatch.setattr(cpu_probe, "_best", {})
    monkeypatch.setattr(cpu_probe, "measure_probe", lambda isa: 100.0)
    monkeypatch.setattr(cpu_probe, "REFERENCE_PAUSE_S", 0.0)
    monkeypatch.setattr(cpu_probe, "RETRY_PAUSES_S", (0.0,) * len(cpu_probe.RETRY_PAUSES_S))
    path = tmp_path / "p.json"
    P.Profile(replace(P.Target.current(), probe_gflops=100.0 * stored)).save(path)
    if stored < P.LOAD_SLOWDOWN:
        with pytest.warns(P.ProfileMismatchWarning, match="read 100 GFLOP/s against the profile's 140.*busy core"):
            prof = P.profile(TINY, TINY_W, out=path, progress=False, settings=FAST)
        assert prof.covers(TINY_W) and P.load_profile(path, check_target=False).target.probe_gflops == 140.0
    else:
        with pytest.raises(P.ProfileError, match="another target.*calibration probe 240 vs 100.*another --out"):
            P.profile(TINY, TINY_W, out=path, progress=False, settings=FAST)


# --- loading ------------------------------------------------------------------------------------------------------
def _zen4_profile_on_zen5(fake_cpu, tmp_path) -> Path:
    zen4 = fake_cpu("zen4", ZEN4_RATE)
    path = synthetic(SMALL, target=zen4).save(tmp_path / "zen4.json")
    fake_cpu("zen5", ZEN5_RATE)
    return path


def test_a_profile_of_another_cpu_generation_warns_naming_both_and_the_fix(fake_cpu, tmp_path):
    path = _zen4_profile_on_zen5(fake_cpu, tmp_path)
    with pytest.warns(P.ProfileMismatchWarning) as caught:
        prof = P.load_profile(path)
    message = str(caught[0].message)
    assert "another target" in message and "cpu_family 25 vs 26" in message and "calibration probe 105 vs 255" \
        in message
    assert "\n  profile  authenticamd-amd-epyc-f25m17s1-" in message and "probe 105 GFLOP/s" in message
    assert "\n  here     authenticamd-amd-epyc-f26m2s1-" in message and "probe 255 GFLOP/s" in message
    assert "Re-profile this machine with: bortengine profile --batch 1 --seq 16 --threads 2 --space small" in message
    assert prof.covers(W)                                            # it still loads and predicts
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.ProfileMismatchWarning)
        P.load_profile(path, check_target=False)                     # predicting for that target on purpose


def test_a_probe_within_the_tolerance_is_the_same_cpu_and_a_slow_one_may_be_load(fake_cpu, tmp_path):
    here = fake_cpu("zen4", ZEN4_RATE)
    path = synthetic(SMALL, target=replace(here, probe_gflops=ZEN4_RATE * 1.1)).save(tmp_path / "p.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.ProfileMismatchWarning)
        P.load_profile(path)
    path = synthetic(SMALL, target=replace(here, probe_gflops=ZEN4_RATE * 1.4)).save(tmp_path / "busy.json")
    with pytest.warns(P.ProfileMismatchWarning, match="calibration probe 147 vs 105.*or this machine is busy"):
        P.load_profile(path)
    # 2.4x slower is not load: Zen 4 running a Zen 5 profile
    path = synthetic(SMALL, target=replace(here, probe_gflops=ZEN5_RATE)).save(tmp_path / "zen5.json")
    with pytest.warns(P.ProfileMismatchWarning, match="calibration probe 255 vs 105") as caught:
        P.load_profile(path)
    assert "busy" not in str(caught[0].message)


@pytest.mark.parametrize("old", ["kept", "synthetic"])
def test_profiles_from_before_exact_targets_load_with_a_warning(old, tmp_path):
    if old == "kept":       # the profile shipped before exact targets (core build f0e2ab74), kept for its pins
        path = Path(__file__).resolve().parent / "data" / "profile-core-f0e2ab74.json"
    else:
        here = P.Target.current()
        path = _old_format(synthetic(SMALL, target=here), tmp_path / f"{here.legacy_signature}.json")
    with pytest.warns(P.ProfileMismatchWarning) as caught:
        prof = P.load_profile(path)
    message = str(caught[0].message)
    assert "before bortengine recorded exact CPU targets" in message and "cannot be checked" in message
    assert "no probe rate" in message and f"here     {P.Target.current().signature}" in message
    assert "Re-profile this machine with: bortengine profile --batch" in message
    assert not prof.target.checkable and prof.target.signature == prof.target.legacy_signature


def test_a_damaged_profile_in_the_cache_is_skipped_with_a_warning(tmp_path, monkeypatch):
    """It was skipped without a word: the user's own measurements gave way to a shipped profile (or to profiling
    into a new file beside it), and nothing said that their file was broken."""
    monkeypatch.setenv("BORTENGINE_PROFILE_DIR", str(tmp_path / "profiles"))
    here = P.Target.current()
    path = P.default_profile_path(here)
    path.parent.mkdir(parents=True)
    path.write_text('{"format": "bortengine-profile", "cut sh')
    with pytest.warns(P.ProfileMismatchWarning, match=rf"{re.escape(str(path))} is not valid JSON .*skipped: this "
                                                      rf"machine's profile is looked for among the other files"):
        mine, _ = P.find_profiles(here)
    assert mine is None or mine.path != path


def test_each_shipped_profile_is_this_cpus_only_on_the_cpu_it_was_measured_on(tmp_path, monkeypatch):
    """Each shipped profile (one per CPU target: the Zen 4 and the Zen 5 VM) carries its exact target (CPUID,
    probe rate): on that CPU find_profiles() takes it as this CPU's profile (when no cached one is), on any other
    it is not, and one behind this CPU's signature is listed among the others, with the differences."""
    if not SHIPPED:
        pytest.skip("no shipped profile")
    monkeypatch.setenv("BORTENGINE_PROFILE_DIR", str(tmp_path / "profiles"))
    here = P.Target.current()
    mine, others = P.find_profiles()
    listed = {p.path: match for p, match in others}
    targets = []
    for path in SHIPPED:
        shipped = P.load_profile(path, check_target=False)
        assert shipped.target.checkable and path.stem == shipped.target.signature
        targets.append(shipped.target.signature)
        if shipped.match().same_cpu:
            assert mine is not None and mine.path == path and others == []
        else:
            assert mine is None or mine.path != path
            if mine is None and path.stem in (here.signature, here.legacy_signature):
                assert listed[path].differences
    assert len(set(targets)) == len(SHIPPED), "two shipped profiles of one CPU target"


# --- choosing: measure this CPU rather than use another's profile -------------------------------------------------
@pytest.fixture
def private_profiles(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """An empty cache directory, and a shipped-profile directory of its own."""
    cache, shipped = tmp_path / "profiles", tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setenv("BORTENGINE_PROFILE_DIR", str(cache))
    monkeypatch.setattr(profile_file, "PACKAGE_PROFILES", shipped)
    return cache, shipped


def test_the_search_measures_this_cpu_rather_than_use_an_old_or_foreign_profile(private_profiles):
    cache, shipped = private_profiles
    here = P.Target.current()
    old = _old_format(synthetic(TINY, w=TINY_W, target=here), shipped / f"{here.legacy_signature}.json")
    with pytest.warns(P.ProfileMismatchWarning, match="cannot be checked"):
        chosen = P.profile_for_search(TINY, TINY_W, settings=FAST, progress=False)
    assert chosen.measured_now and chosen.profile.path == cache / f"{here.signature}.json"
    assert "quick mode" in chosen.note and f"{old} is from before exact CPU targets" in chosen.note
    assert chosen.profile.target.checkable and chosen.profile.covers(TINY_W)
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.ProfileMismatchWarning)
        again = P.profile_for_search(TINY, TINY_W, settings=FAST, progress=False)
    assert not again.measured_now and again.note == f"this CPU's profile {chosen.profile.path}"
    # the same name and CPUID, another CPU generation behind them (the probe 2.4x apart): its file is kept, this
    # machine's measurements go beside it
    foreign = json.loads(chosen.profile.path.read_text())
    foreign["target"]["probe_gflops"] = 2.4 * here.probe_gflops
    chosen.profile.path.write_text(json.dumps(foreign))
    with pytest.warns(P.ProfileMismatchWarning, match="calibration probe"):
        third = P.profile_for_search(TINY, TINY_W, settings=FAST, progress=False)
    assert third.measured_now and third.profile.path == cache / f"{here.signature}-2.json"
    assert "is of another CPU target (calibration probe" in third.note
    assert json.loads((cache / f"{here.signature}.json").read_text()) == foreign
    assert P.find_profiles()[0].path == third.profile.path


def test_a_profile_of_this_core_build_is_taken_before_a_cached_one_of_an_older_build(private_profiles):
    cache, shipped = private_profiles
    here = P.Target.current()
    cache.mkdir()
    stale = synthetic(TINY, w=TINY_W, target=replace(here, core_build="0123456789abcdef"))
    stale.save(cache / f"{here.signature}.json")
    with pytest.warns(P.ProfileMismatchWarning, match="another build"):
        assert P.load_profile().path == cache / f"{here.signature}.json"   # better than none: taken, with a warning
    synthetic(TINY, w=TINY_W, target=here).save(shipped / f"{here.signature}.json")
    mine, others = P.find_profiles()
    assert mine.path == shipped / f"{here.signature}.json" and others == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.ProfileMismatchWarning)
        assert P.load_profile().path == shipped / f"{here.signature}.json"


def _fake_quick_profile(monkeypatch, calls: list) -> None:
    """profile() as profile_for_search calls it, without timing anything: this machine's synthetic profile."""
    def fake(space, workload, *, quick, progress, settings=None):
        calls.append(quick)
        here = P.Target.current()
        prof = synthetic(space, w=workload, target=here)
        prof.save(P.profile_path_for(here))
        return prof
    monkeypatch.setattr(choice, "profile", fake)


def test_extract_without_a_profile_of_this_cpu_profiles_it_in_quick_mode(private_profiles, monkeypatch, capsys):
    cache, shipped = private_profiles
    calls: list = []
    _fake_quick_profile(monkeypatch, calls)
    here = P.Target.current()
    # the shipped kind of profile, for this CPU's name, from before exact targets
    _old_format(synthetic(MINILM_SPACE, target=here), shipped / f"{here.legacy_signature}.json")
    argv = ["extract", "--space", "minilm", "--batch", "1", "--seq", "16", "--threads", "2", "--surrogate",
            "analytic", "--eps", "0.25", "--per-group", "1", "--cache", str(cache.parent / "cache"), "--measure",
            "0", "--no-progress", "--out", str(cache.parent / "out")]
    with pytest.warns(P.ProfileMismatchWarning, match="cannot be checked"):
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert calls == [True] and "profile: profiled this CPU now (quick mode" in out and "from before exact" in out
    report = json.loads((cache.parent / "out" / "report.json").read_text())
    assert report["settings"]["profile"]["path"] == str(cache / f"{here.signature}.json")
    assert main(argv) == 0 and calls == [True]                     # the second run uses what the first measured
    assert f"profile: this CPU's profile {cache / (here.signature + '.json')}" in capsys.readouterr().out


def test_a_profile_of_this_cpu_for_another_space_is_measured_into_and_named_once(private_profiles, monkeypatch):
    cache, _ = private_profiles
    calls: list = []
    _fake_quick_profile(monkeypatch, calls)
    here = P.Target.current()
    synthetic(SMALL, w=W, target=here).save(cache / f"{here.signature}.json")      # this CPU, a smaller space
    chosen = choice.profile_for_search(MINILM_SPACE, W, quick=True, progress=False)
    path = str(cache / f"{here.signature}.json")
    assert calls == [True] and chosen.measured_now and str(chosen.profile.path) == path
    assert chosen.note.count(path) == 1, chosen.note
    assert f"into {path}: the profile there did not cover the minilm space" in chosen.note


def test_the_pipeline_profile_stage_profiles_rather_than_use_another_cpus_profile(private_profiles, monkeypatch,
                                                                                   tmp_path):
    from bortengine.architecture import Architecture
    from bortengine.pipeline import PipelineConfig, space_below
    from bortengine.pipeline.stages import RunContext, profile_stage

    cache, _ = private_profiles
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "vocab_size": 500, "max_position_embeddings": 64, "type_vocab_size": 2}))
    real = choice.profile
    monkeypatch.setattr(choice, "profile", lambda *a, **k: real(*a, **{**k, "settings": FAST}))
    config = PipelineConfig(out=str(tmp_path / "run"), teacher=str(teacher), train="unused.csv", workload="1x8",
                            threads=1, progress=False)
    ctx = RunContext(config, {})
    ctx.out.mkdir()
    here = P.Target.current()
    space = space_below(Architecture.from_hf_config(str(teacher)).with_head("pooler"))
    foreign = synthetic(space, w=P.Workload(1, 8, 1), target=replace(here, probe_gflops=2.4 * here.probe_gflops))
    foreign.save(cache / f"{here.signature}.json")
    with pytest.warns(P.ProfileMismatchWarning, match="another target"):
        result = profile_stage(ctx, seconds=60.0)
    assert result["measured_now"] and "profiled this CPU now (quick mode" in result["note"]
    assert "of another CPU target (calibration probe" in result["note"]
    assert result["source"] == str(cache / f"{here.signature}-2.json")
    assert result["profile"] == "profile.json" and P.Profile.load(ctx.path_of(result["profile"])).target.checkable
    again = profile_stage(ctx, seconds=60.0)
    assert not again["measured_now"] and again["source"] == result["source"]
