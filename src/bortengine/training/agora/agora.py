"""Agora (de Wynter, arXiv 2010.07990): fine-tuning a small model on scarce data by growing its training set around
the model's own dev mistakes, with points labelled by a second, "ok-ish" model. See docs/agora.md.

The loop (`run_agora`) is generic: points are anything a transformation, a trainer and a labeller agree on (texts
for the movie-reviews task, vectors for non-text data). Each round: fine-tune one student per remaining setting of
Θ and record its dev accuracy; take the best; collect its dev mistakes; make new points near each mistake with the
transformation; label them with the labeller; append them to the training set; sort Θ by accuracy and drop the
worst; stop when Θ is empty or the round budget is spent. The loop never receives the test split: test accuracy is
measured afterwards (`evaluate_rounds`) on the models the rounds saved.

Transformations (pluggable; any callable `(points, rng, n) -> list of lists of new points`):
  - NearestNeighbourSwap: replace a fraction of the words with nearest neighbours in the teacher's word-embedding
    space (cosine), one of the k nearest at random;
  - MaskedLMFill: the same positions filled with a masked language model's top predictions (when one exists);
  - GaussianNoise: for non-text data, Gaussian samples around the point in a representation space.

Importing this module does not import torch; the text trainer, the slice-initialised student and the transformations
that need a model import it when built.

Shapes: N = points, L = labels, V = vocabulary, E = word-embedding width, F = features of a vector point.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import numpy as np

from bortengine.errors import BortEngineError

__all__ = [
    "AgoraError", "AgoraConfig", "AgoraResult", "RoundRecord", "run_agora", "evaluate_rounds", "accuracy",
    "Labeller", "Trainer", "Transformation",
    "NearestNeighbourSwap", "MaskedLMFill", "GaussianNoise",
    "EngineLabeller", "TextClassifierTrainer", "slice_student", "scarce_subset", "finetune_agora", "DEFAULT_SETTINGS",
    "RECIPES", "resolve_recipe", "plot_rounds", "parse_settings", "summarize", "save_classifier", "load_engine_classifier",
    "main",
]

# Θ of the generic loop when none is given (AgoraConfig, parse_settings(None)): learning rate x epochs. Each round
# trains every remaining setting, so |Θ| settings cost |Θ|(|Θ|+1)/2 fine-tunes over |Θ| rounds. The text recipes
# below use the smaller Θ of the measured runs.
DEFAULT_SETTINGS: tuple[dict, ...] = (
    {"lr": 2e-4, "epochs": 8},
    {"lr": 4e-4, "epochs": 8},
    {"lr": 1e-4, "epochs": 8},
    {"lr": 4e-4, "epochs": 4},
)


class AgoraError(BortEngineError, ValueError):
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
    out_dir: Optional[str] = None      # state.pkl (resume), rounds.jsonl, round-k/ (that round's best model)
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

    _UNSET_NOT_FINGERPRINTED = ("trainer_settings", "min_confidence", "select_fraction")   # runs from before them

    def fingerprint(self) -> str:
        keys = {k: v for k, v in asdict(self).items()
                if k != "out_dir" and not (k in self._UNSET_NOT_FINGERPRINTED and not v)}
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

    @property
    def final(self) -> RoundRecord:
        return self.rounds[-1]

    def to_dict(self) -> dict:
        return {"rounds": [r.to_dict() for r in self.rounds], "train_size": self.train_size,
                "stopped_by": self.stopped_by, "config": self.config}


def accuracy(predicted: np.ndarray, gold: np.ndarray) -> float:
    predicted, gold = np.asarray(predicted), np.asarray(gold)
    return float((predicted == gold).mean()) if len(gold) else float("nan")


def _log(message: str) -> None:
    print(f"agora: {message}", file=sys.stderr, flush=True)


def _check_labels(name: str, labels: np.ndarray, num_classes: int, n: int) -> np.ndarray:
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


def _check_labeller(labeller: Any, config: AgoraConfig) -> None:
    if not callable(getattr(labeller, "predict", None)):
        raise AgoraError(f"the labeller must have a predict(points) method, got {type(labeller).__name__}")
    names = getattr(labeller, "labels", None)
    if names is not None and config.label_names is not None and list(names) != list(config.label_names):
        raise AgoraError(f"the labeller's labels {list(names)} do not match the task's {list(config.label_names)}"
                         f" (same names, same order needed)")


def _atomic_pickle(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f)
    os.replace(tmp, path)


def run_agora(config: AgoraConfig, trainer: Trainer, train: tuple[Sequence[Any], Sequence[int]],
              dev: tuple[Sequence[Any], Sequence[int]], labeller: Labeller, transformation: Transformation,
              save_model: Optional[Callable[[Any, Path], None]] = None,
              load_model: Optional[Callable[[Path], Any]] = None) -> AgoraResult:
    """The Agora loop. train and dev are (points, labels); labels are class ids 0..num_classes-1.

    trainer.fit(setting, points, labels, seed, dev) -> a model with predict(points) -> [N] class ids.
    save_model(model, dir) / load_model(dir): how each round's best student is kept in out_dir/round-k (default:
    pickle); load_model brings back the final student when a finished run is called again.
    With out_dir, the state after every round is written to out_dir/state.pkl; calling run_agora again with the
    same config and out_dir resumes after the last finished round (a state from another config is refused).
    """
    settings = [dict(s) for s in config.settings]
    if not settings:
        raise AgoraError("Θ is empty: give at least one hyper-parameter setting (e.g. [{'lr': 2e-4, 'epochs': 8}])")
    if config.drop < 1:
        raise AgoraError(f"drop must be >= 1 (settings removed per round), got {config.drop}")
    if config.rounds is not None and config.rounds < 1:
        raise AgoraError(f"the round budget must be >= 1, got {config.rounds}")
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
    num_classes = config.num_classes or int(max(train_labels.max(), dev_labels.max())) + 1
    if config.label_names is not None and len(config.label_names) != num_classes:
        raise AgoraError(f"label_names has {len(config.label_names)} names for {num_classes} classes")
    _check_labeller(labeller, config)
    if config.min_confidence is not None:
        _check_ranges(min_confidence=config.min_confidence)
        if not callable(getattr(labeller, "logits", None)):
            raise AgoraError(f"min_confidence needs a labeller with logits(points) -> [N, classes] (its "
                             f"confidence); {type(labeller).__name__} has only predict")
    # select_*: ranks Θ and picks the best student (and its epoch); mistake_*: the mistakes that seed generation
    select_points, select_labels = dev_points, dev_labels
    mistake_points, mistake_labels = dev_points, dev_labels
    if config.select_fraction is not None:
        chosen = _stratified_split(dev_labels, config.select_fraction, config.seed)
        rest = np.setdiff1d(np.arange(len(dev_labels)), chosen)
        select_points, select_labels = [dev_points[i] for i in chosen], dev_labels[chosen]
        mistake_points, mistake_labels = [dev_points[i] for i in rest], dev_labels[rest]

    out = Path(config.out_dir) if config.out_dir else None
    state_path = out / "state.pkl" if out else None
    theta = list(enumerate(settings))     # (index in the original Θ, setting): the index seeds its fine-tunes
    records: list[RoundRecord] = []
    rng = np.random.default_rng(config.seed)
    model = None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    if state_path is not None and state_path.is_file():
        with open(state_path, "rb") as f:
            state = pickle.load(f)
        if state["fingerprint"] != config.fingerprint() or state["train0"] != len(train[0]) \
                or state["dev"] != len(dev_points):
            raise AgoraError(f"{state_path} was written by a different Agora run (config, train or dev differ); "
                             f"use another out_dir or delete it")
        theta, records = state["theta"], [RoundRecord(**r) for r in state["records"]]
        train_points, train_labels = state["train_points"], state["train_labels"]
        rng.bit_generator.state = state["rng"]
        model = state.get("model")
        _log(f"resumed {state_path} after round {len(records)} (Θ left {len(theta)}, "
             f"{len(train_points)} training points)")

    def finished() -> Optional[str]:
        if not theta:
            return "theta empty"
        if config.rounds is not None and len(records) >= config.rounds:
            return "round budget"
        return None

    while finished() is None:
        r = len(records) + 1
        start = time.perf_counter()
        scored = []
        best_model, best_acc, best_pred = None, -1.0, None
        for index, setting in theta:
            m = trainer.fit(setting, train_points, train_labels, seed=config.seed * 1000 + index,
                            dev=(select_points, select_labels))
            pred = _check_labels("the student", m.predict(select_points), num_classes, len(select_points))
            acc = accuracy(pred, select_labels)
            scored.append((acc, index, setting))
            _log(f"round {r}: setting {index} {setting} dev accuracy {acc:.4f} ({len(train_points)} train points)")
            if acc > best_acc:       # ties keep the earlier setting of Θ
                best_model, best_acc, best_pred = m, acc, pred
            else:
                del m
        best_setting = next(s for a, i, s in scored if a == best_acc)
        mistake_acc = None
        if mistake_points is not select_points:
            best_pred = _check_labels("the student", best_model.predict(mistake_points), num_classes,
                                      len(mistake_points))
            mistake_acc = accuracy(best_pred, mistake_labels)
        mistakes = np.flatnonzero(best_pred != mistake_labels)
        theta_next = [(i, s) for a, i, s in sorted(scored, key=lambda t: -t[0])][:max(0, len(theta) - config.drop)]
        last = not theta_next or (config.rounds is not None and r >= config.rounds)
        generated, agreement, note, unconfident = 0, None, "", 0
        if last:
            note = "last round: no points generated (no later round would train on them)"
        elif not len(mistakes):
            note = "no dev mistakes: nothing to generate"
        else:
            sources = [mistake_points[i] for i in mistakes]
            produced = transformation(sources, rng, config.per_mistake)
            if produced is None or len(produced) != len(sources):
                raise AgoraError(f"the transformation must return one list of new points per input point "
                                 f"({len(sources)}), got {None if produced is None else len(produced)}")
            new_points, origin = [], []
            for k, group in enumerate(produced):
                for p in (group or ()):
                    new_points.append(p)
                    origin.append(mistakes[k])
            if config.max_new_per_round is not None and len(new_points) > config.max_new_per_round:
                keep = np.sort(rng.choice(len(new_points), config.max_new_per_round, replace=False))
                new_points, origin = [new_points[i] for i in keep], [origin[i] for i in keep]
            if not new_points:
                note = (f"the transformation returned no points for the {len(mistakes)} mistakes; the training set "
                        f"is unchanged this round")
                _log(f"round {r}: {note}")
            else:
                if config.min_confidence is None:
                    new_labels = _check_labels("the labeller", labeller.predict(new_points), num_classes,
                                               len(new_points))
                else:
                    new_labels, confident = _confident_labels(labeller, new_points, num_classes,
                                                              config.min_confidence)
                    unconfident = int((~confident).sum())
                    new_points = [p for p, keep in zip(new_points, confident) if keep]
                    new_labels, origin = new_labels[confident], [o for o, keep in zip(origin, confident) if keep]
                    _log(f"round {r}: {unconfident} generated points below the labeller confidence "
                         f"{config.min_confidence} dropped, {len(new_points)} kept")
                    if not new_points:
                        note = (f"the labeller was below confidence {config.min_confidence} on all "
                                f"{unconfident} generated points; the training set is unchanged this round")
            if new_points:
                agreement = accuracy(new_labels, mistake_labels[np.asarray(origin)])
                train_points = train_points + new_points
                train_labels = np.concatenate([train_labels, new_labels])
                generated = len(new_points)
        record = RoundRecord(
            round=r, settings_trained=[{"index": i, "setting": s, "dev_accuracy": a} for a, i, s in scored],
            best_setting=best_setting, train_size=len(train_points) - generated, dev_accuracy=best_acc,
            dev_mistakes=int(len(mistakes)), generated=generated, label_agreement=agreement,
            theta_left=len(theta_next), seconds=time.perf_counter() - start, note=note, unconfident=unconfident,
            mistake_dev_accuracy=mistake_acc)
        records.append(record)
        theta = theta_next
        model = best_model
        _log(f"round {r}: best {best_setting} dev {best_acc:.4f}, {len(mistakes)} mistakes, +{generated} points "
             f"(label agreement {'-' if agreement is None else f'{agreement:.3f}'}), Θ left {len(theta)}")
        if out:
            (save_model or _pickle_model)(model, out / f"round-{r}")
            with open(out / "rounds.jsonl", "a") as f:
                f.write(json.dumps(record.to_dict()) + "\n")
            _atomic_pickle({"fingerprint": config.fingerprint(), "train0": len(train[0]), "dev": len(dev_points),
                            "theta": theta, "records": [x.to_dict() for x in records],
                            "train_points": train_points, "train_labels": train_labels,
                            "rng": rng.bit_generator.state, "model": None}, state_path)
    if model is None and out is not None and records:     # a finished run called again: its last student
        last_dir = out / f"round-{records[-1].round}"
        model = load_model(last_dir) if load_model else pickle.loads((last_dir / "model.pkl").read_bytes())
    result = AgoraResult(records, model, len(train_points), finished() or "", config=_jsonable(asdict(config)))
    if out:
        (out / "agora.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _check_ranges(min_confidence: Optional[float] = None, select_fraction: Optional[float] = None,
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


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified, seeded `fraction` of the points (each class in proportion, at least one of
    each and at least one left over per class). Its own RNG stream: the loop's (transformation, caps) is unchanged."""
    _check_ranges(select_fraction=fraction)
    rng = np.random.default_rng([seed, 0x5E1EC7])
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = int(round(fraction * len(members)))
        if len(members) < 2 or not 0 < k < len(members):
            raise AgoraError(f"select_fraction {fraction} leaves no dev point of class {int(c)} on one side "
                             f"({len(members)} in dev): both parts need every class; use a larger dev set")
        chosen.append(rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(chosen))


