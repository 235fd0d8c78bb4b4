"""Agora's student trainer for texts: fine-tunes a copy of the student on any list of texts (the original training
set and the generated points) with training.finetune's recipe, on the training stage's one loop; and how a round's
best student is kept on disk (an HF directory the engine loads) and brought back (as an EngineLabeller).

Importing this module does not import torch; fit() does.

Shapes: N = texts, C = the task's classes.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from bortengine.engine import TextTokenizer, available_cpus
from bortengine.training.agora.labeller import EngineLabeller
from bortengine.training.agora.loop import AgoraError, check_ranges

__all__ = ["TextClassifierTrainer", "save_classifier", "load_engine_classifier", "SETTING_KEYS"]

SETTING_KEYS = ("lr", "epochs", "batch_size", "weight_decay", "warmup_fraction", "dropout")
DEV_BATCH = 128    # texts per forward of the dev evaluation


class TextClassifierTrainer:
    """Fine-tunes a copy of `init` (a BertModel or BertForSequenceClassification, or a factory of one) as a
    sequence classifier on (texts, labels), the recipe of training.finetune (AdamW, linear warm-up then decay to 0,
    dropout, gradient clipping at 1, length-bucketed seeded batches) on any list of texts, which finetune cannot
    take; the epoch with the best dev accuracy (from select_from of the run on) is kept. Setting keys: lr, epochs,
    batch_size, weight_decay, warmup_fraction, dropout. fit() returns a training.SequenceClassifier
    (predict(texts) -> [N] class ids).

    The trainer pickles (search.RaySettingsRunner sends it to Ray workers): the student to start from goes as its
    weights, the teacher (an EngineLabeller) as its directory, loaded again there; so do the students fit() returns
    (torch modules and a TextTokenizer)."""

    def __init__(self, init, tokenizer_dir: str | os.PathLike, max_length: int = 64, threads: Optional[int] = None,
                 select_from: float = 0.5, teacher: Any = None, distill_weight: float = 0.5,
                 temperature: float = 2.0, gold_texts: Optional[Sequence[str]] = None,
                 labels: Optional[Sequence[str]] = None):
        """teacher: anything with logits(texts) -> [N, C] (e.g. the EngineLabeller): with it the loss is
        (1 - distill_weight) · CE(labels) + distill_weight · T² · KL(softmax(teacher/T) || softmax(student/T)), the
        task-distillation recipe of training.finetune, on every training point (original and generated).
        gold_texts: these texts (the original training set) keep cross-entropy on their gold labels alone; only
        the others (generated, labelled by the labeller) are distilled. A training set of gold texts only is then
        plain fine-tuning (Agora's round 1). labels: the task's label names (class id i = labels[i]), which the
        students' heads are built for and named by (default: two unnamed classes)."""
        import torch

        if teacher is not None and not hasattr(teacher, "logits"):
            raise AgoraError(f"the distillation teacher must have logits(texts); got {type(teacher).__name__}")
        check_ranges(distill_weight=distill_weight)
        if not temperature > 0:
            raise AgoraError(f"the distillation temperature must be positive, got {temperature}")
        self.teacher, self.distill_weight, self.temperature = teacher, float(distill_weight), float(temperature)
        if gold_texts is not None and teacher is None:
            raise AgoraError("gold_texts (distil the generated points only) needs a distillation teacher")
        self.gold_texts = None if gold_texts is None else frozenset(gold_texts)
        self._teacher_logits: dict[str, np.ndarray] = {}
        self.init = init
        self.labels = None if labels is None else list(labels)
        self.tokenizer_dir = str(tokenizer_dir)
        self.tokenizer = TextTokenizer.from_directory(self.tokenizer_dir, max_length)
        # dev accuracy is measured after every epoch from this fraction of the run on (and at the end), and the best
        # of those weights kept: early epochs of a short run are rarely the best, and each dev pass costs about as
        # much as an epoch on 500 examples
        self.select_from = select_from
        # torch's threads: set here for this process's own use of the students (their predictions), and again by
        # every fit(), which may run in another process (a Ray worker sets `threads` to the CPUs it was given)
        self.threads = threads
        torch.set_num_threads(threads or available_cpus())
        self._ids: dict[str, list[int]] = {}

    def tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of texts (each text tokenized once per trainer)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._ids]
        for t, ids in zip(missing, self.tokenizer.token_ids(missing)):
            self._ids[t] = ids
        return [self._ids[t] for t in texts]

    def _soft_targets(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._teacher_logits]
        if missing:
            for t, row in zip(missing, self.teacher.logits(missing)):
                self._teacher_logits[t] = np.asarray(row, dtype=np.float32)
        return np.stack([self._teacher_logits[t] for t in texts])

    def _distillation_targets(self, texts: list[str]):
        """(soft [N,C] teacher logits or None, distilled [N] mask or None): which points learn from the teacher."""
        import torch

        if self.teacher is None:
            return None, None
        if self.gold_texts is None:
            return torch.as_tensor(self._soft_targets(texts)), None
        distilled = torch.as_tensor([t not in self.gold_texts for t in texts])     # [N] generated points
        if not bool(distilled.any()):     # gold only (round 1): plain fine-tuning, the labeller is not asked
            return None, None
        return torch.as_tensor(self._soft_targets(texts)), distilled

    def fit(self, setting: Mapping[str, Any], texts: Sequence[str], labels: np.ndarray, seed: int,
            dev: Optional[tuple[Sequence[str], np.ndarray]] = None):
        import torch

        from bortengine.training.classification import (SequenceClassifier, as_classifier, evaluate_classifier,
                                                        fine_tuning_loss_function, finetuning_schedule)
        from bortengine.training.loop import Selection, TrainingLoop

        if set(setting) - set(SETTING_KEYS):
            raise AgoraError(f"unknown keys {sorted(set(setting) - set(SETTING_KEYS))} in setting {dict(setting)}; "
                             f"known: {sorted(SETTING_KEYS)}")
        try:
            lr, epochs = float(setting.get("lr", 5e-5)), float(setting.get("epochs", 3))
            bs, dropout = int(setting.get("batch_size", 32)), float(setting.get("dropout", 0.1))
            weight_decay, warmup = float(setting.get("weight_decay", 0.01)), float(setting.get("warmup_fraction", 0.1))
        except (TypeError, ValueError):
            raise AgoraError(f"setting {dict(setting)}: every value must be a number (batch_size an integer)") from None
        if not (lr > 0 and epochs > 0 and bs >= 1):
            raise AgoraError(f"setting {dict(setting)}: lr and epochs must be > 0 and batch_size >= 1")
        torch.set_num_threads(self.threads or available_cpus())
        torch.manual_seed(seed)
        init = self.init if isinstance(self.init, torch.nn.Module) else self.init()   # a model or a factory
        model = as_classifier(copy.deepcopy(init), dropout=dropout, seed=seed, labels=self.labels)
        for p in model.parameters():
            p.requires_grad_(True)
        params = list(model.parameters())
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        ids = self.tokens(list(texts))
        soft, distilled = self._distillation_targets(list(texts))
        total = max(1, round(epochs * math.ceil(len(ids) / bs)))
        selection = None
        if dev is not None:
            dev_set = (self.tokens(list(dev[0])), np.asarray(dev[1]))
            selection = Selection(model, lambda step: evaluate_classifier(model, self.tokenizer, dev_set,
                                                                          DEV_BATCH)["accuracy"],
                                  from_step=self.select_from * total)
        loop = TrainingLoop(params, optimizer, finetuning_schedule(lr, warmup, total), [len(x) for x in ids], bs, seed,
                            bucket=16, max_steps=total, selection=selection)
        loop.run(fine_tuning_loss_function(model, ids, torch.as_tensor(np.asarray(labels), dtype=torch.long),
                                           self.tokenizer.pad_id, soft, self.distill_weight, self.temperature,
                                           distilled))
        if selection is not None:
            selection.restore_best()
        return SequenceClassifier(model.eval(), self.tokenizer, self.tokenizer_dir)


def save_classifier(model, directory: Path) -> None:
    """save_model for SequenceClassifier students: an HF directory that EngineLabeller / bortengine.load read."""
    model.save(directory)


def load_engine_classifier(directory: Path, label_names: Sequence[str] = ("negative", "positive"),
                           max_length: int = 64) -> EngineLabeller:
    """load_model for SequenceClassifier students: the saved directory, run by the engine, answering in the task's
    label names at its length (functools.partial binds them for a task other than movie reviews)."""
    return EngineLabeller(directory, label_names, max_length=max_length)
