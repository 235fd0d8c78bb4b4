"""`bortengine extract`: the FPTAS over (size, latency, error) on a CPU profile, writing report.json, pareto.png and
winner.json (see docs/extraction.md). torch is imported only by the surrogates, in their worker processes."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from bortengine.cli.arguments import (add_data_arguments, add_executor_arguments, check_output, data_fields,
                                      non_negative_int, positive_float, positive_int)
from bortengine.engine import available_cpus
from bortengine.errors import UsageError
from bortengine.files import atomic_write_text
from bortengine.architecture import Architecture
from bortengine.profiling import (DTYPES, Profile, ProfileError, Workload, busy_core_note, load_profile,
                                  profile_for_search, profile_of_target, resolve_space)
from bortengine.progress import parse_duration
from bortengine.search import (REPRESENTATIVES, SIZES, SURROGATES, Extraction, SearchError, Surrogate, coverage,
                               extract, finalists_seconds, measure_finalists, resolve_surrogate)
from bortengine.search_space import SearchSpace

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("extract",)


def add_parsers(sub) -> None:
    p = sub.add_parser("extract", help="optimal sub-architecture extraction: the FPTAS over (size, latency, "
                                       "error) on a CPU profile")
    p.add_argument("--space", default="minilm", help="search space: bort, minilm, or a JSON/YAML file")
    p.add_argument("--max-point", default=None, metavar="D,A,H,I",
                   help="the source architecture (default: the space's largest)")
    p.add_argument("--profile", default=None, metavar="PATH",
                   help="CPU profile (bortengine profile --out PATH; default: this CPU's profile from the cache "
                        "directory when it covers the space, else one measured now in quick mode; a profile of "
                        "another CPU target, or from before exact targets like the shipped one, is not used)")
    p.add_argument("--target", default=None, metavar="SIGNATURE",
                   help="extract for another CPU target: its profile in the profile directory, filed under its "
                        "signature by `bortengine profile --executor ray` (its table lists them); the workload's "
                        "threads default to that CPU's, and the finalists are not timed on this machine")
    p.add_argument("--batch", type=int, default=1, help="workload: sequences per call (default 1)")
    p.add_argument("--seq", type=int, default=128, help="workload: tokens per sequence (default 128)")
    p.add_argument("--threads", type=positive_int, default=None, help="workload: threads (default: all CPUs)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="workload: the engine path the winner will be served on (the profile must cover it)")
    _add_search_options(p)
    _add_surrogate_options(p)
    p.add_argument("--cache", default=None, metavar="DIR", help="surrogate cache directory")
    p.add_argument("--time-budget", default=None,
                   help="wall time for the whole command (1800, 30m, 1.5h): the evaluations stop early enough to "
                        "leave time for timing the finalists (quick, or none, if the full timing would not fit) "
                        "and writing the report")
    p.add_argument("--measure", type=non_negative_int, default=3, help="finalists to time on the engine (0: none)")
    p.add_argument("--quick-measure", action="store_true", help="fewer repeats when timing the finalists")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="accept latencies extrapolated beyond the profile's measured shapes")
    p.add_argument("--out", required=True, metavar="DIR", help="writes report.json, pareto.png, winner.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_search_options(p) -> None:
    p.add_argument("--eps", type=float, default=0.1, help="ε in (0, 1): groups' cost ratio 1 + ε (default 0.1)")
    p.add_argument("--representative", choices=sorted(REPRESENTATIVES), default="source-heads",
                   help="which member of a group is evaluated: source-heads (default: the head count nearest the "
                        "maximum point's, then most parameters) or largest (most parameters, then fastest)")
    p.add_argument("--latency-limit", type=positive_float, default=None, metavar="MS",
                   help="search only the candidates predicted at most MS milliseconds per forward (a latency "
                        "constraint: the winner is one of them; the maximum point stays as the W-coefficient's "
                        "reference)")
    p.add_argument("--per-group", type=int, default=3, dest="per_group", metavar="K",
                   help="at most K surrogate evaluations per group (default 3): after the representatives, the "
                        "members an error model fitted to the measured errors predicts best in their group, unless "
                        "it rules out that they beat the group's best by the factor 1+ε; 1 = the plain FPTAS "
                        "(bound K x groups + 1)")
    p.add_argument("--exhaustive", action="store_true", help="evaluate every candidate (to check the FPTAS)")
    p.add_argument("--verify", action="store_true",
                   help="also run the exhaustive search (cached) and report the (1+ε)-coverage of its front")


def _add_surrogate_options(p) -> None:
    p.add_argument("--surrogate", default="distill", choices=sorted(SURROGATES), help="error surrogate")
    p.add_argument("--steps", type=int, default=None, help="surrogate training steps")
    p.add_argument("--surrogate-batch", type=int, default=None, dest="surrogate_batch",
                   help="surrogate batch size")
    p.add_argument("--max-length", type=int, default=None, help="surrogate sequence length (distill)")
    p.add_argument("--eval-sentences", type=int, default=None, help="surrogate evaluation sentences (distill)")
    p.add_argument("--distil-steps", type=int, default=None, dest="distil_steps",
                   help="distillation steps on the task's training texts before the fine-tuning steps "
                        "(distill-finetune; default 100)")
    p.add_argument("--teacher", default=None, help="teacher directory (default all-MiniLM-L6-v2)")
    p.add_argument("--seed", type=int, default=None, help="surrogate seed")
    add_data_arguments(p, builtin_help="the finetune surrogate's built-in task (default rt); or your data: --train")
    p.add_argument("--size", default="effective", choices=SIZES, help="size objective (default effective)")
    p.add_argument("--tau", type=float, default=None, help="W-coefficient error unit (default per surrogate)")
    p.add_argument("--workers", type=int, default=None,
                   help="surrogate worker processes (default: one per CPU for distill and finetune, 1 for analytic)")
    p.add_argument("--worker-nice", type=int, default=0, help="niceness of the worker processes (default 0)")
    add_executor_arguments(p)



_READS_TASK = ("finetune", "distill-finetune")    # the surrogates whose error is measured on a labelled task


def _surrogate_data(args) -> dict:
    """The finetune surrogate's task: a built-in one, or the user's files and columns, checked row by row now
    (before minutes of profiling). Data given to a surrogate that reads none is refused, not ignored."""
    fields = data_fields(args)
    task = fields.pop("task")
    if not fields["train"]:
        return {"task": task}
    if args.surrogate not in _READS_TASK:
        raise UsageError(f"--train goes with --surrogate {' or '.join(_READS_TASK)} (their error is fine-tuning on "
                         f"your data); the {args.surrogate} surrogate reads no labelled data")
    from bortengine.training import load_task

    data = {k: v for k, v in fields.items() if v is not None}
    load_task(**data)
    return {"data": data}


def run(args) -> int:
    started = time.monotonic()     # a --time-budget counts from here
    budget = _time_budget(args.time_budget)
    check_output(args.out, "--out", directory=True)
    target_profile = _target_profile(args)
    threads = args.threads or (target_profile.target.logical_cpus if target_profile else available_cpus())
    workload = Workload(args.batch, args.seq, threads, args.dtype)
    surrogate = resolve_surrogate(args.surrogate, steps=args.steps, batch_size=args.surrogate_batch,
                                  max_length=args.max_length, eval_sentences=args.eval_sentences,
                                  distil_steps=args.distil_steps, teacher=args.teacher, seed=args.seed,
                                  **_surrogate_data(args))
    # a space by name may be one a profile records (a file's, a pipeline run's): --profile's, else this CPU's
    space = resolve_space(args.space, args.profile or (target_profile.path if target_profile else None))
    prof = target_profile or _profile(args, space, workload)
    kw = dict(profile=prof, workload=workload, epsilon=args.eps, max_point=args.max_point, size=args.size,
              cache_dir=args.cache, workers=args.workers, tau=args.tau, time_budget=budget, started=started,
              reserve=_reserve(args, prof, workload, space, budget) if budget is not None else 0.0,
              allow_extrapolation=args.allow_extrapolation, worker_nice=args.worker_nice,
              progress=not args.no_progress, representative=args.representative, per_group=args.per_group,
              latency_limit_ms=args.latency_limit, executor=args.executor, ray_address=args.ray_address)
    limit = "" if args.latency_limit is None else f"; latency limit {args.latency_limit:g} ms predicted"
    print(f"extract: {space.describe()}\nworkload: {workload}; profile {prof.path} ({prof.target.isa})\n"
          f"surrogate: {surrogate.describe()}; ε = {args.eps}; {'exhaustive' if args.exhaustive else 'FPTAS'}"
          f"{limit}", flush=True)
    result = _search(space, surrogate, args.exhaustive, args.verify, kw)  # Ctrl-C: SearchInterrupted says how to resume
    _print_result(result)
    if args.measure and result.winner is not None:
        left = None if budget is None else budget - (time.monotonic() - started) - WRITE_SECONDS
        measurement = measure_finalists(result, args.measure, quick=args.quick_measure, progress=not args.no_progress,
                                        time_left=left)
        if measurement is None:
            print(f"finalists not timed: {max(0.0, left):.0f} s of the time budget left, too few to time them")
        else:
            if measurement["mode"] == "quick" and not args.quick_measure:
                print("finalists timed quickly: the full timing would not fit in the time budget")
            _print_measurement(measurement)
    if result.verification:
        _print_verification(result.verification)
    _write(result, Path(args.out), args.teacher)
    _check_failures(result, Path(args.out))
    return 0


def _check_failures(result: Extraction, out: Path) -> None:
    """An extraction without a winner, or whose evaluations mostly failed (a Ray cluster that went down mid-run
    failed 98 of 106 and the command exited 0, its report "complete"), is an error: its report is written, and the
    same command runs the failed evaluations again (failures are not cached; the finished ones are)."""
    failed = len(result.failures)
    if result.winner is None and not result.complete and not failed:
        raise SearchError(f"the time budget stopped the search before it had a winner ({result.evaluations} of "
                          f"{len(result.candidates)} candidates evaluated; {out / 'report.json'} has what was done): "
                          f"run the same command with a longer --time-budget, which reuses the evaluations that "
                          f"finished")
    if not failed or (result.winner is not None and 2 * failed <= result.evaluations):
        return
    why = "so there is no winner" if result.winner is None else "so the winner is of the few that did not"
    raise SearchError(f"{failed} of the {result.evaluations} surrogate evaluations failed ({why}; the first: "
                      f"{result.failures[0]['message']}); {out / 'report.json'} lists them. Failures are not cached: "
                      f"once their cause is fixed (a cluster back up, a worker's memory), run the same command again, "
                      f"which reuses the evaluations that finished")


def _target_profile(args) -> Optional[Profile]:
    """--target's profile (None without it). The finalists are timed on this machine's engine: not for another
    CPU target's profile (--measure 0, said in the output)."""
    if args.target is None:
        return None
    if args.profile is not None:
        raise SearchError("give --profile PATH or --target SIGNATURE, not both")
    prof = profile_of_target(args.target)
    match = prof.match() if args.measure else None
    if match is not None and not match.same_cpu:
        if match.expected.apart_by_load_alone(match.found):
            note = busy_core_note(match.expected, match.found, f"the profile of {args.target}",
                                  then="the finalists are timed here: on a quiet machine their times are the target's")
            print(f"extract: {note}", flush=True)
        else:
            print(f"extract: the profile of {args.target} describes another CPU than this one: the finalists are "
                  f"not timed (this machine's engine would time them on this CPU)", flush=True)
            args.measure = 0
    return prof


