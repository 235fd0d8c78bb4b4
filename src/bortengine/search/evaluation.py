"""The error objective measured: lists of candidates evaluated by the surrogate, from the cache where it has
them and on an Executor otherwise, each outcome written to the cache and onto its candidate, within the time
budget's deadline: an evaluation starts only when it is expected to end before it (as long as the longest one so
far), and those still running at the deadline are stopped (their candidates count as skipped)."""
from __future__ import annotations

import itertools
import sys
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from bortengine.progress import Progress
from bortengine.search.cache import SurrogateCache
from bortengine.search.errors import SearchInterrupted
from bortengine.search.executor import Evaluation, Executor
from bortengine.search.pareto import Candidate

__all__ = ["Evaluator", "SKIPPED", "evaluating"]

SKIPPED = "skipped (time budget)"


class Evaluator:
    """Evaluates candidates for one search; `fresh` counts the evaluations run (not from the cache)."""

    def __init__(self, executor: Executor, cache: SurrogateCache, bar: Progress, deadline: Optional[float]):
        self.executor, self.cache, self.bar, self.deadline = executor, cache, bar, deadline
        bar.deadline = deadline
        self.fresh = 0
        self.longest = 0.0          # seconds of the longest evaluation run so far (its own: a worker's start aside)
        self._tickets = itertools.count()

    def run(self, todo: list[Candidate]) -> None:
        queue = [c for c in todo if not self._from_cache(c)]
        running: dict[int, Candidate] = {}
        while queue or running:
            while queue and len(running) < self.executor.capacity:
                c = queue.pop(0)
                if self.out_of_time():
                    c.status = SKIPPED
                    continue
                ticket = next(self._tickets)
                running[ticket] = c
                self.executor.submit(ticket, c.arch)
            if not running:
                continue
            finished = self.executor.wait(None if self.deadline is None else
                                          max(0.0, self.deadline - time.monotonic()))
            if not finished and self._late():
                self._stop(running, queue)
                return
            lost = []
            for ticket, result in finished:
                c = running.pop(ticket)
                if result.status == "lost":
                    lost.append(c)
                    continue
                self.longest = max(self.longest, result.seconds)
                self._record(c, result, cached=False)
                self.fresh += 1
                self.bar.step(f"{c.arch} {c.status}")
            queue[:0] = lost  # first in line again

    def out_of_time(self) -> bool:
        """No evaluation fits before the deadline any more (one takes as long as the longest so far)."""
        return self.deadline is not None and time.monotonic() + self.longest > self.deadline

    def _stop(self, running: dict[int, Candidate], queue: list[Candidate]) -> None:
        """The deadline came while evaluations ran: stop them (the workers are ended); they and the queue are
        skipped."""
        self.executor.close(cancel=True)
        for c in list(running.values()) + queue:
            c.status = SKIPPED

    def close(self, cancel: bool = False) -> None:
        self.executor.close(cancel)

    def _from_cache(self, c: Candidate) -> bool:
        hit = self.cache.get(c.arch)
        if hit is None:
            return False
        nan = hit["status"] == "nan"
        self._record(c, Evaluation(hit["status"], float("nan") if nan else float(hit["error"]),
                                   "the surrogate returned NaN (cached)" if nan else "", hit.get("seconds") or 0.0,
                                   hit.get("node")), cached=True)
        self.bar.step(f"{c.arch} (cached)")
        return True

    def _late(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _record(self, c: Candidate, result: Evaluation, cached: bool) -> None:
        c.seconds, c.node = round(result.seconds, 3), result.node
        if result.status in ("ok", "nan") and not cached:
            self.cache.put(c.arch, result.value, result.seconds, result.node)
        c.status = ("cached" if cached else "ok") if result.status == "ok" else result.status
        c.error = result.value if result.status == "ok" else None
        c.message = result.message


@contextmanager
def evaluating(ev: Evaluator, candidates: Sequence[Candidate]) -> Iterator[None]:
    """The block's evaluations on `ev`, with what ends them: Ctrl-C (or a kill) stops the workers and raises
    SearchInterrupted, counting those of `candidates` (a list the block may still extend) that were done, the cache
    keeping what finished; the executor is closed either way, and the bar's last line drawn when the block ends."""
    try:
        yield
    except KeyboardInterrupt:
        ev.close(cancel=True)
        if ev.bar.enabled:
            sys.stderr.write("\n")
        raise SearchInterrupted(ev.cache.path, sum(c.status != "not evaluated" for c in candidates),
                                len(candidates)) from None
    finally:
        ev.close()
    skipped = sum(c.status == SKIPPED for c in candidates)
    ev.bar.show(f"stopped at the time budget: {skipped} not evaluated" if skipped else "done", final=True)
