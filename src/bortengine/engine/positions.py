"""Positions of the families that number them after the padding id (RoBERTa, XLM-RoBERTa, CamemBERT, MPNet), and
MPNet's relative position bias.

transformers gives such a token the position padding_idx + (its count of non-padding ids up to and including it):
fairseq's make_positions, which reads the ids, not the attention mask. The native encoder gives the token in column
t position row t, and the engine loads the position table from row padding_idx + 1 on (engine/families.py), so the
two agree exactly when every real token (mask 1) sits at the column of its count of non-padding ids: right-padded
batches without padding ids inside the text, which is every batch the engine's tokenizer makes. Any other batch
(left padding, holes in the mask over real ids) is laid out again here, each real token moved to the column of its
position, and the encoder's output moved back; a padding id with mask 1, which transformers embeds at the padding
row the engine does not load, is refused.

MPNet adds to each attention score a bias of the query-key distance (transformers' MPNetEncoder: distances bucketed
by relative_position_bucket, 32 buckets, exact up to 8, logarithmic to 128, one value per bucket and head). The
engine turns the table into one value per distance (relative_position_bias), which the native attention adds to
the packed tokens of each sequence: it counts distances between the tokens with mask 1. transformers counts them
between columns, masked ones included, so a row whose mask has a 0 between two 1s is refused for such a model
(check_contiguous_mask); left or right padding is not a hole.

Shapes: B = batch, T = tokens per row of the caller's batch, T' <= T of the laid-out one, H = hidden size,
R = relative position buckets, A = heads, P = positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from bortengine.errors import InvalidInputError

__all__ = ["PositionLayout", "position_layout", "relative_position_buckets", "relative_position_bias",
           "check_contiguous_mask"]

# transformers' MPNetEncoder.relative_position_bucket as compute_position_bias calls it (its defaults)
BUCKETS = 32
MAX_DISTANCE = 128


@dataclass(frozen=True)
class PositionLayout:
    """Where each real token of the caller's batch [B,T] sits in the batch the encoder runs [B,T']."""

    rows: np.ndarray        # [N] row of each real token
    columns: np.ndarray     # [N] its column in the caller's batch
    placed: np.ndarray      # [N] its column in the encoder's batch: its position, counted from 0
    shape: tuple[int, int]  # (B, T) of the caller's batch

    def restore(self, hidden: np.ndarray) -> np.ndarray:
        """The encoder's hidden states [B,T',H] in the caller's layout [B,T,H], zeros where the mask is 0."""
        out = np.zeros(self.shape + hidden.shape[2:], dtype=hidden.dtype)
        out[self.rows, self.columns] = hidden[self.rows, self.placed]
        return out


def position_layout(ids: np.ndarray, mask: Optional[np.ndarray], types: Optional[np.ndarray], pad_id: int
                    ) -> tuple[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]], Optional[PositionLayout]]:
    """((ids, mask, types) for the encoder, the layout to undo or None when the batch runs as it is).

    Shapes: ids [B,T] int64, mask [B,T] int64 or None (all ones), types [B,T] int64 or None."""
    real = np.ones(ids.shape, dtype=bool) if mask is None else mask.astype(bool)
    not_pad = ids != pad_id
    padding_tokens = real & ~not_pad
    if padding_tokens.any():
        r, c = np.argwhere(padding_tokens)[0]
        raise InvalidInputError(
            f"input_ids[{r}, {c}] is the padding id {pad_id} with attention_mask 1: this model numbers positions "
            f"by the ids that are not padding and embeds a padding id at a position the engine does not load; set "
            f"attention_mask 0 there, or leave the padding token out of the text")
    if mask is None or (np.array_equal(real, not_pad) and (mask[:, 1:] <= mask[:, :-1]).all()):
        return (ids, mask, types), None   # real tokens are the non-padding ids, each row's first: columns are positions
    position = np.cumsum(not_pad, axis=1) - 1                    # [B,T] each real token's position, from 0
    rows, columns = np.nonzero(real)
    placed = position[rows, columns]
    if np.array_equal(placed, columns):
        return (ids, mask, types), None
    width = int(placed.max()) + 1
    laid_ids = np.full((ids.shape[0], width), pad_id, dtype=np.int64)
    laid_ids[rows, placed] = ids[rows, columns]
    laid_mask = np.zeros_like(laid_ids)
    laid_mask[rows, placed] = 1
    laid_types = None
    if types is not None:
        laid_types = np.zeros_like(laid_ids)
        laid_types[rows, placed] = types[rows, columns]
    return (laid_ids, laid_mask, laid_types), PositionLayout(rows, columns, placed, ids.shape)


def relative_position_buckets(distance: np.ndarray) -> np.ndarray:
    """The bucket of each key-minus-query distance, as transformers' MPNetEncoder.relative_position_bucket gives it
    (num_buckets 32, max_distance 128): keys before the query (d < 0) in buckets 0..15, after it in 16..31; exact
    up to 7 tokens, then logarithmic, the last bucket from 128 on. The logarithm is taken in float32 as torch takes
    it, so the distances where it crosses an integer (16, 32, 64) fall in transformers' buckets.
    Shapes: distance [N] int -> [N] int64."""
    n = -np.asarray(distance, dtype=np.int64)
    half = BUCKETS // 2
    exact = half // 2
    bucket = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    far = np.maximum(n, exact).astype(np.float32)     # the small distances take the exact branch below
    scaled = (np.log(far / np.float32(exact)) / np.float32(math.log(MAX_DISTANCE / exact))
              * np.float32(half - exact))
    large = np.minimum(exact + scaled.astype(np.int64), half - 1)
    return bucket + np.where(n < exact, n, large)


def relative_position_bias(table: np.ndarray, max_positions: int) -> np.ndarray:
    """MPNet's bias table [R,A] (encoder.relative_attention_bias.weight) as one value per distance and head: [A, 2P-1]
    float32, column P - 1 + d for a key d tokens after its query, d in (-P, P); P = max_positions."""
    distance = np.arange(1 - max_positions, max_positions)
    return np.ascontiguousarray(table[relative_position_buckets(distance)].T, dtype=np.float32)


def check_contiguous_mask(mask: Optional[np.ndarray]) -> None:
    """Refuse a row whose mask has a 0 between two 1s: a model with a relative position bias counts distances over
    the columns between tokens, and the engine computes only the tokens with mask 1, side by side.
    Shapes: mask [B,T] 0/1 or None."""
    if mask is None:
        return
    real = mask.astype(bool)
    first = np.argmax(real, axis=1)
    last = real.shape[1] - 1 - np.argmax(real[:, ::-1], axis=1)
    holes = np.flatnonzero(last - first + 1 != real.sum(axis=1))
    if holes.size:
        r = int(holes[0])
        col = int(first[r] + np.argmin(real[r, first[r]:]))
        raise InvalidInputError(
            f"attention_mask[{r}, {col}] is 0 between tokens with mask 1: this model adds a bias of the distance "
            f"between tokens to its attention, counted over every column between them, and the engine computes the "
            f"tokens with mask 1 only; leave the masked tokens out of the row (padding at its start or end is fine)")
