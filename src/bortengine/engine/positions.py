"""Positions of the families that number them after the padding id (RoBERTa, XLM-RoBERTa, CamemBERT).

transformers gives such a token the position padding_idx + (its count of non-padding ids up to and including it):
fairseq's make_positions, which reads the ids, not the attention mask. The native encoder gives the token in column
t position row t, and the engine loads the position table from row padding_idx + 1 on (engine/families.py), so the
two agree exactly when every real token (mask 1) sits at the column of its count of non-padding ids: right-padded
batches without padding ids inside the text, which is every batch the engine's tokenizer makes. Any other batch
(left padding, holes in the mask over real ids) is laid out again here, each real token moved to the column of its
position, and the encoder's output moved back; a padding id with mask 1, which transformers embeds at the padding
row the engine does not load, is refused.

Shapes: B = batch, T = tokens per row of the caller's batch, T' <= T of the laid-out one, H = hidden size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from bortengine.errors import InvalidInputError

__all__ = ["PositionLayout", "position_layout"]


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
