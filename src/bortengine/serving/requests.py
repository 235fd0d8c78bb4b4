"""What a request may hold, checked before any work is queued: the body read up to a size limit (413 the moment
it is passed, never after buffering it whole), its JSON, and its fields (`input` a string or a list of strings,
`text_pairs` one per text, `encoding_format`, `dimensions`, `model`, `truncation`). Every refusal is an APIError
whose message names the field and says how to fix it.
"""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any, Optional

import orjson
from starlette.requests import Request

from bortengine.serving.errors import APIError, ClientDisconnected

__all__ = ["RequestLimits", "TextRequest", "RerankRequest", "read_body", "text_request", "rerank_request",
           "ROUTE_FIELDS"]

# The fields each route reads; any other is refused, so that a typo ("inputs", "dimension") is not silently
# ignored. `user` is OpenAI's end-user id: accepted and unused.
ROUTE_FIELDS = {
    "embeddings": ("input", "model", "encoding_format", "dimensions", "truncation", "user"),
    "classify": ("input", "text_pairs", "model", "truncation", "user"),
    "tokenize": ("input", "text_pairs", "model", "user"),
    "rerank": ("query", "documents", "top_n", "return_documents", "model", "truncation", "user"),
}
ENCODING_FORMATS = ("float", "base64")
# 19 digits in a row: perhaps an integer past 64 bits (2**63 has 19 digits)
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
EXAMPLE = '{"input": ["a text", "another text"], "model": "%s"}'
RERANK_EXAMPLE = '{"query": "a question", "documents": ["a text", "another text"], "model": "%s"}'


@dataclass(frozen=True)
class RequestLimits:
    max_batch_items: int
    max_body_bytes: int


@dataclass(frozen=True)
class TextRequest:
    """A checked request. Shapes: texts N strings (N >= 1), pairs None or N strings; single: `input` was one string
    (the answer is still a list of one); truncation: whether a text over the server's --max-input-tokens is cut
    (True) or refused (False); None: the server's default (--no-truncation)."""

    texts: list[str]
    pairs: Optional[list[str]]
    single: bool
    encoding_format: str = "float"
    dimensions: Optional[int] = None
    truncation: Optional[bool] = None