def _confident_labels(labeller: Any, points: Sequence[Any], num_classes: int,
                      threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The labeller's class ids for points, and which of them it gives a probability >= threshold.

    Shapes: logits [N,L] -> labels [N], confident [N] (bool)."""
    from bortengine.engine import softmax

    logits = np.asarray(labeller.logits(points), dtype=np.float64)
    if logits.shape != (len(points), num_classes):
        raise AgoraError(f"the labeller's logits have shape {logits.shape}, expected ({len(points)}, {num_classes})")
    probs = softmax(logits)
    return probs.argmax(axis=1).astype(np.int64), probs.max(axis=1) >= threshold


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _pickle_model(model: Any, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_pickle(model, directory / "model.pkl")


def evaluate_rounds(result_or_dir: AgoraResult | str | os.PathLike, test: tuple[Sequence[Any], Sequence[int]],
                    load_model: Optional[Callable[[Path], Any]] = None) -> list[dict]:
    """Test accuracy of each round's best student, after the loop has finished (the loop never sees test).
    From a result (only the final model is in memory: the last round) or from an out_dir (every round's saved
    student; load_model(dir) -> model, default unpickling)."""
    points, gold = list(test[0]), np.asarray(test[1])
    if isinstance(result_or_dir, AgoraResult):
        result_or_dir.final.test_accuracy = accuracy(result_or_dir.model.predict(points), gold)
        return [r.to_dict() for r in result_or_dir.rounds]
    out = Path(result_or_dir)
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines() if line.strip()]
    rows = list({r["round"]: r for r in rows}.values())   # a round repeated after a crash: keep the last write
    for row in rows:
        d = out / f"round-{row['round']}"
        model = load_model(d) if load_model else pickle.loads((d / "model.pkl").read_bytes())
        row["test_accuracy"] = accuracy(model.predict(points), gold)
    return rows


# -- transformations ---------------------------------------------------------------------------------------------
_FUNCTION_WORDS = frozenset("""
a an the and or but if then than so as of at by for with about against between into through during before after
above below to from up down in out on off over under again further once here there when where why how all any both
each few more most other some such no nor not only own same too very can will just don should now is are was were be
been being have has had having do does did doing would could might must shall may i me my myself we our ours you your
yours he him his she her hers it its they them their theirs what which who whom this that these those am s t ll ve re
d m o y also its it's""".split())


class _WordPieces:
    """Words of a text as WordPiece ids, and back (the tokenizer's own decoder joins '##' pieces)."""

    def __init__(self, tokenizer_dir: str | os.PathLike, max_length: int = 64):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=max_length)
        vocab = self.tok.get_vocab()
        self.vocab_size = max(vocab.values()) + 1
        self.id_to_token = [""] * self.vocab_size
        for t, i in vocab.items():
            self.id_to_token[i] = t
        # replaceable: whole-word alphabetic tokens of 2+ letters (not '##' pieces, punctuation, [UNK], numbers) and
        # not function words: swapping "the" for its neighbour "an" makes noise, not a nearby sentence
        self.replaceable = np.array([t.isalpha() and t.isascii() and len(t) > 1 and t not in _FUNCTION_WORDS
                                     for t in self.id_to_token])

    def words(self, text: str) -> list[list[int]]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        words: list[list[int]] = []
        for i in ids:
            if words and self.id_to_token[i].startswith("##"):
                words[-1].append(i)
            else:
                words.append([i])
        return words

    def text(self, words: Sequence[Sequence[int]]) -> str:
        return self.tok.decode([i for w in words for i in w])

    def slots(self, words: Sequence[Sequence[int]]) -> list[int]:
        return [k for k, w in enumerate(words) if len(w) == 1 and self.replaceable[w[0]]]


