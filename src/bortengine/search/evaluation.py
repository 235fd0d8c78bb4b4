"""The error objective measured: lists of candidates evaluated by the surrogate, from the cache where it has
them and on an Executor otherwise, each outcome written to the cache and onto its candidate, no new evaluation
started after the time budget's deadline."""
from __future__ import annotations

import itertools
import time
from typing import Optional

from bortengine.progress import Progress
from bortengine.search.cache import SurrogateCache
from bortengine.search.executor import Evaluation, Executor
from bortengine.search.pareto import Candidate

__all__ = ["Evaluator"]


class Evaluator:
    """Evaluates candidates for one search; `fresh` counts the evaluations run (not from the cache)."""

    def __init__(self, executor: Executor, cache: SurrogateCache, bar: Progress, deadline: Optional[float]):
        self.executor, self.cache, self.bar, self.deadline = executor, cache, bar, deadline
        self.fresh = 0
        self._tickets = itertools.count()

    def run(self, todo: list[Candidate]) -> None:
        queue = [c for c in todo if not self._from_cache(c)]
        running: dict[int, Candidate] = {}
        while queue or running:
            while queue and len(running) < self.executor.capacity:
                c = queue.pop(0)
                if self._late():
                    c.status = "skipped (time budget)"
                    continue
                ticket = next(self._tickets)
                running[ticket] = c
                self.executor.submit(ticket, c.arch)
            if not running:
                continue
            lost = []
            for ticket, result in self.executor.wait():
                c = running.pop(ticket)
                if result.status == "lost":
                    lost.append(c)
                    continue
                self._record(c, result, cached=False)
                self.fresh += 1
                self.bar.step(f"{c.arch} {c.status}")
            queue[:0] = lost  # first in line again

    def close(self, cancel: bool = False) -> None:
        self.executor.close(cancel)

    def _from_cache(self, c: Candidate) -> bool:
        hit = self.cache.get(c.arch)
        if hit is None:
            return False
        nan = hit["status"] == "nan"
        self._record(c, Evaluation(hit["status"], float("nan") if nan else float(hit["error"]),
                                   "the surrogate returned NaN (cached)" if nan else "", hit.get("seconds") or 0.0),
                     cached=True)
        self.bar.step(f"{c.arch} (cached)")
        return True

    def _late(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def _record(self, c: Candidate, result: Evaluation, cached: bool) -> None:
        c.seconds = round(result.seconds, 3)
        if result.status in ("ok", "nan") and not cached:
            self.cache.put(c.arch, result.value, result.seconds)
        c.status = ("cached" if cached else "ok") if result.status == "ok" else result.status
        c.error = result.value if result.status == "ok" else None
        c.message = result.message
