"""`bortengine serve`, the routes: a real server process on 127.0.0.1 (tests/serving_process.py) talked to over
HTTP, its answers compared with the engine in this process: embeddings equal to engine.encode (float and base64,
shortened by `dimensions`, cut to --max-input-tokens), classifications equal to engine.classify, token ids equal to
engine.tokenize; texts over --max-input-tokens cut or refused (400) by the server's default or the request's
`truncation`; /v1/models, /health; the API key; /metrics parsed by prometheus_client against the traffic sent;
OpenAI's own Python client against the embeddings and models routes.
The bad requests, a disconnecting client, a flood and SIGTERM are in tests/test_serving_robustness.py.
"""
from __future__ import annotations

import asyncio
import base64
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from bortengine.engine import available_cpus, load
from bortengine.errors import UsageError
from bortengine.serving import ServeOptions, create_app
from bortengine.serving.metrics import SECONDS, ServerMetrics
from bortengine.serving.responses import shortened
from serving_process import (API_KEY, CLASSIFIER_TOKENS, MAX_TOKENS, ServerProcess, classifier_server,  # noqa: F401
                             minilm_engine, minilm_server, serving, serving_classifier, texts_of)

LONG = "a long text that goes on " * 20   # ~120 tokens: over the main server's 64


def embeddings(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data))) and all(d["object"] == "embedding" for d in data)
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def test_embeddings_equal_engine_encode(minilm_server, minilm_engine):
    texts = texts_of(5) + [LONG, "é ü 中文 🙂"]
    with minilm_server.client() as client:
        response = client.post("/v1/embeddings", json={"input": texts, "model": "minilm"})
        time.sleep(0.05)   # a short request on an idle engine: its forward runs on the server's event loop
        one = client.post("/v1/embeddings", json={"input": texts[0]})
    expected = minilm_engine.encode(texts, max_length=MAX_TOKENS)
    assert np.array_equal(embeddings(response), expected)
    assert np.array_equal(embeddings(one)[0], expected[0])
    body = response.json()
    counts = minilm_engine.count_tokens(texts)
    tokens = sum(min(n, MAX_TOKENS) for n in counts)
    assert max(counts) > MAX_TOKENS    # the long text was cut, and usage counts what the model read
    assert body["object"] == "list" and body["model"] == "minilm"
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_the_openai_client_reads_the_server(minilm_server, minilm_engine, classifier_server):
    """OpenAI's own Python client, called as a user's code calls it: embeddings in its default encoding (it asks for
    base64 and decodes it) and as floats shortened by `dimensions`, usage, the model listed and retrieved, and the
    server's 4xx raised as the client's typed errors carrying the server's message."""
    client = openai.OpenAI(base_url=f"{minilm_server.url}/v1", api_key="unused", max_retries=0)
    texts = texts_of(3, seed=4) + [LONG]
    expected = minilm_engine.encode(texts, max_length=MAX_TOKENS)
    default = client.embeddings.create(model="minilm", input=texts)
    assert np.array_equal(np.array([d.embedding for d in default.data], dtype=np.float32), expected)
    read = sum(min(n, MAX_TOKENS) for n in minilm_engine.count_tokens(texts))
    assert default.usage.prompt_tokens == default.usage.total_tokens == read and default.model == "minilm"
    floats = client.embeddings.create(model="minilm", input=texts[0], encoding_format="float", dimensions=64)
    assert np.array_equal(np.array(floats.data[0].embedding, dtype=np.float32), shortened(expected[:1], 64)[0])
    assert [m.id for m in client.models.list()] == ["minilm"] and client.models.retrieve("minilm").id == "minilm"
    with pytest.raises(openai.BadRequestError, match="empty list"):
        client.embeddings.create(model="minilm", input=[])
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(model="another-model", input="a text")
    keyed = openai.OpenAI(base_url=f"{classifier_server.url}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="wrong API key"):
        keyed.models.list()
    keyed = openai.OpenAI(base_url=f"{classifier_server.url}/v1", api_key=API_KEY, max_retries=0)
    assert len(keyed.models.list().data) == 1


def test_embeddings_base64_and_dimensions(minilm_server, minilm_engine):
    texts = texts_of(3, seed=1)
    expected = minilm_engine.encode(texts, max_length=MAX_TOKENS)
    with minilm_server.client() as client:
        packed = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"})
        short = client.post("/v1/embeddings", json={"input": texts, "dimensions": 32})
        short64 = client.post("/v1/embeddings", json={"input": texts, "dimensions": 32, "encoding_format": "base64"})
    assert packed.status_code == 200, packed.text
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed.json()["data"]])
    assert np.array_equal(decoded, expected)
    head = expected[:, :32].astype(np.float64)
    renormalised = (head / np.linalg.norm(head, axis=1, keepdims=True)).astype(np.float32)
    assert np.array_equal(embeddings(short), renormalised)
    assert np.allclose(np.linalg.norm(embeddings(short), axis=1), 1, atol=1e-6)
    assert np.array_equal(np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                                    for d in short64.json()["data"]]), renormalised)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.floats(0.01, 100))
