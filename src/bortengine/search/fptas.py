"""The search: optimal sub-architecture extraction (OSE) by an FPTAS, on measured CPU latency.

Given a search space, a maximum point (the source architecture), a workload, a CPU profile, an error surrogate
and ε, `extract()` returns an ε-approximate Pareto set over (parameter size p, predicted latency l, error e) and
one winner by the W-coefficient. See docs/extraction.md for the algorithm, the guarantee and its proof.

The three objectives of a candidate ξ, all minimised:
- p(ξ): exact parameter count (bortengine.architecture); by default the effective size (no embeddings, as the
  paper), or the total size.
- l(ξ): the engine's forward latency predicted from the profile for the workload (bortengine.profiling), in ms.
- e(ξ): an error surrogate (pluggable: the short-budget distillation loss, the fine-tuning loss, or a cheap
  analytic function for tests), evaluated only for the representatives of the groups.

The FPTAS groups candidates by cells of a logarithmic grid over (p, l) anchored at the smallest values:
cell(ξ) = (⌊log_{1+ε}(p/p_min)⌋, ⌊log_{1+ε}(l/l_min)⌋), so within a group p and l differ by less than a
factor (1 + ε). The representative of a group is the member expected to have the lowest error (by default the
head count nearest the source's, then most parameters, then fastest: REPRESENTATIVES); the representatives (and
the maximum point) are evaluated first. Then the refinement (per_group > 1, default 3): an ErrorModel fitted to
the errors measured so far proposes, in each group, the unevaluated member it predicts lowest, which is evaluated
unless predicted a factor (1 + ε) worse than the group's best; refit and repeat, at most per_group evaluations a
group. The number of groups is at most
    n_p · n_l,  n_x = ⌊ln(x_max / x_min) / ln(1 + ε)⌋ + 1 ≤ 1 + (1 + ε) ln(x_max / x_min) / ε,
i.e. O(ln ρ_p · ln ρ_l / ε²), and the evaluations at most per_group · n_p · n_l + 1: polynomial in 1/ε,
independent of the size of the space; the code checks it.

Guarantee (proved in docs/extraction.md): if, in every group G, the best evaluated member b satisfies
e(b) ≤ (1 + ε) e(x) for every member x ("assumption A_ε", implied by error being non-increasing in the parameter
count within a group), then every point of the exhaustive Pareto front is (1 + ε)-covered in all three
objectives by the returned set. Without the assumption the same argument still covers every Pareto point whose
group satisfies it; `coverage()` checks exactly that against an exhaustive run, and `assumption_violations()`
lists the groups where A_ε fails. The refinement exists because real surrogates break A_ε for any fixed rule.

Surrogate results are cached on disk (a JSON-lines file per surrogate and settings, search.cache), so a killed
run resumes, and independent evaluations run on an executor (search.executor: local worker processes;
search.ray_executor: a Ray cluster).

This module composes the steps; the groups are in search.grouping, the refinement in search.refinement, the
result in search.result (whose construction selects the ε-Pareto set and the winner, search.pareto).
"""
from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any, Optional

from bortengine.architecture import Architecture
from bortengine.engine import available_cpus
from bortengine.profiling import LatencyModel, Profile, ProfileError, Workload, calibration_note
from bortengine.progress import Progress
from bortengine.search.cache import SurrogateCache, default_cache_dir
from bortengine.search.errors import LatencyLimitError, SearchError
from bortengine.search.evaluation import SKIPPED, Evaluator, evaluating
from bortengine.search.executor import (EXECUTORS, SCRIPT_GUARD, Executor, LocalExecutor, check_executor,
                                       default_workers, in_worker_bootstrap)
from bortengine.search.ray_executor import RayExecutor
from bortengine.search.grouping import REPRESENTATIVES, evaluation_bound, group, representative_order
from bortengine.search.pareto import Candidate
from bortengine.search.refinement import refine, refinement_record
from bortengine.search.result import Extraction
from bortengine.search.surrogates import Surrogate, resolve_surrogate
from bortengine.search_space import SearchSpace, SearchSpaceError, architecture_dims

__all__ = ["extract", "SIZES", "EXECUTORS"]

SIZES = ("effective", "total")


