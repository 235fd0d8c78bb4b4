"""The pipeline's stages, each a function of the run (config, directories, what the stages before it found) and the
seconds it may take, returning what it found as JSON. Each stage writes into its own subdirectory of the run and
resumes from what is there (the profile file, the fine-tuning and distillation checkpoints, the extraction's
surrogate cache, Agora's state), so a killed run loses at most the work since a stage's last checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from bortengine.architecture import Architecture
from bortengine.engine import available_cpus, transformer_directory
from bortengine.files import atomic_write, atomic_write_json
from bortengine.pipeline.config import SCARCE_EXAMPLES, PipelineConfig, PipelineError
from bortengine.pipeline.evaluation import LATENCY_TEXTS, calibrate_for_int8
from bortengine.search_space import SPACES, SearchSpace

__all__ = ["RunContext", "profile_stage", "teacher_stage", "extract_stage", "distil_stage", "finetune_stage",
           "space_below", "choose_student", "rerank_shortlist", "choose_reranked", "teacher_epochs",
           "teacher_architecture", "EXTRACT_EPSILON"]

EXTRACT_EPSILON = 0.2       # a coarser grouping than extract's default 0.1: fewer surrogate trainings in a budget
SURROGATE_STEPS = 30        # fine-tuning steps per candidate: enough to rank students on the task (docs/pipeline.md)
# The teacher's fine-tuning: 3 epochs, but at least TEACHER_MIN_STEPS steps (at most TEACHER_MAX_EPOCHS epochs; the
# best dev epoch is kept). 3 epochs of 500 Rotten Tomatoes examples are 48 steps, which left the teacher at 0.694
# test accuracy, and the teacher is the reference, the soft labels and Agora's labeller.
TEACHER_EPOCHS, TEACHER_MIN_STEPS, TEACHER_MAX_EPOCHS = 3.0, 300, 20.0
# the student's fine-tuning runs until its budget ends (its learning rate decays to 0 there, the best dev epoch is
# kept): the epochs are an upper bound, and the warm-up a small part of them. 8 epochs left 9 of its 14 minutes
# unused on 4,233 TREC questions (docs/pipeline.md); with max_steps (tests) the steps end it
STUDENT_EPOCHS, STUDENT_WARMUP = 40.0, 0.02
AGORA_MAX_NEW = 2000        # generated points per Agora round: bounds a round's cost on small data
# the student must be measured this much faster than min_speedup asks: the final evaluation times other texts
SPEEDUP_MARGIN = 1.05
# texts near each training text in the student's fine-tuning: up to AUGMENT_MAX_VARIANTS while labelling them takes
# at most AUGMENT_SHARE of the stage; AUGMENT_VARIANTS with max_steps (_augmentation)
AUGMENT_VARIANTS, AUGMENT_MAX_VARIANTS, AUGMENT_SHARE = 4, 20, 0.2
# texts labelled at a time: the share is checked between chunks. A minimum of 4 near texts per text whatever the
# time took 251 s of the 245 s a 15-minute run's fine-tuning had on 6,824 reviews, and nothing was trained
AUGMENT_CHUNK = 1024
# on a small training set, up to this many near texts in all (more than AUGMENT_MAX_VARIANTS each)
AUGMENT_SMALL_TEXTS = 30000
# on a small training set, also this many pieces of the distillation's built-in documents, cut to the training
# texts' word counts and labelled by the teacher (the transfer set of DistilBERT's and TinyBERT's task
# distillation): the near texts of 500 texts are variations of 500 sentences, and the student stayed ~4 points under
# the teacher with them alone (issue 15). 20,000 are 3 to 4 pieces of each of the ~5,500 built-in documents the
# distillation takes beside 500 texts (DISTIL_MIN_DOCUMENTS), and of the order of the near texts' AUGMENT_SMALL_TEXTS,
# so that neither kind runs out long before the other in a share that has time for both. Measured on RT-500 (one
# seed, docs/pipeline.md): dev +0.9 points, test -0.1 against near texts alone; TRANSFER_TEXTS_REPEATABLE with
# max_steps
TRANSFER_TEXTS, TRANSFER_TEXTS_REPEATABLE = 20000, 256
# with a small training set: the part of the fine-tuning stage for the near-texts recipe above, before Agora's rounds.
# On 500 Rotten Tomatoes examples Agora alone (its scarce recipe, 2,000 hard-labelled points a round) reached 0.7143
# test accuracy against the teacher's 0.7564 and left 464 of its 728 s unused (docs/pipeline.md)
SCARCE_NEAR_SHARE = 0.6
# documents at least in the distillation: on 500 Rotten Tomatoes reviews and 250 built-in documents its 1,365 steps
# went over each ~58 times (its loss 0.74 against 1.11 on the full train's 10,516 documents) and the student ended
# 4 points below the teacher whatever its fine-tuning (docs/pipeline.md)
DISTIL_MIN_DOCUMENTS = 6000
# of the extraction stage: the FPTAS with the fine-tuning surrogate. The rest measures candidates on the engine
# (~3 s each) and re-ranks the shortlist (~30 s a student on 2 cores at 1 x 64 tokens)
FPTAS_SHARE = 0.45
# the re-ranking's distillation steps before the fine-tuning surrogate's SURROGATE_STEPS: at 100, four students of
# one Rotten Tomatoes teacher were ranked as their dev accuracies after the pipeline (Spearman 1.0; docs/pipeline.md)
RERANK_DISTIL_STEPS = 100
RERANK_TRIES = 3            # students measured at most per depth for the shortlist
MEASURE_ROUNDS = 5


class RunContext:
    """A pipeline run: its options, directory, task and the results of the stages done so far."""

    def __init__(self, config: PipelineConfig, results: dict[str, Any]):
        self.config = config
        self.out = Path(config.out)
        self.results = results
        self._task = None
        self._task_length: Optional[int] = None

    @property
    def threads(self) -> int:
        return self.config.threads or available_cpus()

    @property
    def task(self):
        """The task's data (training.Task), read and checked once."""
        if self._task is None:
            from bortengine.training import load_task

            self._task = load_task(self.data_spec)
        return self._task

    @property
    def data_spec(self):
        from bortengine.training import DataSpec

        fields = self.config.data_fields()
        return DataSpec.of(self.config.task, **fields) if self.config.task else DataSpec(**fields)

    @property
    def teacher_source(self) -> str:
        from bortengine.training import default_teacher_path

        return str(self.config.teacher or default_teacher_path())

    @property
    def teacher_dir(self) -> Path:
        return self.out / "teacher"

    def recorded(self, path: str | os.PathLike) -> str:
        """A path for pipeline.json: relative to OUT when inside it, so that a run directory moved (or copied) and
        continued reads its own files, not those of where it was (a path outside OUT stays as it is)."""
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.out.resolve()))
        except ValueError:
            return str(path)

    def path_of(self, recorded: str) -> Path:
        """A path from pipeline.json (recorded() wrote it; runs before it wrote absolute paths, kept as they are)."""
        return self.out / recorded

    def workload(self):
        """The workload the student is extracted for: --workload, else one text of the task's length (the tokens
        that hold 95% of its training texts, training.task_max_length), which is what a service of the task
        sends."""
        from bortengine.profiling import Workload

        batch, seq = self.config.shape() if self.config.workload is not None else (1, self.task_length())
        return Workload(batch, seq, self.threads, self.config.dtype)

    def task_length(self) -> int:
        """The task's length: the smallest of training.MAX_LENGTH_CHOICES tokens that holds 95% of its training texts
        whole, in the teacher's tokens, capped at the teacher's own truncation (training.task_max_length)."""
        if self._task_length is None:
            from bortengine.training import task_max_length

            self._task_length = task_max_length(self.task, _tokenizer_source(self.teacher_source)
                                                or self.teacher_source)
        return self._task_length

    def max_length(self) -> int:
        """The tokens the student is distilled, fine-tuned, measured and exported at: the task's length, which a
        fine-tuned teacher is trained at too (the teacher stage records it). A teacher used as given keeps its own
        truncation, which was the student's before (512 for a 64-token task, from the model's positions): a run
        whose teacher stage did not record it goes on at that."""
        recorded = self.results["teacher"].get("max_length")
        if recorded is not None:
            return int(recorded)
        from bortengine.engine import load

        return load(str(self.teacher_dir)).max_length

    def uses_agora(self) -> bool:
        if self.config.no_agora or self.task.pairs:
            return False
        return self.config.scarce or len(self.task.train) <= SCARCE_EXAMPLES


