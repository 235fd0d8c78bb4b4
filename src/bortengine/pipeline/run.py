"""run_pipeline: the stages in order under one wall-clock budget, each skipped when a previous run finished it
(OUT/pipeline.json records each finished stage, its result and its time), then the report and the latency suite.

A second run of the same command continues a killed one: the finished stages are read back, the stage that was
running resumes from its own checkpoint, and the budget left is what the finished stages did not use. A run
directory of other options is refused (OUT/pipeline.toml holds the options of the run it belongs to).
"""
from __future__ import annotations

import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

from bortengine.architecture import Architecture
from bortengine.engine import transformer_directory
from bortengine.errors import TruncationWarning
from bortengine.files import atomic_write_json, read_json, used_by_this_process
from bortengine.pipeline.config import (BUDGET_SHARES, CONFIG_FILE, STAGES, PipelineConfig, PipelineError,
                                        read_config_file, write_config_file)
from bortengine.pipeline.evaluation import evaluate_stage
from bortengine.pipeline.report import report_table, write_report
from bortengine.pipeline.stages import (RunContext, distil_stage, extract_stage, finetune_stage, profile_stage,
                                        selection_part, teacher_architecture, teacher_fingerprint, teacher_stage)
from bortengine.progress import clock
from bortengine.search import SCRIPT_GUARD, in_worker_bootstrap, unguarded_script_call
from bortengine.training import NothingTrainedError, SplitOverlapWarning

__all__ = ["run_pipeline", "STATE_FILE", "STAGE_FUNCTIONS"]

STATE_FILE = "pipeline.json"
STAGE_FUNCTIONS: dict[str, Callable[[RunContext, float], dict[str, Any]]] = {
    "profile": profile_stage, "teacher": teacher_stage, "extract": extract_stage, "distil": distil_stage,
    "finetune": finetune_stage, "evaluate": evaluate_stage}