def extract(space: "SearchSpace | str", surrogate: "Surrogate | str", profile: Any, *, workload: Any = None,
            epsilon: float = 0.1, max_point: Any = None, size: str = "effective", exhaustive: bool = False,
            cache_dir: Optional[str | os.PathLike] = None, workers: Optional[int] = None,
            tau: Optional[float] = None,
            time_budget: Optional[float] = None, max_fallbacks: int = 2, allow_extrapolation: bool = False,
            worker_nice: int = 0, progress: bool = True, representative: str = "source-heads",
            per_group: int = 3, latency_limit_ms: Optional[float] = None, started: Optional[float] = None,
            reserve: float = 0.0, executor: Optional[str] = None, ray_address: Optional[str] = None) -> Extraction:
    """Optimal sub-architecture extraction over (p, l, e) by the FPTAS (or exhaustively).

    space: a SearchSpace or a name/file; surrogate: a Surrogate or a name in SURROGATES; profile: a Profile (see
    bortengine.profiling.load_profile) covering the workload (default: batch 1 × 128 tokens, all CPUs).
    max_point: the source architecture (an Architecture, "D,A,H,I" or a tuple; default: the space's largest);
    candidates are the space's architectures no larger than it in each of D, A, H, I, plus it.
    size: "effective" (without embeddings, the paper's) or "total" parameters as the size objective.
    exhaustive: evaluate every candidate (for checking the FPTAS). tau: the W-coefficient's error unit (default
    surrogate.error_scale). time_budget: wall seconds for the whole call, counted from `started` (a
    time.monotonic() value: the caller's start, e.g. before it loaded the profile; default this call's start) and
    leaving `reserve` seconds for the caller's work after it: an evaluation starts only when it is expected to end
    in time (as long as the longest so far), those still running at the deadline are stopped (on worker processes;
    one in this process runs to its end), and the report says which candidates were skipped. max_fallbacks: per group, how many further members are tried when the representative's
    surrogate fails or returns NaN. cache_dir: default default_cache_dir(). workers: surrogate processes (default:
    one per CPU, each with one thread, for an expensive surrogate — distill, finetune —, else 1; with workers > 1
    they run at niceness worker_nice, so the parent can time finalists at its own priority).
    representative: which member of a group is evaluated first, see REPRESENTATIVES (default "source-heads").
    per_group: at most this many evaluations per group (failures included). With per_group > 1, after the
    representatives an ErrorModel is fitted to all the errors measured so far, and in every group where it predicts
    that an unevaluated member may beat the group's best measured error by the factor 1 + ε (at two leave-one-out
    standard errors, and predicted at most 1 + ε above it), the member it predicts lowest is evaluated; refit and
    repeat until no group qualifies (the refinement, docs/extraction.md).
    1: the plain FPTAS, one representative per group.
    latency_limit_ms: only candidates predicted at most this slow are searched (a latency constraint, as a
    service's budget per request; the maximum point stays, the W-coefficient's reference).
    executor: where the evaluations run, "local" (worker processes, the default) or "ray" (the default when
    ray_address is given): a Ray cluster at ray_address, else at $RAY_ADDRESS, else a local Ray instance; workers
    then defaults to the cluster's CPUs // the surrogate's threads (search.ray_executor). Each candidate's `node`
    says where its evaluation ran.
    """
    if in_worker_bootstrap():
        raise SearchError(f"extract() was called while one of its worker processes was starting: {SCRIPT_GUARD}")
    start = time.monotonic()
    started = start if started is None else started
    eps = check_epsilon(epsilon)
    _check_options(size, representative, per_group, workers)
    executor = check_executor(executor, ray_address)
    space, surrogate = _resolve_space(space), resolve_surrogate(surrogate)
    tau = _check_tau(surrogate.error_scale if tau is None else tau)
    workload = _check_profile(profile, workload)
    # the candidates and their cheap objectives: exact sizes, latencies predicted by the profile
    m_arch = max_point_architecture(space, max_point)
    surrogate.check_max_point(m_arch)
    archs = candidate_architectures(space, m_arch)
    model = latency_model(profile, workload, space)
    note = _calibration_warning(model)
    if note:  # the profiler's own check of its calibration (both constants are costs, empty calls take µs)
        warnings.warn(f"the profile {profile.path or ''}: {note}", RuntimeWarning, stacklevel=2)
    cands = cheap_objectives(archs, model, space, workload, size, allow_extrapolation, profile.path)
    m = next(c for c in cands if c.arch.tuple == m_arch.tuple)
    if latency_limit_ms is not None:
        within = [c for c in cands if c.latency_ms <= latency_limit_ms or c is m]
        if len(within) < 2:
            fastest = min((c for c in cands if c is not m), key=lambda c: c.latency_ms, default=None)
            raise LatencyLimitError(
                f"no candidate is predicted within the latency limit of {latency_limit_ms:.3f} ms under {workload}"
                + (f" (the fastest, {fastest.arch}, is predicted {fastest.latency_ms:.3f} ms)" if fastest else "")
                + "; raise the limit or search a space with smaller architectures", latency_limit_ms, fastest)
        cands = within
    # the groups: cells of a (1+ε) log grid over (p, l), each with its representative first
    order = representative_order(representative, m_arch)
    members = group(cands, eps, order)
    bound = evaluation_bound(cands, len(members), eps, per_group, exhaustive)
    # the error surrogate: representatives (or everyone), fallbacks, refinement; cached, on the executor
    cache = SurrogateCache(cache_dir or default_cache_dir(), surrogate)
    first = representatives(members, m, cands, exhaustive)
    bar = Progress(len(first), f"surrogate {surrogate.name} {'exhaustive' if exhaustive else f'ε={eps}'}", progress)
    runner = make_executor(executor, surrogate, workers, worker_nice, ray_address)
    ev = Evaluator(runner, cache, bar, started + time_budget - reserve if time_budget is not None else None)
    refinement = measure_errors(ev, first, members, order, exhaustive=exhaustive, per_group=per_group,
                                max_fallbacks=max_fallbacks, epsilon=eps)
    failures, complete, done = _tally(cands, bound, exhaustive)
    if not m.evaluated:
        why = f"{m.status}: {m.message}" if m.message else m.status
        warnings.warn(f"the maximum point {m.arch} has no error ({why}); the W-coefficient and the winner are "
                      f"undefined", RuntimeWarning, stacklevel=2)
    # the selection (the ε-Pareto set, the winner by the W-coefficient) is the Extraction's own first step
    return Extraction(representative=representative, space=space, candidates=cands, epsilon=eps,
                      mode="exhaustive" if exhaustive else "fptas",
                      size=size, max_point=m, surrogate=surrogate, tau=tau, workload=workload, profile=profile,
                      bound=bound, groups=len(members), refinement=refinement,
                      evaluations=done,
                      fresh_evaluations=ev.fresh, failures=failures, complete=complete,
                      seconds=time.monotonic() - start, cache_path=str(cache.path), executor=runner.describe(),
                      latency_limit_ms=latency_limit_ms)