def space_below(teacher: Architecture, name: Optional[str] = None) -> SearchSpace:
    """The search space of students of a teacher: a named space, the shipped one whose largest point is the
    teacher (MiniLM, BERT-large for Bort), or fractions of each of the teacher's sizes (heads dividing hidden)."""
    if name:
        return SearchSpace.resolve(name)
    for space in SPACES.values():
        if (max(space.layers), max(space.heads), max(space.hidden), max(space.intermediate)) == teacher.tuple:
            return space
    d, a, h, i = teacher.tuple
    layers = sorted({max(1, round(d * f)) for f in (1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6, 1)})
    hidden = sorted({x for x in (max(64, 64 * round(h * f / 64)) for f in (1 / 3, 1 / 2, 2 / 3, 5 / 6, 1))
                     if x <= h} | {h})
    heads = sorted({x for x in (max(1, round(a * f)) for f in (1 / 4, 1 / 3, 1 / 2, 2 / 3, 1))
                    if any(hid % x == 0 for hid in hidden)})
    intermediate = sorted({max(64, 64 * round(i * f / 64)) for f in (1 / 6, 1 / 3, 1 / 2, 2 / 3, 1)} | {i})
    return SearchSpace(name=f"below-{d}-{a}-{h}-{i}", layers=tuple(layers), heads=tuple(heads), hidden=tuple(hidden),
                       intermediate=tuple(intermediate), vocab_size=teacher.vocab_size,
                       max_positions=teacher.max_positions, type_vocab_size=teacher.type_vocab_size,
                       description=f"fractions of the teacher ⟨{d}, {a}, {h}, {i}⟩'s sizes")


# the teacher's files a run reads (configs, weights, tokenizer, sentence-transformers modules): teacher_fingerprint
TEACHER_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")


def teacher_fingerprint(directory: str) -> str:
    """The teacher's files by their content (sha256 of every TEACHER_FILE_SUFFIXES file under directory, hidden ones
    left out, with its relative path): a continued run checks that it reads the teacher it began with. The content,
    not the paths or times: the same teacher copied elsewhere has the same fingerprint."""
    root = Path(directory)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.suffix in TEACHER_FILE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for file in files:
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def teacher_architecture(directory: str) -> Architecture:
    """The teacher's encoder, from config.json where bortengine.load reads it: the directory, or the sub-folder a
    sentence-transformers directory's modules.json names (0_Transformer/; transformer_directory). Raises the
    package's errors for what the pipeline cannot start from: no config.json, another family, a model trained for
    another task (training.check_classifier_source). run_pipeline asks before the run directory is touched."""
    from bortengine.training import TrainingError, check_classifier_source

    config = transformer_directory(directory) / "config.json"
    if not config.is_file():
        raise PipelineError(f"--teacher {directory}: no config.json there; give a BERT model directory "
                            f"(BertModel, sentence-transformers, BertForMaskedLM or BertForSequenceClassification)")
    try:
        check_classifier_source(directory, "--teacher")
    except TrainingError as e:
        raise PipelineError(str(e)) from None
    return Architecture.from_hf_config(config).with_head("pooler")


