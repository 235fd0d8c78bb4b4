"""Files the stages write and read: every write is atomic (a run stopped mid-write never leaves half a file, so a
resume never reads one), and JSON is read with an error that names the file and says how to fix it.

Used by every stage (profiles, surrogate caches, checkpoints, run state, exported models); imports nothing of
bortengine but its errors.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Type

from bortengine.errors import BortEngineError

__all__ = ["atomic_write", "directory_lock", "used_by_this_process", "atomic_write_text", "atomic_write_json",
           "read_json", "cache_dir", "save_figure", "paths_as_text"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call write(tmp) to fill a temporary file beside `path`, then rename it over `path` (atomic on POSIX).
    The temporary file's name is this call's own (the target's name, the process id and a random part): two
    processes writing the same file at once each rename a whole file, where one fixed name had the second rename
    find the first's file gone. write() creates it as it would `path` (same permissions). It is removed if
    write() fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@contextlib.contextmanager
def _exclusive_flock(path: Path, flags: int, wait: bool) -> Iterator[tuple[Optional[int], bool]]:
    """(descriptor, busy) while the block runs, the descriptor of path (opened with flags) holding an exclusive flock:
    released when it is closed, or when the process dies. busy: another process holds the lock (only when not
    waiting for it; the descriptor is then unlocked). Without fcntl (not POSIX) the descriptor is None, and on a
    filesystem that refuses locks (NFS mounted nolock: ENOLCK) it is unlocked: nothing is refused for either."""
    try:
        import fcntl
    except ImportError:   # pragma: no cover - Windows
        yield None, False
        return
    fd = os.open(path, flags, 0o644)
    try:
        busy = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            busy = True
        except OSError:   # a filesystem without locks: nothing is refused for it
            pass
        yield fd, busy
    finally:
        os.close(fd)   # closing the descriptor releases the lock


@contextlib.contextmanager
def directory_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the directory of `path` while the block runs (flock: released when the process
    dies), for a read-merge-write of a file other processes update too. Without fcntl (not POSIX), or on a
    filesystem that refuses locks, it locks nothing: the write is not refused for it."""
    with _exclusive_flock(Path(path).parent, os.O_RDONLY, wait=True):
        yield


@contextlib.contextmanager
def used_by_this_process(directory: str | os.PathLike, error: Type[BortEngineError], what: str) -> Iterator[None]:
    """Hold the lock file `directory/.bortengine-lock` while the block runs (flock: released when the process dies),
    so that a second process working in the same directory is refused with `error` naming the first one's pid
    instead of both overwriting each other's files. Without fcntl (not POSIX), or on a filesystem that refuses
    locks, it locks nothing."""
    with _exclusive_flock(Path(directory) / ".bortengine-lock", os.O_RDWR | os.O_CREAT, wait=False) as (fd, busy):
        if busy:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            raise error(f"{directory} is in use by another {what} (process {holder}); wait for it to end, stop it, "
                        f"or give another directory")
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: Optional[int] = 1) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike, error: Type[BortEngineError] = BortEngineError, missing_ok: bool = False,
              max_bytes: Optional[int] = None, fix: str = "fix or delete it") -> Any:
    """The JSON in `path`; a file that cannot be read or is not valid UTF-8 JSON raises `error` naming it, as does
    one nested too deep for Python's parser or holding an integer of more digits than Python reads (4300). A missing
    file raises `error` too, or gives None with missing_ok=True. max_bytes: a larger file is refused unread (a
    settings file of a model directory is kilobytes; a huge one would be read whole into memory). fix: what the
    message of an invalid file tells the user to do."""
    path = Path(path)
    if not is_regular_file(path, error):
        if missing_ok:
            return None
        raise error(f"{path} does not exist")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise error(f"{path} is {path.stat().st_size} bytes, more than the {max_bytes} such a file can sensibly be; "
                    f"it is not the file its name says")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:   # ValueError: JSON's, UTF-8's and int()'s digit limit
        raise error(f"{path} is not valid JSON ({e}); {fix}") from e


def is_regular_file(path: str | os.PathLike, error: Type[BortEngineError] = BortEngineError) -> bool:
    """Whether a file to read is at path: False when nothing is; `error` when something is that is not a regular file
    (a folder, a device such as /dev/zero, a pipe, or a link to one, which would read as garbage, for ever or not at
    all) or a link to nothing (a Hugging Face cache snapshot whose blob is gone)."""
    path = Path(path)
    if path.is_file():
        return True
    if path.exists():
        raise error(f"{path} is not a regular file (a folder, a device or a pipe, or a link to one); put the file "
                    f"itself there")
    if path.is_symlink():
        raise error(f"{path} is a link to {os.readlink(path)}, which does not exist; put the file itself there")
    return False


def cache_dir(kind: str, env: str) -> Path:
    """Where a kind of cached result lives (profiles, surrogate evaluations): $<env> if set, else
    $XDG_CACHE_HOME/bortengine/<kind>, else ~/.cache/bortengine/<kind>."""
    if os.environ.get(env):
        return Path(os.environ[env])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "bortengine" / kind


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a matplotlib figure (laid out tight) to path, creating its folder, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def paths_as_text(options: Any) -> None:
    """A dataclass of options with each pathlib.Path (os.PathLike) field turned into its str, in place (frozen ones
    too): the options are written to JSON and TOML and compared with a run's, where a Path is not a value."""
    import dataclasses

    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if isinstance(value, os.PathLike):
            object.__setattr__(options, field.name, os.fspath(value))
