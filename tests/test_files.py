"""bortengine.files: atomic writes by several writers of one file at once, and the lock a read-merge-write holds."""
import json
import threading

from bortengine.files import atomic_write_json, directory_lock


def test_writers_of_one_file_at_once_each_rename_a_whole_file(tmp_path):
    """Every writer had the same temporary name (path + '.tmp'): the second rename found the first's file gone
    (FileNotFoundError), or renamed a file another writer was still filling. Each now has its own."""
    path, errors = tmp_path / "profile.json", []

    def write(n: int) -> None:
        try:
            for i in range(200):
                atomic_write_json(path, {"writer": n, "i": i, "pad": "x" * 5000})
        except Exception as exc:   # noqa: BLE001 - any failure is the test's
            errors.append(exc)

    _together(write, 4)
    assert errors == []
    assert json.loads(path.read_text())["i"] == 199   # whole: every writer's last file is complete
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]   # no temporary file left


def test_directory_lock_serialises_read_merge_write(tmp_path):
    """Under the lock, four threads' read-add-write of one counter lose no update."""
    path = tmp_path / "counter.json"
    atomic_write_json(path, {"n": 0})

    def add() -> None:
        for _ in range(50):
            with directory_lock(path):
                n = json.loads(path.read_text())["n"]
                atomic_write_json(path, {"n": n + 1})

    _together(lambda n: add(), 4)
    assert json.loads(path.read_text())["n"] == 200


def _together(work, n: int) -> None:
    """work(0) ... work(n - 1), each in its own thread, all at once; returns when all are done."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_a_filesystem_that_refuses_locks_still_gets_the_write(tmp_path, monkeypatch):
    """flock on NFS mounted without locking raises ENOLCK: the profile's save failed where it wrote before the lock."""
    import errno
    import fcntl

    def refused(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refused)
    path = tmp_path / "profile.json"
    with directory_lock(path):
        atomic_write_json(path, {"saved": True})
    assert json.loads(path.read_text()) == {"saved": True}
