"""What profiling raises and warns: a profile that cannot serve (ProfileError), one measured elsewhere
(ProfileMismatchWarning), and Ctrl-C during a profile run, which keeps what was measured (ProfileInterrupted)."""
from __future__ import annotations

from pathlib import Path

from bortengine.errors import BortEngineError


class ProfileError(BortEngineError, ValueError):
    """A profile that is missing, malformed, incomplete, or does not cover what is asked of it."""


class ProfileMismatchWarning(UserWarning):
    """A profile measured on another CPU, kernel path or engine version than the one running."""


class ProfileInterrupted(KeyboardInterrupt):
    """Ctrl-C during profile(): what was measured is saved; running the same command again resumes."""

    def __init__(self, path: Path, done: int, total: int):
        super().__init__(f"interrupted: {done} of {total} measurements saved to {path}; run the same command "
                         f"again to resume")
        self.path, self.done, self.total = path, done, total
