"""ModelConfig: the hyper-parameters of a BERT encoder, parsed and validated from a Hugging Face config.json.

A key missing from config.json takes transformers' BertConfig default (so a model loads here exactly when, and
as, it loads in transformers); a key present with a value the engine cannot run is rejected with an
UnsupportedModelError that says why, rather than computing something subtly different.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from bortengine.errors import ModelLoadError, UnsupportedModelError

__all__ = ["ModelConfig", "SUPPORTED_KINDS"]

# The heads the engine runs: BertModel is the bare encoder (+ optional pooler); BertForSequenceClassification
# adds a linear classifier on the pooler output, which the engine applies in NumPy.
SUPPORTED_KINDS = ("BertModel", "BertForSequenceClassification")

# Activations that other BERT-family configs use. Named so the error can say what the model wants instead.
_OTHER_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python", "quick_gelu", "relu", "silu",
                      "swish", "mish", "tanh", "gelu_accurate", "gelu_10", "linear", "sigmoid")
_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
# A config.json holds tens of keys (and id2label); one larger than this is not a model's config. Read whole, so
# bounded before it is read.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
_FLOAT_MAX = sys.float_info.max  # a JSON integer above it has no float value


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a BERT encoder. Defaults are transformers' BertConfig defaults (BERT-base)."""

    hidden_size: int = 768                 # H
    num_hidden_layers: int = 12            # D, encoder layers
    num_attention_heads: int = 12          # H must be a multiple of this; head size = H / heads
    intermediate_size: int = 3072          # I, FFN width
    vocab_size: int = 30522                # V, rows of the word embedding
    max_position_embeddings: int = 512     # P, longest sequence (absolute position embeddings)
    type_vocab_size: int = 2               # Tt, segment (token type) embeddings
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"               # only exact erf GELU: the engine's FFN epilogue computes exactly that
    position_embedding_type: str = "absolute"
    model_type: str = "bert"
    kind: str = "BertModel"                # one of SUPPORTED_KINDS, from config.json "architectures"
    id2label: Mapping[int, str] = field(default_factory=lambda: NumberedLabels(2))
    problem_type: Optional[str] = None     # None: transformers' rule (1 label -> regression, else single-label)
    pad_token_id: int = 0

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_classifier(self) -> bool:
        return self.kind == "BertForSequenceClassification"

    @property
    def effective_problem_type(self) -> str:
        """The problem type transformers would use: explicit problem_type, else by the number of labels."""
        if self.problem_type is not None:
            return self.problem_type
        return "regression" if self.num_labels == 1 else "single_label_classification"

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ModelConfig":
        """Parse a config.json file, or the config.json inside a model directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ModelLoadError(
                f"no config.json in {path.parent}: a Hugging Face model directory needs config.json next to its "
                f"weights (save it with model.config.save_pretrained(dir) or copy it from the model's hub page)")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ModelLoadError(f"{path} is {size} bytes; a model's config.json is a few kilobytes (at most "
                                 f"{MAX_CONFIG_BYTES} here), so this is not one")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ModelLoadError(f"{path} is not valid JSON ({e}); re-save it with model.config.save_pretrained") from e
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> "ModelConfig":
        """Validate a config.json dictionary. source names the file in error messages."""
        if not isinstance(data, dict):
            raise ModelLoadError(f"{source} must hold a JSON object, got {type(data).__name__}")
        defaults = cls()

        model_type = data.get("model_type")
        architectures = data.get("architectures")
        if model_type is not None and not isinstance(model_type, str):
            raise ModelLoadError(f"{source}: model_type must be a string such as 'bert', got {model_type!r}")
        if model_type is not None and model_type != "bert":
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} is not supported; bortengine runs BERT encoders "
                f"(model_type 'bert') only. {_why_not(model_type)}")
        kind = _parse_kind(architectures, source)

        def get_int(key: str, minimum: int = 1) -> int:
            value = data.get(key, getattr(defaults, key))
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ModelLoadError(f"{source}: {key} must be an integer >= {minimum}, got {value!r}")
            return value

        hidden = get_int("hidden_size")
        layers = get_int("num_hidden_layers")
        heads = get_int("num_attention_heads")
        intermediate = get_int("intermediate_size")
        vocab = get_int("vocab_size")
        positions = get_int("max_position_embeddings")
        type_vocab = get_int("type_vocab_size")
        pad_token_id = data.get("pad_token_id", 0)
        if pad_token_id is None:
            pad_token_id = 0
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            raise ModelLoadError(f"{source}: pad_token_id must be an integer token id or null, got {pad_token_id!r}")
        if hidden % heads != 0:
            raise ModelLoadError(
                f"{source}: hidden_size={hidden} is not a multiple of num_attention_heads={heads}; each head "
                f"gets hidden_size / num_attention_heads channels, so fix one of them")

        eps = data.get("layer_norm_eps", defaults.layer_norm_eps)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < _FLOAT_MAX:
            raise ModelLoadError(f"{source}: layer_norm_eps must be a positive number, got {eps!r}")

        act = data.get("hidden_act", defaults.hidden_act)
        if act != "gelu":
            hint = ("it is a known activation, but the engine computes exact erf GELU only ('gelu'), so its "
                    "outputs would be wrong for this model" if act in _OTHER_ACTIVATIONS
                    else "it is not an activation name transformers knows either")
            raise UnsupportedModelError(f"{source}: hidden_act {act!r} is not supported: {hint}")

        pos_type = data.get("position_embedding_type", defaults.position_embedding_type)
        if pos_type != "absolute":
            raise UnsupportedModelError(
                f"{source}: position_embedding_type {pos_type!r} is not supported; the engine adds learned "
                f"absolute position embeddings ('absolute') only")
        for flag in ("is_decoder", "add_cross_attention"):
            if data.get(flag):
                raise UnsupportedModelError(
                    f"{source}: {flag}=true is not supported; bortengine runs bidirectional encoders only")

        id2label = _parse_id2label(data, source)
        problem_type = data.get("problem_type")
        if problem_type is not None and problem_type not in _PROBLEM_TYPES:
            raise ModelLoadError(
                f"{source}: problem_type {problem_type!r} is unknown; use one of {list(_PROBLEM_TYPES)} or null")

        return cls(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate,
            vocab_size=vocab, max_position_embeddings=positions, type_vocab_size=type_vocab,
            layer_norm_eps=float(eps), hidden_act=act, position_embedding_type=pos_type, model_type="bert",
            kind=kind, id2label=id2label, problem_type=problem_type, pad_token_id=pad_token_id,
        )


def _why_not(model_type: str) -> str:
    reasons = {
        "roberta": "RoBERTa offsets position ids by padding_idx + 1 and has no token types.",
        "xlm-roberta": "XLM-RoBERTa offsets position ids by padding_idx + 1 and has no token types.",
        "distilbert": "DistilBERT has different tensor names, no token types and no pooler.",
        "albert": "ALBERT factorises the embedding and shares weights across layers.",
        "electra": "ELECTRA projects embeddings to a different hidden size.",
        "deberta": "DeBERTa uses disentangled relative attention.",
        "deberta-v2": "DeBERTa uses disentangled relative attention.",
    }
    return reasons.get(model_type, "Its layers differ from BERT's, so BERT kernels would compute wrong outputs.")


def _parse_kind(architectures: Any, source: str) -> str:
    if architectures is None:
        return "BertModel"
    if isinstance(architectures, str):
        architectures = [architectures]
    if not isinstance(architectures, list) or not architectures:
        raise ModelLoadError(f"{source}: architectures must be a non-empty list of class names, got {architectures!r}")
    for name in architectures:
        if name in SUPPORTED_KINDS:
            return name
    raise UnsupportedModelError(
        f"{source}: architectures {architectures} are not supported; bortengine runs {list(SUPPORTED_KINDS)}. "
        f"If the checkpoint holds a BERT encoder under another head, set \"architectures\": [\"BertModel\"] to run "
        f"the encoder alone")


class NumberedLabels(Mapping[int, str]):
    """transformers' default names LABEL_0 .. LABEL_{n-1}, made when asked: a config's num_labels is checked
    against the classifier's weights only after parsing, so a hostile num_labels of 10^12 must cost nothing."""

    def __init__(self, count: int):
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> str:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self._count:
            raise KeyError(index)
        return f"LABEL_{index}"

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._count))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and len(other) == self._count and all(
            other.get(i) == f"LABEL_{i}" for i in range(self._count))

    def __repr__(self) -> str:
        return f"NumberedLabels({self._count})"


def _parse_id2label(data: dict, source: str) -> Mapping[int, str]:
    raw = data.get("id2label")
    if raw is None:
        n = data.get("num_labels", 2)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ModelLoadError(f"{source}: num_labels must be an integer >= 1, got {n!r}")
        return NumberedLabels(n)
    if not isinstance(raw, dict) or not raw:
        raise ModelLoadError(f"{source}: id2label must be a non-empty object {{\"0\": \"label\", ...}}, got {raw!r}")
    try:
        id2label = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{source}: id2label keys must be integers 0..num_labels-1, got {list(raw)}") from e
    if sorted(id2label) != list(range(len(id2label))):
        raise ModelLoadError(
            f"{source}: id2label keys must be exactly 0..{len(id2label) - 1}, got {sorted(id2label)}")
    n = data.get("num_labels")
    if n is not None and n != len(id2label):
        raise ModelLoadError(f"{source}: num_labels={n} disagrees with id2label, which has {len(id2label)} entries")
    return id2label
