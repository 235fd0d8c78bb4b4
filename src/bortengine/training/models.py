"""Architecture <-> transformers model: build a BertModel / BertForSequenceClassification of any ⟨D, A, H, I⟩,
read an Architecture back from a model (the teacher is loaded by teacher.py).

We reuse transformers' BERT modules rather than writing a second BERT: the engine is tested against exactly these
modules, so what trains here is what the engine runs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from bortengine.architecture import Architecture, require_bert
from bortengine.files import read_json
from bortengine.training.data import LABELS
from bortengine.training.errors import TrainingError

__all__ = ["build_model", "architecture_of", "encoder_of", "hf_config", "count_parameters", "load_pretrained",
           "LABELS"]



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


def load_pretrained(cls, path: str | os.PathLike, attn_implementation: Optional[str] = "eager"):
    """cls.from_pretrained(path) (cls: a transformers BERT class) from its model.safetensors only, offline: a
    pytorch_model.bin is a pickle, which can run code when loaded, so it is never read (the engine refuses it too).
    attn_implementation None: transformers' default."""
    path = Path(path)
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
    return cls.from_pretrained(str(path), use_safetensors=True, **attention)
