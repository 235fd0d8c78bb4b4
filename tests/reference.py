"""transformers (torch) references for the engine's outputs. Imported by tests only; the package never imports
torch. Models are loaded once per path and run in eager attention, float32, no grad.

Shapes: B = batch, T = tokens, H = hidden, L = labels.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import numpy as np


@functools.lru_cache(maxsize=None)
def hf_model(path: str):
    """BertModel (pooler only if the checkpoint has one) and, for a classifier, its classifier Linear."""
    from safetensors import safe_open
    from transformers import BertForSequenceClassification, BertModel

    p = Path(path)
    config = json.loads((p / "config.json").read_text())
    if "BertForSequenceClassification" in (config.get("architectures") or []):
        model = BertForSequenceClassification.from_pretrained(p, attn_implementation="eager").eval()
        return model.bert, model.classifier
    with safe_open(str(p / "model.safetensors"), "np") as f:
        has_pooler = any("pooler.dense" in k for k in f.keys())
    return BertModel.from_pretrained(p, add_pooling_layer=has_pooler, attn_implementation="eager").eval(), None


def hf_forward(path, input_ids: np.ndarray, attention_mask: Optional[np.ndarray] = None,
               token_type_ids: Optional[np.ndarray] = None) -> dict[str, Optional[np.ndarray]]:
    """{'last_hidden_state' [B,T,H], 'pooler_output' [B,H] or None, 'logits' [B,L] or None} from transformers."""
    import torch

    bert, classifier = hf_model(str(path))
    as_t = lambda a: None if a is None else torch.as_tensor(np.asarray(a, dtype=np.int64))  # noqa: E731
    with torch.no_grad():
        out = bert(input_ids=as_t(input_ids), attention_mask=as_t(attention_mask),
                   token_type_ids=as_t(token_type_ids))
        pooled = out.pooler_output
        logits = classifier(pooled) if classifier is not None else None
    return {"last_hidden_state": out.last_hidden_state.numpy(),
            "pooler_output": None if pooled is None else pooled.numpy(),
            "logits": None if logits is None else logits.numpy()}


def st_embeddings(path, texts: list[str], max_length: int = 256, normalize: bool = True,
                  text_pairs: Optional[list[str]] = None) -> np.ndarray:
    """sentence-transformers-style sentence embeddings [N,H] computed with transformers: the model's tokenizer
    (on (text, pair) pairs when text_pairs is given), mean pooling over the attention mask, then L2 normalisation."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    batch = tokenizer(texts, text_pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    bert, _ = hf_model(str(path))
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled.numpy()


def max_abs_diff_unmasked(a: np.ndarray, b: np.ndarray, mask: Optional[np.ndarray]) -> float:
    """max |a - b| over positions with mask 1 (all positions if mask is None). a, b [B,T,H]; mask [B,T]."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if mask is not None:
        diff = diff[np.asarray(mask).astype(bool)]
    return float(diff.max())


@functools.lru_cache(maxsize=None)
def hf_auto_model(path: str):
    """The transformers model of any family's directory, by its config.json architectures (eager attention)."""
    import transformers

    from safetensors import safe_open

    config = json.loads((Path(path) / "config.json").read_text())
    kind = (config.get("architectures") or ["AutoModel"])[0]
    kwargs = {}
    if kind.endswith("Model") and not kind.startswith(("DistilBert", "Electra")):  # a pooler if the checkpoint has one
        with safe_open(str(Path(path) / "model.safetensors"), "np") as f:
            kwargs["add_pooling_layer"] = any("pooler.dense" in k for k in f.keys())
    return getattr(transformers, kind).from_pretrained(path, attn_implementation="eager", **kwargs).eval()


def hf_auto_forward(path, input_ids: np.ndarray, attention_mask: Optional[np.ndarray] = None,
                    token_type_ids: Optional[np.ndarray] = None) -> dict[str, Optional[np.ndarray]]:
    """{'last_hidden_state', 'pooler_output', 'logits'} (None where the model has none) of any family's model."""
    import torch

    model = hf_auto_model(str(path))
    as_t = lambda a: None if a is None else torch.as_tensor(np.asarray(a, dtype=np.int64))  # noqa: E731
    with torch.no_grad():
        types = {} if token_type_ids is None else {"token_type_ids": as_t(token_type_ids)}
        out = model(input_ids=as_t(input_ids), attention_mask=as_t(attention_mask), **types)
    get = lambda k: None if getattr(out, k, None) is None else getattr(out, k).numpy()  # noqa: E731
    return {k: get(k) for k in ("last_hidden_state", "pooler_output", "logits")}
