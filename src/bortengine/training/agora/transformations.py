"""Agora's transformations: new points near a point (the loop asks for them around each dev mistake). Any callable
`(points, rng, n) -> one list of new points per point` is one; these are the measured ones:
  - NearestNeighbourSwap: replace a fraction of the words with nearest neighbours in the teacher's word-embedding
    space (cosine), one of the k nearest at random;
  - MaskedLMFill: the same positions filled with a masked language model's top predictions (when one exists);
  - GaussianNoise: for non-text data, Gaussian samples around the point in a representation space.

Words are the engine's word pieces (engine.TextTokenizer, the tokenizer the student is trained and served with).
Torch is imported only by the transformations that need a model, when built.

Shapes: N = points, V = vocabulary, E = word-embedding width, F = features of a vector point.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bortengine.engine import TextTokenizer
from bortengine.training.agora.loop import AgoraError

__all__ = ["NearestNeighbourSwap", "MaskedLMFill", "GaussianNoise", "WordPieces"]

_FUNCTION_WORDS = frozenset("""
a an the and or but if then than so as of at by for with about against between into through during before after
above below to from up down in out on off over under again further once here there when where why how all any both
each few more most other some such no nor not only own same too very can will just don should now is are was were be
been being have has had having do does did doing would could might must shall may i me my myself we our ours you your
yours he him his she her hers it its they them their theirs what which who whom this that these those am s t ll ve re
d m o y also its it's""".split())


class WordPieces:
    """Words of a text as word-piece ids of the model directory's tokenizer, and back (its decoder joins '##'
    pieces). A text is cut at max_length word pieces."""

    def __init__(self, tokenizer_dir: str | os.PathLike, max_length: int = 64):
        self.tokenizer = TextTokenizer.from_directory(tokenizer_dir)
        self.max_length = max_length
        self.id_to_token = self.tokenizer.vocabulary()
        self.vocab_size = len(self.id_to_token)
        # replaceable: whole-word alphabetic tokens of 2+ letters (not '##' pieces, punctuation, [UNK], numbers) and
        # not function words: swapping "the" for its neighbour "an" makes noise, not a nearby sentence
        self.replaceable = np.array([t.isalpha() and t.isascii() and len(t) > 1 and t not in _FUNCTION_WORDS
                                     for t in self.id_to_token])

    def words(self, text: str) -> list[list[int]]:
        ids = self.tokenizer.encode([text], self.max_length, add_special_tokens=False)[0].ids
        words: list[list[int]] = []
        for i in ids:
            if words and self.id_to_token[i].startswith("##"):
                words[-1].append(i)
            else:
                words.append([i])
        return words

    def text(self, words: Sequence[Sequence[int]]) -> str:
        return self.tokenizer.decode([i for w in words for i in w])

    def slots(self, words: Sequence[Sequence[int]]) -> list[int]:
        return [k for k, w in enumerate(words) if len(w) == 1 and self.replaceable[w[0]]]


def variants(text: str, pieces: WordPieces, rng: np.random.Generator, n: int, fraction: float,
              candidates: Callable[[list[list[int]], list[int]], list[list[int]]]) -> list[str]:
    """Up to n distinct texts with round(fraction x words) (at least 1) of the replaceable words changed;
    candidates(words, positions) gives the replacement ids to choose from at each position."""
    words = pieces.words(text)
    slots = pieces.slots(words)
    if not slots:
        return []
    m = min(len(slots), max(1, round(fraction * len(words))))
    out: list[str] = []
    seen = {text.lower().strip()}
    for _ in range(3 * n):          # a few more tries than asked: short texts repeat themselves
        if len(out) >= n:
            break
        positions = sorted(rng.choice(slots, size=m, replace=False).tolist())
        options = candidates(words, positions)
        new = [list(w) for w in words]
        for pos, opts in zip(positions, options):
            if len(opts):
                new[pos] = [int(opts[rng.integers(len(opts))])]
        t = pieces.text(new)
        if t.lower().strip() not in seen:
            seen.add(t.lower().strip())
            out.append(t)
    return out


