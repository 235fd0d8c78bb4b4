"""The search (FPTAS): groups and the bound, the (1+ε)-covering theorem against exhaustive runs, the W-coefficient,
robustness (bad ε, empty or contradictory spaces, uncovered profiles, failing surrogates, killed runs), the cache,
worker processes, hardware awareness, the report, the plot and the CLI.

Latencies come from synthetic profiles (nothing is timed, so the results are exact on a busy machine); errors
from the analytic surrogate or seeded random ones. The real surrogate is exercised by the runs in
docs/extraction.md, not here (its teacher alone takes half a minute to load).
"""
from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bortengine
from bortengine import profiling as P
from bortengine import search as S
from bortengine.search import executor as E
from bortengine.architecture import Architecture
from bortengine.search_space import BORT_SPACE, MINILM_SPACE, SearchSpace

W = P.Workload(batch_size=1, seq_len=16, num_threads=2)


def _target(isa: str) -> P.Target:
    return P.Target(vendor="GenuineTest", model="Test CPU", flags=("avx2",), logical_cpus=2, isa=isa,
                    kernel=f"gemm_f32_{isa}", engine_version=bortengine.__version__, l3_bytes=32 << 20)


def synthetic(space: SearchSpace, gemm: float = 1e-8, attention: float = 5e-4, w: P.Workload = W,
              isa: str = "avx2") -> P.Profile:
    """A profile whose op times follow simple laws: GEMM cost per multiply-add `gemm`, attention per head
    dimension `attention` (a "scalar" profile has a much larger gemm/attention ratio)."""
    call = 0.002

    def ms(s: P.OpSpec) -> float:
        if s.kind == "call":
            return call
        if s.kind == "forward":
            return 0.05 + 0.03 * s.layers
        if s.kind == "gemm":
            return call + s.M * s.K * s.N * gemm * (1 + 4 / math.log2(s.K * s.N))
        if s.kind == "attention":
            return call + math.ceil(w.batch_size * s.heads / w.num_threads) * (0.001 + attention * s.head_dim)
        if s.kind == "layernorm":
            return call + 1e-5 * s.hidden
        return call + 2e-5 * s.hidden  # embeddings

    wp = P.WorkloadProfile(w, mode="full", blocks=1, spaces=[space.name])
    for spec, roles in P.calibration_ops(w) + P.required_ops(space, w):
        t = ms(spec)
        wp.ops[spec.key] = P.Measurement(spec, [P.BlockStats(t, t, t, t, t, 5, 0)], roles=roles)
    wp.calibration = P.calibrate(wp)
    return P.Profile(_target(isa), {w.key: wp})


BORT_PROFILE = synthetic(BORT_SPACE)
MINILM_PROFILE = synthetic(MINILM_SPACE)
TINY = SearchSpace("tiny", layers=[1, 2, 3], heads=[2, 4], hidden=[64, 128], intermediate=[128, 256])


@dataclass
class RandomSurrogate(S.Surrogate):
    """Seeded arbitrary errors: the worst case for the FPTAS's assumption."""

    seed: int = 0
    name = "random"

    def settings(self):
        return {"seed": self.seed}

    def __call__(self, arch):
        import random

        return 1 + random.Random(hash((self.seed,) + arch.tuple)).random()


@dataclass
class Interrupting(S.AnalyticSurrogate):
    """The analytic surrogate (same name and settings, so the same cache) that is 'killed' after `after` calls."""

    after: int = 3
    calls: int = 0

    def __call__(self, arch):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return super().__call__(arch)


def run(space, profile, tmp_path, **kw):
    kw.setdefault("surrogate", S.AnalyticSurrogate())
    return S.extract(space, profile=profile, workload=W, cache_dir=tmp_path / "cache", progress=False, **kw)


# ---------------------------------------------------------------------------------------------- the guarantee
@pytest.mark.parametrize("space,profile", [(BORT_SPACE, BORT_PROFILE), (MINILM_SPACE, MINILM_PROFILE)],
                         ids=["bort", "minilm"])
@pytest.mark.parametrize("per_group", [1, 3])
def test_fptas_covers_the_exhaustive_front(space, profile, per_group, tmp_path):
    exhaustive = run(space, profile, tmp_path, exhaustive=True)
    assert exhaustive.evaluations == len(exhaustive.candidates) == len(space)
    for eps in (0.05, 0.1, 0.25):
        r = run(space, profile, tmp_path, epsilon=eps, per_group=per_group)
        # groups: cost within a factor (1 + ε) in p and l; at most the bound; one representative each (+ the
        # maximum point), and at most per_group − 1 more members chosen by the error model
        by_group = {}
        for c in r.candidates:
            by_group.setdefault(c.group, []).append(c)
        assert len(by_group) == r.groups <= r.bound["groups"] <= r.bound["closed_form"]
        for g in by_group.values():
            assert max(c.params for c in g) < (1 + eps) * min(c.params for c in g)
            assert max(c.latency_ms for c in g) < (1 + eps) * min(c.latency_ms for c in g)
            assert sum(c.representative for c in g) == 1
            assert sum(c.evaluated and c is not r.max_point for c in g) <= per_group
            assert all(c.evaluated for c in g if c.refined) and not any(c.representative for c in g if c.refined)
        assert r.bound["polynomial"] == per_group * r.bound["groups"] + 1
        assert r.evaluations <= r.bound["evaluations"] == min(len(space), r.bound["polynomial"])
        assert r.evaluations <= per_group * r.groups + 1 < len(space)
        assert r.refinement["evaluations"] == sum(c.refined for c in r.candidates)
        assert per_group > 1 or r.refinement["evaluations"] == 0
        assert r.fresh_evaluations == 0  # all from the exhaustive run's cache
        # the analytic surrogate satisfies A_ε, so the theorem covers every exhaustive Pareto point
        cov = S.coverage(exhaustive, r)
        assert cov["assumption_violations"] == []
        assert cov["uncovered"] == [] and cov["covered"] == len(exhaustive.pareto)
        assert cov["worst_factor"] <= 1 + eps + 1e-12
        assert cov["theorem_holds"]


def test_representative_rules(tmp_path):
    """source-heads: the head count nearest the maximum point's first (more heads on a tie), then most parameters;
    largest: most parameters, then fastest. Both give one evaluated representative per group."""
    max_point = (6, 8, 384, 1536)  # 8 heads: 12 is above it and not a candidate; 6 and 4 are nearer than 2
    for rule in ("source-heads", "largest"):
        r = run(MINILM_SPACE, MINILM_PROFILE, tmp_path / rule, epsilon=0.25, representative=rule,
                max_point=max_point)
        assert r.representative == rule and S.REPRESENTATIVES[rule] in r.to_dict()["settings"]["grouping"]
        groups = {}
        for c in r.candidates:
            groups.setdefault(c.group, []).append(c)
        for g in groups.values():
            rep = next(c for c in g if c.representative)
            if rule == "largest":
                assert rep.params == max(c.params for c in g)
            else:
                dist = lambda c: abs(math.log(c.arch.heads / 8))
                best = min(dist(c) for c in g)
                assert dist(rep) == best
                assert rep.params == max(c.params for c in g if dist(c) == best)
    with pytest.raises(S.SearchError, match="representative must be one of"):
        run(TINY, synthetic(TINY), tmp_path, representative="smallest")


