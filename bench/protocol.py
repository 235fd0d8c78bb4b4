"""How each kind of benchmark row is measured and checked; the test files only choose cases and call these.

Timing (measure): one call outside the clock (also the output that is checked), three calls to estimate the
cost, then pytest-benchmark's pedantic mode: warm-up rounds, then as many rounds as fit the per-row time budget
(within [MIN_ROUNDS, max_rounds]), one call per round. The statistic is the median: the machine is shared, and the
median ignores the rounds that another process's burst slowed down.

Shapes: B = batch, T = tokens per sequence, H = hidden size, M/N/K = GEMM rows/cols/depth.
"""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from cases import (BENCH_DIR, BF16_RUNTIMES, ENGINE, ENGINES, FAIL_ATOL, FLAG_ATOL, INT8_RUNTIMES, MEMORY_FACTOR,
                   MEMORY_SLACK_BYTES, MIN_MEAN_COSINE, ORT, REFERENCE, ModelCase, ShapeCase, encoder_flops)
from report import EncoderTiming, GemmTiming, Report
from probe import CpuShare
from runtimes import RuntimeNotForModel, RuntimePool, RuntimeUnavailable, engine_status

MIN_ROUNDS = 5
MAX_ROUNDS = 200
WARMUP_SECONDS = 0.3


class AccuracyWarning(UserWarning):
    """A runtime's output differs from PyTorch eager by more than the flag threshold (but is not wrong)."""


def measure(benchmark, fn, arg, budget_seconds: float, max_rounds: int = MAX_ROUNDS) -> tuple[dict | None, object]:
    """Time fn(arg) with pytest-benchmark; returns (stats, the last round's result).

    stats: median/min/iqr in ms, the rounds and the others' CPU share (see probe.CpuShare).

    Returns None when pytest-benchmark is disabled (--benchmark-disable: fn runs once, only the checks count).
    The caller has already made one untimed call. Warm-up covers WARMUP_SECONDS (at least one call) so thread
    pools are awake and caches hold the weights as they will in the timed rounds.
    """
    if not benchmark.enabled:
        return None, benchmark.pedantic(fn, args=(arg,))
    estimates = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn(arg)
        estimates.append(time.perf_counter() - t0)
    estimate = max(sorted(estimates)[1], 1e-9)
    rounds = max(MIN_ROUNDS, min(max_rounds, math.ceil(budget_seconds / estimate)))
    warmup = max(1, min(50, math.ceil(WARMUP_SECONDS / estimate)))
    share = CpuShare()
    last = benchmark.pedantic(fn, args=(arg,), rounds=rounds, iterations=1, warmup_rounds=warmup)
    stats = benchmark.stats.stats
    return {"median_ms": stats.median * 1e3, "min_ms": stats.min * 1e3, "iqr_ms": stats.iqr * 1e3,
            "rounds": rounds, "others_cpu": share.others()}, last


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|; inf when either holds NaN/inf (a plain max would hide NaN: every comparison is false)."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(d.max()) if d.size and np.isfinite(d).all() else (math.inf if d.size else 0.0)


