"""The Ray executor (search.ray_executor) on a real Ray cluster of two nodes of one CPU each, bound to 127.0.0.1
(ray.cluster_utils.Cluster: a head and a second raylet, separate processes talking over loopback sockets): the same
extraction gives the same evaluations and winner as the local executor, its evaluations spread over both nodes
(each candidate's node), a worker killed mid-evaluation is restarted and its evaluation run again, a driver
interrupted (Ctrl-C) or killed resumes from the cache, a wrong address fails at once with a message, and without
an address a local instance is started that listens on loopback only.

Errors come from the analytic surrogate (its `delay` makes an evaluation last long enough to interrupt it); the
real distillation surrogate on a cluster is measured by bench/ray_scaleout.py, not here.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

# read when ray is imported: a cluster bound to 127.0.0.1 is reached there (Ray would otherwise swap loopback for this
# machine's address)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="the Ray executor's tests need ray: pip install 'bortengine[ray]'")

from bortengine import search as S  # noqa: E402
from bortengine.architecture import Architecture  # noqa: E402
from bortengine.errors import ClusterError  # noqa: E402
from test_search import MINILM_SPACE, TINY, W, run, synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of one CPU each on 127.0.0.1: every worker slot (one CPU) on a node of its own."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                      "include_dashboard": False})
    try:
        c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        c.wait_for_nodes()
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


@pytest.fixture(autouse=True)
def no_ray_address(monkeypatch):
    """A RAY_ADDRESS of the machine running the tests must not steer them."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _outcomes(result: S.Extraction) -> list[tuple]:
    return [(c.dims, c.status.replace("cached", "ok"), c.error, c.representative, c.refined)
            for c in result.candidates]