def test_dimensions_give_unit_vectors_at_every_size(size, rows, scale):
    """`dimensions` = the model's own size too: a model without a Normalize module must not answer longer vectors
    at D = its size than at D - 1."""
    vectors = np.random.default_rng(size * 10 + rows).normal(size=(rows, size)).astype(np.float32) * scale
    for d in range(1, size + 1):
        short = shortened(vectors, d)
        assert short.shape == (rows, d) and np.allclose(np.linalg.norm(short, axis=1), 1, atol=1e-6)
        assert np.allclose(short * np.linalg.norm(vectors[:, :d], axis=1, keepdims=True), vectors[:, :d],
                           rtol=1e-5, atol=1e-5 * scale)
    assert shortened(vectors, None) is vectors


def test_tokenize_models_and_health(minilm_server, minilm_engine):
    texts = ["Hello, world!", LONG]
    with minilm_server.client() as client:
        tokenized = client.post("/v1/tokenize", json={"input": texts})
        models = client.get("/v1/models")
        health = client.get("/health")
        retrieved = client.get("/v1/models/minilm")       # OpenAI's client.models.retrieve("minilm")
        other = client.get("/v1/models/text-embedding-3-small")
        slashed = client.post("/v1/embeddings/", json={"input": "a"})   # not a redirect to an http:// URL
    assert tokenized.status_code == 200, tokenized.text
    ids = minilm_engine.tokenize(texts, max_length=MAX_TOKENS)
    data = tokenized.json()["data"]
    for row, item in enumerate(data):
        assert item["ids"] == [int(i) for i, m in zip(ids["input_ids"][row], ids["attention_mask"][row]) if m]
    assert data[0]["tokens"] == ["[CLS]", "hello", ",", "world", "!", "[SEP]"]
    assert [d["truncated"] for d in data] == [False, True]
    card = models.json()["data"][0]
    assert models.status_code == 200 and card["id"] == "minilm" and card["object"] == "model"
    assert card["kind"] == "embedding" and card["dimensions"] == 384 and card["max_input_tokens"] == MAX_TOKENS
    assert retrieved.status_code == 200 and retrieved.json() == card
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
    assert slashed.status_code == 404 and "/v1/embeddings" in slashed.json()["error"]["message"]
    assert health.status_code == 200 and health.json()["status"] == "ok"
    # the model loaded after the server was listening: /health said 503 until it was ready, never refused
    assert set(minilm_server.health_statuses) <= {200, 503} and minilm_server.health_statuses[-1] == 200
    # by default a forward runs on the CPUs this process may use (affinity and cgroup quota), as the server says
    # (and its metrics: it was in the start-up line alone)
    assert f"{available_cpus()} thread" in minilm_server.stdout.read_text()
    with minilm_server.client() as client:
        assert scrape(client)[("bortengine_threads", ())] == available_cpus()


def test_before_the_model_is_ready_every_route_but_metrics_answers_503(minilm):
    """In process: the app's lifespan, which loads the model, is not run, so the model is never ready."""
    app = create_app(minilm, ServeOptions(retry_after_s=2))

    async def ask():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as client:
            return (await client.get("/health"), await client.post("/v1/embeddings", json={"input": "a"}),
                    await client.get("/v1/models"), await client.get("/metrics"))

    health, embedded, models, metrics = asyncio.run(ask())
    assert health.status_code == 503 and health.json()["status"] == "loading"
    assert health.headers["retry-after"] == embedded.headers["retry-after"] == "2"
    for response in (embedded, models):
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_loading"
    assert metrics.status_code == 200