def _profile(args, space: SearchSpace, workload: Workload) -> Profile:
    """--profile as given (a warning says when it is another CPU target's or cannot be checked), else this CPU's
    own profile covering the space, measured now in quick mode when there is none (said in the output)."""
    if args.profile is not None:
        return load_profile(args.profile, check_target=True)
    print(f"extract: looking for this CPU's profile of the {space.name} space at {workload}", flush=True)
    choice = profile_for_search(space, workload, quick=True, progress=not args.no_progress)
    print(f"profile: {choice.note}", flush=True)
    return choice.profile


# Writing report.json, pareto.png and winner.json: about 1 s measured here (most of it importing matplotlib), kept
# twice over out of a time budget.
WRITE_SECONDS = 2.0


def _reserve(args, prof: Profile, workload: Workload, space: SearchSpace, budget: float) -> float:
    """Seconds a time budget keeps from the search for what follows it: writing the report, and timing the
    finalists (each at most as slow as the maximum point) in full, else quickly, if that takes at most a quarter
    of the budget (the search is the command's work; the timing a check of it, done after it if time is left)."""
    if not args.measure:
        return WRITE_SECONDS
    try:
        largest = Architecture.parse(args.max_point) if args.max_point else space.largest()
        finalists = [largest] * max(2, args.measure)
        timings = [finalists_seconds(prof, workload, finalists, quick) for quick in (args.quick_measure, True)]
    except (ProfileError, ValueError):   # an uncovered workload or a bad maximum point: extract() says so itself
        return WRITE_SECONDS
    return WRITE_SECONDS + next((t for t in timings if t <= budget / 4), 0.0)