# -- the settings ------------------------------------------------------------------------------------------------
def check_epsilon(epsilon: float) -> float:
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise SearchError(f"ε must be a number in (0, 1), got {epsilon!r}") from None
    if not (0 < eps < 1) or math.isnan(eps):
        raise SearchError(f"ε must lie strictly between 0 and 1 (the groups' cost ratio is 1 + ε; ε → 0 is "
                          f"exhaustive, ε ≥ 1 groups costs that differ by 2x or more), got {epsilon!r}")
    return eps


def _check_options(size: str, representative: str, per_group: Any, workers: Any) -> None:
    if size not in SIZES:
        raise SearchError(f"size must be one of {SIZES}, got {size!r}")
    if representative not in REPRESENTATIVES:
        raise SearchError(f"representative must be one of {sorted(REPRESENTATIVES)}, got {representative!r}")
    if isinstance(per_group, bool) or not isinstance(per_group, int) or per_group < 1:
        raise SearchError(f"per_group (surrogate evaluations per group) must be a positive integer (1: the plain "
                          f"FPTAS, one representative per group), got {per_group!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SearchError(f"workers must be a positive integer, got {workers!r}")


def make_executor(kind: str, surrogate: Surrogate, workers: Optional[int] = None, niceness: int = 0,
                  address: Optional[str] = None) -> Executor:
    """The executor named kind (EXECUTORS) for surrogate; workers None: its default."""
    if kind == "ray":       # (ray itself is imported only now, by the connection)
        return RayExecutor(surrogate, workers, address, niceness)
    return LocalExecutor(surrogate, default_workers(surrogate) if workers is None else workers, niceness)


def _resolve_space(space: "SearchSpace | str") -> SearchSpace:
    try:
        return SearchSpace.resolve(space)
    except SearchSpaceError as e:
        raise SearchError(str(e)) from None


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not tau > 0:
        raise SearchError(f"tau (the W-coefficient's error unit) must be positive, got {tau}")
    return tau


def _check_profile(profile: Any, workload: Optional[Workload]) -> Workload:
    """The workload to search for (default: batch 1 × 128 tokens on every CPU), once the profile is one."""
    if not isinstance(profile, Profile):
        raise SearchError(f"profile must be a bortengine.profiler.Profile (load_profile(path)), got "
                          f"{type(profile).__name__}")
    return workload or Workload(num_threads=available_cpus())


# -- the candidates ----------------------------------------------------------------------------------------------
def _sizes(space: SearchSpace) -> dict[str, Any]:
    """The space's settings every candidate shares beside ⟨D, A, H, I⟩."""
    return {"vocab_size": space.vocab_size, "max_positions": space.max_positions,
            "type_vocab_size": space.type_vocab_size, "head": space.head}


def max_point_architecture(space: SearchSpace, max_point: Any) -> Architecture:
    """The source architecture: given (an Architecture, "D,A,H,I" or a tuple) or the space's largest."""
    if max_point is None:
        return Architecture(*space.largest().tuple, **_sizes(space))
    if isinstance(max_point, str):
        try:
            return Architecture.parse(max_point, **_sizes(space))
        except ValueError as e:
            raise SearchError(f"maximum point: {e}") from None
    try:
        dims = architecture_dims(max_point)
    except SearchSpaceError as e:
        raise SearchError(f"maximum point: {e}") from None
    return Architecture(*dims, **_sizes(space))


def candidate_architectures(space: SearchSpace, m: Architecture) -> list[Architecture]:
    """The space's architectures below the maximum point (D, A, H, I each ≤), plus the maximum point itself."""
    below = []
    for x in space.architectures():
        d, a, h, i = x.tuple
        if d <= m.layers and a <= m.heads and h <= m.hidden and i <= m.intermediate:
            below.append(Architecture(d, a, h, i, **_sizes(space)))
    if not below:
        raise SearchError(f"the search space {space.name!r} has no architecture below the maximum point {m} "
                          f"(every candidate must have D, A, H, I no larger than it): {space.describe()}")
    if m.tuple not in {x.tuple for x in below}:
        below.append(m)
    return below


# -- the cheap objectives: exact sizes, latency predicted from the profile --------------------------------------
def _profile_command(space: SearchSpace, workload: Workload) -> str:
    return (f"bortengine profile --space {space.name} --batch {workload.batch_size} --seq {workload.seq_len} "
            f"--threads {workload.num_threads}")


def latency_model(profile: Profile, workload: Workload, space: SearchSpace) -> LatencyModel:
    """The profile's latency model for the workload; SearchError when the profile or the space cannot serve it."""
    if workload.seq_len > space.max_positions:
        raise SearchError(f"the workload's {workload.seq_len} tokens exceed the space's max_positions="
                          f"{space.max_positions}")
    try:
        return profile.model(workload, space.name)
    except ProfileError as e:
        raise SearchError(f"the profile does not cover this search: {e}") from None


def _calibration_warning(model: LatencyModel) -> Optional[str]:
    """The profiler's warning text when the calibration of the model's measurements contradicts itself."""
    return calibration_note(getattr(model, "wp", None) and model.wp.calibration or {})


def cheap_objectives(archs: list[Architecture], model: LatencyModel, space: SearchSpace, workload: Workload,
                     size: str, allow_extrapolation: bool, profile_path: Any = None) -> list[Candidate]:
    """Each architecture as a Candidate with its size objective and predicted latency. SearchError when the
    profile cannot predict one, needs to extrapolate (unless allowed) or predicts a non-positive latency."""
    cands: list[Candidate] = []
    outside: list[str] = []
    for a in archs:
        try:
            pred = model.predict(a)
        except ProfileError as e:
            raise SearchError(f"the profile cannot predict {a}: {e}; profile the space with: "
                              f"{_profile_command(space, workload)}") from None
        if pred.extrapolated:
            outside.append(f"{a} ({', '.join(pred.extrapolated[:2])})")
        cands.append(Candidate(a, a.parameters(embeddings=size == "total"), a.parameters(), pred.total_ms))
    if outside and not allow_extrapolation:
        raise SearchError(
            f"the profile does not cover the space: {len(outside)} of {len(cands)} candidates need op shapes "
            f"outside its measured range, e.g. {'; '.join(outside[:3])}. Profile this space for this workload: "
            f"{_profile_command(space, workload)} --out {profile_path or 'PROFILE'} (or allow extrapolation)")
    bad = [c for c in cands if not (c.latency_ms > 0 and math.isfinite(c.latency_ms))]
    if bad:
        raise SearchError(f"the profile predicts a non-positive latency for {bad[0].arch} ({bad[0].latency_ms} "
                          f"ms): it is damaged or contradictory; re-profile")
    return cands


# -- the error objective: representatives, fallbacks, refinement -------------------------------------------------
def representatives(members: list[list[Candidate]], m: Candidate, cands: list[Candidate], exhaustive: bool
                    ) -> list[Candidate]:
    """What is evaluated first: each group's representative (marked) and the maximum point, or everyone."""
    if exhaustive:
        first = list(cands)
    else:
        first = [g[0] for g in members]
        if m not in first:
            first.append(m)
    for g in members:
        g[0].representative = True
    return first


def measure_errors(ev: Evaluator, first: list[Candidate], members: list[list[Candidate]], order: Any, *,
                   exhaustive: bool, per_group: int, max_fallbacks: int, epsilon: float) -> dict[str, Any]:
    """Evaluates the first candidates, then (FPTAS) the fallbacks and the refinement; returns what the
    refinement did. Ctrl-C (or a kill) stops the workers and raises SearchInterrupted: the cache keeps what
    finished."""
    evaluated: list[Candidate] = list(first)
    refinement = refinement_record(1 if exhaustive else per_group)
    with evaluating(ev, evaluated):
        ev.run(first)
        if not exhaustive:
            fallbacks(members, max_fallbacks, ev, evaluated)
            refinement = refine(members, per_group, order, ev, evaluated, epsilon)
    return refinement


def fallbacks(members: list[list[Candidate]], max_fallbacks: int, ev: Evaluator, evaluated: list[Candidate]
              ) -> None:
    """A group whose representative failed (or gave NaN): its next member becomes one, up to max_fallbacks
    rounds. Appends what it evaluates to `evaluated`."""
    for _ in range(max_fallbacks):
        retry = []
        for g in members:
            if any(c.evaluated for c in g):
                continue
            tried = [c for c in g if c.status != "not evaluated"]
            if tried and all(c.status in ("failed", "nan") for c in tried) and len(tried) < len(g):
                nxt = g[len(tried)]
                nxt.representative = True
                retry.append(nxt)
        if not retry:
            break
        ev.bar.extend(len(retry))
        evaluated += retry
        ev.run(retry)


def _tally(cands: list[Candidate], bound: dict[str, Any], exhaustive: bool
           ) -> tuple[list[dict[str, Any]], bool, int]:
    """(failures, complete, evaluations done), the FPTAS's bound on the evaluations checked."""
    failures = [{"arch": list(c.dims), "group": c.group, "status": c.status, "message": c.message}
                for c in cands if c.status in ("failed", "nan")]
    complete = not any(c.status == SKIPPED for c in cands)
    done = sum(c.status not in ("not evaluated", SKIPPED) for c in cands)
    if not exhaustive and done > bound["evaluations"] + len(failures):  # the promised bound, checked
        raise AssertionError(f"{done} surrogate evaluations exceed the bound {bound['evaluations']} + "
                             f"{len(failures)} fallbacks")
    return failures, complete, done