def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Run (or continue) the pipeline of config in config.out; returns the summary written to report.json.

    A script that calls it must do so under `if __name__ == "__main__":`: the extraction's worker processes are
    spawned, and each imports the main script again (refused there, before the run directory is touched)."""
    if in_worker_bootstrap():
        raise PipelineError(f"run_pipeline() was called while a worker process was starting: {SCRIPT_GUARD}")
    config.check()
    unguarded = unguarded_script_call() if config.arch is None else None   # (--arch: no extraction, no workers)
    if unguarded:
        raise PipelineError(f"run_pipeline() is called at {unguarded}, outside `if __name__ == \"__main__\":`; "
                            f"{SCRIPT_GUARD}")
    out = Path(config.out)
    ctx = RunContext(config, {})
    task = ctx.task                       # the data checked row by row before the run directory is touched
    teacher = teacher_architecture(ctx.teacher_source)   # and the teacher: one the pipeline can start from
    if config.arch is not None:                          # with the student asked for inside it
        from bortengine.training import too_large_to_slice

        too_large = too_large_to_slice(Architecture.parse(config.arch), teacher)
        if too_large:
            raise PipelineError(f"--arch {config.arch}: {too_large}")
    if config.workload is not None and config.shape()[1] > teacher.max_positions:   # the profile stage's refusal
        raise PipelineError(f"--workload {config.workload}: {config.shape()[1]} tokens per text, but the teacher "
                            f"reads at most {teacher.max_positions} (max_position_embeddings): give a --workload of "
                            f"at most {teacher.max_positions} tokens")
    if ctx.uses_agora():
        selection_part(ctx)     # Agora's split of dev, which a rare class fails: now, not after 80% of the budget
    state = read_json(out / STATE_FILE, PipelineError, missing_ok=True) or {"stages": {}}
    ctx.config = config = _claim(out, config, finished=set(STAGES) <= set(state["stages"]))
    with used_by_this_process(out, PipelineError, "pipeline run"):   # two runs in one --out overwrote each other
        state = read_json(out / STATE_FILE, PipelineError, missing_ok=True) or {"stages": {}}   # as the last left it
        task.write_splits(out)
        _check_teacher(ctx, state, out)
        ctx.results.update({name: entry["result"] for name, entry in state["stages"].items()})
        _quiet_transformers()
        _say(task.describe() + (" — fine-tuning with Agora (small training set)" if ctx.uses_agora() else ""))
        spent_before = sum(entry["seconds"] for entry in state["stages"].values())
        _say(_plan(config, spent_before, state["stages"]))
        with warnings.catch_warnings():
            # the stages read texts at the teacher's (the task's) length on purpose: no warning per engine they load
            warnings.simplefilter("ignore", TruncationWarning)
            # nor again what the data's checks said when the run read it above (each training stage reads it anew)
            warnings.simplefilter("ignore", SplitOverlapWarning)
            spent = spent_before + _run_stages(ctx, state, out, spent_before)
        summary = _summary(ctx, state, spent)
        summary["latency_suite"] = _latency_suite(ctx)
        write_report(out, summary)
        _finish(ctx, summary)
        return summary


def _check_teacher(ctx: RunContext, state: dict, out: Path) -> None:
    """A run with work left goes on with the teacher it began with (its files' content, teacher_fingerprint,
    recorded in the state file before the first stage): one changed since would be mixed with what the finished
    stages made of the old (OUT/teacher, the students sliced from it, their soft labels). A run from before the
    record takes the teacher as it is now."""
    if set(STAGES) <= set(state["stages"]):
        return
    now = teacher_fingerprint(ctx.teacher_source)
    before = state.get("teacher_fingerprint")
    if before not in (None, now):
        raise PipelineError(f"{out} is a run of another teacher: the files of {ctx.teacher_source} (their content) "
                            f"changed since the run began (teacher {before}, now {now}); restore the teacher the run "
                            f"began with to continue it, or give a new --out")
    if before is None:
        state["teacher_fingerprint"] = now
        atomic_write_json(out / STATE_FILE, state, indent=1)


def _run_stages(ctx: RunContext, state: dict, out: Path, spent_before: float) -> float:
    """The stages not finished in an earlier run, each on its share of what is left of the budget, each written to
    the state file as it ends (a run interrupted later goes on from the next); returns the seconds they took."""
    config = ctx.config
    started = time.monotonic()
    for index, name in enumerate(STAGES, 1):
        if name in state["stages"]:
            _say(f"[{index}/{len(STAGES)}] {name}: done in an earlier run ({state['stages'][name]['seconds']:.0f} s)")
            continue
        left = config.budget - spent_before - (time.monotonic() - started)
        shares = _shares(config)
        still = sum(shares.get(s, 0.0) for s in STAGES[index - 1:])
        seconds = max(1.0, left) * shares.get(name, 0.0) / still
        _say(f"[{index}/{len(STAGES)}] {name}: budget {clock(seconds)} ({clock(max(0.0, left))} of the run left)")
        stage_start = time.monotonic()
        try:
            result = STAGE_FUNCTIONS[name](ctx, seconds)
        except BaseException as e:
            # Ctrl-C, a kill, an error: the time the stage ran is reported (its work goes on from its checkpoint in
            # the next run, which the budget gives its share again)
            interrupted = state.setdefault("interrupted_s", {})
            interrupted[name] = interrupted.get(name, 0.0) + time.monotonic() - stage_start
            atomic_write_json(out / STATE_FILE, state, indent=1)
            if isinstance(e, NothingTrainedError):
                raise _too_short(config, name, seconds, e) from None
            raise
        took = time.monotonic() - stage_start
        ctx.results[name] = result
        state["stages"][name] = {"result": result, "seconds": took, "budget_s": seconds}
        atomic_write_json(out / STATE_FILE, state, indent=1)
        if result.get("note"):
            _say(f"[{index}/{len(STAGES)}] {name}: {result['note']}")
        _say(f"[{index}/{len(STAGES)}] {name}: finished in {clock(took)}")
    return time.monotonic() - started


def _too_short(config: PipelineConfig, stage: str, seconds: float, e: "NothingTrainedError") -> PipelineError:
    """A training stage whose share of the budget went to loading and preparing before its first step: the budget
    that would leave it as long again to train (the shares scale with the budget). The same command fails the same
    way; the larger --budget continues the run."""
    needed = config.budget * 2 * e.spent_s / max(seconds, 1.0)
    return PipelineError(
        f"the {stage} stage's share of the budget ({clock(seconds)}) went to loading and preparing its data "
        f"({clock(e.spent_s)}) before its first training step, so nothing was trained. Run the same command with a "
        f"larger --budget (about {math.ceil(needed / 60)}m or more): the finished stages are kept")


def _claim(out: Path, config: PipelineConfig, finished: bool) -> PipelineConfig:
    """out is this run's: new, or holding the options of the same run (then it is continued); returns the options
    the run goes on with. A continued run takes the new budget, threads, ... for what it has left to do; a finished
    one has nothing left, so its own options stand and its report is written again as it was (with a new --budget
    it read as an overrun of a budget it never had)."""
    path = out / CONFIG_FILE
    if path.is_file():
        earlier = PipelineConfig.from_dict(read_config_file(path), where=str(path))
        differ = earlier.differences(config)
        if differ:
            raise PipelineError(f"{out} holds a pipeline run with other options (differs in {differ}); rerun with "
                                f"the same options (--config {path}) to continue it, or give another --out")
        if finished:
            ignored = [k for k in ("budget", "threads") if getattr(earlier, k) != getattr(config, k)]
            if ignored:
                _say(f"the run in {out} is finished: its own {' and '.join(ignored)} "
                     f"{'stands' if len(ignored) == 1 else 'stand'} (the options given "
                     f"change nothing now); give another --out for a new run")
            return replace(earlier, out=config.out, progress=config.progress)   # (a run directory moved: here)
    elif out.exists() and any(out.iterdir()):
        raise PipelineError(f"{out} exists and is not a pipeline run directory; give a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    write_config_file(config, path)
    return config


def _shares(config: PipelineConfig) -> dict[str, float]:
    """The stages' shares of the budget: with --arch the extraction takes none (it only records the student)."""
    return {name: share for name, share in BUDGET_SHARES.items() if not (name == "extract" and config.arch)}


