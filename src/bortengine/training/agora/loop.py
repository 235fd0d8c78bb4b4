"""The Agora loop (de Wynter, arXiv 2010.07990): fine-tuning a small model on scarce data by growing its training set
around the model's own dev mistakes, with points labelled by a second, "ok-ish" model. See docs/agora.md.

The loop (`run_agora`) is generic: points are anything a transformation, a trainer and a labeller agree on (texts
for the movie-reviews task, vectors for non-text data). Each round: fine-tune one student per remaining setting of
Θ and record its dev accuracy; take the best; collect its dev mistakes; make new points near each mistake with the
transformation; label them with the labeller; append them to the training set; sort Θ by accuracy and drop the
worst; stop when Θ is empty or the round budget is spent. The loop never receives the test split: test accuracy is
measured afterwards (report.evaluate_rounds) on the models the rounds saved.

With out_dir, the state after every round (Θ left, the records, the grown training set, the RNG) is written to
out_dir/state.safetensors in the training stage's checkpoint format (never a pickle), and each round's best student
to out_dir/round-k by the caller's save_model; a second call resumes after the last finished round.

A round's fine-tunes are independent of one another, so where they run is the caller's choice: a SettingsRunner
(InProcessRunner, the default: one after another in this process; search.RaySettingsRunner: in parallel on a Ray
cluster, docs/scale-out.md) gets the round's work and returns each setting's result and the best's model.

Torch-free. Shapes: N = points, L = labels, F = features of a vector point.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import numpy as np

from bortengine.progress import Progress
from bortengine.training.checkpoint import AGORA_STATE_FILE, read_checkpoint, refuse_old_files, write_checkpoint
from bortengine.training.errors import TrainingError

__all__ = [
    "AgoraError", "AgoraConfig", "AgoraResult", "RoundRecord", "run_agora", "accuracy", "Labeller", "Trainer",
    "Transformation", "DEFAULT_SETTINGS", "STATE_FILE", "check_ranges", "log",
    "SettingRun", "RoundWork", "SettingResult", "SettingsRunner", "InProcessRunner", "fit_setting", "best_position",
]

STATE_FILE = AGORA_STATE_FILE
# below this agreement between the labeller and the gold labels of the mistakes the new points were made from,
# a round says so: more than a third relabelled means the transformation or the labeller is changing the task
RELABELLED_WARNING = 2 / 3

# Θ of the generic loop when none is given (AgoraConfig, parse_settings(None)): learning rate x epochs. Each round
# trains every remaining setting, so |Θ| settings cost |Θ|(|Θ|+1)/2 fine-tunes over |Θ| rounds. The text recipes
# use the smaller Θ of the measured runs (recipes.py).
DEFAULT_SETTINGS: tuple[dict, ...] = (
    {"lr": 2e-4, "epochs": 8},
    {"lr": 4e-4, "epochs": 8},
    {"lr": 1e-4, "epochs": 8},
    {"lr": 4e-4, "epochs": 4},
)


class AgoraError(TrainingError):
    """Agora cannot run as asked: empty Θ, labels that do not match the task, a degenerate dev set, a state file of
    another run."""


class Labeller(Protocol):
    def predict(self, points: Sequence[Any]) -> np.ndarray: ...   # [N] class ids of the task


class Trainer(Protocol):
    def fit(self, setting: Mapping[str, Any], points: Sequence[Any], labels: np.ndarray, seed: int,
            dev: Optional[tuple[Sequence[Any], np.ndarray]] = None) -> Any: ...   # a model with predict()


Transformation = Callable[[Sequence[Any], np.random.Generator, int], Sequence[Sequence[Any]]]


@dataclass
class AgoraConfig:
    settings: Sequence[Mapping[str, Any]] = DEFAULT_SETTINGS   # Θ: hyper-parameter settings given to the trainer
    rounds: Optional[int] = None       # round budget; None: until Θ is empty (|Θ| rounds when drop = 1)
    drop: int = 1                      # settings dropped (the worst) after each round
    per_mistake: int = 4               # new points asked of the transformation for each dev mistake
    max_new_per_round: Optional[int] = None   # cap on the points added per round (a seeded random subset)
    seed: int = 0
    out_dir: Optional[str] = None      # state.safetensors (resume), rounds.jsonl, round-k/ (that round's best model)
    num_classes: Optional[int] = None  # default: from the train and dev labels
    label_names: Optional[Sequence[str]] = None   # the task's label names, checked against a labeller's `labels`
    trainer_settings: Mapping[str, Any] = field(default_factory=dict)   # recorded (and fingerprinted) only
    # keep a generated point only if the labeller's largest class probability is at least this (the labeller needs
    # logits(points) -> [N, L]); None: keep every point
    min_confidence: Optional[float] = None
    # a stratified, seeded fraction of dev kept apart to rank Θ, pick each round's best student (and, through the
    # trainer's dev argument, its epoch); the mistakes that seed generation are collected on the rest of dev, so the
    # selection part never has points generated around it. None: all of dev does both (the paper's loop)
    select_fraction: Optional[float] = None
    # seconds of wall time from the call of run_agora: a round is made the last when the next one, estimated from
    # this one's time scaled by the settings and training points it would have, would end after it. Not part of
    # the run's identity: a resumed run may have another budget
    time_budget: Optional[float] = None

    _UNSET_NOT_FINGERPRINTED = ("trainer_settings", "min_confidence", "select_fraction")   # runs from before them

    def fingerprint(self) -> str:
        keys = {k: v for k, v in asdict(self).items()
                if k not in ("out_dir", "time_budget") and not (k in self._UNSET_NOT_FINGERPRINTED and not v)}
        return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RoundRecord:
    round: int                   # 1-based
    settings_trained: list[dict]  # Θ at the start of the round, with each setting's dev accuracy
    best_setting: dict
    train_size: int              # training points this round's students saw
    dev_accuracy: float          # of the best student
    dev_mistakes: int
    generated: int               # new points added after this round (0 in the last round: nothing would use them)
    label_agreement: Optional[float]   # fraction of generated points whose label = the gold label of their mistake
    theta_left: int              # settings left after dropping the worst
    seconds: float
    note: str = ""
    test_accuracy: Optional[float] = None   # filled afterwards by evaluate_rounds, never by the loop
    unconfident: int = 0         # generated points dropped for the labeller's low confidence (min_confidence)
    mistake_dev_accuracy: Optional[float] = None   # with select_fraction: the best student's accuracy on the part
    #                                                of dev whose mistakes seed generation (dev_accuracy: the other)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AgoraResult:
    rounds: list[RoundRecord]
    model: Any                   # the best student of the last round
    train_size: int
    stopped_by: str              # "theta empty" or "round budget"
    config: dict = field(default_factory=dict)
    executor: str = ""           # where the fine-tunes of this call ran (SettingsRunner.describe)

    @property
    def final(self) -> RoundRecord:
        return self.rounds[-1]

    def to_dict(self) -> dict:
        return {"rounds": [r.to_dict() for r in self.rounds], "train_size": self.train_size,
                "stopped_by": self.stopped_by, "config": self.config, "executor": self.executor}


def accuracy(predicted: np.ndarray, gold: np.ndarray) -> float:
    """Fraction of predicted class ids equal to the gold ones (NaN for no points)."""
    predicted, gold = np.asarray(predicted), np.asarray(gold)
    return float((predicted == gold).mean()) if len(gold) else float("nan")


def log(message: str) -> None:
    print(f"agora: {message}", file=sys.stderr, flush=True)


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# -- checks --------------------------------------------------------------------------------------------------------
def check_labels(name: str, labels: np.ndarray, num_classes: int, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise AgoraError(f"{name} returned labels of shape {labels.shape}, expected ({n},): one class id per point")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and n and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        elif n:
            raise AgoraError(f"{name} returned {labels.dtype} labels (e.g. {labels[:3].tolist()}); Agora needs the "
                             f"task's class ids 0..{num_classes - 1}")
        else:
            labels = labels.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise AgoraError(f"{name} returned class ids {sorted(set(bad.tolist()))[:5]} outside the task's "
                         f"0..{num_classes - 1}: its labels do not match the task")
    return labels.astype(np.int64)


def check_ranges(min_confidence: Optional[float] = None, select_fraction: Optional[float] = None,
                 distill_weight: Optional[float] = None) -> None:
    """The options' ranges, checked before anything is loaded (finetune_agora) and again by the loop."""
    if min_confidence is not None and not 0.0 < min_confidence <= 1.0:  # NaN fails too
        raise AgoraError(f"min_confidence must lie in (0, 1] (the labeller's largest class probability), got "
                         f"{min_confidence}")
    if select_fraction is not None and not 0.0 < select_fraction < 1.0:
        raise AgoraError(f"select_fraction must lie in (0, 1) (the part of dev kept apart for selection), got "
                         f"{select_fraction}")
    if distill_weight is not None and not 0.0 <= distill_weight <= 1.0:  # NaN fails too
        raise AgoraError(f"distill_weight (the distillation weight) must lie in [0, 1] (0: none; the loss is "
                         f"(1 - w) · CE + w · T² · KL), got {distill_weight}")


