"""Initialisation by extraction: a student ⟨D, A, H, I⟩ whose weights are slices of its teacher's.

Importance is measured once per teacher on a calibration batch of real text (forward passes only, no labels: the
teacher here has no task and no masked-LM head, so gradient-based scores would need a loss it does not have):
- a head's importance is the mean L2 norm of what it adds to the residual stream, ||ctx_h W_O[:, h]ᵀ||, over the
  batch's real tokens (a head whose output is small can go without changing the layer much);
- an FFN neuron's importance is its mean |activation| times the norm of its output column, E|a_i| ||W_out[:, i]||,
  the same "size of contribution" for the feed-forward sum;
- a hidden dimension's importance is its mean |value| summed over the embedding output and every layer output
  (dimensions that carry large values in the residual stream everywhere);
- layers are removed greedily: at each step drop the layer whose removal keeps the teacher's mean-pooled sentence
  embedding closest (cosine) to the full teacher's; the order of removal ranks the layers.
Slicing keeps the most important of each, in their original order. A hidden size that shrinks is projected by
coordinate selection (the same kept coordinates in every matrix, embedding and LayerNorm, so the residual stream
stays aligned); a rotation (PCA) would not commute with LayerNorm's per-coordinate gain. When the student's head
size differs from the teacher's, the kept heads' rows are regrouped into the student's heads and the queries
rescaled so the attention logits keep their scale. A student dimension larger than the teacher's keeps the
extra entries of transformers' random init.

Shapes: B = batch, T = tokens, L = teacher layers, A = heads, dh = head size, H = hidden, I = FFN size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification

from bortengine.architecture import Architecture
from bortengine.training.errors import TrainingError
from bortengine.training.models import architecture_of, build_model, encoder_of

__all__ = ["Importance", "measure_importance", "slice_init", "mean_pool", "forward_layers"]


@dataclass
class Importance:
    """Importance scores of a teacher's parts (larger = keep first)."""

    heads: torch.Tensor               # [L,A]
    neurons: torch.Tensor             # [L,I]
    hidden: torch.Tensor              # [H]
    layer_removal_order: list[int]    # teacher layers, least important first (the last one is never removed)

    def kept_layers(self, depth: int) -> list[int]:
        n = len(self.layer_removal_order) + 1
        if not 1 <= depth <= n:
            raise TrainingError(f"a student sliced from a {n}-layer teacher has 1..{n} layers, not {depth}")
        dropped = set(self.layer_removal_order[:n - depth])
        return [i for i in range(n) if i not in dropped]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers mean pooling. hidden [B,T,H], mask [B,T] -> [B,H]."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def forward_layers(model, layers: Sequence[int], input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The encoder's output running only the given layers (in order). Used for the layer ranking."""
    encoder = encoder_of(model)
    full = encoder.encoder.layer
    try:
        encoder.encoder.layer = torch.nn.ModuleList([full[i] for i in layers])
        return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    finally:
        encoder.encoder.layer = full