def token_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between matching rows of a and b [N, H] (each a token's hidden state), [N]."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return cos if cos.size else np.ones(1)


# --- encoder rows -----------------------------------------------------------------------------------------------

def run_encoder_row(benchmark, pool: RuntimePool, report: Report, model: ModelCase, shape: ShapeCase,
                    runtime: str, budget_seconds: float) -> None:
    """Check one runtime against PyTorch eager on a (model, shape), then time its forward."""
    benchmark.group = f"{model.name} {shape.name}"
    inputs = model.encoder_inputs(shape)
    try:
        rt = pool.get(model, runtime)
    except RuntimeUnavailable as exc:
        report.skipped[f"{runtime} on {model.name}" if isinstance(exc, RuntimeNotForModel) else runtime] = str(exc)
        pytest.skip(str(exc))
    if runtime == ORT:
        report.fusion[model.name] = rt.fusion
    reference = pool.reference(model, shape, inputs)  # last_hidden_state [B,T,H] of PyTorch eager
    native = rt.prepare(inputs)
    out = np.array(rt.last_hidden_state(rt.run(native)), copy=True)  # a copy, in case a runtime reuses buffers
    if out.shape != reference.shape:
        pytest.fail(f"{runtime} last_hidden_state has shape {out.shape}, PyTorch {reference.shape}")
    real = inputs.attention_mask.astype(bool)  # [B,T]
    diff = None if runtime == REFERENCE else max_abs_diff(out[real], reference[real])
    reduced = runtime in INT8_RUNTIMES + BF16_RUNTIMES  # checked by cosine: their difference is rounding
    cosine = token_cosines(out[real], reference[real]) if reduced else None
    masked_zero = bool(np.all(out[~real] == 0)) if runtime in ENGINES else None

    stats, last = measure(benchmark, rt.run, native, budget_seconds)
    # The last timed call against the first: a threading race shows up as a run-to-run difference.
    rerun = max_abs_diff(rt.last_hidden_state(last)[real], out[real])
    if stats is not None:
        benchmark.extra_info.update(max_abs_diff=diff, rerun_max_abs_diff=rerun, real_tokens=inputs.real_tokens,
                                    **stats)
        report.encoder.append(EncoderTiming(
            model=model.name, shape=shape.name, runtime=runtime, batch=shape.batch,
            tokens=inputs.input_ids.shape[1], real_tokens=inputs.real_tokens,
            flops=encoder_flops(model.sizes(), inputs.lengths), max_abs_diff=diff, family=model.family,
            rerun_max_abs_diff=rerun, masked_rows_zero=masked_zero,
            min_cosine=None if cosine is None else float(cosine.min()), smoke=model.smoke, **stats))

    # Checked after timing so a wrong row still shows its time in the table.
    where = f"{runtime} on {model.name} {shape.name}"
    if cosine is not None:
        if runtime in MIN_MEAN_COSINE:
            assert cosine.mean() >= MIN_MEAN_COSINE[runtime], (
                f"{where}: mean per-token cosine to PyTorch's float32 hidden states {cosine.mean():.4f} < "
                f"{MIN_MEAN_COSINE[runtime]}")
    elif diff is not None:
        assert diff <= FAIL_ATOL, f"{where}: max |last_hidden_state - PyTorch| = {diff:.3g} > {FAIL_ATOL:g}"
        if diff > FLAG_ATOL:
            warnings.warn(f"{where}: max |diff| vs PyTorch = {diff:.3g} > {FLAG_ATOL:g}", AccuracyWarning)
    assert rerun <= FLAG_ATOL, f"{where}: the last timed call differs from the first by {rerun:.3g}"
    if masked_zero is False:
        worst = float(np.abs(out[~real]).max())
        pytest.fail(f"{where}: rows of masked positions are not zero (max |x| = {worst:.3g})")


# --- GEMM rows --------------------------------------------------------------------------------------------------

def _gemm_operands(m: int, k: int, n: int, bias: bool):
    rng = np.random.default_rng(m * 1_000_003 + k * 1009 + n)
    a = rng.standard_normal((m, k), dtype=np.float32)  # [M,K]
    w = rng.standard_normal((n, k), dtype=np.float32) / np.float32(math.sqrt(k))  # [N,K], torch layout
    b = rng.standard_normal(n, dtype=np.float32) if bias else None  # [N]
    return a, w, b


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return max_abs_diff(got, want) / max(float(np.abs(want).max()), 1e-30)


def _record_gemm(benchmark, report, label, m, k, n, stats, peak, err, smoke) -> None:
    if stats is None:  # benchmarks disabled
        return
    gflops = 2 * m * n * k / (stats["median_ms"] * 1e-3) / 1e9
    benchmark.extra_info.update(gflops=gflops, **stats)
    g = GemmTiming(label=label, m=m, k=k, n=n, median_ms=stats["median_ms"], gflops=gflops, peak_candidate=peak,
                   max_rel_err=err, smoke=smoke, others_cpu=stats["others_cpu"])
    report.gemm.append(g)


def run_packed_linear(benchmark, report: Report, threads: int, m: int, k: int, n: int, budget_seconds: float,
                      peak: bool = False, smoke: bool = False, bf16: bool = False) -> None:
    """_core.PackedLinear(w [N,K], bias [N])(a [M,K]) -> [M,N] (bf16: _core.Bf16Linear, the bf16 engine's layer
    GEMM): checked against float64 (bf16: on the bf16-rounded operands, which it multiplies exactly), then timed."""
    ok, why = engine_status()
    if not ok:
        report.skipped[ENGINE] = f"bortengine not available: {why}"
        pytest.skip(f"bortengine not available: {why}")
    from bortengine import _core

    benchmark.group = "gemm peak" if peak else "gemm"
    a, w, b = _gemm_operands(m, k, n, bias=not peak)
    name = "Bf16Linear" if bf16 else "PackedLinear"
    linear = getattr(_core, name)(w, b)
    out = linear(a, num_threads=threads)
    # the operands as the kernel multiplies them
    ar, wr = ((_core.to_bf16(x).astype(np.uint32) << 16).view(np.float32) for x in (a, w)) if bf16 else (a, w)
    want = ar.astype(np.float64) @ wr.T.astype(np.float64) + (0 if b is None else b)
    err = _rel_err(out, want)
    stats, last = measure(benchmark, lambda x: linear(x, num_threads=threads), a, budget_seconds, max_rounds=100)
    err = max(err, _rel_err(last, want))  # the last timed call too: a threading race shows up here
    _record_gemm(benchmark, report, f"bortengine {name}", m, k, n, stats, peak, err, smoke)
    assert err <= 1e-4, f"{name} {m}x{k}x{n}: max rel err {err:.3g} vs float64"


def run_torch_linear(benchmark, report: Report, threads: int, m: int, k: int, n: int, budget_seconds: float,
                     peak: bool = False, smoke: bool = False, bf16: bool = False) -> None:
    """torch.nn.functional.linear(a [M,K], w [N,K], bias [N]) (torch.matmul a @ w^T for the peak); bf16: on bf16
    tensors (the matmul torch.autocast runs)."""
    import torch

    benchmark.group = "gemm peak" if peak else "gemm"
    a, w, b = (None if x is None else torch.from_numpy(x) for x in _gemm_operands(m, k, n, bias=not peak))
    if bf16:
        a, w, b = (None if x is None else x.to(torch.bfloat16) for x in (a, w, b))
    if peak:
        wt = w.T.contiguous()  # [K,N]: a plain row-major matmul, torch's best case
        fn = lambda x: torch.matmul(x, wt)  # noqa: E731
        label = "torch matmul"
    else:
        fn = lambda x: torch.nn.functional.linear(x, w, b)  # noqa: E731
        label = "torch linear" + (" bf16" if bf16 else "")
    with torch.inference_mode():
        fn(a)
        stats, _ = measure(benchmark, fn, a, budget_seconds, max_rounds=100)
    _record_gemm(benchmark, report, label, m, k, n, stats, peak, None, smoke)


def child_env(threads: int) -> dict:
    """Environment of a probe child: the thread count for every BLAS/OpenMP runtime, and the source tree."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        env[var] = str(threads)
    src = str(BENCH_DIR.parent / "src")
    if src in sys.path:  # the parent found bortengine in the source tree, not installed: so must the child
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def run_probe(args: list[str], threads: int, timeout: float = 600) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "probe.py"), *args], env=child_env(threads),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"probe {args[0]} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_numpy_peak(benchmark, report: Report, threads: int, size: int, budget_seconds: float,
                   smoke: bool = False) -> None:
    """numpy matmul of two [size,size] fp32 matrices, timed inside a child (see probe.py)."""
    benchmark.group = "gemm peak"
    result = {}

    def child():
        result.update(run_probe(["numpy-gemm", "--size", str(size), "--seconds", str(budget_seconds)], threads))

    benchmark.pedantic(child, rounds=1, iterations=1)  # the child's own median is what counts
    if not benchmark.enabled:
        return
    stats = {"median_ms": result["median_s"] * 1e3, "min_ms": result["min_s"] * 1e3, "iqr_ms": None,
             "rounds": result["rounds"], "others_cpu": result.get("others_cpu")}
    _record_gemm(benchmark, report, f"numpy matmul ({result['blas']})", size, size, size, stats, True, None, smoke)


def run_fma_ceiling(benchmark, report: Report, threads: int, seconds: float = 1.0) -> None:
    """The FMA probe on 1 and `threads` threads (best of 3 each): the machine's fp32 ceiling, for the report."""
    import fma_peak

    benchmark.group = "gemm peak"
    result = {}
    try:
        benchmark.pedantic(lambda: result.update(fma_peak.ceiling(threads, seconds)), rounds=1, iterations=1)
    except fma_peak.ProbeUnavailable as exc:
        pytest.skip(str(exc))
    if benchmark.enabled:
        report.fma = result


# --- memory -----------------------------------------------------------------------------------------------------

def fp32_weight_bytes(model_dir: Path) -> int:
    """Bytes of every tensor in the model's safetensors files, counted as fp32 (read from the headers only)."""
    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                total += 4 * math.prod(meta["shape"])
    if total == 0:
        raise RuntimeError(f"no safetensors weights in {model_dir}")
    return total


def run_memory(benchmark, report: Report, threads: int, model: ModelCase, batch: int, tokens: int) -> None:
    """Peak RSS of a fresh process: import bortengine, load the model, one [batch, tokens] forward."""
    ok, why = engine_status()
    if not ok:
        report.skipped[ENGINE] = f"bortengine not available: {why}"
        pytest.skip(f"bortengine not available: {why}")
    benchmark.group = "memory"
    path = model.path()
    vocab = model.config()["vocab_size"]
    result = {}

    def child():
        result.update(run_probe(["memory", "--model-dir", str(path), "--threads", str(threads), "--batch",
                                 str(batch), "--tokens", str(tokens), "--vocab-size", str(vocab)], threads))

    benchmark.pedantic(child, rounds=1, iterations=1)
    weights = fp32_weight_bytes(path)
    budget = MEMORY_FACTOR * weights + MEMORY_SLACK_BYTES
    row = {"model": model.name, "shape": f"{batch}x{tokens}", "weights_bytes": weights, "budget_bytes": budget,
           "ratio": result["peak_rss"] / budget, "smoke": model.smoke, **result}
    benchmark.extra_info.update(row)
    report.memory.append(row)
    assert not result["torch_imported"], "importing and running bortengine imported torch"
    assert row["ratio"] <= 1, (f"peak RSS {result['peak_rss'] / 2**20:.1f} MiB is over the budget "
                               f"{budget / 2**20:.1f} MiB (1.2 x {weights / 2**20:.1f} MiB weights + 64 MiB)")