def _check_config(config: AgoraConfig, save_model: Optional[Callable]) -> list[dict]:
    settings = [dict(s) for s in config.settings]
    if not settings:
        raise AgoraError("Θ is empty: give at least one hyper-parameter setting (e.g. [{'lr': 2e-4, 'epochs': 8}])")
    if config.drop < 1:
        raise AgoraError(f"drop must be >= 1 (settings removed per round), got {config.drop}")
    if config.rounds is not None and config.rounds < 1:
        raise AgoraError(f"the round budget must be >= 1, got {config.rounds}")
    if config.out_dir and save_model is None:
        raise AgoraError("with out_dir, run_agora needs save_model(model, directory) (and load_model(directory) to "
                         "bring a finished run's student back): each round's best student is kept there, as an HF "
                         "directory or arrays, never pickled (agora.save_classifier for text students)")
    return settings


def _check_data(train: tuple[Sequence[Any], Sequence[int]], dev: tuple[Sequence[Any], Sequence[int]]):
    train_points, train_labels = list(train[0]), np.asarray(train[1], dtype=np.int64)
    dev_points, dev_labels = list(dev[0]), np.asarray(dev[1], dtype=np.int64)
    if len(train_points) != len(train_labels) or len(dev_points) != len(dev_labels):
        raise AgoraError(f"points and labels differ in length: train {len(train_points)} vs {len(train_labels)}, "
                         f"dev {len(dev_points)} vs {len(dev_labels)}")
    if not train_points:
        raise AgoraError("the training set is empty")
    if not dev_points:
        raise AgoraError("the dev set is empty: Agora ranks Θ and finds mistakes on dev")
    dev_classes = np.unique(dev_labels)
    if len(dev_classes) < 2:
        raise AgoraError(f"the dev set has a single class ({int(dev_classes[0])}): accuracy on it cannot rank the "
                         f"settings (a constant predictor scores 1.0) and its mistakes say nothing about the other "
                         f"class; use a stratified dev split")
    return train_points, train_labels, dev_points, dev_labels


