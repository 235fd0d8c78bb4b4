"""Paired A/B timing of the runtimes on one (model, shape), calls interleaved: for a machine that is not quiet.

The pytest suite times each runtime in its own block of rounds; when other processes' load changes from one
block to the next, the ratios between runtimes carry that change. Here every round calls each runtime once, one
after the other, so all of them sample the same load, and the ratio of each round's pair is taken before the
median. It also shows the tail (p90), where a runtime that waits on preempted threads stands out.

    python bench/interleaved.py --model minilm-l6 --shape 1x32 [--threads 2] [--rounds 60]
        [--runtimes bortengine,onnxruntime]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
if importlib.util.find_spec("bortengine") is None:  # not pip-installed: use the source tree (as conftest does)
    sys.path.insert(0, str(BENCH_DIR.parent / "src"))

import numpy as np  # noqa: E402

from cases import MODELS, RUNTIMES, SHAPES, SMOKE_MODEL, SMOKE_SHAPE  # noqa: E402
from probe import CpuShare  # noqa: E402
from runtimes import make_runtime, set_torch_threads  # noqa: E402


def main(argv=None) -> None:
    models = {m.name: m for m in MODELS + (SMOKE_MODEL,)}
    shapes = {s.name: s for s in SHAPES + (SMOKE_SHAPE,)}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(models), required=True)
    parser.add_argument("--shape", choices=sorted(shapes), required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated, first is the baseline")
    args = parser.parse_args(argv)

    model, shape = models[args.model], shapes[args.shape]
    names = args.runtimes.split(",")
    set_torch_threads(args.threads)
    inputs = shape.inputs(model.config()["vocab_size"])
    runtimes = {n: make_runtime(n, model, args.threads) for n in names}
    calls = {}
    for n, rt in runtimes.items():
        native = rt.prepare(inputs)
        calls[n] = (lambda rt=rt, native=native: rt.run(native))
        for _ in range(3):  # warm-up
            calls[n]()
    times = {n: [] for n in names}
    share = CpuShare()
    for _ in range(args.rounds):
        for n in names:
            t0 = time.perf_counter()
            calls[n]()
            times[n].append(time.perf_counter() - t0)
    others = share.others()

    base = names[0]
    busy = "?" if others is None else f"{others:.0%}"
    print(f"{model.name} {shape.name}, {args.threads} thread(s), {args.rounds} interleaved rounds; other processes "
          f"took {busy} of the CPU")
    print(f"{'runtime':<14} {'median ms':>10} {'p10 ms':>9} {'p90 ms':>9} {'median of per-round ' + base + ' ratio':>34}")
    for n in names:
        t = np.array(times[n])
        paired = np.median(t / np.array(times[base]))
        print(f"{n:<14} {np.median(t) * 1e3:>10.3f} {np.percentile(t, 10) * 1e3:>9.3f} "
              f"{np.percentile(t, 90) * 1e3:>9.3f} {paired:>34.2f}")
    print(f"(ratio = runtime / {base}, per round, then the median: above 1 means {base} is faster)")


if __name__ == "__main__":
    main()
