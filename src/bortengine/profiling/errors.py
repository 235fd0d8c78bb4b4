"""What profiling raises and warns: a profile that cannot serve (ProfileError), one measured elsewhere
(ProfileMismatchWarning), Ctrl-C during a profile run, which keeps what was measured (ProfileInterrupted), and a run
that stops at its time to go on later (ProfilePaused)."""
from __future__ import annotations

from pathlib import Path

from bortengine.errors import BortEngineError


class ProfileError(BortEngineError, ValueError):
    """A profile that is missing, malformed, incomplete, or does not cover what is asked of it."""


class ProfileVersionError(ProfileError):
    """A profile file of another format version than this bortengine reads: `newer` when a later bortengine wrote
    it (measuring again here would throw its measurements away), else an older format, which profiling replaces."""

    def __init__(self, message: str, version: object, newer: bool):
        super().__init__(message)
        self.version, self.newer = version, newer


class ProfileMismatchWarning(UserWarning):
    """A profile measured on another CPU, kernel path or engine version than the one running."""


class ProfileInterrupted(KeyboardInterrupt):
    """Ctrl-C during profile(): what was measured is saved; running the same command again resumes."""

    def __init__(self, path: Path, done: int, total: int):
        super().__init__(f"interrupted: {done} of {total} measurements saved to {path}; run the same command "
                         f"again to resume")
        self.path, self.done, self.total = path, done, total


class ProfilePaused(Exception):
    """profile()'s stop_after_s came: what was measured is saved (done of total measurements); calling again
    resumes. Not an error: a fleet's node measures in such parts, each sent back to the driver."""

    def __init__(self, path: Path, done: int, total: int):
        super().__init__(f"paused: {done} of {total} measurements saved to {path}")
        self.path, self.done, self.total = path, done, total
