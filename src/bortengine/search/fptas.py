"""The search: optimal sub-architecture extraction (OSE) by an FPTAS, on measured CPU latency.

Given a search space, a maximum point (the source architecture), a workload, a CPU profile, an error surrogate
and ε, `extract()` returns an ε-approximate Pareto set over (parameter size p, predicted latency l, error e) and
one winner by the W-coefficient. See docs/extraction.md for the algorithm, the guarantee and its proof.

The three objectives of a candidate ξ, all minimised:
- p(ξ): exact parameter count (bortengine.architecture); by default the effective size (no embeddings, as the
  paper), or the total size.
- l(ξ): the engine's forward latency predicted from the profile for the workload (bortengine.profiler), in ms.
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

Surrogate results are cached on disk (a JSON-lines file per surrogate and settings), so a killed run resumes,
and independent evaluations run in worker processes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from bortengine.architecture import Architecture
from bortengine.progress import Progress as _Bar
from bortengine.errors import BortEngineError
from bortengine.search_space import SearchSpace, SearchSpaceError, architecture_dims

__all__ = [
    "SearchError", "SearchInterrupted", "Surrogate", "AnalyticSurrogate", "DistillationSurrogate",
    "FinetuneSurrogate", "SurrogateCache", "Candidate", "ParetoSet", "Extraction", "extract", "pareto_front",
    "group_bound", "w_coefficient", "coverage", "assumption_violations", "resolve_surrogate", "ErrorModel",
    "default_cache_dir", "measure_finalists", "SURROGATES",
]

SIZES = ("effective", "total")


class SearchError(BortEngineError, ValueError):
    """A search that cannot run as asked: bad ε, empty or contradictory space, uncovered profile, ..."""


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during the surrogate evaluations: what finished is cached; the same call again resumes."""

    def __init__(self, cache: Path, done: int, total: int):
        super().__init__(f"interrupted: {done} of {total} surrogate evaluations cached in {cache}; run the same "
                         f"command again to resume")
        self.cache, self.done, self.total = cache, done, total