def _variants(text: str, pieces: _WordPieces, rng: np.random.Generator, n: int, fraction: float,
              candidates: Callable[[list[list[int]], list[int]], list[list[int]]]) -> list[str]:
    """Up to n distinct texts with round(fraction x words) (at least 1) of the replaceable words changed;
    candidates(words, positions) gives the replacement ids to choose from at each position."""
    words = pieces.words(text)
    slots = pieces.slots(words)
    if not slots:
        return []
    m = min(len(slots), max(1, round(fraction * len(words))))
    out: list[str] = []
    seen = {text.lower().strip()}
    for _ in range(3 * n):          # a few more tries than asked: short texts repeat themselves
        if len(out) >= n:
            break
        positions = sorted(rng.choice(slots, size=m, replace=False).tolist())
        options = candidates(words, positions)
        new = [list(w) for w in words]
        for pos, opts in zip(positions, options):
            if len(opts):
                new[pos] = [int(opts[rng.integers(len(opts))])]
        t = pieces.text(new)
        if t.lower().strip() not in seen:
            seen.add(t.lower().strip())
            out.append(t)
    return out


class NearestNeighbourSwap:
    """Texts near a text: a fraction of its words replaced by one of their k nearest neighbours (cosine) in a word-
    embedding table, by default the teacher's. Only whole-word alphabetic tokens are replaced and proposed.

    Shapes: embeddings [V,E] (row i = token id i of the tokenizer's vocabulary).
    """

    def __init__(self, embeddings: np.ndarray, tokenizer_dir: str | os.PathLike, fraction: float = 0.25, k: int = 8,
                 max_length: int = 64):
        if not 0.0 < fraction <= 1.0:
            raise AgoraError(f"fraction must be in (0, 1], got {fraction}")
        self.pieces = _WordPieces(tokenizer_dir, max_length)
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] < self.pieces.vocab_size:
            raise AgoraError(f"embeddings must be [V,E] with V >= the vocabulary ({self.pieces.vocab_size}), "
                             f"got {emb.shape}")
        self.unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        self.candidates = np.flatnonzero(self.pieces.replaceable)          # [C]
        self.fraction, self.k = fraction, k
        self._cache: dict[int, np.ndarray] = {}

    @classmethod
    def from_model(cls, model_dir: Optional[str | os.PathLike] = None, tokenizer_dir=None, **kwargs):
        """The word-embedding table of a BERT directory (default all-MiniLM-L6-v2). Imports torch."""
        from bortengine.training.models import encoder_of, load_teacher

        if model_dir is None:
            from bortengine.training.teacher import default_teacher_path

            model_dir = default_teacher_path()
        enc = encoder_of(load_teacher(str(model_dir)))
        emb = enc.embeddings.word_embeddings.weight.detach().float().numpy()
        return cls(emb, tokenizer_dir or model_dir, **kwargs)

    def neighbours(self, token: int) -> np.ndarray:
        """[<=k] the k nearest replaceable tokens of token (itself excluded), nearest first."""
        if token not in self._cache:
            sims = self.unit[self.candidates] @ self.unit[token]             # [C]
            top = np.argpartition(-sims, min(self.k + 1, len(sims) - 1))[:self.k + 1]
            top = top[np.argsort(-sims[top])]
            ids = self.candidates[top]
            self._cache[token] = ids[ids != token][:self.k]
        return self._cache[token]

    def _fill_cache(self, texts: Sequence[str]) -> None:
        """Neighbours of every replaceable token of texts in one [U,E] x [E,C] product."""
        tokens = sorted({w[0] for t in texts for w in self.pieces.words(t)
                         if len(w) == 1 and self.pieces.replaceable[w[0]] and w[0] not in self._cache})
        cand = self.unit[self.candidates]                                   # [C,E]
        for s in range(0, len(tokens), 512):
            block = np.asarray(tokens[s:s + 512])
            sims = self.unit[block] @ cand.T                                # [U,C]
            top = np.argpartition(-sims, self.k + 1, axis=1)[:, :self.k + 1]
            for row, token in enumerate(block):
                order = top[row][np.argsort(-sims[row, top[row]])]
                ids = self.candidates[order]
                self._cache[int(token)] = ids[ids != token][:self.k]

    def __call__(self, texts: Sequence[str], rng: np.random.Generator, n: int) -> list[list[str]]:
        self._fill_cache(texts)

        def candidates(words, positions):
            return [self.neighbours(words[p][0]) for p in positions]

        return [_variants(t, self.pieces, rng, n, self.fraction, candidates) for t in texts]


