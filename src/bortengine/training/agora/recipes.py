"""Agora on a text classification task — the user's data or the built-in movie reviews (CLI: bortengine finetune
--agora): the named recipes of its options, Θ from the command line, the scarce training subset, the student cut
from the teacher, and finetune_agora, which runs the loop with a text student, the engine as labeller, and test
accuracy of every round's student measured after it.
Importing this module does not import torch.
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from bortengine.files import atomic_write_json, read_json
from bortengine.training.agora.labeller import EngineLabeller
from bortengine.training.agora.loop import (DEFAULT_SETTINGS, AgoraConfig, AgoraError, SettingsRunner, accuracy,
                                            check_ranges, jsonable, log, run_agora, stratified_split)
from bortengine.training.agora.report import evaluate_rounds, plot_rounds
from bortengine.training.agora.trainer import TextClassifierTrainer, load_engine_classifier, save_classifier
from bortengine.training.agora.transformations import MaskedLMFill, NearestNeighbourSwap
from bortengine.training.tasks import DataSpec, Task, load_task, stratified_sample

__all__ = ["MEASURED_SETTINGS", "RECIPES", "resolve_recipe", "parse_settings", "scarce_subset", "slice_student",
           "finetune_agora"]

# as `--settings "lr=3e-4,epochs=6;lr=6e-4,epochs=6"` parses (floats), so a recipe run and the same run spelt out on
# the command line are one run (same state fingerprint: either resumes the other)
MEASURED_SETTINGS: tuple[dict, ...] = ({"lr": 3e-4, "epochs": 6.0}, {"lr": 6e-4, "epochs": 6.0})

# Named sets of finetune_agora's options (CLI --recipe); an option given explicitly overrides its recipe's value.
# "scarce" (the default): configuration G of docs/agora.md, pre-registered and then measured on fresh seeds (500 RT
# examples, ⟨4,8,256,512⟩ student): 128 new points per dev mistake, 40% of their words swapped, learnt from the
# labeller's soft labels alone, half of dev kept apart for selection. "paper": Agora as published, and as the runs
# of docs/agora.md before G were made: 4 points per mistake, 25% of the words, the labeller's hard labels, all of
# dev for both selection and generation.
RECIPES: dict[str, dict[str, Any]] = {
    "scarce": {"settings": MEASURED_SETTINGS, "per_mistake": 128, "fraction": 0.4, "distill_weight": 1.0,
               "distill_on": "generated", "select_fraction": 0.5},
    "paper": {"settings": MEASURED_SETTINGS, "per_mistake": 4, "fraction": 0.25, "distill_weight": 0.0,
              "distill_on": "all", "select_fraction": None},
}


def resolve_recipe(recipe: str = "scarce", **given: Any) -> dict[str, Any]:
    """The recipe's options with the ones given (not None) in their place. select_fraction=0 means none of dev is
    kept apart (all of dev selects and seeds generation); a recipe's distill_on="generated" falls back to "all"
    (moot) when the distillation weight given is 0, while an explicit distill_on="generated" with weight 0 is refused
    later, as before."""
    if recipe not in RECIPES:
        raise AgoraError(f"recipe must be one of {sorted(RECIPES)} (see docs/agora.md), got {recipe!r}")
    unknown = set(given) - set(RECIPES[recipe])
    if unknown:
        raise AgoraError(f"not a recipe option: {sorted(unknown)}")
    out = {k: ([dict(x) for x in v] if k == "settings" else v) for k, v in RECIPES[recipe].items()}
    out.update({k: v for k, v in given.items() if v is not None})
    if out["select_fraction"] == 0:
        out["select_fraction"] = None
    if given.get("distill_on") is None and not out["distill_weight"]:
        out["distill_on"] = "all"
    return out


def parse_settings(text: Optional[str]) -> list[dict]:
    """Θ from the command line: a JSON list of objects, a path to a JSON file holding one, or
    'lr=2e-4,epochs=8;lr=4e-4,epochs=4'. None gives DEFAULT_SETTINGS."""
    if text is None:
        return [dict(s) for s in DEFAULT_SETTINGS]
    text = text.strip()
    if text.startswith("["):
        try:
            settings = json.loads(text)
        except json.JSONDecodeError as e:
            raise AgoraError(f"Θ given as JSON is not valid JSON ({e}): {text!r}") from e
    elif Path(text).is_file():
        settings = read_json(text, AgoraError)
    else:
        settings = [_parse_setting(part) for part in filter(None, (p.strip() for p in text.split(";")))]
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
        raise AgoraError(f"Θ must be a list of settings (objects), got {text!r}")
    return settings


def _parse_setting(part: str) -> dict:
    """'lr=2e-4,epochs=8' -> {"lr": 0.0002, "epochs": 8.0} (batch_size an int, every other value a float)."""
    setting = {}
    for item in filter(None, (i.strip() for i in part.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise AgoraError(f"a setting is key=value pairs separated by commas, got {item!r} in {part!r}")
        kind = int if key == "batch_size" else float
        try:
            setting[key] = kind(value)
        except ValueError:
            raise AgoraError(f"the value of {key} in {part!r} must be a{'n integer' if kind is int else ' number'}, "
                             f"got {value!r}") from None
    return setting


def scarce_subset(examples: Sequence[Any], n: Optional[int], seed: int) -> list:
    """n examples drawn without replacement, stratified by label (each class in proportion, rounded), with seed;
    in split order (tasks.stratified_sample). Not the first n: the committed RT train split lists its rows by
    label, so its first 500 are all positive (training.FinetuneConfig.train_limit takes the first n)."""
    if n is None or n >= len(examples):
        return list(examples)
    return [examples[i] for i in stratified_sample([e.label for e in examples], n, seed)]


def slice_student(arch: str = "4,8,256,512", teacher: Optional[str] = None):
    """A student of arch cut from the teacher (default all-MiniLM-L6-v2) by importance (training.slice_init), with
    the teacher's tokenizer directory. Deterministic. Imports torch. Returns (student, tokenizer_dir)."""
    from bortengine.architecture import Architecture
    from bortengine.training.slicing import slice_init
    from bortengine.training.teacher import default_teacher_path, teacher_bundle

    bundle = teacher_bundle(str(teacher or default_teacher_path()))
    student, _ = slice_init(Architecture.parse(arch), bundle.model, bundle.importance)
    return student, bundle.directory


