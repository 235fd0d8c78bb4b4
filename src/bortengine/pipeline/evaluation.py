"""The pipeline's last stage: the teacher and the student scored on the test split on the engine (float32 and
int8), their latencies measured side by side on this CPU (batch 1 on the task's own short texts, and batched), the
teacher also on PyTorch eager (transformers, the usual way such a model is served), and the sizes compared.

Latencies are medians over rounds in which every model runs in turn (interleaved), so a noisy neighbour slows all of
them alike and the ratios stay honest.
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np

from bortengine.architecture import Architecture
from bortengine.progress import Progress

__all__ = ["evaluate_stage", "LATENCY_TEXTS", "BATCH"]

LATENCY_TEXTS = 48     # test texts timed one at a time, per round
ROUNDS = 3
BATCH = 32             # texts per call of the batched latency


def evaluate_stage(ctx, seconds: float) -> dict[str, Any]:
    from bortengine.engine import load

    task = ctx.task
    texts, pairs = task.texts("test")
    gold = [task.labels[e.label] for e in task.test]
    dirs = {"teacher": str(ctx.teacher_dir), "student": str(ctx.out / "model")}
    progress = Progress(4 + ROUNDS + 1, "evaluate", enabled=ctx.config.progress)
    engines = {}
    for who, directory in dirs.items():
        for dtype in ("float32", "int8"):
            engines[who, dtype] = load(directory, dtype=dtype, num_threads=ctx.threads)
    report: dict[str, Any] = {who: {"directory": d, **_sizes(d)} for who, d in dirs.items()}
    for (who, dtype), engine in engines.items():
        report[who][f"test_accuracy_{dtype}"] = _accuracy(engine, texts, pairs, gold)
        progress.step(f"accuracy {who} {dtype}")
    short = _short_inputs(texts, pairs)
    eager = _eager_teacher(dirs["teacher"], ctx.threads)
    timings = _interleaved_latencies(engines, eager, short, progress)
    for (who, dtype), ms in timings.items():
        if who == "eager":
            report["teacher"]["batch1_ms_pytorch_eager"] = ms
        else:
            report[who][f"batch1_ms_{dtype}"] = ms
    for (who, dtype), engine in engines.items():
        report[who][f"batched_texts_per_s_{dtype}"] = _throughput(engine, short)
    progress.step("batched")
    progress.show(final=True)
    t, s = report["teacher"], report["student"]
    report["speedup"] = {
        "engine_batch1_float32": t["batch1_ms_float32"] / s["batch1_ms_float32"],
        "engine_batch1_int8": t["batch1_ms_int8"] / s["batch1_ms_int8"],
        "student_int8_vs_teacher_pytorch_eager": t["batch1_ms_pytorch_eager"] / s["batch1_ms_int8"],
        "student_float32_vs_teacher_pytorch_eager": t["batch1_ms_pytorch_eager"] / s["batch1_ms_float32"],
        "batched_float32": s["batched_texts_per_s_float32"] / t["batched_texts_per_s_float32"],
    }
    report["accuracy_gap_points_float32"] = 100 * (t["test_accuracy_float32"] - s["test_accuracy_float32"])
    report["latency_inputs"] = {"texts": len(short[0]), "mean_tokens": _mean_tokens(engines["student", "float32"],
                                                                                    short),
                                "rounds": ROUNDS, "batch": BATCH, "threads": ctx.threads}
    return report


def _sizes(directory: str) -> dict[str, Any]:
    arch = Architecture.from_hf_config(directory)
    return {"architecture": str(arch), "parameters": arch.parameters(),
            "parameters_without_embeddings": arch.parameters(embeddings=False)}


def _accuracy(engine, texts: list[str], pairs: Optional[list[str]], gold: list[str]) -> float:
    kwargs = {"text_pairs": pairs} if pairs is not None else {}
    labels = engine.classify(texts, batch_size=64, **kwargs).labels
    return float(np.mean([a == b for a, b in zip(labels, gold)])) if gold else float("nan")


def _short_inputs(texts: list[str], pairs: Optional[list[str]]) -> tuple[list[str], Optional[list[str]]]:
    """LATENCY_TEXTS test texts drawn with a fixed seed: the requests a service of the task answers one at a
    time, at their own lengths."""
    chosen = sorted(np.random.default_rng(0).permutation(len(texts))[:LATENCY_TEXTS].tolist())
    return [texts[i] for i in chosen], ([pairs[i] for i in chosen] if pairs else None)


def _mean_tokens(engine, inputs) -> float:
    texts, pairs = inputs
    kwargs = {"text_pairs": pairs} if pairs is not None else {}
    return float(engine.tokenize(texts, **kwargs)["attention_mask"].sum(1).mean())


def _eager_teacher(directory: str, threads: int):
    """The teacher as transformers runs it (eager PyTorch, its default attention), with the engine's token ids."""
    import torch
    from transformers import BertForSequenceClassification

    torch.set_num_threads(threads)
    model = BertForSequenceClassification.from_pretrained(directory, use_safetensors=True).eval()
    return model


def _interleaved_latencies(engines: dict, eager, inputs, progress: Progress) -> dict[tuple[str, str], float]:
    """Median ms of one call at batch 1 per model, over ROUNDS rounds of every text, the models taking turns."""
    import torch

    texts, pairs = inputs
    tokenizer = engines["teacher", "float32"]
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in list(engines) + [("eager", "float32")]}
    for _ in range(ROUNDS):
        for i, text in enumerate(texts):
            kwargs = {"text_pairs": [pairs[i]]} if pairs is not None else {}
            for key, engine in engines.items():
                start = time.perf_counter()
                engine.classify([text], **kwargs)
                samples[key].append(time.perf_counter() - start)
            batch = {k: torch.from_numpy(v) for k, v in tokenizer.tokenize([text], **kwargs).items()}
            start = time.perf_counter()
            with torch.no_grad():
                eager(**batch)
            samples["eager", "float32"].append(time.perf_counter() - start)
        progress.step("latency round")
    return {key: 1e3 * float(np.median(v)) for key, v in samples.items()}


def _throughput(engine, inputs: tuple[Sequence[str], Optional[Sequence[str]]]) -> float:
    """Texts per second of classify() on batches of BATCH short texts (median of 5 calls)."""
    texts, pairs = inputs
    batch = (list(texts) * (BATCH // max(1, len(texts)) + 1))[:BATCH]
    kwargs = {}
    if pairs is not None:
        kwargs["text_pairs"] = (list(pairs) * (BATCH // max(1, len(pairs)) + 1))[:BATCH]
    times = []
    for _ in range(5):
        start = time.perf_counter()
        engine.classify(batch, batch_size=BATCH, **kwargs)
        times.append(time.perf_counter() - start)
    return BATCH / float(np.median(times))
