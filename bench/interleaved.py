"""Paired A/B timing of the runtimes on one (model, shape), calls interleaved: for a machine that is not quiet.

The pytest suite times each runtime in its own block of rounds; when other processes' load changes from one
block to the next, the ratios between runtimes carry that change. Here every round calls each runtime once, one
after the other, so all of them sample the same load, and the ratio of each round's pair is taken before the
median. It also shows the tail (p90), where a runtime that waits on preempted threads stands out.

In a round each runtime runs a block of --block calls back to back and only the last one is timed. The untimed
calls absorb what the previous runtime left behind: ONNX Runtime's intra-op threads spin for about 40 ms after a
run (and this engine's pool for about 10 ms; both measured with the process's CPU time while its main thread
slept), so the call right after another runtime shares the cores with its spinning threads. With one call per
round (--block 1, this tool's behaviour before) the runtime that follows ONNX Runtime was measured up to 25%
slow (MiniLM 8x128: the engine 167 ms interleaved, 129 ms alone; ORT 140 and 133). Sleeping between calls
instead is no cure: an idle pause of 0.1 s slows the next call of either runtime by 10-25% on this VM.

    python bench/interleaved.py --model minilm-l6 --shape 1x32 [--threads 2] [--rounds 60] [--block 2]
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

from cases import FAMILY_MODELS, MODELS, RUNTIMES, SHAPES, SMOKE_MODEL, SMOKE_SHAPE  # noqa: E402
from probe import CpuShare  # noqa: E402
from runtimes import make_runtime, set_torch_threads  # noqa: E402


def main(argv=None) -> None:
    models = {m.name: m for m in MODELS + FAMILY_MODELS + (SMOKE_MODEL,)}
    shapes = {s.name: s for s in SHAPES + (SMOKE_SHAPE,)}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(models), required=True)
    parser.add_argument("--shape", choices=sorted(shapes), required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--block", type=int, default=2,
                        help="calls per runtime per round, back to back; only the last is timed")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated, first is the baseline")
    args = parser.parse_args(argv)

    if args.block < 1:
        parser.error(f"--block must be >= 1, got {args.block}")
    model, shape = models[args.model], shapes[args.shape]
    names = args.runtimes.split(",")
    set_torch_threads(args.threads)
    inputs = model.encoder_inputs(shape)
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
            for _ in range(args.block - 1):
                calls[n]()
            t0 = time.perf_counter()
            calls[n]()
            times[n].append(time.perf_counter() - t0)
    others = share.others()

    base = names[0]
    busy = "?" if others is None else f"{others:.0%}"
    print(f"{model.name} {shape.name}, {args.threads} thread(s), {args.rounds} interleaved rounds (last of "
          f"{args.block} calls timed); other processes took {busy} of the CPU")
    print(f"{'runtime':<14} {'median ms':>10} {'p10 ms':>9} {'p90 ms':>9} {'median of per-round ' + base + ' ratio':>34}")
    for n in names:
        t = np.array(times[n])
        paired = np.median(t / np.array(times[base]))
        print(f"{n:<14} {np.median(t) * 1e3:>10.3f} {np.percentile(t, 10) * 1e3:>9.3f} "
              f"{np.percentile(t, 90) * 1e3:>9.3f} {paired:>34.2f}")
    print(f"(ratio = runtime / {base}, per round, then the median: above 1 means {base} is faster)")


if __name__ == "__main__":
    main()
