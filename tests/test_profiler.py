"""The profiler on the native core: tiny spaces and workloads, minimal repeats (timings are not checked here,
only what is measured, saved, resumed, validated and reported). docs/profiler.md has the accuracy runs."""
from __future__ import annotations

import dataclasses
import re
import io
import json
import subprocess
import sys
import time

import pytest

from bortengine import profiling as P
from bortengine.cli import main
from bortengine.profiling import disturbance, measure, runners, timing
from bortengine.progress import Progress
from bortengine.search_space import SearchSpace
from conftest import NATIVE, _core
from test_isolation import _env

pytestmark = [
    pytest.mark.skipif(not NATIVE, reason="the profiler times the native core's ops"),
    # the machine is shared: the profiler's load warnings are expected here and not what these tests check
    pytest.mark.filterwarnings("ignore:the machine is busy:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:other processes used:RuntimeWarning"),
]

TINY = SearchSpace("tiny", layers=[1, 2], heads=[2, 4], hidden=[32, 64], intermediate=[48, 96], vocab_size=500,
                   max_positions=64)
W = P.Workload(batch_size=2, seq_len=8, num_threads=1)
# three calls per op, no warm-up time, one weight copy: a whole tiny profile in about a second
# (no retries of disturbed blocks and no host probe, which would call blocks disturbed and add a last try: the
# machine is shared, and these tests count blocks)
FAST = P.Settings(mode="quick", blocks=2, warmup_s=0.0, min_warmup=1, budget_s=0.0, min_repeats=3, max_repeats=3,
                  rotation_factor=0.0, retries=0, host_probe=False)


@pytest.fixture
def tiny_profile(tmp_path):
    return P.profile(TINY, W, out=tmp_path / "tiny.json", progress=False, settings=FAST)


def test_profile_measures_every_op_and_saves(tiny_profile, tmp_path):
    prof = tiny_profile
    wp = prof.workloads[W.key]
    assert wp.complete and wp.spaces == ["tiny"] and wp.mode == "quick"
    wanted = {s.key for s, _ in P.required_ops(TINY, W) + P.calibration_ops(W) + P.position_bias_ops(W)}
    assert set(wp.ops) == wanted
    for m in wp.ops.values():
        assert len(m.blocks) == 2 and all(b.n == 3 and b.median_ms > 0 for b in m.blocks)
        assert m.ms == timing.best_block(m.blocks).median_ms
    assert wp.ops["gemm M=16 K=64 N=96 gelu"].roles == ("ffn_in",)
    assert set(wp.ops["gemm M=16 K=64 N=64 residual"].roles) == {"attention_out"}
    cond = wp.conditions[-1]
    assert "foreign_cpus" in cond and cond["seconds"] > 0
    data = json.loads((tmp_path / "tiny.json").read_text())
    assert data["target"]["isa"] == P.Target.current().isa and data["workloads"][W.key]["complete"]
    loaded = P.load_profile(tmp_path / "tiny.json")
    for arch in TINY:
        assert P.predict_latency(arch, W, loaded) > 0
    assert P.predict_latency((2, 2, 64, 96), W, loaded) > P.predict_latency((1, 2, 64, 96), W, loaded)


def test_rerun_measures_nothing_new(tiny_profile, tmp_path, monkeypatch):
    calls = []
    real = timing.time_block
    monkeypatch.setattr(timing, "time_block", lambda fn, s: calls.append(1) or real(fn, s))
    P.profile(TINY, W, out=tmp_path / "tiny.json", progress=False, settings=FAST)
    assert calls == []
    # a second workload goes into the same file, beside the first
    w2 = P.Workload(batch_size=1, seq_len=4, num_threads=1)
    prof = P.profile(TINY, w2, out=tmp_path / "tiny.json", progress=False, settings=FAST)
    assert prof.covers(W) and prof.covers(w2) and calls


def test_an_interrupted_run_counts_what_its_resume_keeps(tmp_path, monkeypatch, capsys):
    """A block other processes disturbed is measured again on resume: Ctrl-C said '16 of 159 saved' and the resume
    '4 of 159 kept'. Both count the clean blocks now."""
    out, real, count = tmp_path / "p.json", measure.measure_with_retries, {"n": 0}

    def some_disturbed(*args, **kw):
        count["n"] += 1
        if count["n"] == 9:
            raise KeyboardInterrupt
        blocks = real(*args, **kw)
        return [dataclasses.replace(b, disturbed=count["n"] % 2 == 0) for b in blocks]   # every second op's

    monkeypatch.setattr(measure, "measure_with_retries", some_disturbed)
    with pytest.raises(P.ProfileInterrupted) as info:
        P.profile(TINY, W, out=out, progress=False, settings=FAST)
    wp = P.load_profile(out).workloads[W.key]
    assert sum(len(m.blocks) for m in wp.ops.values()) == 8 and info.value.done == 4   # 8 saved, 4 of them clean
    monkeypatch.setattr(measure, "measure_with_retries", real)
    capsys.readouterr()
    P.profile(TINY, W, out=out, progress=False, settings=FAST)   # (without a bar too: --no-progress hid it)
    assert f"resuming {out}: 4 of {info.value.total} measurements kept" in capsys.readouterr().err