class NearestNeighbourSwap:
    """Texts near a text: a fraction of its words replaced by one of their k nearest neighbours (cosine) in a word-
    embedding table, by default the teacher's. Only whole-word alphabetic tokens are replaced and proposed.

    Shapes: embeddings [V,E] (row i = token id i of the tokenizer's vocabulary).
    """

    def __init__(self, embeddings: np.ndarray, tokenizer_dir: str | os.PathLike, fraction: float = 0.25, k: int = 8,
                 max_length: int = 64):
        if not 0.0 < fraction <= 1.0:
            raise AgoraError(f"fraction must be in (0, 1], got {fraction}")
        self.pieces = WordPieces(tokenizer_dir, max_length)
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] < self.pieces.vocab_size:
            raise AgoraError(f"embeddings must be [V,E] with V >= the vocabulary ({self.pieces.vocab_size}), "
                             f"got {emb.shape}")
        self.unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        self.candidates = np.flatnonzero(self.pieces.replaceable)          # [C]
        self.fraction, self.k = fraction, k
        self._cache: dict[int, np.ndarray] = {}

    @classmethod
    def from_model(cls, model_dir: Optional[str | os.PathLike] = None, tokenizer_dir=None, **kwargs):
        """The word-embedding table of a BERT directory (default all-MiniLM-L6-v2). Imports torch."""
        from bortengine.training.models import encoder_of
        from bortengine.training.teacher import default_teacher_path, load_teacher

        if model_dir is None:
            model_dir = default_teacher_path()
        enc = encoder_of(load_teacher(str(model_dir)))
        emb = enc.embeddings.word_embeddings.weight.detach().float().numpy()
        return cls(emb, tokenizer_dir or model_dir, **kwargs)

    def neighbours(self, token: int) -> np.ndarray:
        """[<=k] the k nearest replaceable tokens of token (itself excluded), nearest first."""
        if token not in self._cache:
            sims = self.unit[self.candidates] @ self.unit[token]             # [C]
            top = np.argpartition(-sims, min(self.k + 1, len(sims) - 1))[:self.k + 1]
            top = top[np.argsort(-sims[top])]
            ids = self.candidates[top]
            self._cache[token] = ids[ids != token][:self.k]
        return self._cache[token]

    def _fill_cache(self, texts: Sequence[str]) -> None:
        """Neighbours of every replaceable token of texts in one [U,E] x [E,C] product."""
        tokens = sorted({w[0] for t in texts for w in self.pieces.words(t)
                         if len(w) == 1 and self.pieces.replaceable[w[0]] and w[0] not in self._cache})
        cand = self.unit[self.candidates]                                   # [C,E]
        for s in range(0, len(tokens), 512):
            block = np.asarray(tokens[s:s + 512])
            sims = self.unit[block] @ cand.T                                # [U,C]
            top = np.argpartition(-sims, self.k + 1, axis=1)[:, :self.k + 1]
            for row, token in enumerate(block):
                order = top[row][np.argsort(-sims[row, top[row]])]
                ids = self.candidates[order]
                self._cache[int(token)] = ids[ids != token][:self.k]

    def __call__(self, texts: Sequence[str], rng: np.random.Generator, n: int) -> list[list[str]]:
        self._fill_cache(texts)

        def candidates(words, positions):
            return [self.neighbours(words[p][0]) for p in positions]

        return [variants(t, self.pieces, rng, n, self.fraction, candidates) for t in texts]


class MaskedLMFill:
    """Texts near a text: a fraction of its words masked together and each filled with one of a masked language
    model's top-k predictions (whole-word alphabetic tokens other than the original). Imports torch.

    model: a BertForMaskedLM (or a directory transformers loads as one); all-MiniLM-L6-v2 has no MLM head, so the
    measured runs use NearestNeighbourSwap.
    """

    def __init__(self, model, tokenizer_dir: str | os.PathLike, fraction: float = 0.15, k: int = 5,
                 max_length: int = 64):
        import torch  # noqa: F401  (fail here, not mid-run, when torch is missing)
        from transformers import BertForMaskedLM

        if isinstance(model, (str, os.PathLike)):
            from bortengine.training.models import load_pretrained

            model = load_pretrained(BertForMaskedLM, model, attn_implementation=None)
        if not hasattr(model, "cls"):
            raise AgoraError(f"MaskedLMFill needs a masked language model (BertForMaskedLM), got "
                             f"{type(model).__name__}")
        self.model = model.eval()
        self.pieces = WordPieces(tokenizer_dir, max_length)
        self.mask_id = self.pieces.tokenizer.token_id("[MASK]")
        self.cls_id, self.sep_id = self.pieces.tokenizer.token_id("[CLS]"), self.pieces.tokenizer.token_id("[SEP]")
        self.fraction, self.k = fraction, k

    def _predict(self, words, positions) -> list[np.ndarray]:
        import torch

        ids, where = [self.cls_id], []
        for k, w in enumerate(words):
            if k in positions:
                where.append(len(ids))
                ids.append(self.mask_id)
            else:
                ids.extend(w)
        ids.append(self.sep_id)
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, where].float().numpy()   # [M,V]
        logits[:, ~self.pieces.replaceable[:logits.shape[1]]] = -np.inf
        out = []
        for row, pos in zip(logits, positions):
            row[words[pos][0]] = -np.inf
            top = np.argsort(-row)[:self.k]
            out.append(top[np.isfinite(row[top])])
        return out

    def __call__(self, texts: Sequence[str], rng: np.random.Generator, n: int) -> list[list[str]]:
        return [variants(t, self.pieces, rng, n, self.fraction, self._predict) for t in texts]


class GaussianNoise:
    """Points near a point for non-text data: x + scale * std * N(0, I) in a representation space.

    encode (optional): points -> [N,F] representations; the new points are representations then (the student and
    labeller must take them). std: [F] per-feature spread (e.g. of the training set), default 1.
    """

    def __init__(self, scale: float = 0.1, std: Optional[np.ndarray] = None,
                 encode: Optional[Callable[[Sequence[Any]], np.ndarray]] = None):
        if scale <= 0:
            raise AgoraError(f"scale must be > 0, got {scale}")
        self.scale, self.std, self.encode = scale, None if std is None else np.asarray(std, np.float64), encode

    def __call__(self, points: Sequence[Any], rng: np.random.Generator, n: int) -> list[list[np.ndarray]]:
        x = np.asarray(self.encode(points) if self.encode else np.stack([np.asarray(p) for p in points]),
                       dtype=np.float64)                                   # [N,F]
        std = self.std if self.std is not None else np.ones(x.shape[1])
        noise = rng.standard_normal((x.shape[0], n, x.shape[1])) * (self.scale * std)   # [N,n,F]
        return [[row + e for e in eps] for row, eps in zip(x, noise)]
