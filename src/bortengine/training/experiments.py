"""Reproducible side experiments behind the figures of docs/training.md.

    python -m bortengine.training.experiments slice-ablation [--sentences 300]

slice-ablation: held-out sentence-embedding cosine (student vs teacher) right after initialisation, before any
training, for importance-based slicing against naive choices (the first k layers / neurons / heads, uniformly
spaced layers) and random init. It isolates what the importance measures buy.
"""
from __future__ import annotations

import argparse
import json
import os

__all__ = ["slice_ablation"]


def slice_ablation(sentences: int = 300) -> list[dict]:
    import torch

    from bortengine.architecture import Architecture
    from bortengine.engine import TextTokenizer
    from bortengine.training.data import heldout_sentences
    from bortengine.training.distill import embedding_similarity, uniform_layer_map
    from bortengine.training.models import build_model
    from bortengine.training.slicing import Importance, default_importance, slice_init
    from bortengine.training.teacher import default_teacher_path, load_teacher

    teacher = load_teacher()
    tokenizer = TextTokenizer.from_directory(default_teacher_path(), 128)
    importance = default_importance(teacher, tokenizer)
    texts = heldout_sentences()[:sentences]
    n_layers = len(importance.layer_removal_order) + 1

    def first_k(imp: Importance) -> Importance:
        """Scores that make slicing keep the first heads, neurons and coordinates (layers as imp)."""
        return Importance(torch.arange(imp.heads.shape[1], 0, -1.0).expand_as(imp.heads).clone(),
                          torch.arange(imp.neurons.shape[1], 0, -1.0).expand_as(imp.neurons).clone(),
                          torch.arange(imp.hidden.shape[0], 0, -1.0), imp.layer_removal_order)

    def with_layers(imp: Importance, kept: list[int]) -> Importance:
        dropped = [i for i in range(n_layers) if i not in kept]
        return Importance(imp.heads, imp.neurons, imp.hidden, dropped + [i for i in kept if i != kept[-1]])

    rows = []
    cases = [
        ("⟨4,12,384,1536⟩ layers by importance", "4,12,384,1536", importance),
        ("⟨4,12,384,1536⟩ first 4 layers (0-3)", "4,12,384,1536", with_layers(importance, [0, 1, 2, 3])),
        ("⟨4,12,384,1536⟩ uniform layers", "4,12,384,1536", with_layers(importance, uniform_layer_map(4, 6))),
        ("⟨6,12,384,768⟩ neurons by importance", "6,12,384,768", importance),
        ("⟨6,12,384,768⟩ first 768 neurons", "6,12,384,768", first_k(importance)),
        # H kept: all 12 teacher heads (dh 32) fit in 8 student heads (dh 48), regrouped 3 by 3
        ("⟨6,8,384,1536⟩ heads regrouped", "6,8,384,1536", importance),
        ("⟨4,8,384,768⟩ all by importance", "4,8,384,768", importance),
        ("⟨4,8,384,768⟩ random init", "4,8,384,768", None),
    ]
    for name, spec, imp in cases:
        arch = Architecture.parse(spec)
        if imp is None:
            student = build_model(arch, seed=0)
        else:
            student, _ = slice_init(arch, teacher, imp)
        cos = embedding_similarity(student, teacher, tokenizer, texts)
        rows.append({"case": name, "heldout_mean_cosine_at_init": round(cos, 4)})
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    return rows


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(prog="python -m bortengine.training.experiments")
    sub = parser.add_subparsers(dest="experiment", required=True)
    ablation = sub.add_parser("slice-ablation")
    ablation.add_argument("--sentences", type=int, default=300)
    args = parser.parse_args()
    if args.experiment == "slice-ablation":
        slice_ablation(args.sentences)


if __name__ == "__main__":
    main()
