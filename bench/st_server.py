"""The peer of the serving load test: sentence-transformers behind the same ASGI stack as `bortengine serve`.

This is how a sentence-transformers model is usually put behind HTTP, following the two projects' documentation:
the model is loaded once at start-up (sentence-transformers' quickstart: `SentenceTransformer(path)`, then
`model.encode(texts)`), and the blocking `encode` runs in Starlette's thread pool (`run_in_threadpool`, what
Starlette and FastAPI document for blocking code; anyio's default of 40 worker threads), so the event loop stays
free while torch computes. torch gets --threads intra-op threads (`torch.set_num_threads`), the same count the
engine's server gets. Same route, request body and response shape as `bortengine serve`:

    POST /v1/embeddings {"input": "text" | ["text", ...], "model": "..."}
      -> {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}], "model": "...",
          "usage": {"prompt_tokens": n, "total_tokens": n}}
    GET /health -> 200 {"status": "ok"} (the model is loaded and has run once before the port opens)

    python bench/st_server.py MODEL_DIR --port P [--host 127.0.0.1] [--threads N] [--pool-size 40]

Embeddings follow the model's own modules (all-MiniLM-L6-v2: mean pooling, then L2 normalisation), as
`engine.encode` does, so both servers return the same vectors up to float rounding.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: never ask the hub for anything

import anyio.to_thread  # noqa: E402
import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

MAX_ITEMS = 2048


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


def request_texts(payload) -> list[str] | str:
    """The texts of an embeddings request, or an error message saying what is wrong with it."""
    if not isinstance(payload, dict) or "input" not in payload:
        return "the body must be a JSON object with an 'input' field"
    texts = payload["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return "'input' must be a string or a non-empty list of strings"
    if len(texts) > MAX_ITEMS:
        return f"'input' has {len(texts)} items; at most {MAX_ITEMS}"
    return texts


def build_app(model, model_id: str, pool_size: int | None = None) -> Starlette:
    def encode(texts: list[str]) -> tuple[list, int]:
        # runs in a pool thread: the forward, the pooling and the token count (for "usage") off the event loop
        vectors = model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
        tokens = int(model.tokenize(texts)["attention_mask"].sum())
        return vectors.tolist(), tokens

    async def embeddings(request: Request) -> JSONResponse:
        try:
            payload = await request.json()
        except ValueError:
            return _error(400, "the body is not valid JSON")
        texts = request_texts(payload)
        if isinstance(texts, str):
            return _error(400, texts)
        vectors, tokens = await run_in_threadpool(encode, texts)
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model_id, "object": "model",
                                                         "owned_by": "sentence-transformers"}]})

    async def lifespan(app):
        if pool_size is not None:
            anyio.to_thread.current_default_thread_limiter().total_tokens = pool_size
        yield

    return Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"]),
                             Route("/health", health, methods=["GET"])],
                     lifespan=lifespan)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--pool-size", type=int, default=None,
                        help="worker threads of Starlette's pool (default: anyio's, 40)")
    args = parser.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    if args.threads:
        torch.set_num_threads(args.threads)
    model = SentenceTransformer(str(args.model_dir), device="cpu")
    model.encode(["warm up the model before the port opens"], show_progress_bar=False)
    app = build_app(model, args.model_dir.name, args.pool_size)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