def _time_budget(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise SearchError(f"--time-budget takes 1800, 30m or 1.5h, got {text!r}") from None
    if seconds <= 0:
        raise SearchError(f"--time-budget {text} leaves no time to search: give more than 0 (1800, 30m, 1.5h), or "
                          f"leave it out for no limit")
    return seconds


def _search(space: SearchSpace, surrogate: Surrogate, exhaustive: bool, verify: bool, kw: dict[str, Any]
            ) -> Extraction:
    """The search; with verify (and not exhaustive) also the exhaustive one, whose coverage goes in the result."""
    result = extract(space, surrogate, exhaustive=exhaustive, **kw)
    if verify and not exhaustive:
        reference = extract(space, surrogate, exhaustive=True, **kw)
        result.verification = coverage(reference, result)
        result.verification["exhaustive_evaluations"] = reference.evaluations
        result.verification["exhaustive_winner"] = list(reference.winner.dims) if reference.winner else None
    return result


def _print_result(result: Extraction) -> None:
    print(f"{len(result.candidates)} candidates, {result.groups} groups (bound {result.bound['groups']} = "
          f"{result.bound['n_p']} x {result.bound['n_l']}), {result.evaluations} surrogate evaluations "
          f"(bound {result.bound['evaluations']} = min(space, K·n_p·n_l + 1 = {result.bound['polynomial']}); "
          f"{result.fresh_evaluations} run now, {result.evaluations - result.fresh_evaluations} from the cache; "
          f"{len(result.failures)} failed or NaN), "
          f"{len(result.pareto)} in the ε-Pareto set, {result.seconds:.0f} s"
          + ("" if result.complete else "; INCOMPLETE: the time budget stopped the evaluations"))
    nodes = result.nodes()
    per_node = ", ".join(f"{n[:12]} {k}" for n, k in nodes.items())    # (a Ray node id's first 12 digits)
    print(f"evaluations ran on {result.executor}" + (f"; per node: {per_node}" if set(nodes) - {"local"} else ""))
    ref = result.refinement or {}
    if ref.get("per_group", 1) > 1:
        print(f"refinement: {ref['evaluations']} of those evaluations in {ref['rounds']} round(s), chosen by the error "
              f"model; a better member found in {ref['improved_groups']} group(s), "
              f"{ref['improved_beyond_epsilon']} of them better by more than a factor 1 + ε")
    for f in result.failures:
        print(f"  {f['status']}: ⟨{', '.join(map(str, f['arch']))}⟩ group {f['group']}: {f['message']}")


def _print_measurement(measurement: dict[str, Any]) -> None:
    for row in measurement["rows"]:
        print(f"  measured ⟨{', '.join(map(str, row['arch']))}⟩: predicted {row['predicted_ms']:.3f} ms, "
              f"measured {row['measured_ms']:.3f} ms ({100 * row['relative_error']:+.1f}%)"
              + (" [winner]" if row["winner"] else ""))


def _print_verification(v: dict[str, Any]) -> None:
    print(f"verification against the exhaustive front ({v['reference_front']} points, "
          f"{v['exhaustive_evaluations']} evaluations): {v['covered']} (1+ε)-covered, "
          f"{len(v['uncovered'])} not; worst factor {v['worst_factor']:.4f}; {len(v['assumption_violations'])} "
          f"A_ε violations; theorem {'holds' if v['theorem_holds'] else 'VIOLATED'}")


def _write(result: Extraction, out: Path, teacher: Optional[str]) -> None:
    """report.json, pareto.png and (when there is a winner) winner.json in out; the winner and how to train it
    (from the search's teacher)."""
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "report.json")
    result.plot(out / "pareto.png")
    if result.winner is not None:
        atomic_write_text(out / "winner.json", json.dumps(result.winner.arch.to_dict(), indent=1) + "\n")
        w = result.summary()["winner"]
        print(f"winner {result.winner.arch}: {w['params']:,} parameters, {w['latency_ms']:.3f} ms predicted, "
              f"error {w['error']:.4f}, W = {w['w']:.3f} (maximum point {result.max_point.arch}: "
              f"{result.max_point.latency_ms:.3f} ms, error {result.max_point.error:.4f})")
        print(f"train it: {w['pretrain']}" + (f" --teacher {teacher}" if teacher else ""))
    elif (out / "winner.json").is_file():
        # an earlier run's winner would stand beside this run's report, which has none (pretrain reads winner.json)
        (out / "winner.json").unlink()
        print(f"this run has no winner: removed the winner.json an earlier run wrote in {out}")
    print(f"wrote {out / 'report.json'}, {out / 'pareto.png'}"
          + (f", {out / 'winner.json'}" if result.winner else ""))