# -- profile -------------------------------------------------------------------------------------------------------
def profile_stage(ctx: RunContext, seconds: float) -> dict[str, Any]:
    """This CPU's profile of the space's ops at the workload (profiling.profile_for_search): the one measured here
    before when it covers the space, else measured now (quick under a short budget) into this CPU's file; copied
    to OUT/profile.json for the latency suite. A profile of another CPU target, or one that cannot be checked
    (from before exact CPU targets, like the shipped example), is not used (docs/profiler.md); the note says what
    was done and why."""
    from bortengine.profiling import profile_for_search

    teacher = teacher_architecture(ctx.teacher_source)
    space = space_below(teacher, ctx.config.space)
    choice = profile_for_search(space, ctx.workload(), quick=seconds < 120, progress=ctx.config.progress)
    source = choice.profile.path
    path = ctx.out / "profile.json"
    choice.profile.record_space(space)   # the latency suite's re-profile command names it
    choice.profile.save(path)
    return {"profile": ctx.recorded(path), "source": str(source), "measured_now": choice.measured_now,
            "note": choice.note, "space": _space_dict(space), "space_name": space.name,
            "teacher_architecture": teacher.to_dict(), "target": choice.profile.target.signature}


def _space_dict(space: SearchSpace) -> dict[str, Any]:
    return {"name": space.name, "layers": list(space.layers), "heads": list(space.heads),
            "hidden": list(space.hidden), "intermediate": list(space.intermediate), "vocab_size": space.vocab_size,
            "max_positions": space.max_positions, "type_vocab_size": space.type_vocab_size}


# -- teacher -------------------------------------------------------------------------------------------------------
def teacher_stage(ctx: RunContext, seconds: float) -> dict[str, Any]:
    """OUT/teacher: the teacher as a classifier of the task's labels — as given when it already is one (same label
    names), else fine-tuned on the task (OUT/teacher-run holds its checkpoint)."""
    from bortengine.engine import load

    task, source = ctx.task, ctx.teacher_source
    config_labels = _classifier_labels(source)
    if config_labels is not None and sorted(config_labels) == sorted(task.labels):
        if config_labels == task.labels:
            _copy_model(Path(source), ctx.teacher_dir)
        else:   # its head's rows put in the task's order: the student distils the teacher's logits by position
            _write_in_task_order(source, task.labels, ctx.teacher_dir)
        return {"fine_tuned": False, "source": source, "labels": load(str(ctx.teacher_dir)).labels,
                "max_length": ctx.task_length(), "int8_calibration": calibrate_for_int8(ctx, ctx.teacher_dir)}
    from bortengine.training import FinetuneConfig, finetune

    run_dir = ctx.out / "teacher-run"
    config = FinetuneConfig(model=source, tokenizer=_tokenizer_source(source), **_finetune_data(ctx),
                            out_dir=str(run_dir), seed=ctx.config.seed,
                            epochs=teacher_epochs(len(task.train), FinetuneConfig.batch_size),
                            time_budget=None if ctx.config.max_steps else seconds, clock="wall",
                            max_steps=ctx.config.max_steps, threads=ctx.threads)
    _, metrics = finetune(config, progress=ctx.config.progress)
    _copy_model(run_dir / "model", ctx.teacher_dir)
    result = {"fine_tuned": True, "source": source, "dev_accuracy": metrics["dev_accuracy"],
              "test_accuracy": metrics["test_accuracy"], "max_length": metrics["max_length"],
              "steps": metrics["steps"], "stopped_by": metrics["stopped_by"],
              "int8_calibration": calibrate_for_int8(ctx, ctx.teacher_dir)}
    notes = [_head_replaced(config_labels, task.labels), _no_better_than_the_majority(task, metrics["dev_accuracy"],
                                                                                     metrics["steps"])]
    notes = [n for n in notes if n]
    return {**result, "note": "; ".join(notes)} if notes else result


def _head_replaced(classes: Optional[list[str]], labels: list[str]) -> Optional[str]:
    """What to say of a teacher that is a classifier of other classes than the task's: its head is not the task's,
    so it is fine-tuned with a new one (and a user who meant those classes learns that the names differ)."""
    if classes is None:
        return None
    return (f"the teacher classifies into {_names(classes)}, not the task's {_names(labels)}: it was fine-tuned with "
            f"a new classification head; to keep its own, give data whose labels are its class names")


def _names(classes: list[str], most: int = 6) -> str:
    return ", ".join(repr(c) for c in classes[:most]) + (f" and {len(classes) - most} more" if len(classes) > most
                                                          else "")


def _no_better_than_the_majority(task, dev_accuracy: float, steps: int) -> Optional[str]:
    """What to say of a fine-tuned teacher no more accurate on dev than always answering dev's most common class
    (a budget too short for it to learn, or labels it cannot read from the texts): the run goes on, but the student
    learns its soft labels and is held to its accuracy, and the report would show both without a remark."""
    counts = task.class_counts("dev")
    majority = max(counts.values()) / max(1, sum(counts.values()))
    if dev_accuracy > majority + 0.01:
        return None
    common = max(counts, key=counts.get)
    return (f"warning: the fine-tuned teacher is no better on dev than always answering {common!r} "
            f"({dev_accuracy:.3f} against {majority:.3f}, after {steps} steps): it is the student's reference, soft "
            f"labels and Agora's labeller, so the student learns little from it; give a larger --budget, or check "
            f"that the label column is what the texts say")



def teacher_epochs(examples: int, batch_size: int) -> float:
    """Epochs of the teacher's fine-tuning on `examples` training examples (TEACHER_EPOCHS, TEACHER_MIN_STEPS)."""
    return min(TEACHER_MAX_EPOCHS, max(TEACHER_EPOCHS, TEACHER_MIN_STEPS * batch_size / max(1, examples)))


def _classifier_labels(directory: str) -> Optional[list[str]]:
    config_path = transformer_directory(directory) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    if "BertForSequenceClassification" not in (config.get("architectures") or []):
        return None
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def _tokenizer_source(directory: str) -> Optional[str]:
    """directory, when it (or its sentence-transformers sub-folder) holds a tokenizer; training reads it there."""
    transformer = transformer_directory(directory)
    return directory if any((transformer / n).is_file() for n in ("tokenizer.json", "vocab.txt")) else None


