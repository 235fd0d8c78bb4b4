"""What GET /metrics tells, in Prometheus' text format (prometheus-client, one registry per server):

- requests by route and status, and each request's whole latency;
- the engine's queue: requests waiting for a forward now, and requests admitted (waiting or in a forward);
- every forward, from Engine.add_batch_listener: its sequences, tokens and requests, its time, and each of its
  requests' time queued;
- per request, the time its texts took to tokenize; texts and tokens read, and texts cut to --max-input-tokens.

The names are listed in docs/serving.md. Histogram buckets span a short text's forward on a fast CPU (0.25 ms) to a
queue backed up for seconds.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServerMetrics", "CONTENT_TYPE", "ROUTES"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The routes requests are counted under; any other path is counted as "other", so that a client probing random
# paths cannot grow the metrics without bound.
ROUTES = ("/v1/embeddings", "/v1/classify", "/v1/tokenize", "/v1/models", "/health", "/metrics")
SECONDS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
POWERS_OF_TWO = tuple(float(2 ** k) for k in range(0, 10))
TOKENS = tuple(float(2 ** k) for k in range(3, 16))


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bortengine_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("bortengine_request_seconds", "Whole request: from its arrival to the "
                                         "last byte of the answer", ["route"], buckets=SECONDS, registry=r)
        self.queue_depth = Gauge("bortengine_queue_depth", "Requests waiting in the engine's queue for a forward",
                                 registry=r)
        self.admitted = Gauge("bortengine_requests_admitted", "Requests admitted to the engine (queued or in a "
                              "forward); at --max-queue the next gets 429", registry=r)
        self.batch_sequences = Histogram("bortengine_batch_sequences", "Sequences (texts) computed per forward",
                                         buckets=POWERS_OF_TWO, registry=r)
        self.batch_tokens = Histogram("bortengine_batch_tokens", "Tokens computed per forward", buckets=TOKENS,
                                      registry=r)
        self.batch_requests = Histogram("bortengine_batch_requests", "Requests sharing one forward",
                                        buckets=POWERS_OF_TWO, registry=r)
        self.forward_seconds = Histogram("bortengine_forward_seconds", "Time of one forward", buckets=SECONDS,
                                         registry=r)
        self.queue_seconds = Histogram("bortengine_queue_seconds", "Time a request waited in the engine's queue",
                                       buckets=SECONDS, registry=r)
        self.tokenize_seconds = Histogram("bortengine_tokenize_seconds", "Time a request's texts took to "
                                          "tokenize", buckets=SECONDS, registry=r)
        self.texts = Counter("bortengine_texts", "Texts read, by route", ["route"], registry=r)
        self.tokens = Counter("bortengine_tokens", "Tokens read (after truncation, special tokens included), by "
                              "route", ["route"], registry=r)
        self.truncated = Counter("bortengine_truncated_texts", "Texts longer than --max-input-tokens, cut to it",
                                 registry=r)

    def watch_queue(self, depth: Callable[[], int], admitted: Callable[[], int]) -> None:
        """Read the gauges from these functions at every scrape."""
        self.queue_depth.set_function(depth)
        self.admitted.set_function(admitted)

    def record_batch(self, record) -> None:
        """An Engine batch listener (bortengine.engine.BatchRecord); runs in the forward's thread, so it only
        observes (prometheus-client's metrics are thread-safe)."""
        self.batch_sequences.observe(record.sequences)
        self.batch_tokens.observe(record.tokens)
        self.batch_requests.observe(record.requests)
        self.forward_seconds.observe(record.forward_s)
        for seconds in record.queue_s:   # (its tokenize_s is padding only: the server tokenizes, record_texts)
            self.queue_seconds.observe(seconds)

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def record_texts(self, route: str, texts: int, tokens: int, truncated: int, tokenize_s: float) -> None:
        self.tokenize_seconds.observe(tokenize_s)
        self.texts.labels(route).inc(texts)
        self.tokens.labels(route).inc(tokens)
        if truncated:
            self.truncated.inc(truncated)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
