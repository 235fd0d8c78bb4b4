"""One server process: the app under uvicorn on a listening socket bound first (a port in use is a one-line error
before anything loads), the model loading while the server already answers /health (a --workers process: before it
accepts connections), and SIGTERM draining.

SIGTERM (uvicorn's graceful shutdown): the listening socket closes, idle keep-alive connections close, the
requests accepted so far are answered (for at most --graceful-timeout seconds), then the process exits with 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import select
import signal
import socket
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import uvicorn

from bortengine.errors import UsageError
from bortengine.serving.app import ModelService, create_app
from bortengine.serving.errors import error_body
from bortengine.serving.options import ServeOptions
from bortengine.serving.responses import json_bytes
from bortengine.serving.siblings import Siblings

__all__ = ["run_server", "listening_socket", "url", "describe"]

# Connections the kernel holds for the server before it accepts them: enough for a burst of clients.
BACKLOG = 2048
# How long a draining server goes on accepting what the kernel queued for it, and reading the requests of the
# connections it accepted, at most (_Server).
DRAIN_ACCEPT_S = 1.0
# A request's line and headers may take this many bytes, and its URL URL_LIMIT_BYTES: past them 431 / 414 and the
# connection closes. httptools has no limit of its own: a client streaming one endless header held the event loop
# (each piece joined to the rest: 128 MB took 27 s to parse, every other client waiting) and its memory. (Node
# allows 16 KiB, nginx 32 KiB per line; bearer tokens and cookies of a few KiB fit.)
HEAD_LIMIT_BYTES = 64 * 1024
URL_LIMIT_BYTES = 16 * 1024
_HEAD_TOO_LARGE = (f"the request's line and headers pass {HEAD_LIMIT_BYTES} bytes, this server's limit; send the "
                   f"texts in the JSON body, and shorter headers")
# An answer that closes the connection before the request's body has all come (413, 415, 408, 501: the rest is
# not read) half-closes it, then reads and drops what the client still sends, for at most LINGER_S seconds and
# LINGER_BYTES bytes, before it closes (nginx's lingering close). Closed at once, the kernel answered the unread
# bytes with a reset, which took the answer from a client still sending its body (Node's http and fetch got
# ECONNRESET instead of the 413 at 4-64 MB).
LINGER_S = 5.0
LINGER_BYTES = 64 * 1024 * 1024
# The signals that stop a server (draining first): a --workers worker starts with them blocked until it handles them.
STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A --header-timeout that finds bytes sent but not yet read (the event loop was busy when it fell due) waits this
# much longer: the client did send them in time.
HEADER_GRACE_S = 1.0


def run_server(model_dir: str | Path, options: ServeOptions, bind: Callable[[], socket.socket],
               on_listening: Callable[[socket.socket], None], on_ready: Callable[[ModelService], None],
               siblings: Optional[Siblings] = None) -> None:
    """One server process: uvicorn on the socket bind() gives, the model loading in the background (on_ready once it
    is warmed up), until SIGTERM or SIGINT has drained it. A model that cannot load stops the server, and its error
    is raised here. siblings: a process of a --workers server, which loads the model before it accepts
    connections."""
    failures: list[BaseException] = []

    def failed(error: BaseException) -> None:
        failures.append(error)
        server.should_exit = True

    app = create_app(model_dir, options, on_ready=on_ready, on_failure=failed, siblings=siblings,
                     serve_while_loading=siblings is None)
    config = uvicorn.Config(app, lifespan="on", access_log=options.access_log, log_level=options.log_level,
                            timeout_graceful_shutdown=options.graceful_timeout, backlog=BACKLOG,
                            http=http_protocol(app.state.metrics.record_unparsed, options.header_timeout,
                                               options.keep_alive_timeout),
                            ws="none", timeout_keep_alive=options.keep_alive_timeout)
    if options.access_log:
        # uvicorn writes its access lines at INFO, so --log-level warning would silence the log asked for
        logging.getLogger("uvicorn.access").setLevel(min(logging.INFO, logging.getLogger("uvicorn.access").level))
    server = _Server(config)
    server.on_drain = lambda: setattr(app.state.service, "draining", True)
    with _drained_exit(server):
        sock = bind()
        on_listening(sock)
        server.run(sockets=[sock])
    if failures:
        raise failures[0]


class _Server(uvicorn.Server):
    """uvicorn's Server, except for a signal that comes before it serves: a --workers process loading the model, whose
    socket the kernel has queued connections on since the port was bound. Acted on at once, the listening socket
    closed unaccepted and those connections were reset; here the server starts, accepts them on its loop's first
    tick, then drains as it does under a signal later (their requests are answered). A second signal meanwhile is
    acted on at once (a second Ctrl-C stops without draining)."""
    deferred_signal: Optional[int] = None
    on_drain: Callable[[], None] = staticmethod(lambda: None)   # called as the drain begins

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.started and self.deferred_signal is None:
            self.deferred_signal = sig
            return
        if self.deferred_signal is not None and not self.should_exit:
            super().handle_exit(self.deferred_signal, None)
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if counter > 0 and self.deferred_signal is not None and not self.should_exit:
            super().handle_exit(self.deferred_signal, None)
        return await super().on_tick(counter)

    async def shutdown(self, sockets: Optional[list[socket.socket]] = None) -> None:
        """uvicorn's drain, which closed the listening socket at once, and then every connection without a request
        in progress: the connections the kernel had queued for the server, and those accepted whose request had not
        been read yet, were reset, though their requests were sent before the signal (a burst of clients at a
        SIGTERM under load lost up to half). Here the server first goes on accepting while connections wait, then
        closes the socket and reads the requests waiting on connections it accepted (each for at most
        DRAIN_ACCEPT_S); those requests are answered with the rest. A second Ctrl-C (force_exit) skips this, but
        still ends the app's lifespan (uvicorn left it to be cancelled, which logged a traceback)."""
        self.on_drain()
        if not self.force_exit:
            listeners = [s for server in self.servers for s in server.sockets]
            await self._while_readable(listeners)
            for server in self.servers:
                server.close()
            await self._while_readable(())
        await super().shutdown(sockets)
        if self.force_exit:
            with contextlib.suppress(Exception):
                await self.lifespan.shutdown()

    async def _while_readable(self, listeners: Any) -> None:
        """Until none of listeners has a connection waiting and no idle connection (_idle) has bytes waiting (the
        loop accepts and reads them meanwhile), for at most DRAIN_ACCEPT_S."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_ACCEPT_S
        while not self.force_exit and loop.time() < deadline:
            idle = [c.transport.get_extra_info("socket") for c in self.server_state.connections
                    if _idle(c) and not c.transport.is_closing()]
            waiting = [s for s in [*listeners, *idle] if s is not None]
            if not waiting or not select.select(waiting, [], [], 0)[0]:
                return
            await asyncio.sleep(0.002)


def _idle(connection: Any) -> bool:
    """Whether uvicorn's drain closes this connection at once: no request, or its last answered (keep-alive)."""
    cycle = getattr(connection, "cycle", None)
    return cycle is None or cycle.response_complete


