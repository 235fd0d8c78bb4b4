"""`bortengine serve` under what clients do wrong, over real sockets to a real server process: every bad request
gets a 4xx whose JSON body (OpenAI's error shape) says what is wrong, arbitrary JSON never gets a 5xx
(hypothesis), a body over the limit gets 413 before it is read, a client that disconnects has its queued work
dropped, a flood past --max-queue gets 429 with Retry-After and leaves the server healthy, SIGTERM under load
answers every accepted request and exits 0; and the command's own errors (a bad model directory, a port in use, a
model that cannot load) are one line and exit code 2.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import re
import select
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bortengine.cli import main
from bortengine.errors import UsageError
from bortengine.serving.options import ServeOptions
from serving_process import (BODY_TIMEOUT, MAX_BODY, MAX_ITEMS, MAX_QUEUE, MAX_TOKENS, ServerProcess,  # noqa: F401
                             minilm_engine, minilm_server, serving, serving_classifier, texts_of)
from test_serving import delta, embeddings, scrape

ERROR_FIELDS = {"message", "type", "param", "code"}


def assert_error(response, status: int, code: str, *words: str) -> dict:
    """A `status` answer with OpenAI's error body, its code `code`, its message holding `words`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS and error["code"] == code and error["message"], error
    for word in words:
        assert word in error["message"], error
    return error


BAD_EMBEDDINGS = [
    (b'{"input": ', 400, "invalid_json", "not valid JSON"),
    (b"", 400, "empty_body", "empty"),
    (b"\xff\xfe not utf-8", 400, "invalid_json", "UTF-8"),
    (b'[["a text"]]', 400, "invalid_json", "not a JSON object"),
    (b"[" * 10000, 400, "invalid_json", "too deeply"),
    ({}, 400, "missing_input", "input is missing"),
    ({"input": None}, 400, "missing_input", "input is null"),
    ({"inputs": ["a"]}, 400, "missing_input", "the field is 'input'"),
    ({"input": ""}, 400, "empty_input", "empty string"),
    ({"input": []}, 400, "empty_input", "empty list"),
    ({"input": ["a", 3]}, 400, "invalid_input", "input[1] is a number"),
    ({"input": ["a", None]}, 400, "invalid_input", "input[1] is null"),
    ({"input": {"text": "a"}}, 400, "invalid_input", "an object"),
    ({"input": [101, 2023, 102]}, 400, "invalid_input", "token ids"),
    ({"input": [[101, 102]]}, 400, "invalid_input", "token ids"),
    ({"input": ["a"] * (MAX_ITEMS + 1)}, 400, "too_many_inputs", "--max-batch-items"),
    ({"input": "a", "encoding_format": "hex"}, 400, "invalid_encoding_format", "'float'"),
    ({"input": "a", "dimensions": 385}, 400, "invalid_dimensions", "384"),
    ({"input": "a", "dimensions": 0}, 400, "invalid_dimensions", "1 to 384"),
    ({"input": "a", "dimensions": "32"}, 400, "invalid_dimensions", "a string"),
    ({"input": "a", "dimensions": True}, 400, "invalid_dimensions", "a boolean"),
    ({"input": "a", "model": "text-embedding-3-small"}, 404, "model_not_found", "'minilm'"),
    ({"input": "a", "model": 7}, 400, "invalid_model", "a string"),
    ({"input": "a", "dimension": 8}, 400, "unknown_field", "'dimension'"),
    ({"input": "a", "text_pairs": "b"}, 400, "unknown_field", "'text_pairs'"),
    # names the answer repeats: a lone surrogate (valid JSON, not text) escaped, a long one cut
    (b'{"\\ud800": 1, "input": "a"}', 400, "unknown_field", "'\\ud800'"),
    (b'{"input": "a", "model": "m\\udfff"}', 404, "model_not_found", "'m\\udfff'"),
    ({"input": "a", "x" * 10_000: 1}, 400, "unknown_field", "'" + "x" * 64 + "...'"),
]


@pytest.mark.parametrize("body, status, code, words", BAD_EMBEDDINGS)
def test_bad_embedding_requests(minilm_server, body, status, code, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with minilm_server.client() as client:
        response = client.post("/v1/embeddings", content=content, headers={"Content-Type": "application/json"})
    assert_error(response, status, code, words)


def test_lone_surrogates_and_pair_mismatches(minilm_server):
    with minilm_server.client() as client:
        surrogate = client.post("/v1/embeddings", content=b'{"input": ["ok", "\\ud800"]}')
        pairs = client.post("/v1/tokenize", json={"input": ["a", "b"], "text_pairs": ["c"]})
        pair_kind = client.post("/v1/tokenize", json={"input": "a", "text_pairs": ["c"]})
    assert_error(surrogate, 400, "invalid_input", "input[1]", "surrogate")
    assert_error(pairs, 400, "text_pairs_mismatch", "a list of 2 strings")
    assert_error(pair_kind, 400, "text_pairs_mismatch", "one string too")


@pytest.mark.parametrize("body_in", ["one write", "a later write", "chunks"])
def test_an_offer_to_upgrade_the_connection_is_ignored_and_the_request_answered(minilm_server, minilm_engine,
                                                                                 body_in):
    """Java's HttpClient, Ktor and `curl --http2` offer HTTP/2 over cleartext (h2c) with the request; the server
    answers it in HTTP/1.1 (RFC 9110 7.8). httptools skipped such a request's body: "body is empty"."""
    body = b'{"input": "an offer to upgrade"}'
    offer = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    length = f"Content-Length: {len(body)}" if body_in != "chunks" else "Transfer-Encoding: chunked"
    sent = body if body_in != "chunks" else b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    sock = socket.create_connection(minilm_server.address(), timeout=60)
    with sock:
        head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n{offer}Content-Type: application/json\r\n{length}"
                f"\r\n\r\n").encode()
        if body_in == "a later write":
            sock.sendall(head)
            time.sleep(0.2)
            sock.sendall(sent)
        else:
            sock.sendall(head + sent)
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = json.loads(response.read())
    assert response.status == 200, answer
    got = np.array(answer["data"][0]["embedding"], dtype=np.float32)
    assert np.abs(got - minilm_engine.encode("an offer to upgrade")).max() <= 1e-6