def finetune_agora(labeller: str, out_dir: str, model: Optional[str] = None, arch: Optional[str] = "4,8,256,512",
                   task: "str | DataSpec" = "rt", train_limit: Optional[int] = None, seed: int = 0,
                   settings: Optional[Sequence[Mapping[str, Any]]] = None, rounds: Optional[int] = None,
                   per_mistake: Optional[int] = None, max_new_per_round: Optional[int] = None,
                   transformation: str = "neighbours", fraction: Optional[float] = None, neighbours: int = 8,
                   mlm_model: Optional[str] = None, max_length: Optional[int] = None, threads: Optional[int] = None,
                   distill_weight: Optional[float] = None, min_confidence: Optional[float] = None,
                   select_fraction: Optional[float] = None, distill_on: Optional[str] = None,
                   recipe: str = "scarce", time_budget: Optional[float] = None, progress: bool = False,
                   runner: Optional[SettingsRunner] = None) -> dict:
    """Agora on a movie-reviews task with a text student, the engine as labeller, and test accuracy of every
    round's student measured after the loop. Writes out_dir/result.json and out_dir/rounds.png.

    recipe: "scarce" (default) or "paper" (RECIPES): the values of settings, per_mistake, fraction, distill_weight,
    distill_on and select_fraction left as None; select_fraction=0: none of dev kept apart.

    model: the student directory, or the teacher to cut `arch` from (default all-MiniLM-L6-v2); arch=None uses
    model as the student. train_limit: a stratified sample of N examples of the train split drawn with seed
    (scarce_subset; None, the default as on the command line: all of it; docs/agora.md's runs took 500 of rt). distill_weight > 0: every student also distils the labeller's soft labels
    (logits, T = 2) on all its training points with this weight (TextClassifierTrainer), round 1 included, so round
    1 stays the baseline with the same trainer; distill_on="generated": only the generated points are distilled
    (the 500 originals keep their gold labels alone), so round 1 is plain fine-tuning. min_confidence,
    select_fraction: AgoraConfig's (the labeller's confidence filter on generated points; the part of dev kept apart
    for selection). time_budget: seconds of wall time for the loop (AgoraConfig.time_budget: no round is started
    that is estimated to end after it). runner: where each round's fine-tunes run (run_agora's; default in this
    process; search.settings_runner("ray", address) for a Ray cluster). Bad options raise AgoraError before
    anything is loaded."""
    options = resolve_recipe(recipe, settings=settings, per_mistake=per_mistake, fraction=fraction,
                             distill_weight=distill_weight, distill_on=distill_on, select_fraction=select_fraction)
    _check_options(options, min_confidence)       # before minutes of loading, not after
    started = time.perf_counter()
    data = _task(task, train_limit, seed)
    train, dev, test = data.train, data.dev, data.test
    if options["select_fraction"] is not None:     # a class too rare for the split: said now, not after loading
        stratified_split(np.array([e.label for e in dev]), options["select_fraction"], seed, data.labels)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    data.write_splits(out_dir)       # the rows each split took; a run directory of other data is refused here
    student, tokenizer_dir = _student(model, arch)
    if max_length is None:
        from bortengine.training.classification import task_max_length

        max_length = task_max_length(data, tokenizer_dir)
    judge = EngineLabeller(labeller, data.labels, num_threads=threads, max_length=max_length)
    trainer = TextClassifierTrainer(
        student, tokenizer_dir, max_length=max_length, threads=threads,
        teacher=judge if options["distill_weight"] > 0 else None, distill_weight=options["distill_weight"],
        gold_texts=[e.text for e in train] if options["distill_on"] == "generated" else None, labels=data.labels)
    transform = _transformation(transformation, tokenizer_dir, options["fraction"], neighbours, mlm_model, max_length)
    config = _agora_config(options, rounds, max_new_per_round, seed, out_dir, min_confidence, data.labels)
    if time_budget is not None:
        config.time_budget = max(0.0, time_budget - (time.perf_counter() - started))
    labeller_dev = accuracy(judge.predict([e.text for e in dev]), np.array([e.label for e in dev]))
    if labeller_dev < 2 / 3:
        log(f"warning: the labeller's dev accuracy is {labeller_dev:.3f}, below the ~2/3 Agora assumes")
    load_model = functools.partial(load_engine_classifier, label_names=data.labels, max_length=max_length)
    result = run_agora(config, trainer, _points(train), _points(dev), judge, transform,
                       save_model=save_classifier, load_model=load_model, progress=progress, runner=runner)
    loop_seconds = time.perf_counter() - started
    # after the loop: test accuracy of each round's student (round 1 = plain fine-tuning with the Θ search)
    rows = evaluate_rounds(out_dir, _points(test), load_model)
    summary = {
        "task": data.name, "labels": data.labels, "max_length": max_length, "train_examples": len(train), "dev_examples": len(dev), "test_examples": len(test),
        "student": arch or model, "sliced_from": (model or "all-MiniLM-L6-v2") if arch else None,
        "labeller": str(labeller), "labeller_dev_accuracy": labeller_dev, "transformation": transformation,
        "fraction": options["fraction"], "neighbours": neighbours, "seed": seed, "recipe": recipe,
        "per_mistake": options["per_mistake"], "settings": config.settings, "rounds": rows,
        "distill_weight": options["distill_weight"], "distill_on": options["distill_on"],
        "min_confidence": min_confidence, "select_fraction": options["select_fraction"],
        "plain_test_accuracy": rows[0]["test_accuracy"], "agora_test_accuracy": rows[-1]["test_accuracy"],
        "plain_dev_accuracy": rows[0]["dev_accuracy"], "agora_dev_accuracy": rows[-1]["dev_accuracy"],
        "final_train_size": result.train_size, "stopped_by": result.stopped_by, "executor": result.executor,
        "wall_seconds_this_call": loop_seconds,             # the loop (training, generation, labelling, saving)
        "total_seconds_this_call": time.perf_counter() - started,   # + the test scoring after it
    }
    atomic_write_json(Path(out_dir, "result.json"), jsonable(summary), indent=2)
    plot_rounds([rows], Path(out_dir) / "rounds.png", seeds=[seed],
                title=f"Agora on {data.name} ({len(train)} train examples)")
    return summary