# ================================================================================================ surrogates
class Surrogate:
    """An error surrogate e(ξ): a picklable callable Architecture -> float (lower is better).

    name and settings() identify the results (the cache key): two surrogates with equal name and settings must
    return the same value for the same architecture. error_scale is the default τ of the W-coefficient: the error
    increase worth a factor e ≈ 2.72 in size and latency.
    """

    name = "surrogate"
    error_scale = 1.0
    expensive = False  # True: evaluations train a model, so extract() runs them in one worker process per CPU

    def settings(self) -> dict[str, Any]:
        return {}

    def key(self) -> str:
        text = json.dumps({"name": self.name, "settings": self.settings()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        s = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{self.name}({s})"

    def __call__(self, arch: Architecture) -> float:
        raise NotImplementedError


@dataclass
class AnalyticSurrogate(Surrogate):
    """A cheap closed form for tests: a scaling law in the effective size, plus small depth and head-size terms.

        e(ξ) = base + (p_eff / 1e6)^(-alpha) + depth / √D + head · |log2(H/A / 64)|

    Smooth and decreasing in p_eff; the depth and head terms vary inside a (p, l) group by at most
    depth + head·log2(max head-size ratio), small against base, so assumption A_ε holds for ε ≥ 0.05 on the
    shipped spaces (the tests check it). fail/nan: architectures (D, A, H, I) for which it raises or returns NaN
    (to test robustness).
    """

    base: float = 1.0
    alpha: float = 0.3
    depth: float = 0.05
    head: float = 0.005
    fail: tuple = ()
    nan: tuple = ()
    delay: float = 0.0

    name = "analytic"
    error_scale = 0.5

    def settings(self) -> dict[str, Any]:
        return {"base": self.base, "alpha": self.alpha, "depth": self.depth, "head": self.head,
                "fail": [list(x) for x in self.fail], "nan": [list(x) for x in self.nan]}

    def __call__(self, arch: Architecture) -> float:
        dims = architecture_dims(arch)
        if self.delay:
            time.sleep(self.delay)
        if dims in {tuple(x) for x in self.fail}:
            raise RuntimeError(f"analytic surrogate told to fail on {dims}")
        if dims in {tuple(x) for x in self.nan}:
            return float("nan")
        d, a, h, _ = dims
        p = arch.parameters(embeddings=False) if isinstance(arch, Architecture) else Architecture(*dims).parameters(
            embeddings=False)
        return (self.base + (p / 1e6) ** (-self.alpha) + self.depth / math.sqrt(d)
                + self.head * abs(math.log2((h / a) / 64)))


@dataclass
class DistillationSurrogate(Surrogate):
    """The real surrogate: training.surrogate_loss, the distillation loss of a slice-initialised student after
    `steps` optimiser steps (teacher None = all-MiniLM-L6-v2). threads: torch threads per evaluation (None: set
    by the worker pool from the CPUs and worker count). The defaults are the settings measured in
    docs/extraction.md (the whole MiniLM extraction in 18 minutes on a busy 2-core machine)."""

    steps: int = 16
    seed: int = 0
    batch_size: int = 8
    max_length: int = 32
    lr: float = 2e-4
    eval_sentences: int = 64
    teacher: Optional[str] = None
    threads: Optional[int] = None

    name = "distill"
    error_scale = 1.5
    expensive = True

    def settings(self) -> dict[str, Any]:
        return {"steps": self.steps, "seed": self.seed, "batch_size": self.batch_size,
                "max_length": self.max_length, "lr": self.lr, "eval_sentences": self.eval_sentences,
                "teacher": self.teacher or "all-MiniLM-L6-v2"}

    def __call__(self, arch: Architecture) -> float:
        from bortengine import training

        return training.surrogate_loss(arch, teacher=self.teacher, steps=self.steps, seed=self.seed,
                                       batch_size=self.batch_size, max_length=self.max_length, lr=self.lr,
                                       eval_sentences=self.eval_sentences, threads=self.threads)


@dataclass
class FinetuneSurrogate(Surrogate):
    """training.finetune_surrogate_loss on a slice-initialised student: mean dev cross-entropy of the task after
    `steps` fine-tuning steps (teacher None = all-MiniLM-L6-v2)."""

    steps: int = 50
    task: str = "rt"
    seed: int = 0
    batch_size: int = 32
    eval_limit: int = 256
    teacher: Optional[str] = None
    threads: Optional[int] = None

    name = "finetune"
    error_scale = 0.1
    expensive = True

    def settings(self) -> dict[str, Any]:
        return {"steps": self.steps, "task": self.task, "seed": self.seed, "batch_size": self.batch_size,
                "eval_limit": self.eval_limit, "teacher": self.teacher or "all-MiniLM-L6-v2"}

    def __call__(self, arch: Architecture) -> float:
        from dataclasses import replace as _replace

        from bortengine import training
        from bortengine.training.distill import _teacher_bundle  # the teacher and its importance, once per process

        t_model, importance, _, t_dir = _teacher_bundle(self.teacher)
        student, _ = training.slice_init(_replace(arch, head="pooler"), t_model, importance)
        config = training.FinetuneConfig(model=t_dir, tokenizer=t_dir, task=self.task, seed=self.seed,
                                         batch_size=self.batch_size, eval_limit=self.eval_limit,
                                         threads=self.threads)
        return float(training.finetune_surrogate_loss(config, steps=self.steps, model=student))


SURROGATES = {"analytic": AnalyticSurrogate, "distill": DistillationSurrogate, "finetune": FinetuneSurrogate}


def resolve_surrogate(spec: "str | Surrogate", **settings: Any) -> Surrogate:
    """A surrogate from a name in SURROGATES (with settings as keyword arguments), or the surrogate itself."""
    if isinstance(spec, Surrogate):
        return spec
    cls = SURROGATES.get(str(spec))
    if cls is None:
        raise SearchError(f"unknown surrogate {spec!r}: give one of {sorted(SURROGATES)}")
    known = {k: v for k, v in settings.items() if v is not None and k in cls.__dataclass_fields__}
    return cls(**known)


# ===================================================================================================== cache
def default_cache_dir() -> Path:
    """$BORTENGINE_SURROGATE_CACHE, else $XDG_CACHE_HOME/bortengine/surrogates (~/.cache/...)."""
    env = os.environ.get("BORTENGINE_SURROGATE_CACHE")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "bortengine" / "surrogates"


def _arch_key(arch: Architecture) -> str:
    return (f"{arch.layers},{arch.heads},{arch.hidden},{arch.intermediate}|v{arch.vocab_size}|p{arch.max_positions}"
            f"|t{arch.type_vocab_size}|{arch.head}")


class SurrogateCache:
    """Surrogate results of one surrogate and settings, appended one JSON line per evaluation.

    Values (including NaN, a deterministic result) are kept; exceptions are not (they may be transient: a rerun
    tries again). A line cut short by a kill is skipped on reading. Only the parent process writes.
    """

    def __init__(self, directory: str | os.PathLike, surrogate: Surrogate):
        self.dir = Path(directory)
        self.path = self.dir / f"{surrogate.name}-{surrogate.key()}.jsonl"
        self.entries: dict[str, dict[str, Any]] = {}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta = self.dir / f"{surrogate.name}-{surrogate.key()}.settings.json"
            if not meta.exists():
                meta.write_text(json.dumps({"name": surrogate.name, "settings": surrogate.settings()}, indent=1))
        except OSError as e:
            raise SearchError(f"cannot use the surrogate cache directory {self.dir}: {e.strerror or e}") from None
        if self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # cut short by a kill: the next line must start afresh
                with open(self.path, "a") as f:
                    f.write("\n")
            for n, line in enumerate(text.splitlines()):
                try:
                    entry = json.loads(line)
                    self.entries[entry["arch"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    warnings.warn(f"{self.path}: line {n + 1} is damaged (a killed run?); it will be re-evaluated",
                                  RuntimeWarning, stacklevel=2)

    def get(self, arch: Architecture) -> Optional[dict[str, Any]]:
        return self.entries.get(_arch_key(arch))

    def put(self, arch: Architecture, error: float, seconds: float) -> None:
        entry = {"arch": _arch_key(arch), "error": None if math.isnan(error) else error,
                 "status": "nan" if math.isnan(error) else "ok", "seconds": round(seconds, 3),
                 "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.entries[entry["arch"]] = entry
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


# ================================================================================================ candidates
@dataclass
class Candidate:
    """One architecture of the space and what the search knows of it."""

    arch: Architecture
    params: int                        # p: the size objective (effective or total, see Extraction.size)
    params_total: int
    latency_ms: float                  # l: predicted by the profile
    group: int = -1
    representative: bool = False
    refined: bool = False              # evaluated by the refinement (the error model predicted it best in its group)
    error: Optional[float] = None      # e: None when not evaluated (or failed)
    status: str = "not evaluated"      # ok | cached | nan | failed | skipped (time budget) | not evaluated
    message: str = ""
    seconds: Optional[float] = None
    pareto: bool = False
    w: Optional[float] = None
    measured_ms: Optional[float] = None

    @property
    def dims(self) -> tuple[int, int, int, int]:
        return self.arch.tuple

    @property
    def evaluated(self) -> bool:
        return self.error is not None

    def point(self) -> tuple[float, float, float]:
        return (float(self.params), self.latency_ms, float(self.error))

    def to_dict(self) -> dict[str, Any]:
        return {"arch": list(self.dims), "params": self.params, "params_total": self.params_total,
                "latency_ms": round(self.latency_ms, 5),
                "measured_ms": None if self.measured_ms is None else round(self.measured_ms, 5),
                "error": self.error, "status": self.status, "message": self.message, "seconds": self.seconds,
                "group": self.group, "representative": self.representative, "refined": self.refined,
                "pareto": self.pareto, "w": self.w}


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (all objectives minimised; equal points all kept)."""
    return [i for i, p in enumerate(points) if not any(_dominates(q, p) for j, q in enumerate(points) if j != i)]


@dataclass
class ParetoSet:
    """An (ε-approximate) Pareto set over (p, l, e) of evaluated candidates."""

    candidates: list[Candidate]
    epsilon: float

    def __len__(self) -> int:
        return len(self.candidates)

    def __iter__(self):
        return iter(self.candidates)

    def covers(self, point: Sequence[float], factor: float) -> Optional[Candidate]:
        """A member y with y ≤ factor · point in every objective, or None."""
        tol = 1 + 1e-12
        for c in self.candidates:
            if all(a <= factor * b * tol for a, b in zip(c.point(), point)):
                return c
        return None


class ErrorModel:
    """A cheap model of the surrogate's error over architectures, fitted to the evaluations made so far: ridge
    regression of ln e on a full quadratic in (ln D, ln A, ln H, ln I, ln H/A) (21 terms, standardised).

    The refinement stage of extract() uses it only to choose which further member of a group to evaluate: every
    error in the result is still measured by the surrogate. It need not be accurate, only to rank the members of
    a group better than a fixed rule does (the rule cannot know, e.g., that the surrogate punishes a narrow FFN
    more than a missing layer, or a wide head at small H). Errors ≤ 0 (possible for a custom surrogate) are
    modelled without the logarithm.
    """

    def __init__(self, ridge: float = 1e-2):
        self.ridge = float(ridge)
        self._w = None

    @staticmethod
    def features(arch: Architecture) -> list[float]:
        d, a, h, i = (math.log(x) for x in arch.tuple)
        base = [d, a, h, i, h - a]
        return base + [x * y for k, x in enumerate(base) for y in base[k:]]

    def fit(self, archs: Sequence[Architecture], errors: Sequence[float]) -> "ErrorModel":
        import numpy as np

        if len(archs) != len(errors) or not archs:
            raise SearchError(f"the error model needs errors for at least one architecture, got {len(archs)} "
                              f"architectures and {len(errors)} errors")
        y = np.asarray(errors, dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise SearchError("the error model takes finite errors only")
        self.log = bool(np.all(y > 0))
        y = np.log(y) if self.log else y
        x = np.asarray([self.features(a) for a in archs], dtype=np.float64)
        self._mu, self._sd = x.mean(0), x.std(0)
        self._sd[self._sd < 1e-12] = 1.0  # a feature constant over the evaluations carries nothing
        x = np.hstack([np.ones((len(x), 1)), (x - self._mu) / self._sd])
        reg = self.ridge * np.eye(x.shape[1])
        reg[0, 0] = 0.0  # the intercept is not shrunk
        inv = np.linalg.inv(x.T @ x + reg)
        self._w = inv @ (x.T @ y)
        # leave-one-out residuals (closed form for ridge: r_i / (1 − h_ii)): the model's error on errors it has
        # not seen, in the units it fits (ln e, or e)
        hat = np.einsum("ij,jk,ik->i", x, inv, x)
        loo = (y - x @ self._w) / np.maximum(1.0 - hat, 1e-6)
        self.spread = float(np.sqrt(np.mean(np.square(loo)))) if len(y) > x.shape[1] else math.inf
        return self

    def predict(self, arch: Architecture) -> float:
        import numpy as np

        if self._w is None:
            raise SearchError("ErrorModel.predict before fit")
        x = (np.asarray(self.features(arch)) - self._mu) / self._sd
        v = float(self._w[0] + x @ self._w[1:])
        return math.exp(min(v, 700.0)) if self.log else v


def group_bound(p_range: tuple[float, float], l_range: tuple[float, float], epsilon: float) -> dict[str, Any]:
    """The guaranteed number of groups: n_p · n_l with n_x = ⌊ln(max/min) / ln(1+ε)⌋ + 1, and its closed form
    (1 + (1+ε) ln ρ_p / ε)(1 + (1+ε) ln ρ_l / ε) = O(ln ρ_p ln ρ_l / ε²)."""
    lg = math.log1p(epsilon)
    rho_p, rho_l = p_range[1] / p_range[0], l_range[1] / l_range[0]
    n_p = math.floor(math.log(rho_p) / lg + 1e-9) + 1
    n_l = math.floor(math.log(rho_l) / lg + 1e-9) + 1
    closed = (1 + (1 + epsilon) * math.log(rho_p) / epsilon) * (1 + (1 + epsilon) * math.log(rho_l) / epsilon)
    return {"n_p": n_p, "n_l": n_l, "groups": n_p * n_l, "closed_form": closed, "rho_p": rho_p, "rho_l": rho_l}


def w_coefficient(c: Candidate, m: Candidate, tau: float) -> float:
    """W(ξ) = ½ ln(p(m)/p(ξ)) + ½ ln(l(m)/l(ξ)) − Δ·|Δ| / τ², Δ = e(ξ) − e(m), relative to the maximum point m.

    Log-compression (the mean of the log size reduction and log speed-up: half the size and twice as fast is
    worth ln 2) minus a penalty quadratic in the error increase: an increase of τ costs one unit (a factor e of
    compression), 2τ costs four. Quadratic because a linear penalty only ever picks an end of a convex front
    (measured on the real surrogate, see docs/extraction.md); Δ·|Δ| keeps W strictly decreasing in e, so W
    decreases in each objective and its maximiser over a set lies on the set's Pareto front. W(m) = 0.
    """
    d = c.error - m.error
    return (0.5 * math.log(m.params / c.params) + 0.5 * math.log(m.latency_ms / c.latency_ms)
            - d * abs(d) / tau ** 2)


# =============================================================================================== the result
@dataclass
class Extraction:
    """The result of extract(): every candidate, the groups, the ε-Pareto set and the winner."""

    space: SearchSpace
    candidates: list[Candidate]
    epsilon: float
    mode: str                       # "fptas" or "exhaustive"
    size: str                       # "effective" or "total"
    max_point: Candidate
    surrogate: Surrogate
    tau: float
    workload: Any
    profile: Any
    bound: dict[str, Any]
    groups: int
    evaluations: int                # surrogate evaluations this search needed (cached ones included)
    fresh_evaluations: int          # of which run now (not from the cache)
    failures: list[dict[str, Any]]
    complete: bool                  # False when a time budget stopped the evaluations
    seconds: float
    cache_path: Optional[str]
    pareto: ParetoSet = field(init=False)
    winner: Optional[Candidate] = field(init=False)
    measurement: Optional[dict[str, Any]] = None
    verification: Optional[dict[str, Any]] = None
    representative: str = "source-heads"  # the rule that picks each group's evaluated member (REPRESENTATIVES)
    refinement: Optional[dict[str, Any]] = None  # what the refinement stage did (_refine)

    def __post_init__(self):
        evaluated = [c for c in self.candidates if c.evaluated]
        front = [evaluated[i] for i in pareto_front([c.point() for c in evaluated])]
        for c in self.candidates:
            c.pareto = False
            c.w = w_coefficient(c, self.max_point, self.tau) if c.evaluated and self.max_point.evaluated else None
        for c in front:
            c.pareto = True
        self.pareto = ParetoSet(sorted(front, key=lambda c: (c.params, c.latency_ms)), self.epsilon)
        scored = [c for c in front if c.w is not None]
        self.winner = max(scored, key=lambda c: (c.w, -c.params)) if scored else None

    @property
    def architecture(self) -> Optional[Architecture]:
        """The winner as an Architecture (what training.pretrain / DistillConfig(student=...) take)."""
        return self.winner.arch if self.winner else None

    def summary(self) -> dict[str, Any]:
        w = self.winner
        return {
            "mode": self.mode, "epsilon": self.epsilon, "space": self.space.name, "space_size": len(self.candidates),
            "groups": self.groups, "bound": self.bound, "evaluations": self.evaluations,
            "refinement": self.refinement,
            "fresh_evaluations": self.fresh_evaluations, "failures": len(self.failures),
            "pareto_size": len(self.pareto), "complete": self.complete, "seconds": round(self.seconds, 2),
            "winner": None if w is None else {
                "arch": list(w.dims), "params": w.params, "latency_ms": w.latency_ms, "measured_ms": w.measured_ms,
                "error": w.error, "w": w.w,
                "pretrain": f"bortengine pretrain --arch {','.join(map(str, w.dims))} --out runs/<name>"},
            "max_point": {"arch": list(self.max_point.dims), "params": self.max_point.params,
                          "latency_ms": self.max_point.latency_ms, "error": self.max_point.error},
        }

    def to_dict(self) -> dict[str, Any]:
        prof = self.profile
        return {
            "format": "bortengine-extraction", "version": 1,
            "summary": self.summary(),
            "settings": {
                "space": self.space.to_dict(), "size_objective": self.size,
                "workload": {"batch_size": self.workload.batch_size, "seq_len": self.workload.seq_len,
                             "num_threads": self.workload.num_threads, "dtype": self.workload.dtype},
                "profile": {"path": str(prof.path) if prof.path else None, "target": prof.target.to_dict()},
                "surrogate": {"name": self.surrogate.name, "settings": self.surrogate.settings()},
                "tau": self.tau,
                "w_coefficient": "W = 0.5 ln(p_max/p) + 0.5 ln(l_max/l) - d|d|/tau^2, d = e - e_max",
                "grouping": "cell = (floor(log_{1+eps}(p/p_min)), floor(log_{1+eps}(l/l_min))); representative: "
                            + REPRESENTATIVES[self.representative]
                            + (f"; then up to {self.refinement['per_group']} evaluations per group, further members "
                               f"chosen by an error model fitted to the measured errors"
                               if self.refinement and self.refinement["per_group"] > 1 else ""),
                "cache": self.cache_path,
            },
            "failures": self.failures,
            "measurement": self.measurement,
            "verification": self.verification,
            "winner_architecture": self.winner.arch.to_dict() if self.winner else None,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False, allow_nan=False) + "\n")
        os.replace(tmp, path)
        return path

    def plot(self, path: str | os.PathLike, title: Optional[str] = None) -> Path:
        """Two panels: size vs predicted latency (every candidate, evaluated ones coloured by error), and latency
        vs error (evaluated candidates — representatives and refinement apart —, the ε-Pareto set, the winner, the
        maximum point)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
        scale = 1e6
        rest = [c for c in self.candidates if not c.evaluated]
        ev = [c for c in self.candidates if c.evaluated]
        ax1.scatter([c.params / scale for c in rest], [c.latency_ms for c in rest], s=8, c="lightgrey",
                    label=f"not evaluated ({len(rest)})")
        sc = ax1.scatter([c.params / scale for c in ev], [c.latency_ms for c in ev], s=18,
                         c=[c.error for c in ev], cmap="viridis_r", label=f"evaluated ({len(ev)})")
        if ev:
            fig.colorbar(sc, ax=ax1, label="error surrogate")
        front = list(self.pareto)
        ax1.scatter([c.params / scale for c in front], [c.latency_ms for c in front], s=60, facecolors="none",
                    edgecolors="red", label=f"ε-Pareto set ({len(front)})")
        ax1.set_xscale("log")
        ax1.set_yscale("log")
        ax1.set_xlabel(f"parameters ({self.size}, millions)")
        ax1.set_ylabel("predicted latency (ms)")
        first = [c for c in ev if not c.refined]
        refined = [c for c in ev if c.refined]
        ax2.scatter([c.latency_ms for c in first], [c.error for c in first], s=14, c="grey",
                    label=f"evaluated: representatives ({len(first)})")
        if refined:
            ax2.scatter([c.latency_ms for c in refined], [c.error for c in refined], s=18, marker="^",
                        c="tab:blue", label=f"evaluated: refinement ({len(refined)})")
        fl = sorted(front, key=lambda c: c.latency_ms)
        ax2.scatter([c.latency_ms for c in fl], [c.error for c in fl], s=40, c="red", label="ε-Pareto set")
        for ax in (ax1, ax2):
            m = self.max_point
            if m.evaluated or ax is ax1:
                xy = (m.params / scale, m.latency_ms) if ax is ax1 else (m.latency_ms, m.error)
                ax.scatter(*xy, marker="s", s=80, facecolors="none", edgecolors="black",
                           label=f"maximum point {m.arch}")
            if self.winner:
                w = self.winner
                xy = (w.params / scale, w.latency_ms) if ax is ax1 else (w.latency_ms, w.error)
                ax.scatter(*xy, marker="*", s=250, c="gold", edgecolors="black", label=f"winner {w.arch}", zorder=5)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        ax2.set_xscale("log")
        ax2.set_xlabel("predicted latency (ms)")
        ax2.set_ylabel(f"error ({self.surrogate.name} surrogate)")
        w = self.workload
        fig.suptitle(title or (f"{self.mode} ε={self.epsilon} on {self.space.name} ({len(self.candidates)} "
                               f"candidates, {self.evaluations} evaluations); batch {w.batch_size}×{w.seq_len}, "
                               f"{w.num_threads} thread(s), {self.profile.target.isa}"), fontsize=10)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


# ================================================================================================ evaluation
def _evaluate(surrogate: Surrogate, arch: Architecture) -> tuple[str, Optional[float], str, float]:
    """(status, value, message, seconds): never raises, so one bad candidate cannot stop the search."""
    start = time.perf_counter()
    try:
        value = float(surrogate(arch))
    except Exception as e:  # noqa: BLE001 - recorded and reported per candidate
        return "failed", None, f"{type(e).__name__}: {e}", time.perf_counter() - start
    if math.isnan(value):
        return "nan", value, "the surrogate returned NaN", time.perf_counter() - start
    if math.isinf(value):
        return "failed", None, f"the surrogate returned {value}", time.perf_counter() - start
    return "ok", value, "", time.perf_counter() - start


def _worker_init(threads: int, niceness: int = 0) -> None:
    if niceness:  # heavy surrogate training yields to other jobs; the parent (which times finalists) does not
        os.nice(niceness)
    # before torch is imported (by the surrogate, if at all): passive OpenMP waits on a shared machine (see
    # docs/training.md) and each worker's share of the CPUs
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _worker_evaluate(surrogate: Surrogate, arch: Architecture, threads: int):
    if getattr(surrogate, "threads", "absent") is None:
        surrogate = replace(surrogate, threads=threads)
    return _evaluate(surrogate, arch)


class _Evaluator:
    """Runs a list of evaluations: from the cache, in this process (workers=1) or in a spawn pool."""

    def __init__(self, surrogate: Surrogate, cache: SurrogateCache, workers: int, bar: _Bar,
                 deadline: Optional[float], niceness: int = 0):
        self.surrogate, self.cache, self.workers, self.bar, self.deadline = surrogate, cache, workers, bar, deadline
        self.niceness = niceness
        self.fresh = 0
        self.pool = None
        cpus = _cpus()
        self.threads = max(1, cpus // max(1, workers))

    def close(self, kill: bool = False) -> None:
        """Shut the pool down; kill=True (an interrupt) terminates the workers instead of waiting for them."""
        if self.pool is not None:
            if kill:
                for proc in list(getattr(self.pool, "_processes", {}).values()):
                    proc.terminate()
            self.pool.shutdown(wait=not kill, cancel_futures=True)
            self.pool = None

    def _record(self, c: Candidate, status: str, value: Optional[float], message: str, seconds: float,
                cached: bool) -> None:
        c.seconds = round(seconds, 3)
        if status in ("ok", "nan"):
            if not cached:
                self.cache.put(c.arch, value, seconds)
        c.status = ("cached" if cached else "ok") if status == "ok" else status
        c.error = value if status == "ok" else None
        c.message = message

    def run(self, todo: list[Candidate]) -> None:
        pending = []
        for c in todo:
            hit = self.cache.get(c.arch)
            if hit is not None:
                value = float("nan") if hit["status"] == "nan" else float(hit["error"])
                self._record(c, hit["status"], value, "the surrogate returned NaN (cached)"
                             if hit["status"] == "nan" else "", hit.get("seconds") or 0.0, cached=True)
                self.bar.step(f"{c.arch} (cached)")
            else:
                pending.append(c)
        if not pending:
            return
        if self.workers <= 1:
            for c in pending:
                if self._late():
                    c.status = "skipped (time budget)"
                    continue
                self._record(c, *_evaluate(self.surrogate, c.arch), cached=False)
                self.fresh += 1
                self.bar.step(f"{c.arch} {c.status}")
            return
        self._run_pool(pending)

    def _late(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def _run_pool(self, pending: list[Candidate]) -> None:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        queue = list(pending)
        running: dict[Any, Candidate] = {}
        while queue or running:
            if self.pool is None:
                self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(self.threads, self.niceness))
            while queue and len(running) < self.workers:
                c = queue.pop(0)
                if self._late():
                    c.status = "skipped (time budget)"
                    continue
                running[self.pool.submit(_worker_evaluate, self.surrogate, c.arch, self.threads)] = c
            if not running:
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                c = running.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    result = ("failed", None, "the worker process died (out of memory or killed?)", 0.0)
                    self.pool = None  # a new pool for the rest; the others running in it are resubmitted
                    queue = list(running.values()) + queue
                    running.clear()
                self._record(c, *result, cached=False)
                self.fresh += 1
                self.bar.step(f"{c.arch} {c.status}")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ==================================================================================================== search
def _validate_epsilon(epsilon: float) -> float:
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise SearchError(f"ε must be a number in (0, 1), got {epsilon!r}") from None
    if not (0 < eps < 1) or math.isnan(eps):
        raise SearchError(f"ε must lie strictly between 0 and 1 (the groups' cost ratio is 1 + ε; ε → 0 is "
                          f"exhaustive, ε ≥ 1 groups costs that differ by 2x or more), got {epsilon!r}")
    return eps


# How a group's evaluated member is chosen. Within a group p and l differ by less than a factor 1 + ε, so the
# rule only decides which member is expected to have the lowest error (assumption A_ε, docs/extraction.md).
REPRESENTATIVES = {
    "source-heads": "the head count nearest the maximum point's (more heads on a tie), then most parameters, then "
                    "fastest",
    "largest": "most parameters, then fastest",
}


def _representative_order(rule: str, m_arch: Architecture) -> Callable[["Candidate"], tuple]:
    """Sort key putting a group's representative first under the rule (REPRESENTATIVES).

    "largest": most parameters (the most capacity), then the fastest. The head count changes neither the
    parameter count nor (much) the latency, so under "largest" equal-size variants that differ only in heads tie,
    and the fastest of them, usually the fewest heads, is picked. "source-heads" ranks the head structure first:
    a student whose heads match the source's keeps the source's attention intact under slice-init and
    distillation, and on the real MiniLM surrogate the head count alone changes the loss several-fold at equal
    size, far more than the < ε size difference inside a group (docs/extraction.md, "the real surrogate").
    """
    if rule == "largest":
        return lambda c: (-c.params, c.latency_ms, c.dims)
    a_max = m_arch.heads
    return lambda c: (abs(math.log(c.arch.heads / a_max)), -c.arch.heads, -c.params, c.latency_ms, c.dims)


def _max_point(space: SearchSpace, max_point: Any) -> Architecture:
    if max_point is None:
        m = space.largest()
        return Architecture(*m.tuple, vocab_size=space.vocab_size, max_positions=space.max_positions,
                            type_vocab_size=space.type_vocab_size, head=space.head)
    if isinstance(max_point, str):
        try:
            return Architecture.parse(max_point, vocab_size=space.vocab_size, max_positions=space.max_positions,
                                      type_vocab_size=space.type_vocab_size, head=space.head)
        except ValueError as e:
            raise SearchError(f"maximum point: {e}") from None
    try:
        dims = architecture_dims(max_point)
    except SearchSpaceError as e:
        raise SearchError(f"maximum point: {e}") from None
    return Architecture(*dims, vocab_size=space.vocab_size, max_positions=space.max_positions,
                        type_vocab_size=space.type_vocab_size, head=space.head)


def _within(predicted: float, best: float, factor: float) -> bool:
    """Is a predicted error not ruled out by the group's best measured one: below factor · best (errors ≤ 0, from
    a custom surrogate, compare additively by |best| · (factor − 1))?"""
    return predicted < (best * factor if best > 0 else best + abs(best) * (factor - 1))


def _refinement_record(per_group: int) -> dict[str, Any]:
    """What the refinement did (Extraction.refinement), before it starts."""
    return {"per_group": per_group, "rounds": 0, "evaluations": 0, "improved_groups": 0,
            "improved_beyond_epsilon": 0,
            "model": "ridge regression of ln e on a quadratic in ln D, ln A, ln H, ln I, ln H/A"}


def _refine(members: list[list[Candidate]], per_group: int, order: Callable[[Candidate], tuple],
            ev: "_Evaluator", bar: _Bar, evaluated: list[Candidate], deadline: Optional[float],
            epsilon: float) -> dict[str, Any]:
    """The refinement stage: fit an ErrorModel to every error measured so far; in each group with fewer than
    per_group evaluations, take the unevaluated member it predicts lowest, and evaluate it when its prediction
    p̂ < f · (the group's best measured error), f = min(1 + ε, exp(2σ) / (1 + ε)), σ the model's leave-one-out
    error in ln e: a member can break A_ε only by being a factor 1 + ε better than the group's best, so it is
    skipped when the model rules that out at two standard errors (an accurate model, f < 1, asks for a predicted
    improvement; a rough one for a prediction not above 1 + ε times the best). Refit and repeat while any group
    qualifies. At most per_group evaluations per group, so the bound is per_group · groups + 1."""
    out = _refinement_record(per_group)
    if per_group <= 1:
        return out
    def best(group: list[Candidate]) -> Optional[float]:
        return min((c.error for c in group if c.evaluated), default=None)

    before = [best(g) for g in members]
    while deadline is None or time.monotonic() <= deadline:
        done = [c for g in members for c in g if c.evaluated]
        if len(done) < 3:  # nothing to learn from (a tiny space, or most evaluations failed)
            break
        model = ErrorModel().fit([c.arch for c in done], [c.error for c in done])
        # evaluate unless the model rules out, at two leave-one-out standard errors, that the member beats the
        # group's best by the factor 1 + ε (only then can it break A_ε); never when predicted 1 + ε above it
        fac = min(1 + epsilon, math.exp(min(2 * model.spread, 50.0)) / (1 + epsilon)) if model.log else 1 + epsilon
        out["loo_spread"] = model.spread if math.isfinite(model.spread) else None
        out["factor"] = fac
        todo = []
        for g in members:
            tried = sum(c.status != "not evaluated" for c in g)
            ok = [c.error for c in g if c.evaluated]
            rest = [c for c in g if c.status == "not evaluated"]
            if tried >= per_group or not ok or not rest:
                continue
            predicted, _, x = min((model.predict(c.arch), order(c), c) for c in rest)
            if _within(predicted, min(ok), fac):
                todo.append(x)
        if not todo:
            break
        out["rounds"] += 1
        out["evaluations"] += len(todo)
        for x in todo:
            x.refined = True
        bar.extend(len(todo))
        evaluated += todo
        ev.run(todo)
    for g, b in zip(members, before):
        now = best(g)
        if b is not None and now is not None and now < b:
            out["improved_groups"] += 1
            out["improved_beyond_epsilon"] += now * (1 + epsilon) < b
    return out


def _candidates(space: SearchSpace, m: Architecture) -> list[Architecture]:
    """The space's architectures below the maximum point (D, A, H, I each ≤), plus the maximum point itself."""
    below = []
    for x in space.architectures():
        d, a, h, i = x.tuple
        if d <= m.layers and a <= m.heads and h <= m.hidden and i <= m.intermediate:
            below.append(Architecture(d, a, h, i, vocab_size=space.vocab_size, max_positions=space.max_positions,
                                      type_vocab_size=space.type_vocab_size, head=space.head))
    if not below:
        raise SearchError(f"the search space {space.name!r} has no architecture below the maximum point {m} "
                          f"(every candidate must have D, A, H, I no larger than it): {space.describe()}")
    if m.tuple not in {x.tuple for x in below}:
        below.append(m)
    return below


def extract(space: "SearchSpace | str", surrogate: "Surrogate | str", profile: Any, *, workload: Any = None,
            epsilon: float = 0.1, max_point: Any = None, size: str = "effective", exhaustive: bool = False,
            cache_dir: Optional[str | os.PathLike] = None, workers: Optional[int] = None,
            tau: Optional[float] = None,
            time_budget: Optional[float] = None, max_fallbacks: int = 2, allow_extrapolation: bool = False,
            worker_nice: int = 0, progress: bool = True, representative: str = "source-heads",
            per_group: int = 3) -> Extraction:
    """Optimal sub-architecture extraction over (p, l, e) by the FPTAS (or exhaustively).

    space: a SearchSpace or a name/file; surrogate: a Surrogate or a name in SURROGATES; profile: a Profile (see
    bortengine.profiler.load_profile) covering the workload (default: batch 1 × 128 tokens, all CPUs).
    max_point: the source architecture (an Architecture, "D,A,H,I" or a tuple; default: the space's largest);
    candidates are the space's architectures no larger than it in each of D, A, H, I, plus it.
    size: "effective" (without embeddings, the paper's) or "total" parameters as the size objective.
    exhaustive: evaluate every candidate (for checking the FPTAS). tau: the W-coefficient's error unit (default
    surrogate.error_scale). time_budget: seconds after which no new evaluation starts (the report says which
    groups were skipped). max_fallbacks: per group, how many further members are tried when the representative's
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
    """
    from bortengine.profiling import profiler as _profiler

    start = time.monotonic()
    eps = _validate_epsilon(epsilon)
    if size not in SIZES:
        raise SearchError(f"size must be one of {SIZES}, got {size!r}")
    if representative not in REPRESENTATIVES:
        raise SearchError(f"representative must be one of {sorted(REPRESENTATIVES)}, got {representative!r}")
    if isinstance(per_group, bool) or not isinstance(per_group, int) or per_group < 1:
        raise SearchError(f"per_group (surrogate evaluations per group) must be a positive integer (1: the plain "
                          f"FPTAS, one representative per group), got {per_group!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SearchError(f"workers must be a positive integer, got {workers!r}")
    try:
        space = SearchSpace.resolve(space)
    except SearchSpaceError as e:
        raise SearchError(str(e)) from None
    surrogate = resolve_surrogate(surrogate)
    if workers is None:
        workers = _cpus() if surrogate.expensive else 1
    tau = float(surrogate.error_scale if tau is None else tau)
    if not tau > 0:
        raise SearchError(f"tau (the W-coefficient's error unit) must be positive, got {tau}")
    if not isinstance(profile, _profiler.Profile):
        raise SearchError(f"profile must be a bortengine.profiler.Profile (load_profile(path)), got "
                          f"{type(profile).__name__}")
    workload = workload or _profiler.Workload(num_threads=_cpus())
    m_arch = _max_point(space, max_point)
    archs = _candidates(space, m_arch)
    if workload.seq_len > space.max_positions:
        raise SearchError(f"the workload's {workload.seq_len} tokens exceed the space's max_positions="
                          f"{space.max_positions}")

    # -- the cheap objectives: exact sizes, latency predicted from the profile --------------------------------
    try:
        model = profile.model(workload)
    except _profiler.ProfileError as e:
        raise SearchError(f"the profile does not cover this search: {e}") from None
    note = _profiler._calibration_note(getattr(model, "wp", None) and model.wp.calibration or {})
    if note:  # the profiler's own check of its calibration (both constants are costs, empty calls take µs)
        warnings.warn(f"the profile {profile.path or ''}: {note}", RuntimeWarning, stacklevel=2)
    cands: list[Candidate] = []
    outside: list[str] = []
    for a in archs:
        try:
            pred = model.predict(a)
        except _profiler.ProfileError as e:
            raise SearchError(f"the profile cannot predict {a}: {e}; profile the space with: "
                              f"bortengine profile --space {space.name} --batch {workload.batch_size} --seq "
                              f"{workload.seq_len} --threads {workload.num_threads}") from None
        if pred.extrapolated:
            outside.append(f"{a} ({', '.join(pred.extrapolated[:2])})")
        p = a.parameters(embeddings=size == "total")
        cands.append(Candidate(a, p, a.parameters(), pred.total_ms))
    if outside and not allow_extrapolation:
        raise SearchError(
            f"the profile does not cover the space: {len(outside)} of {len(cands)} candidates need op shapes "
            f"outside its measured range, e.g. {'; '.join(outside[:3])}. Profile this space for this workload: "
            f"bortengine profile --space {space.name} --batch {workload.batch_size} --seq {workload.seq_len} "
            f"--threads {workload.num_threads} --out {profile.path or 'PROFILE'} (or allow extrapolation)")
    bad = [c for c in cands if not (c.latency_ms > 0 and math.isfinite(c.latency_ms))]
    if bad:
        raise SearchError(f"the profile predicts a non-positive latency for {bad[0].arch} ({bad[0].latency_ms} "
                          f"ms): it is damaged or contradictory; re-profile")
    m = next(c for c in cands if c.arch.tuple == m_arch.tuple)

    # -- groups: cells of a (1+ε) log grid over (p, l) ------------------------------------------------------
    p_min, p_max = min(c.params for c in cands), max(c.params for c in cands)
    l_min, l_max = min(c.latency_ms for c in cands), max(c.latency_ms for c in cands)
    lg = math.log1p(eps)
    cells: dict[tuple[int, int], list[Candidate]] = {}
    for c in cands:
        key = (math.floor(math.log(c.params / p_min) / lg + 1e-9), math.floor(math.log(c.latency_ms / l_min) / lg
                                                                             + 1e-9))
        cells.setdefault(key, []).append(c)
    members: list[list[Candidate]] = []
    order = _representative_order(representative, m_arch)
    for gid, key in enumerate(sorted(cells)):
        group = sorted(cells[key], key=order)  # the representative first
        for c in group:
            c.group = gid
        members.append(group)
    bound = group_bound((p_min, p_max), (l_min, l_max), eps)
    if len(members) > bound["groups"]:  # the check the docstring promises: cannot happen unless the grid is wrong
        raise AssertionError(f"{len(members)} groups exceed the bound {bound['groups']}")
    bound["per_group"] = 1 if exhaustive else per_group
    bound["polynomial"] = bound["per_group"] * bound["groups"] + 1  # K · n_p · n_l + 1, whatever the space's size
    bound["evaluations"] = len(cands) if exhaustive else min(len(cands), bound["polynomial"])

    # -- the error surrogate: representatives (or everyone), in parallel, cached -------------------------------
    cache = SurrogateCache(cache_dir or default_cache_dir(), surrogate)
    deadline = start + time_budget if time_budget else None
    if exhaustive:
        first = list(cands)
    else:
        first = [g[0] for g in members]
        if m not in first:
            first.append(m)
    for g in members:
        g[0].representative = True
    bar = _Bar(len(first), f"surrogate {surrogate.name} {'exhaustive' if exhaustive else f'ε={eps}'}", progress)
    ev = _Evaluator(surrogate, cache, workers, bar, deadline, worker_nice)
    evaluated: list[Candidate] = list(first)
    refinement = _refinement_record(1 if exhaustive else per_group)
    try:
        ev.run(first)
        if not exhaustive:  # a group whose representative failed: try its next members
            for round_ in range(max_fallbacks):
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
                bar.extend(len(retry))
                evaluated += retry
                ev.run(retry)
            refinement = _refine(members, per_group, order, ev, bar, evaluated, deadline, eps)
    except KeyboardInterrupt:
        ev.close(kill=True)
        if bar.enabled:
            sys.stderr.write("\n")
        raise SearchInterrupted(cache.path, sum(c.status != "not evaluated" for c in evaluated),
                                len(evaluated)) from None
    finally:
        ev.close()
    bar.show("done", final=True)
    failures = [{"arch": list(c.dims), "group": c.group, "status": c.status, "message": c.message}
                for c in cands if c.status in ("failed", "nan")]
    complete = not any(c.status == "skipped (time budget)" for c in cands)
    done = sum(c.status not in ("not evaluated", "skipped (time budget)") for c in cands)
    if not exhaustive and done > bound["evaluations"] + len(failures):  # the promised bound, checked
        raise AssertionError(f"{done} surrogate evaluations exceed the bound {bound['evaluations']} + "
                             f"{len(failures)} fallbacks")
    if not m.evaluated:
        warnings.warn(f"the maximum point {m.arch} has no error ({m.status}: {m.message}); the W-coefficient and "
                      f"the winner are undefined", RuntimeWarning, stacklevel=2)
    return Extraction(representative=representative, space=space, candidates=cands, epsilon=eps,
                      mode="exhaustive" if exhaustive else "fptas",
                      size=size, max_point=m, surrogate=surrogate, tau=tau, workload=workload, profile=profile,
                      bound=bound, groups=len(members), refinement=refinement,
                      evaluations=done,
                      fresh_evaluations=ev.fresh, failures=failures, complete=complete,
                      seconds=time.monotonic() - start, cache_path=str(cache.path))


# ============================================================================================== verification
def coverage(reference: Extraction, approx: Extraction, epsilon: Optional[float] = None) -> dict[str, Any]:
    """Is every point of reference's Pareto front (1+ε)-covered by approx's set in all three objectives?

    Returns the counts, the uncovered points, the smallest factor that covers every point, and whether each
    uncovered point lies in a group that violates assumption A_ε (the theorem says it must).
    """
    eps = approx.epsilon if epsilon is None else epsilon
    violations = assumption_violations(approx, reference)
    bad_groups = {v["group"] for v in violations}
    by_dims = {c.dims: c for c in approx.candidates}
    uncovered, worst = [], 1.0
    for x in reference.pareto:
        y = approx.pareto.covers(x.point(), 1 + eps)
        # the smallest factor at which some member covers x
        need = min((max(a / b if b > 0 else (1.0 if a <= b else math.inf) for a, b in zip(c.point(), x.point()))
                    for c in approx.pareto), default=math.inf)
        worst = max(worst, need)
        if y is None:
            g = by_dims[x.dims].group
            uncovered.append({"arch": list(x.dims), "point": list(x.point()), "group": g, "factor_needed": need,
                              "group_violates_assumption": g in bad_groups})
    return {"epsilon": eps, "reference_front": len(reference.pareto), "approx_set": len(approx.pareto),
            "covered": len(reference.pareto) - len(uncovered), "uncovered": uncovered, "worst_factor": worst,
            "assumption_violations": violations,
            "theorem_holds": all(u["group_violates_assumption"] for u in uncovered)}


def assumption_violations(approx: Extraction, reference: Extraction) -> list[dict[str, Any]]:
    """Groups of approx where A_ε fails: a member x with e(r) > (1+ε) e(x), r the group's evaluated
    representative, errors from reference (an exhaustive run of the same space and surrogate)."""
    errors = {c.dims: c.error for c in reference.candidates}
    eps = approx.epsilon
    groups: dict[int, list[Candidate]] = {}
    for c in approx.candidates:
        groups.setdefault(c.group, []).append(c)
    out = []
    for gid, g in sorted(groups.items()):
        reps = [c for c in g if c.evaluated]  # representatives (and the maximum point)
        if not reps:
            continue
        r = min(reps, key=lambda c: c.error)
        for x in g:
            ex = errors.get(x.dims)
            if ex is None or x is r:
                continue
            if r.error > (1 + eps) * ex * (1 + 1e-12):
                out.append({"group": gid, "representative": list(r.dims), "member": list(x.dims),
                            "e_rep": r.error, "e_member": ex, "ratio": r.error / ex if ex > 0 else math.inf})
    return out


# ======================================================================================= finalists on the engine
def measure_finalists(result: Extraction, count: int = 5, quick: bool = False, progress: bool = True
                      ) -> dict[str, Any]:
    """Build random-weight engine encoders of the winner and the next best by W (count in all; the maximum
    point fills in when fewer), time them under the workload (profiler.validate: the profiler's own timing,
    least-disturbed block), and store measured_ms on them. Returns the rows and the winner's relative error."""
    from bortengine.profiling import profiler as _profiler

    ranked = sorted((c for c in result.pareto if c.w is not None), key=lambda c: -c.w)[:max(1, count)]
    if len(ranked) < 2:
        ranked.append(result.max_point if result.max_point not in ranked else
                      next(c for c in result.candidates if c not in ranked))
    report = _profiler.validate(result.profile, result.space, result.workload, quick=quick, progress=progress,
                                architectures=[c.arch for c in ranked])
    rows = []
    for c, row in zip(ranked, report.rows):
        c.measured_ms = row.measured_ms
        rows.append({"arch": list(c.dims), "predicted_ms": row.predicted_ms, "measured_ms": row.measured_ms,
                     "relative_error": row.predicted_ms / row.measured_ms - 1, "spread": row.spread,
                     "noisy": row.noisy, "winner": c is result.winner})
    out = {"rows": rows, "conditions": report.conditions, "mode": "quick" if quick else "full"}
    if result.winner is not None and result.winner.measured_ms:
        w = result.winner
        out["winner_relative_error"] = w.latency_ms / w.measured_ms - 1
        out["winner_within_10_percent"] = abs(out["winner_relative_error"]) <= 0.10
    result.measurement = out
    return out


# ============================================================================================== command line
def add_extract_parser(sub) -> None:
    """`bortengine extract`: registered by bortengine.cli."""
    from bortengine.profiling import DTYPES

    p = sub.add_parser("extract", help="optimal sub-architecture extraction: the FPTAS over (size, latency, "
                                       "error) on a CPU profile")
    p.add_argument("--space", default="minilm", help="search space: bort, minilm, or a JSON/YAML file")
    p.add_argument("--max-point", default=None, metavar="D,A,H,I",
                   help="the source architecture (default: the space's largest)")
    p.add_argument("--profile", default=None, metavar="PATH",
                   help="CPU profile (bortengine profile --out PATH; default: this CPU's profile from the cache "
                        "directory, else the shipped one for this CPU)")
    p.add_argument("--batch", type=int, default=1, help="workload: sequences per call (default 1)")
    p.add_argument("--seq", type=int, default=128, help="workload: tokens per sequence (default 128)")
    p.add_argument("--threads", type=int, default=None, help="workload: threads (default: all CPUs)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="workload: the engine path the winner will be served on (the profile must cover it)")
    p.add_argument("--eps", type=float, default=0.1, help="ε in (0, 1): groups' cost ratio 1 + ε (default 0.1)")
    p.add_argument("--representative", choices=sorted(REPRESENTATIVES), default="source-heads",
                   help="which member of a group is evaluated: source-heads (default: the head count nearest the "
                        "maximum point's, then most parameters) or largest (most parameters, then fastest)")
    p.add_argument("--per-group", type=int, default=3, dest="per_group", metavar="K",
                   help="at most K surrogate evaluations per group (default 3): after the representatives, the "
                        "members an error model fitted to the measured errors predicts best in their group, unless "
                        "it rules out that they beat the group's best by the factor 1+ε; 1 = the plain FPTAS "
                        "(bound K x groups + 1)")
    p.add_argument("--exhaustive", action="store_true", help="evaluate every candidate (to check the FPTAS)")
    p.add_argument("--verify", action="store_true",
                   help="also run the exhaustive search (cached) and report the (1+ε)-coverage of its front")
    p.add_argument("--surrogate", default="distill", choices=sorted(SURROGATES), help="error surrogate")
    p.add_argument("--steps", type=int, default=None, help="surrogate training steps")
    p.add_argument("--surrogate-batch", type=int, default=None, dest="surrogate_batch",
                   help="surrogate batch size")
    p.add_argument("--max-length", type=int, default=None, help="surrogate sequence length (distill)")
    p.add_argument("--eval-sentences", type=int, default=None, help="surrogate evaluation sentences (distill)")
    p.add_argument("--task", default=None, help="finetune surrogate task: rt or imdb")
    p.add_argument("--teacher", default=None, help="teacher directory (default all-MiniLM-L6-v2)")
    p.add_argument("--seed", type=int, default=None, help="surrogate seed")
    p.add_argument("--size", default="effective", choices=SIZES, help="size objective (default effective)")
    p.add_argument("--tau", type=float, default=None, help="W-coefficient error unit (default per surrogate)")
    p.add_argument("--workers", type=int, default=None,
                   help="surrogate worker processes (default: one per CPU for distill and finetune, 1 for analytic)")
    p.add_argument("--worker-nice", type=int, default=0, help="niceness of the worker processes (default 0)")
    p.add_argument("--cache", default=None, metavar="DIR", help="surrogate cache directory")
    p.add_argument("--time-budget", default=None, help="no new evaluation after this (1800, 30m, 1.5h)")
    p.add_argument("--measure", type=int, default=3, help="finalists to time on the engine (0: none)")
    p.add_argument("--quick-measure", action="store_true", help="fewer repeats when timing the finalists")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="accept latencies extrapolated beyond the profile's measured shapes")
    p.add_argument("--out", required=True, metavar="DIR", help="writes report.json, pareto.png, winner.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _seconds(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    t = str(text).strip().lower()
    try:
        for suffix, mult in (("h", 3600), ("m", 60), ("s", 1)):
            if t.endswith(suffix):
                return float(t[:-1]) * mult
        return float(t)
    except ValueError:
        raise SearchError(f"--time-budget takes 1800, 30m or 1.5h, got {text!r}") from None


def _interrupt_on_sigterm() -> None:
    """A kill (SIGTERM) stops like Ctrl-C: workers terminated, cache intact, a message saying how to resume.
    (Background jobs of a non-interactive shell ignore SIGINT, so kill is how such runs get stopped.)"""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def run_extract(args) -> int:
    from bortengine.profiling import profiler as _profiler

    _interrupt_on_sigterm()

    prof = _profiler.load_profile(args.profile, check_target=True)
    workload = _profiler.Workload(args.batch, args.seq, args.threads or _cpus(), args.dtype)
    surrogate = resolve_surrogate(args.surrogate, steps=args.steps, batch_size=args.surrogate_batch,
                                  max_length=args.max_length, eval_sentences=args.eval_sentences, task=args.task,
                                  teacher=args.teacher, seed=args.seed)
    out = Path(args.out)
    kw = dict(profile=prof, workload=workload, epsilon=args.eps, max_point=args.max_point, size=args.size,
              cache_dir=args.cache, workers=args.workers, tau=args.tau, time_budget=_seconds(args.time_budget),
              allow_extrapolation=args.allow_extrapolation, worker_nice=args.worker_nice,
              progress=not args.no_progress, representative=args.representative, per_group=args.per_group)
    space = SearchSpace.resolve(args.space)
    print(f"extract: {space.describe()}\nworkload: {workload}; profile {prof.path} ({prof.target.isa})\n"
          f"surrogate: {surrogate.describe()}; ε = {args.eps}; {'exhaustive' if args.exhaustive else 'FPTAS'}",
          flush=True)
    try:
        result = extract(space, surrogate, exhaustive=args.exhaustive, **kw)
        if args.verify and not args.exhaustive:
            reference = extract(space, surrogate, exhaustive=True, **kw)
            result.verification = coverage(reference, result)
            result.verification["exhaustive_evaluations"] = reference.evaluations
            result.verification["exhaustive_winner"] = list(reference.winner.dims) if reference.winner else None
    except SearchInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    s = result.summary()
    print(f"{len(result.candidates)} candidates, {result.groups} groups (bound {result.bound['groups']} = "
          f"{result.bound['n_p']} x {result.bound['n_l']}), {result.evaluations} surrogate evaluations "
          f"(bound {result.bound['evaluations']} = min(space, K·n_p·n_l + 1 = {result.bound['polynomial']}); "
          f"{result.fresh_evaluations} run now, the rest cached; "
          f"{len(result.failures)} failed or NaN), "
          f"{len(result.pareto)} in the ε-Pareto set, {result.seconds:.0f} s"
          + ("" if result.complete else "; INCOMPLETE: the time budget stopped the evaluations"))
    ref = result.refinement or {}
    if ref.get("per_group", 1) > 1:
        print(f"refinement: {ref['evaluations']} of those evaluations in {ref['rounds']} round(s), chosen by the error "
              f"model; a better member found in {ref['improved_groups']} group(s), "
              f"{ref['improved_beyond_epsilon']} of them better by more than a factor 1 + ε")
    for f in result.failures:
        print(f"  {f['status']}: ⟨{', '.join(map(str, f['arch']))}⟩ group {f['group']}: {f['message']}")
    if args.measure and result.winner is not None:
        m = measure_finalists(result, args.measure, quick=args.quick_measure, progress=not args.no_progress)
        for row in m["rows"]:
            print(f"  measured ⟨{', '.join(map(str, row['arch']))}⟩: predicted {row['predicted_ms']:.3f} ms, "
                  f"measured {row['measured_ms']:.3f} ms ({100 * row['relative_error']:+.1f}%)"
                  + (" [winner]" if row["winner"] else ""))
    if result.verification:
        v = result.verification
        print(f"verification against the exhaustive front ({v['reference_front']} points, "
              f"{v['exhaustive_evaluations']} evaluations): {v['covered']} (1+ε)-covered, "
              f"{len(v['uncovered'])} not; worst factor {v['worst_factor']:.4f}; {len(v['assumption_violations'])} "
              f"A_ε violations; theorem {'holds' if v['theorem_holds'] else 'VIOLATED'}")
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "report.json")
    result.plot(out / "pareto.png")
    if result.winner is not None:
        (out / "winner.json").write_text(json.dumps(result.winner.arch.to_dict(), indent=1) + "\n")
        w = s["winner"]
        print(f"winner {result.winner.arch}: {w['params']:,} parameters, {w['latency_ms']:.3f} ms predicted, "
              f"error {w['error']:.4f}, W = {w['w']:.3f} (maximum point {result.max_point.arch}: "
              f"{result.max_point.latency_ms:.3f} ms, error {result.max_point.error})")
        print(f"train it: {w['pretrain']}")
    print(f"wrote {out / 'report.json'}, {out / 'pareto.png'}" + (", winner.json" if result.winner else ""))
    return 0
