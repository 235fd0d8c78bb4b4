"""The surrogate cache: every finished evaluation appended to a JSON-lines file per surrogate and settings, so a
killed search resumes where it stopped and a second search over the same space costs nothing."""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from bortengine.architecture import Architecture
from bortengine.files import atomic_write_text, cache_dir, directory_lock
from bortengine.search.errors import SearchError
from bortengine.search.surrogates import Surrogate

__all__ = ["SurrogateCache", "default_cache_dir"]


def default_cache_dir() -> Path:
    """$BORTENGINE_SURROGATE_CACHE, else $XDG_CACHE_HOME/bortengine/surrogates (~/.cache/...)."""
    return cache_dir("surrogates", "BORTENGINE_SURROGATE_CACHE")


def _arch_key(arch: Architecture) -> str:
    return (f"{arch.layers},{arch.heads},{arch.hidden},{arch.intermediate}|v{arch.vocab_size}|p{arch.max_positions}"
            f"|t{arch.type_vocab_size}|{arch.head}")


class SurrogateCache:
    """Surrogate results of one surrogate and settings, appended one JSON line per evaluation.

    Values (including NaN, a deterministic result) are kept; exceptions are not (they may be transient: a rerun
    tries again). A line cut short by a kill (or otherwise damaged) is dropped from the file on reading, once, with a
    warning. Appends and that rewrite hold the directory's lock, so searches sharing the cache keep each other's lines.
    """

    def __init__(self, directory: str | os.PathLike, surrogate: Surrogate):
        self.dir = Path(directory)
        self.path = self.dir / f"{surrogate.name}-{surrogate.key()}.jsonl"
        self.entries: dict[str, dict[str, Any]] = {}
        self._describe(surrogate)
        if self.path.exists():
            self._read()

    def _describe(self, surrogate: Surrogate) -> None:
        """The directory, and beside the results a file naming the surrogate and settings they belong to."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta = self.dir / f"{surrogate.name}-{surrogate.key()}.settings.json"
            if not meta.exists():
                atomic_write_text(meta, json.dumps({"name": surrogate.name, "settings": surrogate.settings()},
                                                   indent=1))
        except OSError as e:
            raise SearchError(f"cannot use the surrogate cache directory {self.dir}: {e.strerror or e}") from None

    def _read(self) -> None:
        text = self.path.read_text()
        damaged = self._parse(text)
        if damaged or not text.endswith("\n"):
            # whole entries only, rewritten under the directory's lock (appends take it too): a damaged line (a killed
            # run's) is said once, not on every run, and the next append starts a line of its own. Read again
            # inside the lock for the lines appended meanwhile.
            with directory_lock(self.path):
                text = self.path.read_text()
                self._parse(text)
                atomic_write_text(self.path, "".join(line + "\n" for line in text.splitlines()
                                                     if _entry(line) is not None))
        if damaged:
            warnings.warn(f"{self.path}: {damaged} damaged line(s) (a killed run?) dropped from the cache; their "
                          f"evaluations will run again", RuntimeWarning, stacklevel=3)

    def _parse(self, text: str) -> int:
        """The entries of the file's text into self.entries; how many lines were damaged."""
        damaged = 0
        for line in text.splitlines():
            entry = _entry(line)
            if entry is None:
                damaged += 1
            else:
                self.entries[entry["arch"]] = entry
        return damaged

    def get(self, arch: Architecture) -> Optional[dict[str, Any]]:
        return self.entries.get(_arch_key(arch))

    def put(self, arch: Architecture, error: float, seconds: float, node: Optional[str] = None) -> None:
        """node: where it ran ("local", a Ray node id), kept so a resumed search still says it."""
        entry = {"arch": _arch_key(arch), "error": None if math.isnan(error) else error,
                 "status": "nan" if math.isnan(error) else "ok", "seconds": round(seconds, 3),
                 "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "node": node}
        self.entries[entry["arch"]] = entry
        with directory_lock(self.path), open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _entry(line: str) -> Optional[dict[str, Any]]:
    """The entry a line of the file holds, or None for a damaged one (cut short by a kill, or not an entry)."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("arch"), str) else None
