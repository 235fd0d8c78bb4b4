"""`bortengine serve --workers N`: N processes on one port, over real sockets to a real server. They answer as one
server (the same embeddings, /metrics summing every worker's figures from whichever worker a scrape reaches, the
connections spread over both), a worker that dies is replaced while its connections wait for the new one, SIGTERM
drains every worker and exits 0, a killed parent leaves no worker behind, a model that cannot load stops them all
with its error; and the options are shared out (threads, --max-queue).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bortengine.cli import main
from bortengine.errors import UsageError
from bortengine.serving import ServeOptions
from serving_process import ServerProcess, minilm_engine, serving, texts_of  # noqa: F401 (a fixture)
from test_isolation import _env
from test_serving import delta, embeddings, scrape
from test_serving_robustness import (assert_answered_exactly, assert_error, flood, post_embeddings, sent_requests,
                                     texts_read, wait_until)

MAX_TOKENS = 64
MAX_QUEUE = 8


@pytest.fixture(scope="module")
def workers_server(minilm):
    yield from serving(minilm, "--workers", "2", "--max-input-tokens", str(MAX_TOKENS), "--max-queue",
                       str(MAX_QUEUE), "--model-name", "minilm")


def worker_pids(server: ServerProcess) -> list[int]:
    """The server's worker processes (its children but multiprocessing's resource tracker)."""
    pids = []
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return sorted(p for p in pids if b"spawn_main" in _cmdline(p))


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def not_accepting(server: ServerProcess) -> bool:
    """Whether a new connection is refused, or reset: one that reached a worker's socket as it closed."""
    try:
        socket.create_connection(server.address(), timeout=5).close()
        return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def test_the_workers_answer_as_one_server(workers_server, minilm_engine):
    pids = worker_pids(workers_server)
    assert len(pids) == 2, workers_server.output()
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"{threads} thread{'s' if threads > 1 else ''}," in workers_server.stdout.read_text()
    assert "in each of 2 workers" in workers_server.stdout.read_text()
    work = [texts_of(4, words=40, seed=100 + k) for k in range(60)]
    with workers_server.client() as client:
        before = scrape(client)
    ticks = [cpu_ticks(p) for p in pids]
    with ThreadPoolExecutor(4) as pool:   # (a connection a request: the kernel gives each to one of the workers)
        responses = list(pool.map(lambda texts: post_embeddings(workers_server, texts), work))
    for texts, response in zip(work, responses):
        assert np.array_equal(embeddings(response), minilm_engine.encode(texts, max_length=MAX_TOKENS))
    # both computed: 60 connections all given to one worker would be a 1 in 2**59 chance
    assert all(cpu_ticks(p) > t for p, t in zip(pids, ticks)), "one worker did all the work"
    # every scrape, on its own connection (either worker), sums both workers' figures
    for _ in range(6):
        with workers_server.client() as client:
            after = scrape(client)
        assert after[("bortengine_workers_reporting", ())] == 2
        assert delta(before, after, "bortengine_requests_total", route="/v1/embeddings", status="200") == len(work)
        assert delta(before, after, "bortengine_texts_total", route="/v1/embeddings") == 4 * len(work)
        assert delta(before, after, "bortengine_request_seconds_count", route="/v1/embeddings") == len(work)
        assert after[("bortengine_requests_admitted", ())] == 0


def test_each_worker_admits_its_share_of_max_queue(workers_server, minilm_engine):
    texts = texts_of(8, words=30, seed=3)
    for response in flood(workers_server, texts, 4 * MAX_QUEUE):
        if response.status_code == 429:
            assert_error(response, 429, "queue_full", f"limit of {MAX_QUEUE // 2} requests")
        else:
            assert np.array_equal(embeddings(response), minilm_engine.encode(texts, max_length=MAX_TOKENS))


def test_a_port_held_by_a_server_of_workers_is_refused_to_another(capsys, workers_server, minilm):
    """The workers' sockets share their port (SO_REUSEPORT), which another server's SO_REUSEPORT sockets could join:
    a second server on that port is refused as for a lone server, not let in to take half its connections."""
    port = workers_server.address()[1]
    for workers in ("1", "2"):
        assert main(["serve", str(minilm), "--workers", workers, "--port", str(port)]) == 2
        assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