@dataclass
class ShapeSurrogate(S.Surrogate):
    """Error log-linear in the dimensions, FFN width weighing most: inside a group the member with the most
    parameters (the representative rule) is often not the best, so A_ε fails for the representatives alone."""

    name = "shape"

    def settings(self):
        return {}

    def __call__(self, arch):
        d, a, h, i = arch.tuple
        return d ** -0.1 * i ** -0.8 * h ** -0.3 * (1 + 0.3 * abs(math.log(a / 12)))


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.25])
def test_refinement_evaluates_the_members_the_rule_misses(eps, tmp_path):
    """The error model, fitted to the representatives' errors, finds each group's better member: the A_ε
    violations of the plain FPTAS disappear with one more evaluation per group where it predicts one."""
    sur = ShapeSurrogate()
    exhaustive = run(MINILM_SPACE, MINILM_PROFILE, tmp_path, surrogate=sur, exhaustive=True)
    plain = run(MINILM_SPACE, MINILM_PROFILE, tmp_path, surrogate=sur, epsilon=eps, per_group=1)
    refined = run(MINILM_SPACE, MINILM_PROFILE, tmp_path, surrogate=sur, epsilon=eps, per_group=3)
    assert S.coverage(exhaustive, plain)["assumption_violations"]
    cov = S.coverage(exhaustive, refined)
    assert cov["assumption_violations"] == [] and cov["uncovered"] == []
    ref = refined.refinement
    assert ref["per_group"] == 3 and ref["rounds"] >= 1
    assert 0 < ref["evaluations"] == sum(c.refined for c in refined.candidates)
    assert refined.evaluations == plain.evaluations + ref["evaluations"] <= refined.bound["evaluations"]
    assert 1 <= ref["improved_beyond_epsilon"] <= ref["improved_groups"] <= ref["evaluations"]
    # an exact model (leave-one-out error ~0) asks for a predicted improvement by the factor 1 + ε
    assert ref["loo_spread"] < 1e-2 and ref["factor"] == pytest.approx(math.exp(2 * ref["loo_spread"]) / (1 + eps))
    # the model fits this surrogate exactly: it evaluates only members within a factor 1 + ε of the group's best
    for g in {c.group for c in refined.candidates if c.refined}:
        members = [c for c in refined.candidates if c.group == g]
        best = min(c.error for c in members if c.evaluated and not c.refined)
        assert all(c.error < (1 + eps) * best for c in members if c.refined)
    # deterministic: the same search from the cache evaluates the same members
    again = run(MINILM_SPACE, MINILM_PROFILE, tmp_path, surrogate=sur, epsilon=eps, per_group=3)
    assert [c.dims for c in again.candidates if c.evaluated] == [c.dims for c in refined.candidates if c.evaluated]
    report = refined.to_dict()
    assert report["summary"]["refinement"] == ref and "error model" in report["settings"]["grouping"]
    assert sum(c["refined"] for c in report["candidates"]) == ref["evaluations"]


def test_refinement_records_a_failing_member_and_goes_on(tmp_path):
    sur = ShapeSurrogate()
    base = run(MINILM_SPACE, MINILM_PROFILE, tmp_path, surrogate=sur, epsilon=0.25)
    first = next(c for c in base.candidates if c.refined)

    @dataclass
    class Failing(ShapeSurrogate):
        def __call__(self, arch):
            if arch.tuple == first.dims:
                raise RuntimeError("out of memory (simulated)")
            return super().__call__(arch)

    r = run(MINILM_SPACE, MINILM_PROFILE, tmp_path / "2", surrogate=Failing(), epsilon=0.25)
    assert [f["arch"] for f in r.failures] == [list(first.dims)] and r.failures[0]["status"] == "failed"
    assert r.complete and r.winner is not None
    assert r.evaluations <= r.bound["evaluations"] + len(r.failures)


def test_run_killed_during_the_refinement_resumes_to_the_same_result(tmp_path):
    reference = run(MINILM_SPACE, MINILM_PROFILE, tmp_path / "ref", surrogate=ShapeSurrogate(), epsilon=0.25)
    first_stage = sum(c.evaluated and not c.refined for c in reference.candidates)
    assert reference.refinement["evaluations"] > 5

    @dataclass
    class Killed(ShapeSurrogate):  # same name and settings: the same cache
        calls: int = 0

        def __call__(self, arch):
            self.calls += 1
            if self.calls > first_stage + 5:
                raise KeyboardInterrupt
            return super().__call__(arch)

    with pytest.raises(S.SearchInterrupted):
        run(MINILM_SPACE, MINILM_PROFILE, tmp_path, surrogate=Killed(), epsilon=0.25)
    resumed = run(MINILM_SPACE, MINILM_PROFILE, tmp_path, surrogate=ShapeSurrogate(), epsilon=0.25)
    assert resumed.fresh_evaluations == reference.evaluations - first_stage - 5
    assert [(c.dims, c.error, c.refined) for c in resumed.candidates] == [
        (c.dims, c.error, c.refined) for c in reference.candidates]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=st.sets(st.integers(1, 6), min_size=1, max_size=3),
       heads=st.sets(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=3),
       hidden=st.sets(st.sampled_from([64, 96, 128, 256]), min_size=1, max_size=3),
       intermediate=st.sets(st.sampled_from([64, 128, 384, 512, 1024]), min_size=1, max_size=3),
       eps=st.floats(0.01, 0.9), per_group=st.integers(1, 4), seed=st.integers(0, 10 ** 6),
       smooth=st.booleans())
def test_fptas_properties_on_random_spaces_and_errors(layers, heads, hidden, intermediate, eps, per_group, seed,
                                                      smooth, tmp_path_factory):
    """Any space, ε, K and errors (arbitrary, or a smooth law the error model can learn): groups within 1 + ε in
    p and l, at most K evaluations a group (+ the maximum point), evaluations within the bound, the theorem holds
    against the exhaustive run, and the refinement never makes coverage worse than the plain FPTAS."""
    space = SearchSpace("random", layers=sorted(layers), heads=sorted(heads), hidden=sorted(hidden),
                        intermediate=sorted(intermediate))
    tmp = tmp_path_factory.mktemp("prop")
    prof = synthetic(space)
    sur = ShapeSurrogate() if smooth else RandomSurrogate(seed)
    exhaustive = run(space, prof, tmp, surrogate=sur, exhaustive=True)
    r = run(space, prof, tmp, surrogate=sur, epsilon=eps, per_group=per_group)
    assert r.evaluations <= r.bound["evaluations"] == min(len(space), per_group * r.bound["groups"] + 1)
    groups = {}
    for c in r.candidates:
        groups.setdefault(c.group, []).append(c)
    assert len(groups) == r.groups <= r.bound["groups"]
    for g in groups.values():
        assert max(c.params for c in g) < (1 + eps) * min(c.params for c in g)
        assert max(c.latency_ms for c in g) < (1 + eps) * min(c.latency_ms for c in g)
        assert sum(c.evaluated and c is not r.max_point for c in g) <= per_group
    cov = S.coverage(exhaustive, r)
    assert cov["theorem_holds"], cov["uncovered"]
    plain = S.coverage(exhaustive, run(space, prof, tmp, surrogate=sur, epsilon=eps, per_group=1))
    assert cov["covered"] >= plain["covered"] or per_group == 1


