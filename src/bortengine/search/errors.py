"""The search's two ways to stop: a search that cannot run as asked (SearchError), and one stopped by Ctrl-C or a
kill (SearchInterrupted), whose finished evaluations are cached so the same call resumes."""
from __future__ import annotations

from pathlib import Path

from bortengine.errors import BortEngineError

__all__ = ["SearchError", "SearchInterrupted"]


class SearchError(BortEngineError, ValueError):
    """A search that cannot run as asked: bad ε, empty or contradictory space, uncovered profile, ..."""


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during the surrogate evaluations: what finished is cached; the same call again resumes."""

    def __init__(self, cache: Path, done: int, total: int):
        super().__init__(f"interrupted: {done} of {total} surrogate evaluations cached in {cache}; run the same "
                         f"command again to resume")
        self.cache, self.done, self.total = cache, done, total