def _finetune_data(ctx: RunContext) -> dict[str, Any]:
    """FinetuneConfig's data fields (train_limit as train_sample: a stratified sample, not the first N)."""
    spec = ctx.data_spec
    if spec.builtin:
        return {"task": spec.builtin, "train_sample": spec.train_limit}
    return {"task": None, "train": spec.train, "dev": spec.dev, "test": spec.test, "text_column": spec.text_column,
            "text_pair_column": spec.text_pair_column, "label_column": spec.label_column,
            "train_sample": spec.train_limit}


def _copy_model(source: Path, target: Path) -> None:
    """A model directory copied whole (see _replace_directory)."""
    _replace_directory(target, lambda partial: shutil.copytree(source, partial))


def _write_in_task_order(source: str, labels: list[str], target: Path) -> None:
    """The user's classifier of the task's classes in another order, copied whole (its layout, pooling, truncation
    and dtype as given) with id2label = labels and its head's rows permuted to match (training.relabel_classifier).
    Rebuilt through transformers and write_hf_directory, it lost its pooling (CLS became mean)."""
    from bortengine.training import relabel_classifier

    def fill(partial: Path) -> None:
        shutil.copytree(source, partial)
        relabel_classifier(partial, labels)

    _replace_directory(target, fill)


def _replace_directory(target: Path, fill) -> None:
    """fill(partial) writes a directory beside target, which is then renamed into place: a killed write never
    looks like a model."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    fill(partial)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


# -- extract -------------------------------------------------------------------------------------------------------
def extract_stage(ctx: RunContext, seconds: float) -> dict[str, Any]:
    """The student's architecture: --arch as given, else the FPTAS on this CPU's profile with a fine-tuning
    surrogate on the task (students sliced from the fine-tuned teacher), then a re-ranking of a shortlist: the
    FPTAS's choice (the most accurate evaluated student predicted, then measured, at least min_speedup times
    faster than the teacher: choose_student) and, of each depth, the widest student measured fast enough
    (rerank_shortlist), by a surrogate that distils each from the teacher before it fine-tunes it
    (search.DistilFinetuneSurrogate). Its lowest loss is the student; without two of them re-ranked in the
    stage's time, the FPTAS's choice."""
    from bortengine.profiling import load_profile
    from bortengine.search import DistilFinetuneSurrogate, FinetuneSurrogate, LatencyLimitError, extract, rerank

    started = time.monotonic()        # the stage's budget counts from here
    prof = load_profile(ctx.path_of(ctx.results["profile"]["profile"]), check_target=False)
    space = SearchSpace.from_dict(ctx.results["profile"]["space"])
    teacher = Architecture.from_dict(ctx.results["profile"]["teacher_architecture"])
    model = prof.model(ctx.workload())
    teacher_ms = float(model.predict(teacher))
    if ctx.config.arch:
        arch = Architecture.parse(ctx.config.arch, vocab_size=teacher.vocab_size)
        return {"architecture": arch.to_dict(), "given": True, "predicted_ms": float(model.predict(arch)),
                "teacher_predicted_ms": teacher_ms}
    data = dict(seed=ctx.config.seed, eval_limit=256, teacher=str(ctx.teacher_dir), **_surrogate_data(ctx))
    cache, bound = str(ctx.out / "extract-cache"), teacher_ms / ctx.config.min_speedup
    required = ctx.config.min_speedup * SPEEDUP_MARGIN
    with warnings.catch_warnings():
        # the W-coefficient's winner needs the maximum point's error, which a short stage may not reach; the
        # pipeline's choice does not use it (choose_student: the most accurate student fast enough), so the
        # extraction's warning that it is undefined would only alarm
        warnings.filterwarnings("ignore", message="the maximum point .* has no error", category=RuntimeWarning)
        try:
            result = extract(space, FinetuneSurrogate(steps=SURROGATE_STEPS, **data), prof, workload=ctx.workload(),
                             epsilon=EXTRACT_EPSILON, max_point=teacher, cache_dir=cache,
                             time_budget=FPTAS_SHARE * seconds, started=started, progress=ctx.config.progress,
                             latency_limit_ms=bound, executor=ctx.config.executor,
                             ray_address=ctx.config.ray_address)
        except LatencyLimitError as exc:
            raise no_student_fast_enough(space, exc, teacher_ms, ctx.config.min_speedup) from None
    meter = CandidateMeter(ctx, teacher)
    fptas_choice, note = choose_student(result, bound, meter.speedup, required, deadline=started + seconds)
    fast_enough = rerank_shortlist(result, bound, meter.speedup, required, deadline=started + seconds)
    # the FPTAS's choice is left out when it was not measured fast enough (a note says so) and others were
    shortlist = ([] if note and fast_enough else [fptas_choice]) + [
        c for c in fast_enough if c.arch.tuple != fptas_choice.arch.tuple]
    surrogate = DistilFinetuneSurrogate(steps=SURROGATE_STEPS, distil_steps=RERANK_DISTIL_STEPS, **data)
    # a re-ranking evaluation fine-tunes as the search's did, after distilling first: it takes longer than the
    # quickest of those, so one that cannot end in the stage's time is not started, and the time goes to the next
    # stage (short budgets: the distillation)
    searched = [c.seconds for c in shortlist if c.seconds]
    reranked = rerank(shortlist, surrogate, deadline=started + seconds, cache_dir=cache,
                      executor=ctx.config.executor, ray_address=ctx.config.ray_address, progress=ctx.config.progress,
                      expected_seconds=min(searched, default=0.0))
    chosen, note = choose_reranked(fptas_choice, note, fast_enough, reranked)

    def row(c, **more) -> dict[str, Any]:
        return {"architecture": str(c.arch), "latency_ms": c.latency_ms, "error": c.error, "node": c.node,
                "measured_speedup": meter.measured.get(str(c.arch)), **more}

    candidates = [row(c, params=c.params, pareto=c.pareto) for c in result.candidates if c.error is not None]
    return {"architecture": chosen.arch.to_dict(), "given": False, "predicted_ms": chosen.latency_ms,
            "teacher_predicted_ms": teacher_ms,
            "surrogate_error": next((c.error for c in result.candidates if c.arch.tuple == chosen.arch.tuple), None),
            "rerank_error": next((c.error for c in reranked if c.arch.tuple == chosen.arch.tuple), None),
            "note": note, "measured_speedup": meter.measured.get(str(chosen.arch)), "measured_on": meter.described(),
            "fptas_choice": str(fptas_choice.arch),
            "fptas_winner": str(result.winner.arch) if result.winner else None, "evaluations": result.evaluations,
            "complete": result.complete, "candidates": candidates, "space": space.name,
            "executor": result.executor,
            "reranking": {"surrogate": surrogate.name, "settings": {"steps": surrogate.steps,
                                                                    "distil_steps": surrogate.distil_steps},
                          "students": [row(c, status=c.status, seconds=c.seconds) for c in reranked]}}


def choose_reranked(fptas_choice, note: str, fast_enough: list, reranked: list):
    """(student, note) after the re-ranking: the lowest re-ranking loss when two or more students have one, or when
    the FPTAS's choice (note: a fallback) was not measured fast enough and one of the shortlist's has one; the
    first of the shortlist measured fast enough when none does (with a note); else the FPTAS's choice."""
    scored = [c for c in reranked if c.error is not None]
    fallback = bool(note)
    if len(scored) >= 2 or (fallback and scored):
        return min(scored, key=lambda c: (c.error, c.latency_ms)), ""
    if fallback and fast_enough:
        return fast_enough[0], (f"none of the {len(reranked)} shortlisted students measured fast enough was "
                                f"re-ranked in the stage's time: the first of them was taken")
    return fptas_choice, (note + " " if note else "") + (f"{len(scored)} of the {len(reranked)} shortlisted students "
                                                         f"re-ranked in the stage's time: the FPTAS's choice kept")