@dataclass(frozen=True)
class RerankRequest:
    """A checked /v1/rerank request: the documents (N >= 1), how many of the best to answer (top_n, None: all),
    whether to answer their texts, and the pairs to compute: N times (query, document)."""

    documents: list[str]
    top_n: Optional[int]
    return_documents: bool
    pairs: TextRequest


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused with 413 as soon as it is known to pass `limit` bytes: from its Content-Length before
    reading, else while the chunks arrive (chunked transfer encoding); with 408 if it has not all come within
    `timeout` seconds; with 415 if it is compressed (Content-Encoding), 501 if it is sent in a transfer coding other
    than chunked. Each closes the connection, since the rest of the body is left unread."""
    encoding = ", ".join(c for c in _codings(request, "content-encoding") if c != "identity")
    if encoding:
        raise APIError(415, f"the request body is sent with Content-Encoding {encoding!r}; this server reads "
                            f"uncompressed JSON only: send it without compression", code="unsupported_encoding",
                       headers={"Connection": "close"})
    transfer = _codings(request, "transfer-encoding")
    if any(c != "chunked" for c in transfer):
        # (the parser undoes only the chunks: a gzip coding under them reached the JSON parser as it was sent)
        raise APIError(501, f"the request body is sent with Transfer-Encoding {', '.join(transfer)!r}; this server "
                            f"reads a body sent whole (Content-Length) or chunked only: send it uncompressed",
                       code="unsupported_transfer_encoding", headers={"Connection": "close"})
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, f"Content-Length {declared!r} is not a number of bytes", code="bad_content_length")
        if int(declared) > limit:
            raise _too_large(limit, int(declared))
    chunks, size, more = [], 0, True
    try:
        async with asyncio.timeout(timeout):
            while more:      # the ASGI messages themselves: Starlette's request.stream() is a generator around them
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected("the client disconnected while sending its body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit, None)
                chunks.append(chunk)
                more = message.get("more_body", False)
    except TimeoutError:
        raise APIError(408, f"the request's body did not arrive within {timeout:g} s ({size} bytes came); send the "
                            f"whole body at once (or start the server with a longer --body-timeout)",
                       code="request_timeout", headers={"Connection": "close"}) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _codings(request: Request, header: str) -> list[str]:
    """The codings a Content-Encoding or Transfer-Encoding header lists, lower-cased, from every line of it (a
    header may come in several), without empty elements (RFC 9110 5.6.1)."""
    return [c for line in request.headers.getlist(header) for c in (c.strip().lower() for c in line.split(",")) if c]


def _too_large(limit: int, size: Optional[int]) -> APIError:
    what = f"{size} bytes, more than" if size is not None else "larger than"
    return APIError(413, f"the request body is {what} the limit of {limit} bytes; send fewer or shorter texts per "
                         f"request (or start the server with a larger --max-body-bytes)",
                    code="request_too_large", headers={"Connection": "close"})


def text_request(body: bytes, route: str, limits: RequestLimits, model_name: str,
                 embedding_dim: int) -> TextRequest:
    """The checked fields of a body sent to /v1/<route> (a key of ROUTE_FIELDS)."""
    fields = _json_object(body, model_name)
    texts, single = _texts(fields, "input", limits)   # first: a missing input says which field was meant
    _refuse_unknown(fields, route)
    check_model(fields.get("model"), model_name)
    pairs = None
    if fields.get("text_pairs") is not None:
        pairs, single_pair = _texts(fields, "text_pairs", limits)
        if single_pair != single or len(pairs) != len(texts):
            given = "one string" if single_pair else f"a list of {len(pairs)}"
            wanted = "one string too" if single else f"a list of {len(texts)} strings, one per text of input"
            raise APIError(400, f"input is {'one string' if single else f'a list of {len(texts)}'} but text_pairs "
                                f"is {given}; text_pairs must be {wanted}", param="text_pairs",
                           code="text_pairs_mismatch")
    truncation = _truncation(fields.get("truncation"))
    if route != "embeddings":
        return TextRequest(texts, pairs, single, truncation=truncation)
    return TextRequest(texts, pairs, single, _encoding_format(fields.get("encoding_format")),
                       _dimensions(fields.get("dimensions"), embedding_dim), truncation)


def rerank_request(body: bytes, limits: RequestLimits, model_name: str) -> RerankRequest:
    """The checked fields of a body sent to /v1/rerank (Cohere's and Jina's shape, as text-embeddings-inference
    takes it too): query, documents, top_n, return_documents; and model, truncation as the other routes."""
    fields = _json_object(body, model_name, RERANK_EXAMPLE % model_name)
    query, single = _texts(fields, "query", limits, one=True)
    if not single:
        raise APIError(400, f"query is {_kind(fields['query'])}; it must be one string, the text the documents are "
                            f"ranked against", param="query", code="invalid_input")
    documents, _ = _texts(fields, "documents", limits)
    _refuse_unknown(fields, "rerank")
    check_model(fields.get("model"), model_name)
    top_n = fields.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise APIError(400, f"top_n is {_kind(top_n)}; it must be a positive integer (the best top_n documents are "
                            f"answered) or left out (all)", param="top_n", code="invalid_top_n")
    return_documents = fields.get("return_documents")
    return_documents = False if return_documents is None else return_documents   # null: left out, as elsewhere
    if not isinstance(return_documents, bool):
        raise APIError(400, f"return_documents is {_kind(return_documents)}; it must be true (each result holds its "
                            f"document's text) or false", param="return_documents", code="invalid_return_documents")
    pairs = TextRequest(query * len(documents), documents, False, truncation=_truncation(fields.get("truncation")))
    return RerankRequest(documents, top_n, return_documents, pairs)


def _refuse_unknown(fields: dict, route: str) -> None:
    """Any field the route does not read is refused, so that a typo ("inputs", "dimension") is not ignored."""
    allowed = ROUTE_FIELDS[route]
    unknown = [name for name in fields if name not in allowed]
    if unknown:
        name = _shown_name(unknown[0])
        raise APIError(400, f"unknown field '{name}'; /v1/{route} reads {', '.join(allowed)}",
                       param=name, code="unknown_field")


def _shown_name(name: str, most: int = 64) -> str:
    """A name the client sent, fit to answer: at most `most` characters, and a lone surrogate ("\\ud800", valid in JSON
    but not text, which the answer's encoder refuses) written as its escape."""
    short = name if len(name) <= most else name[:most] + "..."
    return short.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_object(body: bytes, model_name: str, example: Optional[str] = None) -> dict:
    example = example or EXAMPLE % model_name
    if not body.strip():
        raise APIError(400, f"the request body is empty; send a JSON object such as {example}", code="empty_body")
    # orjson reads a short request's body in a few microseconds. What it refuses (malformed JSON, but also NaN,
    # infinities, lone surrogates, which Python's json reads) goes to json, whose errors the answers below quote and
    # whose values the fields' checks then judge, as before orjson; so does a body with an integer that may pass 64
    # bits, which orjson would read as a float (json: an int, e.g. a top_n of 10**30).
    if _LONG_DIGITS.search(body):
        value = _json_loads(body, example)
    else:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            value = _json_loads(body, example)
    if not isinstance(value, dict):
        raise APIError(400, f"the request body is {_kind(value)}, not a JSON object; send an object such as "
                            f"{example}", code="invalid_json")
    return value


def _json_loads(body: bytes, example: str) -> Any:
    try:
        return json.loads(body.decode("utf-8"))   # JSON is UTF-8 (RFC 8259); json.loads would guess UTF-16/32
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not UTF-8 text ({e.reason} at byte {e.start}); send JSON encoded "
                            f"as UTF-8", code="invalid_json") from None
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                            f"send a JSON object such as {example}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body nests JSON too deeply to read; send a JSON object such as "
                            f"{example}", code="invalid_json") from None
    except ValueError as e:   # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise APIError(400, f"the request body holds a number JSON cannot be read with here ({e}); send a JSON "
                            f"object such as {example}", code="invalid_json") from None