def test_a_draining_server_says_so_to_health_probes(minilm):
    """After SIGTERM /health went on answering 200 "ok" to a probe on a connection kept from before (a load balancer's
    keep-alive health checks): it says "draining" with a 503 and closes the connection."""
    app = create_app(minilm, ServeOptions())

    async def ask():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as client:
            app.state.service.ready = True       # (the lifespan, which loads the model, is not run here)
            ready = await client.get("/health")
            app.state.service.draining = True    # what serving.process's drain sets as it begins
            return ready, await client.get("/health")

    ready, draining = asyncio.run(ask())
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    assert draining.status_code == 503 and draining.json()["status"] == "draining"
    assert draining.headers["connection"] == "close"


def test_under_another_asgi_server_a_model_that_cannot_load_is_logged_and_answered(tmp_path, caplog):
    """create_app run by another server (no `bortengine serve` to exit with the error): the reason is in the log,
    /health and the routes say it; they said "loading" for ever and nothing was logged."""
    (tmp_path / "config.json").write_text("{not json")
    app = create_app(tmp_path, ServeOptions())

    async def ask():
        await app.state.service.start()   # what the app's lifespan runs at start-up
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as client:
            return await client.get("/health"), await client.post("/v1/embeddings", json={"input": "a"})

    with caplog.at_level("ERROR", logger="bortengine.serving"):
        health, embedded = asyncio.run(ask())
    assert "config.json is not valid JSON" in caplog.text
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert "config.json is not valid JSON" in health.json()["error"]
    assert embedded.status_code == 503 and embedded.json()["error"]["code"] == "model_load_failed"
    assert "config.json is not valid JSON" in embedded.json()["error"]["message"]


def test_the_loaded_server_is_moved_out_of_the_garbage_collectors_reach(minilm):
    """Once loaded, the server's objects are frozen out of the collector's generations (a full collection walked
    them, ~10 ms with the GIL held, the worst of a loaded server's p99)."""
    import gc

    app = create_app(minilm, ServeOptions(threads=1))
    gc.unfreeze()
    try:
        asyncio.run(app.state.service.start())   # what the app's lifespan runs at start-up
        assert app.state.service.ready and gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()   # (the rest of the test session collects as usual)


def test_create_app_takes_the_api_key_from_the_environment(minilm, monkeypatch):
    """The docs give $BORTENGINE_API_KEY as the way to keep the key off the command line; an app made by
    create_app (gunicorn, uvicorn module:app) served without any key."""
    monkeypatch.setenv("BORTENGINE_API_KEY", "from-the-environment")
    keyed = create_app(minilm, ServeOptions())
    given = create_app(minilm, ServeOptions(api_key="given"))
    assert keyed.state.service.options.api_key == "from-the-environment"
    assert given.state.service.options.api_key == "given"

    async def ask():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=keyed), base_url="http://server") as client:
            return await client.post("/v1/embeddings", json={"input": "a"})

    assert asyncio.run(ask()).status_code == 401
    monkeypatch.setenv("BORTENGINE_API_KEY", " ")
    with pytest.raises(UsageError, match=r"\$BORTENGINE_API_KEY is empty"):
        create_app(minilm, ServeOptions())


def test_classify_equals_engine_classify(classifier_server, serving_classifier):
    engine = load(serving_classifier)
    texts = texts_of(4, words=3, seed=2)
    pairs = texts_of(4, words=2, seed=5)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with classifier_server.client(**auth) as client:
        single = client.post("/v1/classify", json={"input": texts})
        paired = client.post("/v1/classify", json={"input": texts, "text_pairs": pairs})
        time.sleep(0.05)   # idle: with --no-forwards-on-loop still led by a worker thread
        lone = client.post("/v1/classify", json={"input": texts[0]})
        models = client.get("/v1/models")
    for response, expected in ((single, engine.classify(texts)), (paired, engine.classify(texts, pairs)),
                               (lone, engine.classify(texts[:1]))):
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert [d["label"] for d in data] == expected.labels
        scores = np.array([[d["scores"][label] for label in engine.labels] for d in data], dtype=np.float32)
        assert np.array_equal(scores, expected.probabilities)
        assert [d["score"] for d in data] == [d["scores"][d["label"]] for d in data]
    assert models.json()["data"][0]["kind"] == "classifier"
    assert models.json()["data"][0]["labels"] == engine.labels


