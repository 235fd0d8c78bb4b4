"""A call after a pause, with and without its weights read back into the caches while it tokenizes
(Engine.warm_caches), interleaved in one process: every round sleeps --pause-ms, then times one `encode` of one
text, the reads on or off in an order that flips at random; the medians and quartiles of each side, and how often
the reads were stopped by the forward (still running when it started).

    python bench/warm_caches.py [--model DIR] [--dtype int8] [--texts queries] [--rounds 100] [--pause-ms 50]
        [--threads 2] [--out FILE.json]

--texts: reviews, queries (as bench/serve_load.py), or a file with one text a line.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from serve_load import load_texts  # noqa: E402


def main(argv=None) -> int:
    import bortengine
    from bortengine.testing import minilm_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the shipped all-MiniLM-L6-v2)")
    p.add_argument("--dtype", default="int8")
    p.add_argument("--texts", default="queries")
    p.add_argument("--query-tokens", type=int, default=6)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--pause-ms", type=float, default=50.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    engine = bortengine.load(args.model or minilm_path(), dtype=args.dtype, num_threads=args.threads)
    texts = load_texts(args.texts, engine, args.query_tokens)
    if not engine._warms:
        print("warm_caches does nothing here (one CPU)", file=sys.stderr)
        return 1
    for text in texts[:20]:
        engine.encode([text])
    rng = random.Random(0)
    ms: dict[bool, list[float]] = {True: [], False: []}
    stopped = 0
    for _ in range(args.rounds):
        for reads in rng.sample([True, False], 2):
            engine._warms = reads
            time.sleep(args.pause_ms / 1000)
            text = rng.choice(texts)
            before = engine._encoder.warm_stats["stopped"]
            start = time.perf_counter()
            engine.encode([text])
            ms[reads].append((time.perf_counter() - start) * 1000)
            while engine._encoder.warm_stats["running"]:
                time.sleep(0.0005)
            stopped += engine._encoder.warm_stats["stopped"] - before
    engine._warms = True

    def summary(values: list[float]) -> dict:
        q = statistics.quantiles(values, n=4)
        return {"p25_ms": q[0], "median_ms": q[1], "p75_ms": q[2]}

    result = {"meta": {"model": str(engine.path), "dtype": args.dtype, "texts": args.texts, "rounds": args.rounds,
                       "pause_ms": args.pause_ms, "threads": args.threads, "isa": engine.isa},
              "reads": summary(ms[True]), "no_reads": summary(ms[False]), "reads_stopped_by_the_forward": stopped}
    faster = sum(a < b for a, b in zip(ms[True], ms[False]))
    print(f"{args.dtype} {args.texts}, {args.rounds} rounds after {args.pause_ms:g} ms pauses: encode of one text, "
          f"median {result['reads']['median_ms']:.3f} ms with the reads, {result['no_reads']['median_ms']:.3f} ms "
          f"without ({result['no_reads']['median_ms'] - result['reads']['median_ms']:+.3f} saved; quartiles "
          f"{result['reads']['p25_ms']:.3f}-{result['reads']['p75_ms']:.3f} against "
          f"{result['no_reads']['p25_ms']:.3f}-{result['no_reads']['p75_ms']:.3f}); faster in {faster} of "
          f"{args.rounds} pairs; reads stopped by the forward in {stopped} of {args.rounds}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