class MaskedLMFill:
    """Texts near a text: a fraction of its words masked together and each filled with one of a masked language
    model's top-k predictions (whole-word alphabetic tokens other than the original). Imports torch.

    model: a BertForMaskedLM (or a directory transformers loads as one); all-MiniLM-L6-v2 has no MLM head, so the
    measured runs use NearestNeighbourSwap.
    """

    def __init__(self, model, tokenizer_dir: str | os.PathLike, fraction: float = 0.15, k: int = 5,
                 max_length: int = 64):
        import torch  # noqa: F401  (fail here, not mid-run, when torch is missing)
        from transformers import BertForMaskedLM

        if isinstance(model, (str, os.PathLike)):
            model = BertForMaskedLM.from_pretrained(str(model))
        if not hasattr(model, "cls"):
            raise AgoraError(f"MaskedLMFill needs a masked language model (BertForMaskedLM), got "
                             f"{type(model).__name__}")
        self.model = model.eval()
        self.pieces = _WordPieces(tokenizer_dir, max_length)
        self.mask_id = self.pieces.tok.token_to_id("[MASK]")
        self.cls_id, self.sep_id = self.pieces.tok.token_to_id("[CLS]"), self.pieces.tok.token_to_id("[SEP]")
        self.fraction, self.k = fraction, k

    def _predict(self, words, positions) -> list[np.ndarray]:
        import torch

        ids, where = [self.cls_id], []
        for k, w in enumerate(words):
            if k in positions:
                where.append(len(ids))
                ids.append(self.mask_id)
            else:
                ids.extend(w)
        ids.append(self.sep_id)
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, where].float().numpy()   # [M,V]
        logits[:, ~self.pieces.replaceable[:logits.shape[1]]] = -np.inf
        out = []
        for row, pos in zip(logits, positions):
            row[words[pos][0]] = -np.inf
            top = np.argsort(-row)[:self.k]
            out.append(top[np.isfinite(row[top])])
        return out

    def __call__(self, texts: Sequence[str], rng: np.random.Generator, n: int) -> list[list[str]]:
        return [_variants(t, self.pieces, rng, n, self.fraction, self._predict) for t in texts]