def test_unknown_routes_and_wrong_methods(minilm_server):
    with minilm_server.client() as client:
        missing = client.post("/v1/completions", json={"prompt": "a"})
        wrong = client.get("/v1/embeddings")
        delete = client.delete("/health")
    assert_error(missing, 404, "not_found", "/v1/completions", "POST /v1/embeddings")
    error = assert_error(wrong, 405, "method_not_allowed", "takes POST")
    assert wrong.headers["allow"] == "POST" and error["type"] == "invalid_request_error"
    assert_error(delete, 405, "method_not_allowed", "GET")


# -- hypothesis: no JSON a client can send gets a 5xx -----------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() |
    # lone surrogates too: "\ud800" is valid JSON but not Unicode text
    st.text(st.characters(codec=None) | st.sampled_from(["\ud800", "\udfff"]), max_size=20),
    lambda inner: st.lists(inner, max_size=MAX_ITEMS + 2) | st.dictionaries(
        st.text(st.characters(codec=None) | st.sampled_from(["\ud800"]), max_size=6), inner, max_size=3),
    max_leaves=12)
FIELD_NAMES = st.sampled_from(["input", "model", "encoding_format", "dimensions", "user", "text_pairs", "x"])


def acceptable(value) -> bool:
    """What the server must accept as `input`: a non-empty string or 1..MAX_ITEMS of them, valid Unicode."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not 1 <= len(texts) <= MAX_ITEMS:
        return False
    return all(isinstance(t, str) and t and _unicode(t) for t in texts)


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def post_json(client, route: str, body) -> httpx.Response:
    # ensure_ascii: a lone surrogate travels as the JSON escape "\ud800", which is valid JSON
    return client.post(route, content=json.dumps(body, ensure_ascii=True).encode(),
                       headers={"Content-Type": "application/json"})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON)
def test_any_json_input_is_answered_or_refused(minilm_server, value):
    with minilm_server.client() as client:
        response = post_json(client, "/v1/embeddings", {"input": value})
    if acceptable(value):
        assert len(embeddings(response)) == (1 if isinstance(value, str) else len(value))
    else:
        assert response.status_code == 400 and set(response.json()["error"]) == ERROR_FIELDS, response.text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(FIELD_NAMES, JSON, max_size=4) | JSON,
       route=st.sampled_from(["/v1/embeddings", "/v1/tokenize", "/v1/classify"]))
def test_any_json_body_gets_no_server_error(minilm_server, body, route):
    with minilm_server.client() as client:
        response = post_json(client, route, body)
    assert response.status_code in (200, 400, 404), response.text
    assert set(response.json()) == ({"object", "data", "model", "usage"} if response.status_code == 200
                                    else {"error"})


def _read_as_json_reads(body: bytes):
    """What _json_object answers for body, as Python's json reads it (the value, or the APIError's message)."""
    from bortengine.serving.errors import APIError
    from bortengine.serving.requests import EXAMPLE, _json_loads, _json_object
    try:
        value = _json_object(body, "m")
    except APIError as e:
        value = e
    try:
        reference = _json_loads(body, EXAMPLE % "m") if body.strip() else None
    except APIError as e:
        reference = e
    return value, reference


@settings(max_examples=300, deadline=None)
@given(value=st.dictionaries(FIELD_NAMES, JSON, max_size=4), long_integer=st.integers(2 ** 62, 2 ** 80),
       ascii_only=st.booleans())
def test_a_body_reads_as_pythons_json_reads_it(value, long_integer, ascii_only):
    """Bodies are read by orjson, with Python's json for what orjson refuses or might read otherwise: any body reads
    to the same value as with json alone (NaN, infinities, lone surrogates, integers past 64 bits included)."""
    value = {**value, "top_n": long_integer}
    body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    read, reference = _read_as_json_reads(body)
    if isinstance(reference, Exception):
        assert str(read) == str(reference)
    else:   # (json.dumps: NaN equal to NaN, and a float's exact digits)
        assert json.dumps(read, sort_keys=True) == json.dumps(reference, sort_keys=True)
        assert type(read["top_n"]) is int


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200) | st.sampled_from([b'{"a": 1e400}', b'{"a": NaN}', b'\xef\xbb\xbf{}',
                                                      b'{"a": "\\ud800"}', b'{"a": 1,}', b'{"a": 1, "a": 2}']))
def test_any_bytes_read_as_pythons_json_reads_them(body):
    read, reference = _read_as_json_reads(body)
    if isinstance(reference, Exception) or not body.strip():
        assert isinstance(read, Exception) and (reference is None or str(read) == str(reference))
    elif isinstance(reference, dict):
        assert json.dumps(read, sort_keys=True) == json.dumps(reference, sort_keys=True)
    else:
        assert "not a JSON object" in str(read)


@settings(max_examples=30, deadline=None)
@given(body=st.binary(max_size=200))
def test_any_bytes_get_no_server_error(minilm_server, body):
    with minilm_server.client() as client:
        response = client.post("/v1/embeddings", content=body)
    assert response.status_code in (200, 400, 404), response.text


@pytest.mark.parametrize("route", ["/v1/embeddings", "/v1/tokenize"])
def test_a_number_too_long_to_read_is_a_400(minilm_server, route):
    """Python reads no integer of more than 4,300 digits (a ValueError, not a JSONDecodeError); it was a 500."""
    for body in (b'{"input": "a", "user": ' + b"9" * 5000 + b"}", b'{"input": "a", "dimensions": -' + b"9" * 4400
                 + b"}"):
        with minilm_server.client() as client:
            response = client.post(route, content=body, headers={"Content-Type": "application/json"})
            assert_error(response, 400, "invalid_json", "holds a number JSON cannot be read with here")
            assert client.get("/health").status_code == 200   # the same connection, still usable


ZEBRA = 29145   # "zebra" in the MiniLM vocabulary, which no warm-up text holds


def _overflowing(make_model, path: Path, rows: Optional[list[int]] = None) -> Path:
    """A model whose word embeddings (those of `rows`, else all) overflow float32 in the forward: its outputs for a
    text holding them are not finite."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40,
                               seed=21), path)
    weights = load_file(path / "model.safetensors")
    name = next(n for n in weights if n.endswith("word_embeddings.weight"))
    table = weights[name]
    table[slice(None) if rows is None else rows] = 3e38 * np.where(np.arange(table.shape[1]) % 2, 1, -1)
    save_file(weights, path / "model.safetensors")
    return path