def check_model(model: Any, model_name: str) -> None:
    """404 unless model (a request's `model`, or the name in /v1/models/{model}) is the served model's name; None
    is."""
    if model is None:
        return
    if not isinstance(model, str):
        raise APIError(400, f"model is {_kind(model)}; it must be a string, the model's name {model_name!r} "
                            f"(GET /v1/models lists it)", param="model", code="invalid_model")
    if model != model_name:
        raise APIError(404, f"the model '{_shown_name(model)}' is not served here; this server serves {model_name!r} "
                            f"(GET /v1/models), pass that name or leave model out", param="model",
                       code="model_not_found")


def _texts(fields: dict, name: str, limits: RequestLimits, one: bool = False) -> tuple[list[str], bool]:
    """(texts, True if the field was one string); every text a non-empty string of valid Unicode. one: the field
    takes one string only (rerank's query), which its message when missing says."""
    if name not in fields or fields[name] is None:
        near = [k for k in fields if k != name and k.lower().rstrip("s") in ("input", "text", "sentence")]
        hint = f" (this body has {near[0]!r}; the field is {name!r})" if near else ""
        state = "null" if name in fields else "missing"
        how = f'a string, e.g. {{"{name}": "a text"}}' if one else \
            f'a string or a list of strings, e.g. {{"{name}": ["a text"]}}'
        raise APIError(400, f"{name} is {state}{hint}; pass {how}", param=name, code="missing_input")
    value = fields[name]
    single = isinstance(value, str)
    texts = [value] if single else value
    if not isinstance(texts, list):
        raise APIError(400, f"{name} is {_kind(value)}; it must be a string or a list of strings", param=name,
                       code="invalid_input")
    if not texts:
        raise APIError(400, f"{name} is an empty list; pass at least one text", param=name, code="empty_input")
    if len(texts) > limits.max_batch_items:
        raise APIError(400, f"{name} has {len(texts)} texts, more than the {limits.max_batch_items} this server "
                            f"takes per request (--max-batch-items); split them into several requests",
                       param=name, code="too_many_inputs")
    if all(isinstance(t, int) and not isinstance(t, bool) or isinstance(t, list) for t in texts):
        raise APIError(400, f"{name} holds numbers or lists, as token ids would be; this server takes texts only: "
                            f"send the strings (POST /v1/tokenize shows the ids a text becomes). LangChain's "
                            f"OpenAIEmbeddings sends OpenAI's token ids unless given check_embedding_ctx_length=False",
                       param=name, code="invalid_input")
    for i, text in enumerate(texts):
        where = name if single else f"{name}[{i}]"
        if not isinstance(text, str):
            raise APIError(400, f"{where} is {_kind(text)}; every item of {name} must be a string", param=name,
                           code="invalid_input")
        if not text:
            raise APIError(400, f"{where} is an empty string; every text must hold at least one character",
                           param=name, code="empty_input")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:   # a lone surrogate such as "\ud800", valid JSON but not text
                raise APIError(400, f"{where} holds {text[e.start]!r} at character {e.start}, half of a UTF-16 "
                                    f"surrogate pair, which is not Unicode text; send the whole character",
                               param=name, code="invalid_input") from None
    return texts, single


def _encoding_format(value: Any) -> str:
    if value is None:
        return "float"
    if value not in ENCODING_FORMATS:
        shown = repr(value) if isinstance(value, str) else _kind(value)
        raise APIError(400, f"encoding_format is {shown}; it must be 'float' (a list of numbers) or 'base64' (the "
                            f"little-endian float32 bytes, base64-encoded)", param="encoding_format",
                       code="invalid_encoding_format")
    return value


def _dimensions(value: Any, embedding_dim: int) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"dimensions is {_kind(value)}; it must be an integer from 1 to {embedding_dim}",
                       param="dimensions", code="invalid_dimensions")
    if not 1 <= value <= embedding_dim:
        raise APIError(400, f"dimensions is {value}, but the model's embeddings have {embedding_dim}; pass 1 to "
                            f"{embedding_dim} (the first dimensions, renormalised) or leave it out",
                       param="dimensions", code="invalid_dimensions")
    return value


def _truncation(value: Any) -> Optional[bool]:
    if value is None or isinstance(value, bool):
        return value
    raise APIError(400, f"truncation is {_kind(value)}; it must be true (cut a text over the server's token limit to "
                        f"it), false (refuse such a text with 400) or left out (the server's default)",
                   param="truncation", code="invalid_truncation")


def _kind(value: Any) -> str:
    """A JSON value's kind as the client wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"
