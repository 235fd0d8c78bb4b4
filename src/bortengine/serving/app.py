"""The ASGI application: Starlette routes over one Engine.

A request's way through: the API key (401), the model ready (503 while loading), a place in the engine's queue
(429 past --max-queue), the body read up to --max-body-bytes (413), its fields checked (400), its texts' tokens
counted against --max-input-tokens (cut, or 400 with `"truncation": false` or --no-truncation), then
`await engine.aencode/aclassify`, which
batches it with the other requests' texts in shared forwards. While it waits, the handler watches the connection:
a client that leaves has its task cancelled, which drops its queued work from the engine.

The model loads in a thread after the server starts listening, so /health answers 503 until the engine is loaded
and warmed up; a model that cannot load stops the server through `on_failure`.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import hmac
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bortengine.engine import Engine, ModelConfig, TokenizedTexts, load, tokenized_on_loop
from bortengine.errors import DeadlineExceeded, InvalidInputError, ModelLoadError, TextTooLongError, UsageError
from bortengine.serving.errors import APIError, ClientDisconnected, error_body
from bortengine.serving.metrics import CONTENT_TYPE, MODEL_ROUTE, ROUTES, ServerMetrics
from bortengine.serving.options import ServeOptions, api_key_from_environment
from bortengine.serving.requests import (RequestLimits, TextRequest, check_model, read_body, rerank_request,
                                         text_request)
from bortengine.serving.responses import (JSONAnswer, classify_response, embeddings_response, json_bytes,
                                          model_card, rerank_response, shortened, tokenize_response)
from bortengine.serving.siblings import Siblings

__all__ = ["create_app", "ModelService", "served_name"]

# nginx's code for "the client closed the connection before the answer": never seen by the client, counted in the
# metrics.
CLIENT_CLOSED = 499
# A request's work is watched for its client leaving only once it has waited this long: the watcher (a task reading
# the connection) cost the event loop 40-80 us of its ~350-500 us per short request (bench/serve_asgi.py, int8
# queries, 32 concurrent: 1.0-1.18x requests/s without it, 4 alternations; served through wrk, 9 interleaved rounds:
# median 1.035x), and most requests are answered sooner (p50 24 ms at 32 connections). What a client that leaves
# sooner asked for is computed and its answer dropped: a few ms of work.
WATCH_AFTER_S = 0.05
WARM_UP_TEXTS = ["warm-up", "a longer text warms up the kernels at another sequence length, " * 4]


def served_name(model_dir: str | Path) -> str:
    """The name clients pass as `model` when --model-name gives none: the model's Hub id for a directory of the
    Hugging Face cache (.../models--ORG--NAME/snapshots/COMMIT: "ORG/NAME", not the commit's hash), else the
    directory's name."""
    path = Path(model_dir).resolve()
    repo = path.parent.parent.name
    if path.parent.name == "snapshots" and repo.startswith("models--") and len(repo) > len("models--"):
        return repo[len("models--"):].replace("--", "/")
    return path.name


class ModelService:
    """The served model and what every route reads: the engine (once loaded and warmed up), the options, the
    metrics, and the requests admitted to the engine's queue."""

    def __init__(self, model_dir: str | Path, options: ServeOptions, metrics: ServerMetrics,
                 on_ready: Callable[["ModelService"], None], on_failure: Callable[[BaseException], None],
                 siblings: Optional[Siblings] = None):
        self.model_dir = Path(model_dir)
        self.options = options
        self.metrics = metrics
        self.name = options.model_name or served_name(self.model_dir)
        self.limits = RequestLimits(options.max_batch_items, options.max_body_bytes)
        self.engine: Optional[Engine] = None
        self.max_input_tokens = 0
        self.ready = False
        self.failure: Optional[BaseException] = None   # why the model could not be loaded, if it could not
        self.draining = False   # set when a stopping signal came: the requests accepted are answered, /health is 503
        self.admitted = 0
        self.created = int(time.time())
        self._on_ready = on_ready
        self._on_failure = on_failure
        self.siblings = siblings   # the other processes of a --workers server, whose metrics a scrape sums

    # ------------------------------------------------------------------------------------------------ start-up
    async def start(self) -> None:
        """Load the model in a thread (the loop answers /health meanwhile), check that it can serve texts, warm it
        up, then call on_ready; any failure is handed to on_failure instead."""
        try:
            engine = await asyncio.to_thread(self._load)
            await self._warm_up(engine)
        except Exception as e:   # a bad model or option: the server reports it (and `bortengine serve` exits)
            self.failure = e
            self._on_failure(e)
            return
        self.engine = engine
        _freeze_what_is_loaded()
        self.ready = True
        self._on_ready(self)

    def _load(self) -> Engine:
        o = self.options
        engine = load(self.model_dir, num_threads=o.threads, isa=o.isa, dtype=o.dtype,
                      max_batch_tokens=o.max_batch_tokens, worker_nice=o.worker_nice)
        if engine.tokenizer is None:
            raise ModelLoadError(f"{self.model_dir} has no tokenizer (tokenizer.json or vocab.txt), and the server "
                                 f"reads texts; copy the model's tokenizer files there")
        limit = o.max_input_tokens or engine.max_length
        check_input_limit(limit, engine.config)
        pair = engine.tokenizer.special_tokens(pair=True)
        if limit < pair:      # else every request with text pairs would get a 400 for the server's setting
            raise UsageError(f"--max-input-tokens {limit} cannot hold a text pair of this model, whose template alone "
                             f"adds {pair} special tokens (/v1/classify, /v1/rerank and /v1/tokenize take pairs); "
                             f"pass --max-input-tokens {pair} or more")
        self.max_input_tokens = limit
        _check_labels_distinct(engine, self.model_dir)
        engine.add_batch_listener(self.metrics.record_batch)
        self.metrics.watch_queue(lambda: engine.queue_depth, lambda: self.admitted, lambda: engine.num_threads)
        return engine

    async def _warm_up(self, engine: Engine) -> None:
        """A first forward at two lengths, and a classification for a classifier, by the requests' own way
        (engine.tokenized, then the ids computed: a warm-up text cut to a small --max-input-tokens is neither
        warned about nor counted): the first requests then pay no first-call costs (tokenizer set-up, workspaces,
        page faults in the weights)."""
        texts = engine.tokenized(WARM_UP_TEXTS, max_length=self.max_input_tokens)
        await engine.aencode(texts)
        if self._not_a_classifier(engine) is None:
            await engine.aclassify(texts)

    # --------------------------------------------------------------------------------------------------- routes
    # The POST routes give their answer's JSON document (a 200), which Answered writes.
    async def embeddings(self, request: Request) -> dict:
        engine = self._computing(request)
        with self._admission():
            req = await self._text_request(request, "embeddings")
            texts = await self._tokenized(req, "embeddings")
            vectors = await self._computed(request, engine.aencode(texts, deadline=self.options.request_timeout,
                                                                   lead_when_idle=self.options.lead_when_idle))
        return embeddings_response(shortened(vectors, req.dimensions), req.encoding_format, self.name, texts.tokens)

    async def classify(self, request: Request) -> dict:
        engine = self._computing(request)
        problem = self._not_a_classifier(engine)
        if problem:
            raise APIError(400, problem, code="model_not_classifier")
        with self._admission():
            req = await self._text_request(request, "classify")
            texts = await self._tokenized(req, "classify")
            result = await self._computed(request, engine.aclassify(texts, deadline=self.options.request_timeout,
                                                                    lead_when_idle=self.options.lead_when_idle))
        return classify_response(result, engine.config.labels, self.name, texts.tokens)

    async def rerank(self, request: Request) -> dict:
        """POST /v1/rerank: a cross-encoder's documents ordered by relevance to the query, as Engine.rerank."""
        engine = self._computing(request)
        problem = self._not_a_cross_encoder(engine)
        if problem:
            raise APIError(400, problem, code="model_not_cross_encoder")
        with self._admission():
            body = await read_body(request, self.limits.max_body_bytes, self.options.body_timeout)
            req = rerank_request(body, self.limits, self.name)
            texts = await self._tokenized(req.pairs, "rerank")
            scores = await self._computed(request, engine.ascores(texts, deadline=self.options.request_timeout,
                                                                  lead_when_idle=self.options.lead_when_idle))
        ranked = engine.ranked(scores, req.documents, req.top_n)
        return rerank_response(ranked, req.return_documents, self.name, texts.tokens)

    async def tokenize(self, request: Request) -> dict:
        engine = self._serving(request)
        with self._admission():       # a place among --max-queue: long texts are tokenized in threads
            req = await self._text_request(request, "tokenize")
            start = time.perf_counter()   # the ids and the counts before the cut (encode_counted)
            encodings, counts = await self._off_loop(req, engine.tokenizer.encode_counted, req.texts,
                                                     self.max_input_tokens, req.pairs)
        self.metrics.record_texts("/v1/tokenize", len(counts), sum(len(e.ids) for e in encodings), 0,
                                  time.perf_counter() - start)
        return tokenize_response(encodings, counts, self.max_input_tokens, self.name)

    async def models(self, request: Request) -> Response:
        return JSONAnswer({"object": "list", "data": [self._card(self._serving(request))]})

    async def model(self, request: Request) -> Response:
        """GET /v1/models/{model}: OpenAI's retrieve (the client's models.retrieve(name))."""
        engine = self._serving(request)
        check_model(request.path_params["model"], self.name)
        return JSONAnswer(self._card(engine))

    def _card(self, engine: Engine) -> dict:
        kind = _kind(engine)
        return model_card(self.name, self.created, kind, engine.embedding_dim, self.max_input_tokens,
                          None if kind == "regression" else engine.labels, engine.dtype)

    async def health(self, request: Request) -> Response:
        if self.draining:   # (asked on a connection kept from before: a new one is refused, the socket closed)
            return JSONAnswer({"status": "draining", "model": self.name}, status_code=503,
                              headers={"Connection": "close"})
        if self.ready:
            return JSONAnswer({"status": "ok", "model": self.name})
        if self.failure is not None:
            return JSONAnswer({"status": "failed", "model": self.name, "error": str(self.failure)}, status_code=503)
        return JSONAnswer({"status": "loading", "model": self.name}, status_code=503,
                          headers={"Retry-After": str(self.options.retry_after_s)})

    async def metrics_text(self, request: Request) -> Response:
        others = await self.siblings.snapshots() if self.siblings is not None else ()
        return Response(self.metrics.exposition(others), media_type=CONTENT_TYPE)

    # ------------------------------------------------------------------------------------------ a request's steps
    def _serving(self, request: Request) -> Engine:
        """The engine, for a client with the API key (if one is set) once the model is ready."""
        key = self.options.api_key
        if key is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            # compare_digest: the time taken does not tell how much of a guessed key was right
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
                # (never echo the header: a key sent without its scheme would be written back)
                problem = ("has no API key" if not scheme or scheme.lower() == "bearer" and not given else
                           "sends its Authorization header in another scheme than Bearer"
                           if scheme.lower() != "bearer" else "has a wrong API key")
                raise APIError(401, f"the request {problem}; send the server's key (--api-key or "
                                    f"$BORTENGINE_API_KEY) as the header `Authorization: Bearer KEY`",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if self.failure is not None:
            raise APIError(503, f"the model {self.name!r} could not be loaded, so this server cannot answer: "
                                f"{self.failure}", type="server_error", code="model_load_failed")
        if not self.ready:
            raise APIError(503, f"the model {self.name!r} is still loading; retry after {self.options.retry_after_s} s "
                                f"(GET /health answers 200 once it is ready)", type="server_error",
                           code="model_loading", headers={"Retry-After": str(self.options.retry_after_s)})
        return self.engine

    def _computing(self, request: Request) -> Engine:
        """_serving's engine, which starts reading its weights back into the caches if it was idle a while
        (Engine.warm_caches): on another core, while this request's body is read, parsed and tokenized."""
        engine = self._serving(request)
        engine.warm_caches()
        return engine

    @contextlib.contextmanager
    def _admission(self) -> Iterator[None]:
        """A place among the --max-queue requests admitted to the engine, held until the answer is computed. Counted
        here, on the event loop, not read from the engine's queue: a request is admitted before its body is read,
        so a full server refuses it before spending anything on it."""
        limit = self.options.max_queue
        if self.admitted >= limit:
            wait = self.options.retry_after_s
            raise APIError(429, f"the server is at its limit of {limit} requests queued or computing (--max-queue); "
                                f"retry after {wait} s", type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(wait)})
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def _text_request(self, request: Request, route: str) -> TextRequest:
        body = await read_body(request, self.limits.max_body_bytes, self.options.body_timeout)
        return text_request(body, route, self.limits, self.name, self.engine.embedding_dim)

    async def _tokenized(self, req: TextRequest, route: str) -> TokenizedTexts:
        """The request's texts tokenized (once: the engine computes these ids); a text over --max-input-tokens is
        cut (and counted) or, with the request's `"truncation": false` (by default: --no-truncation), refused
        with a 400 naming it, before anything is queued."""
        default = self.options.truncation
        truncation = default if req.truncation is None else req.truncation
        start = time.perf_counter()
        try:
            texts = await self._off_loop(req, functools.partial(self.engine.tokenized, truncation=truncation),
                                         req.texts, req.pairs, self.max_input_tokens)
        except TextTooLongError as e:
            where = ("input" if req.single else f"input[{e.index}]") if route != "rerank" else \
                f"documents[{e.index}] with the query"
            how = ('send "truncation": true' + (", or start the server without --no-truncation," if not default
                                                else " or leave it out"))
            pair = "; the text and its pair together" if req.pairs is not None else ""
            raise APIError(400, f"{where} has {e.tokens} tokens, more than the {e.max_length} this server reads per "
                                f"text (--max-input-tokens{pair}); shorten or split it, or {how} to cut texts to "
                                f"{e.max_length} tokens", param="input" if route != "rerank" else "documents",
                           code="context_length_exceeded") from None
        tokenize_s = time.perf_counter() - start
        self.metrics.record_texts(f"/v1/{route}", len(texts), texts.tokens, len(texts.truncated), tokenize_s)
        return texts

    @staticmethod
    async def _off_loop(req: TextRequest, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args), a tokenization of req's texts: on the loop when they are few and short (the engine's asyncio
        calls' rule), else in a thread so that the loop keeps answering."""
        if tokenized_on_loop(req.texts, req.pairs):
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def _computed(self, request: Request, work: Awaitable[Any]) -> Any:
        """The result of `work` (an engine coroutine), unless the client disconnects first: then this handler's
        task is cancelled where it awaits the work, which drops its queued work, and ClientDisconnected is raised.
        (A watcher that cancels the handler, rather than the work and the watcher both as tasks awaited together:
        one task per request fewer, on the event loop that every request's Python runs on.) The watcher starts
        only for work not done within WATCH_AFTER_S."""
        handler = asyncio.current_task()
        gone: Optional[asyncio.Future] = None
        left = False

        def client_left(watcher: asyncio.Future) -> None:
            nonlocal left
            if not watcher.cancelled():
                left = True
                handler.cancel()

        def watch() -> None:
            nonlocal gone
            gone = asyncio.ensure_future(_disconnected(request))
            gone.add_done_callback(client_left)

        watching = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch)
        try:
            return await work
        except asyncio.CancelledError:
            if not left:         # cancelled by the server (shutting_down answers it)
                raise
            handler.uncancel()
            raise ClientDisconnected("the client disconnected before its answer was computed") from None
        except DeadlineExceeded as e:
            wait = self.options.retry_after_s
            raise APIError(503, f"the request waited in the queue past its deadline of {self.options.request_timeout} "
                                f"s (--request-timeout), so it was dropped: the server is overloaded; retry after "
                                f"{wait} s ({e})", type="server_error", code="deadline_exceeded",
                           headers={"Retry-After": str(wait)}) from None
        finally:
            watching.cancel()
            if gone is not None:
                gone.remove_done_callback(client_left)
                gone.cancel()

    @staticmethod
    def _not_a_classifier(engine: Engine) -> Optional[str]:
        """Why /v1/classify cannot serve this model, or None if it can."""
        if engine.config.is_token_classifier:
            return (f"the served model is a {engine.config.kind}: it labels tokens, not texts (Engine.classify_tokens "
                    f"in Python); POST /v1/embeddings for its embeddings")
        if engine.labels is None:
            return (f"the served model is a {engine.config.kind} without a classification head, so it has no labels "
                    f"to classify into; POST /v1/embeddings for its embeddings")
        if engine.config.effective_problem_type == "regression":
            return ("the served model is a regression model (one output, problem_type 'regression'), so it has no "
                    "labels to classify into; a cross-encoder's relevance scores come from POST /v1/rerank "
                    "({\"query\": \"...\", \"documents\": [\"...\"]})")
        return None

    @staticmethod
    def _not_a_cross_encoder(engine: Engine) -> Optional[str]:
        """Why /v1/rerank cannot serve this model, or None if it can: a sequence model of one output (a relevance
        logit) or two labels (the second's probability, as Engine.rerank scores by default)."""
        if not engine.config.is_classifier or engine.config.is_token_classifier:
            return (f"the served model is a {engine.config.kind}, not a cross-encoder (a ...ForSequenceClassification "
                    f"scoring text pairs), so it cannot rank documents; POST /v1/embeddings for its embeddings")
        if engine.config.num_labels > 2:
            return (f"the served model classifies into {engine.config.num_labels} labels, so no one of them is a "
                    f"relevance score; POST /v1/classify with text_pairs gives every label's probability")
        return None


