"""Quick check of the whole harness on a tiny random model: `python -m pytest bench -k smoke`.

Same code paths as the full suite (ONNX export and fusion check, PyTorch reference, the engine when built, GEMM,
memory probe, report and JSON), with small shapes and short time budgets. Results go to results/smoke.json
when only the smoke tests run.
"""
import pytest

from cases import FAMILY_RUNTIMES, RUNTIMES, SMOKE_FAMILY_MODELS, SMOKE_MODEL, SMOKE_SHAPE
from protocol import run_encoder_row, run_memory, run_numpy_peak, run_packed_linear, run_torch_linear

SMOKE_SECONDS = 0.05


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_smoke_encoder(benchmark, pool, report, runtime):
    run_encoder_row(benchmark, pool, report, SMOKE_MODEL, SMOKE_SHAPE, runtime, SMOKE_SECONDS)


@pytest.mark.parametrize("model", SMOKE_FAMILY_MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("runtime", FAMILY_RUNTIMES)
def test_smoke_family_encoder(benchmark, pool, report, model, runtime):
    """Each family's rows on a tiny model of it: export, fusion check (MPNet's attention expected unfused),
    inputs without token types and with the family's padding id, sdpa skipped where transformers has none."""
    run_encoder_row(benchmark, pool, report, model, SMOKE_SHAPE, runtime, SMOKE_SECONDS)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_smoke_gemm(benchmark, report, threads, bf16):
    run_packed_linear(benchmark, report, threads, 20, 96, 72, SMOKE_SECONDS, smoke=True, bf16=bf16)


def test_smoke_gemm_peak_torch(benchmark, report, threads):
    run_torch_linear(benchmark, report, threads, 256, 256, 256, SMOKE_SECONDS, peak=True, smoke=True)


def test_smoke_gemm_peak_numpy(benchmark, report, threads):
    run_numpy_peak(benchmark, report, threads, 256, SMOKE_SECONDS, smoke=True)


def test_smoke_memory(benchmark, report, threads):
    run_memory(benchmark, report, threads, SMOKE_MODEL, batch=1, tokens=16)