def test_ray_gives_the_local_evaluations_and_winner_spread_over_both_nodes(cluster, tmp_path):
    """The FPTAS with fallbacks (a failing and a NaN candidate) and refinement: the same candidates evaluated, with
    the same outcomes, and the same winner; on Ray every node ran evaluations, each candidate names its node in
    report.json, and the connection the executor opened is closed again."""
    fail, nan = (1, 4, 128, 256), (2, 4, 64, 128)     # representatives: their groups fall back
    local = run(TINY, synthetic(TINY), tmp_path / "local", epsilon=0.25,
                surrogate=S.AnalyticSurrogate(fail=(fail,), nan=(nan,)))
    on_ray = run(TINY, synthetic(TINY), tmp_path / "ray", epsilon=0.25, ray_address=cluster.address,
                 surrogate=S.AnalyticSurrogate(fail=(fail,), nan=(nan,), delay=0.5))
    assert _outcomes(on_ray) == _outcomes(local)
    assert on_ray.winner.dims == local.winner.dims and on_ray.fresh_evaluations == local.fresh_evaluations
    assert {c.dims for c in on_ray.candidates if c.status == "failed"} == {fail}
    nodes = on_ray.nodes()
    assert len(nodes) == 2 and all(len(n) == 56 and n != "local" for n in nodes), nodes
    assert min(nodes.values()) >= 1, nodes
    assert set(local.nodes()) == {"local"}
    assert on_ray.executor.startswith(f"ray: the Ray cluster at {cluster.address}, 2 node(s), 2 CPU(s); 2 worker(s)")
    on_ray.save(tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["nodes"] == nodes and report["summary"]["executor"] == on_ray.executor
    assert {c["node"] for c in report["candidates"] if c["status"] != "not evaluated"} == set(nodes)
    assert not ray.is_initialized()


def test_the_extract_command_runs_on_a_cluster(cluster, tmp_path, capsys):
    from bortengine.cli import main

    path = synthetic(MINILM_SPACE).save(tmp_path / "profile.json")
    argv = ["extract", "--space", "minilm", "--profile", str(path), "--batch", "1", "--seq", "16", "--threads", "2",
            "--surrogate", "analytic", "--eps", "0.25", "--cache", str(tmp_path / "cache"), "--measure", "0",
            "--no-progress", "--out", str(tmp_path / "out"), "--ray-address", cluster.address]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic profile describes another CPU
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"evaluations ran on ray: the Ray cluster at {cluster.address}" in out and "per node: " in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert all(c["node"] for c in report["candidates"] if c["status"] == "ok")
    # --executor local with an address contradicts itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv + ["--executor", "local"]) == 2
    assert "goes with the ray executor" in capsys.readouterr().err


def test_a_killed_worker_is_restarted_and_its_evaluation_run_again(cluster):
    """SIGKILL to a worker's process in the middle of an evaluation: Ray restarts the worker and runs the
    evaluation again, which comes back ok (with the right value) like the one on the other worker."""
    surrogate = S.AnalyticSurrogate(delay=3.0)
    archs = [Architecture(1, 2, 64, 128), Architecture(2, 4, 128, 256)]
    ex = S.RayExecutor(surrogate, address=cluster.address)
    try:
        places = ex.placement()
        assert ex.capacity == 2 and len({p["node"] for p in places}) == 2
        for ticket, arch in enumerate(archs):
            ex.submit(ticket, arch)
        time.sleep(1.5)                           # both are running (a worker answers after its evaluation)
        os.kill(places[0]["pid"], signal.SIGKILL)
        done = {}
        while ex.running:
            done.update(ex.wait(timeout=60))
        assert sorted(done) == [0, 1]
        for ticket, arch in enumerate(archs):
            assert done[ticket].status == "ok", done[ticket]
            assert done[ticket].value == S.AnalyticSurrogate()(arch)
        assert ex.placement()[0]["pid"] != places[0]["pid"]     # a new process took the killed one's place
    finally:
        ex.close()
    assert not ray.is_initialized()


def test_a_node_lost_when_no_cpu_is_free_elsewhere_shrinks_the_workers_and_the_search_goes_on(monkeypatch):
    """Its worker was restarted by Ray but could never be placed (the other node's CPU held by the other worker), so
    the evaluation it held, and the search, waited for ever (47 of 48 evaluations, `ray status`: a pending CPU
    demand). The worker is ended, the slots shrink to one, and its evaluations run on the other node."""
    from ray.cluster_utils import Cluster

    from bortengine.search import ray_executor

    monkeypatch.setattr(ray_executor, "NODES_CHECK_S", 1.0)
    own = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                        "include_dashboard": False})
    ex = None
    try:
        second = own.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        own.wait_for_nodes()
        surrogate = S.AnalyticSurrogate(delay=1.0)
        archs = [Architecture(1, 2, 64, 128), Architecture(2, 4, 128, 256), Architecture(1, 4, 64, 256),
                 Architecture(2, 2, 128, 128)]
        ex = S.RayExecutor(surrogate, address=own.address)
        assert ex.capacity == 2 and len({p["node"] for p in ex.placement()}) == 2
        for ticket, arch in enumerate(archs):
            ex.submit(ticket, arch)
        time.sleep(0.3)
        own.remove_node(second, allow_graceful=False)
        done, deadline = {}, time.monotonic() + 150
        with pytest.warns(RuntimeWarning, match="the Ray cluster lost a node: 1 node.s. left hold 1 worker"):
            while ex.running:
                assert time.monotonic() < deadline, f"the search waits for ever: {sorted(done)} of 4 done"
                for ticket, result in ex.wait(timeout=10):
                    if result.status == "lost":        # (as the search does: submitted again)
                        ex.submit(ticket, archs[ticket])
                    else:
                        done[ticket] = result
        assert sorted(done) == [0, 1, 2, 3] and ex.capacity == 1
        for ticket, arch in enumerate(archs):
            assert done[ticket].status == "ok" and done[ticket].value == S.AnalyticSurrogate()(arch), done[ticket]
    finally:
        if ex is not None:
            ex.close(cancel=True)     # (a worker left waiting for CPUs would hold a plain close for ever)
        if ray.is_initialized():
            ray.shutdown()
        own.shutdown()