def test_a_server_error_says_the_connection_closes(make_model, tmp_path):
    """A 500 (here: a word whose weights overflow float32 in the forward, so its embeddings are not finite) is
    followed by uvicorn closing the connection; the answer says Connection: close, so a keep-alive client's next
    request opens a new one instead of meeting a reset."""
    model = _overflowing(make_model, tmp_path / "overflowing", rows=[ZEBRA])
    for server in serving(model):
        with server.client() as client:
            assert client.post("/v1/embeddings", json={"input": "a text"}).status_code == 200
            broken = client.post("/v1/embeddings", json={"input": "a zebra"})
            assert broken.status_code == 500 and broken.json()["error"]["type"] == "server_error", broken.text
            assert broken.headers["connection"] == "close"
            assert client.get("/health").status_code == 200


# -- 413: checked while reading ---------------------------------------------------------------------------------

def raw_request(server, head: str, body: bytes = b"") -> tuple[http.client.HTTPResponse, socket.socket]:
    """Send a hand-written request (head without its final blank line) and read the answer's status and headers.
    The body may be left unfinished: the server must answer without it."""
    sock = socket.create_connection(server.address(), timeout=60)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response, sock


@pytest.mark.parametrize("head", [
    "GARBAGE",                                                          # no request line
    "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nno colon in this header",
    "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: -5",
    "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc",
])
def test_a_request_that_is_not_http_gets_a_json_400(minilm_server, head):
    """uvicorn's parser refuses it before the app sees it; its answer was a text/plain line, and the metrics did not
    count it."""
    with minilm_server.client() as client:
        before = scrape(client)
    response, sock = raw_request(minilm_server, head)
    with sock:
        body = response.read()
    assert response.status == 400 and response.getheader("content-type") == "application/json", body
    error = json.loads(body)["error"]
    assert set(error) == ERROR_FIELDS and error["code"] == "invalid_http", error
    assert "not valid HTTP/1.1" in error["message"] and response.getheader("connection") == "close"
    with minilm_server.client() as client:
        assert client.get("/health").status_code == 200
        assert delta(before, scrape(client), "bortengine_requests_total", route="unparsed", status="400") == 1


