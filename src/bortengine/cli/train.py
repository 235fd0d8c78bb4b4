"""`bortengine pretrain` (distil a student architecture from a teacher) and `bortengine finetune` (a classifier on
the user's labelled data, --train, or on Rotten Tomatoes or IMDB; --surrogate-steps for the search's short-budget
loss; --agora for the Agora loop, whose fine-tunes of a round may run on a Ray cluster: --executor ray).

The parsers import no torch; each command imports it when it runs, so `bortengine info` and `demo` keep working
without the `train` extra. The model directories and output directory a command names are checked before the
minutes of loading; Ctrl-C ends with a line saying how to resume (exit code 130).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from bortengine.cli.arguments import (add_data_arguments, add_executor_arguments, architecture, check_model_directory,
                                      check_output, data_fields, duration, positive_float, positive_int)
from bortengine.errors import UsageError
from bortengine.training import CORPUS_MODES

__all__ = ["COMMANDS", "add_parsers", "run", "prepare_torch", "print_result"]

COMMANDS = ("pretrain", "finetune")


def add_parsers(sub) -> None:
    _add_pretrain_parser(sub)
    _add_agora_arguments(_add_finetune_parser(sub))


def run(args) -> int:
    args.started = time.monotonic()     # a wall-clock --time-budget counts from here, importing torch included
    prepare_torch()
    if args.command == "pretrain":
        return _pretrain(args)
    if args.agora:
        return _finetune_agora(args)
    return _finetune(args)


def prepare_torch() -> None:
    """Idle OpenMP threads sleep instead of spinning: on a small machine shared with other jobs, a spinning thread
    waiting for a descheduled peer burns CPU time (measured here: 5 CPU-s per distillation step spinning vs 1.3
    passive, same wall time). Must be set before torch starts its thread pool, so before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def print_result(result: dict) -> None:
    print(json.dumps(result, indent=2, ensure_ascii=False, default=str))


# --- parsers --------------------------------------------------------------------------------------------------

def _add_pretrain_parser(sub) -> None:
    pre = sub.add_parser("pretrain", help="distil a student architecture from a teacher on Wikipedia + IMDB text "
                                          "and/or your own (--corpus)")
    pre.add_argument("--arch", required=True, type=architecture, metavar="D,A,H,I",
                     help="student ⟨D, A, H, I⟩, e.g. 4,12,384,1536")
    pre.add_argument("--out", required=True, help="run directory (checkpoint, log, student/, result.json)")
    pre.add_argument("--teacher", default=None, help="teacher model directory (default: all-MiniLM-L6-v2)")
    pre.add_argument("--init", choices=("slice", "random"), default="slice", help="initialisation (default slice)")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--batch-size", type=positive_int, default=32)
    pre.add_argument("--max-length", type=positive_int, default=128, help="tokens per segment (default 128)")
    pre.add_argument("--lr", type=positive_float, default=2e-4)
    pre.add_argument("--warmup-steps", type=int, default=50)
    pre.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    pre.add_argument("--time-budget", type=duration, default=None, metavar="DURATION",
                     help="e.g. 30m, on --clock: CPU time of the training steps, or the whole command's wall time "
                          "(loading to the student written and evaluated)")
    pre.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                     help="budget clock: process CPU time over all threads of the training steps (default), or "
                          "the whole command's elapsed time")
    pre.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all CPUs)")
    pre.add_argument("--checkpoint-every", type=duration, default=120.0, metavar="DURATION")
    pre.add_argument("--max-documents", type=positive_int, default=None, help="use only the first N documents")
    pre.add_argument("--corpus", nargs="+", default=None, metavar="PATH",
                     help="your own text: .txt files (documents separated by blank lines), folders of them "
                          "(recursive), or .jsonl, .csv, .tsv, .parquet files with a text column")
    pre.add_argument("--corpus-mode", choices=CORPUS_MODES, default=None,
                     help="mix (default): your text beside the built-in Wikipedia + IMDB corpus; replace: yours alone")
    pre.add_argument("--corpus-text-column", default=None, metavar="NAME",
                     help="the column holding the text in --corpus tables (default 'text')")
    pre.add_argument("--no-progress", action="store_true")
    pre.add_argument("--no-eval", action="store_true", help="skip the held-out similarity evaluation")


