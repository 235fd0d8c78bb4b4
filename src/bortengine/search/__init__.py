"""Search: optimal sub-architecture extraction, the FPTAS over (parameters, profiled latency, error surrogate).

`extract(space, surrogate, profile)` returns an Extraction: the ε-approximate Pareto set and one winner by the
W-coefficient; `coverage` checks it against an exhaustive run, `measure_finalists` times the best on the engine.
The surrogate evaluations run on an Executor: LocalExecutor (worker processes) or RayExecutor (a Ray cluster,
docs/scale-out.md); Agora's fine-tunes of a round, on a settings runner: in process, or RaySettingsRunner
(settings_runner picks one by the executor's name). See docs/extraction.md.
"""
from __future__ import annotations

from bortengine.search.cache import SurrogateCache, default_cache_dir
from bortengine.search.error_model import ErrorModel
from bortengine.search.errors import LatencyLimitError, SearchError, SearchInterrupted
from bortengine.search.finalists import finalists_seconds, measure_finalists
from bortengine.search.executor import (EXECUTORS, SCRIPT_GUARD, Evaluation, Executor, LocalExecutor,
                                       in_worker_bootstrap, unguarded_script_call)
from bortengine.search.fptas import SIZES, extract
from bortengine.search.grouping import REPRESENTATIVES, group_bound
from bortengine.search.pareto import Candidate, ParetoSet, pareto_front, w_coefficient
from bortengine.search.ray_executor import RayExecutor, RaySettingsRunner, settings_runner
from bortengine.search.reranking import rerank
from bortengine.search.result import Extraction
from bortengine.search.surrogates import (SURROGATES, AnalyticSurrogate, DistilFinetuneSurrogate,
                                          DistillationSurrogate, FinetuneSurrogate, Surrogate, resolve_surrogate)
from bortengine.search.verification import assumption_violations, coverage

__all__ = [
    "SearchError", "LatencyLimitError", "SearchInterrupted", "Surrogate", "AnalyticSurrogate",
    "DistillationSurrogate", "FinetuneSurrogate", "DistilFinetuneSurrogate", "SurrogateCache", "Candidate",
    "ParetoSet", "Extraction",
    "extract", "rerank", "pareto_front",
    "group_bound", "w_coefficient", "coverage", "assumption_violations", "resolve_surrogate", "ErrorModel",
    "default_cache_dir", "measure_finalists", "finalists_seconds", "SURROGATES", "REPRESENTATIVES", "SIZES",
    "EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "Evaluation", "RaySettingsRunner", "settings_runner",
    "SCRIPT_GUARD", "in_worker_bootstrap", "unguarded_script_call",
]