def _freeze_what_is_loaded() -> None:
    """The objects of the loaded server (modules, the engine, the tokenizer: ~37,000 objects for MiniLM) moved out of
    the garbage collector's generations (gc.freeze, after a collection of what start-up left): a full collection
    walked them all, ~10 ms with the GIL held, stalling every request in flight. Measured (Zen 5, int8 6-token
    queries, wrk at 32 connections, interleaved A/B, docs/serving.md): p99 21.7-27.3 ms -> 12.7-14.6 ms with
    --workers 2 (4 rounds), 30.8-35.2 -> 18.8-19.8 ms with one process, requests/s the same or higher. They are
    never freed by a collection afterwards: they live as long as the server does."""
    gc.collect()
    gc.freeze()


def _kind(engine: Engine) -> str:
    """What GET /v1/models says the model is: which route serves what it was trained for."""
    if engine.config.is_token_classifier:
        return "token-classifier"
    if engine.labels is None:
        return "embedding"
    return "regression" if engine.config.effective_problem_type == "regression" else "classifier"


def _check_labels_distinct(engine: Engine, model_dir: Path) -> None:
    """/v1/classify names each class's probability by its label: a classifier whose config gives two classes one
    name would answer scores of which one is lost, so it is refused where the server starts."""
    labels = engine.labels
    if _kind(engine) != "classifier" or len(set(labels)) == len(labels):
        return
    name = next(n for n in labels if labels.count(n) > 1)
    classes = [i for i, n in enumerate(labels) if n == name]
    raise ModelLoadError(f"{model_dir}: config.json's id2label gives the classes {classes} one name {name!r}; "
                         f"/v1/classify answers each label's probability by name, so give every class its own "
                         f"name in id2label (and label2id)")


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection. Called after the body is read, so the server's next message
    is http.disconnect (uvicorn sends it on a closed connection, or once the answer is sent)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ----------------------------------------------------------------------------------------------- the application
