"""The pipeline's last stage: the teacher and the student scored on the test split on the engine (float32 and
int8, each int8 model with the layers its calibration on the training texts takes out of int8: calibrate_for_int8),
their latencies measured side by side on this CPU (batch 1 on the task's own short texts, and batched), the
teacher also on PyTorch eager (transformers, the usual way such a model is served), and the sizes compared.

Latencies are medians over rounds in which every model answers its texts back to back and the models take turns
(block_medians), so a noisy neighbour slows all of them alike and the ratios stay honest.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bortengine.architecture import Architecture
from bortengine.engine import transformer_directory
from bortengine.progress import Progress

__all__ = ["evaluate_stage", "calibrate_for_int8", "block_medians", "sample_inputs", "LATENCY_TEXTS", "BATCH"]

LATENCY_TEXTS = 48     # test texts timed one at a time, per round
ROUNDS = 5
BATCH = 32             # texts per call of the batched latency


def evaluate_stage(ctx, seconds: float) -> dict[str, Any]:
    from bortengine.engine import load

    task = ctx.task
    texts, pairs = task.texts("test")
    gold = [task.labels[e.label] for e in task.test]
    dirs = {"teacher": str(ctx.teacher_dir), "student": str(ctx.out / "model")}
    calibration = {"student": calibrate_for_int8(ctx, ctx.out / "model"),
                   "teacher": ctx.results.get("teacher", {}).get("int8_calibration")
                   or calibrate_for_int8(ctx, ctx.teacher_dir)}   # (a run from before the teacher stage did it)
    progress = Progress(4 + ROUNDS + 1, "evaluate", enabled=ctx.config.progress)
    engines = {}
    for who, directory in dirs.items():
        for dtype in ("float32", "int8"):
            engines[who, dtype] = load(directory, dtype=dtype, num_threads=ctx.threads)
    report: dict[str, Any] = {who: {"directory": d, **_sizes(d), "int8_calibration": calibration[who],
                                    "int8_float32_layers": engines[who, "int8"].float32_layers,
                                    "int8_bf16_layers": engines[who, "int8"].bf16_layers}
                              for who, d in dirs.items()}
    for (who, dtype), engine in engines.items():
        report[who][f"test_accuracy_{dtype}"] = accuracy(engine, texts, pairs, gold)
        progress.step(f"accuracy {who} {dtype}")
    short = sample_inputs(texts, pairs)
    # timed at the length the student is served at, both: a teacher used as given would otherwise read its longer
    # texts to its own (longer) truncation, and the student's speed-up count what the cut saves
    length = ctx.max_length()
    eager = _eager_teacher(dirs["teacher"], ctx.threads)
    timings = _interleaved_latencies(engines, eager, short, length, progress)
    for (who, dtype), ms in timings.items():
        if who == "eager":
            report["teacher"]["batch1_ms_pytorch_eager"] = ms
        else:
            report[who][f"batch1_ms_{dtype}"] = ms
    for (who, dtype), engine in engines.items():
        report[who][f"batched_texts_per_s_{dtype}"] = _throughput(engine, short, length)
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
    report["test_texts"] = len(gold)
    report["latency_inputs"] = {"texts": len(short[0]), "mean_tokens": _mean_tokens(engines["student", "float32"],
                                                                                    short, length),
                                "max_length": length, "rounds": ROUNDS, "batch": BATCH, "threads": ctx.threads}
    return report


def calibrate_for_int8(ctx, directory: Path) -> dict[str, Any]:
    """The layers the model runs in bf16 or float32 when it runs int8, chosen on the task's training texts
    (bortengine.export.calibrate_int8: every token's cosine to float32 >= 0.98) and recorded in its config.json, so that
    load(dtype="int8") — the evaluation's, the latency suite's, the user's — runs what was measured. A model
    already stored in int8 (a pre-quantized checkpoint given as the teacher) is left as it is."""
    from bortengine.export import calibrate_int8, is_prequantized

    if is_prequantized(directory):
        return {"skipped": "a pre-quantized int8 checkpoint: its weights are the int8 ones, nothing to compare"}
    texts, pairs = ctx.task.texts("train")
    result = calibrate_int8(directory, texts, pairs, num_threads=ctx.threads, progress=ctx.config.progress)
    return result.summary()

def _sizes(directory: str) -> dict[str, Any]:
    arch = Architecture.from_hf_config(transformer_directory(directory))
    return {"architecture": str(arch), "parameters": arch.parameters(),
            "parameters_without_embeddings": arch.parameters(embeddings=False)}


def accuracy(engine, texts: list[str], pairs: Optional[list[str]], gold: list[str]) -> float:
    kwargs = {"text_pairs": pairs} if pairs is not None else {}
    labels = engine.classify(texts, batch_size=64, **kwargs).labels
    return float(np.mean([a == b for a, b in zip(labels, gold)])) if gold else float("nan")


def sample_inputs(texts: list[str], pairs: Optional[list[str]]) -> tuple[list[str], Optional[list[str]]]:
    """LATENCY_TEXTS texts (and their pairs) drawn with a fixed seed: the requests a service of the task answers
    one at a time, at their own lengths."""
    chosen = sorted(np.random.default_rng(0).permutation(len(texts))[:LATENCY_TEXTS].tolist())
    return [texts[i] for i in chosen], ([pairs[i] for i in chosen] if pairs else None)


def _mean_tokens(engine, inputs, length: int) -> float:
    texts, pairs = inputs
    kwargs = {"text_pairs": pairs} if pairs is not None else {}
    return float(engine.tokenize(texts, max_length=length, **kwargs)["attention_mask"].sum(1).mean())


def _eager_teacher(directory: str, threads: int):
    """The teacher as transformers runs it (eager PyTorch, its default attention), with the engine's token ids; read
    as training reads it (training.load_pretrained: a sentence-transformers directory's sub-folder too)."""
    import torch
    from transformers import BertForSequenceClassification

    from bortengine.training import load_pretrained

    torch.set_num_threads(threads)
    return load_pretrained(BertForSequenceClassification, directory, attn_implementation=None).eval()


def _interleaved_latencies(engines: dict, eager, inputs, length: int, progress: Progress
                           ) -> dict[tuple[str, str], float]:
    """Median ms of one call at batch 1 per model, texts cut to `length` tokens (block_medians over ROUNDS rounds of
    every text)."""
    import torch

    texts, pairs = inputs
    tokenizer = engines["teacher", "float32"]

    def kwargs(i: int) -> dict[str, Any]:
        return {"text_pairs": [pairs[i]]} if pairs is not None else {}

    batches = [{k: torch.from_numpy(v) for k, v in tokenizer.tokenize([t], max_length=length, **kwargs(i)).items()}
               for i, t in enumerate(texts)]

    def run_eager(i: int) -> None:
        with torch.no_grad():
            eager(**batches[i])

    calls = {key: (lambda i, e=engine: e.classify([texts[i]], max_length=length, **kwargs(i)))
             for key, engine in engines.items()}
    calls["eager", "float32"] = run_eager
    return block_medians(calls, len(texts), ROUNDS, lambda: progress.step("latency round"))


def block_medians(calls: dict[Any, Callable[[int], Any]], count: int, rounds: int,
                  after_round: Optional[Callable[[], None]] = None, block: int = 12) -> dict[Any, float]:
    """Median ms of calls[key](i), i < count, per key, over `rounds` rounds of every i. Each model answers `block`
    calls back to back (after one untimed call), as a service running one model does, with its weights in the
    CPU's caches; the models take turns block by block, in reversed order every other block, so a noisy neighbour
    slows all of them alike. (Taking turns call by call timed every model with the others' weights in the caches:
    that cost the small student more than the teacher, 3.2x measured against 3.9x when each ran alone, on TREC.
    Whole rounds as blocks let a burst of load land on one model's block only.)"""
    samples: dict[Any, list[float]] = {key: [] for key in calls}
    keys = list(calls)
    turn = 0
    for _ in range(rounds):
        for start in range(0, count, block):
            for key in (keys if turn % 2 == 0 else keys[::-1]):
                call = calls[key]
                call(start)
                for i in range(start, min(count, start + block)):
                    began = time.perf_counter()
                    call(i)
                    samples[key].append(time.perf_counter() - began)
            turn += 1
        if after_round is not None:
            after_round()
    return {key: 1e3 * float(np.median(v)) for key, v in samples.items()}


def _throughput(engine, inputs: tuple[Sequence[str], Optional[Sequence[str]]], length: int) -> float:
    """Texts per second of classify() on batches of BATCH short texts cut to `length` tokens (median of 5 calls)."""
    texts, pairs = inputs
    batch = (list(texts) * (BATCH // max(1, len(texts)) + 1))[:BATCH]
    kwargs = {}
    if pairs is not None:
        kwargs["text_pairs"] = (list(pairs) * (BATCH // max(1, len(pairs)) + 1))[:BATCH]
    times = []
    for _ in range(5):
        start = time.perf_counter()
        engine.classify(batch, batch_size=BATCH, max_length=length, **kwargs)
        times.append(time.perf_counter() - start)
    return BATCH / float(np.median(times))
