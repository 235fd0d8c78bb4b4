"""Training in torch: build any sub-architecture, initialise it from a teacher by extraction, distil it on real
text, fine-tune it on the user's labelled data or the built-in movie reviews (or with Agora on scarce data), and
write it as a directory the engine loads.
See docs/training.md.

Needs the `train` extra (torch, transformers, the data packages). Importing this package is cheap and does not
import torch; the names below load their module on first use. Every run steps through one loop (loop.py), keeps
one checkpoint format (checkpoint.py: safetensors + JSON, never a pickle) and tokenizes with the engine's
TextTokenizer, so a model is trained on the ids it is served with.

    from bortengine.architecture import Architecture
    from bortengine import training
    loss = training.surrogate_loss(Architecture(4, 12, 384, 1536), steps=50, seed=0)
    clf, metrics = training.finetune(training.FinetuneConfig(model="runs/student", task="rt", out_dir="runs/ft"))
    clf, metrics = training.finetune(training.FinetuneConfig(train="tickets.csv", text_column="body",
                                                             label_column="queue", out_dir="runs/tickets"))
"""
from __future__ import annotations

import importlib
from typing import Any

from bortengine.training.errors import NothingTrainedError, SplitOverlapWarning, TrainingError, UnfinishedRunWarning

__all__ = [
    "TrainingError", "NothingTrainedError", "SplitOverlapWarning", "UnfinishedRunWarning",
    "default_teacher_path", "load_teacher", "TeacherBundle", "teacher_bundle", "teacher_classifier",
    "build_model", "architecture_of", "encoder_of", "count_parameters", "load_pretrained",
    "Importance", "measure_importance", "slice_init", "too_large_to_slice",
    "DistillConfig", "pretrain", "surrogate_loss", "distil_cut_student", "embedding_similarity", "pair_similarity",
    "distillation_documents", "corpus_documents", "CORPUS_MODES",
    "FinetuneConfig", "finetune", "finetune_surrogate_loss", "SequenceClassifier", "evaluate_classifier",
    "classification_loss", "task_max_length", "classifier_labels", "as_classifier",
    "DataSpec", "Task", "load_task", "BUILTIN_TASKS", "DATA_FORMATS", "pretraining_documents", "transfer_pieces",
    "Schedule", "Budget", "TrainingLoop", "TrainingCheckpoint", "read_checkpoint", "write_checkpoint", "CHECKPOINT_FILE",
    "OLD_FILES",
    "write_hf_directory", "export", "run_model", "trained_model", "run_directory", "model_subdirectories",
    "TOKENIZER_FILES", "relabel_classifier", "check_classifier_source",
    "AGORA_STATE_FILE",
    "AgoraError", "finetune_agora", "parse_settings", "NearestNeighbourSwap", "AGORA_RECIPES", "stratified_split",
    "SettingsRunner", "InProcessRunner", "SettingRun", "RoundWork", "SettingResult", "fit_setting", "best_position",
]

_WHERE = {
    "default_teacher_path": "teacher", "load_teacher": "teacher", "TeacherBundle": "teacher",
    "teacher_bundle": "teacher", "teacher_classifier": "teacher",
    "build_model": "models", "architecture_of": "models", "encoder_of": "models", "count_parameters": "models",
    "load_pretrained": "models", "check_classifier_source": "models",
    "Importance": "slicing", "measure_importance": "slicing", "slice_init": "slicing", "too_large_to_slice": "slicing",
    "DistillConfig": "distill", "pretrain": "distill", "surrogate_loss": "distill", "distil_cut_student": "distill",
    "embedding_similarity": "distill", "pair_similarity": "distill", "distillation_documents": "distill",
    "corpus_documents": "corpus", "CORPUS_MODES": "corpus",
    "FinetuneConfig": "classification", "finetune": "classification",
    "finetune_surrogate_loss": "classification", "SequenceClassifier": "classification",
    "evaluate_classifier": "classification", "classification_loss": "classification",
    "task_max_length": "classification", "classifier_labels": "classification",
    "as_classifier": "classification",
    "DataSpec": "tasks", "Task": "tasks", "load_task": "tasks", "BUILTIN_TASKS": "tasks", "DATA_FORMATS": "tasks",
    "pretraining_documents": "data", "transfer_pieces": "data",
    "Schedule": "loop", "Budget": "loop", "TrainingLoop": "loop",
    "TrainingCheckpoint": "checkpoint", "read_checkpoint": "checkpoint", "write_checkpoint": "checkpoint",
    "CHECKPOINT_FILE": "checkpoint", "OLD_FILES": "checkpoint", "AGORA_STATE_FILE": "checkpoint",
    "write_hf_directory": "hf_dir", "run_model": "hf_dir", "trained_model": "hf_dir", "run_directory": "hf_dir",
    "relabel_classifier": "hf_dir",
    "model_subdirectories": "hf_dir", "TOKENIZER_FILES": "hf_dir",
    # Agora's entry points; the whole of it is bortengine.training.agora
    "AgoraError": "agora", "finetune_agora": "agora", "parse_settings": "agora", "NearestNeighbourSwap": "agora",
    "stratified_split": "agora",
    # where Agora's fine-tunes of a round run: the loop's side of search.RaySettingsRunner
    **dict.fromkeys(("SettingsRunner", "InProcessRunner", "SettingRun", "RoundWork", "SettingResult", "fit_setting",
                     "best_position"), "agora"),
}
# names kept or given here under another name: the writer's older public name; Agora's recipes beside the rest
_ALIASES = {"export": ("hf_dir", "write_hf_directory"), "AGORA_RECIPES": ("agora", "RECIPES")}


def __getattr__(name: str) -> Any:
    module, attribute = _ALIASES.get(name) or (_WHERE.get(name), name)
    if module is None:
        raise AttributeError(f"module 'bortengine.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), attribute)
