"""The refinement after the representatives: an ErrorModel fitted to the errors measured so far proposes, in each
group, the unevaluated member it predicts lowest, evaluated unless the model rules out that it beats the group's
best by the factor 1 + ε (only then can it break assumption A_ε); refit and repeat, at most per_group
evaluations a group."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

from bortengine.search.error_model import ErrorModel
from bortengine.search.evaluation import Evaluator
from bortengine.search.pareto import Candidate

__all__ = ["refine", "refinement_record"]


def refinement_record(per_group: int) -> dict[str, Any]:
    """What the refinement did (Extraction.refinement), before it starts."""
    return {"per_group": per_group, "rounds": 0, "evaluations": 0, "improved_groups": 0,
            "improved_beyond_epsilon": 0,
            "model": "ridge regression of ln e on a quadratic in ln D, ln A, ln H, ln I, ln H/A"}


def refine(members: list[list[Candidate]], per_group: int, order: Callable[[Candidate], tuple], ev: Evaluator,
           evaluated: list[Candidate], epsilon: float) -> dict[str, Any]:
    """The refinement stage: fit an ErrorModel to every error measured so far; in each group with fewer than
    per_group evaluations, take the unevaluated member it predicts lowest, and evaluate it when its prediction
    p̂ < f · (the group's best measured error), f = min(1 + ε, exp(2σ) / (1 + ε)), σ the model's leave-one-out
    error in ln e: a member can break A_ε only by being a factor 1 + ε better than the group's best, so it is
    skipped when the model rules that out at two standard errors (an accurate model, f < 1, asks for a predicted
    improvement; a rough one for a prediction not above 1 + ε times the best). Refit and repeat while any group
    qualifies, until the evaluator's deadline. At most per_group evaluations per group, so the bound is
    per_group · groups + 1. Appends what it evaluates to `evaluated`."""
    out = refinement_record(per_group)
    if per_group <= 1:
        return out
    before = [_best(g) for g in members]
    while not ev.out_of_time():
        done = [c for g in members for c in g if c.evaluated]
        if len(done) < 3:  # nothing to learn from (a tiny space, or most evaluations failed)
            break
        model = ErrorModel().fit([c.arch for c in done], [c.error for c in done])
        factor = _factor(model, epsilon)
        out["loo_spread"] = model.spread if math.isfinite(model.spread) else None
        out["factor"] = factor
        todo = _proposals(members, model, order, per_group, factor)
        if not todo:
            break
        out["rounds"] += 1
        out["evaluations"] += len(todo)
        for x in todo:
            x.refined = True
        ev.bar.extend(len(todo))
        evaluated += todo
        ev.run(todo)
    for g, b in zip(members, before):
        now = _best(g)
        if b is not None and now is not None and now < b:
            out["improved_groups"] += 1
            out["improved_beyond_epsilon"] += now * (1 + epsilon) < b
    return out


def _best(group: list[Candidate]) -> Optional[float]:
    return min((c.error for c in group if c.evaluated), default=None)


def _factor(model: ErrorModel, epsilon: float) -> float:
    """Evaluate unless the model rules out, at two leave-one-out standard errors, that the member beats the
    group's best by the factor 1 + ε (only then can it break A_ε); never when predicted 1 + ε above it."""
    return min(1 + epsilon, math.exp(min(2 * model.spread, 50.0)) / (1 + epsilon)) if model.log else 1 + epsilon


def _proposals(members: list[list[Candidate]], model: ErrorModel, order: Callable[[Candidate], tuple],
               per_group: int, factor: float) -> list[Candidate]:
    """In each group with an error, untried members and fewer than per_group tries, the member the model
    predicts lowest (ties by the representative order), if its prediction is below factor · the group's best."""
    todo = []
    for g in members:
        tried = sum(c.status != "not evaluated" for c in g)
        ok = [c.error for c in g if c.evaluated]
        rest = [c for c in g if c.status == "not evaluated"]
        if tried >= per_group or not ok or not rest:
            continue
        predicted, _, x = min((model.predict(c.arch), order(c), c) for c in rest)
        if _within(predicted, min(ok), factor):
            todo.append(x)
    return todo


def _within(predicted: float, best: float, factor: float) -> bool:
    """Is a predicted error not ruled out by the group's best measured one: below factor · best (errors ≤ 0, from
    a custom surrogate, compare additively by |best| · (factor − 1))?"""
    return predicted < (best * factor if best > 0 else best + abs(best) * (factor - 1))
