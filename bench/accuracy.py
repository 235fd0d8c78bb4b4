"""Accuracy of the engine's int8 path against its float32 path, on real data (issue: int8 inference).

1. all-MiniLM-L6-v2: mean and minimum cosine between int8 and float32 sentence embeddings of N real sentences
   (the held-out Wikipedia/IMDB sentences of the training splits, or movie-review texts).
2. A fine-tuned classifier (any directory `bortengine.load` reads, e.g. one written by `bortengine export` after
   `bortengine finetune --task rt`): test accuracy on the committed Rotten Tomatoes test split, float32 vs int8.

    python bench/int8_accuracy.py [--sentences 1000] [--classifier DIR] [--threads 2]

Prints a small table and writes bench/results/int8_accuracy.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import bortengine
from bortengine.testing import minilm_path

RESULTS = Path(__file__).resolve().parent / "results" / "int8_accuracy.json"


def real_sentences(n: int) -> list[str]:
    from bortengine.training.data import heldout_sentences, load_split

    sentences = list(heldout_sentences())
    if len(sentences) < n:  # top up with movie-review texts of the IMDB train split
        sentences += [e.text[:400] for e in load_split("imdb", "train")[: n - len(sentences)]]
    return sentences[:n]


def embedding_agreement(n: int, threads: int) -> dict:
    sentences = real_sentences(n)
    fp32 = bortengine.load(minilm_path(), num_threads=threads)
    int8 = bortengine.load(minilm_path(), num_threads=threads, dtype="int8")
    a, b = fp32.encode(sentences, batch_size=64), int8.encode(sentences, batch_size=64)
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"model": "all-MiniLM-L6-v2", "sentences": len(sentences), "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min()), "kernel_int8": int8.kernel, "target_mean_cosine": 0.99,
            "ok": bool(cos.mean() >= 0.99)}


def classifier_accuracy(path: Path, threads: int) -> dict:
    from bortengine.training.data import load_split

    test = load_split("rt", "test")
    texts, labels = [e.text for e in test], np.array([e.label for e in test])
    acc = {}
    for dtype in ("float32", "int8"):
        engine = bortengine.load(path, num_threads=threads, dtype=dtype)
        probs = engine.classify(texts, batch_size=64).probabilities
        acc[dtype] = float((np.argmax(probs, axis=1) == labels).mean())
    loss_points = 100 * (acc["float32"] - acc["int8"])
    return {"classifier": str(path), "task": "rt", "test_examples": len(texts), "accuracy_float32": acc["float32"],
            "accuracy_int8": acc["int8"], "loss_points": loss_points, "target_max_loss_points": 0.5,
            "ok": bool(loss_points <= 0.5)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--classifier", type=Path, default=None, help="fine-tuned classifier directory")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    out = {"embeddings": embedding_agreement(args.sentences, args.threads)}
    e = out["embeddings"]
    print(f"int8 vs float32 embeddings, {e['model']}, {e['sentences']} sentences: mean cosine "
          f"{e['mean_cosine']:.5f} (min {e['min_cosine']:.5f}; target >= 0.99) {'ok' if e['ok'] else 'MISSED'}")
    if args.classifier is not None:
        out["classifier"] = c = classifier_accuracy(args.classifier, args.threads)
        print(f"classifier {c['classifier']}: RT test accuracy float32 {100 * c['accuracy_float32']:.2f}%, int8 "
              f"{100 * c['accuracy_int8']:.2f}% (loss {c['loss_points']:+.2f} points; target <= 0.5) "
              f"{'ok' if c['ok'] else 'MISSED'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    return 0 if all(v["ok"] for v in out.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