def test_a_body_over_the_limit_is_refused_before_it_is_read(minilm_server):
    # a declared length over the limit: 413 at once, with not one byte of the body sent
    declared, sock = raw_request(minilm_server, f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                                                f"Content-Length: {10 ** 9}\r\nContent-Type: application/json")
    body = json.loads(declared.read())
    sock.close()
    assert declared.status == 413 and declared.getheader("connection") == "close"
    assert body["error"]["code"] == "request_too_large" and str(MAX_BODY) in body["error"]["message"]
    # chunked, no length: 413 as soon as the chunks pass the limit, though the body never ends
    chunk = b"x" * 4096
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // len(chunk) + 1))
    streamed, sock = raw_request(minilm_server, "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                                                "Transfer-Encoding: chunked", chunks)
    assert streamed.status == 413 and json.loads(streamed.read())["error"]["code"] == "request_too_large"
    sock.close()
    # an ordinary client's body just over the limit
    with minilm_server.client() as client:
        response = client.post("/v1/embeddings", json={"input": "x" * MAX_BODY})
        assert client.get("/health").status_code == 200
    assert_error(response, 413, "request_too_large", "--max-body-bytes")


def test_a_compressed_body_gets_415(minilm_server):
    import gzip

    body = gzip.compress(json.dumps({"input": ["a compressed text"]}).encode())
    with minilm_server.client() as client:
        response = client.post("/v1/embeddings", content=body,
                               headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        assert_error(response, 415, "unsupported_encoding", "'gzip'", "uncompressed")
        assert response.headers["connection"] == "close"
        # a coding in a second header line counts as the first's
        twice = client.post("/v1/embeddings", content=body, headers=[("Content-Encoding", "identity"),
                                                                     ("Content-Encoding", "gzip"),
                                                                     ("Content-Type", "application/json")])
        assert_error(twice, 415, "unsupported_encoding", "'gzip'")
        # identity is no compression: answered
        plain = client.post("/v1/embeddings", json={"input": "a text"}, headers={"Content-Encoding": "identity"})
        assert plain.status_code == 200 and client.get("/health").status_code == 200


def test_a_body_in_a_transfer_coding_other_than_chunked_gets_501(minilm_server):
    """The parser undoes only the chunks: a gzip coding under them reached the JSON parser as sent (a 400 that
    blamed the JSON), and a plain body under it was read as though the coding were not there. (An empty element of
    the list is none, RFC 9110 5.6.1.)"""
    body = json.dumps({"input": ["a text"]}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    response, sock = raw_request(minilm_server, "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                                                "Transfer-Encoding: ,chunked", chunked)
    with sock:
        assert response.status == 200, response.read()
    for coding in ("gzip, chunked", "identity, chunked"):
        response, sock = raw_request(minilm_server, f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                                                    f"Transfer-Encoding: {coding}", chunked)
        with sock:
            error = json.loads(response.read())["error"]
        assert response.status == 501 and error["code"] == "unsupported_transfer_encoding", error
        assert repr(coding) in error["message"] and response.getheader("connection") == "close"


def read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(60)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_client_still_sending_a_body_over_the_limit_gets_its_413(minilm_server):
    """The 413 comes before the body is read; closed at once, the kernel answered the bytes still coming with a
    reset, which took the answer from a client still sending (Node's http and fetch: ECONNRESET). The server
    half-closes, drops what still comes, and the client reads its 413 once it has sent everything."""
    size = 16 * MAX_BODY
    with socket.create_connection(minilm_server.address(), timeout=60) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % size)
        for _ in range(16):
            sock.sendall(b"x" * MAX_BODY)
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower(), answer[:300]
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_keep_alive_connections_outlast_uvicorns_5_s_and_say_how_long(minilm_server):
    """uvicorn closed an idle keep-alive connection after 5 s, and said nothing of it: a client reusing a pooled
    connection as it closed got a reset (clients retry no POST). Now 75 s, said in every answer."""
    connection = http.client.HTTPConnection(*minilm_server.address(), timeout=60)

    def embedded() -> http.client.HTTPResponse:
        connection.request("POST", "/v1/embeddings", body=json.dumps({"input": "a text"}),
                           headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        return answer

    with contextlib.closing(connection):
        first = embedded()
        sock = connection.sock
        time.sleep(6)
        again = embedded()     # (http.client does not reconnect: a closed connection raises RemoteDisconnected)
        assert connection.sock is sock
    assert first.status == again.status == 200 and first.getheader("keep-alive") == "timeout=75"


@pytest.mark.parametrize("request_head, kept", [
    ("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {n}", True),
    ("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {n}", False),
    # what `ab -k` sends (uvicorn closed every HTTP/1.0 connection), and HTTP/1.0 without it
    ("POST /v1/embeddings HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Type: application/json\r\n"
     "Content-Length: {n}", True),
    ("POST /v1/embeddings HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {n}", False),
    # an answer of the app that closes (a body over --max-body-bytes: 413 before the body is read)
    ("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999", False),
])
def test_only_an_answer_that_keeps_the_connection_says_keep_alive(minilm_server, request_head, kept):
    """Every answer said `Keep-Alive: timeout=75`, those that also said `Connection: close` too: `ab -k` (HTTP/1.0)
    took the closing connections for kept ones and failed 10 of 10 requests (a reset on each next request). An
    HTTP/1.0 client that asks for keep-alive has its connection kept now, as nginx keeps it."""
    body = json.dumps({"input": "a text"}).encode()
    head = request_head.format(n=len(body))
    response, sock = raw_request(minilm_server, head, body)
    with contextlib.closing(sock):
        response.read()
        connection = (response.getheader("connection") or "").lower()
        assert ("close" in connection) != kept and (response.getheader("keep-alive") == "timeout=75") == kept, \
            response.getheaders()
        assert response.status == (200 if "999999999" not in head else 413)
        if kept:
            assert connection == ("keep-alive" if "HTTP/1.0" in head else "")
            sock.sendall(head.encode() + b"\r\n\r\n" + body)     # the same connection answers the next request
            again = http.client.HTTPResponse(sock)
            again.begin()
            assert again.status == 200 and len(json.loads(again.read())["data"][0]["embedding"]) == 384


def test_headers_past_the_limit_get_431_and_a_long_url_414(minilm_server):
    """httptools has no limit of its own: a header streamed without end was joined piece by piece, holding the event
    loop (128 MB: 27 s) and the memory."""
    from bortengine.serving.process import HEAD_LIMIT_BYTES, URL_LIMIT_BYTES

    with socket.create_connection(minilm_server.address(), timeout=60) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        while sent < 100 * HEAD_LIMIT_BYTES and not select.select([sock], [], [], 0.001)[0]:
            sock.sendall(b"y" * 1024)
            sent += 1024
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert json.loads(body)["error"]["code"] == "headers_too_large" and sent <= 8 * HEAD_LIMIT_BYTES
    # past the limit in the read that ends the headers too: in one write, or the last of several
    for pieces in ([HEAD_LIMIT_BYTES + 1024], [HEAD_LIMIT_BYTES - 1024, 100 * 1024]):
        with socket.create_connection(minilm_server.address(), timeout=60) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for size in pieces:
                sock.sendall(b"y" * size)
                time.sleep(0.2)
            sock.sendall(b"\r\n\r\n")
            answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 431 ") and b'"code":"headers_too_large"' in answer, (pieces, answer[:300])
    response, sock = raw_request(minilm_server, f"GET /health?{'q' * URL_LIMIT_BYTES} HTTP/1.1\r\nHost: x")
    with sock:
        error = json.loads(response.read())["error"]
    assert response.status == 414 and error["code"] == "url_too_long", error
    # a request with headers of a few KiB in small pieces is answered
    with socket.create_connection(minilm_server.address(), timeout=60) as sock:
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"t" * 8000 + \
            b"\r\nConnection: close\r\n\r\n"
        for i in range(0, len(request), 500):
            sock.sendall(request[i:i + 500])
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    with minilm_server.client() as client:
        assert client.get("/health").status_code == 200


def test_connections_that_never_send_a_whole_head_are_closed_after_the_header_timeout(minilm):
    """Nothing closed a connection that never sent a whole request (uvicorn's keep-alive timer runs between requests
    only): 20,400 silent connections took every file descriptor of the server (ulimit 20,000), and every new client
    got an empty reply. Now a connection silent for --header-timeout is closed, and a head begun and not finished
    by then gets 408."""
    timeout = 2.0

    def connected() -> socket.socket:
        return socket.create_connection(server.address(), timeout=60)

    def waited_for(sock: socket.socket, *pieces: bytes) -> tuple[float, bytes]:
        start = time.monotonic()
        for piece in pieces:
            sock.sendall(piece)
        answer = read_until_closed(sock)
        sock.close()
        return time.monotonic() - start, answer

    for server in serving(minilm, "--header-timeout", f"{timeout:g}"):
        with server.client() as client:
            before = scrape(client)
        waited, answer = waited_for(connected())   # silent: closed, nobody to answer
        assert answer == b"" and timeout * 0.9 <= waited < timeout + 20
        waited, answer = waited_for(connected(), b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Ty")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower(), answer[:300]
        error = json.loads(body)["error"]
        assert error["code"] == "header_timeout" and "--header-timeout" in error["message"]
        assert timeout * 0.9 <= waited < timeout + 20
        # on a keep-alive connection: the time runs from the next request's first byte, not from the last answer
        sock = connected()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200 and response.read()
        time.sleep(timeout * 1.5)                  # idle: the keep-alive timeout's, not this one's
        waited, answer = waited_for(sock, b"GET /hea")
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"408"] and timeout * 0.9 <= waited < timeout + 20
        # a head sent in pieces that ends in time is answered
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        pieces = [request[i:i + 8] for i in range(0, len(request), 8)]
        sock = connected()
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(timeout / 4 / len(pieces))
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
        sock.close()
        with server.client() as client:
            assert delta(before, scrape(client), "bortengine_requests_total", route="unparsed", status="408") == 2
            assert client.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200
    for seconds in (0, -1.0, float("nan"), float("inf")):   # from Python, as from the command line
        with pytest.raises(UsageError, match="header_timeout must be a positive number of seconds"):
            ServeOptions(header_timeout=seconds)


def test_pipelined_requests_before_a_malformed_one_keep_their_answers(minilm_server):
    """A request the parser refuses, pipelined after good ones in one write: its 400 was written at once and the
    connection closed, so the good requests' answers were lost and the 400 read as the first one's."""
    good = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    post = json.dumps({"input": "a text"}).encode()
    embed = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
            b"Content-Length: %d\r\n\r\n%s" % (len(post), post)
    with socket.create_connection(minilm_server.address(), timeout=60) as sock:
        sock.sendall(good + embed + good + b"GARBAGE\r\n\r\n")
        answer = read_until_closed(sock)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)     # (a body ends where the next answer starts)
    assert statuses == [b"200", b"200", b"200", b"400"], answer[-400:]
    assert answer.rstrip().endswith(b'"code":"invalid_http"}}')
    # a fault inside the body being read is that request's own answer, at once (not its handler's 408 after
    # --body-timeout, waiting for a body that the parser would no longer give it)
    bad_body = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\n\r\n5\r\n{\"inp\r\nNOT A CHUNK SIZE\r\n")
    for before in (b"", good):   # (pipelined behind a request not yet answered: at once too, as uvicorn did)
        with socket.create_connection(minilm_server.address(), timeout=60) as sock:
            start = time.monotonic()
            sock.sendall(before + bad_body)
            answer = read_until_closed(sock)
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)[-1:] == [b"400"], answer
        assert b'"code":"invalid_http"' in answer and time.monotonic() - start < BODY_TIMEOUT


def test_a_body_that_stalls_gets_408_and_gives_back_its_place(minilm_server):
    # as many clients as --max-queue places stall mid-body: while they hold every place the next request gets 429;
    # each is answered 408 after --body-timeout and disconnected, its place given back, and the server takes the
    # next request
    start = time.monotonic()
    stalled = [raw_request_unanswered(minilm_server, b'{"input": "hal') for _ in range(MAX_QUEUE)]
    with minilm_server.client() as client:
        wait_until(lambda: admitted(client) == MAX_QUEUE, what="the stalled requests to be admitted")
        assert client.post("/v1/embeddings", json={"input": "one more"}).status_code == 429
        # tokenizing takes a place too: a flood of long texts to tokenize would otherwise have no bound
        assert client.post("/v1/tokenize", json={"input": "one more"}).status_code == 429
    answers = []
    for sock in stalled:
        response = http.client.HTTPResponse(sock)
        response.begin()
        answers.append((response.status, response.getheader("connection"), json.loads(response.read())))
        assert sock.recv(1) == b"", "the connection should be closed after the 408"
        sock.close()
    waited = time.monotonic() - start
    for status, connection, body in answers:
        assert status == 408 and connection == "close"
        assert body["error"]["code"] == "request_timeout" and "--body-timeout" in body["error"]["message"]
    assert BODY_TIMEOUT * 0.9 <= waited < BODY_TIMEOUT + 30
    with minilm_server.client() as client:
        wait_until(lambda: admitted(client) == 0, what="the stalled requests' places to be given back")
        assert client.post("/v1/embeddings", json={"input": "half a body, then the whole"}).status_code == 200


def raw_request_unanswered(server, body: bytes) -> socket.socket:
    """A request whose Content-Length promises more than the body sent: the server waits for the rest."""
    sock = socket.create_connection(server.address(), timeout=60)
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body) + 100, body))
    return sock


