"""The search's two ways to stop: a search that cannot run as asked (SearchError), and one stopped by Ctrl-C or a
kill (SearchInterrupted), whose finished evaluations are cached so the same call resumes."""
from __future__ import annotations

from pathlib import Path

from bortengine.errors import BortEngineError

__all__ = ["SearchError", "LatencyLimitError", "SearchInterrupted"]


class SearchError(BortEngineError, ValueError):
    """A search that cannot run as asked: bad ε, empty or contradictory space, uncovered profile, ..."""


class LatencyLimitError(SearchError):
    """No candidate but the maximum point is predicted within extract()'s latency_limit_ms. fastest: the fastest of
    them (a Candidate, its latency_ms predicted), or None when the space has no other; a caller that set the limit
    for its own reasons (the pipeline: --min-speedup) can say so in its terms."""

    def __init__(self, message: str, limit_ms: float, fastest):
        super().__init__(message)
        self.limit_ms, self.fastest = limit_ms, fastest


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during the surrogate evaluations: what finished is cached; the same call again resumes."""

    def __init__(self, cache: Path, done: int, total: int):
        super().__init__(f"interrupted: {done} of {total} surrogate evaluations cached in {cache}; run the same "
                         f"command again to resume")
        self.cache, self.done, self.total = cache, done, total
