"""What GET /metrics tells, in Prometheus' text format (prometheus-client):

- requests by route and status, and each request's whole latency;
- the engine's queue: requests waiting for a forward now, and requests admitted (waiting or in a forward);
- every forward, from Engine.add_batch_listener: its sequences, tokens and requests, its time, and each of its
  requests' time queued;
- per request, the time its texts took to tokenize; texts and tokens read, and texts cut to --max-input-tokens.

The names are listed in docs/serving.md. Histogram buckets span a short text's forward on a fast CPU (0.25 ms) to a
queue backed up for seconds.

The figures are kept in plain counters and read by a custom collector at every scrape (prometheus-client's
documented way for figures a program keeps itself), not in prometheus-client's Counter and Histogram objects: those
take a lock per observation and look their labels up per call. A request's figures cost the event loop 6.8 us that
way and 1.5 us here (one uncontended lock; a forward's 8.5 and 2.4 us), measured warm on Zen 4; in the server the
loop's Python runs cold and on the cores the forwards need (serving int8 6-token queries with no metrics at all
answered ~5% more requests/s, 3 alternations).

A server of several processes (--workers) answers a scrape with the sum of every process's figures: the process
that takes the scrape adds the snapshots the others send it (serving.siblings).
"""
from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Callable, Iterator, Optional, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

__all__ = ["ServerMetrics", "CONTENT_TYPE", "ROUTES", "MODEL_ROUTE"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The routes requests are counted under; any other path is counted as "other", so that a client probing random
# paths cannot grow the metrics without bound.
ROUTES = ("/v1/embeddings", "/v1/classify", "/v1/rerank", "/v1/tokenize", "/v1/models", "/health", "/metrics")
MODEL_ROUTE = "/v1/models/{model}"     # counted under this name whatever model a client asks for
UNPARSED = "unparsed"                  # the route of a request refused by the HTTP protocol before it was read
SECONDS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
POWERS_OF_TWO = tuple(float(2 ** k) for k in range(0, 10))
TOKENS = tuple(float(2 ** k) for k in range(3, 16))


class _Histogram:
    """Observations counted per bucket (upper bounds `bounds`, then +Inf) and summed, per label values."""

    __slots__ = ("name", "doc", "labels", "bounds", "series")

    def __init__(self, name: str, doc: str, bounds: tuple[float, ...], labels: tuple[str, ...] = ()):
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        self.series: dict[tuple[str, ...], list] = {} if labels else {(): [[0] * (len(bounds) + 1), 0.0]}

    def observe(self, value: float, label_values: tuple[str, ...] = ()) -> None:
        """Callers hold ServerMetrics' lock."""
        series = self.series.get(label_values)
        if series is None:
            series = self.series[label_values] = [[0] * (len(self.bounds) + 1), 0.0]
        series[0][bisect_left(self.bounds, value)] += 1   # the first bound >= value: Prometheus' `le`
        series[1] += value

    def snapshot(self) -> list:
        """Its series as JSON values (ServerMetrics.snapshot); callers hold ServerMetrics' lock."""
        return [[list(label_values), list(counts), total] for label_values, (counts, total) in self.series.items()]

    def family(self, snapshots: list[list]) -> HistogramMetricFamily:
        """The metric family of these snapshots' series, summed per label values."""
        summed: dict[tuple[str, ...], list] = {}
        for series in snapshots:
            for label_values, counts, total in series:
                into = summed.setdefault(tuple(label_values), [[0] * len(counts), 0.0])
                into[0] = [a + b for a, b in zip(into[0], counts)]
                into[1] += total
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for label_values, (counts, total) in sorted(summed.items()):
            cumulative, running = [], 0
            for edge, count in zip(edges, counts):
                running += count
                cumulative.append((edge, running))
            family.add_metric(list(label_values), cumulative, total)
        return family


class _Counter:
    """A total per label values."""

    __slots__ = ("name", "doc", "labels", "totals")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = ()):
        self.name, self.doc, self.labels = name, doc, labels
        self.totals: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def inc(self, amount: float = 1.0, label_values: tuple[str, ...] = ()) -> None:
        """Callers hold ServerMetrics' lock."""
        self.totals[label_values] = self.totals.get(label_values, 0.0) + amount

    def snapshot(self) -> list:
        """Its totals as JSON values (ServerMetrics.snapshot); callers hold ServerMetrics' lock."""
        return [[list(label_values), total] for label_values, total in self.totals.items()]

    def family(self, snapshots: list[list]) -> CounterMetricFamily:
        """The metric family of these snapshots' totals, summed per label values."""
        summed: dict[tuple[str, ...], float] = {}
        for totals in snapshots:
            for label_values, total in totals:
                summed[tuple(label_values)] = summed.get(tuple(label_values), 0.0) + total
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for label_values, total in sorted(summed.items()):
            family.add_metric(list(label_values), total)
        return family


class ServerMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()   # the event loop and the forwards' threads record
        self.requests = _Counter("bortengine_requests", "HTTP requests answered, by route and status code",
                                 ("route", "status"))
        self.request_seconds = _Histogram("bortengine_request_seconds", "Whole request: from its arrival to the "
                                          "last byte of the answer", SECONDS, ("route",))
        self.batch_sequences = _Histogram("bortengine_batch_sequences", "Sequences (texts) computed per forward",
                                          POWERS_OF_TWO)
        self.batch_tokens = _Histogram("bortengine_batch_tokens", "Tokens computed per forward", TOKENS)
        self.batch_requests = _Histogram("bortengine_batch_requests", "Requests sharing one forward", POWERS_OF_TWO)
        self.forward_seconds = _Histogram("bortengine_forward_seconds", "Time of one forward", SECONDS)
        self.queue_seconds = _Histogram("bortengine_queue_seconds", "Time a request waited in the engine's queue",
                                        SECONDS)
        self.tokenize_seconds = _Histogram("bortengine_tokenize_seconds", "Time a request's texts took to "
                                           "tokenize", SECONDS)
        self.texts = _Counter("bortengine_texts", "Texts read, by route", ("route",))
        self.tokens = _Counter("bortengine_tokens", "Tokens read (after truncation, special tokens included), by "
                               "route", ("route",))
        self.truncated = _Counter("bortengine_truncated_texts", "Texts longer than --max-input-tokens, cut to it")
        self._depth: Optional[Callable[[], int]] = None
        self._admitted: Optional[Callable[[], int]] = None
        self._threads: Optional[Callable[[], int]] = None

    def watch_queue(self, depth: Callable[[], int], admitted: Callable[[], int],
                    threads: Optional[Callable[[], int]] = None) -> None:
        """Read the gauges from these functions at every scrape."""
        self._depth, self._admitted, self._threads = depth, admitted, threads

    def record_batch(self, record) -> None:
        """An Engine batch listener (bortengine.engine.BatchRecord); runs in the forward's thread."""
        with self._lock:
            self.batch_sequences.observe(record.sequences)
            self.batch_tokens.observe(record.tokens)
            self.batch_requests.observe(record.requests)
            self.forward_seconds.observe(record.forward_s)
            for seconds in record.queue_s:   # (its tokenize_s is padding only: the server tokenizes, record_texts)
                self.queue_seconds.observe(seconds)

    def record_request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests.inc(1.0, (route, str(status)))
            self.request_seconds.observe(seconds, (route,))

    def record_unparsed(self, status: int) -> None:
        """A request the HTTP protocol refused before the app saw it (400, 414, 431: no route read, no time)."""
        with self._lock:
            self.requests.inc(1.0, (UNPARSED, str(status)))

    def record_texts(self, route: str, texts: int, tokens: int, truncated: int, tokenize_s: float) -> None:
        with self._lock:
            self.tokenize_seconds.observe(tokenize_s)
            self.texts.inc(texts, (route,))
            self.tokens.inc(tokens, (route,))
            if truncated:
                self.truncated.inc(truncated)

    GAUGES = (("bortengine_queue_depth", "Requests waiting in the engine's queue for a forward"),
              ("bortengine_requests_admitted", "Requests admitted to the engine (queued or in a forward); at "
               "--max-queue the next gets 429"),
              ("bortengine_workers_reporting", "Server processes whose figures this scrape sums (--workers; one "
               "that is restarting is missing)"),
              ("bortengine_threads", "Threads the forwards run on, over the server's processes (--threads; by "
               "default the CPUs a process may use: its affinity and cgroup CPU quota)"))

    def snapshot(self) -> dict:
        """Every figure as it stands, as JSON values (what a --workers server's processes send each other), read
        under the lock so that a histogram's buckets, count and sum agree."""
        depth, admitted, threads = (0 if read is None else read()
                                    for read in (self._depth, self._admitted, self._threads))
        with self._lock:
            return {"gauges": [depth, admitted, 1, threads],
                    "counters": [c.snapshot() for c in self._counters()],
                    "histograms": [h.snapshot() for h in self._histograms()]}

    def families(self, others: Sequence[dict] = ()) -> list[Metric]:
        """Every metric of this process, summed with the snapshots of the others (a --workers server's)."""
        snapshots = [self.snapshot(), *others]
        gauges = [GaugeMetricFamily(name, doc, value=sum(s["gauges"][i] for s in snapshots))
                  for i, (name, doc) in enumerate(self.GAUGES)]
        counters = [c.family([s["counters"][i] for s in snapshots]) for i, c in enumerate(self._counters())]
        histograms = [h.family([s["histograms"][i] for s in snapshots]) for i, h in enumerate(self._histograms())]
        # requests and their seconds first, then the gauges, the forwards' figures, the texts' counts
        return [counters[0], histograms[0]] + gauges + histograms[1:] + counters[1:]

    def exposition(self, others: Sequence[dict] = ()) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.families(others)))
        return generate_latest(registry)

    def _counters(self) -> tuple[_Counter, ...]:
        return self.requests, self.texts, self.tokens, self.truncated

    def _histograms(self) -> tuple[_Histogram, ...]:
        return (self.request_seconds, self.batch_sequences, self.batch_tokens, self.batch_requests,
                self.forward_seconds, self.queue_seconds, self.tokenize_seconds)


class _Collector:
    """prometheus-client's custom collector of metric families made at a scrape."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
