"""The heads on the encoder: logits of sequence and token classifiers, and cross-encoder scores.

The encoder (and the pooler: dense + tanh on each row's first token) runs natively; a head is one or two small
matrix products on its outputs (on the encoder's GEMM, see Linear), so it is composed here, in float32 like the
rest:
- sequence classifier: BERT's classifier on the pooler output; RoBERTa's and MPNet's head (dense + tanh on the
  first token, out_proj) is that same shape, its weights loaded into the pooler and classifier
  (engine/families.py); DistilBERT's is pre_classifier + ReLU on the first token, then classifier; ELECTRA's
  classifier.dense + GELU (exact erf) on the first token, then out_proj.
- token classifier: the classifier on every token's hidden state.
- reranking: a cross-encoder's (query, document) score from its sequence logits, as sentence-transformers'
  CrossEncoder computes it (its activation_fn: sigmoid for one label by default).

Shapes: B = batch, T = tokens, H = hidden size, L = labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import math

import numpy as np

from bortengine.engine.config import ModelConfig
from bortengine.engine.native import core
from bortengine.engine.outputs import softmax
from bortengine.errors import BortEngineError, InvalidInputError

__all__ = ["Linear", "ClassifierHead", "first_tokens", "relevance_scores", "ACTIVATIONS"]

# math.erf over the [B,H] first tokens of a batch: about 4 ms for 32 x 768, next to a forward of tens of ms (NumPy
# has no erf, and scipy is no dependency)
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * (1 + erf(x / sqrt(2))) / 2, computed in float64 (torch's GELUActivation, "gelu")."""
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


# The activations of the heads' pre_classifier (engine/families.py Family.pre_classifier)
ACTIVATIONS = {"relu": lambda x: np.maximum(x, 0), "gelu": _gelu}


@dataclass(frozen=True)
class Linear:
    """y = x @ weight.T + bias on the engine's own GEMM (`_core.PackedLinear` of the ISA path `isa`, packed once):
    each row's result is the same whatever rows share the call, as the encoder's are. NumPy's BLAS rounds a row by
    its place in the batch, so a text's logits differed in the last bits between a call alone and a batch (or a
    forward batched with other callers'). Shapes: weight [N,K], bias [N]; x [..., K] -> [..., N] float32."""

    weight: np.ndarray
    bias: np.ndarray
    isa: str = ""

    def __post_init__(self):
        packed = core().PackedLinear(np.ascontiguousarray(self.weight, dtype=np.float32),
                                     np.ascontiguousarray(self.bias, dtype=np.float32), isa=self.isa)
        object.__setattr__(self, "_packed", packed)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        return self._packed(rows).reshape(*x.shape[:-1], len(self.bias))


def first_tokens(hidden: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """Each row's first token with mask 1 (position 0 for right padding), as the native pooler reads it.
    Shapes: hidden [B,T,H], mask [B,T] or None -> [B,H]."""
    if mask is None:
        return hidden[:, 0]
    return hidden[np.arange(len(hidden)), np.argmax(mask, axis=1)]


@dataclass(frozen=True)
class ClassifierHead:
    """The head of a sequence or token classifier. pre_classifier: a dense layer on the first token, then
    `activation` (ACTIVATIONS: DistilBERT's ReLU, ELECTRA's GELU), before the classifier (None: the sequence head
    reads the pooler output)."""

    classifier: Linear
    per_token: bool = False
    pre_classifier: Optional[Linear] = None
    activation: str = "relu"

    def logits(self, hidden: np.ndarray, pooled: Optional[np.ndarray], mask: Optional[np.ndarray]) -> np.ndarray:
        """Shapes: hidden [B,T,H], pooled [B,H] or None, mask [B,T] or None -> [B,L], or [B,T,L] per token (zeros
        where the mask is 0, like the hidden states there)."""
        if self.per_token:
            logits = self.classifier(hidden)
            if mask is not None:
                logits[mask == 0] = 0
        elif self.pre_classifier is not None:
            dense = self.pre_classifier(first_tokens(hidden, mask))
            logits = self.classifier(ACTIVATIONS[self.activation](dense))
        else:
            logits = self.classifier(pooled)
        return np.ascontiguousarray(logits, dtype=np.float32)


_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity", "Tanh": "tanh"}


def relevance_scores(logits: np.ndarray, config: ModelConfig, label: Optional[int | str]) -> np.ndarray:
    """A cross-encoder's score of each (query, document) pair from its logits [N,L] -> [N] float32.

    One label: the logit through sentence-transformers' CrossEncoder activation_fn (that of
    config_sentence_transformers.json, else config.json's, else sigmoid), as CrossEncoder.rank scores. More labels:
    the softmax probability of `label` (a name or index; default the second of two labels, the positive class of a
    binary classifier)."""
    if config.num_labels == 1:
        if label is not None:
            raise InvalidInputError(f"label={label!r} needs a model with several labels; this one has a single "
                                    f"relevance score")
        path = config.score_activation or "torch.nn.modules.activation.Sigmoid"
        activation = _ACTIVATIONS.get(path.rsplit(".", 1)[-1])
        if activation is None:
            raise BortEngineError(
                f"the model's sentence_transformers.activation_fn is {path}; the engine applies "
                f"{sorted(_ACTIVATIONS)} only. Score with engine(**engine.tokenize(queries, text_pairs=documents))"
                f".logits and apply it yourself")
        scores = logits[:, 0].astype(np.float64)
        if activation == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-scores))
        elif activation == "tanh":
            scores = np.tanh(scores)
        return scores.astype(np.float32)
    return softmax(logits)[:, _label_index(config, label)].astype(np.float32)


def _label_index(config: ModelConfig, label: Optional[int | str]) -> int:
    labels = config.labels
    if label is None:
        if len(labels) == 2:
            return 1
        raise InvalidInputError(f"this cross-encoder has {len(labels)} labels {labels}; pass label= the one whose "
                                f"probability ranks the documents")
    if isinstance(label, str):
        if label not in labels:
            raise InvalidInputError(f"label {label!r} is not one of the model's labels {labels}")
        return labels.index(label)
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < len(labels):
        raise InvalidInputError(f"label must be a label name or an index in [0, {len(labels)}), got {label!r}")
    return int(label)
