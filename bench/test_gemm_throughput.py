"""GEMM throughput of bortengine's PackedLinear at the Bort layer shapes, as a fraction of the machine's peak.
Beside it, the bf16 engine's Bf16Linear and torch's bf16 linear at the same shapes (their fraction is of the fp32
peak: a bf16 GEMM may pass it).

The peak is measured in the same run: the best of large square fp32 GEMMs by PackedLinear, numpy and torch. The FMA
probe (bench/fma_peak.py) gives the ceiling above it that no GEMM can pass; the report's ceiling lines use both.
torch's linear at the layer shapes is timed alongside for reference.
"""
import pytest

from cases import GEMM_SHAPES, PEAK_SIZE
from protocol import run_fma_ceiling, run_numpy_peak, run_packed_linear, run_torch_linear

SHAPE_IDS = [f"{m}x{k}x{n}" for m, k, n in GEMM_SHAPES]


def test_fma_ceiling(benchmark, report, threads):
    run_fma_ceiling(benchmark, report, threads)


def test_peak_packed_linear(benchmark, report, threads, budget_seconds):
    run_packed_linear(benchmark, report, threads, PEAK_SIZE, PEAK_SIZE, PEAK_SIZE, budget_seconds, peak=True)


def test_peak_numpy(benchmark, report, threads, budget_seconds):
    run_numpy_peak(benchmark, report, threads, PEAK_SIZE, budget_seconds)


def test_peak_torch(benchmark, report, threads, budget_seconds):
    run_torch_linear(benchmark, report, threads, PEAK_SIZE, PEAK_SIZE, PEAK_SIZE, budget_seconds, peak=True)


@pytest.mark.parametrize("mkn", GEMM_SHAPES, ids=SHAPE_IDS)
def test_packed_linear(benchmark, report, threads, budget_seconds, mkn):
    run_packed_linear(benchmark, report, threads, *mkn, budget_seconds)


@pytest.mark.parametrize("mkn", GEMM_SHAPES, ids=SHAPE_IDS)
def test_torch_linear(benchmark, report, threads, budget_seconds, mkn):
    run_torch_linear(benchmark, report, threads, *mkn, budget_seconds)


@pytest.mark.parametrize("mkn", GEMM_SHAPES, ids=SHAPE_IDS)
def test_bf16_linear(benchmark, report, threads, budget_seconds, mkn):
    run_packed_linear(benchmark, report, threads, *mkn, budget_seconds, bf16=True)


@pytest.mark.parametrize("mkn", GEMM_SHAPES, ids=SHAPE_IDS)
def test_torch_bf16_linear(benchmark, report, threads, budget_seconds, mkn):
    run_torch_linear(benchmark, report, threads, *mkn, budget_seconds, bf16=True)