def test_classify_refuses_an_embedding_model(minilm_server):
    with minilm_server.client() as client:
        response = client.post("/v1/classify", json={"input": "a text"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "model_not_classifier" and "/v1/embeddings" in error["message"]


def test_no_truncation_refuses_long_texts(classifier_server, serving_classifier):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    fits, too_long = "one two three", " ".join(["word"] * (CLASSIFIER_TOKENS + 5))
    with classifier_server.client(**auth) as client:
        ok = client.post("/v1/classify", json={"input": [fits]})
        refused = client.post("/v1/classify", json={"input": [fits, too_long]})
        embedded = client.post("/v1/embeddings", json={"input": too_long})
    assert ok.status_code == 200, ok.text
    for response, where in ((refused, "input[1]"), (embedded, "input")):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "input"
        assert error["message"].startswith(f"{where} has {CLASSIFIER_TOKENS + 7} tokens, more than the "
                                           f"{CLASSIFIER_TOKENS}") and "--no-truncation" in error["message"]
    with classifier_server.client(**auth) as client:     # a request may still ask for the cut
        cut = client.post("/v1/classify", json={"input": [fits, too_long], "truncation": True})
    assert cut.status_code == 200, cut.text
    expected = load(serving_classifier).classify([fits, too_long], max_length=CLASSIFIER_TOKENS)
    assert [d["label"] for d in cut.json()["data"]] == expected.labels


def test_truncation_per_request(minilm_server, minilm_engine):
    """A request's "truncation" overrides the server's default (here: cut): false refuses a text over
    --max-input-tokens with a 400 naming it and its tokens, true cuts it; anything else is a 400 too. The server
    counts its cuts in /metrics and never warns about them on stderr."""
    texts = ["a short text", LONG]
    tokens = minilm_engine.count_tokens(LONG)[0]
    with minilm_server.client() as client:
        refused = client.post("/v1/embeddings", json={"input": texts, "truncation": False})
        single = client.post("/v1/embeddings", json={"input": LONG, "truncation": False})
        cut = client.post("/v1/embeddings", json={"input": texts, "truncation": True})
        fits = client.post("/v1/embeddings", json={"input": texts[:1], "truncation": False})
        bad = client.post("/v1/embeddings", json={"input": texts, "truncation": "no"})
        tokenize = client.post("/v1/tokenize", json={"input": texts, "truncation": False})
    for response, where in ((refused, "input[1]"), (single, "input")):
        assert response.status_code == 400 and response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "input"
        assert error["message"].startswith(f"{where} has {tokens} tokens, more than the {MAX_TOKENS} this server "
                                           f"reads per text")
        assert 'send "truncation": true or leave it out' in error["message"]
    assert np.array_equal(embeddings(cut), minilm_engine.encode(texts, max_length=MAX_TOKENS))
    assert np.array_equal(embeddings(fits), minilm_engine.encode(texts[:1], max_length=MAX_TOKENS, truncation=False))
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_truncation" and bad.json()["error"]["param"] == "truncation"
    assert tokenize.status_code == 400 and tokenize.json()["error"]["code"] == "unknown_field"   # it never cuts
    assert "TruncationWarning" not in minilm_server.stderr.read_text()


def test_api_key(classifier_server):
    body = {"input": "a text"}
    with classifier_server.client() as client:
        missing = client.post("/v1/classify", json=body)
        wrong = client.post("/v1/classify", json=body, headers={"Authorization": "Bearer not-the-key"})
        other_scheme = client.post("/v1/classify", json=body, headers={"Authorization": f"Basic {API_KEY}"})
        right = client.post("/v1/classify", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
        models = client.get("/v1/models")
        health = client.get("/health")
    for response in (missing, wrong, other_scheme, models):
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and "Authorization: Bearer" in error["message"]
        assert API_KEY not in response.text
    assert "another scheme than Bearer" in other_scheme.json()["error"]["message"]
    assert "wrong API key" in wrong.json()["error"]["message"] and "no API key" in missing.json()["error"]["message"]
    assert right.status_code == 200 and health.status_code == 200   # probes need no key
    # the key came from $BORTENGINE_API_KEY: the command line that `ps` shows does not hold it
    cmdline = open(f"/proc/{classifier_server.proc.pid}/cmdline", "rb").read().decode()
    assert API_KEY not in cmdline


# -- /metrics --------------------------------------------------------------------------------------------------

def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics: (name, sorted labels) -> value, read by prometheus_client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_the_traffic(minilm_server, minilm_engine):
    requests = [texts_of(3, seed=10), [LONG, "short"], ["one more"]]
    with minilm_server.client() as client:
        before = scrape(client)
        for texts in requests:
            assert client.post("/v1/embeddings", json={"input": texts}).status_code == 200
        assert client.post("/v1/embeddings", json={"input": []}).status_code == 400
        assert client.get("/nowhere").status_code == 404
        assert client.post("/v1/tokenize", json={"input": "abc"}).status_code == 200
        after = scrape(client)
    texts = [t for r in requests for t in r]
    counts = minilm_engine.count_tokens(texts)
    route = "/v1/embeddings"
    assert delta(before, after, "bortengine_requests_total", route=route, status="200") == len(requests)
    assert delta(before, after, "bortengine_requests_total", route=route, status="400") == 1
    assert delta(before, after, "bortengine_requests_total", route="other", status="404") == 1
    assert delta(before, after, "bortengine_requests_total", route="/v1/tokenize", status="200") == 1
    assert delta(before, after, "bortengine_request_seconds_count", route=route) == len(requests) + 1
    assert delta(before, after, "bortengine_texts_total", route="/v1/embeddings") == len(texts)
    assert delta(before, after, "bortengine_tokens_total", route="/v1/embeddings") == sum(min(n, MAX_TOKENS)
                                                                                     for n in counts)
    assert delta(before, after, "bortengine_truncated_texts_total") == sum(n > MAX_TOKENS for n in counts) == 1
    # every text went through a forward, each request was queued and tokenized once (/v1/tokenize's too)
    assert delta(before, after, "bortengine_batch_sequences_sum") == len(texts)
    assert delta(before, after, "bortengine_batch_tokens_sum") == sum(min(n, MAX_TOKENS) for n in counts)
    assert delta(before, after, "bortengine_queue_seconds_count") == len(requests)
    assert delta(before, after, "bortengine_tokenize_seconds_count") == len(requests) + 1
    assert delta(before, after, "bortengine_forward_seconds_count") >= 1
    assert after[("bortengine_queue_depth", ())] == 0 and after[("bortengine_requests_admitted", ())] == 0


@settings(max_examples=60, deadline=None)
@given(observations=st.lists(st.tuples(st.sampled_from(["/v1/embeddings", "/health", "other"]),
                                       st.sampled_from([200, 400, 429]),
                                       st.one_of(st.sampled_from(SECONDS),   # exactly on a bucket's bound
                                                 st.floats(0.0, 60.0, allow_nan=False))),
                             max_size=40))
def test_metrics_expose_what_prometheus_clients_own_counter_and_histogram_would(observations):
    """ServerMetrics keeps its figures in plain counters read at scrape time; for the same observations its
    exposition parses to the same samples as prometheus-client's Counter and Histogram (bounds inclusive, as `le`
    means), `_created` samples aside."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    ours = ServerMetrics()
    registry = CollectorRegistry()
    requests = Counter("bortengine_requests", "", ["route", "status"], registry=registry)
    seconds = Histogram("bortengine_request_seconds", "", ["route"], buckets=SECONDS, registry=registry)
    for route, status, value in observations:
        ours.record_request(route, status, value)
        requests.labels(route, str(status)).inc()
        seconds.labels(route).observe(value)

    def samples(text: str, names: set[str]) -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples if s.name in names}

    names = {"bortengine_requests_total", "bortengine_request_seconds_bucket", "bortengine_request_seconds_count",
             "bortengine_request_seconds_sum"}
    expected = samples(generate_latest(registry).decode(), names)
    got = samples(ours.exposition().decode(), names)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@settings(max_examples=60, deadline=None)
@given(observations=st.lists(st.tuples(st.integers(0, 2),   # the worker that records it
                                       st.sampled_from(["/v1/embeddings", "/v1/classify", "other"]),
                                       st.sampled_from([200, 400, 429]), st.floats(0.0, 60.0, allow_nan=False),
                                       st.integers(1, 40), st.integers(0, 3)),
                             max_size=40),
       depths=st.lists(st.integers(0, 50), min_size=3, max_size=3))
def test_a_scrape_of_workers_is_the_sum_of_their_figures(observations, depths):
    """A --workers server's scrape (one worker's figures with the others' snapshots, through JSON as they travel)
    reads as one server's that recorded every observation, the queue gauges summed, the workers counted."""
    import json

    from bortengine.engine import BatchRecord

    workers, whole = [ServerMetrics() for _ in range(3)], ServerMetrics()
    for metrics, depth in zip(workers, depths):
        metrics.watch_queue(lambda depth=depth: depth, lambda depth=depth: 2 * depth)
    whole.watch_queue(lambda: sum(depths), lambda: 2 * sum(depths))
    for worker, route, status, seconds, tokens, truncated in observations:
        record = BatchRecord(1, tokens, 1, seconds / 7, [seconds / 3], [0.0], 1)
        for metrics in (workers[worker], whole):
            metrics.record_request(route, status, seconds)
            metrics.record_texts(route, 1, tokens, truncated, seconds / 5)
            metrics.record_batch(record)

    def samples(text: bytes) -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text.decode()) for s in family.samples}

    summed = samples(workers[1].exposition([json.loads(json.dumps(workers[k].snapshot())) for k in (0, 2)]))
    expected = samples(whole.exposition())
    assert summed.pop(("bortengine_workers_reporting", ())) == 3
    assert expected.pop(("bortengine_workers_reporting", ())) == 1
    assert summed.keys() == expected.keys()
    for key, value in expected.items():
        assert summed[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_metrics_from_many_threads_lose_no_observation():
    """The forwards' threads record batches while the event loop records requests: nothing is lost."""
    from bortengine.engine import BatchRecord

    metrics = ServerMetrics()
    record = BatchRecord(3, 20, 2, 0.004, [0.001, 0.002], [0.0, 0.0], 1)

    def lane() -> None:
        for _ in range(2000):
            metrics.record_batch(record)

    def loop() -> None:
        for _ in range(2000):
            metrics.record_request("/v1/embeddings", 200, 0.003)

    threads = [threading.Thread(target=f) for f in (lane, lane, loop)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in text_string_to_metric_families(metrics.exposition().decode()) for s in family.samples}
    assert got[("bortengine_batch_sequences_count", ())] == 4000
    assert got[("bortengine_queue_seconds_count", ())] == 8000
    assert got[("bortengine_queue_seconds_sum", ())] == pytest.approx(4000 * 0.003)
    assert got[("bortengine_requests_total", (("route", "/v1/embeddings"), ("status", "200")))] == 2000


def test_a_burst_of_short_requests_is_batched_by_the_worker_threads_not_led_on_the_event_loop(minilm):
    """In process: the server leads a short request's forward on the event loop only when the engine was idle for
    IDLE_LEAD_S; a burst finds it busy or just idle, so its requests are queued and combined by the engine's
    worker threads (the loop holds at most the first forward, or one more on a machine slow enough to pass
    IDLE_LEAD_S between two of the burst's requests), with the same embeddings as engine.encode."""
    requests = 24
    texts = texts_of(requests, words=4, seed=11)
    app = create_app(minilm, ServeOptions(threads=2))
    service = app.state.service
    forwards: list[tuple[str, int]] = []

    async def burst():
        await service.start()
        loop_thread = threading.current_thread().name
        service.engine.add_batch_listener(lambda record: forwards.append(
            ("loop" if threading.current_thread().name == loop_thread else "worker", record.requests)))
        await asyncio.sleep(0.05)   # idle: the first request of the burst may run on the loop
        forwards.clear()            # the warm-up's forward, whose listeners may run after its result came back
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json={"input": t}) for t in texts))

    answers = asyncio.run(burst())
    got = np.concatenate([embeddings(a) for a in answers])
    assert np.array_equal(got, load(minilm).encode(texts))
    on_loop = sum(1 for where, _ in forwards if where == "loop")
    assert sum(n for _, n in forwards) == requests, forwards
    assert on_loop <= 2, forwards
    assert len(forwards) < requests, f"the burst was not combined: {forwards}"


