"""The winner and the next best by W built as random-weight engine encoders and timed under the workload, so a
report shows how far the profile's predicted latencies are from measured ones."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from bortengine.profiling import Profile, Workload, validate, validation_seconds
from bortengine.search.pareto import Candidate
from bortengine.search.result import Extraction

__all__ = ["measure_finalists", "finalists_seconds"]


def finalists_seconds(profile: Profile, workload: Workload, architectures: Sequence[Any], quick: bool = False
                      ) -> float:
    """How long timing these architectures takes (profiling.validation_seconds, at the profile's predicted
    latencies; retries on a busy machine not counted)."""
    return validation_seconds(profile.model(workload), architectures, quick)


def measure_finalists(result: Extraction, count: int = 5, quick: bool = False, progress: bool = True,
                      time_left: Optional[float] = None) -> Optional[dict[str, Any]]:
    """Build random-weight engine encoders of the winner and the next best by W (count in all; the maximum
    point fills in when fewer), time them under the workload (profiling.validate: the profiler's own timing,
    least-disturbed block), and store measured_ms on them. Returns the rows and the winner's relative error.
    time_left: seconds the timing must fit in (a time budget's rest): quick mode when the full one would not fit,
    nothing (None) when neither would; the result's mode says which ran."""
    ranked = _finalists(result, count)
    archs, retries = [c.arch for c in ranked], None
    if time_left is not None:
        if not quick and finalists_seconds(result.profile, result.workload, archs) > time_left:
            quick = True
        spare = time_left - finalists_seconds(result.profile, result.workload, archs, quick)
        if spare < 0:
            return None
        retries = spare      # retries of blocks a busy machine disturbed: only in the time to spare
    report = validate(result.profile, result.space, result.workload, quick=quick, progress=progress,
                      architectures=archs, retry_budget_s=retries)
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


def _finalists(result: Extraction, count: int) -> list[Candidate]:
    """The ε-Pareto set's best `count` by W, at least two: the maximum point (or another candidate) fills in."""
    ranked = sorted((c for c in result.pareto if c.w is not None), key=lambda c: -c.w)[:max(1, count)]
    if len(ranked) < 2:
        ranked.append(result.max_point if result.max_point not in ranked else
                      next(c for c in result.candidates if c not in ranked))
    return ranked
