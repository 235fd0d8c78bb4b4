"""Candidates and what is chosen among them: dominance over (p, l, e), the Pareto front, the ε-Pareto set, and
the W-coefficient that picks one winner from the front."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from bortengine.architecture import Architecture

__all__ = ["Candidate", "ParetoSet", "pareto_front", "w_coefficient", "select"]


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
    node: Optional[str] = None         # where the surrogate ran: "local", a Ray node id; None: not run (or unknown)
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
                "node": self.node, "group": self.group, "representative": self.representative, "refined": self.refined,
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


def select(candidates: list[Candidate], max_point: Candidate, tau: float, epsilon: float,
           latency_limit_ms: Optional[float] = None) -> tuple[ParetoSet, Optional[Candidate]]:
    """The last step of the search: marks the evaluated candidates' Pareto front (c.pareto) and their
    W-coefficients (c.w, when the maximum point has an error), and returns the front as a ParetoSet with the
    winner, the front's highest W (the smaller on a tie; None without W). With a latency limit the front and the
    winner are of the candidates predicted within it: the maximum point, kept as the W-coefficient's reference,
    is not one of them when it is slower (it won whenever no faster candidate had a positive W)."""
    evaluated = [c for c in candidates if c.evaluated
                 and (latency_limit_ms is None or c.latency_ms <= latency_limit_ms)]
    front = [evaluated[i] for i in pareto_front([c.point() for c in evaluated])]
    for c in candidates:
        c.pareto = False
        c.w = w_coefficient(c, max_point, tau) if c.evaluated and max_point.evaluated else None
    for c in front:
        c.pareto = True
    scored = [c for c in front if c.w is not None]
    winner = max(scored, key=lambda c: (c.w, -c.params)) if scored else None
    return ParetoSet(sorted(front, key=lambda c: (c.params, c.latency_ms)), epsilon), winner
