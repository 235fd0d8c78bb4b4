"""The JSON documents the routes answer with, in OpenAI's shapes where OpenAI has one (/v1/embeddings,
/v1/models) and in the same style where it has none (/v1/classify, /v1/tokenize): `object: "list"`, `data[i]`
with its `index`, `model`, `usage`.

Shapes: N = texts of the request, E = the model's embedding size, D = the dimensions asked for (D <= E),
L = the classifier's labels.
"""
from __future__ import annotations

import base64
from typing import Any, Optional, Sequence

import numpy as np
import orjson
from starlette.responses import Response

from bortengine.engine import ClassificationResult

__all__ = ["JSONAnswer", "json_bytes", "embeddings_response", "classify_response", "rerank_response",
           "tokenize_response", "model_card", "usage", "shortened"]


def json_bytes(content: Any) -> bytes:
    """A JSON document written by orjson: an embedding's floats take ~7 us where json.dumps takes ~300 us (its
    float32 values as their shortest round-tripping text, which parses back to the same float32), the largest
    share of a short text's request after the forward itself. numpy arrays are written as lists."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class JSONAnswer(Response):
    """A Starlette response of a JSON document written by json_bytes."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def usage(tokens: int) -> dict:
    """OpenAI's usage block: an encoder reads its prompt and writes nothing, so both counts are the tokens read."""
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def shortened(vectors: np.ndarray, dimensions: Optional[int]) -> np.ndarray:
    """The first `dimensions` of each embedding, L2-normalised again, as OpenAI's text-embedding-3 models shorten
    theirs; at every D, the model's own size too, so that a client's vectors are unit vectors whatever D it asks
    for (a model without a Normalize module gives longer ones without `dimensions`). Shapes: [N,E] -> [N,D]
    float32."""
    if dimensions is None:
        return vectors
    head = vectors[:, :dimensions].astype(np.float64)
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return (head / np.maximum(norms, np.finfo(np.float64).tiny)).astype(np.float32)


def embeddings_response(vectors: np.ndarray, encoding_format: str, model: str, tokens: int) -> dict:
    """Shapes: vectors [N,D] float32, finite (Engine.aencode refuses others: JSON has no NaN). base64: each
    embedding's little-endian float32 bytes, as OpenAI sends them (its client decodes with
    numpy.frombuffer(..., dtype="float32"))."""
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        embeddings = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    else:
        embeddings = list(rows)          # float32 rows, written by json_bytes
    return {"object": "list",
            "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(embeddings)],
            "model": model, "usage": usage(tokens)}


def classify_response(result: ClassificationResult, labels: Sequence[str], model: str, tokens: int) -> dict:
    """Shapes: result.probabilities [N,L]; labels L names by class index. Each text's label, its probability
    (score) and every label's probability (scores, by label)."""
    data = []
    for i, (label, probabilities) in enumerate(result):
        scores = {name: float(p) for name, p in zip(labels, probabilities.tolist())}
        data.append({"object": "classification", "index": i, "label": label, "score": scores[label],
                     "scores": scores})
    return {"object": "list", "data": data, "model": model, "usage": usage(tokens)}


def rerank_response(ranked: Sequence[Any], return_documents: bool, model: str, tokens: int) -> dict:
    """ranked: Engine.ranked's RankedDocument list, best first. Cohere's and Jina's shape: results[i] with the
    document's index in the request, its relevance_score and (return_documents) its text."""
    results = [{"index": r.index, "relevance_score": r.score, **({"document": {"text": r.text}}
                                                                  if return_documents else {})} for r in ranked]
    return {"object": "list", "results": results, "model": model, "usage": usage(tokens)}


def tokenize_response(encodings: Sequence, counts: Sequence[int], limit: int, model: str) -> dict:
    """encodings: the `tokenizers` Encoding of each text as the model reads it (cut to `limit` tokens); counts:
    each text's tokens before the cut."""
    data = [{"object": "tokens", "index": i, "ids": e.ids, "tokens": e.tokens, "truncated": count > limit}
            for i, (e, count) in enumerate(zip(encodings, counts))]
    return {"object": "list", "data": data, "model": model,
            "usage": usage(sum(len(e.ids) for e in encodings))}


def model_card(name: str, created: int, kind: str, embedding_dim: int, max_input_tokens: int,
               labels: Optional[Sequence[str]], dtype: str) -> dict:
    """One entry of GET /v1/models: OpenAI's fields (id, object, created, owned_by) and what a client of an
    encoder needs besides (kind, dimensions, max_input_tokens, labels, dtype)."""
    return {"id": name, "object": "model", "created": created, "owned_by": "bortengine", "kind": kind,
            "dimensions": embedding_dim, "max_input_tokens": max_input_tokens,
            "labels": list(labels) if labels is not None else None, "dtype": dtype}