# -- a client that leaves, a flood ------------------------------------------------------------------------------

def wait_until(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.005)


def admitted(client) -> float:
    return scrape(client)[("bortengine_requests_admitted", ())]


def post_embeddings(server, texts: list[str]) -> httpx.Response:
    with server.client() as client:
        return client.post("/v1/embeddings", json={"input": texts})


def texts_read(client) -> float:
    return scrape(client).get(("bortengine_texts_total", (("route", "/v1/embeddings"),)), 0.0)


def test_a_client_that_disconnects_has_its_queued_work_dropped(minilm):
    # 32 requests of 8 texts of 64 tokens on one thread keep the engine busy for seconds (1.3 s on a Zen 5 core):
    # the leaving request is queued behind them whatever the CPU (on the Intel VM 7 requests on the shared server
    # were answered, some runs, before the leaving one was read)
    busy = [texts_of(MAX_ITEMS, words=40, seed=s) for s in range(32)]
    leaving = json.dumps({"input": texts_of(MAX_ITEMS, words=3, seed=99)}).encode()
    server = ServerProcess(minilm, "--threads", "1", "--max-batch-items", str(MAX_ITEMS), "--max-input-tokens",
                           str(MAX_TOKENS), "--max-batch-tokens", "128", "--max-queue", str(len(busy) + 1)).start()
    try:
        with ThreadPoolExecutor(len(busy)) as pool, server.client() as client:
            before = scrape(client)
            futures = [pool.submit(post_embeddings, server, texts) for texts in busy]
            # a text is counted once read and tokenized, as its request is queued (one step of the event loop)
            wait_until(lambda: texts_read(client) == len(busy) * MAX_ITEMS, what="the busy requests to be read")
            sock = socket.create_connection(server.address())
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(leaving), leaving))
            wait_until(lambda: texts_read(client) == (len(busy) + 1) * MAX_ITEMS, what="the leaving request")
            still_busy = admitted(client)
            sock.close()
            assert all(f.result().status_code == 200 for f in futures)
            wait_until(lambda: admitted(client) == 0, what="every request to end")
            after = scrape(client)
    finally:
        server.kill()
    assert still_busy > 1, "the busy requests ended before the leaving one was queued: give them more work"
    assert delta(before, after, "bortengine_requests_total", route="/v1/embeddings", status="499") == 1
    # every text was read; the busy requests' were computed, the leaving one's never reached a forward
    assert delta(before, after, "bortengine_texts_total", route="/v1/embeddings") == (len(busy) + 1) * MAX_ITEMS
    assert delta(before, after, "bortengine_batch_sequences_sum") == len(busy) * MAX_ITEMS
    assert delta(before, after, "bortengine_requests_total", route="/v1/embeddings", status="200") == len(busy)


