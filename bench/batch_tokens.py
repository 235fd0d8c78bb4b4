"""What a combined forward's size buys: the engine's time per text against the tokens in one forward, on real short
texts, at batch sizes a dynamic batcher would form. The engine's DEFAULT_MAX_BATCH_TOKENS comes from this.

`python bench/batch_tokens.py [--model DIR] [--threads 2] [--dtype float32,int8] [--texts reviews,queries]` prints,
per text set and dtype, the median ms of one forward over B texts (B = 1, 2, 4, ... 256), its real tokens, the
ms per text and texts/s, and the speed-up over batch 1. Batching pays only while the time per text keeps falling; a
forward over more tokens makes every request in it wait longer, so the budget should be about where the curve
flattens. Forwards of the sizes alternate round by round (interleaved), so a noisy neighbour hits all sizes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import bortengine
from bortengine.testing import minilm_path

BENCH_DIR = Path(__file__).resolve().parent
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def text_set(name: str, engine, query_tokens: int = 6) -> list[str]:
    """reviews: Rotten Tomatoes test reviews (~26 tokens); queries: Wikipedia titles of query_tokens tokens."""
    from serve_load import load_texts   # the load test's text sets, so both benches read the same texts

    return load_texts(name, engine, query_tokens)


def measure(engine, texts: list[str], sizes=SIZES, rounds: int = 7) -> list[dict]:
    rng = np.random.default_rng(0)
    batches = {b: [engine.tokenize(list(rng.choice(texts, b))) for _ in range(3)] for b in sizes}
    times: dict[int, list[float]] = {b: [] for b in sizes}
    for r in range(rounds):
        for b in (sizes if r % 2 == 0 else sizes[::-1]):
            for batch in batches[b]:
                engine(batch)                      # untimed: the size's first forward warms its workspace
                start = time.perf_counter()
                engine(batch)
                times[b].append(time.perf_counter() - start)
    rows, base = [], None
    for b in sizes:
        ms = 1e3 * float(np.median(times[b]))
        tokens = float(np.mean([int(x["attention_mask"].sum()) for x in batches[b]]))
        per_text = ms / b
        base = base or per_text
        rows.append({"batch": b, "tokens": tokens, "ms": ms, "ms_per_text": per_text, "texts_per_s": 1e3 / per_text,
                     "speedup_over_batch_1": base / per_text})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", type=lambda s: s.split(","), default=["float32", "int8"])
    p.add_argument("--texts", type=lambda s: s.split(","), default=["reviews", "queries"])
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "batch_tokens.json")
    args = p.parse_args()
    model = args.model or str(minilm_path())
    results = []
    for dtype in args.dtype:
        engine = bortengine.load(model, dtype=dtype, num_threads=args.threads, batching=False)
        for name in args.texts:
            rows = measure(engine, text_set(name, engine))
            results.append({"dtype": dtype, "texts": name, "rows": rows})
            print(f"\n{dtype}, {name} ({args.threads} threads)")
            print(f"{'batch':>6} {'tokens':>8} {'ms':>8} {'ms/text':>8} {'texts/s':>8} {'x batch 1':>9}")
            for r in rows:
                print(f"{r['batch']:>6} {r['tokens']:>8.0f} {r['ms']:>8.3f} {r['ms_per_text']:>8.3f} "
                      f"{r['texts_per_s']:>8.0f} {r['speedup_over_batch_1']:>9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": model, "threads": args.threads, "cpu": bortengine.cpu_info().get("model"),
                                    "results": results}, indent=1))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