def _add_finetune_parser(sub) -> argparse.ArgumentParser:
    ft = sub.add_parser("finetune", help="fine-tune a classifier on your labelled data (--train) or a built-in task")
    ft.add_argument("--model", default=None, help="model directory (default: all-MiniLM-L6-v2)")
    add_data_arguments(ft)
    ft.add_argument("--out", required=True, help="run directory (checkpoint, log, model/, result.json)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--epochs", type=float, default=3.0)
    ft.add_argument("--batch-size", type=positive_int, default=32)
    ft.add_argument("--lr", type=positive_float, default=5e-5)
    ft.add_argument("--max-length", type=positive_int, default=None,
                    help="tokens per text (default: 64 rt, 256 imdb; for --train the smallest of 32/64/128/256/512 "
                         "that holds 95%% of the training texts)")
    ft.add_argument("--max-steps", type=int, default=None)
    ft.add_argument("--time-budget", type=duration, default=None, metavar="DURATION",
                    help="e.g. 20m, on --clock: the whole command's wall time (loading to the model written and "
                         "scored on test), or the CPU time of the training steps")
    ft.add_argument("--clock", choices=("cpu", "wall"), default="wall",
                    help="budget clock: the whole command's elapsed time (default) or process CPU time")
    ft.add_argument("--threads", type=positive_int, default=None)
    ft.add_argument("--train-limit", type=positive_int, default=None,
                    help="use N training examples: a stratified sample drawn with --seed (the scarce-data "
                         "setting; the built-in splits are sorted by label, so their first N are one class)")
    ft.add_argument("--teacher", default=None, metavar="DIR",
                    help="a fine-tuned classifier to distil from while fine-tuning (soft labels, T=2, weight 0.5)")
    ft.add_argument("--distill-weight", type=float, default=0.5)
    ft.add_argument("--surrogate-steps", type=int, default=None, metavar="N",
                    help="short-budget mode: train N steps from the model, print the dev loss, write nothing")
    ft.add_argument("--no-progress", action="store_true")
    return ft


def _add_agora_arguments(ft: argparse.ArgumentParser) -> None:
    ag = ft.add_argument_group("Agora (--agora; see docs/agora.md)")
    ag.add_argument("--agora", action="store_true",
                    help="run the Agora loop: Θ search per round, new points near the dev mistakes, labelled by "
                         "--labeller, appended to the training set (the test split is scored after the loop)")
    ag.add_argument("--labeller", default=None, help="classifier directory bortengine.load reads (the labeller)")
    ag.add_argument("--student-arch", type=_student_architecture, default="4,8,256,512", metavar="D,A,H,I",
                    help="cut this student from --model (default all-MiniLM-L6-v2) by importance; 'none': --model "
                         "is the student (default 4,8,256,512)")
    ag.add_argument("--recipe", choices=("scarce", "paper"), default="scarce",
                    help="defaults of the options marked [recipe]: 'scarce' (default; measured best on 500 "
                         "examples: Θ lr 3e-4 and 6e-4 x 6 epochs, 128 points per mistake, 40%% of words "
                         "replaced, soft labels on the generated points only, half of dev kept for selection) or "
                         "'paper' (Agora as published: 4 per mistake, 25%%, hard labels, all of dev); see "
                         "docs/agora.md")
    ag.add_argument("--settings", type=_theta, default=None, metavar="THETA",
                    help="[recipe] Θ: 'lr=2e-4,epochs=8;lr=4e-4,epochs=4', a JSON list, or a JSON file")
    ag.add_argument("--rounds", type=int, default=None, help="round budget (default: until Θ is empty)")
    ag.add_argument("--per-mistake", type=int, default=None, help="[recipe] new points per dev mistake")
    ag.add_argument("--max-new-per-round", type=int, default=None)
    ag.add_argument("--transformation", choices=("neighbours", "mlm"), default="neighbours")
    ag.add_argument("--replace-fraction", type=float, default=None, help="[recipe] fraction of words replaced")
    ag.add_argument("--neighbours", type=int, default=8, help="k nearest neighbours / MLM predictions (8)")
    ag.add_argument("--mlm-model", default=None, help="BertForMaskedLM directory for --transformation mlm")
    ag.add_argument("--agora-distill", type=float, default=None, metavar="W",
                    help="[recipe] also distil the labeller's soft labels (T=2) with weight W in [0, 1], in every "
                         "round (round 1 included when they apply to all points); 0: hard labels only")
    ag.add_argument("--agora-distill-on", choices=("all", "generated"), default=None,
                    help="[recipe] with --agora-distill: distil on every training point (all) or only on the "
                         "generated ones, the originals keeping their gold labels alone (round 1 = plain fine-tuning)")
    ag.add_argument("--min-confidence", type=float, default=None, metavar="P",
                    help="keep a generated point only if the labeller's largest class probability is >= P "
                         "(default: keep all)")
    ag.add_argument("--select-fraction", type=float, default=None, metavar="F",
                    help="[recipe] keep a stratified fraction F of dev apart to rank Θ and pick each round's best "
                         "student; the mistakes that seed generation come from the rest (0: all of dev does both)")
    add_executor_arguments(ag, what="where the fine-tunes of a round run: in this process, one after another "
                                    "(local, default), or ray: in parallel on a Ray cluster's nodes, each with "
                                    "--threads CPUs (default: the smallest node's)")


def _student_architecture(text: str) -> Optional[str]:
    """None for 'none' (--model is the student), else the D,A,H,I text as given, once checked: the text is what
    an Agora run's state remembers, so a resumed run must pass it on unchanged."""
    if text.lower() == "none":
        return None
    architecture(text)
    return text


def _theta(text: str) -> list[dict]:
    """Θ, the hyper-parameter settings of --settings (training.agora.parse_settings)."""
    from bortengine.training import parse_settings

    try:
        return parse_settings(text)
    except ValueError as e:  # a malformed number or JSON inside the text or file, as parse_settings reads it
        raise argparse.ArgumentTypeError(f"Θ is 'lr=2e-4,epochs=8;lr=4e-4,epochs=4', a JSON list or a JSON file: "
                                         f"{e}") from None


