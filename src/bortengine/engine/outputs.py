"""What the engine returns: EncoderOutput from a call on ids, ClassificationResult from classify(), TokenEntity from
classify_tokens(), RankedDocument from rerank(); and the softmax both the engine and training use for class
probabilities.

Shapes: B = batch, T = tokens per sequence, H = hidden size, L = number of labels, N = number of texts.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator, Optional

import numpy as np

__all__ = ["EncoderOutput", "ClassificationResult", "TokenEntity", "RankedDocument", "softmax"]


@dataclass
class EncoderOutput:
    """What Engine.__call__ returns. Attribute access (out.logits) or dict-style (out["logits"]).

    Shapes: last_hidden_state [B,T,H] float32 (zeros at masked positions), pooler_output [B,H] float32 when the
    model has a pooler, logits [B,L] float32 when it is a sequence classifier, [B,T,L] for a token classifier
    (zeros at masked positions); absent outputs are None and not keys.
    The pooler reads each sequence's first unmasked token (its [CLS]); transformers reads position 0 even when it
    is masked, so the two agree whenever position 0 is unmasked (always, for right padding).
    """

    last_hidden_state: np.ndarray
    pooler_output: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[np.ndarray]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, np.ndarray]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, key: str) -> np.ndarray:
        if not isinstance(key, str) or key not in self.keys():
            raise KeyError(f"{key!r}: this output has {self.keys()}")
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by each row's maximum. Shapes: [N, L] -> [N, L]."""
    e = np.array(logits, dtype=np.float64)      # a copy, worked on in place: a call per text is the common case
    e -= e.max(axis=1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return e


@dataclass
class ClassificationResult:
    """What Engine.classify returns for a list of texts; iterating yields (label, probabilities [L]) pairs.

    Shapes: labels N strings, probabilities [N,L] float32 (softmax, or sigmoid for multi-label models),
    logits [N,L] float32.
    """

    labels: list[str]
    probabilities: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray]:
        return self.labels[i], self.probabilities[i]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return iter(zip(self.labels, self.probabilities))


@dataclass(frozen=True)
class TokenEntity:
    """A labelled token, or with aggregation a labelled word or entity, of Engine.classify_tokens: what
    transformers' token-classification pipeline gives as {"entity" or "entity_group", "score", "word", "start",
    "end", "index"}.

    label: the token's or word's label ("B-PER"), or with aggregation other than "none" the entity group ("PER");
    score: its probability (averaged over a group); word: the token, or the decoded word or entity; start, end:
    character offsets in the text (text[start:end]); index: the token's index in the tokenized text (with its
    special tokens), None when aggregated."""

    label: str
    score: float
    word: str
    start: int
    end: int
    index: Optional[int] = None


@dataclass(frozen=True)
class RankedDocument:
    """One document of Engine.rerank: its index in the documents given, its score (sentence-transformers'
    CrossEncoder.rank score: higher is more relevant) and its text."""

    index: int
    score: float
    text: str
