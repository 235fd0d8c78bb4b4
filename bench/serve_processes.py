"""The processes of the serving load test and the CPU they take: the two servers under test (started on
127.0.0.1, ready once GET /health answers 200), the load clients (wrk, open_loop.py), the in-process reference
children, and the machine's CPU time split into server / client / everything else for every load level.

A client's CPU time is its rusage, read as the growth of this process's RUSAGE_CHILDREN across the client's run:
the client is the only child reaped in that window (the servers are reaped at the very end, the reference
children before the levels start); open_loop.py, a Python client, reports the CPU of its run itself, its
interpreter's start-up excluded. A server's is psutil's user + system time of it and its children. The rest
of the machine ("others") is the busy time of /proc/stat (hypervisor steal included) minus both.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from serve_report import parse_client_report

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
OPEN_LOOP = BENCH_DIR / "open_loop.py"


class LoadTestError(RuntimeError):
    """The load test cannot go on: a server did not start, a client failed, an answer was wrong."""


def free_port() -> int:
    """An ephemeral port on 127.0.0.1 that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(src: Optional[str] = None) -> dict:
    """The environment of every child: the bortengine this process imported comes first on PYTHONPATH, so the
    server runs the same source as the references (a worktree, not whatever is installed); or src, another source
    tree's src directory (an A/B of two commits: its native module built or copied there)."""
    import bortengine

    src = src or str(Path(bortengine.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _pin(cpus: Optional[Sequence[int]]):
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, set(cpus))


def http_json(url: str, body: Optional[dict] = None, timeout: float = 60.0) -> tuple[int, dict]:
    """(status, decoded JSON body) of a GET, or of a POST when body is given."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"null")
        except ValueError:
            return e.code, {"raw": raw[:500].decode(errors="replace")}


class ServerProcess:
    """A server under test in its own session (so stop() ends it and anything it started)."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path, cpus: Optional[Sequence[int]] = None,
                 src: Optional[str] = None, ready_line: Optional[bytes] = None):
        self.name, self.argv, self.port, self.log_path = name, argv, port, log_path
        self.ready_line = ready_line   # what the log says once the server is ready, besides /health's 200
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=child_env(src), start_new_session=True, preexec_fn=_pin(cpus))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> float:
        """Seconds until GET /health answered 200 (and the log has ready_line); LoadTestError if the process ends or
        the time runs out."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise LoadTestError(f"the {self.name} server exited with code {self.proc.returncode} before it "
                                    f"was ready: {' '.join(self.argv)}\n{self.log_tail()}")
            try:
                if http_json(self.base_url + "/health", timeout=2)[0] == 200 and (
                        self.ready_line is None or self.ready_line in self.log_path.read_bytes()):
                    return time.monotonic() - start
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise LoadTestError(f"the {self.name} server was not ready after {timeout:.0f} s\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        import psutil

        try:
            p = psutil.Process(self.proc.pid)
            t = p.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for child in p.children(recursive=True):
                try:
                    c = child.cpu_times()
                    total += c.user + c.system
                except psutil.NoSuchProcess:
                    pass
            return total
        except psutil.NoSuchProcess:
            return 0.0

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()


# -- CPU accounting ----------------------------------------------------------------------------------------------
def machine_busy_seconds() -> Optional[float]:
    """Busy CPU seconds of the whole machine since boot (/proc/stat: all but idle and iowait; steal included)."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = cpu[3] + cpu[4]
    return (sum(cpu) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class ClientRun:
    report: dict
    client_cpu_s: float
    server_cpu_s: float
    others_cpu_s: Optional[float]


def run_client(argv: list[str], server: ServerProcess, servers: Sequence[ServerProcess], timeout: float,
               cpus: Optional[Sequence[int]] = None) -> ClientRun:
    """Run one load client against `server` to its end; its report and the CPU everyone took meanwhile."""
    busy0, kids0 = machine_busy_seconds(), children_cpu_seconds()
    srv0 = {s.name: s.cpu_seconds() for s in servers}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=child_env(),
                              preexec_fn=_pin(cpus))
    except subprocess.TimeoutExpired as e:
        raise LoadTestError(f"the client did not end within {timeout:.0f} s: {' '.join(argv)}") from e
    client = children_cpu_seconds() - kids0
    srv = {s.name: s.cpu_seconds() - srv0[s.name] for s in servers}
    busy1 = machine_busy_seconds()
    if server.proc.poll() is not None:
        raise LoadTestError(f"the {server.name} server died under load (code {server.proc.returncode})\n"
                            f"{server.log_tail()}")
    try:
        report = parse_client_report(proc.stdout)
    except ValueError as e:
        raise LoadTestError(f"{' '.join(argv)} exited with code {proc.returncode}: {e}\n{proc.stderr[-2000:]}") from e
    others = None if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - client - srv[server.name])
    # a Python client's interpreter start-up is no load on the server: it reports the CPU of its run ("cpu_s")
    return ClientRun(report, report.get("cpu_s", client), srv[server.name], others)


def wrk_argv(url: str, bodies: Path, connections: int, seconds: int, threads: int, timeout_s: float,
             pause_ms: float = 0) -> list[str]:
    """wrk's command line: a closed loop of `connections` connections over `threads` event-loop threads."""
    return ["wrk", f"-t{max(1, min(threads, connections))}", f"-c{connections}", f"-d{seconds}s",
            "--timeout", f"{timeout_s:g}s", "-s", str(WRK_SCRIPT), url, "--", str(bodies), f"{pause_ms:g}"]


def open_loop_argv(url: str, bodies: Path, rate: float, seconds: float, timeout_s: float) -> list[str]:
    return [sys.executable, str(OPEN_LOOP), url, str(bodies), "--rate", f"{rate:g}", "--duration", f"{seconds:g}",
            "--timeout", f"{timeout_s:g}"]


def wrk_version() -> Optional[str]:
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else None


def run_reference(argv: list[str], timeout: float, cpus: Optional[Sequence[int]] = None) -> dict:
    """An in-process reference child (serve_inprocess.py), on the servers' CPUs: its JSON report."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=child_env(),
                          preexec_fn=_pin(cpus))
    try:
        return parse_client_report(proc.stdout)
    except ValueError as e:
        raise LoadTestError(f"{' '.join(argv)} exited with code {proc.returncode}: {e}\n{proc.stderr[-3000:]}") from e