def check_input_limit(limit: int, config: ModelConfig) -> None:
    """--max-input-tokens must fit the model's position table (RoBERTa's: max_position_embeddings - padding_idx
    - 1)."""
    positions = config.max_positions
    if limit > positions:
        raise UsageError(f"--max-input-tokens {limit} is more than the model's {positions} positions "
                         f"(max_position_embeddings {config.max_position_embeddings}); pass at most {positions}")


def create_app(model_dir: str | Path, options: ServeOptions = ServeOptions(),
               on_ready: Optional[Callable[[ModelService], None]] = None,
               on_failure: Optional[Callable[[BaseException], None]] = None,
               siblings: Optional[Siblings] = None, serve_while_loading: bool = True) -> Starlette:
    """The server's ASGI app for the model in model_dir: loads it at start-up (in the background) and serves it.
    on_ready(service) is called once the model is loaded and warmed up; on_failure(exception) if it cannot be (by
    default the error is logged; /health and every route then answer 503 `model_load_failed` with it). Without an
    API key in options, $BORTENGINE_API_KEY gives it, as to `bortengine serve`. options.host, port,
    keep_alive_timeout, header_timeout, graceful_timeout, access_log and log_level are the server's: under another
    ASGI server, give them to it.
    The app's state holds `service` (ModelService) and `metrics` (ServerMetrics). siblings: this app is one
    process of a --workers server (serving.workers), whose /metrics sums every process's figures.
    serve_while_loading=False: the model loads during the ASGI start-up, before the server accepts connections
    (a --workers server's processes: a connection the kernel gives one that is loading waits for it, where it
    would be refused with a 503 while other processes serve)."""
    if options.api_key is None:   # under another ASGI server too: the key the docs say the variable gives
        options = dataclasses.replace(options, api_key=api_key_from_environment(None))
    metrics = ServerMetrics()
    service = ModelService(model_dir, options, metrics, on_ready or (lambda service: None),
                           on_failure or _log_failure, siblings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if siblings is not None:
            await siblings.start(metrics.snapshot)
        starting = asyncio.create_task(service.start())
        if not serve_while_loading:
            await starting
        yield
        starting.cancel()
        if siblings is not None:
            await siblings.close()

    answered = functools.partial(shutting_down, options)
    routes = [Route("/v1/embeddings", Answered(answered(service.embeddings)), methods=["POST"]),
              Route("/v1/classify", Answered(answered(service.classify)), methods=["POST"]),
              Route("/v1/rerank", Answered(answered(service.rerank)), methods=["POST"]),
              Route("/v1/tokenize", Answered(answered(service.tokenize)), methods=["POST"]),
              Route("/v1/models", service.models, methods=["GET"]),
              Route("/v1/models/{model:path}", service.model, methods=["GET"]),
              Route("/health", service.health, methods=["GET"]),
              Route("/metrics", service.metrics_text, methods=["GET"])]
    middleware = [Middleware(RequestMetrics, metrics=metrics)]
    if options.cors_allow_origins:   # outermost: refusals (401, 429, 503) carry its headers too
        # any request header: browser clients add their own (OpenAI's JS client its x-stainless-* headers)
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(options.cors_allow_origins),
                                        allow_methods=["GET", "POST"], allow_headers=["*"],
                                        expose_headers=["Retry-After"], max_age=600))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={APIError: _api_error, InvalidInputError: _invalid_input,
                                        ClientDisconnected: _client_closed, HTTPException: _http_error,
                                        Exception: _server_error})
    # Starlette answers a path with a slash too many by a redirect to a URL made of the Host header, which behind a
    # TLS proxy points to plain http: such a path is a 404 that lists the routes instead
    app.router.redirect_slashes = False
    app.state.service = service
    app.state.metrics = metrics
    return app