def test_cli_defaults_to_this_cpus_profile(tmp_path, monkeypatch, capsys):
    """Without --profile, extract runs on this CPU's profile from the cache directory (without one, it profiles
    this CPU in quick mode: tests/test_profiler_targets.py)."""
    from bortengine.cli import main
    from bortengine.profiling import choice, profile_file

    monkeypatch.setenv("BORTENGINE_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setattr(profile_file, "PACKAGE_PROFILES", tmp_path / "none-shipped")
    monkeypatch.setattr(choice, "profile", lambda *a, **k: pytest.fail("profiled though this CPU has a profile"))
    argv = ["extract", "--space", "minilm", "--batch", "1", "--seq", "16", "--threads", "2", "--surrogate",
            "analytic", "--eps", "0.25", "--cache", str(tmp_path / "cache"), "--measure", "0", "--no-progress",
            "--out", str(tmp_path / "out")]
    here = P.Target.current()
    mine = synthetic(MINILM_SPACE, isa=here.isa)
    path = P.Profile(here, mine.workloads).save(P.default_profile_path())
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.ProfileMismatchWarning)   # this machine's own profile: no warning
        assert main(argv) == 0
    assert f"profile: this CPU's profile {path}" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["settings"]["profile"]["path"] == str(path)


def test_the_distil_then_finetune_surrogate(make_model):
    """Without distillation steps it is the fine-tuning surrogate, to the bit; with them, deterministic and another
    value (the student was trained first); its settings key its cache apart; bad step counts are refused."""
    teacher = make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=128, head="classifier", num_labels=2, seed=3)
    arch = Architecture(1, 2, 16, 32, max_positions=128)
    kw = dict(steps=3, batch_size=8, eval_limit=16, teacher=str(teacher), threads=1, train_sample=64)
    plain = S.FinetuneSurrogate(**kw)(arch)
    assert S.DistilFinetuneSurrogate(distil_steps=0, **kw)(arch) == plain
    distilled = S.DistilFinetuneSurrogate(distil_steps=4, **kw)
    first = distilled(arch)
    assert math.isfinite(first) and first == distilled(arch) and first != plain
    assert distilled.settings()["distil_steps"] == 4 and distilled.key() != S.DistilFinetuneSurrogate(**kw).key()
    assert distilled.key() != S.FinetuneSurrogate(**kw).key()
    assert S.resolve_surrogate("distill-finetune", distil_steps=7, steps=5).distil_steps == 7
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(S.SearchError, match="distil_steps must be an integer >= 0"):
            S.DistilFinetuneSurrogate(distil_steps=bad)