@pytest.mark.parametrize("texts, on_loop", [(["ok"] * 8, True), (["a"] * 65, False), (["a long text " * 400], False)])
def test_a_request_is_tokenized_on_the_event_loop_by_the_engines_rule(texts, on_loop):
    """The server tokenizes a request's texts on the loop by the rule of the engine's asyncio calls: few texts of few
    characters; many texts however short (the tokenizer costs per text) or many characters go to a thread."""
    from bortengine.serving.app import ModelService
    from bortengine.serving.requests import TextRequest

    async def where() -> bool:
        loop_thread = threading.current_thread()
        return await ModelService._off_loop(TextRequest(texts, None, False),
                                            lambda: threading.current_thread() is loop_thread)

    assert asyncio.run(where()) is on_loop


def test_the_default_model_name_is_the_hub_id_in_the_hugging_face_cache(tmp_path):
    from bortengine.serving import app

    snapshot = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / ("ab12" * 10)
    snapshot.mkdir(parents=True)
    assert app.served_name(snapshot) == "sentence-transformers/all-MiniLM-L6-v2"
    (tmp_path / "hub" / "models--bare" / "snapshots" / "c0").mkdir(parents=True)
    assert app.served_name(tmp_path / "hub" / "models--bare" / "snapshots" / "c0") == "bare"
    # elsewhere, the directory's name, also through a link named otherwise (the name the files are under)
    plain = tmp_path / "my-classifier"
    plain.mkdir()
    (tmp_path / "link").symlink_to(plain)
    assert app.served_name(tmp_path / "link") == "my-classifier"
    (tmp_path / "x" / "snapshots" / "c0").mkdir(parents=True)   # "snapshots" outside the cache's layout
    assert app.served_name(tmp_path / "x" / "snapshots" / "c0") == "c0"