def rerank_shortlist(result, latency_bound_ms: float, speedup: Callable[[Architecture], float], required: float,
                     deadline: float, tries: int = RERANK_TRIES) -> list:
    """Of each depth among the candidates predicted within the latency bound (the maximum point aside), the first
    measured at least `required` times faster than the teacher, in the order: widest hidden size, most
    parameters, heads nearest the teacher's head size, fastest; deepest first. One measured too slow (s times
    faster than the teacher) rules out those of its depth not predicted required / s times faster than it; at most
    `tries` measured per depth, none after the deadline.
    Widest first because a narrower hidden size is what the cheap surrogate misjudges and what a student of a
    given depth loses most by (docs/pipeline.md, the narrow regime); deepest first because depth is what the
    speed target trades away first, and where the re-ranking's deadline cuts the list (on one Rotten Tomatoes
    teacher the four students re-ranked ended in the order of their depth)."""
    teacher = result.max_point.arch

    def order(c):
        return (-c.arch.hidden, -c.params, abs(math.log(c.arch.head_size / teacher.head_size)), c.latency_ms, c.dims)

    depths: dict[int, list] = {}
    for c in result.candidates:
        if c.latency_ms <= latency_bound_ms and c.arch.tuple != teacher.tuple:
            depths.setdefault(c.arch.layers, []).append(c)
    chosen = []
    for layers in sorted(depths, reverse=True):
        below, tried = math.inf, 0       # the predicted latency a student of this depth must be under
        for c in sorted(depths[layers], key=order):
            if tried == tries or time.monotonic() >= deadline:
                break
            if c.latency_ms >= below:
                continue
            tried += 1
            s = speedup(c.arch)
            if s >= required:
                chosen.append(c)
                break
            # the profile is off by about as much for students of one depth: one measured s times faster than the
            # teacher must be predicted required / s times faster. At 1 x 32 tokens (TREC) the widest 4- to 6-layer
            # students were predicted 4.2-4.9x and measured 3.5-4.2x, and three tries a depth went on the same
            # shape with other head counts (docs/pipeline.md)
            below = min(below, c.latency_ms * s / required)
    return chosen


