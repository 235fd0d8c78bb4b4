"""The in-process references of the serving load test, each in a fresh process (the engine and torch never share
one, and the orchestrating process stays small):

- engine: `bortengine.load(dir, num_threads, dtype)`; its limit = `encode(texts, batch_size=32)` over the whole
  text set, repeated (texts/s; the issue's reference: one forward at a time, on all threads); the same from two
  calling threads (limit_lanes: forwards side by side in the engine's lanes, as under a server's load); one text per call back to back (p50/p99 ms); one text per call after a pause
  (the in-process twin of a lone request on an idle server); and the embeddings of the first texts, which
  serve_load.py compares with what the servers answer.
- st: sentence-transformers with `torch.set_num_threads(threads)`: 32 threads of one process each calling
  `model.encode([text])` in a loop (issue 16's comparison), `encode` in batches of 32, and one call at a time.

    python bench/serve_inprocess.py engine MODEL_DIR TEXTS_JSON --threads 2 --dtype float32 [--seconds 5]
    python bench/serve_inprocess.py st MODEL_DIR TEXTS_JSON --threads 2 [--callers 32] [--seconds 5]

TEXTS_JSON: a JSON list of strings. Prints serve_report.MARKER + one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from serve_report import MARKER, latency_summary_us  # noqa: E402

CHECK_TEXTS = 8  # texts whose embeddings the servers' answers are compared with
IDLE_PAUSE_S = 0.05  # between lone calls, as serve_load.py's idle level waits between requests (--idle-pause-ms)


def limit(encode_batch: Callable[[Sequence[str]], object], texts: Sequence[str], seconds: float) -> dict:
    """texts/s of encode(all texts, batch_size=32), repeated until `seconds` passed (at least once)."""
    encode_batch(texts[:64])  # warm-up
    done, start = 0, time.perf_counter()
    while True:
        encode_batch(texts)
        done += len(texts)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return {"texts_per_s": done / elapsed, "texts": done, "seconds": elapsed, "batch_size": 32}


def concurrent_limit(encode_batch: Callable[[Sequence[str]], object], texts: Sequence[str], seconds: float,
                     callers: int = 2) -> dict:
    """texts/s of `callers` threads each calling encode_batch on its own batches of 32 texts in a loop for `seconds`:
    the engine then runs forwards side by side in lanes, as a loaded server's are (limit() never does: one caller
    runs one forward at a time, on all threads)."""
    batches = [texts[i:i + 32] for i in range(0, len(texts), 32)]
    done = [0] * callers
    position = list(range(callers))

    def call(k: int) -> None:
        batch = batches[position[k] % len(batches)]
        encode_batch(batch)
        done[k] += len(batch)
        position[k] += callers

    encode_batch(texts[:64])  # warm-up
    elapsed = _calling_for(callers, seconds, call)
    return {"texts_per_s": sum(done) / elapsed, "callers": callers, "batch_size": 32, "seconds": elapsed}


def _calling_for(callers: int, seconds: float, call: Callable[[int], None]) -> float:
    """call(k) in a loop in each of `callers` threads k, started together, for `seconds`; the time from the start
    until every thread stopped (the calls still running at the stop are counted by `call`, as their time is)."""
    start_line = threading.Barrier(callers + 1)
    stop = threading.Event()

    def caller(k: int) -> None:
        start_line.wait()
        while not stop.is_set():
            call(k)

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(callers)]
    for th in threads:
        th.start()
    start_line.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()
    return time.perf_counter() - start


def _latency_ms(samples_s: list[float]) -> dict:
    s = latency_summary_us([x * 1e6 for x in samples_s])
    return {"calls": len(samples_s), "p50_ms": s["p50"] / 1000, "p90_ms": s["p90"] / 1000,
            "p99_ms": s["p99"] / 1000, "mean_ms": s["mean"] / 1000}


def single(encode_one: Callable[[str], object], texts: Sequence[str], seconds: float, pause: float = 0.0) -> dict:
    """Latency of one text per call, rotating through the texts, for `seconds` (pause: idle time between calls)."""
    for t in texts[:3]:
        encode_one(t)
    times, start, i = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds or len(times) < 5:
        if pause:
            time.sleep(pause)
        t0 = time.perf_counter()
        encode_one(texts[i % len(texts)])
        times.append(time.perf_counter() - t0)
        i += 1
    return {**_latency_ms(times), "pause_s": pause}


def threaded(encode_one: Callable[[str], object], texts: Sequence[str], callers: int, seconds: float) -> dict:
    """`callers` threads each calling encode_one on its own texts in a loop for `seconds`: texts/s and latency."""
    times: list[list[float]] = [[] for _ in range(callers)]
    position = [k * 7919 for k in range(callers)]

    def call(k: int) -> None:
        t0 = time.perf_counter()
        encode_one(texts[position[k] % len(texts)])
        times[k].append(time.perf_counter() - t0)
        position[k] += 1

    encode_one(texts[0])  # warm-up
    elapsed = _calling_for(callers, seconds, call)
    every = [x for per in times for x in per]
    return {"callers": callers, "texts_per_s": len(every) / elapsed, **_latency_ms(every)}


def engine_references(args) -> dict:
    import bortengine

    engine = bortengine.load(args.model_dir, num_threads=args.threads, dtype=args.dtype)
    texts = args.texts
    return {
        "threads": args.threads, "dtype": args.dtype, "kernel": getattr(engine, "kernel", None),
        "limit": limit(lambda ts: engine.encode(ts, batch_size=32), texts, args.seconds),
        "limit_lanes": concurrent_limit(lambda ts: engine.encode(ts, batch_size=32), texts, args.seconds),
        "single": single(lambda t: engine.encode([t]), texts, args.seconds),
        "single_idle": single(lambda t: engine.encode([t]), texts, args.seconds, pause=args.idle_pause),
        "check_embeddings": engine.encode(texts[:CHECK_TEXTS]).tolist(),
    }


def st_references(args) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(str(args.model_dir), device="cpu")

    def one(t: str):
        return model.encode([t], show_progress_bar=False)

    texts = args.texts
    return {
        "torch_threads": args.threads, "torch": torch.__version__,
        "threads": threaded(one, texts, args.callers, args.seconds),  # the "from 32 threads"
        "limit": limit(lambda ts: model.encode(ts, batch_size=32, show_progress_bar=False), texts, args.seconds),
        "single": single(one, texts, args.seconds),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("engine", "st"))
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("texts_json", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "int8"))
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--callers", type=int, default=32, help="st: threads calling encode in one process")
    parser.add_argument("--idle-pause", type=float, default=IDLE_PAUSE_S, help="engine: seconds between lone calls")
    args = parser.parse_args(argv)
    args.texts = json.loads(args.texts_json.read_text(encoding="utf-8"))
    report = engine_references(args) if args.which == "engine" else st_references(args)
    print(MARKER + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