# -- POST /v1/rerank ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cross_encoder(make_model):
    """A cross-encoder as sentence-transformers saves one: a sequence model of one output (its relevance logit)."""
    return make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      head="classifier", num_labels=1, seed=11)


@pytest.fixture(scope="module")
def cross_encoder_server(cross_encoder):
    yield from serving(cross_encoder, "--max-input-tokens", "12")


def test_rerank_equals_engine_rerank(cross_encoder, cross_encoder_server):
    engine = load(cross_encoder)
    query, documents = "which garden has a river", texts_of(7, words=4, seed=3)
    expected = engine.rerank(query, documents, max_length=12)
    with cross_encoder_server.client() as client:
        name = client.get("/v1/models").json()["data"][0]["id"]
        everything = client.post("/v1/rerank", json={"query": query, "documents": documents})
        best = client.post("/v1/rerank", json={"query": query, "documents": documents, "top_n": 3,
                                               "return_documents": True, "model": name})
        lone = client.post("/v1/rerank", json={"query": query, "documents": documents[0], "return_documents": None})
        long = client.post("/v1/rerank", json={"query": query, "documents": ["river " * 40], "truncation": False})
        kind = client.get("/v1/models").json()["data"][0]["kind"]
        classify = client.post("/v1/classify", json={"input": "a text"})
    assert everything.status_code == 200, everything.text
    results = everything.json()["results"]
    assert [r["index"] for r in results] == [d.index for d in expected]
    assert np.array_equal(np.float32([r["relevance_score"] for r in results]), np.float32([d.score for d in expected]))
    assert all("document" not in r for r in results)
    top = best.json()["results"]
    assert [(r["index"], r["document"]["text"]) for r in top] == [(d.index, d.text) for d in expected[:3]]
    assert [r["index"] for r in lone.json()["results"]] == [0] and "document" not in lone.json()["results"][0]
    mask = engine.tokenize([query] * 7, text_pairs=documents, max_length=12)["attention_mask"]
    assert everything.json()["usage"]["total_tokens"] == int(mask.sum())
    assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
    assert "documents[0] with the query" in long.json()["error"]["message"]
    assert long.json()["error"]["param"] == "documents"   # rerank has no `input`
    assert kind == "regression"
    assert classify.status_code == 400 and "POST /v1/rerank" in classify.json()["error"]["message"]