class CandidateMeter:
    """The speed-up of a candidate over the teacher measured on this CPU's engine: a student of the candidate's
    shape with random weights (the time does not depend on them) and the fine-tuned teacher answer a seeded sample
    of the task's dev texts at the workload's batch size and dtype, as a service would (block_medians). The
    profile's prediction left out what a call costs beyond the forward and the caches a whole model meets, which
    made the second TREC run's student 3.2x instead of the 4.2x predicted (docs/pipeline.md). Measurements are
    kept in the run (extract-measured.json), so a resumed run chooses as the first one did."""

    def __init__(self, ctx: RunContext, teacher: Architecture):
        self.ctx, self.teacher = ctx, teacher
        self.path = ctx.out / "extract-measured.json"
        self.measured: dict[str, float] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self._inputs = None
        self._teacher_engine = None

    def described(self) -> str:
        b = self.ctx.workload().batch_size
        threads = self.ctx.threads
        return (f"{LATENCY_TEXTS} dev texts, {b} per call, {self.ctx.config.dtype}, {threads} "
                f"thread{'s' if threads != 1 else ''}, {MEASURE_ROUNDS} rounds")

    def speedup(self, arch: Architecture) -> float:
        key = str(arch)
        if key not in self.measured:
            self.measured[key] = self._measure(arch)
            atomic_write_json(self.path, self.measured, indent=1)
        return self.measured[key]

    def _measure(self, arch: Architecture) -> float:
        from bortengine.engine import load
        from bortengine.pipeline.evaluation import block_medians, sample_inputs
        from bortengine.training import build_model, write_hf_directory

        dtype, threads = self.ctx.config.dtype, self.ctx.threads
        if self._inputs is None:
            task = self.ctx.task
            self._inputs = sample_inputs(*task.texts("dev" if task.dev else "train"))
            self._teacher_engine = load(str(self.ctx.teacher_dir), dtype=dtype, num_threads=threads)
        texts, pairs = self._inputs
        b = self.ctx.workload().batch_size
        calls_n = max(1, len(texts) // b)
        texts = (texts * (b // len(texts) + 1))[:max(len(texts), b)]
        pairs = None if pairs is None else (pairs * (b // len(pairs) + 1))[:len(texts)]
        length = self.ctx.max_length()     # teacher and student timed at the length the student is served at

        def call(engine):
            def run(i: int):
                kwargs = {"text_pairs": pairs[i * b:(i + 1) * b]} if pairs is not None else {}
                engine.classify(texts[i * b:(i + 1) * b], batch_size=b, max_length=length, **kwargs)
            return run

        directory = self.ctx.out / "extract-measure"
        try:
            shape = replace(arch, vocab_size=self.teacher.vocab_size, max_positions=self.teacher.max_positions,
                            type_vocab_size=self.teacher.type_vocab_size)
            shutil.rmtree(directory, ignore_errors=True)
            write_hf_directory(build_model(shape.with_head("classifier", max(2, len(self.ctx.task.labels))), seed=0),
                               directory, self.ctx.teacher_dir)
            student = load(str(directory), dtype=dtype, num_threads=threads)
            ms = block_medians({"teacher": call(self._teacher_engine), "student": call(student)}, calls_n,
                               MEASURE_ROUNDS)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return ms["teacher"] / ms["student"]


def _surrogate_data(ctx: RunContext) -> dict[str, Any]:
    data = _finetune_data(ctx)
    task, sample = data.pop("task"), data.pop("train_sample")
    if not data.get("train"):
        return {"task": task, "train_sample": sample}
    return {"data": {k: v for k, v in data.items() if v is not None}, "train_sample": sample}


# What a run whose options are fixed (its directory holds them) can and cannot change, for the errors that advise one
NEW_RUN = "in a new run (another --out: this run's directory keeps the options it was started with)"


def no_student_fast_enough(space: SearchSpace, exc, teacher_ms: float, min_speedup: float) -> PipelineError:
    """The extraction's LatencyLimitError (no student predicted within teacher_ms / min_speedup: a small teacher)
    in the pipeline's terms: the search's own says "raise the latency limit", which the pipeline's user did not set."""
    fastest = exc.fastest
    found = (f"its fastest, {fastest.arch}, is predicted {teacher_ms / fastest.latency_ms:.2f}x" if fastest is not None
             else "it has no architecture but the teacher's")
    return PipelineError(
        f"no student of the space {space.name} is predicted {min_speedup:g}x faster than the teacher "
        f"({teacher_ms:.3f} ms at the workload): {found}; give a lower --min-speedup or a --space of smaller "
        f"students {NEW_RUN}")


def choose_student(result, latency_bound_ms: float, speedup: Callable[[Architecture], float],
                   required: float, deadline: float):
    """(candidate, note): the evaluated candidate of lowest surrogate error (ties: the faster) among those predicted
    within the latency bound whose measured speed-up over the teacher is at least `required`. Candidates are
    measured in order of error; one measured too slow rules out those predicted no faster than it. Without one by
    the deadline, the fastest measured (or, if none was, predicted) candidate, with a note saying so."""
    evaluated = [c for c in result.candidates if c.error is not None and c.arch.tuple != result.max_point.arch.tuple]
    if not evaluated:
        raise PipelineError(f"the extraction evaluated no student within its budget: run the same command with a "
                            f"larger --budget (the run continues where it stopped), or give a student with --arch "
                            f"D,A,H,I {NEW_RUN}")
    pending = sorted((c for c in evaluated if c.latency_ms <= latency_bound_ms), key=lambda c: (c.error, c.latency_ms))
    measured = []
    while pending and time.monotonic() < deadline:
        candidate = pending.pop(0)
        s = speedup(candidate.arch)
        if s >= required:
            return candidate, ""
        measured.append((s, candidate))
        pending = [c for c in pending if c.latency_ms < candidate.latency_ms]
    if measured:
        s, fastest = max(measured, key=lambda m: m[0])
        return fastest, (f"no student predicted within {latency_bound_ms:.2f} ms (the teacher's latency over "
                         f"--min-speedup) measured {required:.2f}x faster than the teacher by the stage's end; the "
                         f"fastest measured ({s:.2f}x) was taken")
    fastest = min(evaluated, key=lambda c: c.latency_ms)
    return fastest, (f"no evaluated student is predicted within {latency_bound_ms:.2f} ms (the teacher's latency "
                     f"over --min-speedup) or none could be measured in the stage's time; the fastest evaluated one "
                     f"was taken")


# -- distil --------------------------------------------------------------------------------------------------------
def distil_stage(ctx: RunContext, seconds: float) -> dict[str, Any]:
    """The student sliced from the fine-tuned teacher and distilled from it on the task's texts and the built-in
    corpus: as many built-in documents as half the task's texts (about as many segments of each), or as make
    DISTIL_MIN_DOCUMENTS in all."""
    from bortengine.training import DistillConfig, pretrain

    arch = Architecture.from_dict(ctx.results["extract"]["architecture"])
    task_documents, builtin = _distillation_documents(ctx)
    documents = task_documents + builtin
    config = DistillConfig(student=arch.with_head("pooler"), out_dir=str(ctx.out / "distil"),
                           teacher=str(ctx.teacher_dir), seed=ctx.config.seed, max_length=128, clock="wall",
                           time_budget=None if ctx.config.max_steps else seconds, max_steps=ctx.config.max_steps,
                           threads=ctx.threads)
    result = pretrain(config, documents=documents, progress=ctx.config.progress, evaluate=False)
    return {"student_dir": ctx.recorded(result["student_dir"]), "steps": result["steps"], "tokens": result["tokens"],
            "documents": len(documents), "task_documents": len(task_documents), "final_loss": result["final_loss"]}


def _distillation_documents(ctx: RunContext) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The distillation's (source, text) documents: the task's training texts (and their pairs), and the built-in
    corpus's part beside them, every step-th document: as many as half the task's texts, or as make
    DISTIL_MIN_DOCUMENTS in all. The fine-tuning's transfer pieces are cut from that part."""
    from bortengine.training import pretraining_documents

    texts, pairs = ctx.task.texts("train")
    task_documents = [("task", t) for t in texts] + [("task", t) for t in (pairs or [])]
    builtin = pretraining_documents()
    wanted = max(len(task_documents) // 2, DISTIL_MIN_DOCUMENTS - len(task_documents))
    return task_documents, builtin[::max(1, len(builtin) // max(1, wanted))]


# -- fine-tune -----------------------------------------------------------------------------------------------------
def finetune_stage(ctx: RunContext, seconds: float) -> dict[str, Any]:
    """The distilled student fine-tuned on the task and on texts near its training texts labelled by the teacher
    (augmentation), learning the teacher's soft labels as well. When the training set is small (or --scarce) the
    teacher labels pieces of the distillation's built-in documents too (_augmentation), this recipe takes
    SCARCE_NEAR_SHARE of the stage, and Agora's rounds continue from its model in the rest; Agora's model is the
    student only when it is more accurate on the engine on the part of dev Agora selects with by over one standard
    error (_standard_error), else the first is. Its model is OUT/model."""
    started = time.monotonic()
    student = str(ctx.path_of(ctx.results["distil"]["student_dir"]))
    scarce = ctx.uses_agora()
    metrics = _finetune_on_near_texts(ctx, student, SCARCE_NEAR_SHARE * seconds if scarce else seconds, started)
    near_model = ctx.out / "finetune" / "model"
    result = {"agora": False, "dev_accuracy": metrics["dev_accuracy"], "test_accuracy": metrics["test_accuracy"],
              "steps": metrics["steps"], "stopped_by": metrics["stopped_by"],
              "augmented_examples": metrics["train_examples"] - len(ctx.task.train)}
    if not scarce:
        _copy_model(near_model, ctx.out / "model")
        return result
    result.update(_augmented_kinds(ctx))
    agora = _agora(ctx, str(near_model), seconds - (time.monotonic() - started))
    part = selection_part(ctx)
    agora_model = ctx.path_of(agora["model_dir"])
    dev = {name: _selection_accuracy(ctx, directory, part) for name, directory in (("near", near_model),
                                                                                    ("agora", agora_model))}
    margin = _standard_error(dev["near"], len(part))
    winner = "agora" if dev["agora"] > dev["near"] + margin else "near"
    _copy_model(agora_model if winner == "agora" else near_model, ctx.out / "model")
    return {**agora, "agora": True, "near_texts": result, "dev_accuracy_engine": dev, "agora_margin": margin,
            "chosen": winner,
            "dev_accuracy": agora["dev_accuracy"] if winner == "agora" else result["dev_accuracy"],
            "test_accuracy": agora["test_accuracy"] if winner == "agora" else result["test_accuracy"]}


def _finetune_on_near_texts(ctx: RunContext, student: str, seconds: float, started: float) -> dict[str, Any]:
    """The student fine-tuned in OUT/finetune until `seconds` after `started` (its metrics from a finished run
    when it is there: the stage resumed after this part)."""
    from bortengine.training import FinetuneConfig, finetune

    run_dir = ctx.out / "finetune"
    if (run_dir / "result.json").is_file() and (run_dir / "model").is_dir():
        return json.loads((run_dir / "result.json").read_text())
    augment = _augmentation(ctx, seconds)
    config = FinetuneConfig(model=student, tokenizer=str(ctx.teacher_dir), **_finetune_data(ctx),
                            out_dir=str(run_dir), seed=ctx.config.seed, epochs=STUDENT_EPOCHS,
                            warmup_fraction=STUDENT_WARMUP, augment=augment, freeze_word_embeddings=True,
                            teacher=str(ctx.teacher_dir), distill_weight=0.5, lr=1e-4,
                            max_length=ctx.max_length(), time_budget=None if ctx.config.max_steps else seconds,
                            clock="wall", max_steps=ctx.config.max_steps, threads=ctx.threads)
    _, metrics = finetune(config, progress=ctx.config.progress, started=started)
    return metrics


def selection_part(ctx: RunContext):
    """Indices of the part of dev Agora selects with: the part its generated points do not come from, so neither
    the near-text model nor Agora's has trained near it."""
    import numpy as np

    from bortengine.training import AGORA_RECIPES, stratified_split

    return stratified_split(np.array([e.label for e in ctx.task.dev]), AGORA_RECIPES["scarce"]["select_fraction"],
                            ctx.config.seed, ctx.task.labels)


def _standard_error(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on n examples: Agora's model replaces the near-text model only when
    it is more accurate by more than this (the one-standard-error rule: the simpler model unless the other is
    clearly better). On 500 Rotten Tomatoes reviews Agora's rounds were below the near-text model on test in all five
    runs, and were taken in three by 0.7-0.9 points on the 426-review selection half (SE 2.1), each time costing
    0.2-1.3 points of test (docs/pipeline.md)."""
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / max(n, 1))


def _selection_accuracy(ctx: RunContext, directory: "str | Path", part) -> float:
    """A model's accuracy on the engine on `part` of dev: the indices selection_part gives."""
    from bortengine.engine import load
    from bortengine.pipeline.evaluation import accuracy

    examples = ctx.task.dev
    texts, pairs = ctx.task.texts("dev")
    return accuracy(load(str(directory), num_threads=ctx.threads), [texts[i] for i in part],
                    None if pairs is None else [pairs[i] for i in part],
                    [ctx.task.labels[examples[i].label] for i in part])


def _augmentation(ctx: RunContext, seconds: float) -> Optional[str]:
    """Texts near each training text (a quarter of its words swapped for near neighbours in the teacher's word
    embeddings), labelled by the fine-tuned teacher with its logits kept: the student learns the teacher's function
    on more of the task's kind of text than the task has (task-specific distillation with augmentation, as TinyBERT
    does). Variants are made one per training text at a time, up to AUGMENT_MAX_VARIANTS (on a small training set,
    up to AUGMENT_SMALL_TEXTS in all), while labelling them stays within AUGMENT_SHARE of the stage's `seconds`
    (at least one chunk; with max_steps, AUGMENT_VARIANTS rounds): on 3,811 TREC questions 4 near texts each left
    the student's dev accuracy flat after its first epoch (it learnt the training texts).

    On a small training set (ctx.uses_agora()) the teacher also labels TRANSFER_TEXTS pieces of the distillation's
    built-in documents cut to the training texts' word counts (training.transfer_pieces; TRANSFER_TEXTS_REPEATABLE
    with max_steps): real text beyond the few sentences the near texts vary. The two kinds share the time: each
    chunk is of the kind with fewer texts labelled so far (near texts on a tie), so a short share gives about as
    many of each (they are of the same lengths), the kind not used up has the rest, and the share ends the
    labelling only once each kind has had a chunk. The file's column source then says which kind each row is
    ("near" or "transfer").

    Written once into the run, so a resumed run trains on the same texts; None for text-pair tasks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bortengine.engine import load
    from bortengine.training import NearestNeighbourSwap, transfer_pieces

    if ctx.task.pairs:
        return None
    path = ctx.out / "augmented.parquet"
    if path.is_file():
        return str(path)
    started = time.monotonic()
    texts, _ = ctx.task.texts("train")
    teacher = load(str(ctx.teacher_dir), num_threads=ctx.threads)
    swap = NearestNeighbourSwap.from_model(str(ctx.teacher_dir), max_length=ctx.max_length())
    rng = np.random.default_rng(ctx.config.seed)
    # with max_steps (tests, quick looks) the counts do not depend on the machine's speed: runs are repeatable
    repeatable = bool(ctx.config.max_steps)
    most = AUGMENT_VARIANTS if repeatable else max(AUGMENT_MAX_VARIANTS, AUGMENT_SMALL_TEXTS // max(1, len(texts)))

    def near_chunks():
        for _ in range(most if texts else 0):
            for start in range(0, len(texts), AUGMENT_CHUNK):
                yield [v for variants in swap(texts[start:start + AUGMENT_CHUNK], rng, 1) for v in variants]

    chunks = {"near": near_chunks()}
    if ctx.uses_agora():
        pieces = transfer_pieces(_distillation_documents(ctx)[1], [len(t.split()) for t in texts],
                                 TRANSFER_TEXTS_REPEATABLE if repeatable else TRANSFER_TEXTS, ctx.config.seed)
        chunks["transfer"] = (pieces[i:i + AUGMENT_CHUNK] for i in range(0, len(pieces), AUGMENT_CHUNK))
    labelled = dict.fromkeys(chunks, 0)
    new, labels, logits, sources = [], [], [], []
    share, chunk_seconds = AUGMENT_SHARE * seconds, 0.0
    while chunks:
        # labelled a chunk at a time, so the share holds however long a round over all the texts would take
        if (not repeatable and all(labelled[kind] for kind in chunks)
                and time.monotonic() - started + chunk_seconds > share):
            break
        kind = min(chunks, key=labelled.__getitem__)
        chunk_started = time.monotonic()
        chunk = next(chunks[kind], None)
        if chunk is None:
            del chunks[kind]
            continue
        answers = teacher.classify(chunk, batch_size=64)
        new += chunk
        labels += answers.labels
        logits.append(answers.logits)
        sources += [kind] * len(chunk)
        labelled[kind] += len(chunk)
        chunk_seconds = time.monotonic() - chunk_started
    logits = np.concatenate(logits) if logits else np.zeros((0, len(teacher.labels)), np.float32)
    columns = {"text": new, "label": labels, "logits": [row.tolist() for row in logits]}
    if "transfer" in labelled:
        columns["source"] = sources
    atomic_write(path, lambda tmp: pq.write_table(pa.table(columns), tmp))
    return str(path)


def _augmented_kinds(ctx: RunContext) -> dict[str, int]:
    """How many rows of OUT/augmented.parquet are near texts and how many transfer pieces (a file without the
    source column, written before there were pieces, holds near texts only)."""
    import pyarrow.parquet as pq

    path = ctx.out / "augmented.parquet"
    if "source" not in pq.read_schema(path).names:
        return {"near_examples": pq.read_metadata(path).num_rows, "transfer_examples": 0}
    sources = pq.read_table(path, columns=["source"]).column("source").to_pylist()
    return {"near_examples": sources.count("near"), "transfer_examples": sources.count("transfer")}


def _agora(ctx: RunContext, student: str, seconds: float) -> dict[str, Any]:
    from bortengine.search import settings_runner
    from bortengine.training import finetune_agora

    run_dir = ctx.out / "agora"
    started = time.monotonic()
    # with max_steps (tests, quick looks) two short rounds, as the other training stages are capped
    quick = {"rounds": 2, "settings": ({"lr": 3e-4, "epochs": 1.0},)} if ctx.config.max_steps else {}
    # the executor of the extraction runs each round's settings too; on Ray each gets --threads CPUs if given, else
    # the smallest node's
    with settings_runner(ctx.config.executor, ctx.config.ray_address, ctx.config.threads) as runner:
        summary = finetune_agora(labeller=str(ctx.teacher_dir), out_dir=str(run_dir), model=student, arch=None,
                                 task=ctx.data_spec, train_limit=None, seed=ctx.config.seed,
                                 max_length=ctx.max_length(), threads=ctx.threads,
                                 max_new_per_round=AGORA_MAX_NEW, time_budget=0.85 * seconds,
                                 progress=ctx.config.progress, runner=runner, **quick)
    last = summary["rounds"][-1]["round"]
    if (run_dir / "rounds.png").is_file():
        shutil.copy(run_dir / "rounds.png", ctx.out / "agora_rounds.png")
    return {"agora": True, "rounds": len(summary["rounds"]), "dev_accuracy": summary["agora_dev_accuracy"],
            "test_accuracy": summary["agora_test_accuracy"], "plain_test_accuracy": summary["plain_test_accuracy"],
            "seconds_this_call": time.monotonic() - started, "budget_seconds": seconds,
            "round_rows": summary["rounds"], "executor": summary["executor"],
            "model_dir": ctx.recorded(run_dir / f"round-{last}")}
