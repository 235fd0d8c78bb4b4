"""What `bortengine serve` is told: where to listen, how to load the model, and the limits that keep one client
from taking the server (items, tokens and bytes per request, requests admitted at once).

The defaults are chosen for one model on a few CPUs behind loopback or a reverse proxy; every one has its reason
beside it.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Optional

from bortengine.engine import DTYPES
from bortengine.errors import UsageError

__all__ = ["ServeOptions", "API_KEY_VARIABLE", "LOG_LEVELS", "api_key_from_environment"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

# An origin as a browser sends it in its Origin header: scheme://host[:port], nothing after.
_ORIGIN = re.compile(r"https?://[^/\s:?#]+(:[0-9]{1,5})?")

# The environment variable the API key may come from, so that it is not on the command line for `ps` to show.
API_KEY_VARIABLE = "BORTENGINE_API_KEY"


@dataclass(frozen=True)
class ServeOptions:
    # Loopback by default: a server reachable from other machines is a decision, not an accident.
    host: str = "127.0.0.1"
    # 0 asks the OS for any free port (tests); the server prints the one it got.
    port: int = 8000
    # Server processes on the port, each with its own copy of the model, batching alone (serving.workers): for
    # short texts on a few cores, where one process's Python, under one GIL, is the limit (docs/serving.md).
    workers: int = 1
    # Threads per forward in each process; None: the CPUs this process may run on, a container's CPU quota
    # included, shared out among the workers.
    threads: Optional[int] = None
    dtype: str = "float32"
    isa: Optional[str] = None
    # Tokens one forward may take from the queue; None: the engine's default for this CPU.
    max_batch_tokens: Optional[int] = None
    # Requests admitted at once (queued for a forward or in one; with workers, shared out among them); the next gets
    # 429. 512 keeps the queue's wait under a second for short texts on two cores and is far above what a batch
    # forward takes at once.
    max_queue: int = 512
    # Texts per request: OpenAI's limit for /v1/embeddings.
    max_batch_items: int = 2048
    # Tokens per text (special tokens included); None: the model's own length (Engine.max_length).
    max_input_tokens: Optional[int] = None
    # Longer texts are cut to max_input_tokens (counted in the metrics); False refuses them with a 400. A request's
    # "truncation" field overrides it.
    truncation: bool = True
    # 4 MiB holds 2048 texts of ~2 KB: a full request of max_batch_items texts of the model's length.
    max_body_bytes: int = 4 * 1024 * 1024
    # Required as `Authorization: Bearer KEY` on /v1/ routes when set.
    api_key: Optional[str] = None
    # Seconds a client may take to send a request's body once its headers came; then 408 and the connection closes.
    # A request holds one of max_queue places from its headers on, so clients that stall mid-body would otherwise
    # hold them all for good (a slow-loris). 30 s carries a 4 MiB body (max_body_bytes) at ~1.2 Mbit/s.
    body_timeout: float = 30.0
    # Seconds a client may take to send a request's line and headers, from the connection's opening or the request's
    # first byte; then 408 (or, for a connection that sent nothing, the close) and the connection closes. Nothing
    # else closes a connection that never sends a whole request (uvicorn's keep-alive timer runs between requests
    # only), so silent or dribbling connections piled up until the process ran out of file descriptors and new
    # clients were refused. 60 s is nginx's client_header_timeout and Node's headersTimeout.
    header_timeout: float = 60.0
    # Niceness of the engine's threads that lead forwards (Engine worker_nice): the event loop, which parses,
    # tokenizes and answers every request, runs first when both want a core. 5: short int8 queries on 2 cores
    # 1.07x the throughput, with forwards in lanes 0.92x at 0 (docs/serving.md).
    worker_nice: int = 5
    # A short request that finds the engine idle runs its forward on the event loop (Engine.aencode's
    # lead_when_idle): a lone request saves the hand-over to a worker thread and back (~0.1-0.25 ms of a 6-token
    # query's ~1.5 ms on 2 cores, docs/serving.md); the loop is held for that one forward. False: every forward runs
    # in the engine's worker threads.
    lead_when_idle: bool = True
    # Seconds a request may wait in the engine's queue before it is dropped with a 503; None: no deadline.
    request_timeout: Optional[float] = None
    # The name clients pass as `model` and see in responses; None: the model directory's name.
    model_name: Optional[str] = None
    # Web pages (origins: "https://app.example.com", or "*" for any) whose scripts may call the server from a
    # browser (CORS: preflights answered, Access-Control-Allow-Origin on every answer, Retry-After readable). None by
    # default (empty): a browser then refuses a page's cross-origin calls, as it should for a server nobody opened
    # to it.
    cors_allow_origins: tuple[str, ...] = ()
    # Seconds an idle keep-alive connection is kept after its last answer (each answer that keeps it says so in
    # `Keep-Alive: timeout=N`, which undici and Node's global agent read to close theirs first). A client sending on
    # a pooled connection as the server closes it gets a reset, and clients retry no POST: uvicorn's 5 s was shorter
    # than most clients' pools keep connections (Go 90 s, aiohttp 15 s, a load balancer's 60 s); 75 s is nginx's.
    keep_alive_timeout: float = 75.0
    # Seconds SIGTERM waits for accepted requests to finish before they are cancelled.
    graceful_timeout: float = 30.0
    # uvicorn's access log: one line per request, which costs more than a short text's forward.
    access_log: bool = False
    # uvicorn's log (start, shutdown, errors with their tracebacks) on stderr.
    log_level: str = "info"
    # Seconds a client told 429 (queue full) or 503 (loading) waits before it retries.
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        checks = [("port", 0 <= self.port <= 65535, "an integer from 0 (any free port) to 65535"),
                  ("workers", self.workers >= 1, "a positive integer"),
                  ("max_queue", self.max_queue >= max(1, self.workers),
                   f"a positive integer, at least the number of workers ({self.workers}): each admits its share"),
                  ("max_batch_items", self.max_batch_items >= 1, "a positive integer"),
                  ("max_body_bytes", self.max_body_bytes >= 1024, "at least 1024 bytes"),
                  ("graceful_timeout", self.graceful_timeout >= 0, "a number of seconds >= 0"),
                  ("keep_alive_timeout", 1 <= self.keep_alive_timeout <= 86400, "a number of seconds from 1 to 86400"),
                  ("body_timeout", math.isfinite(self.body_timeout) and self.body_timeout > 0,
                   "a positive number of seconds"),
                  ("header_timeout", math.isfinite(self.header_timeout) and self.header_timeout > 0,
                   "a positive number of seconds"),
                  ("retry_after_s", self.retry_after_s >= 1, "a positive integer"),
                  ("worker_nice", 0 <= self.worker_nice <= 19, "an integer from 0 to 19")]
        checks.append(("dtype", self.dtype in DTYPES, f"one of {', '.join(map(repr, DTYPES))}"))
        checks.append(("log_level", self.log_level in LOG_LEVELS, f"one of {', '.join(LOG_LEVELS)}"))
        checks.append(("cors_allow_origins", all(o == "*" or _ORIGIN.fullmatch(o) for o in self.cors_allow_origins),
                       "origins such as https://app.example.com or http://localhost:3000 (a scheme, a host and "
                       "perhaps a port: no path, not even a trailing slash) or * for any"))
        if self.threads is not None:
            checks.append(("threads", self.threads >= 1, "a positive integer"))
        if self.max_batch_tokens is not None:
            checks.append(("max_batch_tokens", self.max_batch_tokens >= 1, "a positive integer"))
        if self.max_input_tokens is not None:
            checks.append(("max_input_tokens", self.max_input_tokens >= 2,
                           "an integer >= 2 ([CLS] and [SEP] take two tokens)"))
        if self.request_timeout is not None:
            checks.append(("request_timeout", math.isfinite(self.request_timeout) and self.request_timeout > 0,
                           "a positive number of seconds"))
        if self.model_name is not None:   # "" was taken as none given: the folder's name was served
            checks.append(("model_name", bool(self.model_name.strip()) and self.model_name.isprintable(),
                           "a non-empty printable name (or left out: the model folder's name)"))
        if self.api_key is not None:
            checks.append(("api_key", bool(self.api_key) and self.api_key.isprintable() and self.api_key.isascii()
                           and " " not in self.api_key, "a non-empty string of printable ASCII without spaces"))
        for name, ok, wanted in checks:
            if not ok:
                got = "a key that is not" if name == "api_key" else repr(getattr(self, name))  # never echo a secret
                error = UsageError(f"{name} must be {wanted}, got {got}")
                error.field = name   # the command line names it by its option instead
                raise error


def api_key_from_environment(given: Optional[str]) -> Optional[str]:
    """given (--api-key, ServeOptions.api_key), else $BORTENGINE_API_KEY, else None (no key). An empty one is refused,
    not read as "no key": it is what `--api-key "$KEY"` with KEY unset gives, and serving with no key is then the
    opposite of what was meant."""
    key = given if given is not None else os.environ.get(API_KEY_VARIABLE)
    if key is not None and not key.strip():
        where = "--api-key" if given is not None else f"${API_KEY_VARIABLE}"
        raise UsageError(f"{where} is empty; give the key the clients will send, or leave {where} out to serve "
                         f"without one")
    return key
