"""Accuracy of the engine's int8 or bf16 path against its float32 path, on real data (issues: int8 inference; bf16).

1. all-MiniLM-L6-v2: mean and minimum cosine between int8 (bf16) and float32 sentence embeddings of N real sentences
   (the held-out Wikipedia/IMDB sentences of the training splits, or movie-review texts).
2. A fine-tuned classifier (any directory `bortengine.load` reads, e.g. one written by `bortengine export` after
   `bortengine finetune --task rt`): test accuracy on the committed Rotten Tomatoes test split, float32 vs int8
   (bf16).

    python bench/accuracy.py [--dtype int8|bf16] [--sentences 1000] [--classifier DIR] [--threads 2]

Targets: int8 mean cosine >= 0.99 and at most 0.5 accuracy points lost; bf16 mean cosine >= 0.9995 and at most
0.2 points. Prints a small table and writes bench/results/accuracy_<dtype>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import bortengine
from bortengine.testing import minilm_path

RESULTS = Path(__file__).resolve().parent / "results"
# dtype -> (least mean cosine to float32 embeddings, most test-accuracy points lost)
TARGETS = {"int8": (0.99, 0.5), "bf16": (0.9995, 0.2)}


def real_sentences(n: int) -> list[str]:
    from bortengine.training.data import heldout_sentences, load_split

    sentences = list(heldout_sentences())
    if len(sentences) < n:  # top up with movie-review texts of the IMDB train split
        sentences += [e.text[:400] for e in load_split("imdb", "train")[: n - len(sentences)]]
    return sentences[:n]


def embedding_agreement(n: int, threads: int, dtype: str) -> dict:
    sentences = real_sentences(n)
    fp32 = bortengine.load(minilm_path(), num_threads=threads)
    low = bortengine.load(minilm_path(), num_threads=threads, dtype=dtype)
    a, b = fp32.encode(sentences, batch_size=64), low.encode(sentences, batch_size=64)
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    target = TARGETS[dtype][0]
    return {"model": "all-MiniLM-L6-v2", "dtype": dtype, "sentences": len(sentences),
            "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "kernel": low.kernel,
            "target_mean_cosine": target, "ok": bool(cos.mean() >= target)}


def classifier_accuracy(path: Path, threads: int, dtype: str) -> dict:
    from bortengine.training.data import load_split

    test = load_split("rt", "test")
    texts, labels = [e.text for e in test], np.array([e.label for e in test])
    acc = {}
    for d in ("float32", dtype):
        engine = bortengine.load(path, num_threads=threads, dtype=d)
        probs = engine.classify(texts, batch_size=64).probabilities
        acc[d] = float((np.argmax(probs, axis=1) == labels).mean())
    loss_points = 100 * (acc["float32"] - acc[dtype])
    target = TARGETS[dtype][1]
    return {"classifier": str(path), "task": "rt", "dtype": dtype, "test_examples": len(texts),
            "accuracy_float32": acc["float32"], f"accuracy_{dtype}": acc[dtype], "loss_points": loss_points,
            "target_max_loss_points": target, "ok": bool(loss_points <= target)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted(TARGETS), default="int8")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--classifier", type=Path, default=None, help="fine-tuned classifier directory")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    out = {"embeddings": embedding_agreement(args.sentences, args.threads, args.dtype)}
    e = out["embeddings"]
    print(f"{args.dtype} vs float32 embeddings, {e['model']}, {e['sentences']} sentences: mean cosine "
          f"{e['mean_cosine']:.5f} (min {e['min_cosine']:.5f}; target >= {e['target_mean_cosine']}) "
          f"{'ok' if e['ok'] else 'MISSED'}")
    if args.classifier is not None:
        out["classifier"] = c = classifier_accuracy(args.classifier, args.threads, args.dtype)
        print(f"classifier {c['classifier']}: RT test accuracy float32 {100 * c['accuracy_float32']:.2f}%, "
              f"{args.dtype} {100 * c[f'accuracy_{args.dtype}']:.2f}% (loss {c['loss_points']:+.2f} points; target "
              f"<= {c['target_max_loss_points']}) {'ok' if c['ok'] else 'MISSED'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"accuracy_{args.dtype}.json").write_text(json.dumps(out, indent=2))
    return 0 if all(v["ok"] for v in out.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