def flood(server, texts: list[str], clients: int) -> list[httpx.Response]:
    """clients requests of texts sent at once (from a barrier, each on a connection of its own), every one answered
    200 or 429, both seen."""
    start = threading.Barrier(clients)

    def one(_) -> httpx.Response:
        start.wait()
        return post_embeddings(server, texts)

    with ThreadPoolExecutor(clients) as pool:
        responses = list(pool.map(one, range(clients)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses, statuses
    return responses


def test_a_flood_past_max_queue_gets_429_and_the_server_stays_healthy(minilm_server, minilm_engine):
    texts = texts_of(MAX_ITEMS, words=30, seed=3)
    responses = flood(minilm_server, texts, 4 * MAX_QUEUE)
    expected = minilm_engine.encode(texts, max_length=MAX_TOKENS)
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert_error(response, 429, "queue_full", "--max-queue")
        else:
            assert np.array_equal(embeddings(response), expected)
    with minilm_server.client() as client:
        assert client.get("/health").status_code == 200 and admitted(client) == 0
        assert np.array_equal(embeddings(client.post("/v1/embeddings", json={"input": texts})), expected)


def test_requests_past_their_deadline_get_503(minilm):
    server = ServerProcess(minilm, "--request-timeout", "0.005", "--max-batch-tokens", "64").start()
    texts = texts_of(MAX_ITEMS, words=12, seed=4)    # ~17 tokens each: one forward per request
    try:
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: post_embeddings(server, texts), range(16)))
        with server.client() as client:
            assert client.get("/health").status_code == 200 and admitted(client) == 0
    finally:
        code = server.stop()
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert_error(response, 503, "deadline_exceeded", "--request-timeout")
    assert code == 0


# -- SIGTERM -----------------------------------------------------------------------------------------------------

def _terminated_under(server, work: list[list[str]], socket_closes: bool = False, sig: int = signal.SIGTERM):
    """(responses, exit code, requests in flight at SIGTERM): each of `work` posted at once, SIGTERM once every
    request is read (its texts counted, not all admitted at once: on a fast CPU the first ones can be answered
    before the last arrive); socket_closes: checked to close while they are answered."""
    try:
        with ThreadPoolExecutor(len(work)) as pool:
            futures = [pool.submit(post_embeddings, server, texts) for texts in work]
            with server.client() as client:
                wait_until(lambda: texts_read(client) == sum(map(len, work)), what="the requests to be read")
            server.proc.send_signal(sig)
            in_flight = sum(not f.done() for f in futures)
            if socket_closes:
                wait_until(lambda: _refused(server), timeout=30, what="the listening socket to close")
            responses = [f.result() for f in futures]
        return responses, server.proc.wait(60), in_flight
    finally:
        server.kill()


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_as_soon_as_the_server_listens_stops_it(minilm, sig, code, workers):
    """A supervisor that stops the server the moment it listens, before uvicorn has its signal handlers: SIGTERM
    was lost (the server went on serving) or killed the process by the signal; now both end it as they would later.
    With --workers, before the workers have loaded the model."""
    server = ServerProcess(minilm, "--workers", workers)
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in server.stdout.read_text():
            server._check_alive(deadline)
            time.sleep(0.001)
        server.proc.send_signal(sig)
        assert server.proc.wait(30) == code, server.output()
    finally:
        server.kill()
    assert "Traceback" not in server.stderr.read_text() and "never awaited" not in server.stderr.read_text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_answers_every_request_sent_before_it(minilm, minilm_engine, workers):
    """A burst of clients just before SIGTERM: uvicorn's drain closed the listening socket at once and then every
    connection without a request in progress, so those the kernel still held, or whose request was not read yet,
    were reset (up to half of 64, in 2 of 6 runs) though their requests were sent before the signal."""
    server = ServerProcess(minilm, "--workers", workers, "--max-input-tokens", str(MAX_TOKENS)).start()
    work = [texts_of(1, words=6, seed=500 + k) for k in range(64)]
    try:
        connections = sent_requests(server.address(), work)
        server.terminate()
        assert_answered_exactly(connections, work, minilm_engine)
        code = server.proc.wait(60)
    finally:
        server.kill()
    assert code == 0 and "Traceback" not in server.stderr.read_text(), server.output()