# --- commands -------------------------------------------------------------------------------------------------

@contextmanager
def _resumable(how: str) -> Iterator[None]:
    """Ctrl-C stops the run with a line saying how to resume it (the error convention in bortengine.cli)."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted: {how}") from None


def _pretrain(args) -> int:
    from bortengine.training import DistillConfig, pretrain

    if args.max_steps is None and args.time_budget is None:
        raise UsageError("give --max-steps and/or --time-budget (when to stop)")
    for option in ("corpus_mode", "corpus_text_column"):
        if getattr(args, option) is not None and args.corpus is None:
            raise UsageError(f"--{option.replace('_', '-')} goes with --corpus PATH [PATH ...] (your own text)")
    check_model_directory(args.teacher, "--teacher")
    check_output(args.out, "--out", directory=True)
    config = DistillConfig(
        student=args.arch, out_dir=args.out, teacher=args.teacher, init=args.init, seed=args.seed,
        batch_size=args.batch_size, max_length=args.max_length, lr=args.lr, warmup_steps=args.warmup_steps,
        max_steps=args.max_steps, time_budget=args.time_budget, clock=args.clock,
        checkpoint_every=args.checkpoint_every, threads=args.threads, max_documents=args.max_documents,
        corpus=args.corpus, corpus_mode=args.corpus_mode or "mix", corpus_text_column=args.corpus_text_column or "text")
    with _resumable(f"run the same command again to resume from the last checkpoint in {args.out}"):
        result = pretrain(config, progress=not args.no_progress, evaluate=not args.no_eval, started=args.started)
    print_result(result)
    return 0


def _finetune(args) -> int:
    from bortengine.training import FinetuneConfig, finetune, finetune_surrogate_loss

    if args.executor or args.ray_address:
        raise UsageError("--executor and --ray-address go with --agora (the settings of an Agora round run in "
                         "parallel); plain fine-tuning is one run on this machine")
    check_model_directory(args.model, "--model")
    check_model_directory(args.teacher, "--teacher")
    check_output(args.out, "--out", directory=True)
    config = FinetuneConfig(
        model=args.model, **data_fields(args), out_dir=args.out, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, max_steps=args.max_steps,
        time_budget=args.time_budget, clock=args.clock, threads=args.threads, train_sample=args.train_limit,
        teacher=args.teacher, distill_weight=args.distill_weight)
    if args.surrogate_steps is not None:
        loss = finetune_surrogate_loss(config, steps=args.surrogate_steps)
        print(json.dumps({"task": config.data_spec().name, "steps": args.surrogate_steps, "dev_loss": loss}))
        return 0
    with _resumable(f"run the same command again to resume from the last checkpoint in {args.out}"):
        _, metrics = finetune(config, progress=not args.no_progress, started=args.started)
    print_result(metrics)
    return 0


def _finetune_agora(args) -> int:
    from bortengine.training import DataSpec, finetune_agora

    if args.labeller is None:
        raise UsageError("--agora needs --labeller DIR (a classifier bortengine.load reads, e.g. an exported "
                         "fine-tuned teacher)")
    for option in ("labeller", "model", "mlm_model"):
        check_model_directory(getattr(args, option), "--" + option.replace("_", "-"))
    check_output(args.out, "--out", directory=True)
    if args.time_budget is not None and args.clock != "wall":
        raise UsageError("--agora keeps --time-budget in wall time (no round starts that would end past it): leave "
                         "out --clock cpu")
    fields = data_fields(args)
    task = DataSpec.of(fields.pop("task"), **fields, seed=args.seed) if fields["train"] else fields["task"]
    from bortengine.search import settings_runner

    with settings_runner(args.executor, args.ray_address, args.threads) as runner, \
            _resumable(f"run the same command again (with either executor) to resume after the last finished round "
                       f"in {args.out}"):
        summary = finetune_agora(
            labeller=args.labeller, out_dir=args.out, model=args.model, arch=args.student_arch, task=task,
            train_limit=args.train_limit, seed=args.seed, settings=args.settings, recipe=args.recipe,
            rounds=args.rounds, per_mistake=args.per_mistake, max_new_per_round=args.max_new_per_round,
            transformation=args.transformation, fraction=args.replace_fraction, neighbours=args.neighbours,
            mlm_model=args.mlm_model, max_length=args.max_length, threads=args.threads,
            distill_weight=args.agora_distill, min_confidence=args.min_confidence,
            select_fraction=args.select_fraction, distill_on=args.agora_distill_on, progress=not args.no_progress,
            runner=runner, time_budget=None if args.time_budget is None
            else max(0.0, args.time_budget - (time.monotonic() - args.started)))   # from the command's start
    print_result({k: v for k, v in summary.items() if k != "rounds"} | {"rounds": [
        {k: r[k] for k in ("round", "theta_left", "train_size", "generated", "label_agreement", "dev_accuracy",
                           "test_accuracy")} for r in summary["rounds"]]})
    return 0
