"""Architecture: a BERT sub-architecture ⟨D, A, H, I⟩ plus its embedding and head sizes, and its exact size.

The search (FPTAS), the profiler and training all speak of candidates as Architectures. This module is pure
Python (no torch, no NumPy): the parameter count p(ξ) is exact counting, the same number as summing `numel()`
over the transformers model that `bortengine.training.build_model` makes from it (a test checks that).

Sizes: D = encoder layers, A = attention heads, H = hidden size, I = feed-forward (intermediate) size,
V = vocab size, P = max positions, Tt = token types, L = labels.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from bortengine.errors import UnsupportedModelError

__all__ = ["Architecture", "HEADS", "BERT_LARGE", "BERT_BASE", "BORT", "MINILM_L6", "require_bert"]

# What sits on top of the encoder: "none" (BertModel without pooler), "pooler" (BertModel with its tanh pooler,
# as all-MiniLM-L6-v2 ships), "classifier" (BertForSequenceClassification: pooler + linear classifier).
HEADS = ("none", "pooler", "classifier")


@dataclass(frozen=True)
class Architecture:
    """A BERT encoder's shape. Defaults are all-MiniLM-L6-v2's embedding sizes (the real teacher here)."""

    layers: int                        # D
    heads: int                         # A; H must be a multiple of A (head size H / A)
    hidden: int                        # H
    intermediate: int                  # I
    vocab_size: int = 30522            # V: the uncased WordPiece vocabulary the tokenizer files define
    max_positions: int = 512           # P
    type_vocab_size: int = 2           # Tt
    head: str = "pooler"               # one of HEADS
    num_labels: int = 2                # L, used only when head == "classifier"

    def __post_init__(self):
        for name in ("layers", "heads", "hidden", "intermediate", "vocab_size", "max_positions",
                     "type_vocab_size", "num_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Architecture.{name} must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(f"Architecture hidden={self.hidden} must be a multiple of heads={self.heads} "
                             f"(head size H / A must be whole)")
        if self.head not in HEADS:
            raise ValueError(f"Architecture.head must be one of {HEADS}, got {self.head!r}")

    # -- naming ---------------------------------------------------------------------------------------------
    @property
    def tuple(self) -> tuple[int, int, int, int]:
        """⟨D, A, H, I⟩, the paper's notation."""
        return (self.layers, self.heads, self.hidden, self.intermediate)

    @property
    def head_size(self) -> int:
        return self.hidden // self.heads

    def __str__(self) -> str:
        return "⟨{}, {}, {}, {}⟩".format(*self.tuple)

    @classmethod
    def parse(cls, text: str, **kwargs: Any) -> "Architecture":
        """From "4,12,384,1536" (also with spaces, angle brackets or 'x' separators) plus keyword sizes."""
        cleaned = text.strip().strip("⟨⟩<>()[]")
        parts = [p for p in cleaned.replace("x", ",").replace(" ", ",").split(",") if p]
        try:
            d, a, h, i = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"an architecture is four integers D,A,H,I (layers, heads, hidden, intermediate), "
                             f"got {text!r}") from None
        return cls(d, a, h, i, **kwargs)

    def with_head(self, head: str, num_labels: int | None = None) -> "Architecture":
        return replace(self, head=head, num_labels=self.num_labels if num_labels is None else num_labels)

    # -- exact parameter counts -----------------------------------------------------------------------------
    def embedding_parameters(self) -> int:
        """Word, position and token-type tables plus the embedding LayerNorm: (V + P + Tt) H + 2H."""
        return (self.vocab_size + self.max_positions + self.type_vocab_size) * self.hidden + 2 * self.hidden

    def layer_parameters(self) -> int:
        """One encoder layer: Q, K, V, O (4 H² + 4H), FFN (2 H I + I + H), two LayerNorms (4H)."""
        h, i = self.hidden, self.intermediate
        return 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h

    def head_parameters(self) -> int:
        """Pooler (H² + H) and, for a classifier, the linear classifier (L H + L)."""
        h = self.hidden
        if self.head == "none":
            return 0
        pooler = h * h + h
        if self.head == "pooler":
            return pooler
        return pooler + self.num_labels * h + self.num_labels

    def parameters(self, embeddings: bool = True) -> int:
        """Exact parameter count; embeddings=False gives the paper's effective size (encoder layers + head)."""
        body = self.layers * self.layer_parameters() + self.head_parameters()
        return body + (self.embedding_parameters() if embeddings else 0)

    # -- Hugging Face config.json ---------------------------------------------------------------------------
    def to_hf_config(self) -> dict[str, Any]:
        """The config.json keys transformers' BertConfig needs (erf GELU, absolute positions, eps 1e-12)."""
        config: dict[str, Any] = {
            "architectures": ["BertForSequenceClassification" if self.head == "classifier" else "BertModel"],
            "model_type": "bert",
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_positions,
            "type_vocab_size": self.type_vocab_size,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-12,
            "position_embedding_type": "absolute",
            "pad_token_id": 0,
        }
        if self.head == "classifier":
            config["num_labels"] = self.num_labels
        return config

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any] | str | os.PathLike, head: str | None = None) -> "Architecture":
        """From a config.json mapping, or a path to config.json or to the model directory holding it.

        head defaults to "classifier" for BertForSequenceClassification, else "pooler" (what BertModel builds).
        """
        source = "config"
        if not isinstance(config, Mapping):
            path = Path(config)
            source = str(path / "config.json" if path.is_dir() else path)
            config = json.loads(Path(source).read_text())
        require_bert(config, source)
        kinds = config.get("architectures") or ["BertModel"]
        if head is None:
            head = "classifier" if "BertForSequenceClassification" in kinds else "pooler"
        labels = config.get("id2label")
        num_labels = len(labels) if labels else int(config.get("num_labels", 2))
        return cls(
            layers=int(config.get("num_hidden_layers", 12)), heads=int(config.get("num_attention_heads", 12)),
            hidden=int(config.get("hidden_size", 768)), intermediate=int(config.get("intermediate_size", 3072)),
            vocab_size=int(config.get("vocab_size", 30522)),
            max_positions=int(config.get("max_position_embeddings", 512)),
            type_vocab_size=int(config.get("type_vocab_size", 2)), head=head, num_labels=num_labels,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Architecture":
        return cls(**dict(data))


def require_bert(config: Mapping[str, Any], source: str) -> None:
    """Refuse a config.json of another family: Architectures, profiles, extraction and training (slicing,
    distillation) describe BERT encoders only, and a RoBERTa or DistilBERT read as BERT would be cut and trained
    silently wrong (other positions, other tensor names)."""
    model_type = config.get("model_type")
    if model_type not in (None, "bert"):
        raise UnsupportedModelError(
            f"{source}: model_type {model_type!r} is not BERT; extraction, profiles and training (pretrain, "
            f"finetune, pipeline) take BERT teachers only (BertModel, BertForSequenceClassification, "
            f"sentence-transformers BERT). bortengine.load() serves this model as it is")


# Named points of reference.
BERT_LARGE = Architecture(24, 16, 1024, 4096, max_positions=512)
BERT_BASE = Architecture(12, 12, 768, 3072)
BORT = Architecture(4, 8, 1024, 768)
MINILM_L6 = Architecture(6, 12, 384, 1536)