def test_the_data_surrogates_do_not_warn_again_of_what_the_data_check_said(make_model, tmp_path):
    """Each evaluation reads the user's data again (in every worker process): a SplitOverlapWarning per student, in
    the workers' raw format, was printed 14 times in one pipeline run. It is said where the data is read first."""
    from bortengine.training import SplitOverlapWarning, load_task

    teacher = make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=128, head="classifier", num_labels=2, seed=3)
    rows = [f"review number {i} was {'good' if i % 2 else 'bad'},{i % 2}" for i in range(60)]
    data = tmp_path / "doubled.csv"
    data.write_text("text,label\n" + "\n".join(rows + rows) + "\n")   # every row twice: dev and test in train
    fields = {"train": str(data), "text_column": "text", "label_column": "label"}
    with pytest.warns(SplitOverlapWarning, match="in train too"):
        load_task(**fields)
    arch = Architecture(1, 2, 16, 32, max_positions=128)
    kw = dict(steps=2, batch_size=8, eval_limit=16, teacher=str(teacher), threads=1, data=fields)
    for surrogate in (S.FinetuneSurrogate(**kw), S.DistilFinetuneSurrogate(distil_steps=2, **kw)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", SplitOverlapWarning)
            assert math.isfinite(surrogate(arch))


def test_default_workers_follow_the_surrogate(tmp_path, monkeypatch):
    assert S.DistillationSurrogate.expensive and S.FinetuneSurrogate.expensive and S.DistilFinetuneSurrogate.expensive
    assert not S.AnalyticSurrogate.expensive and not S.Surrogate.expensive
    seen = []
    init = E.LocalExecutor.__init__

    def spy(self, surrogate, workers, *args, **kw):
        seen.append(workers)
        init(self, surrogate, workers, *args, **kw)

    monkeypatch.setattr(E.LocalExecutor, "__init__", spy)
    monkeypatch.setattr(E, "available_cpus", lambda: 3)  # the engine's CPU count, as the executor sees it

    @dataclass
    class Dear(S.AnalyticSurrogate):  # same name and settings: everything comes from the first run's cache
        expensive = True

    first = run(TINY, synthetic(TINY), tmp_path, epsilon=0.25)
    again = run(TINY, synthetic(TINY), tmp_path, epsilon=0.25, surrogate=Dear())
    explicit = run(TINY, synthetic(TINY), tmp_path, epsilon=0.25, surrogate=Dear(), workers=2)
    assert seen == [1, 3, 2] and again.fresh_evaluations == explicit.fresh_evaluations == 0
    assert [c.error for c in again.candidates] == [c.error for c in first.candidates]
    d = S.DistillationSurrogate()  # the defaults are the measured settings of docs/extraction.md
    assert (d.steps, d.batch_size, d.max_length, d.eval_sentences) == (16, 8, 32, 64)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_per_group(bad, tmp_path):
    with pytest.raises(S.SearchError, match="per_group"):
        run(TINY, synthetic(TINY), tmp_path, per_group=bad)


def test_error_model_fits_a_quadratic_in_the_log_dimensions():
    archs = [Architecture(d, a, h, i) for d in (1, 2, 4) for a in (2, 4) for h in (64, 128, 256)
             for i in (128, 256, 512) if h % a == 0]
    f = lambda x: math.exp(0.3 - 0.2 * math.log(x.layers) - 0.5 * math.log(x.intermediate)
                           + 0.1 * math.log(x.hidden) ** 2)
    model = S.ErrorModel(ridge=1e-9).fit(archs, [f(a) for a in archs])
    for a in archs + [Architecture(3, 2, 192, 384)]:  # unseen D, H and I
        assert model.predict(a) == pytest.approx(f(a), rel=1e-3)
    assert model.spread < 1e-3  # leave-one-out error of an exact fit
    assert S.ErrorModel().fit(archs[:5], [f(a) for a in archs[:5]]).spread == math.inf  # fewer points than terms
    noisy = S.ErrorModel().fit(archs, [f(a) * (1.3 if k % 2 else 0.77) for k, a in enumerate(archs)])
    assert 0.1 < noisy.spread < 1.0
    negative = S.ErrorModel().fit(archs, [-f(a) for a in archs])  # not positive: modelled without the log
    assert not negative.log and negative.predict(archs[0]) < 0
    with pytest.raises(S.SearchError, match="finite"):
        S.ErrorModel().fit(archs[:2], [1.0, float("nan")])
    with pytest.raises(S.SearchError, match="at least one"):
        S.ErrorModel().fit([], [])
    with pytest.raises(S.SearchError, match="before fit"):
        S.ErrorModel().predict(archs[0])


@pytest.mark.parametrize("seed", range(4))
def test_theorem_holds_for_any_surrogate(seed, tmp_path):
    """With arbitrary errors A_ε fails in places; every uncovered Pareto point must lie in such a group."""
    sur = RandomSurrogate(seed)
    exhaustive = run(BORT_SPACE, BORT_PROFILE, tmp_path, surrogate=sur, exhaustive=True)
    for eps in (0.1, 0.25):
        cov = S.coverage(exhaustive, run(BORT_SPACE, BORT_PROFILE, tmp_path, surrogate=sur, epsilon=eps))
        assert cov["theorem_holds"], cov["uncovered"]
        assert cov["assumption_violations"]  # random errors do violate it


def test_bound_grows_polynomially_in_one_over_epsilon():
    b = [S.group_bound((1e5, 1e7), (1.0, 20.0), e) for e in (0.4, 0.2, 0.1, 0.05, 0.025)]
    for small, big in zip(b, b[1:]):  # halving ε: at most ~4x the groups (1/ε²), at least ~2x
        assert 2 <= big["groups"] / small["groups"] <= 4.5
        assert big["groups"] <= big["closed_form"]


def test_pareto_front_and_w_coefficient(tmp_path):
    pts = [(1, 1, 3), (2, 2, 2), (3, 3, 1), (3, 3, 3), (1, 1, 3)]
    assert S.pareto_front(pts) == [0, 1, 2, 4]
    r = run(MINILM_SPACE, MINILM_PROFILE, tmp_path, epsilon=0.1)
    m = r.max_point
    assert m.evaluated and m.w == 0.0
    assert r.winner is not None and r.winner.pareto and r.winner.w == max(c.w for c in r.candidates if c.evaluated)
    assert isinstance(r.architecture, Architecture) and r.architecture in MINILM_SPACE
    # τ large: error hardly matters, the smallest-fastest wins; τ tiny: the most accurate
    assert run(MINILM_SPACE, MINILM_PROFILE, tmp_path, epsilon=0.1, tau=1e6).winner.params == min(
        c.params for c in r.pareto)
    assert run(MINILM_SPACE, MINILM_PROFILE, tmp_path, epsilon=0.1, tau=1e-6).winner.error == min(
        c.error for c in r.candidates if c.evaluated)


# ------------------------------------------------------------------------------------------ hardware awareness
def test_winner_follows_the_latency_table(tmp_path):
    """A profile where GEMMs are 20x dearer relative to attention (a scalar kernel path) picks another winner,
    and each winner scores better than the other one under its own profile."""
    fast = run(MINILM_SPACE, MINILM_PROFILE, tmp_path, epsilon=0.1, tau=0.2)
    slow_profile = synthetic(MINILM_SPACE, gemm=20e-8, isa="scalar")
    slow = run(MINILM_SPACE, slow_profile, tmp_path, epsilon=0.1, tau=0.2)
    assert fast.winner.arch != slow.winner.arch

    def w_under(result, arch):
        c = next(c for c in result.candidates if c.arch == arch)
        return S.w_coefficient(c, result.max_point, result.tau) if c.evaluated else -math.inf

    assert w_under(fast, fast.winner.arch) > w_under(fast, slow.winner.arch)
    assert w_under(slow, slow.winner.arch) > w_under(slow, fast.winner.arch)


# ------------------------------------------------------------------------------------------------ robustness
@pytest.mark.parametrize("eps", [0, -0.1, 1, 1.5, float("nan"), "x"])
def test_bad_epsilon(eps, tmp_path):
    with pytest.raises(S.SearchError, match="ε"):
        run(TINY, synthetic(TINY), tmp_path, epsilon=eps)


def test_empty_or_contradictory_spaces(tmp_path):
    prof = synthetic(TINY)
    with pytest.raises(S.SearchError, match="no architecture below the maximum point"):
        run(TINY, prof, tmp_path, max_point="1,1,32,64")
    with pytest.raises(S.SearchError, match="maximum point"):
        run(TINY, prof, tmp_path, max_point="2,3,64,128")  # 64 not divisible by 3
    with pytest.raises(S.SearchError, match="unknown search space"):
        run("no-such-space", prof, tmp_path)
    with pytest.raises(S.SearchError, match="unknown surrogate"):
        run(TINY, prof, tmp_path, surrogate="oracle")
    # a maximum point inside the space restricts the candidates to those below it
    r = run(TINY, prof, tmp_path, max_point=(2, 2, 64, 256))
    assert {c.dims for c in r.candidates} == {(d, 2, 64, i) for d in (1, 2) for i in (128, 256)}


def test_profile_that_does_not_cover_the_space(tmp_path):
    with pytest.raises(S.SearchError, match="does not cover the space"):
        run(BORT_SPACE, synthetic(TINY), tmp_path)
    with pytest.raises(S.SearchError, match="does not cover this search"):
        S.extract(TINY, "analytic", synthetic(TINY), workload=P.Workload(2, 16, 2), cache_dir=tmp_path,
                  progress=False)
    with pytest.raises(S.SearchError, match="Profile"):
        S.extract(TINY, "analytic", "profile.json", workload=W, cache_dir=tmp_path, progress=False)


def test_an_extraction_whose_evaluations_mostly_failed_is_an_error_of_the_command(tmp_path):
    """A Ray cluster that went down mid-run failed 98 of 106 evaluations; `extract` exited 0 with a "complete"
    report and no winner. Now the command's error (its report written), where a few failures are not."""
    from bortengine.cli.extract import _check_failures

    every = tuple((a.layers, a.heads, a.hidden, a.intermediate) for a in TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dead = run(TINY, synthetic(TINY), tmp_path / "dead", exhaustive=True,
                   surrogate=S.AnalyticSurrogate(fail=every))
        few = run(TINY, synthetic(TINY), tmp_path / "few", exhaustive=True,
                  surrogate=S.AnalyticSurrogate(fail=every[:1]))
    assert dead.winner is None and len(dead.failures) == dead.evaluations
    with pytest.raises(S.SearchError, match=rf"{dead.evaluations} of the {dead.evaluations} surrogate evaluations "
                                            r"failed \(so there is no winner; the first: .*told to fail.*run the same "
                                            r"command again"):
        _check_failures(dead, tmp_path / "dead")
    assert few.winner is not None and len(few.failures) == 1
    _check_failures(few, tmp_path / "few")
    # a time budget that stopped every evaluation: no winner, and the command exited 0
    late = run(TINY, synthetic(TINY), tmp_path / "late", exhaustive=True, time_budget=1.0,
               started=time.monotonic() - 2.0, reserve=0.0)
    assert late.winner is None and not late.complete and late.evaluations == 0
    with pytest.raises(S.SearchError, match=r"the time budget stopped the search before it had a winner \(0 of "
                                            rf"{len(TINY)} candidates evaluated.*a longer --time-budget"):
        _check_failures(late, tmp_path / "late")
    # a run without a winner written over one with: the earlier winner.json goes (pretrain would read it)
    from bortengine.cli.extract import _write

    out = tmp_path / "out"
    _write(few, out, None)
    assert (out / "winner.json").is_file()
    _write(dead, out, None)
    assert not (out / "winner.json").exists() and json.loads((out / "report.json").read_text())["summary"]["winner"] \
        is None


def test_failing_and_nan_candidates_are_recorded_and_replaced(tmp_path):
    base = run(TINY, synthetic(TINY), tmp_path, epsilon=0.25, per_group=1)
    reps = [c for c in base.candidates if c.representative]
    big_groups = [c for c in reps if sum(x.group == c.group for x in base.candidates) > 1]
    fail, nan = big_groups[0].dims, big_groups[1].dims
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = run(TINY, synthetic(TINY), tmp_path / "2", epsilon=0.25, per_group=1,
                surrogate=S.AnalyticSurrogate(fail=(fail,), nan=(nan,)))
    status = {f["arch"][0:4] and tuple(f["arch"]): f["status"] for f in r.failures}
    assert status == {fail: "failed", nan: "nan"}
    assert "told to fail" in next(f["message"] for f in r.failures if f["status"] == "failed")
    for dims in (fail, nan):  # the group still has an evaluated member: the next largest
        g = next(c for c in r.candidates if c.dims == dims).group
        assert any(c.evaluated for c in r.candidates if c.group == g)
    assert r.evaluations == base.evaluations + 2
    json.loads(json.dumps(r.to_dict()))  # NaN is never written into the report


def test_a_search_that_evaluated_nothing_still_plots(tmp_path):
    """Every candidate failed: the report's figure was a matplotlib traceback (a log axis of no points)."""
    everything = tuple(a.tuple for a in TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the maximum point has no error: the winner is undefined
        r = run(TINY, synthetic(TINY), tmp_path, exhaustive=True, surrogate=S.AnalyticSurrogate(fail=everything))
    assert r.winner is None and not any(c.evaluated for c in r.candidates)
    assert r.plot(tmp_path / "pareto.png").stat().st_size > 0


def test_a_teacher_the_candidates_cannot_be_cut_from_is_refused_before_the_search(tmp_path, small_model):
    """A teacher directory that is not there, or a maximum point deeper than the teacher: every evaluation (or every
    deeper one) failed after the search had spent its budget on them, and the command exited 0."""
    from bortengine.architecture import Architecture

    with pytest.raises(S.SearchError, match=r"the teacher .*nowhere has no config.json \(there is no such "
                                            r"directory\): give a BERT model directory"):
        S.DistillationSurrogate(teacher=str(tmp_path / "nowhere"))
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(S.SearchError, match=r"weights.safetensors has no config.json \(it is a file, not a "
                                            r"directory\)"):
        S.DistillationSurrogate(teacher=str(tmp_path / "weights.safetensors"))
    teacher = Architecture.from_hf_config(small_model)
    surrogate = S.DistillationSurrogate(teacher=str(small_model), steps=1)
    with pytest.raises(S.SearchError, match=rf"the maximum point .* has more layers than the teacher .*: give "
                                            rf"--max-point \(max_point\) of at most {teacher.layers} layers"):
        run(MINILM_SPACE, MINILM_PROFILE, tmp_path, surrogate=surrogate)
    surrogate.check_max_point(Architecture(teacher.layers, 2, 64, 128))   # within the teacher: searched
    # weights cut short (a copy interrupted): every evaluation reloaded them and failed in turn, hinting at a cluster
    cut = tmp_path / "cut"
    shutil.copytree(small_model, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    with pytest.raises(S.SearchError, match=r"the teacher's weights cannot be read: .*model.safetensors"):
        S.DistilFinetuneSurrogate(teacher=str(cut))


def test_killed_run_resumes_from_the_cache(tmp_path):
    sur = Interrupting(after=3)
    with pytest.raises(S.SearchInterrupted, match="3 of"):
        run(TINY, synthetic(TINY), tmp_path, surrogate=sur, exhaustive=True)
    cache = S.SurrogateCache(tmp_path / "cache", S.AnalyticSurrogate())
    assert len(cache.entries) == 3
    with open(cache.path, "a") as f:  # a line cut short by the kill
        f.write('{"arch": "1,2,64,128|v305')
    with pytest.warns(RuntimeWarning, match="1 damaged line.*dropped"):
        r = run(TINY, synthetic(TINY), tmp_path, exhaustive=True)
    assert r.fresh_evaluations == len(TINY) - 3 and r.evaluations == len(TINY)
    # the damaged line is gone from the file (it was warned about on every later run), every entry a line of its own
    lines = cache.path.read_text().splitlines()
    assert len(lines) == len(TINY) and all(json.loads(line)["arch"] for line in lines)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*damaged", category=RuntimeWarning)
        again = run(TINY, synthetic(TINY), tmp_path, exhaustive=True)
    assert again.fresh_evaluations == 0
    # where each ran is kept in the cache: a resumed search still says it
    assert {c["node"] for c in again.to_dict()["candidates"]} == {"local"}
    assert [c.error for c in again.candidates] == [c.error for c in r.candidates]
    # other settings: another cache file, nothing reused
    assert run(TINY, synthetic(TINY), tmp_path, surrogate=S.AnalyticSurrogate(alpha=0.2)).fresh_evaluations > 0


def test_worker_processes_give_the_same_results(tmp_path):
    one = run(TINY, synthetic(TINY), tmp_path / "a", exhaustive=True)
    two = run(TINY, synthetic(TINY), tmp_path / "b", exhaustive=True, workers=2,
              surrogate=S.AnalyticSurrogate(fail=((3, 4, 128, 256),)))
    assert two.fresh_evaluations == len(TINY)
    for a, b in zip(one.candidates, two.candidates):
        assert a.dims == b.dims
        if b.dims == (3, 4, 128, 256):
            assert b.status == "failed" and b.error is None
        else:
            assert a.error == b.error


def test_time_budget_stops_new_evaluations(tmp_path, capsys):
    r = S.extract(TINY, profile=synthetic(TINY), workload=W, cache_dir=tmp_path / "cache", progress=True,
                  exhaustive=True, time_budget=0.05, surrogate=S.AnalyticSurrogate(delay=0.03))
    assert not r.complete
    assert 1 <= r.evaluations < len(TINY)
    skipped = sum(c.status == "skipped (time budget)" for c in r.candidates)
    assert skipped > 0
    # the bar's last line says why it ended short (it said "done")
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(f"stopped at the time budget: {skipped} not evaluated"), last


# A time budget holds for the whole call: budget x 1.05 plus this slack for a tiny budget on a busy machine (the
# termination of the worker processes, one slow wake-up).
BUDGET_SLACK = 0.5


def _timed(call):
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def test_a_time_budget_stops_evaluations_expected_to_end_late(tmp_path):
    """In this process (no worker to stop): an evaluation starts only when one as long as the longest so far
    ends before the deadline."""
    budget = 1.0
    r, seconds = _timed(lambda: run(TINY, synthetic(TINY), tmp_path, exhaustive=True, time_budget=budget,
                                    surrogate=S.AnalyticSurrogate(delay=0.15)))
    assert seconds <= budget * 1.05 + BUDGET_SLACK and seconds >= 0.6 * budget
    assert not r.complete and 4 <= r.evaluations < len(TINY)


def test_a_time_budget_stops_the_evaluations_running_at_its_deadline(tmp_path):
    """Evaluations on worker processes still running at the deadline are stopped, not waited for; started counts
    the budget from the caller's start."""
    budget, delay = 3.0, 6.0
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # the maximum point gets no error in time
        r, seconds = _timed(lambda: run(TINY, synthetic(TINY), tmp_path, exhaustive=True, workers=2,
                                        time_budget=budget + 0.5, started=started - 0.5, reserve=0.0,
                                        surrogate=S.AnalyticSurrogate(delay=delay)))
    assert seconds <= budget * 1.05 + BUDGET_SLACK, seconds
    assert r.evaluations == 0 and not r.complete and r.winner is None
    assert all(c.status == "skipped (time budget)" for c in r.candidates)


def test_extract_command_time_budget_covers_the_finalists_and_the_report(tmp_path, capsys):
    """bortengine extract --time-budget: the search keeps time for timing the finalists and writing the report;
    what does not fit is left out, said in the output."""
    path = synthetic(MINILM_SPACE).save(tmp_path / "profile.json")
    from bortengine.cli import main

    def command(budget, measure):
        argv = ["extract", "--space", "minilm", "--profile", str(path), "--batch", "1", "--seq", "16", "--threads",
                "2", "--surrogate", "analytic", "--eps", "0.25", "--cache", str(tmp_path / "cache"), "--measure",
                str(measure), "--time-budget", str(budget), "--no-progress", "--out", str(tmp_path / "out")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the synthetic profile describes another CPU
            code, seconds = _timed(lambda: main(argv))
        assert code == 0 and seconds <= budget * 1.05 + BUDGET_SLACK, seconds
        return capsys.readouterr().out

    out = command(2.5, 2)        # time for the search and the report, not for timing 2 finalists (~1.7 s quick)
    assert "finalists not timed" in out and (tmp_path / "out" / "report.json").is_file()
    out = command(6, 2)          # enough for the quick timing (~1.7 s), not the full one (~8 s)
    assert "finalists timed quickly" in out and "measured ⟨" in out


# -------------------------------------------------------------------------------------------- outputs and CLI
def test_report_plot_and_cli(tmp_path, capsys):
    prof = synthetic(MINILM_SPACE)
    path = prof.save(tmp_path / "profile.json")
    out = tmp_path / "out"
    argv = ["extract", "--space", "minilm", "--profile", str(path), "--batch", "1", "--seq", "16", "--threads",
            "2", "--surrogate", "analytic", "--eps", "0.25", "--verify", "--cache", str(tmp_path / "cache"),
            "--measure", "0", "--no-progress", "--out", str(out)]
    from bortengine.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic profile describes another CPU
        assert main(argv) == 0
    text = capsys.readouterr().out
    assert "theorem holds" in text and "winner ⟨" in text and "bortengine pretrain --arch" in text
    assert "refinement: " in text and "(bound " in text
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["refinement"]["per_group"] == 3
    assert report["summary"]["evaluations"] < report["summary"]["space_size"] == len(MINILM_SPACE)
    assert report["verification"]["uncovered"] == []
    cands = report["candidates"]
    assert len(cands) == len(MINILM_SPACE)
    assert {"params", "latency_ms", "measured_ms", "error", "group", "pareto", "w"} <= set(cands[0])
    assert sum(c["pareto"] for c in cands) == report["summary"]["pareto_size"]
    assert Architecture.from_dict(json.loads((out / "winner.json").read_text())).tuple == tuple(
        report["summary"]["winner"]["arch"])
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv[:-2] + ["--eps", "1.5", "--out", str(out)]) == 2
    assert "ε must lie strictly between 0 and 1" in capsys.readouterr().err


def test_extract_finds_a_space_by_the_name_its_profile_records(tmp_path, capsys):
    """`profile --space FILE` records the file's space under its name, and the profiler's messages print
    `--space NAME`: extract refused that name ("unknown search space") where profile took it."""
    mine = SearchSpace("mine", layers=[1, 2], heads=[2, 4], hidden=[64, 128], intermediate=[128, 256])
    prof = synthetic(mine)
    prof.record_space(mine)
    path = prof.save(tmp_path / "profile.json")
    argv = ["extract", "--space", "mine", "--profile", str(path), "--batch", "1", "--seq", "16", "--threads", "2",
            "--surrogate", "analytic", "--cache", str(tmp_path / "cache"), "--measure", "0", "--no-progress",
            "--latency-limit", "1000", "--out", str(tmp_path / "out")]
    from bortengine.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic profile describes another CPU
        assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"{len(mine)} candidates" in out and "latency limit 1000 ms predicted" in out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["summary"]["latency_limit_ms"] == 1000
    from test_cli import assert_usage_error

    line = assert_usage_error(capsys, argv[:-2] + ["--latency-limit", "0", "--out", str(tmp_path / "o")], "extract")
    assert "--latency-limit: expected a positive number, got '0'" in line
    # options that ran as something else: --threads 0 as every CPU, --measure -2 as 0
    for option, value, said in (("--threads", "0", "expected a positive integer, got '0'"),
                                ("--measure", "-2", "expected an integer >= 0, got '-2'")):
        line = assert_usage_error(capsys, argv[:-2] + [option, value, "--out", str(tmp_path / "o")], "extract")
        assert f"{option}: {said}" in line
    # a time budget of 0 ran the search to its end
    assert main(argv[:-2] + ["--time-budget", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--time-budget 0 leaves no time to search" in capsys.readouterr().err


def test_finalists_are_timed_on_the_engine(tmp_path):
    prof = synthetic(TINY, w=P.Workload(1, 16, 1), isa=bortengine.engine.core().default_isa())
    r = S.extract(TINY, "analytic", prof, workload=P.Workload(1, 16, 1), cache_dir=tmp_path, progress=False,
                  epsilon=0.25)
    m = S.measure_finalists(r, 2, quick=True, progress=False)
    assert len(m["rows"]) == 2 and r.winner.measured_ms > 0
    assert m["rows"][0]["winner"] and "winner_relative_error" in m


def test_extract_targets_the_int8_path(tmp_path, capsys):
    """An int8 workload reads the profile's int8 measurements (a different latency table), on the API and the CLI."""
    w8 = P.Workload(1, 16, 2, "int8")
    fp32 = synthetic(MINILM_SPACE)
    int8 = synthetic(MINILM_SPACE, gemm=0.25e-8, w=w8)  # GEMMs 4x cheaper: attention weighs more
    prof = P.Profile(fp32.target, {**fp32.workloads, **int8.workloads})
    r32 = S.extract(MINILM_SPACE, "analytic", prof, workload=W, cache_dir=tmp_path, progress=False)
    r8 = S.extract(MINILM_SPACE, "analytic", prof, workload=w8, cache_dir=tmp_path, progress=False)
    assert r8.to_dict()["settings"]["workload"]["dtype"] == "int8"
    lat32 = {c.dims: c.latency_ms for c in r32.candidates}
    lat8 = {c.dims: c.latency_ms for c in r8.candidates}
    assert all(lat8[d] < lat32[d] for d in lat32)
    with pytest.raises(S.SearchError, match="does not cover"):
        S.extract(MINILM_SPACE, "analytic", fp32, workload=w8, cache_dir=tmp_path, progress=False)
    path = prof.save(tmp_path / "profile.json")
    from bortengine.cli import main

    argv = ["extract", "--space", "minilm", "--profile", str(path), "--batch", "1", "--seq", "16", "--threads", "2",
            "--dtype", "int8", "--surrogate", "analytic", "--eps", "0.25", "--cache", str(tmp_path / "cache"),
            "--per-group", "1", "--measure", "0", "--no-progress", "--out", str(tmp_path / "out8")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic profile describes another CPU
        assert main(argv) == 0
    report = json.loads((tmp_path / "out8" / "report.json").read_text())
    assert report["settings"]["workload"]["dtype"] == "int8"
    assert report["summary"]["refinement"]["evaluations"] == 0 and not any(c["refined"] for c in report["candidates"])
    got = {tuple(c["arch"]): c["latency_ms"] for c in report["candidates"]}
    assert all(got[d] == pytest.approx(lat8[d], rel=1e-3, abs=1e-5) for d in lat8)  # (the report rounds)


@dataclass
class DyingWorker(S.AnalyticSurrogate):
    """The analytic surrogate whose worker process dies (as if killed for memory) on one architecture."""

    die: tuple = ()

    def __call__(self, arch):
        if arch.tuple == self.die:
            import os

            os._exit(1)
        return super().__call__(arch)


def test_a_dead_worker_fails_one_evaluation_and_the_search_goes_on(tmp_path):
    """The executor fails the evaluation it sees first with the broken pool (the culprit, or a bystander that was
    running beside it: the pool cannot tell); the others running in it are submitted again to a new pool, so every
    candidate ends evaluated or failed, none lost, and the culprit fails in the end."""
    die = (2, 4, 128, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = run(TINY, synthetic(TINY), tmp_path, exhaustive=True, workers=2, surrogate=DyingWorker(die=die))
    assert r.complete and r.evaluations == len(TINY)
    died = {tuple(f["arch"]) for f in r.failures}
    assert die in died
    assert all(f["status"] == "failed" and "worker process died" in f["message"] for f in r.failures)
    assert all(c.evaluated for c in r.candidates if c.dims not in died)


STARTING_AGAIN = """
import sys

from bortengine import search as S
from bortengine.architecture import Architecture
from bortengine.search import executor as E

# no `if __name__ == "__main__":`: every spawned worker runs this again, and is refused while it starts
ex = E.LocalExecutor(S.AnalyticSurrogate(), workers=2)
for i, dims in enumerate([(1, 2, 64, 128), (2, 2, 64, 128)]):
    ex.submit(i, Architecture(*dims))
try:
    while True:
        print("EVALUATION:", ex.wait(timeout=60), flush=True)
        for i, dims in enumerate([(1, 2, 64, 128), (2, 2, 64, 128)]):
            ex.submit(i, Architecture(*dims))
except S.SearchError as e:
    print("STOPPED:", e, flush=True)
"""


def test_workers_that_die_while_starting_stop_the_extraction(tmp_path):
    """A script that starts the extraction at its top level runs again in every spawned worker, which refuses it
    as it starts: the parent saw only broken pools, started new ones until the budget was spent and ended in
    "evaluated no student within its budget". Two pools in a row with no worker started stop it, saying why."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(STARTING_AGAIN)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    stopped = [line for line in done.stdout.splitlines() if line.startswith("STOPPED:")]
    assert len(stopped) == 1, done.stdout + done.stderr[-3000:]
    assert "died as they started, 2 pools in a row" in stopped[0] and 'if __name__ == "__main__":' in stopped[0]
    evaluations = [line for line in done.stdout.splitlines() if line.startswith("EVALUATION:")]
    assert len(evaluations) <= 2 and all("failed" in line for line in evaluations), done.stdout


def test_local_executor_in_this_process():
    """workers = 1: evaluations run one at a time inside wait(), results under the tickets they were given."""
    ex = E.LocalExecutor(S.AnalyticSurrogate(nan=((1, 2, 64, 128),)), workers=1)
    assert ex.capacity == 1 and ex.running == 0
    ex.submit("a", Architecture(1, 2, 64, 128))
    ex.submit("b", Architecture(2, 2, 64, 128))
    assert ex.running == 2
    (t1, r1), = ex.wait()
    (t2, r2), = ex.wait()
    assert (t1, r1.status, t2, r2.status) == ("a", "nan", "b", "ok") and r2.value > 0 and ex.running == 0
    ex.close()


def test_cli_rejects_a_bad_time_budget(tmp_path, capsys):
    from bortengine.cli import main

    path = synthetic(TINY).save(tmp_path / "profile.json")
    argv = ["extract", "--space", "minilm", "--profile", str(path), "--surrogate", "analytic", "--time-budget",
            "soon", "--no-progress", "--out", str(tmp_path / "out")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic profile describes another CPU
        assert main(argv) == 2
    assert "--time-budget takes 1800, 30m or 1.5h, got 'soon'" in capsys.readouterr().err


def test_a_latency_limit_searches_only_the_candidates_predicted_within_it(tmp_path):
    full = run(MINILM_SPACE, MINILM_PROFILE, tmp_path, epsilon=0.1)
    limit = full.max_point.latency_ms / 4
    limited = run(MINILM_SPACE, MINILM_PROFILE, tmp_path, epsilon=0.1, latency_limit_ms=limit)
    assert limited.max_point.arch == full.max_point.arch and limited.max_point.evaluated
    others = [c for c in limited.candidates if c is not limited.max_point]
    assert others and all(c.latency_ms <= limit for c in others)
    assert len(limited.candidates) < len(full.candidates)
    fast_enough = {c.arch.tuple for c in full.candidates if c.latency_ms <= limit}
    assert {c.arch.tuple for c in others} == fast_enough
    with pytest.raises(S.LatencyLimitError, match=r"latency limit of 0.000 ms .*\(the fastest, .* is predicted") as e:
        run(MINILM_SPACE, MINILM_PROFILE, tmp_path, epsilon=0.1, latency_limit_ms=1e-6)
    # the fastest candidate comes with it, so a caller that set the limit can say it in its own terms
    fastest = min((c for c in full.candidates if c is not full.max_point), key=lambda c: c.latency_ms)
    assert isinstance(e.value, S.SearchError) and e.value.limit_ms == 1e-6
    assert e.value.fastest.arch == fastest.arch and e.value.fastest.latency_ms == fastest.latency_ms


@dataclass
class OnlyTheLargestIsGood(S.Surrogate):
    """Error 1 for the maximum point, 10 for every smaller candidate: every W of a smaller one is negative."""

    largest: tuple = ()
    name = "only-the-largest"

    def settings(self):
        return {"largest": list(self.largest)}

    def __call__(self, arch):
        return 1.0 if arch.tuple == self.largest else 10.0


def test_the_winner_of_a_latency_limited_search_is_within_the_limit(tmp_path):
    """The maximum point stays as the W-coefficient's reference (W = 0): with every faster candidate's W below 0 it
    won, 4x over the limit the user set. The front and the winner are of the candidates within it, and the report
    records the limit."""
    full = run(TINY, synthetic(TINY), tmp_path, exhaustive=True,
               surrogate=OnlyTheLargestIsGood(largest=(3, 4, 128, 256)))
    assert full.winner.arch.tuple == (3, 4, 128, 256)
    limit = full.max_point.latency_ms / 2
    limited = run(TINY, synthetic(TINY), tmp_path, exhaustive=True, latency_limit_ms=limit,
                  surrogate=OnlyTheLargestIsGood(largest=(3, 4, 128, 256)))
    assert limited.max_point.evaluated and limited.max_point.w == 0
    assert limited.winner is not None and limited.winner.latency_ms <= limit and limited.winner.w < 0
    assert all(c.latency_ms <= limit for c in limited.pareto) and not limited.max_point.pareto
    assert limited.summary()["latency_limit_ms"] == limit == limited.to_dict()["summary"]["latency_limit_ms"]


# ------------------------------------------------------------------------------------------------- re-ranking
def test_rerank_scores_copies_of_a_shortlist_with_another_surrogate_cached_and_within_a_deadline(tmp_path):
    """rerank: a second surrogate's errors on copies of some candidates (the search's own keep theirs), in the
    shortlist's order, from its own cache file on a second call; past the deadline nothing starts."""
    r = run(TINY, synthetic(TINY), tmp_path, exhaustive=True)
    shortlist = [c for c in r.candidates if c.dims in {(3, 4, 128, 256), (1, 2, 64, 128), (2, 4, 64, 256)}][::-1]
    before = [(c.error, c.status) for c in shortlist]
    other = RandomSurrogate(seed=5)
    again = S.rerank(shortlist, other, cache_dir=tmp_path / "cache", progress=False)
    assert [c.dims for c in again] == [c.dims for c in shortlist]
    assert [c.error for c in again] == [other(c.arch) for c in shortlist]
    assert all(c.status == "ok" for c in again) and [(c.error, c.status) for c in shortlist] == before
    assert S.SurrogateCache(tmp_path / "cache", other).path.is_file()
    cached = S.rerank(shortlist, other, cache_dir=tmp_path / "cache", progress=False)
    assert [c.error for c in cached] == [c.error for c in again] and {c.status for c in cached} == {"cached"}
    late = S.rerank(shortlist, RandomSurrogate(seed=6), cache_dir=tmp_path / "cache", progress=False,
                    deadline=time.monotonic() - 1, workers=2)
    assert all(c.error is None and c.status == "skipped (time budget)" for c in late)


def test_rerank_starts_no_evaluation_expected_to_end_past_the_deadline(tmp_path):
    """With what an evaluation takes at least known beforehand (expected_seconds), one that could not end by the
    deadline is not started (and stopped there, its time lost): the caller gets its time back at once. A cached
    result is still taken."""
    r = run(TINY, synthetic(TINY), tmp_path, exhaustive=True)
    shortlist = r.candidates[:3]
    slow = S.AnalyticSurrogate(alpha=0.31, delay=5.0)     # (not the search's, whose errors its cache holds)
    S.rerank(shortlist[:1], S.AnalyticSurrogate(alpha=0.31), cache_dir=tmp_path / "cache", progress=False)
    start = time.monotonic()
    copies = S.rerank(shortlist, slow, cache_dir=tmp_path / "cache", progress=False, expected_seconds=5.0,
                      deadline=start + 2.0)
    assert time.monotonic() - start < 1.0
    assert [c.status for c in copies] == ["cached"] + ["skipped (time budget)"] * 2


def test_rerank_killed_says_what_is_cached_and_resumes(tmp_path):
    r = run(TINY, synthetic(TINY), tmp_path, exhaustive=True)
    shortlist = r.candidates[:5]
    with pytest.raises(S.SearchInterrupted, match="2 of 5"):
        S.rerank(shortlist, Interrupting(after=2, alpha=0.3), cache_dir=tmp_path / "other", progress=False)
    resumed = S.rerank(shortlist, S.AnalyticSurrogate(alpha=0.3), cache_dir=tmp_path / "other", progress=False)
    assert [c.status for c in resumed] == ["cached"] * 2 + ["ok"] * 3


def test_the_command_a_profile_error_gives_measures_into_that_profile(tmp_path):
    """A profile of the user's own file (--out) and space: the command an error prints names both, so that running
    it fixes the profile the user passed (the bare command profiled the default space into the cache, and the same
    error came back)."""
    path = synthetic(MINILM_SPACE).save(tmp_path / "mine.json")
    profile = P.load_profile(path, check_target=False)
    other = P.Workload(1, 64, 1)
    with pytest.raises(P.ProfileError) as error:
        profile.model(other)
    assert f"measure it with: {other.command()} --space minilm --out {path}" in str(error.value)
    assert profile.commands() == f"{W.command()} --space minilm --out {path}"

    from bortengine.search.fptas import latency_model

    # a search of another space names that space (it named the profile's first, whose measurements do not cover the
    # search's); a profile of another CPU target is measured on a machine of it, or over a Ray cluster with one
    # (the command alone measured this machine)
    with pytest.raises(S.SearchError) as error:
        latency_model(profile, other, TINY)
    said = str(error.value)
    assert f"measure it with: {other.command()} --space {TINY.name} --out {path} on a machine of the target " \
           f"{profile.target.signature}" in said and "--executor ray --ray-address ADDRESS" in said
    # this machine's own profile, with more threads than this process may use: say so, not the command alone
    mine = P.Profile(P.Target.current(), {}, path=tmp_path / "this.json")
    wide = P.Workload(1, 64, bortengine.engine.available_cpus() + 1)
    with pytest.raises(P.ProfileError, match=rf"on a machine with {wide.num_threads} CPUs; this process may use "
                                             rf"{wide.num_threads - 1}, so here search a workload of at most"):
        mine.for_workload(wide, "minilm")


@pytest.mark.parametrize("value", ["fast", -50.0, float("nan"), None])
def test_a_profile_with_a_malformed_block_is_refused_where_it_is_read(tmp_path, value):
    path = synthetic(MINILM_SPACE).save(tmp_path / "mine.json")
    data = json.loads(path.read_text())
    workload = next(iter(data["workloads"].values()))
    ops = workload["ops"].values() if isinstance(workload["ops"], dict) else workload["ops"]
    next(iter(ops))["blocks"][0]["median_ms"] = value
    path.write_text(json.dumps(data))
    with pytest.raises(P.ProfileError, match=f"malformed: a measurement block's median_ms is {re.escape(repr(value))}"):
        P.load_profile(path, check_target=False)


ORPHANED_WORKERS = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from bortengine.search.executor import worker_init

if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=worker_init,
                               initargs=(1, 0, None, os.getpid()))
    pids = {pool.submit(os.getpid).result() for _ in range(8)}
    pool.submit(time.sleep, 120)
    print(" ".join(map(str, pids)), flush=True)
    time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_extractions_workers_die_with_it_when_it_is_killed(tmp_path):
    """A SIGKILL of the extraction (the OOM killer, docker kill, a CI timeout) left its spawned workers training for
    nobody (a new-user trial: 0.6-0.8 GB each, still there 7 minutes on)."""
    import signal
    import subprocess

    script = tmp_path / "extraction.py"
    script.write_text(ORPHANED_WORKERS)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert workers
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)

        def alive(pid: int) -> bool:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().split(") ")[-1][0] != "Z"   # (a zombie is dead, awaiting its reaper)
            except FileNotFoundError:
                return False

        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), workers
    finally:
        parent.kill()