def _check_options(options: dict[str, Any], min_confidence: Optional[float]) -> None:
    check_ranges(min_confidence, options["select_fraction"], options["distill_weight"])
    if options["distill_on"] not in ("all", "generated"):
        raise AgoraError(f"distill_on must be 'all' (every training point) or 'generated' (the labeller's points "
                         f"only), got {options['distill_on']!r}")
    if options["distill_on"] == "generated" and not options["distill_weight"] > 0:
        raise AgoraError("distill_on='generated' needs a distillation weight > 0 (--agora-distill W)")


def _task(task: "str | DataSpec", train_limit: Optional[int], seed: int) -> Task:
    """The task: train a stratified scarce sample of train_limit examples drawn with seed (a DataSpec's own
    train_limit and seed when it has one), dev and test whole. Text pairs are refused: the transformations make
    new single texts."""
    spec = DataSpec.of(task, train_limit=train_limit, seed=seed) if not isinstance(task, DataSpec) else task
    if spec.train_limit is None and train_limit is not None:
        from dataclasses import replace

        spec = replace(spec, train_limit=train_limit)
    if spec.text_pair_column:
        raise AgoraError("Agora's transformations make new single texts; a text-pair task is fine-tuned without "
                         "Agora (bortengine finetune without --agora, or bortengine pipeline --no-agora)")
    return load_task(spec)