def test_the_workers_fit_the_cluster(cluster):
    """As many workers as the nodes hold (a worker that fits nowhere would wait forever, its evaluation with it):
    more asked for are cut with a warning, an evaluation wider than every node is refused."""
    with pytest.warns(RuntimeWarning, match="5 workers asked for, but the Ray cluster holds 2 of 1 CPU"):
        ex = S.RayExecutor(S.AnalyticSurrogate(), workers=5, address=cluster.address)
    assert ex.capacity == 2
    ex.close()
    with pytest.raises(ClusterError, match="no node of the Ray cluster .2 node.s., 2 CPU.s.. has the 2 CPU"):
        S.RayExecutor(S.DistillationSurrogate(threads=2), address=cluster.address)
    assert not ray.is_initialized()


DRIVER = """
import signal
import sys
signal.signal(signal.SIGINT, signal.default_int_handler)   # Ctrl-C, even when started as a background job
def stop(signum, frame):   # SIGTERM stops the run as Ctrl-C does, as the command line's handler does
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, stop)
sys.path.insert(0, {tests!r})
from pathlib import Path
from bortengine import search as S
from test_search import TINY, run, synthetic
try:
    run(TINY, synthetic(TINY), Path({dir!r}), exhaustive=True, ray_address={address!r},
        surrogate=S.AnalyticSurrogate(delay=1.0))
except S.SearchInterrupted as e:
    print(e, flush=True)
    sys.exit(130)
"""


def _driver(tmp_path: Path, address: str) -> subprocess.Popen:
    code = DRIVER.format(tests=str(ROOT / "tests"), dir=str(tmp_path), address=address)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _cached(tmp_path: Path) -> int:
    files = list((tmp_path / "cache").glob("analytic-*.jsonl"))
    return len(files[0].read_text().splitlines()) if files else 0


