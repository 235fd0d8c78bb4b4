"""Running the app under uvicorn: the listening socket is bound first (a port in use is a one-line error before
anything loads), the model loads while the server already answers /health, and SIGTERM drains.

SIGTERM (uvicorn's graceful shutdown): the listening socket closes, idle keep-alive connections close, the
requests accepted so far are answered (for at most --graceful-timeout seconds), then the process exits with 0.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import uvicorn

from bortengine.engine import ModelConfig, transformer_directory
from bortengine.errors import ModelLoadError, UsageError
from bortengine.serving.app import ModelService, check_input_limit, create_app
from bortengine.serving.errors import error_body
from bortengine.serving.options import ServeOptions

__all__ = ["serve", "listening_socket", "url"]

# Connections the kernel holds for the server before it accepts them: enough for a burst of clients.
BACKLOG = 2048


def serve(model_dir: str | Path, options: ServeOptions = ServeOptions(),
          announce: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
    """Serve the model in model_dir until SIGTERM (drains, then returns) or SIGINT (KeyboardInterrupt). announce
    receives the lines that say where the server listens and when the model is ready. A model that cannot load
    stops the server, and its error is raised here."""
    _check_options_against_config(model_dir, options)
    failures: list[BaseException] = []
    started = time.perf_counter()

    def ready(service: ModelService) -> None:
        e = service.engine
        threads = f"{e.num_threads} thread{'s' if e.num_threads != 1 else ''}"
        announce(f"ready: {service.name} ({e.config.kind}, {e.embedding_dim} dimensions, {e.dtype}, {threads}, "
                 f"{e.isa}, max {service.max_input_tokens} tokens per text) in "
                 f"{time.perf_counter() - started:.1f} s")

    def failed(error: BaseException) -> None:
        failures.append(error)
        server.should_exit = True

    app = create_app(model_dir, options, on_ready=ready, on_failure=failed)
    config = uvicorn.Config(app, lifespan="on", access_log=options.access_log, log_level=options.log_level,
                            timeout_graceful_shutdown=options.graceful_timeout, backlog=BACKLOG,
                            http=json_400_protocol())
    if options.access_log:
        # uvicorn writes its access lines at INFO, so --log-level warning would silence the log asked for
        logging.getLogger("uvicorn.access").setLevel(min(logging.INFO, logging.getLogger("uvicorn.access").level))
    server = uvicorn.Server(config)
    with _drained_exit(server):
        sock = listening_socket(options.host, options.port)
        announce(f"listening on {url(sock)} (loading {model_dir}; GET /health answers 200 once it is ready)")
        server.run(sockets=[sock])
    if failures:
        raise failures[0]


def _check_options_against_config(model_dir: str | Path, options: ServeOptions) -> None:
    """What config.json alone can refute is refuted before the port is taken, not after "listening on": a
    --max-input-tokens beyond the model's positions. A config that does not parse is left to the load, which says
    what is wrong with the whole model."""
    if options.max_input_tokens is None:
        return
    try:
        config = ModelConfig.from_file(transformer_directory(model_dir))
    except ModelLoadError:
        return
    check_input_limit(options.max_input_tokens, config)


def json_400_protocol() -> type:
    """The HTTP protocol uvicorn picks by default (httptools when installed, else h11), answering a request it cannot
    parse (a malformed request line or header, headers past the parser's limits) with the JSON error body every
    other refusal of the server has, where uvicorn writes a text/plain line."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Protocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Protocol

    class JSON400Protocol(Protocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps(error_body(
                f"the request is not valid HTTP/1.1 ({msg.rstrip('.')}): check its request line and headers "
                f"(one 'Name: value' a line, each line ending in CRLF)", "invalid_request_error",
                code="invalid_http")).encode()
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                     b"connection: close\r\n\r\n"]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return JSON400Protocol


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) and listening; the errors a user can fix are UsageErrors."""
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
    server as soon as it listens): recorded as uvicorn records them, so it starts, drains at once and exits as it
    would (they were lost, or ended the process by the signal). After a graceful shutdown uvicorn raises the signal
    that caused it again, under the handler it found: SIGINT goes on to Python's (KeyboardInterrupt), SIGTERM to none,
    so a drained server returns and the process exits with 0."""
    if threading.current_thread() is not threading.main_thread():   # only it may set signal handlers
        yield
        return
    previous = {}

    def before_or_after_uvicorn(signum: int, frame: Any) -> None:
        if not server.started:
            server.handle_exit(signum, frame)
        elif signum == signal.SIGINT and callable(previous.get(signal.SIGINT)):
            previous[signal.SIGINT](signum, frame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:   # (a shell's background job ignores SIGINT)
            previous[sig] = signal.signal(sig, before_or_after_uvicorn)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