@torch.no_grad()
def measure_importance(teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Importance:
    """Scores of every head, neuron, hidden dimension and layer of teacher on one calibration batch [B,T]."""
    encoder = encoder_of(teacher)
    was_training = encoder.training
    encoder.eval()
    arch = architecture_of(encoder)
    n_layers, n_heads, dh = arch.layers, arch.heads, arch.head_size
    real = attention_mask.reshape(-1).bool()          # [B*T] real tokens
    heads = torch.zeros(n_layers, n_heads)
    neurons = torch.zeros(n_layers, arch.intermediate)
    hidden = torch.zeros(arch.hidden)
    handles = []

    def tokens(x: torch.Tensor) -> torch.Tensor:      # [B,T,C] -> [N,C] real tokens only
        return x.reshape(-1, x.shape[-1])[real]

    for l, layer in enumerate(encoder.encoder.layer):
        w_o = layer.attention.output.dense.weight       # [H, A*dh]
        w_out = layer.output.dense.weight               # [H, I]

        def on_context(module, args, l=l, w_o=w_o):
            ctx = tokens(args[0])                        # [N, A*dh]
            for h in range(n_heads):
                part = ctx[:, h * dh:(h + 1) * dh] @ w_o[:, h * dh:(h + 1) * dh].T   # [N,H]
                heads[l, h] += part.norm(dim=-1).mean()

        def on_ffn(module, args, out, l=l, w_out=w_out):
            neurons[l] += tokens(out).abs().mean(0) * w_out.norm(dim=0)

        def on_layer(module, args, out):
            out = out[0] if isinstance(out, tuple) else out
            hidden.add_(tokens(out).abs().mean(0))

        handles.append(layer.attention.output.dense.register_forward_pre_hook(on_context))
        handles.append(layer.intermediate.register_forward_hook(on_ffn))
        handles.append(layer.register_forward_hook(on_layer))
    handles.append(encoder.embeddings.register_forward_hook(on_layer))
    try:
        full = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()

    target = F.normalize(mean_pool(full, attention_mask), dim=-1)
    remaining = list(range(n_layers))
    removal: list[int] = []
    while len(remaining) > 1:
        best, best_cos = None, -2.0
        for candidate in remaining:
            kept = [i for i in remaining if i != candidate]
            out = forward_layers(encoder, kept, input_ids, attention_mask)
            cos = (F.normalize(mean_pool(out, attention_mask), dim=-1) * target).sum(-1).mean().item()
            if cos > best_cos:
                best, best_cos = candidate, cos
        removal.append(best)
        remaining.remove(best)
    encoder.train(was_training)
    return Importance(heads, neurons, hidden, removal)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in ascending index order (k may exceed len: then all)."""
    k = min(k, scores.numel())
    return torch.sort(torch.topk(scores, k).indices).values


def _put(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy src into the leading block of dst (dst may be larger where the student is wider)."""
    dst[tuple(slice(0, n) for n in src.shape)] = src


def too_large_to_slice(arch: Architecture, teacher: Architecture) -> Optional[str]:
    """Why a student of arch cannot be cut from the teacher, or None: it has more layers (each of its layers is one
    of the teacher's). Wider or narrower sizes are fine: the most important parts are kept, the rest initialised."""
    if arch.layers <= teacher.layers:
        return None
    return (f"the student {arch} has more layers than its teacher {teacher}: each of a student's layers is cut from "
            f"one of the teacher's, so give at most {teacher.layers} layers")


@torch.no_grad()
def slice_init(arch: Architecture, teacher, importance: Importance, seed: int = 0,
               attn_implementation: str = "eager", dropout: float = 0.1):
    """A student of arch initialised from teacher's most important parts.

    Returns (student, layer_map): layer_map[j] is the teacher layer that student layer j was cut from (the
    distillation matches their outputs). The student's head (pooler, classifier) is sliced when the teacher has
    one, otherwise it keeps its random init.
    """
    t_enc = encoder_of(teacher)
    t_arch = architecture_of(t_enc)
    too_large = too_large_to_slice(arch, t_arch)
    if too_large:
        raise TrainingError(f"slice_init: {too_large}")
    student = build_model(arch, seed=seed, attn_implementation=attn_implementation, dropout=dropout)
    s_enc = encoder_of(student)
    kept = importance.kept_layers(arch.layers)
    hid = _top(importance.hidden, arch.hidden)                       # kept hidden coordinates

    def cols(w: torch.Tensor) -> torch.Tensor:                        # [out, H] -> [out, H_s]
        return w[:, hid]

    te, se = t_enc.embeddings, s_enc.embeddings
    _put(se.word_embeddings.weight, cols(te.word_embeddings.weight[:arch.vocab_size]))
    _put(se.position_embeddings.weight, cols(te.position_embeddings.weight[:arch.max_positions]))
    _put(se.token_type_embeddings.weight, cols(te.token_type_embeddings.weight[:arch.type_vocab_size]))
    _put(se.LayerNorm.weight, te.LayerNorm.weight[hid])
    _put(se.LayerNorm.bias, te.LayerNorm.bias[hid])

    dh_t, dh_s = t_arch.head_size, arch.head_size
    n_keep_heads = min(t_arch.heads, (arch.heads * dh_s) // dh_t) or 1
    q_scale = math.sqrt(dh_s / dh_t) if dh_s != dh_t else 1.0
    for j, k in enumerate(kept):
        tl, sl = t_enc.encoder.layer[k], s_enc.encoder.layer[j]
        heads = _top(importance.heads[k], n_keep_heads)
        rows = torch.cat([torch.arange(h * dh_t, (h + 1) * dh_t) for h in heads.tolist()])   # [n_keep*dh_t]
        t_att, s_att = tl.attention.self, sl.attention.self
        for name, scale in (("query", q_scale), ("key", 1.0), ("value", 1.0)):
            t_lin, s_lin = getattr(t_att, name), getattr(s_att, name)
            _put(s_lin.weight, cols(t_lin.weight[rows]) * scale)
            _put(s_lin.bias, t_lin.bias[rows] * scale)
        t_out, s_out = tl.attention.output, sl.attention.output
        _put(s_out.dense.weight, t_out.dense.weight[hid][:, rows])
        _put(s_out.dense.bias, t_out.dense.bias[hid])
        _put(s_out.LayerNorm.weight, t_out.LayerNorm.weight[hid])
        _put(s_out.LayerNorm.bias, t_out.LayerNorm.bias[hid])
        neurons = _top(importance.neurons[k], arch.intermediate)
        _put(sl.intermediate.dense.weight, cols(tl.intermediate.dense.weight[neurons]))
        _put(sl.intermediate.dense.bias, tl.intermediate.dense.bias[neurons])
        _put(sl.output.dense.weight, tl.output.dense.weight[hid][:, neurons])
        _put(sl.output.dense.bias, tl.output.dense.bias[hid])
        _put(sl.output.LayerNorm.weight, tl.output.LayerNorm.weight[hid])
        _put(sl.output.LayerNorm.bias, tl.output.LayerNorm.bias[hid])

    if getattr(s_enc, "pooler", None) is not None and getattr(t_enc, "pooler", None) is not None:
        _put(s_enc.pooler.dense.weight, t_enc.pooler.dense.weight[hid][:, hid])
        _put(s_enc.pooler.dense.bias, t_enc.pooler.dense.bias[hid])
    if isinstance(student, BertForSequenceClassification) and isinstance(teacher, BertForSequenceClassification) \
            and teacher.config.num_labels == arch.num_labels:
        _put(student.classifier.weight, teacher.classifier.weight[:, hid])
        _put(student.classifier.bias, teacher.classifier.bias)
    return student, kept


def calibration_batch(tokenizer, texts: Sequence[str], pad_id: int = 0):
    """[B,T] ids and mask of texts (tokenizer: an engine.TextTokenizer, truncating at its max_length)."""
    from bortengine.training.data import collate

    return collate(tokenizer.token_ids(texts), pad_id)


def default_importance(teacher, tokenizer, texts: Optional[Sequence[str]] = None) -> Importance:
    """Importance on a fixed calibration batch: the first two sentences of 32 evenly spaced pretraining
    documents (Wikipedia and IMDB train), cut at 64 tokens. Small on purpose: the greedy layer ranking runs
    D(D+1)/2 - 1 forward passes, and the rankings it gives are stable at this size."""
    if texts is None:
        from bortengine.training.data import pretraining_documents, split_sentences

        docs = pretraining_documents()
        step = max(1, len(docs) // 32)
        texts = [" ".join(split_sentences(docs[i][1])[:2]) for i in range(0, len(docs), step)][:32]
    ids, mask = calibration_batch(tokenizer, texts)
    ids, mask = ids[:, :64], mask[:, :64]
    return measure_importance(teacher, ids, mask)