def _until_cached(tmp_path: Path, n: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while _cached(tmp_path) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{_cached(tmp_path)} evaluations cached in {timeout} s"
        time.sleep(0.1)


def test_an_interrupted_or_killed_driver_resumes_from_the_cache(cluster, tmp_path):
    """A driver stopped by Ctrl-C (its workers killed, the message says how to resume), then one killed outright
    (SIGKILL: Ray ends its workers with it): each keeps what finished in the cache on the driver's side, and the
    search resumed on the cluster runs only the rest, with the local executor's results."""
    total = len(TINY)
    first = _driver(tmp_path, cluster.address)
    _until_cached(tmp_path, 2, first)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130 and "run the same command again to resume" in out, err[-3000:]
    after_interrupt = _cached(tmp_path)
    assert 2 <= after_interrupt < total
    second = _driver(tmp_path, cluster.address)
    _until_cached(tmp_path, after_interrupt + 2, second)
    second.kill()
    second.communicate(timeout=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # a line the kill cut short, if it did
        cached = len(S.SurrogateCache(tmp_path / "cache", S.AnalyticSurrogate()).entries)
        resumed = run(TINY, synthetic(TINY), tmp_path, exhaustive=True, ray_address=cluster.address)
    assert after_interrupt + 2 <= cached < total
    assert resumed.evaluations == total and resumed.fresh_evaluations == total - cached
    reference = run(TINY, synthetic(TINY), tmp_path / "local", exhaustive=True)
    assert _outcomes(resumed) == _outcomes(reference) and resumed.winner.dims == reference.winner.dims
    assert set(resumed.nodes()) <= {n["NodeID"] for n in _cluster_nodes(cluster)}
    # the local executor resumes the same cache: nothing left to run
    assert run(TINY, synthetic(TINY), tmp_path, exhaustive=True).fresh_evaluations == 0


def test_sigterm_stops_a_driver_on_ray_as_ctrl_c_does(cluster, tmp_path):
    """ray.init put its own SIGTERM handler in place of the command's: the driver aborted (exit 134, a native stack
    dump, no resume message) instead of stopping as Ctrl-C does."""
    driver = _driver(tmp_path, cluster.address)
    _until_cached(tmp_path, 2, driver)
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130 and "run the same command again to resume" in out, err[-3000:]


def _cluster_nodes(cluster) -> list[dict]:
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        return ray.nodes()
    finally:
        ray.shutdown()


def _silent_server(reply: bytes) -> tuple[socket.socket, int]:
    """A TCP server on loopback that answers every connection with `reply` (no reply: silence) and hangs up."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                if reply:
                    conn.sendall(reply)
                else:
                    time.sleep(3)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_a_wrong_address_fails_at_once_with_a_message(tmp_path, capsys):
    """Nothing listening, a server that is not Ray (an HTTP answer, or silence), no port at all: a ClusterError
    naming the address and what to do, within the probe's timeout (ray.init would retry for minutes)."""
    from bortengine.cli import main

    with socket.create_server(("127.0.0.1", 0)) as s:
        closed = s.getsockname()[1]          # a free port, nothing listening once closed
    http, http_port = _silent_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    silent, silent_port = _silent_server(b"")
    try:
        cases = [(f"127.0.0.1:{closed}", "cannot reach a Ray cluster at 127.0.0.1:"),
                 (f"127.0.0.1:{http_port}", "answers, but not as a Ray cluster does"),
                 (f"127.0.0.1:{silent_port}", "no Ray cluster answered at 127.0.0.1:"),
                 ("headnode", "is not host:port")]
        for address, message in cases:
            start = time.monotonic()
            with pytest.raises(ClusterError, match=message) as info:
                S.RayExecutor(S.AnalyticSurrogate(), address=address, connect_timeout=2.0)
            assert time.monotonic() - start < 10 and "ray start --head" in str(info.value)
            assert not ray.is_initialized()
    finally:
        http.close()
        silent.close()
    path = synthetic(TINY).save(tmp_path / "profile.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic profile describes another CPU
        code = main(["extract", "--space", str(_space_file(tmp_path)), "--profile", str(path), "--batch", "1",
                     "--seq", "16", "--threads", "2", "--surrogate", "analytic", "--measure", "0", "--no-progress",
                     "--out", str(tmp_path / "out"), "--executor", "ray", "--ray-address", f"127.0.0.1:{closed}"])
    err = capsys.readouterr().err
    assert code == 2 and f"bortengine extract: error: cannot reach a Ray cluster at 127.0.0.1:{closed}" in err, err
    assert "Traceback" not in err


def _space_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY.to_dict()))
    return path


def test_the_pipeline_checks_its_executor_before_any_work(tmp_path):
    from bortengine.pipeline import PipelineConfig, PipelineError

    data = tmp_path / "train.csv"
    data.write_text("text,label\na,0\nb,1\n")
    base = dict(out=str(tmp_path / "run"), train=str(data))
    with socket.create_server(("127.0.0.1", 0)) as s:
        closed = s.getsockname()[1]
    for options, message in [({"executor": "spark"}, "executor must be local or ray"),
                              ({"ray_address": "127.0.0.1:6379"}, "goes with executor"),
                              ({"executor": "ray", "ray_address": f"127.0.0.1:{closed}"}, "cannot reach a Ray")]:
        with pytest.raises(PipelineError, match=message):
            PipelineConfig(**base, **options).check()
    PipelineConfig(**base, executor="ray").check()     # no address: a local instance, started when needed


def test_without_an_address_a_local_instance_listens_on_loopback_only():
    """No address and no RAY_ADDRESS: a Ray instance of this process's CPUs is started for the executor, every
    socket it listens on is bound to loopback, and it is shut down with the executor."""
    import psutil

    from bortengine.engine import available_cpus

    ex = S.RayExecutor(S.AnalyticSurrogate())
    try:
        assert ex.describe().startswith(f"ray: a local Ray instance, 1 node(s), {available_cpus()} CPU(s)")
        ex.submit("a", Architecture(2, 2, 64, 128))
        (ticket, result), = ex.wait(timeout=60)
        assert ticket == "a" and result.status == "ok" and len(result.node) == 56
        gcs = ray.get_runtime_context().gcs_address
        assert gcs.startswith("127.0.0.1:")
        listening = [a for p in psutil.Process().children(recursive=True) for a in _listening(psutil, p)]
        assert listening and all(_loopback(a.ip) for a in listening), listening
    finally:
        ex.close()
    assert not ray.is_initialized()


def _loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1 or the IPv4-mapped ::ffff:127.x.y.z (a dual-stack socket bound to 127.0.0.1)."""
    address = ipaddress.ip_address(ip)
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def _listening(psutil, process) -> list:
    """The addresses a process listens on (none when it ended meanwhile)."""
    try:
        return [c.laddr for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