class GaussianNoise:
    """Points near a point for non-text data: x + scale * std * N(0, I) in a representation space.

    encode (optional): points -> [N,F] representations; the new points are representations then (the student and
    labeller must take them). std: [F] per-feature spread (e.g. of the training set), default 1.
    """

    def __init__(self, scale: float = 0.1, std: Optional[np.ndarray] = None,
                 encode: Optional[Callable[[Sequence[Any]], np.ndarray]] = None):
        if scale <= 0:
            raise AgoraError(f"scale must be > 0, got {scale}")
        self.scale, self.std, self.encode = scale, None if std is None else np.asarray(std, np.float64), encode

    def __call__(self, points: Sequence[Any], rng: np.random.Generator, n: int) -> list[list[np.ndarray]]:
        x = np.asarray(self.encode(points) if self.encode else np.stack([np.asarray(p) for p in points]),
                       dtype=np.float64)                                   # [N,F]
        std = self.std if self.std is not None else np.ones(x.shape[1])
        noise = rng.standard_normal((x.shape[0], n, x.shape[1])) * (self.scale * std)   # [N,n,F]
        return [[row + e for e in eps] for row, eps in zip(x, noise)]


# -- the movie-reviews pieces: labeller, student trainer, student ------------------------------------------------
class EngineLabeller:
    """A classifier exported for the engine, as a labeller: bortengine.load(dir).classify(texts), its label names
    mapped to the task's class ids (a label the task does not have is an error). No torch."""

    def __init__(self, model_dir: str | os.PathLike, label_names: Sequence[str] = ("negative", "positive"),
                 num_threads: Optional[int] = None, max_length: int = 64):
        from bortengine import load

        self.engine = load(str(model_dir), num_threads=num_threads) if num_threads else load(str(model_dir))
        cfg = self.engine.config
        names = [cfg.id2label[i] for i in range(cfg.num_labels)] if getattr(cfg, "id2label", None) else []
        if sorted(names) != sorted(label_names):
            raise AgoraError(f"the labeller {model_dir} predicts {names}, the task's labels are {list(label_names)}")
        self.labels = list(label_names)
        self.index = {name: i for i, name in enumerate(label_names)}
        self._column = [names.index(name) for name in self.labels]  # the model's logit column of each task class
        self.max_length = max_length
        self._logits: dict[str, np.ndarray] = {}   # text -> [C]: the confidence filter and distillation share them

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0, dtype=np.int64)
        result = self.engine.classify(list(texts), batch_size=64, max_length=self.max_length)
        return np.array([self.index[name] for name in result.labels], dtype=np.int64)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """[N, C] logits in the task's class order (for distillation from the labeller's soft labels)."""
        if not len(texts):
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        missing = [t for t in dict.fromkeys(texts) if t not in self._logits]
        if missing:
            result = self.engine.classify(missing, batch_size=64, max_length=self.max_length)
            for t, row in zip(missing, np.asarray(result.logits, dtype=np.float32)[:, self._column]):
                self._logits[t] = row
        return np.stack([self._logits[t] for t in texts])


