"""`bortengine profile` (this CPU's kernel latencies for a search space and workload, or --show a profile) and
`bortengine profile-validate` (the latency model's predictions against measured forwards). See docs/profiler.md.

A profile stopped by Ctrl-C keeps what it measured: its ProfileInterrupted says how to resume (exit code 130).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bortengine.cli.arguments import add_executor_arguments, at_least_two, check_output, kernel_path, positive_int
from bortengine.engine import available_cpus
from bortengine.errors import UsageError
from bortengine.files import atomic_write_json
from bortengine.search_space import SearchSpace

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("profile", "profile-validate")


def add_parsers(sub) -> None:
    from bortengine.profiling import DTYPES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--space", default="bort", help="search space: bort, minilm, a JSON/YAML file, or the "
                        "name of one the profile was measured for (it keeps their definitions)")
    common.add_argument("--batch", type=int, default=1, help="sequences per call (default 1)")
    common.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    common.add_argument("--threads", type=positive_int, default=None, help="threads (default: all CPUs)")
    common.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="the engine path to time: float32 (default), int8 or bf16 (load(dtype=...))")
    common.add_argument("--quick", action="store_true",
                        help="fewer repeats: a Bort-space profile in under a minute; a validation times each "
                             "architecture fewer times")
    common.add_argument("--out", "--profile", dest="out", default=None, metavar="PATH",
                        help="profile file (default: this CPU's file in the cache directory)")
    common.add_argument("--isa", type=kernel_path, default=None, help="force a kernel path (see `bortengine info`)")
    common.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time (default), or the thread's CPU time: immune to other processes taking the "
                             "CPU, only with --threads 1")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_argument("--archs", type=at_least_two, default=12,
                        help="validation: architectures to sample, at least 2 (default 12)")
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
    prof.add_argument("--fresh", action="store_true",
                      help="re-measure this workload from scratch (the file's other workloads are kept)")
    add_executor_arguments(prof, what="local: profile this CPU (default); ray: profile each distinct CPU target "
                                      "among a Ray cluster's nodes, on one node of each, into this machine's profile "
                                      "directory (threads default to each node's CPUs)")
    sub.add_parser("profile-validate", parents=[common],
                   help="predicted vs measured forward latency of architectures sampled from the space")


def run(args) -> int:
    from bortengine.profiling import Workload, load_profile

    measuring = args.command == "profile"
    if measuring and args.ray_address and args.executor == "local":
        raise UsageError(f"--ray-address {args.ray_address} goes with --executor ray (fleet profiling)")
    if measuring and (args.executor == "ray" or args.ray_address):
        return _measure_fleet(args)
    if measuring and args.show is not None:
        print(load_profile(args.show or args.out or None).table())
        return 0
    validating = not measuring or args.validate
    for option, path, wanted in (("--out", args.out, measuring), ("--report", args.report, validating),
                                 ("--plot", args.plot, validating)):
        if wanted:
            check_output(path, option, directory=False)
    from bortengine.profiling import resolve_space

    space = resolve_space(args.space, args.out, args.isa)
    threads = args.threads if args.threads is not None else available_cpus()
    workload = Workload(batch_size=args.batch, seq_len=args.seq, num_threads=threads, dtype=args.dtype)
    prof = _measure(args, space, workload) if measuring else load_profile(args.out)
    if not validating:
        return 0
    return _validate(args, prof, space, workload)


def _measure(args, space: SearchSpace, workload):
    """Profile what is missing for this workload (everything with --fresh), save it and say where."""
    from bortengine.profiling import profile

    print(f"profiling {space.describe()}\nworkload: {workload}", flush=True)
    start = time.perf_counter()
    prof = profile(space, workload, quick=args.quick, out=args.out, resume=not args.fresh, isa=args.isa,
                   progress=not args.no_progress, clock=args.clock)
    wp = prof.workloads[workload.key]
    noisy = sum(1 for m in wp.ops.values() if m.noisy)
    print(f"profile saved to {prof.path} ({len(wp.ops)} ops, {noisy} flagged noisy; "
          f"{time.perf_counter() - start:.0f} s). Show it with: bortengine profile --show {prof.path}")
    return prof


def _measure_fleet(args) -> int:
    """A profile per distinct CPU target of the cluster, saved in this machine's profile directory; their table."""
    from bortengine.profiling import default_profile_dir, fleet_table, profile_fleet

    given = [option for option, value in (("--out", args.out), ("--show", args.show), ("--validate", args.validate),
                                          ("--isa", args.isa)) if value not in (None, False)]
    if given:
        raise UsageError(f"{', '.join(given)} cannot go with --executor ray: each target's profile goes to "
                         f"{default_profile_dir()} under its signature, measured on the target's own kernel path")
    space = SearchSpace.resolve(args.space)
    where = args.ray_address or os.environ.get("RAY_ADDRESS") or "a local Ray instance"
    print(f"profiling {space.describe()} on each CPU target of {where}", flush=True)
    groups = profile_fleet(space, batch=args.batch, seq=args.seq, threads=args.threads, dtype=args.dtype,
                           quick=args.quick, clock=args.clock, fresh=args.fresh, address=args.ray_address,
                           report=lambda line: print(line, flush=True))
    print(fleet_table(groups))
    print("extract for one of them: bortengine extract --target SIGNATURE ...")
    return 0


def _validate(args, prof, space: SearchSpace, workload) -> int:
    """Predicted vs measured forwards of sampled architectures; exit 1 under --strict when a target is missed."""
    from bortengine.profiling import validate

    report = validate(prof, space, workload, n=args.archs, seed=args.seed, quick=args.quick,
                      progress=not args.no_progress)
    print(report.table())
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.report, report.to_dict())
        print(f"report written to {args.report}")
    if args.plot:
        print(f"plot written to {report.plot(args.plot)}")
    return 1 if args.strict and not all(report.passes().values()) else 0