@pytest.mark.parametrize("body, code, says", [
    ({"documents": ["a"]}, "missing_input", 'query is missing; pass a string, e.g. {"query": "a text"}'),
    ({"query": ["a", "b"], "documents": ["a"]}, "invalid_input", "query is a list; it must be one string"),
    ({"query": "q", "documents": []}, "empty_input", "documents is an empty list"),
    ({"query": "q", "documents": ["a", 3]}, "invalid_input", "documents[1] is a number (3)"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, "invalid_top_n", "top_n is a number (0)"),
    ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "invalid_return_documents", "return_documents"),
    ({"query": "q", "documents": ["a"], "top_k": 2}, "unknown_field", "'top_k'; /v1/rerank reads query, documents"),
    ({"query": "q", "documents": ["a"], "model": "other"}, "model_not_found", "'other' is not served here"),
])
def test_bad_rerank_requests(cross_encoder_server, body, code, says):
    with cross_encoder_server.client() as client:
        response = client.post("/v1/rerank", json=body)
    assert response.status_code in (400, 404) and response.json()["error"]["code"] == code, response.text
    assert says in response.json()["error"]["message"]


def test_rerank_refuses_models_that_score_no_pairs(minilm_server, classifier_server):
    """An embedding model, and a classifier of three labels (none of which is a relevance)."""
    with minilm_server.client() as client:
        embedder = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
    with classifier_server.client(Authorization=f"Bearer {API_KEY}") as client:
        three = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
    assert embedder.status_code == 400 and embedder.json()["error"]["code"] == "model_not_cross_encoder"
    assert "/v1/embeddings" in embedder.json()["error"]["message"]
    assert three.status_code == 400 and "3 labels" in three.json()["error"]["message"]


