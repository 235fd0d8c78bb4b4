"""Search: optimal sub-architecture extraction, the FPTAS over (parameters, profiled latency, error surrogate).

`extract(space, surrogate, profile)` returns an Extraction: the ε-approximate Pareto set and one winner by the
W-coefficient. See docs/extraction.md.
"""
from __future__ import annotations

from bortengine.search.fptas import (SURROGATES, AnalyticSurrogate, Candidate, DistillationSurrogate, ErrorModel,
                                     Extraction, FinetuneSurrogate, ParetoSet, SearchError, SearchInterrupted,
                                     Surrogate, SurrogateCache, add_extract_parser, assumption_violations, coverage,
                                     default_cache_dir, extract, group_bound, measure_finalists, pareto_front,
                                     resolve_surrogate, run_extract, w_coefficient)

__all__ = [
    "SearchError", "SearchInterrupted", "Surrogate", "AnalyticSurrogate", "DistillationSurrogate",
    "FinetuneSurrogate", "SurrogateCache", "Candidate", "ParetoSet", "Extraction", "extract", "pareto_front",
    "group_bound", "w_coefficient", "coverage", "assumption_violations", "resolve_surrogate", "ErrorModel",
    "default_cache_dir", "measure_finalists", "SURROGATES",
]