def _check_labeller(labeller: Any, config: AgoraConfig, num_classes: int) -> None:
    if config.label_names is not None and len(config.label_names) != num_classes:
        raise AgoraError(f"label_names has {len(config.label_names)} names for {num_classes} classes")
    if not callable(getattr(labeller, "predict", None)):
        raise AgoraError(f"the labeller must have a predict(points) method, got {type(labeller).__name__}")
    names = getattr(labeller, "labels", None)
    if names is not None and config.label_names is not None and list(names) != list(config.label_names):
        raise AgoraError(f"the labeller's labels {list(names)} do not match the task's {list(config.label_names)}"
                         f" (same names, same order needed)")
    if config.min_confidence is not None:
        check_ranges(min_confidence=config.min_confidence)
        if not callable(getattr(labeller, "logits", None)):
            raise AgoraError(f"min_confidence needs a labeller with logits(points) -> [N, classes] (its "
                             f"confidence); {type(labeller).__name__} has only predict")


def stratified_split(labels: np.ndarray, fraction: float, seed: int,
                     names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Sorted indices of a stratified, seeded `fraction` of the points (each class in proportion, at least one of
    each and at least one left over per class). Its own RNG stream: the loop's (transformation, caps) is unchanged.
    names: the class names, for the error."""
    check_ranges(select_fraction=fraction)
    rng = np.random.default_rng([seed, 0x5E1EC7])
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = int(round(fraction * len(members)))
        if len(members) < 2 or not 0 < k < len(members):
            name = repr(names[int(c)]) if names is not None and 0 <= c < len(names) else str(int(c))
            raise AgoraError(f"Agora keeps {fraction:.0%} of dev apart to select its models with (select_fraction), "
                             f"and both parts need every class: class {name} has {len(members)} dev example(s). Give "
                             f"more dev examples of it (a --dev file, or more in train, which dev is drawn from), or "
                             f"fine-tune without Agora (`bortengine pipeline --no-agora`)")
        chosen.append(rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(chosen))


def confident_labels(labeller: Any, points: Sequence[Any], num_classes: int,
                     threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The labeller's class ids for points, and which of them it gives a probability >= threshold.

    Shapes: logits [N,L] -> labels [N], confident [N] (bool)."""
    from bortengine.engine import softmax

    logits = np.asarray(labeller.logits(points), dtype=np.float64)
    if logits.shape != (len(points), num_classes):
        raise AgoraError(f"the labeller's logits have shape {logits.shape}, expected ({len(points)}, {num_classes})")
    probs = softmax(logits)
    return probs.argmax(axis=1).astype(np.int64), probs.max(axis=1) >= threshold


# -- the state between rounds -------------------------------------------------------------------------------------
def _points_to_checkpoint(points: Sequence[Any]) -> tuple[Any, dict[str, np.ndarray]]:
    """Training points as checkpoint content: texts in the JSON, vectors of one shape as a tensor [N,F]."""
    if all(isinstance(p, str) for p in points):
        return {"texts": list(points)}, {}
    try:
        vectors = np.stack([np.asarray(p) for p in points])
    except ValueError:
        vectors = None
    if vectors is None or vectors.dtype.kind not in "biuf":
        raise AgoraError(f"Agora keeps its training points in out_dir/{STATE_FILE} as texts or numeric vectors of "
                         f"one shape; these ({type(points[0]).__name__}, ...) are neither: run without out_dir, or "
                         f"give points of those kinds")
    return {"vectors": True}, {"train/points": vectors}


def _points_from_checkpoint(saved: dict, tensors: dict[str, np.ndarray]) -> list:
    return list(saved["texts"]) if "texts" in saved else list(tensors["train/points"])


@dataclass
class _Progress:
    """What a resume needs: Θ left (with each setting's index in the original Θ), the rounds, the grown training
    set, the RNG."""

    theta: list[tuple[int, dict]]
    records: list[RoundRecord]
    train_points: list
    train_labels: np.ndarray
    rng: np.random.Generator

    def save(self, path: Path, config: AgoraConfig, train0: int, dev: int) -> None:
        points, tensors = _points_to_checkpoint(self.train_points)
        state = {"fingerprint": config.fingerprint(), "train0": train0, "dev": dev,
                 "theta": [[i, s] for i, s in self.theta], "records": [r.to_dict() for r in self.records],
                 "points": points, "rng": self.rng.bit_generator.state}
        write_checkpoint(path, "agora", state, {**tensors, "train/labels": self.train_labels})

    def load(self, path: Path, config: AgoraConfig, train0: int, dev: int) -> None:
        checkpoint = read_checkpoint(path, "agora")
        state = checkpoint.state
        if state["fingerprint"] != config.fingerprint() or state["train0"] != train0 or state["dev"] != dev:
            raise AgoraError(f"{path} was written by a different Agora run (config, train or dev differ); "
                             f"use another out_dir or delete it")
        self.theta = [(int(i), dict(s)) for i, s in state["theta"]]
        self.records = [RoundRecord(**r) for r in state["records"]]
        self.train_points = _points_from_checkpoint(state["points"], checkpoint.tensors)
        self.train_labels = np.array(checkpoint.tensors["train/labels"], dtype=np.int64)
        self.rng.bit_generator.state = state["rng"]


# -- where a round's fine-tunes run --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SettingRun:
    """One fine-tune of a round: setting `index` of the original Θ (which also seeds it: `seed`)."""

    index: int
    setting: dict
    seed: int


@dataclass
class RoundWork:
    """What every fine-tune of a round reads: the round's training set, the selection part of dev (it ranks the
    settings and, as the trainer's dev, picks each one's epoch) and the task's number of classes.

    Shapes: train (N points, labels [N]); select (M points, labels [M])."""

    round: int
    train: tuple[list, np.ndarray]
    select: tuple[list, np.ndarray]
    num_classes: int


@dataclass
class SettingResult:
    """One fine-tune's outcome: its dev accuracy (on the selection part), its class ids there, where it ran
    ("local": this process; else the Ray node's id) and its seconds.

    Shapes: prediction [M]."""

    index: int
    setting: dict
    accuracy: float
    prediction: np.ndarray
    node: str = "local"
    seconds: float = 0.0


class SettingsRunner(Protocol):
    """Runs a round's fine-tunes (independent of one another) and hands back every result, in the order of `runs`,
    with the model of the best (best_position). capacity: how many it runs at a time (the time budget's estimate).
    on_result(result) is called in the driving process as each one finishes (progress, log)."""

    capacity: int

    def run_round(self, trainer: Trainer, runs: Sequence[SettingRun], work: RoundWork,
                  on_result: Callable[[SettingResult], None]) -> tuple[list[SettingResult], Any]: ...

    def describe(self) -> str: ...   # where the fine-tunes run, in a line (the run's result records it)


def fit_setting(trainer: Trainer, run: SettingRun, work: RoundWork) -> tuple[Any, SettingResult]:
    """Fine-tune one student and score it on the selection part of dev: (model, result). Where it runs, only the
    caller knows: the result says "local"."""
    start = time.perf_counter()
    points, gold = work.select
    model = trainer.fit(run.setting, work.train[0], work.train[1], seed=run.seed, dev=work.select)
    prediction = check_labels("the student", model.predict(points), work.num_classes, len(points))
    return model, SettingResult(run.index, run.setting, accuracy(prediction, gold), prediction,
                                seconds=time.perf_counter() - start)


def best_position(results: Sequence[SettingResult]) -> int:
    """Where the round's best result stands: the highest dev accuracy, ties going to the earlier setting."""
    best = 0
    for k, result in enumerate(results):
        if result.accuracy > results[best].accuracy:
            best = k
    return best


class InProcessRunner:
    """The round's fine-tunes one after another in this process, with the trainer as given (the default: how the
    loop has always run them): only the best model so far is kept in memory."""

    capacity = 1

    def run_round(self, trainer: Trainer, runs: Sequence[SettingRun], work: RoundWork,
                  on_result: Callable[[SettingResult], None]) -> tuple[list[SettingResult], Any]:
        results, best_model = [], None
        for run in runs:
            model, result = fit_setting(trainer, run, work)
            results.append(result)
            on_result(result)
            if best_position(results) == len(results) - 1:
                best_model = model
        return results, best_model

    def describe(self) -> str:
        return "local: in this process, one setting after another"

    def close(self) -> None:
        pass

    def __enter__(self) -> "InProcessRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- the loop ------------------------------------------------------------------------------------------------------
@dataclass
class _RoundBest:
    model: Any
    accuracy: float
    setting: dict
    prediction: np.ndarray       # [N] its class ids on the selection part of dev


class _AgoraRun:
    """One call of run_agora: the checked inputs, the progress so far, and each step of a round."""

    def __init__(self, config: AgoraConfig, trainer: Trainer, train, dev, labeller: Labeller,
                 transformation: Transformation, save_model: Optional[Callable[[Any, Path], None]],
                 runner: SettingsRunner):
        settings = _check_config(config, save_model)
        train_points, train_labels, dev_points, dev_labels = _check_data(train, dev)
        self.num_classes = config.num_classes or int(max(train_labels.max(), dev_labels.max())) + 1
        _check_labeller(labeller, config, self.num_classes)
        self.config, self.trainer, self.labeller, self.transformation = config, trainer, labeller, transformation
        self.save_model, self.runner = save_model, runner
        self.train0, self.dev_size = len(train_points), len(dev_points)
        # select_*: ranks Θ and picks the best student (and its epoch); mistake_*: the mistakes that seed generation
        self.select = self.mistake = (dev_points, dev_labels)
        if config.select_fraction is not None:
            chosen = stratified_split(dev_labels, config.select_fraction, config.seed, config.label_names)
            rest = np.setdiff1d(np.arange(len(dev_labels)), chosen)
            self.select = ([dev_points[i] for i in chosen], dev_labels[chosen])
            self.mistake = ([dev_points[i] for i in rest], dev_labels[rest])
        # (index in the original Θ, setting): the index seeds its fine-tunes
        self.progress = _Progress(list(enumerate(settings)), [], train_points, train_labels,
                                  np.random.default_rng(config.seed))
        self.out = Path(config.out_dir) if config.out_dir else None
        self.started, self.out_of_time = time.monotonic(), False
        self.bar: Optional[Progress] = None

    def resume(self) -> None:
        if self.out is None:
            return
        refuse_old_files(self.out, ("state.pkl", "model.pkl"))
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / STATE_FILE
        if path.is_file():
            self.progress.load(path, self.config, self.train0, self.dev_size)
            p = self.progress
            log(f"resumed {path} after round {len(p.records)} (Θ left {len(p.theta)}, "
                f"{len(p.train_points)} training points)")

    def finished(self) -> Optional[str]:
        if not self.progress.theta:
            return "theta empty"
        if self.config.rounds is not None and len(self.progress.records) >= self.config.rounds:
            return "round budget"
        if self.out_of_time:
            return "time budget"
        return None

    def fine_tunes_left(self) -> int:
        """Fine-tunes of the rounds to come: Θ shrinks by `drop` settings a round (within the round budget)."""
        left, n, r = 0, len(self.progress.theta), len(self.progress.records)
        while n > 0 and (self.config.rounds is None or r < self.config.rounds):
            left, n, r = left + n, n - max(1, self.config.drop), r + 1
        return left

    def next_round_fits(self, seconds: float, settings_now: int, settings_next: int, points_next: int) -> bool:
        """Whether a round of settings_next fine-tunes on points_next points ends within the time budget, estimated
        from this round (seconds for settings_now fine-tunes on the points it had): fine-tuning time grows with
        both, the settings counted in waves of the runner's capacity (one at a time in this process)."""
        if self.config.time_budget is None:
            return True
        capacity = max(1, self.runner.capacity)
        waves_next, waves_now = math.ceil(settings_next / capacity), math.ceil(settings_now / capacity)
        scale = (waves_next / max(1, waves_now)) * (points_next / max(1, len(self.progress.train_points)))
        return time.monotonic() - self.started + seconds * scale <= self.config.time_budget

    def train_settings(self, r: int) -> tuple[_RoundBest, list[SettingResult]]:
        """Fine-tune one student per setting left in Θ, on the runner: the best on the selection part of dev (ties:
        the earlier), and every setting's result in Θ's order."""
        p = self.progress
        runs = [SettingRun(index, setting, self.config.seed * 1000 + index) for index, setting in p.theta]
        work = RoundWork(r, (p.train_points, p.train_labels), self.select, self.num_classes)

        def finished(result: SettingResult) -> None:
            if self.bar is not None:
                self.bar.step(f"round {r} setting {result.index}")
            where = "" if result.node == "local" else f" on node {result.node[:12]}"
            log(f"round {r}: setting {result.index} {result.setting} dev accuracy {result.accuracy:.4f} "
                f"({len(p.train_points)} train points{where})")

        results, model = self.runner.run_round(self.trainer, runs, work, finished)
        best = results[best_position(results)]
        return _RoundBest(model, best.accuracy, best.setting, best.prediction), results

    def mistakes(self, best: _RoundBest) -> tuple[np.ndarray, Optional[float]]:
        """Indices of the best student's mistakes on the generation part of dev, and its accuracy there (None
        when it is all of dev: the selection accuracy says it)."""
        points, gold = self.mistake
        if self.mistake is self.select:
            return np.flatnonzero(best.prediction != gold), None
        pred = check_labels("the student", best.model.predict(points), self.num_classes, len(points))
        return np.flatnonzero(pred != gold), accuracy(pred, gold)

    def generate(self, r: int, mistakes: np.ndarray) -> tuple[list, np.ndarray, list, int, str]:
        """New points near the mistakes, labelled: (points, labels, their mistakes, dropped as unconfident, note)."""
        config, rng = self.config, self.progress.rng
        sources = [self.mistake[0][i] for i in mistakes]
        produced = self.transformation(sources, rng, config.per_mistake)
        if produced is None or len(produced) != len(sources):
            raise AgoraError(f"the transformation must return one list of new points per input point "
                             f"({len(sources)}), got {None if produced is None else len(produced)}")
        new_points, origin = [], []
        for k, group in enumerate(produced):
            for point in (group or ()):
                new_points.append(point)
                origin.append(mistakes[k])
        if config.max_new_per_round is not None and len(new_points) > config.max_new_per_round:
            keep = np.sort(rng.choice(len(new_points), config.max_new_per_round, replace=False))
            new_points, origin = [new_points[i] for i in keep], [origin[i] for i in keep]
        if not new_points:
            note = (f"the transformation returned no points for the {len(mistakes)} mistakes; the training set "
                    f"is unchanged this round")
            log(f"round {r}: {note}")
            return [], np.zeros(0, np.int64), [], 0, note
        if config.min_confidence is None:
            labels = check_labels("the labeller", self.labeller.predict(new_points), self.num_classes,
                                  len(new_points))
            return new_points, labels, origin, 0, ""
        labels, confident = confident_labels(self.labeller, new_points, self.num_classes, config.min_confidence)
        unconfident = int((~confident).sum())
        new_points = [p for p, keep in zip(new_points, confident) if keep]
        labels, origin = labels[confident], [o for o, keep in zip(origin, confident) if keep]
        log(f"round {r}: {unconfident} generated points below the labeller confidence {config.min_confidence} "
            f"dropped, {len(new_points)} kept")
        note = "" if new_points else (f"the labeller was below confidence {config.min_confidence} on all "
                                      f"{unconfident} generated points; the training set is unchanged this round")
        return new_points, labels, origin, unconfident, note

    def run_round(self) -> Any:
        """One round: train Θ, pick the best, grow the training set around its mistakes, drop the worst setting."""
        config, p = self.config, self.progress
        r, start = len(p.records) + 1, time.perf_counter()
        best, scored = self.train_settings(r)
        mistakes, mistake_acc = self.mistakes(best)
        ranked = [(s.index, s.setting) for s in sorted(scored, key=lambda s: -s.accuracy)]
        theta_next = ranked[:max(0, len(p.theta) - config.drop)]
        last = not theta_next or (config.rounds is not None and r >= config.rounds)
        if not last and not self.next_round_fits(time.perf_counter() - start, len(p.theta), len(theta_next),
                                                 len(p.train_points) + self.expected_new(mistakes)):
            last = self.out_of_time = True
            log(f"round {r}: the next round would not end within the time budget ({config.time_budget:.0f} s): "
                f"this round is the last")
        generated, agreement, unconfident = 0, None, 0
        if last:
            note = "last round: no points generated (no later round would train on them)"
        elif not len(mistakes):
            note = "no dev mistakes: nothing to generate"
        else:
            new_points, new_labels, origin, unconfident, note = self.generate(r, mistakes)
            if new_points:
                agreement = accuracy(new_labels, self.mistake[1][np.asarray(origin)])
                p.train_points = p.train_points + new_points
                p.train_labels = np.concatenate([p.train_labels, new_labels])
                generated = len(new_points)
        record = RoundRecord(
            round=r, settings_trained=[{"index": s.index, "setting": s.setting, "dev_accuracy": s.accuracy,
                                        "node": s.node, "seconds": s.seconds} for s in scored],
            best_setting=best.setting, train_size=len(p.train_points) - generated, dev_accuracy=best.accuracy,
            dev_mistakes=int(len(mistakes)), generated=generated, label_agreement=agreement,
            theta_left=len(theta_next), seconds=time.perf_counter() - start, note=note, unconfident=unconfident,
            mistake_dev_accuracy=mistake_acc)
        p.records.append(record)
        p.theta = theta_next
        log(f"round {r}: best {best.setting} dev {best.accuracy:.4f}, {len(mistakes)} mistakes, +{generated} points "
            f"(label agreement {'-' if agreement is None else f'{agreement:.3f}'}), Θ left {len(p.theta)}")
        if agreement is not None and agreement < RELABELLED_WARNING:
            log(f"round {r}: note: the labeller gave {1 - agreement:.0%} of the {generated} new points another label "
                f"than the dev example each was made from: the words the transformation swaps often flip the "
                f"class (lower --replace-fraction), or the labeller is weak on these texts (its dev accuracy is "
                f"logged above); the new points keep the labeller's labels")
        self.save_round(best.model, record)
        return best.model

    def expected_new(self, mistakes) -> int:
        """The points a round would add around these mistakes (before the labeller's confidence filter)."""
        n = len(mistakes) * self.config.per_mistake
        return n if self.config.max_new_per_round is None else min(n, self.config.max_new_per_round)

    def save_round(self, model: Any, record: RoundRecord) -> None:
        if self.out is None:
            return
        self.save_model(model, self.out / f"round-{record.round}")
        with open(self.out / "rounds.jsonl", "a") as f:
            f.write(json.dumps(record.to_dict()) + "\n")
        self.progress.save(self.out / STATE_FILE, self.config, self.train0, self.dev_size)


def run_agora(config: AgoraConfig, trainer: Trainer, train: tuple[Sequence[Any], Sequence[int]],
              dev: tuple[Sequence[Any], Sequence[int]], labeller: Labeller, transformation: Transformation,
              save_model: Optional[Callable[[Any, Path], None]] = None,
              load_model: Optional[Callable[[Path], Any]] = None, progress: bool = False,
              runner: Optional[SettingsRunner] = None) -> AgoraResult:
    """The Agora loop. train and dev are (points, labels); labels are class ids 0..num_classes-1.

    trainer.fit(setting, points, labels, seed, dev) -> a model with predict(points) -> [N] class ids.
    save_model(model, dir) / load_model(dir): how each round's best student is kept in out_dir/round-k (needed
    with out_dir; agora.save_classifier / load_engine_classifier for text students); load_model brings back the
    final student when a finished run is called again (without it the result's model is None then).
    With out_dir, the state after every round is written to out_dir/state.safetensors; calling run_agora again
    with the same config and out_dir resumes after the last finished round (a state from another config is
    refused, and so is a run directory of an older bortengine, whose state was a pickle).
    progress: a bar over the fine-tunes left (each round trains every setting left in Θ), with time left.
    runner: where each round's fine-tunes run (SettingsRunner; default InProcessRunner: one after another in this
    process, as always). Whichever ran a round, the state written after it is the same, so a run resumes on any
    runner; each setting's record says where it ran (`node`). The caller closes a runner it made.
    """
    runner = runner or InProcessRunner()
    run = _AgoraRun(config, trainer, train, dev, labeller, transformation, save_model, runner)
    run.resume()
    if progress:
        run.bar = Progress(run.fine_tunes_left(), "agora")
    model = None
    while run.finished() is None:
        model = run.run_round()
    records = run.progress.records
    if model is None and run.out is not None and records and load_model is not None:   # a finished run again
        model = load_model(run.out / f"round-{records[-1].round}")
    result = AgoraResult(records, model, len(run.progress.train_points), run.finished() or "",
                         config=jsonable(asdict(config)), executor=runner.describe())
    if run.out:
        (run.out / "agora.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