def sent_requests(address: tuple[str, int], work: list[list[str]]) -> list[http.client.HTTPConnection]:
    """A connection for each of work's lists of texts, its embeddings request sent, its answer not read yet."""
    connections = []
    for texts in work:
        connection = http.client.HTTPConnection(*address, timeout=60)
        connection.request("POST", "/v1/embeddings", body=json.dumps({"input": texts}),
                           headers={"Content-Type": "application/json"})
        connections.append(connection)
    return connections


def assert_answered_exactly(connections: list[http.client.HTTPConnection], work: list[list[str]], engine) -> None:
    """Each request of sent_requests answered 200 with the engine's own embeddings of its texts."""
    for texts, connection in zip(work, connections):
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body
        got = np.array([item["embedding"] for item in json.loads(body)["data"]], dtype=np.float32)
        assert np.array_equal(got, engine.encode(texts, max_length=MAX_TOKENS))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_ctrl_c_stops_at_once_without_a_traceback(minilm, workers):
    """uvicorn leaves the app's lifespan to be cancelled when it stops without draining, which logged a
    CancelledError's traceback in every process (and, in one process, a KeyboardInterrupt's)."""
    server = ServerProcess(minilm, "--workers", workers, "--threads", "1").start()
    work = [texts_of(MAX_ITEMS, words=60, seed=600 + k) for k in range(6)]
    try:
        with ThreadPoolExecutor(len(work)) as pool:
            futures = [pool.submit(post_embeddings, server, texts) for texts in work]
            with server.client() as client:
                wait_until(lambda: texts_read(client) > 0, what="a request to be read")
            server.proc.send_signal(signal.SIGINT)
            time.sleep(0.005)
            server.proc.send_signal(signal.SIGINT)
            code = server.proc.wait(60)
            # without draining, a request may also lose its connection unanswered
            statuses = [f.result().status_code if not f.exception() else "closed" for f in futures]
    finally:
        server.kill()
    assert set(statuses) <= {200, 503, "closed"}, statuses
    assert code == 130 and "Traceback" not in server.stderr.read_text(), server.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_under_load_answers_the_accepted_requests_and_exits_0(minilm, minilm_engine, sig):
    """SIGHUP (a closed terminal, some supervisors) ended the process by the signal, its requests unanswered: it
    drains as SIGTERM does."""
    server = ServerProcess(minilm, "--threads", "1", "--max-batch-tokens", "128", "--max-input-tokens",
                           str(MAX_TOKENS)).start()
    assert "1 thread," in server.stdout.read_text()
    work = [texts_of(MAX_ITEMS, words=40, seed=20 + s) for s in range(12)]
    responses, code, in_flight = _terminated_under(server, work, socket_closes=True, sig=sig)
    assert in_flight > 0, "every request ended before SIGTERM: give them more work"
    for texts, response in zip(work, responses):
        assert np.array_equal(embeddings(response), minilm_engine.encode(texts, max_length=MAX_TOKENS))
    assert code == 0 and "Traceback" not in server.stderr.read_text(), server.output()


def test_requests_cut_off_by_the_graceful_timeout_get_a_json_503(minilm, minilm_engine):
    """Past --graceful-timeout uvicorn cancels the handlers still running; each answers 503 `shutting_down` in the
    API's JSON (not uvicorn's plain-text 500 and a traceback per request), the others their embeddings."""
    server = ServerProcess(minilm, "--threads", "1", "--max-batch-tokens", "128", "--max-queue", "64",
                           "--graceful-timeout", "0.2").start()
    # 32 requests of 8 texts of 64 tokens on one thread: over a second of work on a Zen 5 core
    work = [texts_of(MAX_ITEMS, words=40, seed=40 + s) for s in range(32)]
    responses, code, _ = _terminated_under(server, work)
    cut = [r for r in responses if r.status_code != 200]
    assert cut, "every request was answered within the graceful timeout: give them more work"
    for response in cut:
        assert response.status_code == 503 and response.headers["retry-after"], response.text
        error = response.json()["error"]
        assert error["code"] == "shutting_down" and "--graceful-timeout of 0.2 s" in error["message"]
    for texts, response in zip(work, responses):
        if response.status_code == 200:
            assert np.array_equal(embeddings(response), minilm_engine.encode(texts, max_length=MAX_TOKENS))
    assert code == 0 and "Traceback" not in server.stderr.read_text(), server.output()


def test_a_request_whose_body_is_still_arriving_at_the_graceful_timeout_gets_a_json_503(minilm):
    """The cut-off handler may be anywhere: here reading its body (not the engine's work), which uvicorn answered with
    a plain-text 500 and a traceback."""
    server = ServerProcess(minilm, "--graceful-timeout", "0.3").start()
    try:
        body = json.dumps({"input": "a text whose last bytes never come"}).encode()
        with socket.create_connection(server.address(), timeout=30) as sock:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:-5])
            with server.client() as client:   # the handler has started: it holds a place in the queue
                wait_until(lambda: "bortengine_requests_admitted 1.0" in client.get("/metrics").text,
                           what="the request to be admitted")
            server.terminate()
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        code = server.proc.wait(60)
    finally:
        server.kill()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"retry-after" in head.lower(), answer
    assert json.loads(payload)["error"]["code"] == "shutting_down", answer
    assert code == 0 and "Traceback" not in server.stderr.read_text(), server.output()


def _refused(server) -> bool:
    try:
        socket.create_connection(server.address(), timeout=5).close()
        return False
    except ConnectionRefusedError:
        return True


# -- the command's own errors -------------------------------------------------------------------------------------

def assert_one_error_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("bortengine serve: error: "), err
    assert "Traceback" not in err and all(w in lines[-1] for w in words), err


