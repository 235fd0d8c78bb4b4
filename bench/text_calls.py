"""Paired A/B of two builds on what a service calls: classify([text]) or encode([text]), one text per call.

What a call costs beyond the native forward (tokenizing, padding, the queue, the head, the result) is what makes a
small student's batch-1 speed-up over its teacher smaller than their forwards' ratio: on Zen 4 a 2-layer student's
classify() of a 14-token question took ~400 us, ~300 of them in the forward. Each side is a worker process with its
own PYTHONPATH (two builds cannot share one process); rounds alternate which side goes first, each side times a
block of calls per model on the same texts and reports the median call and the median call on the same texts'
ids (engine(**tokenize([text])): the forward and its input checks). Only each round's before/after ratio means
anything on a VM whose speed changes from minute to minute.

    python bench/text_calls.py --before /path/to/old/checkout/src --after src MODEL_DIR... [--texts FILE.csv]
        [--column text] [--rounds 9] [--calls 400] [--threads 2] [--out bench/results/NAME.json]

MODEL_DIRs: classifiers are called with classify(), other models with encode(). Texts: a CSV column (default: the
Rotten Tomatoes test reviews that ship with the package).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from paired_builds import Side       # bench/ is on the path when this file is run

WORKER = r"""
import json, statistics, sys, time
import bortengine
texts = json.loads(sys.stdin.readline())
engines = {}
for line in sys.stdin:
    path, calls, threads = line.split()
    if path not in engines:
        engines[path] = bortengine.load(path, num_threads=int(threads))
    e = engines[path]
    call = (lambda t: e.classify([t])) if e.config.is_classifier else (lambda t: e.encode([t]))
    batches = [e.tokenize([t]) for t in texts]
    for t in texts[:50]:
        call(t)
    took, on_ids = [], []
    for i in range(int(calls)):
        t = texts[i % len(texts)]
        start = time.perf_counter_ns(); call(t); took.append(time.perf_counter_ns() - start)
        b = batches[i % len(texts)]
        start = time.perf_counter_ns(); e(**b); on_ids.append(time.perf_counter_ns() - start)
    print(json.dumps([statistics.median(took) / 1e3, statistics.median(on_ids) / 1e3]), flush=True)
"""


def _texts(path: str | None, column: str) -> list[str]:
    if path is None:
        from bortengine.training.data import load_split

        return [e.text for e in load_split("rt", "test")][:200]
    import pyarrow.csv as pacsv

    return [str(t) for t in pacsv.read_csv(path).column(column).to_pylist()][:200]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--before", required=True, help="source tree (the directory holding bortengine/) of the old build")
    p.add_argument("--after", required=True, help="source tree of the new build")
    p.add_argument("--texts", default=None)
    p.add_argument("--column", default="text")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    texts = _texts(a.texts, a.column)
    sides = {side: Side(src, WORKER, json.dumps(texts)) for side, src in (("before", a.before), ("after", a.after))}
    rows: dict[str, dict[str, list]] = {m: {"before": [], "after": [], "ids_before": [], "ids_after": []}
                                        for m in a.models}
    for r in range(a.rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for model in a.models:
            for side in order:
                took, on_ids = json.loads(sides[side].ask(f"{model} {a.calls} {a.threads}"))
                rows[model][side].append(took)
                rows[model]["ids_" + side].append(on_ids)
        print(f"round {r + 1}/{a.rounds}: " + "  ".join(
            f"{Path(m).name} {rows[m]['before'][-1]:.1f} -> {rows[m]['after'][-1]:.1f} us" for m in a.models),
            flush=True)
    for side in sides.values():
        side.close()
    report = {"texts": a.texts or "rotten tomatoes test", "calls": a.calls, "rounds": a.rounds, "threads": a.threads,
              "models": {}}
    print(f"{'model':40s} {'before us':>10s} {'after us':>10s} {'after/before':>12s} {'on ids us':>10s} "
          f"{'beyond the ids call, before -> after':>36s}")
    for m, r in rows.items():
        ratio = statistics.median(b / x for b, x in zip(r["after"], r["before"]))
        med = {k: statistics.median(v) for k, v in r.items()}
        report["models"][m] = {**med, "after_over_before": ratio, "rounds": r}
        print(f"{m[-40:]:40s} {med['before']:10.1f} {med['after']:10.1f} {ratio:12.3f} {med['ids_after']:10.1f} "
              f"{med['before'] - med['ids_before']:20.1f} -> {med['after'] - med['ids_after']:.1f}")
    if len(a.models) == 2:
        for side in ("before", "after"):
            ratios = [t / s for t, s in zip(rows[a.models[0]][side], rows[a.models[1]][side])]
            report[f"first_over_second_{side}"] = statistics.median(ratios)
            print(f"{side}: {Path(a.models[0]).name} / {Path(a.models[1]).name} per call: "
                  f"{statistics.median(ratios):.3f}x")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