def test_cors_lets_the_pages_it_names_call_the_server_from_a_browser(minilm, minilm_engine, minilm_server):
    """A page's script calls the server as a browser does: a preflight first (OPTIONS, with the headers it will send:
    OpenAI's JS client adds its own), then the call, whose answer must name the page's origin for the browser to
    hand it over, a refusal's too (so that it can read the error and Retry-After). Another origin gets no grant;
    without --cors-allow-origin no page does."""
    page, other = "http://localhost:3000", "https://elsewhere.example"
    server = ServerProcess(minilm, "--cors-allow-origin", page, "--cors-allow-origin", "https://app.example",
                           "--api-key", API_KEY).start()
    try:
        with server.client() as client:
            preflight = client.options("/v1/embeddings", headers={
                "Origin": page, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})
            assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == page
            assert "POST" in preflight.headers["access-control-allow-methods"]
            assert preflight.headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-os"
            called = client.post("/v1/embeddings", json={"input": "a text"},
                                 headers={"Origin": page, "Authorization": f"Bearer {API_KEY}"})
            assert called.status_code == 200 and called.headers["access-control-allow-origin"] == page
            served = np.float32(called.json()["data"][0]["embedding"])
            np.testing.assert_array_equal(served, minilm_engine.encode("a text"))
            refused = client.post("/v1/embeddings", json={"input": "a text"}, headers={"Origin": page})
            assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == page
            assert "Retry-After" in refused.headers["access-control-expose-headers"]
            stranger = client.options("/v1/embeddings", headers={"Origin": other,
                                                                 "Access-Control-Request-Method": "POST"})
            assert stranger.status_code == 400 and "access-control-allow-origin" not in stranger.headers
            assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": other}).headers
    finally:
        assert server.stop() == 0
    # the main test server names no origin: no grant, and OPTIONS is no route
    with minilm_server.client() as client:
        plain = client.post("/v1/embeddings", json={"input": "a text"}, headers={"Origin": page})
        assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
        assert client.options("/v1/embeddings", headers={"Origin": page,
                                                         "Access-Control-Request-Method": "POST"}).status_code == 405
    with pytest.raises(UsageError, match="cors_allow_origins must be origins such as"):
        ServeOptions(cors_allow_origins=("https://app.example/",))
