"""Servers that do no work: what a lone request costs before any model runs (bench/serve_lone.py --floor).

Each answers every POST with the same fixed JSON body, an OpenAI embeddings response of one --dim-float vector
(what `bortengine serve` answers for one text), and GET /health with 200:

- stack:    uvicorn + Starlette, as `bortengine serve` runs them; the handler reads the body and parses its JSON.
            Its latency minus the loopback's is the HTTP stack's own share of a served request.
- asgi:     uvicorn with a bare ASGI callable (no Starlette) that reads the body and parses its JSON: the stack's
            share that is uvicorn's (HTTP parsing, the ASGI messages) rather than Starlette's (routing, Request).
- loopback: an asyncio protocol on uvloop that finds each request's end by its Content-Length and writes the
            fixed response: the sockets, the kernel's loopback and the two processes' wake-ups, nothing else.

    python bench/serve_floor.py stack|asgi|loopback --port PORT [--dim 384]
"""
from __future__ import annotations

import argparse
import asyncio
import sys

import numpy as np
import orjson


def embedding_answer(dim: int) -> bytes:
    vector = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    return orjson.dumps({"object": "list", "model": "floor",
                         "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                         "usage": {"prompt_tokens": 8, "total_tokens": 8}}, option=orjson.OPT_SERIALIZE_NUMPY)


def run_stack(port: int, body: bytes) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def embeddings(request):
        orjson.loads(await request.body())
        return Response(body, media_type="application/json")

    async def health(request):
        return Response(b'{"status": "ok"}', media_type="application/json")

    app = Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]), Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


def run_asgi(port: int, body: bytes) -> None:
    import uvicorn

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope, receive, send) -> None:
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if scope["method"] == "POST":
            orjson.loads(b"".join(chunks))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


class _FixedAnswer(asyncio.Protocol):
    """HTTP/1.1 keep-alive, pipelining allowed: one fixed response per request head (+ Content-Length bytes)."""

    def __init__(self, response: bytes):
        self.response, self.buffer, self.transport = response, b"", None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(self.response)


def run_loopback(port: int, body: bytes) -> None:
    import uvloop

    response = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _FixedAnswer(response), "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["stack", "asgi", "loopback"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dim", type=int, default=384, help="floats in the answer's embedding")
    args = p.parse_args(argv)
    {"stack": run_stack, "asgi": run_asgi, "loopback": run_loopback}[args.kind](args.port, embedding_answer(args.dim))
    return 0


if __name__ == "__main__":
    sys.exit(main())