def test_fresh_starts_its_workload_over_and_keeps_the_files_others(tiny_profile, tmp_path, monkeypatch):
    """resume=False (--fresh) re-measures its workload only: it wrote a file of that workload alone, and every other
    workload of the file (the same target's measurements, maybe hours of them) was gone without a word."""
    w2 = P.Workload(batch_size=1, seq_len=4, num_threads=1)
    P.profile(TINY, w2, out=tmp_path / "tiny.json", progress=False, settings=FAST)
    before = P.load_profile(tmp_path / "tiny.json").workloads[W.key].to_dict()
    calls = []
    real = timing.time_block
    monkeypatch.setattr(timing, "time_block", lambda fn, s: calls.append(1) or real(fn, s))
    prof = P.profile(TINY, w2, out=tmp_path / "tiny.json", progress=False, settings=FAST, resume=False)
    wanted = {s.key for s, _ in P.required_ops(TINY, w2) + P.calibration_ops(w2)}
    assert len(calls) >= len(wanted) * FAST.blocks   # all of w2 measured again
    saved = P.load_profile(tmp_path / "tiny.json")
    assert prof.covers(w2) and saved.covers(W) and saved.covers(w2)
    assert saved.workloads[W.key].to_dict() == before


def test_two_profilers_saving_one_file_keep_each_others_workloads(tiny_profile, tmp_path):
    """Two runs at once (two `bortengine profile` commands, or an extraction profiling into the cache) each read
    the file before the other saved: the last save wrote its own workloads only. A save now takes in what the file
    gained meanwhile."""
    path = tmp_path / "tiny.json"
    first, second = P.load_profile(path), P.load_profile(path)
    w2, w3 = P.Workload(batch_size=1, seq_len=4, num_threads=1), P.Workload(batch_size=1, seq_len=6, num_threads=1)
    first.workloads[w2.key] = P.profile(TINY, w2, out=tmp_path / "a.json", progress=False,
                                        settings=FAST).workloads[w2.key]
    second.workloads[w3.key] = P.profile(TINY, w3, out=tmp_path / "b.json", progress=False,
                                         settings=FAST).workloads[w3.key]
    first.save(path)
    second.save(path)
    saved = P.load_profile(path)
    assert all(saved.covers(w) for w in (W, w2, w3))
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_two_runs_at_once_into_one_file_keep_each_others_latest_measurements(tmp_path, monkeypatch):
    """Two `bortengine profile` runs of two workloads at once into one file: each kept the other's workload as it
    first read it and put that copy back at every save, so the file ended with one of them cut to the ops it had
    then (1 op, incomplete) though both runs said "saved". Each run now takes the file's copy of the other's."""
    path, real = tmp_path / "shared.json", measure.measure_with_retries
    w2 = P.Workload(batch_size=1, seq_len=4, num_threads=1)
    calls = {"n": 0}

    def cut_short(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(measure, "measure_with_retries", cut_short)
    with pytest.raises(P.ProfileInterrupted):       # the other run has measured w2 in part when this one starts
        P.profile(TINY, w2, out=path, progress=False, settings=FAST)
    state = {"other_done": False}

    def meanwhile(*args, **kw):
        if not state["other_done"]:                 # ... and finishes it while this one measures W
            state["other_done"] = True
            monkeypatch.setattr(measure, "measure_with_retries", real)
            P.profile(TINY, w2, out=path, progress=False, settings=FAST)
            monkeypatch.setattr(measure, "measure_with_retries", meanwhile)
        return real(*args, **kw)

    monkeypatch.setattr(measure, "measure_with_retries", meanwhile)
    P.profile(TINY, W, out=path, progress=False, settings=FAST)
    saved = P.load_profile(path)
    assert state["other_done"] and saved.covers(W) and saved.covers(w2)


def test_ctrl_c_keeps_the_measurements_and_a_rerun_resumes(tmp_path, monkeypatch):
    out = tmp_path / "p.json"
    real = timing.time_block
    count = {"n": 0}

    def interrupted(fn, s):
        count["n"] += 1
        if count["n"] == 10:
            raise KeyboardInterrupt
        return real(fn, s)

    monkeypatch.setattr(timing, "time_block", interrupted)
    with pytest.raises(P.ProfileInterrupted, match="9 of .* saved .* again to resume") as info:
        P.profile(TINY, W, out=out, progress=False, settings=FAST)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.done == 9
    partial = P.load_profile(out)
    wp = partial.workloads[W.key]
    assert len(wp.ops) == 9 and not wp.complete and wp.conditions[-1]["interrupted"]
    # the command finishes it in its own mode (without --quick it started a full profile from scratch)
    with pytest.raises(P.ProfileError, match="incomplete.*bortengine profile --batch 2 --seq 8 --threads 1 --space "
                                             "tiny --quick --out"):
        P.predict_latency((1, 2, 32, 48), W, partial)
    total = info.value.total
    count["n"] = -10_000
    monkeypatch.setattr(timing, "time_block", lambda fn, s: count.__setitem__("n", count["n"] + 1) or real(fn, s))
    prof = P.profile(TINY, W, out=out, progress=False, settings=FAST)
    assert count["n"] == -10_000 + total - 9  # only what was missing
    assert prof.covers(W)


def test_ctrl_c_in_a_repeated_run_leaves_a_finished_profile_finished(tiny_profile, tmp_path, monkeypatch):
    """A finished profile whose blocks other processes had disturbed is measured again by the same command: Ctrl-C
    then left it "incomplete", and every prediction and latency suite on it failed until the run was finished."""
    path = tmp_path / "tiny.json"
    data = json.loads(path.read_text())
    op = next(iter(data["workloads"][W.key]["ops"].values()))
    for block in op["blocks"]:
        block["disturbed"] = True
    path.write_text(json.dumps(data))
    before = P.predict_latency((1, 2, 32, 48), W, P.load_profile(path))

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(measure, "measure_with_retries", interrupted)
    with pytest.raises(P.ProfileInterrupted):
        P.profile(TINY, W, out=path, progress=False, settings=FAST)
    kept = P.load_profile(path)
    assert kept.workloads[W.key].complete
    assert P.predict_latency((1, 2, 32, 48), W, kept) == pytest.approx(before)


def test_quick_measurements_are_not_reused_by_a_full_run(tiny_profile, tmp_path, monkeypatch):
    full = P.Settings(mode="full", blocks=1, warmup_s=0.0, min_warmup=1, budget_s=0.0, min_repeats=3,
                      max_repeats=3, rotation_factor=0.0, retries=0, host_probe=False)
    prof = P.profile(TINY, W, out=tmp_path / "tiny.json", progress=False, settings=full)
    wp = prof.workloads[W.key]
    assert wp.mode == "full" and all(m.mode == "full" and len(m.blocks) == 1 for m in wp.ops.values())
    # ... but a quick run reuses full measurements
    calls = []
    monkeypatch.setattr(timing, "time_block", lambda fn, s: calls.append(1))
    prof = P.profile(TINY, W, out=tmp_path / "tiny.json", progress=False, settings=FAST)
    assert calls == [] and prof.workloads[W.key].mode == "full"


def test_gemm_weights_rotate_beyond_the_cache(tmp_path):
    s = P.Settings(mode="quick", blocks=1, warmup_s=0.0, min_warmup=1, budget_s=0.0, min_repeats=2, max_repeats=2,
                   retries=0)
    space = SearchSpace("one", layers=[1], heads=[2], hidden=[64], intermediate=[64], vocab_size=100)
    prof = P.profile(space, W, out=tmp_path / "r.json", progress=False, settings=s)
    target = prof.target
    m = prof.workloads[W.key].ops["gemm M=16 K=64 N=192 none"]
    # copies of the [192, 64] weight, together twice the L3 (capped at 512)
    assert m.copies == min(512, -(-2 * (target.l3_bytes or 32 << 20) // (4 * 64 * 192)))
    assert prof.workloads[W.key].ops["gemm M=16 K=64 N=192 none warm"].copies == 1


def test_profile_errors(tmp_path):
    from bortengine.engine import available_cpus

    with pytest.raises(P.ProfileError, match="more than the .* CPU"):
        P.profile(TINY, P.Workload(1, 8, available_cpus() + 1), out=tmp_path / "x.json", progress=False,
                  settings=FAST)
    with pytest.raises(P.ProfileError, match="isa 'avx9' cannot run here"):
        P.profile(TINY, W, out=tmp_path / "x.json", isa="avx9", progress=False, settings=FAST)
    with pytest.raises(P.ProfileError, match=r"workload must be a Workload, e.g. Workload\(batch_size=1, seq_len=32.*"
                                             r"got tuple \(1, 32\)"):
        P.profile(TINY, (1, 32), out=tmp_path / "x.json", progress=False, settings=FAST)
    assert not (tmp_path / "x.json").exists()
    other = P.Target(**{**P.Target.current().__dict__, "model": "Other CPU"})
    P.Profile(other).save(tmp_path / "other.json")
    with pytest.raises(P.ProfileError, match="another target.*another --out"):
        P.profile(TINY, W, out=tmp_path / "other.json", progress=False, settings=FAST)


def test_progress_bar_counts_down(tmp_path, capsys):
    class Tty:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    stream = Tty()
    bar = Progress([1.0, 1.0, 2.0], "test", stream=stream)
    bar.step("a")
    bar.step("b")
    bar.show("c", final=True)
    assert "2/3" in stream.text and "50%" in stream.text and "left ~" in stream.text


def test_progress_bar_finished_early_drops_the_steps_not_taken():
    """A search that stops before its planned steps (an int8 calibration that all-int8 already meets) ends at n/n
    and 100%, not at 1/4 and 100%."""
    stream = io.StringIO()
    bar = Progress(4, "calibration", stream=stream)
    bar.step("first")
    bar.finish("done")
    last = stream.getvalue().splitlines()[-1]
    assert "] 1/1 100%" in last and last.rstrip().endswith("done"), last


def test_progress_bar_of_work_under_a_time_budget_says_at_most_what_is_left_of_it(monkeypatch):
    """An extraction planning 44 evaluations in a 1:12 budget said "left ~8:10" after its first (and stopped at
    12/44 saying "done")."""
    import bortengine.progress as progress

    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    stream = io.StringIO()
    bar = Progress(44, "surrogate", stream=stream)
    bar.deadline = now[0] + 72.0
    now[0] += 11.0
    bar.step("first")
    assert "left ~1:01" in stream.getvalue().splitlines()[-1]     # not 43 x 11 s = 7:53
    bar.deadline = None
    now[0] += 10.0
    bar.step("second")
    assert "left ~7:21" in stream.getvalue().splitlines()[-1]     # without a budget: the rate's estimate


def test_validation_counts_its_last_tries_in_its_bar(tiny_profile, monkeypatch, capsys):
    """An architecture whose every block was disturbed is measured once more: the bar counted those tries past its
    total (10/9, 12/9 100%, and still running)."""
    from bortengine.profiling import validation

    real = validation.measure_with_retries
    monkeypatch.setattr(validation, "measure_with_retries",
                        lambda *a, **k: [dataclasses.replace(b, disturbed=True) for b in real(*a, **k)])
    P.validate(tiny_profile, TINY, W, n=2, seed=1, quick=True, progress=True, retry_budget_s=60.0)
    counts = [tuple(map(int, m)) for m in re.findall(r"\] (\d+)/(\d+) ", capsys.readouterr().err)]
    planned = counts[0][1]
    assert counts[-1] == (planned + 2, planned + 2), counts     # both tried once more, and counted
    assert all(done <= total for done, total in counts), counts


def test_validate_reports_predicted_against_measured(tiny_profile, tmp_path):
    report = P.validate(tiny_profile, TINY, W, n=4, seed=1, quick=True, progress=False)
    assert len(report.rows) == 4 and report.mode == "quick"
    assert {r.arch for r in report.rows} <= {a.tuple for a in TINY}
    for r in report.rows:
        assert r.measured_ms > 0 and r.predicted_ms > 0 and len(r.blocks_ms) >= 1  # (+ retries if disturbed)
        assert sum(r.predicted_parts.values()) == pytest.approx(r.predicted_ms)
        if hasattr(_core.Encoder, "trace"):  # the encoder's own per-op trace, for diagnosis
            assert {"qkv", "attention", "ffn_in", "ffn_out"} <= set(r.traced_parts)
    s = report.summary()
    assert set(s) >= {"median_abs_error", "worst_abs_error", "kendall_tau", "passes"}
    assert "Kendall's tau" in report.table() and "median |error|" in report.table()
    json.dumps(report.to_dict())
    pytest.importorskip("matplotlib")
    png = report.plot(tmp_path / "v.png")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_the_report_also_gives_the_errors_against_each_architectures_fastest_block():
    """The targets take each architecture's least-disturbed block; a block slowed throughout by the host passes as
    undisturbed, so the report adds the errors against the fastest block as a diagnostic, leaving the targets'
    figures as they are."""
    def row(arch, predicted, measured, blocks):
        return P.ValidationRow(arch=arch, predicted_ms=predicted, measured_ms=measured, spread=0.01,
                               blocks_ms=blocks, noisy=False)

    rows = [row((1, 2, 64, 128), 1.0, 1.6, [1.0, 1.6]),      # the fast block was flagged, a slow tight one taken
            row((2, 2, 64, 128), 2.0, 2.1, [2.1, 2.3]),
            row((3, 2, 64, 128), 3.0, 2.9, [2.9])]
    report = P.ValidationReport("tiny", W, P.Target.current(), rows, {}, seed=0, mode="full")
    assert report.worst_abs_error == pytest.approx(0.375) and not report.passes()["worst_abs_error"]
    fastest = report.summary()["fastest_blocks"]
    assert fastest["worst_abs_error"] == pytest.approx(round(0.1 / 2.1, 4))
    assert fastest["median_abs_error"] == pytest.approx(round(0.1 / 2.9, 4)) and fastest["kendall_tau"] == 1.0
    assert report.summary()["worst_abs_error"] == 0.375      # the targets' figures unchanged
    assert "against each architecture's fastest block instead" in report.table() and "worst 4.8%" in report.table()
    alike = P.ValidationReport("tiny", W, P.Target.current(), rows[1:], {}, seed=0, mode="full")
    assert "fastest block" not in alike.table()               # every taken block was already the fastest


def test_validate_needs_a_covered_workload(tiny_profile):
    with pytest.raises(P.ProfileError, match="does not cover"):
        P.validate(tiny_profile, TINY, P.Workload(1, 16, 1), n=2, progress=False)
    # a space the profile was not measured for: its predictions extrapolated, said before the errors are shown
    wider = SearchSpace("wider", layers=[1], heads=[2], hidden=[256], intermediate=[512], vocab_size=500,
                        max_positions=64)
    with pytest.warns(RuntimeWarning, match=r"2 of the 2 architectures have op shapes the profile has no "
                                            r"measurements near .* --space wider"):
        P.validate(tiny_profile, wider, W, n=2, quick=True, progress=False,
                   architectures=[(1, 2, 256, 512), (1, 2, 256, 512)])


@pytest.mark.parametrize("archs", ["0", "1", "x"])
def test_validation_of_fewer_than_two_architectures_is_refused_before_profiling(tmp_path, capsys, archs):
    """--archs 0 was refused by validate() after the profile it needs was measured (17 s)."""
    from test_cli import assert_usage_error

    line = assert_usage_error(capsys, ["profile", "--validate", "--archs", archs, "--out", str(tmp_path / "p.json")],
                              "profile")
    assert f"--archs: expected an integer of at least 2, got '{archs}'" in line or "positive integer" in line
    assert not (tmp_path / "p.json").exists()


def test_a_profile_of_no_threads_is_refused_before_profiling(tmp_path, capsys):
    from test_cli import assert_usage_error

    line = assert_usage_error(capsys, ["profile", "--threads", "0", "--out", str(tmp_path / "p.json")], "profile")
    assert "--threads: expected a positive integer, got '0'" in line and not (tmp_path / "p.json").exists()


def test_cli_profile_show_and_validate(tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"name": "cli", "layers": [1, 2], "heads": [2], "hidden": [32], "intermediate": [32],
                                 "vocab_size": 200}))
    out = tmp_path / "cli.json"
    args = ["--space", str(space), "--batch", "1", "--seq", "4", "--threads", "1", "--out", str(out)]
    assert main(["profile", *args, "--quick", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"profile saved to {out}" in text
    assert main(["profile", "--show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "workload batch 1 × 4 tokens, 1 thread(s), float32" in shown and "attention A=2 Dh=16" in shown
    report = tmp_path / "report.json"
    assert main(["profile-validate", *args, "--quick", "--no-progress", "--archs", "2", "--report",
                 str(report)]) == 0
    assert "Kendall's tau" in capsys.readouterr().out
    assert len(json.loads(report.read_text())["rows"]) == 2

    # the space from a file is kept by name in the profile, so the command a profile error prints works once the
    # file is gone (or was a pipeline run's space, which has no file)
    assert P.Profile.load(out).spaces["cli"]["layers"] == [1, 2]
    command = P.Profile.load(out).command_for(P.Workload(1, 6, 1))
    assert command.endswith(f"--space cli --out {out}"), command
    space.unlink()
    assert main(["profile", *command.split()[2:], "--quick", "--no-progress"]) == 0
    assert "profiling cli: D ∈ {1, 2}" in capsys.readouterr().out
    assert P.Profile.load(out).covers(P.Workload(1, 6, 1))
    assert main(["profile", "--space", "elsewhere", "--out", str(out), "--quick"]) == 2
    assert "unknown search space 'elsewhere'" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    assert main(["profile", "--space", "nonesuch", "--quick"]) == 2
    assert "unknown search space 'nonesuch'" in capsys.readouterr().err
    assert main(["profile", "--threads", "4096", "--quick", "--out", str(tmp_path / "x.json")]) == 2
    assert "more than the" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["profile", "--show", str(bad)]) == 2
    assert "not a bortengine profile" in capsys.readouterr().err
    assert main(["profile-validate", "--out", str(tmp_path / "missing.json")]) == 2
    assert "no profile at" in capsys.readouterr().err
    # a folder is not a profile: say so, not "no profile at DIR; make one with --out DIR" (--out takes a file)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mine.json").write_text("{}")
    assert main(["profile", "--show", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "is a directory (it holds mine.json)" in err and "--out" not in err


def test_profiling_never_imports_torch(tmp_path):
    code = f"""
import sys
from bortengine import profiling as P
from bortengine.search_space import SearchSpace
space = SearchSpace("t", layers=[1], heads=[2], hidden=[32], intermediate=[32], vocab_size=100)
s = P.Settings(mode="quick", blocks=1, warmup_s=0.0, min_warmup=1, budget_s=0.0, min_repeats=2, max_repeats=2,
               rotation_factor=0.0)
w = P.Workload(1, 4, 1)
prof = P.profile(space, w, out={str(tmp_path / 'p.json')!r}, progress=False, settings=s)
P.predict_latency((1, 2, 32, 32), w, prof)
P.validate(prof, space, w, n=2, quick=True, progress=False, architectures=[(1, 2, 32, 32), (1, 2, 32, 32)])
print("torch" in sys.modules, "transformers" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_cpu_clock_for_one_thread(tmp_path):
    prof = P.profile(TINY, W, out=tmp_path / "cpu.json", progress=False, settings=FAST, clock="cpu")
    wp = prof.workloads[W.key]
    assert wp.clock == "cpu" and P.Profile.load(tmp_path / "cpu.json").workloads[W.key].clock == "cpu"
    report = P.validate(prof, TINY, W, n=2, quick=True, progress=False)
    assert report.conditions["clock"] == "cpu"
    with pytest.warns(RuntimeWarning, match="re-measuring it with the wall clock"):
        P.profile(TINY, W, out=tmp_path / "cpu.json", progress=False, settings=FAST)
    with pytest.raises(P.ProfileError, match="needs num_threads=1"):
        P.profile(TINY, P.Workload(1, 8, 2), out=tmp_path / "x.json", progress=False, settings=FAST, clock="cpu")
    with pytest.raises(P.ProfileError, match="unknown clock"):
        P.profile(TINY, W, out=tmp_path / "x.json", progress=False, settings=FAST, clock="sundial")


def test_disturbed_blocks_are_retried_and_not_used(tmp_path, monkeypatch):
    real = timing.measure_block
    hit = {"n": 0}
    target_key = "layernorm H=64"

    def fake(fn, s, threads, cpus, probe=None):
        block = real(fn, s, threads, cpus, probe)
        # the first three blocks of one op: another process took the CPU (and made them look fast)
        if fn.__code__.co_filename.endswith("runners.py") and hit.get("op") == target_key:
            if hit["n"] < 3:
                hit["n"] += 1
                block.median_ms, block.foreign_cpus, block.disturbed = block.median_ms / 10, 1.5, True
            else:   # then quiet, whatever the shared machine is doing: the retry logic is under test, not the host
                block.foreign_cpus, block.disturbed = 0.0, False
        return block

    real_runner = runners.make_runner

    def runner(spec, *a):
        hit["op"] = spec.key
        return real_runner(spec, *a)

    monkeypatch.setattr(timing, "measure_block", fake)
    monkeypatch.setattr(measure, "make_runner", runner)
    s = P.Settings(mode="quick", blocks=1, warmup_s=0.0, min_warmup=1, budget_s=0.0, min_repeats=3, max_repeats=3,
                   rotation_factor=0.0, retries=1, retry_pause_s=0.0)
    prof = P.profile(TINY, W, out=tmp_path / "d.json", progress=False, settings=s)
    m = prof.workloads[W.key].ops[target_key]
    # pass 1: a block and one retry, both disturbed; the repair at the end: disturbed, then a clean retry
    assert [b.disturbed for b in m.blocks] == [True, True, True, False]
    assert m.best is m.blocks[-1]  # the clean block, though the disturbed ones look faster
    assert P.Measurement(m.spec, m.blocks[:3]).noisy  # only disturbed blocks: flagged


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_team_collapsed_onto_one_core_is_disturbed():
    """When the scheduler puts the engine's worker on the caller's core, ops run at one-thread speed with a tight
    spread; the profiler sees that its process used about one CPU instead of two, and calls the block disturbed."""
    import os

    w = P.Workload(1, 32, 2)
    spec = P.OpSpec("gemm", M=32, K=256, N=768, epilogue="gelu")
    run, _ = runners.make_runner(spec, w, runners.ValuePool(), P.Target.current().isa, 0)
    s = P.Settings(warmup_s=0.01, budget_s=0.15, min_repeats=5, max_repeats=100_000)
    run()  # the workers exist from here on
    before = {int(t): os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}
    try:
        for tid in before:
            os.sched_setaffinity(tid, {min(before[tid])})
        block = timing.measure_block(run, s, threads=2, cpus=2)
    finally:
        for tid, cpus in before.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass
    assert block.own_cpus is not None and block.own_cpus < 1.5 and block.disturbed


class _FakeProbe:
    """Stands in for disturbance.HostProbe: reports the slowdowns it is given, in order (then 1.0)."""

    def __init__(self, *slowdowns, tolerance=1.5):
        self.slowdowns, self.tolerance = list(slowdowns), tolerance

    def slowdown(self):
        return self.slowdowns.pop(0) if self.slowdowns else 1.0


def test_a_block_the_host_slowed_is_disturbed():
    """Interference /proc/stat cannot see (another tenant of the host): the probe around the block slowed, so the
    block counts as disturbed and carries the slowdown; a probe that did not slow leaves the block clean."""
    s = P.Settings(warmup_s=0.0, min_warmup=1, budget_s=0.0, min_repeats=5, max_repeats=5)
    slowed = timing.measure_block(lambda: None, s, threads=1, cpus=2, probe=_FakeProbe(1.0, 2.0))
    assert slowed.disturbed and slowed.host_slowdown == 2.0
    # a block long enough for the /proc/stat accounting (>= 50 ms): its verdict must not undo the probe's
    long = timing.measure_block(lambda: time.sleep(0.012), s, threads=1, cpus=2, probe=_FakeProbe(2.0, 1.0))
    assert long.foreign_cpus is not None and long.disturbed and long.host_slowdown == 2.0
    quiet = timing.measure_block(lambda: None, s, threads=1, cpus=2, probe=_FakeProbe(1.1, 1.2))
    assert quiet.host_slowdown == 1.2 and not quiet.disturbed
    assert P.BlockStats.from_dict(slowed.to_dict()).host_slowdown == 2.0  # kept in the profile file
    # a slowed block is retried; the retry (probe quiet again) is clean
    blocks = timing.measure_with_retries(lambda: None, dataclasses.replace(s, retries=2, retry_pause_s=0.0), 1, 2,
                                         [0.0], probe=_FakeProbe(1.9, 1.0))
    assert [b.disturbed for b in blocks] == [True, False]


def test_profile_probes_the_host_around_every_block(tmp_path):
    prof = P.profile(TINY, W, out=tmp_path / "probed.json", progress=False,
                     settings=dataclasses.replace(FAST, blocks=1, host_probe=True))
    blocks = [b for m in prof.workloads[W.key].ops.values() for b in m.blocks]
    assert blocks and all(b.host_slowdown is not None and b.host_slowdown >= 1.0 for b in blocks)
    saved = json.loads((tmp_path / "probed.json").read_text())["workloads"][W.key]["ops"]
    assert all("host_slowdown" in b for m in saved.values() for b in m["blocks"])


def test_host_probe_measures_the_engine():
    probe = disturbance.HostProbe(threads=1, isa=P.Target.current().isa, repeats=3, calibrate=2)
    assert 0 < probe.fastest < 1.0  # seconds: about a millisecond of GEMM
    ratios = [probe.slowdown() for _ in range(5)]
    assert all(r >= 1.0 for r in ratios)  # against the fastest seen, which includes this probe


# --- the int8 and bf16 paths -------------------------------------------------------------------------------------
# int8 runs FFN out on the bf16 kernels where those run on AMX tiles (csrc/forward.h int8_in_bf16)
TILES = "amx" in _core.bf16_kernel_name(_core.default_isa()) if NATIVE else False
LOW_PRECISION = [  # dtype, the single op of its layer GEMMs, bytes per packed weight, barriers per layer, kernel
    ("int8", "QuantizedLinear", 1, 10 if TILES else 11, "int8_kernel"),  # (on tiles FFN out: a Bf16Linear, one team op)
    ("bf16", "Bf16Linear", 2, 7, "bf16_kernel"),
]


@pytest.mark.parametrize("dtype, linear, weight_bytes, layer_barriers, kernel", LOW_PRECISION)
def test_low_precision_workload_times_its_kernels(tiny_profile, tmp_path, monkeypatch, dtype, linear, weight_bytes,
                                                  layer_barriers, kernel):
    from bortengine.profiling.ops import gemm_dtype

    workload = P.Workload(batch_size=2, seq_len=8, num_threads=1, dtype=dtype)
    made = {linear: 0, "PackedLinear": 0, "bf16": []}
    real_l, real_p, real_attention = getattr(_core, linear), _core.PackedLinear, _core.attention

    def low(*a, **k):
        made[linear] += 1
        return real_l(*a, **k)

    def packed(*a, **k):
        made["PackedLinear"] += 1
        return real_p(*a, **k)

    def attention(*a, **k):
        made["bf16"].append(a[5] if len(a) > 5 else k.get("bf16", False))
        return real_attention(*a, **k)

    monkeypatch.setattr(_core, linear, low)
    monkeypatch.setattr(_core, "PackedLinear", packed)
    monkeypatch.setattr(_core, "attention", attention)
    s = P.Settings(mode="quick", blocks=1, warmup_s=0.0, min_warmup=1, budget_s=0.0, min_repeats=3, max_repeats=3,
                   retries=0)
    prof = P.profile(TINY, workload, out=tmp_path / "tiny.json", progress=False, settings=s)
    monkeypatch.undo()
    # the float32 workload measured before stays beside this one
    assert prof.covers(workload) and P.load_profile(tmp_path / "tiny.json").covers(W)
    wp = prof.workloads[workload.key]
    wanted = P.required_ops(TINY, workload) + P.calibration_ops(workload) + P.position_bias_ops(workload)
    assert wp.complete and set(wp.ops) == {x.key for x, _ in wanted}
    # the layers' GEMMs run in the dtype (but int8's FFN out on tiles: bf16); the pooler (tanh) stays float32 as in
    # the engine
    assert made[linear] > 0 and made["PackedLinear"] > 0
    ffn_out = [x for x, roles in wanted if "ffn_out" in roles]
    on_bf16 = dtype == "int8" and TILES
    assert ffn_out and {x.kernel for x in ffn_out} == ({"bf16"} if on_bf16 else {""})
    assert {gemm_dtype(x, workload) for x in ffn_out} == {"bf16" if on_bf16 or dtype == "bf16" else "int8"}
    bf16 = "bf16" in _core.Encoder(64, 1, 2, 64, 64, 2, 2, 1e-12, 1, "", dtype).attention_kernel
    assert set(made["bf16"]) == {bf16}
    assert getattr(prof.target, kernel) == getattr(_core, f"{dtype}_kernel_name")(prof.target.isa)
    # smaller weights: more copies rotate through the same cache budget
    m = wp.ops["gemm M=16 K=64 N=192 none"]
    assert m.copies == min(512, -(-2 * (prof.target.l3_bytes or 32 << 20) // (weight_bytes * 64 * 192)))
    assert wp.calibration["sync_ms"] == pytest.approx(wp.calibration["sync_ms"])  # a number, not NaN
    predicted = P.predict_latency((2, 4, 64, 96), workload, prof, detail=True)
    assert predicted.parts["sync"] == pytest.approx((1 + 2 * layer_barriers + 2) * wp.calibration["sync_ms"])
    report = P.validate(prof, TINY, workload, n=2, seed=0, quick=True, progress=False)
    assert report.workload.dtype == dtype and all(r.measured_ms > 0 for r in report.rows)
    assert getattr(prof.target, kernel) in report.table()


def test_int8_dtype_on_the_command_line(tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"name": "cli", "layers": [1], "heads": [2], "hidden": [32], "intermediate": [32],
                                 "vocab_size": 200}))
    out = tmp_path / "cli.json"
    args = ["--space", str(space), "--batch", "1", "--seq", "4", "--threads", "1", "--out", str(out)]
    assert main(["profile", *args, "--quick", "--no-progress", "--dtype", "int8"]) == 0
    capsys.readouterr()
    assert main(["profile", "--show", str(out)]) == 0
    assert "workload batch 1 × 4 tokens, 1 thread(s), int8" in capsys.readouterr().out
    with pytest.raises(P.ProfileError, match="--dtype int8"):
        P.load_profile(out).for_workload(P.Workload(1, 8, 1, "int8"))


def test_a_profile_covers_a_space_only_when_it_measured_every_shape_of_it(tmp_path):
    """Two spaces profiled into one file span the corners of a third (1 or 2 heads, hidden 32 or 64), but not its
    attention of 1 head of 64 or 2 heads of 16: that profile does not cover it (a check of the corners alone said it
    did, and the pipeline's extraction then refused the profile on every rerun)."""
    out = tmp_path / "p.json"
    for heads, hidden in ((2, 64), (1, 32)):
        P.profile(SearchSpace(f"h{hidden}", layers=[1], heads=[heads], hidden=[hidden], intermediate=[hidden],
                              vocab_size=500, max_positions=64), W, out=out, progress=False, settings=FAST)
    prof = P.Profile.load(out)
    between = SearchSpace("between", layers=[1, 2], heads=[1, 2], hidden=[32, 64], intermediate=[32, 64],
                          vocab_size=500, max_positions=64)
    assert P.covers_space(prof, W, SearchSpace("h64", layers=[1, 3], heads=[2], hidden=[64], intermediate=[64],
                                               vocab_size=500, max_positions=64))
    assert not P.covers_space(prof, W, between)


@pytest.mark.parametrize("version", [0, 99])
def test_a_profile_of_another_format_is_replaced_if_older_and_kept_if_newer(tiny_profile, tmp_path, version):
    """A file of format version 99 said "re-profile with `bortengine profile`", and that command refused the same
    file with the same words: an older format is measured again and replaced now, a later bortengine's file is
    refused untouched with what to do instead."""
    path = tmp_path / "tiny.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "version": version}))
    if version > P.profile_file.FORMAT_VERSION:
        before = path.read_text()
        with pytest.raises(P.ProfileError, match="format version 99; this bortengine reads version 1: a later "
                                                 "bortengine wrote it: upgrade bortengine .* or profile into another "
                                                 "--out"):
            P.profile(TINY, W, out=path, progress=False, settings=FAST)
        assert path.read_text() == before
    else:
        with pytest.warns(P.ProfileMismatchWarning, match="older profile format \\(version 0\\).*measured again"):
            prof = P.profile(TINY, W, out=path, progress=False, settings=FAST)
        assert prof.covers(W) and json.loads(path.read_text())["version"] == P.profile_file.FORMAT_VERSION
        with pytest.raises(P.ProfileError, match="version 0; .*measure it again with `bortengine profile` \\(the "
                                                 "same command replaces this file\\)"):
            P.profile_file.Profile.from_dict({**data, "version": 0})


def test_a_space_named_from_a_damaged_profile_says_the_profile_is_damaged(tmp_path, capsys):
    """`bortengine profile --space NAME --out FILE` (the command profiles and latency suites print) with a damaged
    FILE said "unknown search space", and nothing of the file, which is what needed fixing."""
    out = tmp_path / "p.json"
    out.write_text('{"format": "bortengine-profile", "cut')
    assert main(["profile", "--space", "mine", "--seq", "8", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown search space 'mine'" in err and f"{out} is not valid JSON" in err and "Traceback" not in err