def _points(examples) -> tuple[list[str], list[int]]:
    return [e.text for e in examples], [e.label for e in examples]


def _student(model: Optional[str], arch: Optional[str]):
    """(student, tokenizer directory): arch cut from model (the teacher), or model itself when arch is None."""
    if arch:
        return slice_student(arch, model)
    if model is None:
        raise AgoraError("give the student directory (model) or an architecture to cut from the teacher (arch)")
    from bortengine.training.teacher import load_teacher

    return load_teacher(model), model


def _transformation(name: str, tokenizer_dir: str, fraction: float, neighbours: int, mlm_model: Optional[str],
                    max_length: int):
    if name == "neighbours":
        return NearestNeighbourSwap.from_model(None, tokenizer_dir, fraction=fraction, k=neighbours,
                                               max_length=max_length)
    if name == "mlm":
        if mlm_model is None:
            raise AgoraError("the 'mlm' transformation needs a masked language model directory (mlm_model); "
                             "all-MiniLM-L6-v2 has no MLM head")
        return MaskedLMFill(mlm_model, tokenizer_dir, fraction=fraction, k=neighbours, max_length=max_length)
    raise AgoraError(f"transformation must be 'neighbours' or 'mlm' for text, got {name!r}")


def _agora_config(options: dict[str, Any], rounds: Optional[int], max_new_per_round: Optional[int], seed: int,
                  out_dir: str, min_confidence: Optional[float], labels: Sequence[str]) -> AgoraConfig:
    trainer_settings = {"distill_weight": options["distill_weight"]} if options["distill_weight"] > 0 else {}
    if options["distill_on"] != "all":
        trainer_settings["distill_on"] = options["distill_on"]
    return AgoraConfig(settings=list(options["settings"]), rounds=rounds, per_mistake=options["per_mistake"],
                       max_new_per_round=max_new_per_round, seed=seed, out_dir=out_dir, num_classes=len(labels),
                       label_names=list(labels), trainer_settings=trainer_settings, min_confidence=min_confidence,
                       select_fraction=options["select_fraction"])
