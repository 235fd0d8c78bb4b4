"""Checking the FPTAS against an exhaustive run of the same space and surrogate: is every exhaustive Pareto point
(1 + ε)-covered by the approximate set, and where does assumption A_ε fail (the theorem of docs/extraction.md
says every uncovered point lies in such a group)."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from bortengine.search.pareto import Candidate, ParetoSet
from bortengine.search.result import Extraction

__all__ = ["coverage", "assumption_violations"]


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
        need = _factor_needed(approx.pareto, x.point())
        worst = max(worst, need)
        if approx.pareto.covers(x.point(), 1 + eps) is None:
            g = by_dims[x.dims].group
            uncovered.append({"arch": list(x.dims), "point": list(x.point()), "group": g, "factor_needed": need,
                              "group_violates_assumption": g in bad_groups})
    return {"epsilon": eps, "reference_front": len(reference.pareto), "approx_set": len(approx.pareto),
            "covered": len(reference.pareto) - len(uncovered), "uncovered": uncovered, "worst_factor": worst,
            "assumption_violations": violations,
            "theorem_holds": all(u["group_violates_assumption"] for u in uncovered)}


def _factor_needed(pareto: ParetoSet, point: Sequence[float]) -> float:
    """The smallest factor at which some member of the set covers the point (inf for an empty set)."""
    return min((max(a / b if b > 0 else (1.0 if a <= b else math.inf) for a, b in zip(c.point(), point))
                for c in pareto), default=math.inf)


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