def _plan(config: PipelineConfig, spent: float, done: Iterable[str] = ()) -> str:
    """The split of the budget left over the stages still to run (a resumed run re-plans from the time left)."""
    left = config.budget - spent
    shares = {name: share for name, share in _shares(config).items() if name not in set(done)}
    split = ", ".join(f"{name} {clock(left * share / sum(shares.values()))}" for name, share in shares.items())
    return (f"budget {clock(config.budget)}" + (f" ({clock(spent)} used by an earlier run)" if spent else "") +
            (f"; planned split: {split} (a stage that ends early leaves its time to the next)" if shares else
             "; every stage is done"))


def _summary(ctx: RunContext, state: dict[str, Any], seconds: float) -> dict[str, Any]:
    task = ctx.task
    return {"config": ctx.config.to_dict(), "task": {"name": task.name, "labels": task.labels,
                                                      "description": task.describe(), "pairs": task.pairs},
            "threads": ctx.threads, "target": ctx.results.get("profile", {}).get("target"),
            "workload": str(ctx.workload()),
            "model": str(ctx.out / "model"), "teacher": str(ctx.teacher_dir), "stages": state["stages"],
            "seconds": seconds, "within_budget": seconds <= ctx.config.budget * 1.15,
            "interrupted_seconds": state.get("interrupted_s", {})}


def _finish(ctx: RunContext, summary: dict[str, Any]) -> None:
    evaluation = summary["stages"]["evaluate"]["result"]
    print("\n" + report_table(evaluation) + "\n", flush=True)
    model = ctx.out / "model"
    print(f"took {clock(summary['seconds'])} of a {clock(ctx.config.budget)} budget; report: {ctx.out / 'report.md'}")
    print(f"the student is in {model} (the fine-tuned teacher in {ctx.teacher_dir})")
    # the interpreter that ran the pipeline (a `python` or `pytest` on PATH may be another, without bortengine)
    python = shlex.quote(sys.executable)
    texts = "['your text'], text_pairs=['its pair']" if ctx.task.pairs else "['your text']"
    print(f"use it:  {python} -c \"import bortengine; print(bortengine.load('{model}', dtype='{ctx.config.dtype}')"
          f".classify({texts}))\"")
    print(f"serve it:  {python} -m bortengine serve {model}"
          + (f" --dtype {ctx.config.dtype}" if ctx.config.dtype != "float32" else ""))
    if summary["latency_suite"]["written"]:
        print(f"check its latency on this CPU:  {python} -m pytest {ctx.out / 'test_latency.py'}", flush=True)


def _latency_suite(ctx: RunContext) -> dict[str, Any]:
    """OUT/test_latency.py: the student's latency at the workload checked against this CPU's profile, for the
    service's CI (profiling.write_latency_suite)."""
    from bortengine.profiling import DEFAULT_TOLERANCE, ProfileError, write_latency_suite

    path = ctx.out / "test_latency.py"
    try:
        _profile_mixed_layers(ctx)
        write_latency_suite(path, ctx.out / "model", ctx.out / "profile.json", ctx.workload(), DEFAULT_TOLERANCE)
    except ProfileError as e:      # a student given with --arch outside the profiled space
        _say(f"no latency suite: {e}")
        return {"written": False, "reason": str(e)}
    return {"written": True, "path": str(path), "tolerance": DEFAULT_TOLERANCE}


def _profile_mixed_layers(ctx: RunContext) -> None:
    """An int8 run whose student takes layers out of int8 (its calibration: float32 or bf16) is held to a
    prediction that prices those layers from the float32 (bf16) workload of the same shape (predict_latency):
    OUT/profile.json gets it, from this CPU's profile or measured now for the student's architecture alone
    (quick)."""
    from dataclasses import replace

    from bortengine.engine import ModelConfig
    from bortengine.profiling import Profile, profile_for_search
    from bortengine.search_space import SearchSpace

    workload = ctx.workload()
    config = ModelConfig.from_file(transformer_directory(ctx.out / "model"))
    if workload.dtype != "int8":
        return
    path = ctx.out / "profile.json"
    mine = Profile.load(path)
    student = SearchSpace("student", (config.num_hidden_layers,), (config.num_attention_heads,),
                          (config.hidden_size,), (config.intermediate_size,), vocab_size=config.vocab_size)
    for dtype, layers in (("float32", config.int8_float32_layers), ("bf16", config.int8_bf16_layers)):
        other = replace(workload, dtype=dtype)
        if not layers or mine.covers(other):
            continue
        _say(f"the student runs layers {list(layers)} in {dtype} when it runs int8 (its calibration): profiling "
             f"{other} for its latency suite")
        choice = profile_for_search(student, other, quick=True, progress=ctx.config.progress)
        mine.workloads[other.key] = choice.profile.for_workload(other)
        mine.save(path)


def _say(message: str) -> None:
    print(f"pipeline: {message}", file=sys.stderr, flush=True)


def _quiet_transformers() -> None:
    """transformers' own bars (loading and writing weights) would interleave with the stages' progress; the
    environment variable reaches the extraction's worker processes too."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging

        logging.disable_progress_bar()
    except ImportError:
        pass