class TextClassifierTrainer:
    """Fine-tunes a copy of `init` (a BertModel or BertForSequenceClassification) as a sequence classifier on
    (texts, labels), the recipe of training.finetune (AdamW, linear warm-up then decay to 0, dropout, gradient
    clipping at 1, length-bucketed seeded batches) on any list of texts, which finetune cannot take; the epoch with
    the best dev accuracy (from select_from of the run on) is kept. Setting keys: lr, epochs, batch_size, weight_decay, warmup_fraction, dropout.
    fit() returns a training.SequenceClassifier (predict(texts) -> [N] class ids)."""

    def __init__(self, init, tokenizer_dir: str | os.PathLike, max_length: int = 64, threads: Optional[int] = None,
                 select_from: float = 0.5, teacher: Any = None, distill_weight: float = 0.5,
                 temperature: float = 2.0, gold_texts: Optional[Sequence[str]] = None):
        """teacher: anything with logits(texts) -> [N, C] (e.g. the EngineLabeller): with it the loss is
        (1 - distill_weight) · CE(labels) + distill_weight · T² · KL(softmax(teacher/T) || softmax(student/T)), the
        task-distillation recipe of training.finetune, on every training point (original and generated).
        gold_texts: these texts (the original training set) keep cross-entropy on their gold labels alone; only
        the others (generated, labelled by the labeller) are distilled. A training set of gold texts only is then
        plain fine-tuning (Agora's round 1)."""
        import torch

        if teacher is not None and not hasattr(teacher, "logits"):
            raise AgoraError(f"the distillation teacher must have logits(texts); got {type(teacher).__name__}")
        _check_ranges(distill_weight=distill_weight)
        if not temperature > 0:
            raise AgoraError(f"the distillation temperature must be positive, got {temperature}")
        self.teacher, self.distill_weight, self.temperature = teacher, float(distill_weight), float(temperature)
        if gold_texts is not None and teacher is None:
            raise AgoraError("gold_texts (distil the generated points only) needs a distillation teacher")
        self.gold_texts = None if gold_texts is None else frozenset(gold_texts)
        self._teacher_logits: dict[str, np.ndarray] = {}

        from bortengine.training.data import WordPieceTokenizer

        self.init = init
        self.tokenizer_dir = str(tokenizer_dir)
        self.tokenizer = WordPieceTokenizer(self.tokenizer_dir, max_length)
        # dev accuracy is measured after every epoch from this fraction of the run on (and at the end), and the best
        # of those weights kept: early epochs of a short run are rarely the best, and each dev pass costs about as
        # much as an epoch on 500 examples
        self.select_from = select_from
        torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        self._ids: dict[str, list[int]] = {}

    def _tokens(self, texts: Sequence[str]) -> list[list[int]]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._ids]
        for t, ids in zip(missing, self.tokenizer(missing)):
            self._ids[t] = ids
        return [self._ids[t] for t in texts]

    def _soft_targets(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._teacher_logits]
        if missing:
            for t, row in zip(missing, self.teacher.logits(missing)):
                self._teacher_logits[t] = np.asarray(row, dtype=np.float32)
        return np.stack([self._teacher_logits[t] for t in texts])

    def _accuracy(self, model, ids: list[list[int]], gold: np.ndarray) -> float:
        import torch

        from bortengine.training.data import collate

        model.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, len(ids), 128):
                x, mask = collate(ids[s:s + 128], self.tokenizer.pad_id)
                correct += int((model(input_ids=x, attention_mask=mask).logits.argmax(-1).numpy()
                                == gold[s:s + 128]).sum())
        return correct / max(1, len(ids))

    def fit(self, setting: Mapping[str, Any], texts: Sequence[str], labels: np.ndarray, seed: int,
            dev: Optional[tuple[Sequence[str], np.ndarray]] = None):
        import torch

        from bortengine.training.classification import SequenceClassifier, as_classifier, classification_loss
        from bortengine.training.data import batch_order, collate

        known = {"lr", "epochs", "batch_size", "weight_decay", "warmup_fraction", "dropout"}
        if set(setting) - known:
            raise AgoraError(f"unknown keys {sorted(set(setting) - known)} in setting {dict(setting)}; "
                             f"known: {sorted(known)}")
        lr, epochs = float(setting.get("lr", 5e-5)), float(setting.get("epochs", 3))
        bs, dropout = int(setting.get("batch_size", 32)), float(setting.get("dropout", 0.1))
        torch.manual_seed(seed)
        init = self.init if isinstance(self.init, torch.nn.Module) else self.init()   # a model or a factory
        model = as_classifier(copy.deepcopy(init), dropout=dropout, seed=seed)
        for p in model.parameters():
            p.requires_grad_(True)
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=float(setting.get("weight_decay", 0.01)))
        ids = self._tokens(list(texts))
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        soft, distilled = None, None
        if self.teacher is not None:
            if self.gold_texts is None:
                soft = torch.as_tensor(self._soft_targets(list(texts)))
            else:
                distilled = torch.as_tensor([t not in self.gold_texts for t in texts])     # [N] generated points
                if bool(distilled.any()):    # gold only (round 1): plain fine-tuning, the labeller is not asked
                    soft = torch.as_tensor(self._soft_targets(list(texts)))
                else:
                    distilled = None
        lengths = [len(x) for x in ids]
        per_epoch = math.ceil(len(ids) / bs)
        total = max(1, round(epochs * per_epoch))
        warm = max(1, round(float(setting.get("warmup_fraction", 0.1)) * total))
        dev_ids = self._tokens(list(dev[0])) if dev is not None else None
        best_acc, best_state, step, epoch = -1.0, None, 0, 0
        while step < total:
            for idx in batch_order(lengths, bs, seed, epoch, bucket=16):
                if step >= total:
                    break
                lr_now = lr * (step + 1) / warm if step < warm else lr * max(0.0, 1 - (step - warm) / max(1, total - warm))
                for g in opt.param_groups:
                    g["lr"] = lr_now
                x, mask = collate([ids[i] for i in idx], self.tokenizer.pad_id)
                model.train()
                loss = classification_loss(model(input_ids=x, attention_mask=mask).logits, y[idx],
                                           None if soft is None else soft[idx], self.distill_weight, self.temperature,
                                           None if distilled is None else distilled[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                step += 1
            epoch += 1
            if dev_ids is not None and (step >= self.select_from * total or step >= total):
                acc = self._accuracy(model, dev_ids, np.asarray(dev[1]))
                if acc > best_acc:
                    best_acc = acc
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if best_state is not None:
            model.load_state_dict(best_state)
        return SequenceClassifier(model.eval(), self.tokenizer, self.tokenizer_dir)


def slice_student(arch: str = "4,8,256,512", teacher: Optional[str] = None):
    """A student of arch cut from the teacher (default all-MiniLM-L6-v2) by importance (training.slice_init), with
    the teacher's tokenizer directory. Deterministic. Imports torch. Returns (student, tokenizer_dir)."""
    from bortengine.architecture import Architecture
    from bortengine.training.data import WordPieceTokenizer
    from bortengine.training.models import load_teacher
    from bortengine.training.slicing import default_importance, slice_init

    if teacher is None:
        from bortengine.training.teacher import default_teacher_path

        teacher = str(default_teacher_path())
    t = load_teacher(teacher)
    importance = default_importance(t, WordPieceTokenizer(teacher, 128))
    student, _ = slice_init(Architecture.parse(arch), t, importance)
    return student, teacher


def save_classifier(model, directory: Path) -> None:
    """save_model for SequenceClassifier students: an HF directory that EngineLabeller / bortengine.load read."""
    model.save(directory)


def load_engine_classifier(directory: Path) -> EngineLabeller:
    return EngineLabeller(directory)


# -- report ------------------------------------------------------------------------------------------------------
def plot_rounds(runs: Sequence[Sequence[Mapping[str, Any]]], path: str | os.PathLike, reference: Optional[float] = None,
                title: str = "Agora on Rotten Tomatoes (500 train examples)",
                seeds: Optional[Sequence[Any]] = None) -> Path:
    """Dev and test accuracy over rounds, one line per run (labelled by `seeds`, default 0, 1, ...); reference: the
    full-split student's test accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.0))
    seeds = list(seeds) if seeds is not None else list(range(len(runs)))
    for k, rows in enumerate(runs):
        xs = [r["round"] for r in rows]
        ax.plot(xs, [r["dev_accuracy"] for r in rows], "o--", color=f"C{k}", alpha=0.6,
                label=f"seed {seeds[k]}: dev (best of Θ)")
        if all(r.get("test_accuracy") is not None for r in rows):
            ax.plot(xs, [r["test_accuracy"] for r in rows], "s-", color=f"C{k}", label=f"seed {seeds[k]}: test")
    if reference is not None:
        ax.axhline(reference, color="k", lw=1, ls=":", label="full train split, test")
    ax.set_xticks(sorted({r["round"] for rows in runs for r in rows}))
    ax.set_xlabel("round (round 1 = plain fine-tuning with the Θ search)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- the movie-reviews experiment (CLI: bortengine finetune --agora) ---------------------------------------------
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
        settings = json.loads(text)
    elif Path(text).is_file():
        settings = json.loads(Path(text).read_text())
    else:
        settings = []
        for part in filter(None, (p.strip() for p in text.split(";"))):
            setting = {}
            for item in filter(None, (i.strip() for i in part.split(","))):
                key, sep, value = item.partition("=")
                if not sep:
                    raise AgoraError(f"a setting is key=value pairs separated by commas, got {item!r} in {part!r}")
                setting[key.strip()] = float(value) if key.strip() != "batch_size" else int(value)
            settings.append(setting)
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
        raise AgoraError(f"Θ must be a list of settings (objects), got {text!r}")
    return settings


def scarce_subset(examples: Sequence[Any], n: Optional[int], seed: int) -> list:
    """n examples drawn without replacement, stratified by label (each class in proportion, rounded), with seed;
    in split order. Not the first n: the committed RT train split lists its rows by label, so its first 500 are
    all positive (training.FinetuneConfig.train_limit takes the first n)."""
    if n is None or n >= len(examples):
        return list(examples)
    rng = np.random.default_rng(seed)
    labels = np.array([e.label for e in examples])
    classes = np.unique(labels)
    counts = {c: int(round(n * np.mean(labels == c))) for c in classes}
    counts[classes[-1]] = n - sum(counts[c] for c in classes[:-1])
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), counts[c], replace=False) for c in classes])
    return [examples[i] for i in np.sort(chosen)]


def finetune_agora(labeller: str, out_dir: str, model: Optional[str] = None, arch: Optional[str] = "4,8,256,512",
                   task: str = "rt", train_limit: Optional[int] = 500, seed: int = 0,
                   settings: Optional[Sequence[Mapping[str, Any]]] = None, rounds: Optional[int] = None,
                   per_mistake: Optional[int] = None, max_new_per_round: Optional[int] = None,
                   transformation: str = "neighbours", fraction: Optional[float] = None, neighbours: int = 8,
                   mlm_model: Optional[str] = None, max_length: int = 64, threads: Optional[int] = None,
                   distill_weight: Optional[float] = None, min_confidence: Optional[float] = None,
                   select_fraction: Optional[float] = None, distill_on: Optional[str] = None,
                   recipe: str = "scarce") -> dict:
    """Agora on a movie-reviews task with a text student, the engine as labeller, and test accuracy of every
    round's student measured after the loop. Writes out_dir/result.json and out_dir/rounds.png.

    recipe: "scarce" (default) or "paper" (RECIPES): the values of settings, per_mistake, fraction, distill_weight,
    distill_on and select_fraction left as None; select_fraction=0: none of dev kept apart.

    model: the student directory, or the teacher to cut `arch` from (default all-MiniLM-L6-v2); arch=None uses
    model as the student. train_limit: a stratified sample of N examples of the committed train split drawn with
    seed (scarce_subset; None: all of it). distill_weight > 0: every student also distils the labeller's soft labels
    (logits, T = 2) on all its training points with this weight (TextClassifierTrainer), round 1 included, so round
    1 stays the baseline with the same trainer; distill_on="generated": only the generated points are distilled
    (the 500 originals keep their gold labels alone), so round 1 is plain fine-tuning. min_confidence, select_fraction: AgoraConfig's (the labeller's
    confidence filter on generated points; the part of dev kept apart for selection)."""
    from bortengine.training.data import load_split
    from bortengine.training.models import LABELS

    options = resolve_recipe(recipe, settings=settings, per_mistake=per_mistake, fraction=fraction,
                             distill_weight=distill_weight, distill_on=distill_on, select_fraction=select_fraction)
    settings, per_mistake, fraction = options["settings"], options["per_mistake"], options["fraction"]
    distill_weight, distill_on, select_fraction = (options["distill_weight"], options["distill_on"],
                                                   options["select_fraction"])
    _check_ranges(min_confidence, select_fraction, distill_weight)  # before minutes of loading, not after
    if distill_on not in ("all", "generated"):
        raise AgoraError(f"distill_on must be 'all' (every training point) or 'generated' (the labeller's points "
                         f"only), got {distill_on!r}")
    if distill_on == "generated" and not distill_weight > 0:
        raise AgoraError("distill_on='generated' needs a distillation weight > 0 (--agora-distill W)")
    started = time.perf_counter()
    train = scarce_subset(load_split(task, "train"), train_limit, seed)
    dev = load_split(task, "dev")
    if arch:
        student, tokenizer_dir = slice_student(arch, model)
    else:
        if model is None:
            raise AgoraError("give the student directory (model) or an architecture to cut from the teacher (arch)")
        from bortengine.training.models import load_teacher

        student, tokenizer_dir = load_teacher(model), model
    judge = EngineLabeller(labeller, LABELS, num_threads=threads, max_length=max_length)
    trainer = TextClassifierTrainer(student, tokenizer_dir, max_length=max_length, threads=threads,
                                    teacher=judge if distill_weight > 0 else None, distill_weight=distill_weight,
                                    gold_texts=[e.text for e in train] if distill_on == "generated" else None)
    if transformation == "neighbours":
        transform = NearestNeighbourSwap.from_model(None, tokenizer_dir, fraction=fraction, k=neighbours,
                                                    max_length=max_length)
    elif transformation == "mlm":
        if mlm_model is None:
            raise AgoraError("the 'mlm' transformation needs a masked language model directory (mlm_model); "
                             "all-MiniLM-L6-v2 has no MLM head")
        transform = MaskedLMFill(mlm_model, tokenizer_dir, fraction=fraction, k=neighbours, max_length=max_length)
    else:
        raise AgoraError(f"transformation must be 'neighbours' or 'mlm' for text, got {transformation!r}")
    config = AgoraConfig(settings=list(settings),
                         rounds=rounds, per_mistake=per_mistake, max_new_per_round=max_new_per_round, seed=seed,
                         out_dir=out_dir, num_classes=len(LABELS), label_names=list(LABELS),
                         trainer_settings=({"distill_weight": distill_weight} if distill_weight > 0 else {})
                         | ({"distill_on": distill_on} if distill_on != "all" else {}),
                         min_confidence=min_confidence, select_fraction=select_fraction)
    labeller_dev = accuracy(judge.predict([e.text for e in dev]), np.array([e.label for e in dev]))
    if labeller_dev < 2 / 3:
        _log(f"warning: the labeller's dev accuracy is {labeller_dev:.3f}, below the ~2/3 Agora assumes")
    result = run_agora(config, trainer, ([e.text for e in train], [e.label for e in train]),
                       ([e.text for e in dev], [e.label for e in dev]), judge, transform,
                       save_model=save_classifier, load_model=load_engine_classifier)
    loop_seconds = time.perf_counter() - started
    # after the loop: test accuracy of each round's student (round 1 = plain fine-tuning with the Θ search)
    test = load_split(task, "test")
    rows = evaluate_rounds(out_dir, ([e.text for e in test], [e.label for e in test]), load_engine_classifier)
    summary = {
        "task": task, "train_examples": len(train), "dev_examples": len(dev), "test_examples": len(test),
        "student": arch or model, "sliced_from": (model or "all-MiniLM-L6-v2") if arch else None, "labeller": str(labeller),
        "labeller_dev_accuracy": labeller_dev, "transformation": transformation, "fraction": fraction,
        "neighbours": neighbours, "seed": seed, "recipe": recipe, "per_mistake": per_mistake,
        "settings": config.settings, "rounds": rows,
        "distill_weight": distill_weight, "distill_on": distill_on, "min_confidence": min_confidence, "select_fraction": select_fraction,
        "plain_test_accuracy": rows[0]["test_accuracy"], "agora_test_accuracy": rows[-1]["test_accuracy"],
        "plain_dev_accuracy": rows[0]["dev_accuracy"], "agora_dev_accuracy": rows[-1]["dev_accuracy"],
        "final_train_size": result.train_size, "stopped_by": result.stopped_by,
        "wall_seconds_this_call": loop_seconds,             # the loop (training, generation, labelling, saving)
        "total_seconds_this_call": time.perf_counter() - started,   # + the test scoring after it
    }
    Path(out_dir, "result.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    plot_rounds([rows], Path(out_dir) / "rounds.png", seeds=[seed])
    return summary


def summarize(run_dirs: Sequence[str | os.PathLike], reference_dirs: Sequence[str | os.PathLike] = (),
              plot: Optional[str | os.PathLike] = None) -> dict:
    """Mean and spread (sample standard deviation, min, max) over seeds of the plain (round 1) and Agora (last
    round) test accuracies, the full-split reference's, the gain and the fraction of the gap closed; and the plot."""
    def stats(values: Sequence[float]) -> dict:
        v = np.asarray(values, dtype=np.float64)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()), "max": float(v.max()), "n": len(v), "values": [float(x) for x in v]}

    def read(d: str | os.PathLike) -> dict:
        path = Path(d, "result.json")
        if not path.is_file():
            raise AgoraError(f"{d} is not a finished Agora run directory (no result.json): pass the directories "
                             f"given to --out, e.g. runs/agora/seed-?, not their logs")
        return json.loads(path.read_text())

    runs = [read(d) for d in run_dirs]
    refs = [read(d) for d in reference_dirs]
    plain = [r["plain_test_accuracy"] for r in runs]
    agora = [r["agora_test_accuracy"] for r in runs]
    out: dict[str, Any] = {"runs": [str(d) for d in run_dirs], "plain_test": stats(plain),
                           "agora_test": stats(agora), "gain": stats(np.subtract(agora, plain))}
    if refs:
        full = [r["agora_test_accuracy"] for r in refs]
        out["full_split_test"] = stats(full)
        gap = out["full_split_test"]["mean"] - out["plain_test"]["mean"]
        out["gap_closed"] = (out["agora_test"]["mean"] - out["plain_test"]["mean"]) / gap if gap > 0 else None
    # a run's time is the sum of its rounds' own times, so a run interrupted and resumed counts each round once
    # (the last call's wall time would count only what was left)
    out["minutes_per_run"] = stats([sum(row["seconds"] for row in r["rounds"]) / 60 for r in runs])
    if plot:
        plot_rounds([r["rounds"] for r in runs], plot, reference=out["full_split_test"]["mean"] if refs else None,
                    seeds=[r.get("seed", k) for k, r in enumerate(runs)])
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bortengine.agora",
                                     description="summarise Agora runs (bortengine finetune --agora) over seeds")
    parser.add_argument("runs", nargs="+", help="Agora run directories (one per seed)")
    parser.add_argument("--reference", nargs="*", default=(), help="full-split run directories (one per seed)")
    parser.add_argument("--plot", default=None, help="write the accuracy-over-rounds plot here")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(summarize(args.runs, args.reference, args.plot), indent=2))
    except AgoraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