def test_workers_without_a_writable_temporary_directory_is_a_usage_error(capsys, minilm, monkeypatch, tmp_path):
    """A container with a read-only root filesystem: tempfile found no usable directory and `serve --workers 2` ended
    in a FileNotFoundError traceback (exit 1)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "read-only" / "tmp"))   # (where nothing can be made)
    assert main(["serve", str(minilm), "--workers", "2", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("bortengine serve: error: --workers "
                                                                              "needs a writable directory"), err
    assert "set TMPDIR to a writable directory" in err


def test_a_worker_that_dies_is_replaced_and_its_connections_wait_for_it(minilm, minilm_engine):
    server = ServerProcess(minilm, "--workers", "2").start()
    try:
        old = worker_pids(server)
        os.kill(old[0], signal.SIGKILL)
        # new connections, some of them given to the dead worker's socket before the new worker accepts
        work = [texts_of(2, seed=200 + k) for k in range(40)]
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda texts: post_embeddings(server, texts), work))
        for texts, response in zip(work, responses):
            assert np.array_equal(embeddings(response), minilm_engine.encode(texts))
        wait_until(lambda: "ready again" in server.stdout.read_text(), timeout=60, what="the new worker")
        new = worker_pids(server)
        assert len(new) == 2 and old[1] in new and old[0] not in new, (old, new)
        out = server.stdout.read_text()
        assert "was ended by SIGKILL; starting another in its place" in out, server.output()
        with server.client() as client:
            assert scrape(client)[("bortengine_workers_reporting", ())] == 2
    finally:
        code = server.stop()
    assert code == 0 and not any(alive(p) for p in new), server.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_drains_every_worker_and_exits_0(minilm, minilm_engine, sig):
    """SIGHUP ended the parent by the signal (its workers drained only as orphans): it stops the server as SIGTERM
    does."""
    server = ServerProcess(minilm, "--workers", "2", "--max-input-tokens", str(MAX_TOKENS)).start()
    pids = worker_pids(server)
    work = [texts_of(8, words=40, seed=300 + k) for k in range(16)]   # ~64 tokens a text: seconds on 2 cores
    try:
        with ThreadPoolExecutor(len(work)) as pool:
            futures = [pool.submit(post_embeddings, server, texts) for texts in work]
            with server.client() as client:   # every request read (the texts counted by both workers)
                wait_until(lambda: texts_read(client) == sum(map(len, work)), what="the requests to be read")
            server.proc.send_signal(sig)
            in_flight = sum(not f.done() for f in futures)
            # the port closes at once (the parent's copies of the sockets too): a new client is refused, not queued
            wait_until(lambda: not_accepting(server), timeout=30, what="the listening sockets to close")
            responses = [f.result() for f in futures]
        code = server.proc.wait(60)
    finally:
        server.kill()
    assert in_flight > 0, "every request ended before SIGTERM: give them more work"
    for texts, response in zip(work, responses):
        assert np.array_equal(embeddings(response), minilm_engine.encode(texts, max_length=MAX_TOKENS))
    assert code == 0 and "Traceback" not in server.stderr.read_text(), server.output()
    wait_until(lambda: not any(alive(p) for p in pids), timeout=10, what="the workers to exit")


@pytest.mark.parametrize("stop, exit_code", [(signal.SIGTERM, 0), (signal.SIGKILL, -signal.SIGKILL)])
def test_stopping_while_the_workers_load_answers_the_connections_queued_for_them(minilm, minilm_engine, stop,
                                                                                  exit_code):
    """Connections made once the port is bound wait in the kernel's queue of a worker still loading the model. A
    SIGTERM then closed that worker's socket unaccepted, and they were reset; now it loads, accepts them, answers
    their requests and exits as it drains later. SIGKILL to the parent: each worker gets SIGTERM (parent death),
    and the worker failed its start-up telling the parent it was ready (a traceback, the connections reset)."""
    server = ServerProcess(minilm, "--workers", "2", "--max-input-tokens", str(MAX_TOKENS))
    work = [texts_of(2, words=8, seed=400 + k) for k in range(8)]
    try:
        deadline = time.monotonic() + 60
        while not (listening := re.search(r"listening on http://([\d.]+):(\d+)", server.stdout.read_text())):
            server._check_alive(deadline)
            time.sleep(0.002)
        # each connection hashed to one of the two workers' sockets
        connections = sent_requests((listening[1], int(listening[2])), work)
        server.proc.send_signal(stop)
        assert "ready:" not in server.stdout.read_text(), "the workers had loaded the model before the signal"
        assert_answered_exactly(connections, work, minilm_engine)
        code = server.proc.wait(60)
    finally:
        server.kill()
    assert code == exit_code and "Traceback" not in server.stderr.read_text(), server.output()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_ctrl_c_to_the_process_group_stops_every_worker_even_from_a_background_job(minilm, workers):
    """A terminal's Ctrl-C reaches the parent and every worker. Started as a shell's background job the parent had
    SIGINT ignored while each worker's uvicorn handled it: the workers drained and the parent replaced them. One
    process drained and exited 0, as though SIGTERM had come."""
    server = ServerProcess(minilm, "--workers", workers, background_job=True)
    try:
        server.start()
        pids = worker_pids(server)
        os.killpg(server.proc.pid, signal.SIGINT)
        assert server.proc.wait(60) == 130, server.output()
    finally:
        server.kill()
    wait_until(lambda: not any(alive(p) for p in pids), timeout=10, what="the workers to exit")
    assert "starting another" not in server.stdout.read_text(), server.output()


def test_a_killed_parent_leaves_no_worker_serving(minilm):
    server = ServerProcess(minilm, "--workers", "2").start()
    pids = worker_pids(server)
    try:
        server.kill()   # SIGKILL: the parent cannot tell its workers
        wait_until(lambda: not any(alive(p) for p in pids), timeout=60, what="the workers to end with the parent")
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_model_that_cannot_load_stops_every_worker_with_exit_2(tmp_path, minilm):
    model = tmp_path / "model"
    model.mkdir()
    for f in minilm.iterdir():
        if not f.name.startswith("tokenizer") and f.name != "vocab.txt":
            (model / f.name).symlink_to(f)
    server = ServerProcess(model, "--workers", "2")
    try:
        code = server.proc.wait(120)
    finally:
        server.kill()
    assert code == 2, server.output()
    lines = [line for line in server.stderr.read_text().splitlines() if "has no tokenizer" in line]
    assert len(lines) == 1 and "Traceback" not in server.stderr.read_text(), server.output()


def test_the_options_are_shared_out_among_the_workers(capsys, minilm):
    from bortengine.serving.workers import worker_options

    each = worker_options(ServeOptions(workers=3, max_queue=10, threads=None))
    assert [o.max_queue for o in each] == [4, 3, 3] and {o.workers for o in each} == {1}
    assert {o.threads for o in each} == {max(1, len(os.sched_getaffinity(0)) // 3)}
    assert {o.threads for o in worker_options(ServeOptions(workers=2, threads=3))} == {3}
    with pytest.raises(UsageError, match="workers must be a positive integer"):
        ServeOptions(workers=0)
    with pytest.raises(UsageError, match=r"max_queue must be .* at least the number of workers \(4\)"):
        ServeOptions(workers=4, max_queue=3)
    assert main(["serve", str(minilm), "--workers", "4", "--max-queue", "3"]) == 2
    assert "--max-queue must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(minilm), "--workers", "0"])
    assert "--workers" in capsys.readouterr().err


def test_serve_with_workers_from_a_script_without_a_main_guard_says_so(tmp_path, minilm):
    """Each worker is a new Python process, which imports the program's main module first: a script calling serve()
    at its top level would start a server in every worker. It is told what to write instead, and nothing hangs."""
    script = tmp_path / "serve_it.py"
    script.write_text("from bortengine.serving import ServeOptions, serve\n"
                      f"serve({str(minilm)!r}, ServeOptions(workers=2, port=0))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode != 0
    assert 'call it under `if __name__ == "__main__":`' in done.stderr, done.stderr
    assert "before it had loaded" in done.stderr.splitlines()[-1], done.stderr
