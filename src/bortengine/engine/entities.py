"""Token classification results as transformers' token-classification pipeline gives them, from the token
classifier's logits and the tokenizer's offsets.

The pipeline's steps, kept in its order so the results agree with it label for label and offset for offset:
1. each token's class probabilities: a softmax of its logits (float32); special tokens left out;
2. each token's word: the tokenizer's token string; whether it continues a word: for word-aware tokenizers
   (WordPiece's "##" continuing-subword prefix) when the token differs in length from its text, for the others
   (byte-level BPE, Unigram) when it does not follow a space; an unknown token takes its text and starts a word;
3. aggregation "none": every token with its label and index; "simple": adjacent tokens grouped into entities
   (B-X starts one, I-X or X continues an X); "first" / "average" / "max": the tokens of a word get one label
   first (the first token's, the average of their probabilities, the most confident token's), then are grouped;
4. tokens and groups labelled with an ignored label ("O") are left out.

Shapes: T = tokens of one text, L = labels.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from bortengine.engine.outputs import TokenEntity
from bortengine.errors import InvalidInputError

__all__ = ["AGGREGATIONS", "TokenVocabulary", "token_entities", "check_aggregation"]

AGGREGATIONS = ("none", "simple", "first", "average", "max")


class TokenVocabulary:
    """What aggregation needs of a tokenizer: token strings, joining tokens into text, word awareness."""

    def __init__(self, token: Callable[[int], str], join: Callable[[list[str]], str], word_aware: bool,
                 unk_id: Optional[int]):
        self.token = token              # id -> token string ("##ing", "Ġworld", "▁Paris")
        self.join = join                # tokens -> text, as the tokenizer's decoder joins them
        self.word_aware = word_aware    # a continuing-subword prefix marks the pieces of a word
        self.unk_id = unk_id


def check_aggregation(aggregation: object, strategy: object = None) -> str:
    """The aggregation asked for, by `aggregation` or by transformers' name for it (`aggregation_strategy`: a name
    in any case, or its AggregationStrategy member, a str)."""
    if strategy is not None:
        if aggregation != "none":
            raise InvalidInputError(f"aggregation={aggregation!r} and aggregation_strategy={strategy!r} are the same "
                                    f"option; pass one of them")
        aggregation = strategy
    name = str.lower(aggregation) if isinstance(aggregation, str) else aggregation
    if name not in AGGREGATIONS:
        raise InvalidInputError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
    return str(name)


def token_entities(text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]], special: Sequence[int],
                   logits: np.ndarray, labels: Sequence[str], vocabulary: TokenVocabulary, aggregation: str,
                   ignore_labels: Sequence[str]) -> list[TokenEntity]:
    """The entities of one text. Shapes: ids, offsets, special [T]; logits [T,L] float32."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    scores = shifted / shifted.sum(axis=-1, keepdims=True)
    tokens = _tokens(text, ids, offsets, special, scores, vocabulary)
    if aggregation in ("none", "simple"):
        entities = [_labelled(t["scores"], labels, t) for t in tokens]
    else:
        entities = [_word(group, labels, vocabulary, aggregation) for group in _words(tokens)]
    if aggregation != "none":
        entities = _grouped(entities, vocabulary)
    return [e for e in entities if e.label not in ignore_labels]


def _tokens(text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]], special: Sequence[int],
            scores: np.ndarray, vocabulary: TokenVocabulary) -> list[dict]:
    """Step 2: each non-special token with its word, offsets, probabilities and whether it continues a word."""
    tokens = []
    for index, (token_id, (start, end), is_special) in enumerate(zip(ids, offsets, special)):
        if is_special:
            continue
        word, piece = vocabulary.token(token_id), text[start:end]
        if vocabulary.word_aware:
            continues = len(word) != len(piece)
        else:
            continues = start > 0 and " " not in text[start - 1:start + 1]
        if token_id == vocabulary.unk_id:
            word, continues = piece, False
        tokens.append({"word": word, "scores": scores[index], "start": start, "end": end, "index": index,
                       "continues": continues})
    return tokens


def _labelled(scores: np.ndarray, labels: Sequence[str], token: dict) -> TokenEntity:
    best = int(scores.argmax())
    return TokenEntity(labels[best], float(scores[best]), token["word"], token["start"], token["end"],
                       token["index"])


def _words(tokens: list[dict]) -> list[list[dict]]:
    """The tokens grouped into words: a token that continues a word joins the one before."""
    words: list[list[dict]] = []
    for token in tokens:
        if words and token["continues"]:
            words[-1].append(token)
        else:
            words.append([token])
    return words


def _word(tokens: list[dict], labels: Sequence[str], vocabulary: TokenVocabulary, aggregation: str) -> TokenEntity:
    """One word's label: its first token's, its most confident token's, or that of its averaged probabilities."""
    if aggregation == "first":
        scores = tokens[0]["scores"]
    elif aggregation == "max":
        scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
    else:
        scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
    best = int(scores.argmax())
    word = vocabulary.join([t["word"] for t in tokens])
    return TokenEntity(labels[best], float(scores[best]), word, tokens[0]["start"], tokens[-1]["end"])


def _tag(label: str) -> tuple[str, str]:
    """("B" or "I", entity type) of a label: B-X begins an X, I-X and a bare X continue one."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def _grouped(entities: list[TokenEntity], vocabulary: TokenVocabulary) -> list[TokenEntity]:
    """Adjacent entities of one type merged into an entity group (a B- label starts a new one)."""
    groups: list[list[TokenEntity]] = []
    for entity in entities:
        bi, tag = _tag(entity.label)
        if groups and tag == _tag(groups[-1][-1].label)[1] and bi != "B":
            groups[-1].append(entity)
        else:
            groups.append([entity])
    return [TokenEntity(group[0].label.split("-", 1)[-1], float(np.nanmean([e.score for e in group])),
                        vocabulary.join([e.word for e in group]), group[0].start, group[-1].end)
            for group in groups]
