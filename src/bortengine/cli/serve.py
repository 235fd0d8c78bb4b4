"""`bortengine serve MODEL_DIR`: the model over HTTP (bortengine.serving; docs/serving.md), an OpenAI-compatible
/v1/embeddings and /v1/classify, /v1/rerank, /v1/tokenize, /v1/models, /health, /metrics. Prints where it
listens, then when the model is ready; SIGTERM drains the accepted requests and exits 0.

Needs the `serve` extra (starlette, uvicorn, prometheus-client, orjson, httptools); without it the command says
how to install it.
"""
from __future__ import annotations

import platform

from bortengine.cli.arguments import (MODEL_DIRECTORY, check_model_directory, kernel_path, nice_value,
                                      non_negative_float, port, positive_float, positive_int)
from bortengine.engine import DTYPES
from bortengine.errors import UsageError
from bortengine.serving import API_KEY_VARIABLE, LOG_LEVELS, ServeOptions, api_key_from_environment

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("serve",)
DEFAULTS = ServeOptions()
# httptools (CPython's HTTP parser under uvicorn) too: the server's protection from clients that never finish a
# request's head (--header-timeout, the header size limits) and its lingering close are built on it; under h11,
# uvicorn's other parser, a silent connection would be held for ever. (PyPy has no httptools: h11 there.)
EXTRA_MODULES = ("starlette", "uvicorn", "prometheus_client", "orjson",
                 *(("httptools",) if platform.python_implementation() == "CPython" else ()))


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP: OpenAI-compatible embeddings, classification, "
                                     "reranking, metrics")
    p.add_argument("model", metavar="MODEL_DIR", help=MODEL_DIRECTORY)
    p.add_argument("--host", default=DEFAULTS.host,
                   help=f"address to listen on (default {DEFAULTS.host}: this machine only; 0.0.0.0: every "
                        f"interface)")
    p.add_argument("--port", type=port, default=DEFAULTS.port,
                   help=f"TCP port (default {DEFAULTS.port}; 0: any free port, printed at start)")
    p.add_argument("--workers", type=positive_int, default=DEFAULTS.workers,
                   help=f"server processes on the port, each with its own copy of the model: for short texts on a "
                        f"few cores, where one process's Python is the limit (default {DEFAULTS.workers})")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads per forward in each process (default: the CPUs this process may run on, a "
                        "container's CPU quota included, shared out among the workers)")
    p.add_argument("--dtype", choices=DTYPES, default=DEFAULTS.dtype,
                   help="int8 / bf16: the encoder layers' linear layers on int8 / bf16 kernels (faster where the "
                        "CPU has VNNI / AVX512_BF16, slightly different numbers; bf16 the closer to float32)")
    p.add_argument("--isa", type=kernel_path, default=None, help="force a kernel path (see `bortengine info`)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=None,
                   help="tokens one forward takes from the queue (default: the engine's, chosen for this CPU)")
    p.add_argument("--worker-nice", type=nice_value, default=DEFAULTS.worker_nice,
                   help=f"niceness (0-19) of the engine's threads that run forwards, so that the event loop answering "
                        f"requests runs first when both want a core (default {DEFAULTS.worker_nice}; 0: same "
                        f"priority)")
    p.add_argument("--no-forwards-on-loop", action="store_true",
                   help="run every forward in the engine's worker threads (default: a short request that finds the "
                        "engine idle runs on the event loop, which saves a lone request the hand-over to a thread)")
    p.add_argument("--max-queue", type=positive_int, default=DEFAULTS.max_queue,
                   help=f"requests queued or computing at once; the next gets 429 with Retry-After (default "
                        f"{DEFAULTS.max_queue})")
    p.add_argument("--max-batch-items", type=positive_int, default=DEFAULTS.max_batch_items,
                   help=f"texts per request (default {DEFAULTS.max_batch_items}, OpenAI's)")
    p.add_argument("--max-input-tokens", type=positive_int, default=None,
                   help="tokens per text, special tokens included (default: the model's length)")
    p.add_argument("--no-truncation", action="store_true",
                   help="refuse a text over --max-input-tokens with a 400 (default: cut it to that length); a "
                        "request's \"truncation\": true or false overrides it")
    p.add_argument("--max-body-bytes", type=positive_int, default=DEFAULTS.max_body_bytes,
                   help=f"request body limit; a larger body gets 413 (default {DEFAULTS.max_body_bytes})")
    p.add_argument("--api-key", default=None,
                   help=f"require `Authorization: Bearer KEY` on /v1/ routes; ${API_KEY_VARIABLE} gives it too, "
                        f"without showing it to `ps`")
    p.add_argument("--body-timeout", type=positive_float, default=DEFAULTS.body_timeout, metavar="SECONDS",
                   help=f"a client still sending its body after this long gets 408 and is disconnected (default "
                        f"{DEFAULTS.body_timeout:g})")
    p.add_argument("--header-timeout", type=positive_float, default=DEFAULTS.header_timeout, metavar="SECONDS",
                   help=f"a client that has not sent a request's whole line and headers this long after its "
                        f"connection opened or the request began gets 408 (a connection that sent nothing is "
                        f"closed) (default {DEFAULTS.header_timeout:g})")
    p.add_argument("--request-timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="a request no forward has started after this long is dropped with 503 (default: no "
                        "deadline)")
    p.add_argument("--model-name", default=None,
                   help="the name clients pass as `model` (default: MODEL_DIR's folder name)")
    p.add_argument("--cors-allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web page's origin (https://app.example.com; * for any) whose scripts may call the server "
                        "from a browser (CORS); repeat it for several (default: none)")
    p.add_argument("--keep-alive-timeout", type=positive_float, default=DEFAULTS.keep_alive_timeout,
                   metavar="SECONDS", help=f"how long an idle keep-alive connection is kept after its last answer, "
                                           f"said to clients in `Keep-Alive: timeout=N` (default "
                                           f"{DEFAULTS.keep_alive_timeout:g})")
    p.add_argument("--graceful-timeout", type=non_negative_float, default=DEFAULTS.graceful_timeout,
                   metavar="SECONDS", help=f"how long SIGTERM waits for accepted requests (default "
                                           f"{DEFAULTS.graceful_timeout:g}; 0: not at all)")
    p.add_argument("--access-log", action="store_true", help="log one line per request (costs throughput)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=DEFAULTS.log_level,
                   help=f"uvicorn's log on stderr (default {DEFAULTS.log_level})")


def run(args) -> int:
    check_model_directory(args.model, "MODEL_DIR")
    missing = [name for name in EXTRA_MODULES if not _importable(name)]
    if missing:
        raise UsageError(f"bortengine serve needs the serve extra ({', '.join(missing)} missing): pip install "
                         f"'bortengine[serve]'")
    try:
        options = _options(args)
    except UsageError as e:   # named by the option the user gave, not by ServeOptions' field
        field = getattr(e, "field", None)
        if not field:
            raise
        flag = "--cors-allow-origin" if field == "cors_allow_origins" else f"--{field.replace('_', '-')}"
        raise UsageError(str(e).replace(field, flag, 1)) from None
    from bortengine.serving import serve

    serve(args.model, options, announce=lambda line: print(f"bortengine serve: {line}", flush=True))
    return 0


def _options(args) -> ServeOptions:
    return ServeOptions(
        host=args.host, port=args.port, workers=args.workers, threads=args.threads, dtype=args.dtype, isa=args.isa,
        max_batch_tokens=args.max_batch_tokens, max_queue=args.max_queue, max_batch_items=args.max_batch_items,
        max_input_tokens=args.max_input_tokens, truncation=not args.no_truncation,
        max_body_bytes=args.max_body_bytes, api_key=api_key_from_environment(args.api_key),
        body_timeout=args.body_timeout, header_timeout=args.header_timeout, request_timeout=args.request_timeout,
        model_name=args.model_name,
        cors_allow_origins=tuple(args.cors_allow_origin), keep_alive_timeout=args.keep_alive_timeout,
        graceful_timeout=args.graceful_timeout, access_log=args.access_log, log_level=args.log_level,
        worker_nice=args.worker_nice, lead_when_idle=not args.no_forwards_on_loop)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
