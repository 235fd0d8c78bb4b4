"""The server's application driven in-process, without HTTP: what the app and the engine's asyncio path cost per
request on the event loop, apart from uvicorn and the sockets (issue 16).

Calls the ASGI app of `bortengine serve` (serving.create_app) directly from C concurrent coroutines, each sending
one short query per POST /v1/embeddings, and reports requests/s and the event loop's CPU time per request
(time.thread_time of the loop's thread). --profile: cProfile of the timed pass (wall time per function: a call that
releases the GIL, such as the tokenizer's, shows the time it waited as well).

    python bench/serve_asgi.py [--dtype int8] [--requests 3000] [--concurrency 32] [--threads 2] [--profile]

On the Intel VM (2 vCPUs, 2026-12-03), int8, uvloop: 1,450-2,000 requests/s at ~320-480 us of loop CPU per
request, where through uvicorn and wrk the loop spent ~520 us: the app and the engine's asyncio path, not the HTTP
layer, take most of the loop's time for short texts.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time

from bortengine.serving.app import create_app
from bortengine.serving.options import ServeOptions
from bortengine.testing import minilm_path

QUERIES = ["the history of rome", "photosynthesis in plants", "a quick brown fox", "jazz music of the twenties"]


async def _started(app, ready: asyncio.Event) -> None:
    """The app's lifespan started (the model loads in the background) and the model ready."""
    messages: asyncio.Queue = asyncio.Queue()
    await messages.put({"type": "lifespan.startup"})

    async def send(message) -> None:
        pass

    asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, messages.get, send))
    await ready.wait()


async def _request(app, body: bytes) -> None:
    """One POST /v1/embeddings through the app, as uvicorn would pass it; the client stays until the answer ends."""
    sent, answered, status = False, asyncio.Event(), []

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif not message.get("more_body"):
            answered.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/embeddings", "raw_path": b"/v1/embeddings", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "state": {}}
    await app(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"the app answered {status}")


async def run(args: argparse.Namespace) -> None:
    ready = asyncio.Event()
    app = create_app(minilm_path(), ServeOptions(threads=args.threads, dtype=args.dtype),
                     on_ready=lambda service: ready.set())
    await _started(app, ready)
    name = app.state.service.name
    bodies = [json.dumps({"input": q, "model": name}).encode() for q in QUERIES]

    async def client(k: int) -> None:
        for i in range(k, args.requests, args.concurrency):
            await _request(app, bodies[i % len(bodies)])

    async def everyone() -> None:
        await asyncio.gather(*(client(k) for k in range(args.concurrency)))

    await everyone()        # warm-up: workspaces, caches, the metrics' children
    profile = cProfile.Profile() if args.profile else None
    wall, cpu = time.perf_counter(), time.thread_time()
    if profile:
        profile.enable()
    await everyone()
    if profile:
        profile.disable()
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    print(f"{args.dtype}, {args.concurrency} concurrent: {args.requests / wall:.0f} requests/s, event loop CPU "
          f"{cpu / args.requests * 1e6:.0f} us per request")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="int8", choices=("float32", "int8"))
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    import uvloop      # as uvicorn runs the server when uvloop is installed (the serve extra)

    uvloop.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