def describe(service: ModelService) -> str:
    """What the "ready" line says of a served model."""
    e = service.engine
    threads = f"{e.num_threads} thread{'s' if e.num_threads != 1 else ''}"
    return (f"{service.name} ({e.config.kind}, {e.embedding_dim} dimensions, {e.dtype}, {threads}, {e.isa}, max "
            f"{service.max_input_tokens} tokens per text)")


# An Upgrade header makes httptools skip the request's body (httptools#124, uvicorn#2722): a POST offering HTTP/2
# over cleartext ("Upgrade: h2c", as Java's HttpClient, Ktor and `curl --http2` offer it) was answered "body is
# empty". This server upgrades to nothing (no websockets either), and RFC 9110 7.8 lets it ignore the offer and
# answer in HTTP/1.1: the header is renamed before the parser reads it. (One split between two reads of the socket
# escapes this: the parser then does as before.)
_UPGRADE_HEADER = re.compile(rb"\r\nupgrade:", re.IGNORECASE)
IGNORED_UPGRADE = b"\r\nx-ignored-upgrade:"


def http_protocol(on_refused: Callable[[int], None] = lambda status: None,
                  header_timeout: float = ServeOptions.header_timeout,
                  keep_alive_timeout: float = ServeOptions.keep_alive_timeout) -> type:
    """The HTTP protocol uvicorn picks by default (httptools when installed, else h11), changed where a client would
    otherwise not get its answer, or not the JSON one:
    - a request it cannot parse (a malformed request line or header, headers past the parser's limits) gets the
      JSON error body every other refusal of the server has, where uvicorn writes a text/plain line;
    - (httptools) an offer to upgrade the connection (h2c) is ignored, and the request answered (_UPGRADE_HEADER);
    - (httptools) a request line and headers past HEAD_LIMIT_BYTES (URL_LIMIT_BYTES for the URL) get 431 (414);
    - (httptools) an answer that closes the connection before the request's body has all come lingers (LINGER_S);
    - (httptools) a request line and headers not all come header_timeout seconds after the connection opened or the
      request's first byte get 408, and a connection that sent nothing by then is closed;
    - (httptools) an answer that leaves the connection open says for how long in `Keep-Alive: timeout=N`
      (keep_alive_timeout), and one that closes it does not (_KeepAliveHeaders).
    on_refused(status) is told of each request the protocol refuses (the server's metrics count them).
    A client that half-closes the connection after its request (shutdown(SHUT_WR), as `nc -N` does) is taken for one
    that left, as uvicorn takes it: the end of its data is all the server sees of a client that closed its socket,
    whose queued work is dropped."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Protocol
        httptools = True
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Protocol   # h11 limits headers to 16 KiB
        httptools = False     # and reads the body of a request that offers an upgrade

    class ServerProtocol(Protocol):
        def send_400_response(self, msg: str) -> None:
            self._refuse(400, "Bad Request",
                         f"the request is not valid HTTP/1.1 ({msg.rstrip('.')}): check its request line and headers "
                         f"(one 'Name: value' a line, each line ending in CRLF)", "invalid_http")

        def _refuse(self, status: int, reason: str, message: str, code: str) -> None:
            on_refused(status)
            body = json_bytes(error_body(message, "invalid_request_error", code=code))
            head = [b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                     b"connection: close\r\n\r\n"]
            self._send_refusal(b"".join(head) + body)

        def _send_refusal(self, answer: bytes) -> None:
            self.transport.write(answer)
            self.transport.close()

    if not httptools:
        return ServerProtocol
    keep_alive = (b"keep-alive", b"timeout=%d" % int(keep_alive_timeout))

    class HttpToolsServerProtocol(ServerProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes = 0          # of the request whose headers are still coming, in whole reads
            self._in_head = True          # between a request's first byte and the end of its headers
            # a refusal a parser callback decided on: _refuse's arguments (status, reason, message, code)
            self._too_long: Optional[tuple[int, str, str, str]] = None
            self._read = 0                # bytes of the read being parsed
            self._linger: Optional[asyncio.TimerHandle] = None
            self._linger_left = 0         # bytes a lingering connection still drops before it closes
            self._refusal: Optional[bytes] = None   # sent once the answers of the requests before it are
            # while a request's line and headers are awaited: from the connection's opening, or from a request's first
            # read that did not hold them all (a whole head in one read, the usual case, arms nothing)
            self._head_timer: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def data_received(self, data: bytes) -> None:
            if self._linger is not None or self._refusal is not None:   # what follows a refusal is dropped
                self._linger_left -= len(data)
                if self._linger is not None and self._linger_left < 0:
                    self.transport.close()
                return
            if _UPGRADE_HEADER.search(data):
                data = _UPGRADE_HEADER.sub(IGNORED_UPGRADE, data)
            # a read counts when the headers were coming before it and still are after it: all of it is headers
            # (one that ends them is judged by the headers parsed: on_headers_complete)
            in_head = self._in_head
            self._read = len(data)
            super().data_received(data)
            if self._in_head and self._linger is None and self._refusal is None and not self.transport.is_closing():
                if in_head:
                    self._head_bytes += len(data)
                    if self._head_bytes > HEAD_LIMIT_BYTES:
                        self._refuse(431, "Request Header Fields Too Large", _HEAD_TOO_LARGE, "headers_too_large")
                        return
                if self._head_timer is None:
                    self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self._in_head or self.transport.is_closing() or self._linger is not None \
                    or self._refusal is not None:
                return
            sock = self.transport.get_extra_info("socket")
            if sock is not None and select.select([sock], [], [], 0)[0]:
                self._head_timer = self.loop.call_later(HEADER_GRACE_S, self._head_timed_out)
                return
            if self._head_bytes == 0 and self.cycle is None:   # a new connection that sent nothing: no one to answer
                self.transport.close()
                return
            self._refuse(408, "Request Timeout", f"the request's line and headers did not all come within "
                                                 f"{header_timeout:g} s (--header-timeout), so the connection is "
                                                 f"closed; send a request's head at once", "header_timeout")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > URL_LIMIT_BYTES:
                self._too_long = (414, "URI Too Long", f"the request's URL passes {URL_LIMIT_BYTES} bytes, this "
                                                       f"server's limit; the routes take their input in a JSON body",
                                  "url_too_long")
                raise ValueError("URL too long")   # the parser stops: send_400_response answers it

        def on_headers_complete(self) -> None:
            self._in_head = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if self._head_bytes + self._read > HEAD_LIMIT_BYTES and \
                    len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > HEAD_LIMIT_BYTES:
                self._too_long = (431, "Request Header Fields Too Large", _HEAD_TOO_LARGE, "headers_too_large")
                raise ValueError("headers too large")   # the parser stops: send_400_response answers it
            super().on_headers_complete()
            if self.cycle is not None:
                self.cycle.transport = _CycleTransport(self.transport, self._cycle_closed)
                http_10 = self.scope["http_version"] == "1.0"
                if http_10 and self.parser.should_keep_alive():
                    # an HTTP/1.0 client that asks to keep the connection (`Connection: keep-alive`, as `ab -k`):
                    # uvicorn closes every HTTP/1.0 one; kept, as nginx keeps it, and said so in the answer
                    self.cycle.keep_alive = True
                if self.cycle.keep_alive:
                    self.cycle.default_headers = _KeepAliveHeaders(
                        self.cycle, [*([_KEEP_CONNECTION] if http_10 else []), keep_alive])

        def send_400_response(self, msg: str) -> None:
            if self._too_long is not None:
                self._refuse(*self._too_long)
            else:
                super().send_400_response(msg)

        def _send_refusal(self, answer: bytes) -> None:
            """A request refused by the protocol answered after the requests pipelined before it (each answer in its
            request's order: answered at once, it took the place of theirs, which were lost), then lingering. A
            fault inside the body of the request being read is that request's answer, at once: its handler, which
            waits for the rest of the body, is told the client left."""
            cycle = self.cycle
            if cycle is not None and cycle.more_body and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
                if self.pipeline:   # a pipelined request's, not begun: at once as uvicorn (those ahead are lost)
                    self.transport.write(answer)
                    self.transport.close()
                    return
            elif self.pipeline or cycle is not None and not cycle.response_complete:
                self._refusal = answer
                return
            self.transport.write(answer)
            self._close_unread()

        def _close_unread(self, refused: bool = True) -> None:
            """The close after an answer that ends the connection: at once when the request's body has all come (a
            cycle's answer), else lingering (LINGER_S), as after a request refused before its end was parsed."""
            if self.transport.is_closing() or self._linger is not None:
                return
            if not refused and (self.cycle is None or not self.cycle.more_body):
                self.transport.close()
                return
            self._linger_left = LINGER_BYTES
            self._linger = self.loop.call_later(LINGER_S, self.transport.close)
            self.flow.resume_reading()
            self.transport.write_eof()     # after the answer: the client reads it, then its end

        def _cycle_closed(self) -> None:
            self._close_unread(refused=False)

        def on_response_complete(self) -> None:
            if self._linger is not None:   # closing: no pipelined request is started, no keep-alive timer armed
                self.server_state.total_requests += 1
                return
            super().on_response_complete()
            if self._refusal is not None and not self.transport.is_closing() and not self.pipeline \
                    and self.cycle.response_complete:
                self._unset_keepalive_if_required()
                answer, self._refusal = self._refusal, None
                self.transport.write(answer)
                self._close_unread()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            for timer in (self._linger, self._head_timer):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

    return HttpToolsServerProtocol


_KEEP_CONNECTION = (b"connection", b"keep-alive")   # HTTP/1.0 closes unless the answer says this


class _KeepAliveHeaders(list):
    """The headers uvicorn starts each answer of a kept-alive connection with, which join `Keep-Alive: timeout=N` to
    them (and to an HTTP/1.0 answer `Connection: keep-alive`) unless the connection closes after the answer: its own
    headers say `Connection: close` (a 413 before the body has come), or the cycle is no longer kept (a drain began).
    As a header of every answer, `ab -k` took closing connections for kept ones and met a reset on each next
    request. uvicorn writes an answer's head from `cycle.default_headers + <the answer's headers>`."""

    def __init__(self, cycle: Any, keep_alive: list[tuple[bytes, bytes]]):
        super().__init__(cycle.default_headers)
        self.cycle = weakref.ref(cycle)     # (which holds this list: no reference cycle per request)
        self.keep_alive = keep_alive

    def __add__(self, headers: list) -> list:  # type: ignore[override]
        cycle = self.cycle()
        closes = cycle is None or not cycle.keep_alive or any(
            name.lower() == b"connection" and b"close" in value.lower() for name, value in headers)
        return [*self, *([] if closes else self.keep_alive), *headers]


class _CycleTransport:
    """The connection as one request's cycle sees it: the same transport, except that the close after an answer that
    ends the connection is the protocol's (lingering while the body is still coming)."""
    __slots__ = ("_transport", "close")

    def __init__(self, transport: asyncio.Transport, close: Callable[[], None]):
        self._transport = transport
        self.close = close

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def listening_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to (host, port) and listening; the errors a user can fix are UsageErrors. reuse_port: one
    of several sockets on the port (SO_REUSEPORT), among which the kernel spreads new connections."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: {e.strerror}; pass an address of this machine, e.g. 127.0.0.1 (this "
                         f"machine only) or 0.0.0.0 (every interface)") from None
    sock = socket.socket(family, kind, proto)
    # a restarted server may take its port back while the old connections sit in TIME_WAIT; a live listener on
    # the port still makes bind() fail
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        fixes = {errno.EADDRINUSE: f"port {port} on {host} is in use by another process; pass another --port (0 "
                                   f"picks a free one) or stop that process",
                 errno.EACCES: f"port {port} needs privileges this process lacks (ports below 1024 are root's); "
                               f"pass --port 1024 or above",
                 errno.EADDRNOTAVAIL: f"--host {host} is not an address of this machine; pass 127.0.0.1 or "
                                      f"0.0.0.0"}
        raise UsageError(fixes.get(e.errno, f"cannot listen on {host} port {port}: {e.strerror}")) from None
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def _drained_exit(server: uvicorn.Server) -> Iterator[None]:
    """SIGTERM and SIGINT from before the port is bound until uvicorn handles them (a supervisor that stops the
    server as soon as it listens): handed to the server as uvicorn hands them, so it starts, drains and exits as it
    would later (_Server: once it has accepted what the kernel queued; they were lost, or ended the process by the
    signal). After a graceful shutdown uvicorn raises the signal that caused it again, under the handler it found:
    SIGINT goes on to Python's (KeyboardInterrupt), SIGTERM to none, so a drained server returns and the process
    exits with 0. SIGHUP (a closed terminal, some supervisors) stops the server as SIGTERM does, unless ignored."""
    if threading.current_thread() is not threading.main_thread():   # only it may set signal handlers
        yield
        return
    previous = {}

    def before_or_after_uvicorn(signum: int, frame: Any) -> None:
        if not server.started:
            server.handle_exit(signum, frame)
        elif signum == signal.SIGINT and callable(previous.get(signal.SIGINT)):
            previous[signal.SIGINT](signum, frame)

    def hung_up(signum: int, frame: Any) -> None:
        # uvicorn handles no SIGHUP, whose default ended the process with its requests unanswered
        server.handle_exit(signal.SIGTERM, frame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:   # (a shell's background job ignores SIGINT)
            previous[sig] = signal.signal(sig, before_or_after_uvicorn)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:   # (nohup ignores it)
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hung_up)
    # a --workers parent starts its workers with these blocked (serving.workers): they are handled from here on
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPING_SIGNALS)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
