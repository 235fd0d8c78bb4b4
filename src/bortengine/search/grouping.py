"""The FPTAS's groups: cells of a (1 + ε) logarithmic grid over (p, l), their guaranteed number (the bound), and
the rule that orders each group so its representative, the member evaluated first, comes first."""
from __future__ import annotations

import math
from typing import Any, Callable

from bortengine.architecture import Architecture
from bortengine.search.pareto import Candidate

__all__ = ["REPRESENTATIVES", "representative_order", "group_bound", "group", "evaluation_bound"]

# How a group's evaluated member is chosen. Within a group p and l differ by less than a factor 1 + ε, so the
# rule only decides which member is expected to have the lowest error (assumption A_ε, docs/extraction.md).
REPRESENTATIVES = {
    "source-heads": "the head count nearest the maximum point's (more heads on a tie), then most parameters, then "
                    "fastest",
    "largest": "most parameters, then fastest",
}


def representative_order(rule: str, m_arch: Architecture) -> Callable[[Candidate], tuple]:
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


def group_bound(p_range: tuple[float, float], l_range: tuple[float, float], epsilon: float) -> dict[str, Any]:
    """The guaranteed number of groups: n_p · n_l with n_x = ⌊ln(max/min) / ln(1+ε)⌋ + 1, and its closed form
    (1 + (1+ε) ln ρ_p / ε)(1 + (1+ε) ln ρ_l / ε) = O(ln ρ_p ln ρ_l / ε²)."""
    lg = math.log1p(epsilon)
    rho_p, rho_l = p_range[1] / p_range[0], l_range[1] / l_range[0]
    n_p = math.floor(math.log(rho_p) / lg + 1e-9) + 1
    n_l = math.floor(math.log(rho_l) / lg + 1e-9) + 1
    closed = (1 + (1 + epsilon) * math.log(rho_p) / epsilon) * (1 + (1 + epsilon) * math.log(rho_l) / epsilon)
    return {"n_p": n_p, "n_l": n_l, "groups": n_p * n_l, "closed_form": closed, "rho_p": rho_p, "rho_l": rho_l}


def group(cands: list[Candidate], epsilon: float, order: Callable[[Candidate], tuple]) -> list[list[Candidate]]:
    """The groups, cell(ξ) = (⌊log_{1+ε}(p/p_min)⌋, ⌊log_{1+ε}(l/l_min)⌋) in the cells' order, each sorted by
    `order` (its representative first); sets c.group."""
    p_min = min(c.params for c in cands)
    l_min = min(c.latency_ms for c in cands)
    lg = math.log1p(epsilon)
    cells: dict[tuple[int, int], list[Candidate]] = {}
    for c in cands:
        key = (math.floor(math.log(c.params / p_min) / lg + 1e-9), math.floor(math.log(c.latency_ms / l_min) / lg
                                                                             + 1e-9))
        cells.setdefault(key, []).append(c)
    members: list[list[Candidate]] = []
    for gid, key in enumerate(sorted(cells)):
        members.append(sorted(cells[key], key=order))  # the representative first
        for c in members[-1]:
            c.group = gid
    return members


def evaluation_bound(cands: list[Candidate], groups: int, epsilon: float, per_group: int, exhaustive: bool
                     ) -> dict[str, Any]:
    """group_bound over the candidates' (p, l) ranges, checked against the groups found, with the evaluations it
    allows: per_group · n_p · n_l + 1 ("polynomial", whatever the space's size), or every candidate."""
    bound = group_bound((min(c.params for c in cands), max(c.params for c in cands)),
                        (min(c.latency_ms for c in cands), max(c.latency_ms for c in cands)), epsilon)
    if groups > bound["groups"]:  # the check the FPTAS promises: cannot happen unless the grid is wrong
        raise AssertionError(f"{groups} groups exceed the bound {bound['groups']}")
    bound["per_group"] = 1 if exhaustive else per_group
    bound["polynomial"] = bound["per_group"] * bound["groups"] + 1  # K · n_p · n_l + 1, whatever the space's size
    bound["evaluations"] = len(cands) if exhaustive else min(len(cands), bound["polynomial"])
    return bound
