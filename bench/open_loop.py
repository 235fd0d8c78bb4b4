"""Open-loop HTTP load for the serving load test: POSTs at a fixed offered rate, whatever the answers do.

wrk is a closed loop (each connection waits for its answer before it sends again), so a slow server slows the
load it gets and its queueing never shows. Here arrivals are scheduled at start + k / rate; each goes out on an
idle keep-alive connection, or on a new one when all are busy (up to --max-connections; beyond that the arrival
is counted as not sent). wrk2, the usual open-loop tool, is not in Debian, so this is Python (asyncio protocols,
no HTTP library): it costs more CPU than wrk, and serve_load.py measures that cost (the process's CPU time) and
reports it beside the server's.

Latency is from the moment the request is written to the moment its answer is complete. The lag (write time
minus scheduled time) is reported too: when it grows, the client (or the machine) is not keeping up and the
offered rate was not really offered.

    python bench/open_loop.py URL BODIES --rate R --duration S [--max-connections 512] [--timeout 30]

BODIES: one JSON request body per line (as for wrk_post.lua). Prints one line, serve_report.MARKER + JSON, with
the keys wrk_post.lua uses plus "offered_rps", "not_sent", "lag_us", "connections" and "cpu_s" (this process's
CPU seconds from the first connection to the report, start-up excluded).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_report import MARKER, latency_summary_us  # noqa: E402

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class ProtocolError(Exception):
    """An answer this client cannot read (no Content-Length, or not HTTP/1.x)."""


def parse_response(buf: bytes | bytearray) -> tuple[int, int] | None:
    """(status, bytes used) of the first complete HTTP/1.x response in buf; None while it is incomplete.

    Both servers under test answer with Content-Length (Starlette's JSONResponse), so chunked bodies are not read.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    if not buf.startswith(b"HTTP/1."):
        raise ProtocolError(f"not an HTTP/1.x answer: {bytes(buf[:40])!r}")
    head = bytes(buf[:end])
    status = int(head[9:12])
    m = _CONTENT_LENGTH.search(head)
    if m is None:
        raise ProtocolError(f"answer without Content-Length: {head[:200]!r}")
    total = end + 4 + int(m.group(1))
    return (status, total) if len(buf) >= total else None


def request_bytes(host: str, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Tally:
    """What the run saw: latencies and lags in microseconds, answers by status class, failures."""

    def __init__(self):
        self.latency_us: list[float] = []
        self.lag_us: list[float] = []
        self.answers = 0
        self.status_errors = 0
        self.read_errors = 0
        self.connect_errors = 0
        self.not_sent = 0
        self.last_answer = 0.0


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, client: "OpenLoopClient"):
        self.client = client
        self.transport = None
        self.buf = bytearray()
        self.sent_at: float | None = None

    def connection_made(self, transport):
        self.transport = transport

    def send(self, data: bytes, scheduled: float) -> None:
        self.sent_at = now = self.client.clock()
        self.client.tally.lag_us.append((now - scheduled) * 1e6)
        self.transport.write(data)

    def data_received(self, data):
        self.buf += data
        try:
            parsed = parse_response(self.buf)
        except ProtocolError:
            self.transport.close()
            return
        if parsed is None:
            return
        status, used = parsed
        del self.buf[:used]
        done = self.client.clock()
        tally = self.client.tally
        tally.answers += 1
        tally.status_errors += status >= 400
        tally.latency_us.append((done - self.sent_at) * 1e6)
        tally.last_answer = done
        self.sent_at = None
        self.client.release(self)

    def connection_lost(self, exc):
        self.client.lost(self)


class OpenLoopClient:
    def __init__(self, url: str, bodies: list[bytes], max_connections: int):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise SystemExit(f"open_loop.py: need an http://host:port/path URL, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.requests = [request_bytes(parts.netloc, parts.path or "/", b) for b in bodies]
        self.max_connections = max_connections
        self.idle: deque[Connection] = deque()
        self.open_count = 0  # connections open or opening
        self.opened = 0  # connections opened in the whole run
        self.in_flight: set[Connection] = set()
        self.opening: set[asyncio.Future] = set()  # arrivals waiting for their new connection
        self.tally = Tally()
        self.clock = time.perf_counter
        self.next_body = 0

    def release(self, conn: Connection) -> None:
        self.in_flight.discard(conn)
        self.idle.append(conn)

    def lost(self, conn: Connection) -> None:
        self.open_count -= 1
        if conn in self.in_flight:
            self.in_flight.discard(conn)
            self.tally.read_errors += 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def _body(self) -> bytes:
        data = self.requests[self.next_body]
        self.next_body = (self.next_body + 1) % len(self.requests)
        return data

    def submit(self, scheduled: float) -> None:
        """Send one arrival now: on an idle connection, else on a new one once it is open."""
        if self.idle:
            conn = self.idle.pop()
            self.in_flight.add(conn)
            conn.send(self._body(), scheduled)
        elif self.open_count < self.max_connections:
            self.open_count += 1
            task = asyncio.ensure_future(self._open_and_send(self._body(), scheduled))
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)
        else:
            self.tally.not_sent += 1

    async def _connect(self) -> Connection | None:
        """A new connection, counted in open_count by the caller beforehand; None (and counted) if refused."""
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        except OSError:
            self.open_count -= 1
            self.tally.connect_errors += 1
            return None
        self.opened += 1
        return conn

    async def _open_and_send(self, data: bytes, scheduled: float) -> None:
        conn = await self._connect()
        if conn is not None:
            self.in_flight.add(conn)
            conn.send(data, scheduled)

    async def run(self, rate: float, duration: float, timeout: float, warm_connections: int = 4) -> dict:
        for _ in range(warm_connections):  # a few connections ready, so the first arrivals do not pay the connect
            self.open_count += 1
            conn = await self._connect()
            if conn is not None:
                self.idle.append(conn)
        n = max(1, int(round(rate * duration)))
        start = self.clock() + 0.01
        for k in range(n):
            scheduled = start + k / rate
            wait = scheduled - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            self.submit(scheduled)
        end_of_arrivals = self.clock()
        deadline = end_of_arrivals + timeout
        while (self.in_flight or self.opening) and self.clock() < deadline:
            await asyncio.sleep(0.005)
        timeouts = len(self.in_flight) + len(self.opening)
        for conn in list(self.idle) + list(self.in_flight):
            conn.transport.close()
        t = self.tally
        # throughput over the scheduled span, or until the last answer when the server lagged behind
        span = max(n / rate, (t.last_answer or end_of_arrivals) - start)
        return {"client": "open_loop.py", "offered_rps": rate, "duration_us": span * 1e6, "requests": t.answers,
                "errors": {"connect": t.connect_errors, "read": t.read_errors, "write": 0,
                           "status": t.status_errors, "timeout": timeouts},
                "not_sent": t.not_sent, "connections": self.opened,
                "latency_us": latency_summary_us(t.latency_us), "lag_us": latency_summary_us(t.lag_us)}

def read_bodies(path: Path) -> list[bytes]:
    bodies = [line.encode() for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not bodies:
        raise SystemExit(f"open_loop.py: no request bodies in {path}")
    return bodies


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("bodies", type=Path)
    parser.add_argument("--rate", type=float, required=True, help="requests per second offered")
    parser.add_argument("--duration", type=float, required=True, help="seconds of arrivals")
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the last answers after the last arrival")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    client = OpenLoopClient(args.url, read_bodies(args.bodies), args.max_connections)
    cpu0 = time.process_time()
    report = asyncio.run(client.run(args.rate, args.duration, args.timeout))
    # the CPU of the run itself: the interpreter's start-up and imports are not load the client generates
    report["cpu_s"] = time.process_time() - cpu0
    print(MARKER + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
