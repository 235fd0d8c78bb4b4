"""Command line: `bortengine info` (the CPU and kernel paths) and `bortengine demo` (the real all-MiniLM-L6-v2:
embeddings, a check against transformers, latency beside PyTorch eager); `bortengine profile` and
`profile-validate` (this CPU's kernel latencies and the latency model, see docs/profiler.md).

torch and transformers are imported only inside the demo's comparison steps (they are the optional `bench`
extra); without them the demo still embeds and times the engine, and says what it skipped.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["main"]

DEMO_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A man is playing a guitar.",
    "The cat sits outside.",
]
# cosine similarity of the first two sentences under all-MiniLM-L6-v2 (sentence-transformers' published example)
EXPECTED_PAIR = 0.7553
PAIR_TOL = 1e-3
HIDDEN_TOL = 1e-4


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bortengine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="CPU, instruction-set paths and GEMM kernels")
    demo = sub.add_parser("demo", help="all-MiniLM-L6-v2: embeddings, check vs transformers, latency vs PyTorch")
    demo.add_argument("--threads", type=int, default=None, help="threads for both engines (default: all CPUs)")
    demo.add_argument("--batch", nargs="+", default=["1x32", "1x128", "8x128"], metavar="BxT",
                      help="batch x tokens shapes to time (default: 1x32 1x128 8x128)")
    demo.add_argument("--repeats", type=int, default=20, help="timed runs per shape (median reported)")
    demo.add_argument("--isa", default=None, help="force a kernel path (see `bortengine info`)")
    demo.add_argument("--model", default=None, help="model directory (default: the installed all-MiniLM-L6-v2)")
    _add_profile_parsers(sub)
    from bortengine.cli import extract as extract_command

    extract_command.add_parsers(sub)  # extract: the FPTAS (torch only in surrogate workers)
    from bortengine.cli.train import TRAINING_COMMANDS, add_training_parsers

    add_training_parsers(sub)  # pretrain, finetune, export (torch imported only when they run)
    args = parser.parse_args(argv)

    import bortengine

    if args.version:
        print(f"bortengine {bortengine.__version__}")
        return 0
    try:
        if args.command == "info":
            return _info()
        if args.command == "demo":
            return _demo(args)
        if args.command in TRAINING_COMMANDS:
            from bortengine.cli.train import run_training_command

            return run_training_command(args)
        if args.command in ("profile", "profile-validate"):
            return _profile(args)
        if args.command in extract_command.COMMANDS:
            return extract_command.run(args)
    except bortengine.BortEngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser.print_help()
    return 1


def _info() -> int:
    import bortengine
    from bortengine.engine import core as _core

    info = bortengine.cpu_info()
    core = _core()
    print(f"bortengine {bortengine.__version__}")
    print(f"CPU:            {info['vendor']} {info['model']}")
    print(f"flags:          {' '.join(info['flags'])}")
    print(f"logical CPUs:   {info['logical_cpus']} ({bortengine.available_cpus()} available to this process)")
    if info["isa"]:
        print(f"default ISA:    {info['isa']} (kernel {info['kernel']}; force another with $BORTENGINE_ISA)")
    else:
        print(f"default ISA:    none: {info.get('default_isa_error', '$BORTENGINE_ISA cannot run here')}")
    print("available ISAs: " + ", ".join(f"{isa} ({core.kernel_name(isa)})" for isa in info["available_isas"]))
    return 0


def _step(n: int, total: int, text: str) -> None:
    print(f"[{n}/{total}] {text}", flush=True)


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _parse_shapes(specs: Sequence[str]) -> list[tuple[int, int]]:
    shapes = []
    for spec in specs:
        try:
            b, t = (int(x) for x in spec.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bortengine demo: --batch takes BxT shapes like 8x128, got {spec!r}") from None
        if b < 1 or t < 2:
            raise SystemExit(f"bortengine demo: shape {spec!r} needs B >= 1 and T >= 2")
        shapes.append((b, t))
    return shapes


def _demo(args) -> int:
    import bortengine

    shapes = _parse_shapes(args.batch)
    steps = 5
    threads = args.threads or bortengine.available_cpus()
    if args.model is None:
        from bortengine.training import default_teacher_path

        model = default_teacher_path()  # a ModelLoadError that says how to install it, or pass --model DIR
    else:
        model = args.model

    _step(1, steps, f"loading {model} ({threads} thread(s))")
    start = time.perf_counter()
    engine = bortengine.load(model, num_threads=threads, isa=args.isa)
    print(f"      {engine}\n      loaded in {time.perf_counter() - start:.2f} s")

    _step(2, steps, f"embedding {len(DEMO_SENTENCES)} sentences; cosine similarity matrix:")
    vectors = engine.encode(DEMO_SENTENCES, normalize=True)
    sims = vectors @ vectors.T
    for i, sentence in enumerate(DEMO_SENTENCES):
        print(f"      {' '.join(f'{s:6.3f}' for s in sims[i])}   {sentence}")
    pair = float(sims[0, 1])
    pair_ok = abs(pair - EXPECTED_PAIR) <= PAIR_TOL
    print(f"      '{DEMO_SENTENCES[0]}' vs '{DEMO_SENTENCES[1]}': {pair:.4f} (expected {EXPECTED_PAIR}) "
          f"{'ok' if pair_ok else 'MISMATCH'}")

    _step(3, steps, "loading PyTorch + transformers on the same weights (optional `bench` extra)")
    try:
        import torch
        from transformers import BertModel
    except ImportError as e:
        print(f"      skipped the comparison with PyTorch: {e}. Install with pip install 'bortengine[bench]'")
        torch = None
    hf = None
    if torch is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        hf = BertModel.from_pretrained(str(model)).eval()
        print(f"      transformers BertModel, PyTorch {torch.__version__} eager, "
              f"attention {hf.config._attn_implementation!r}, {torch.get_num_threads()} thread(s)")

    diff_ok = True
    if hf is not None:
        _step(4, steps, "checking last_hidden_state against transformers (unmasked positions)")
        batch = engine.tokenize(DEMO_SENTENCES)
        ours = engine(**batch).last_hidden_state
        with torch.inference_mode():
            ref = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
        mask = batch["attention_mask"].astype(bool)
        diff = float(np.abs(ours - ref)[mask].max())
        diff_ok = diff <= HIDDEN_TOL
        print(f"      max abs diff {diff:.2e} (tolerance {HIDDEN_TOL:.0e}) {'ok' if diff_ok else 'MISMATCH'}")
    else:
        _step(4, steps, "skipped (no transformers)")

    _step(5, steps, f"median latency over {args.repeats} runs, {threads} thread(s); int8 = load(dtype='int8')")
    engine8 = bortengine.load(model, num_threads=threads, isa=args.isa, dtype="int8")
    v8 = engine8.encode(DEMO_SENTENCES, normalize=True)
    cos8 = float(np.min(np.sum(v8 * vectors, axis=1)))
    print(f"      int8 kernel {engine8.kernel}; embeddings vs float32: min cosine {cos8:.4f}")
    print(f"      {'shape':>8}  {'bortengine':>12}  {'int8':>12}  {'PyTorch':>12}  {'speed-up':>8}")
    rng = np.random.default_rng(0)
    for b, t in shapes:
        if t > engine.config.max_position_embeddings:
            print(f"      {b}x{t}: skipped (longer than max_position_embeddings="
                  f"{engine.config.max_position_embeddings})")
            continue
        ids = rng.integers(1000, engine.config.vocab_size, size=(b, t), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        mask = np.ones_like(ids)
        ours_ms = _median_ms(lambda: engine(ids, mask), args.repeats)
        int8_ms = _median_ms(lambda: engine8(ids, mask), args.repeats)
        line = f"      {f'{b}x{t}':>8}  {ours_ms:9.2f} ms  {int8_ms:9.2f} ms"
        if hf is not None:
            tids, tmask = torch.from_numpy(ids), torch.from_numpy(mask)

            def run_torch():
                with torch.inference_mode():
                    hf(input_ids=tids, attention_mask=tmask)

            torch_ms = _median_ms(run_torch, args.repeats)
            line += f"  {torch_ms:9.2f} ms  {torch_ms / ours_ms:7.2f}x"
        print(line, flush=True)

    ok = pair_ok and diff_ok
    print("demo " + ("passed" if ok else "FAILED: outputs do not match the reference"))
    return 0 if ok else 1


# --- bortengine profile / profile-validate ----------------------------------------------------------------------

def _add_profile_parsers(sub) -> None:
    from bortengine.profiling import DTYPES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--space", default="bort", help="search space: bort, minilm, or a JSON/YAML file")
    common.add_argument("--batch", type=int, default=1, help="sequences per call (default 1)")
    common.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    common.add_argument("--threads", type=int, default=None, help="threads (default: all CPUs)")
    common.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="the engine path to time: float32 (default) or int8 (load(dtype='int8'))")
    common.add_argument("--quick", action="store_true", help="fewer repeats: a Bort-space profile in under a minute")
    common.add_argument("--out", "--profile", dest="out", default=None, metavar="PATH",
                        help="profile file (default: this CPU's file in the cache directory)")
    common.add_argument("--isa", default=None, help="force a kernel path (see `bortengine info`)")
    common.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time (default), or the thread's CPU time: immune to other processes taking the "
                             "CPU, only with --threads 1")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_argument("--archs", type=int, default=12, help="validation: architectures to sample (default 12)")
    common.add_argument("--seed", type=int, default=0, help="validation: sampling seed (default 0)")
    common.add_argument("--plot", default=None, metavar="PNG", help="validation: write predicted vs measured")
    common.add_argument("--report", default=None, metavar="JSON", help="validation: write the rows and summary")
    common.add_argument("--strict", action="store_true", help="validation: exit 1 when a target is missed")
    prof = sub.add_parser("profile", parents=[common],
                          help="measure this CPU's kernel latencies for a search space and workload")
    prof.add_argument("--show", nargs="?", const="", default=None, metavar="PATH",
                      help="print a profile as a table (default: this CPU's) and exit")
    prof.add_argument("--validate", action="store_true",
                      help="after profiling (only what is missing), validate the latency model")
    prof.add_argument("--fresh", action="store_true", help="re-measure this workload from scratch")
    sub.add_parser("profile-validate", parents=[common],
                   help="predicted vs measured forward latency of architectures sampled from the space")


def _profile(args) -> int:
    from bortengine import profiling as profiler
    from bortengine.engine import available_cpus
    from bortengine.search_space import SearchSpace

    if getattr(args, "show", None) is not None:
        prof = profiler.load_profile(args.show or args.out or None)
        print(prof.table())
        return 0
    space = SearchSpace.resolve(args.space)
    threads = args.threads if args.threads is not None else available_cpus()
    workload = profiler.Workload(batch_size=args.batch, seq_len=args.seq, num_threads=threads, dtype=args.dtype)
    validating = args.command == "profile-validate" or args.validate
    if args.command == "profile":
        print(f"profiling {space.describe()}\nworkload: {workload}", flush=True)
        start = time.perf_counter()
        try:
            prof = profiler.profile(space, workload, quick=args.quick, out=args.out, resume=not args.fresh,
                                    isa=args.isa, progress=not args.no_progress, clock=args.clock)
        except profiler.ProfileInterrupted as e:
            print(f"\n{e}", file=sys.stderr)
            return 130
        wp = prof.workloads[workload.key]
        noisy = sum(1 for m in wp.ops.values() if m.noisy)
        print(f"profile saved to {prof.path} ({len(wp.ops)} ops, {noisy} flagged noisy; "
              f"{time.perf_counter() - start:.0f} s). Show it with: bortengine profile --show {prof.path}")
    else:
        prof = profiler.load_profile(args.out)
    if not validating:
        return 0
    report = profiler.validate(prof, space, workload, n=args.archs, seed=args.seed, quick=args.quick,
                               progress=not args.no_progress)
    print(report.table())
    if args.report:
        import json
        from pathlib import Path

        Path(args.report).write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
        print(f"report written to {args.report}")
    if args.plot:
        print(f"plot written to {report.plot(args.plot)}")
    return 1 if args.strict and not all(report.passes().values()) else 0