def test_a_bad_model_directory_or_a_port_in_use_is_exit_2(capsys, tmp_path, minilm):
    assert main(["serve", str(tmp_path / "nowhere")]) == 2
    assert_one_error_line(capsys.readouterr().err, "does not exist")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(minilm), "--port", str(taken.getsockname()[1])]) == 2
    assert_one_error_line(capsys.readouterr().err, "is in use", "--port")
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(minilm), "--port", "70000"])
    assert exit_info.value.code == 2
    for seconds in ("0", "-1", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", str(minilm), "--body-timeout", seconds])
        assert exit_info.value.code == 2
    for seconds in ("0.5", "1e20"):
        assert main(["serve", str(minilm), "--keep-alive-timeout", seconds]) == 2
        assert_one_error_line(capsys.readouterr().err, "--keep-alive-timeout must be a number of seconds from 1 to")
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(minilm), "--keep-alive-timeout", "inf"])
    assert exit_info.value.code == 2
    for seconds in ("0", "inf"):
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", str(minilm), "--header-timeout", seconds])
        assert exit_info.value.code == 2
    assert "--header-timeout" in capsys.readouterr().err
    for nice in ("-1", "20", "five"):
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", str(minilm), "--worker-nice", nice])
        assert exit_info.value.code == 2
    assert "--worker-nice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(minilm), "--graceful-timeout", "-1"])
    assert "expected a number >= 0, got '-1'" in capsys.readouterr().err
    # 0 (SIGTERM waits for nothing) is an option ServeOptions takes: parsed, then the missing model refused
    assert main(["serve", str(tmp_path / "nowhere"), "--graceful-timeout", "0"]) == 2
    assert_one_error_line(capsys.readouterr().err, "does not exist")
    for command in (["serve", str(minilm)], ["demo", "--model", str(minilm)], ["profile"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--isa", "avx1024"])
        assert exit_info.value.code == 2
        assert "--isa: 'avx1024' cannot run here; this CPU and build offer " in capsys.readouterr().err


def test_a_missing_part_of_the_serve_extra_is_named_with_the_install_command(capsys, monkeypatch, minilm):
    """httptools too: without it uvicorn parses with h11, under which the header timeout and limits do not hold."""
    import bortengine.cli.serve as command

    monkeypatch.setattr(command, "_importable", lambda module: module not in ("httptools", "orjson"))
    assert main(["serve", str(minilm)]) == 2
    assert_one_error_line(capsys.readouterr().err, "orjson, httptools missing", "pip install 'bortengine[serve]'")


def test_the_access_log_asked_for_is_written_at_any_log_level(serving_classifier):
    """uvicorn writes access lines at INFO: --access-log must not be silenced by --log-level warning (which the
    test servers run at)."""
    server = ServerProcess(serving_classifier, "--access-log").start()
    try:
        with server.client() as client:
            assert client.get("/v1/models").status_code == 200
    finally:
        assert server.stop() == 0
    assert '"GET /v1/models HTTP/1.1" 200' in server.stdout.read_text(), server.output()  # uvicorn's access log


def test_an_empty_api_key_is_refused_not_read_as_none(capsys, monkeypatch, minilm):
    """`--api-key "$KEY"` with KEY unset must not start a server open to everyone."""
    assert main(["serve", str(minilm), "--api-key", ""]) == 2
    assert_one_error_line(capsys.readouterr().err, "--api-key is empty")
    monkeypatch.setenv("BORTENGINE_API_KEY", " ")
    assert main(["serve", str(minilm)]) == 2
    assert_one_error_line(capsys.readouterr().err, "$BORTENGINE_API_KEY is empty")


def test_an_empty_model_name_is_refused_not_ignored(capsys, minilm):
    """`--model-name "$NAME"` with NAME unset served the folder's name, which clients did not expect."""
    assert main(["serve", str(minilm), "--model-name", ""]) == 2
    assert_one_error_line(capsys.readouterr().err, "--model-name must be a non-empty printable name")


@pytest.mark.parametrize("case", ["no weights", "too many tokens", "labels repeat", "too few tokens for a pair",
                                  "non-finite outputs"])
def test_a_model_that_cannot_serve_stops_the_server_with_exit_2(tmp_path, serving_classifier, make_model, case):
    model, options = serving_classifier, ["--max-input-tokens", "100000"]
    if case == "too few tokens for a pair":   # [CLS] a [SEP] b [SEP]: every pair would get a 400 for the setting
        options = ["--max-input-tokens", "2"]
    elif case == "non-finite outputs":   # every text's embeddings: the warm-up finds it (it served 500s)
        model, options = _overflowing(make_model, tmp_path / "model"), []
    elif case != "too many tokens":
        model, options = tmp_path / "model", []
        shutil.copytree(serving_classifier, model)
    if case == "no weights":
        for weights in model.glob("*.safetensors"):
            weights.unlink()
    if case == "labels repeat":   # /v1/classify would answer one probability of the two under that name
        config = json.loads((model / "config.json").read_text())
        config["id2label"] = {"0": "spam", "1": "ham", "2": "spam"}
        config["label2id"] = {"spam": 2, "ham": 1}
        (model / "config.json").write_text(json.dumps(config))
    server = ServerProcess(model, *options)
    try:
        code = server.proc.wait(120)
    finally:
        server.kill()
    # what config.json alone refutes is refused before the port is taken; the rest once the model loads
    listened = "listening on http://127.0.0.1:" in server.stdout.read_text()
    assert code == 2 and listened == (case != "too many tokens"), server.output()
    words = {"no weights": [], "too many tokens": ["max_position_embeddings"], "labels repeat": ["[0, 2]", "'spam'"],
             "too few tokens for a pair": ["--max-input-tokens 2 cannot hold a text pair", "adds 3 special tokens",
                                           "--max-input-tokens 3 or more"],
             "non-finite outputs": ["computed non-finite embeddings"]}
    assert_one_error_line(server.stderr.read_text(), *words[case])