def shutting_down(options: ServeOptions, handler: Callable[[Request], Awaitable[dict]]
                  ) -> Callable[[Request], Awaitable[dict]]:
    """handler, answering a request that the server cancels (uvicorn cancels the handlers still running when
    --graceful-timeout has passed, or at a second Ctrl-C) with a JSON 503 `shutting_down`, wherever it was: reading
    its body, tokenizing, waiting for the engine. Without this uvicorn sends a plain-text 500."""
    @functools.wraps(handler)
    async def route(request: Request) -> dict:
        try:
            return await handler(request)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()   # so that the answer can still be sent
            wait = options.retry_after_s
            raise APIError(503, f"the server is shutting down and stopped this request before it was answered (its "
                                f"--graceful-timeout of {options.graceful_timeout:g} s passed, or it was "
                                f"interrupted); send it again, to another instance or once this one is back",
                           type="server_error", code="shutting_down", headers={"Retry-After": str(wait)}) from None
    return route


class Answered:
    """A POST route's ASGI endpoint: handler(request) gives the answer's JSON document, written here as a 200. An
    error it raises is answered by the app's exception handlers, as every route's is. Starlette's own wrapper of a
    request-handling function adds a second layer of exception handling and a Response object to render and send:
    with it (and request.stream(), and json for the body) the event loop spent 200-213 us per served 6-token query,
    without 191-215 us, and served 5% more requests/s in 3 of 4 interleaved rounds (Zen 5, int8 MiniLM, wrk at
    32 connections; docs/serving.md)."""

    CONTENT_TYPE = (b"content-type", JSONAnswer.media_type.encode())   # the same header as every JSON answer's

    def __init__(self, handler: Callable[[Request], Awaitable[dict]]):
        self.handler = handler

    async def __call__(self, scope, receive, send) -> None:
        body = json_bytes(await self.handler(Request(scope, receive)))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [self.CONTENT_TYPE, (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


def _log_failure(error: BaseException) -> None:
    """create_app's default on_failure: the reason in the server's log (the routes answer it too)."""
    logging.getLogger("bortengine.serving").error("the model could not be served: %s", error)


class RequestMetrics:
    """ASGI middleware: counts every HTTP request by route and status and times it whole."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else MODEL_ROUTE if path.startswith("/v1/models/") else "other"
        status = 500    # unless a response starts: an exception on its way to the server's error handler
        start = time.perf_counter()

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.record_request(route, status, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------- the error answers
async def _api_error(request: Request, e: APIError) -> Response:
    return JSONAnswer(e.body(), status_code=e.status, headers=e.headers)


async def _invalid_input(request: Request, e: InvalidInputError) -> Response:
    return JSONAnswer(error_body(str(e), "invalid_request_error", code="invalid_input"), status_code=400)


async def _client_closed(request: Request, e: ClientDisconnected) -> Response:
    return Response(status_code=CLIENT_CLOSED)   # sent to nobody; the status is for the metrics


async def _http_error(request: Request, e: HTTPException) -> Response:
    """Starlette's 404 (no such route) and 405 (a route's wrong method), in the same JSON shape as every error."""
    routes = ", ".join(f"{' '.join(sorted(r.methods - {'HEAD'}))} {r.path}" for r in request.app.routes)
    if e.status_code == 404:
        message = f"no route {request.method} {request.url.path}; the routes are {routes}"
        code = "not_found"
    elif e.status_code == 405:
        allowed = (e.headers or {}).get("Allow", "")
        message = f"{request.url.path} takes {allowed}, not {request.method}; the routes are {routes}"
        code = "method_not_allowed"
    else:
        message, code = str(e.detail), None
    return JSONAnswer(error_body(message, "invalid_request_error", code=code), status_code=e.status_code,
                      headers=e.headers)


async def _server_error(request: Request, e: Exception) -> Response:
    """Starlette sends this, then raises e on to uvicorn, which logs it and closes the connection: the answer says
    so (Connection: close), or a keep-alive client's next request on it would meet a reset."""
    return JSONAnswer(error_body(f"internal error ({type(e).__name__}); the server's log has its traceback",
                                 "server_error"), status_code=500, headers={"Connection": "close"})
