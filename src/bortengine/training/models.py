"""Architecture <-> transformers model: build a BertModel / BertForSequenceClassification of any ⟨D, A, H, I⟩,
read an Architecture back from a model (the teacher is loaded by teacher.py).

We reuse transformers' BERT modules rather than writing a second BERT: the engine is tested against exactly these
modules, so what trains here is what the engine runs.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Callable, Optional

import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from bortengine.architecture import Architecture, require_bert
from bortengine.engine import transformer_directory
from bortengine.files import read_json
from bortengine.training.data import LABELS
from bortengine.training.errors import TrainingError

__all__ = ["build_model", "architecture_of", "encoder_of", "hf_config", "count_parameters", "load_pretrained",
           "check_classifier_source", "CLASSIFIER_SOURCES", "LABELS"]

# config.json classes a sequence classifier is fine-tuned from: an encoder, a masked-LM or pre-training checkpoint (how
# BERT checkpoints are published; their missing pooler starts random, as in any fine-tuning from them), or a sequence
# classifier (of other labels: its head is replaced). A model trained for another task (labels per token, answer
# spans, multiple choice) would lose the head it was trained for without a word.
CLASSIFIER_SOURCES = ("BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification")



def hf_config(arch: Architecture, attn_implementation: str = "eager", dropout: float = 0.1) -> BertConfig:
    """A BertConfig for arch. Eager attention by default: the distillation losses read attention probabilities,
    which the SDPA path does not return."""
    kwargs = arch.to_hf_config()
    kwargs.pop("architectures")
    config = BertConfig(**kwargs, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if arch.head == "classifier":
        names = LABELS if arch.num_labels == 2 else tuple(f"LABEL_{i}" for i in range(arch.num_labels))
        config.id2label = dict(enumerate(names))
        config.label2id = {v: k for k, v in config.id2label.items()}
    config.architectures = ["BertForSequenceClassification" if arch.head == "classifier" else "BertModel"]
    config._attn_implementation = attn_implementation
    return config


def build_model(arch: Architecture, seed: Optional[int] = None, attn_implementation: str = "eager",
                dropout: float = 0.1) -> torch.nn.Module:
    """A randomly initialised (transformers' init, std 0.02) BertModel, or BertForSequenceClassification when
    arch.head == "classifier"."""
    if seed is not None:
        torch.manual_seed(seed)
    config = hf_config(arch, attn_implementation, dropout)
    if arch.head == "classifier":
        return BertForSequenceClassification(config)
    return BertModel(config, add_pooling_layer=arch.head == "pooler")


def encoder_of(model: torch.nn.Module) -> BertModel:
    """The BertModel inside a model (itself, or .bert of a classifier or masked-LM model)."""
    return model if isinstance(model, BertModel) else model.bert


def architecture_of(model: torch.nn.Module) -> Architecture:
    c = model.config
    if isinstance(model, BertForSequenceClassification):
        head = "classifier"
    else:
        head = "pooler" if getattr(model, "pooler", None) is not None else "none"
    return Architecture(c.num_hidden_layers, c.num_attention_heads, c.hidden_size, c.intermediate_size,
                        vocab_size=c.vocab_size, max_positions=c.max_position_embeddings,
                        type_vocab_size=c.type_vocab_size, head=head, num_labels=c.num_labels)


def count_parameters(model: torch.nn.Module, embeddings: bool = True) -> int:
    return sum(p.numel() for name, p in model.named_parameters()
               if embeddings or ".embeddings." not in f".{name}")


def check_classifier_source(path: str | os.PathLike, option: str = "model") -> str:
    """The config.json class of the model directory `option` names, when a sequence classifier can be fine-tuned
    from it (CLASSIFIER_SOURCES; a sentence-transformers directory is read where bortengine.load reads it). Raises
    TrainingError naming the class and what to give instead otherwise, and UnsupportedModelError for another
    family."""
    source = transformer_directory(path) / "config.json"
    config = read_json(source, TrainingError, missing_ok=True)
    if config is None:
        raise TrainingError(f"{option} {path} holds no config.json: give a BERT model directory (BertModel, "
                            f"sentence-transformers, BertForMaskedLM or BertForSequenceClassification)")
    require_bert(config, str(source))
    kind = (config.get("architectures") or ["BertModel"])[0]
    if kind not in CLASSIFIER_SOURCES:
        raise TrainingError(
            f"{option} {path} is a {kind} ({source}), a model trained for another task than classifying texts: "
            f"fine-tuning a sequence classifier from it would keep its encoder and drop the head it was trained "
            f"for. Give a BertModel, sentence-transformers, BertForMaskedLM or BertForSequenceClassification "
            f"directory; to start from this model's encoder anyway, save it as one: "
            f"BertModel.from_pretrained(DIR).save_pretrained(NEW_DIR, safe_serialization=True) and copy its "
            f"tokenizer files to NEW_DIR")
    return kind


def progress_governs_transformers_bars(fn: Callable) -> Callable:
    """A training call whose `progress` argument governs transformers' own bars too (loading and writing weights):
    with progress=False they are off while it runs, and as they were after."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if signature.bind(*args, **kwargs).arguments.get("progress", True):
            return fn(*args, **kwargs)
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            return fn(*args, **kwargs)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
    return call


def load_pretrained(cls, path: str | os.PathLike, attn_implementation: Optional[str] = "eager", **options):
    """cls.from_pretrained(path) (cls: a transformers BERT class) from its model.safetensors only, offline: a
    pytorch_model.bin is a pickle, which can run code when loaded, so it is never read (the engine refuses it too).
    A sentence-transformers directory is read from the sub-folder its modules.json names (transformer_directory,
    as bortengine.load reads it). attn_implementation None: transformers' default. options: cls's own
    (add_pooling_layer)."""
    path = transformer_directory(path)
    if not (path / "model.safetensors").is_file():
        raise TrainingError(f"{path} holds no model.safetensors: bortengine reads weights from safetensors only (a "
                            f"pytorch_model.bin is a pickle and can run code when loaded). Convert it once where you "
                            f"trust it: {cls.__name__}.from_pretrained(dir).save_pretrained(dir, "
                            f"safe_serialization=True)")
    require_bert(read_json(path / "config.json", TrainingError, missing_ok=True) or {}, str(path / "config.json"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    attention = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return cls.from_pretrained(str(path), use_safetensors=True, **attention, **options)
