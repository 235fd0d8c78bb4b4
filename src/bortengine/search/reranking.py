"""A costlier surrogate's opinion of a few candidates after the search: the cheap surrogate the FPTAS can afford on
every group may misorder the students a caller must choose between (the fine-tuning surrogate puts every narrow
student near chance, docs/pipeline.md), so a shortlist is evaluated again, best-first, within a deadline, cached
and on the same executors as the search."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

from bortengine.progress import Progress
from bortengine.search.cache import SurrogateCache, default_cache_dir
from bortengine.search.evaluation import Evaluator, evaluating
from bortengine.search.executor import check_executor
from bortengine.search.fptas import make_executor
from bortengine.search.pareto import Candidate
from bortengine.search.surrogates import Surrogate, resolve_surrogate

__all__ = ["rerank"]


def rerank(candidates: Sequence[Candidate], surrogate: "Surrogate | str", *, deadline: Optional[float] = None,
           cache_dir: Optional[str] = None, workers: Optional[int] = None, executor: Optional[str] = None,
           ray_address: Optional[str] = None, progress: bool = True, expected_seconds: float = 0.0
           ) -> list[Candidate]:
    """Copies of `candidates` with the surrogate's error, in their order, which is the order they are evaluated in
    (so best-first when the deadline, a time.monotonic() value, may cut the list): an evaluation starts only when
    it is expected to end before the deadline, and one still running on a worker at the deadline is stopped; the
    copies not evaluated have error None and a status saying why. The search's candidates are left as they were.
    Cached like the search (cache_dir, default default_cache_dir()); executor, ray_address and workers as for
    extract(). expected_seconds: what one evaluation takes at least, known before any has run (e.g. the same
    students' evaluations by the search's cheaper surrogate): none starts that could not end by the deadline, which
    would only be stopped there, its time lost to the caller."""
    surrogate = resolve_surrogate(surrogate)
    kind = check_executor(executor, ray_address)
    copies = [replace(c, error=None, status="not evaluated", message="", seconds=None, node=None, pareto=False,
                      w=None) for c in candidates]
    cache = SurrogateCache(cache_dir or default_cache_dir(), surrogate)
    bar = Progress(len(copies), f"re-ranking: surrogate {surrogate.name}", progress)
    ev = Evaluator(make_executor(kind, surrogate, workers, 0, ray_address), cache, bar, deadline)
    ev.longest = expected_seconds
    with evaluating(ev, copies):
        ev.run(copies)
    return copies
