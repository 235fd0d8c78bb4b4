"""Encoder forward latency of bortengine vs ONNX Runtime and PyTorch, on the same weights and thread count.

One test per (model, shape, runtime); each first checks last_hidden_state against PyTorch eager at the unmasked
positions, then times the forward. The summary table at the end of the session puts the runtimes side by side.
test_encoder: the BERT models (MiniLM, BERT-base, Bort); test_family_encoder: issue 18's other families at their
real sizes (`-k family` selects them alone).
"""
import pytest

from cases import FAMILY_MODELS, FAMILY_RUNTIMES, SHAPES, encoder_rows, row_id
from protocol import run_encoder_row


@pytest.mark.parametrize("row", encoder_rows(), ids=row_id)
def test_encoder(benchmark, pool, report, budget_seconds, row):
    model, shape, runtime = row
    run_encoder_row(benchmark, pool, report, model, shape, runtime, budget_seconds)


@pytest.mark.parametrize("row", encoder_rows(FAMILY_MODELS, SHAPES, FAMILY_RUNTIMES), ids=row_id)
def test_family_encoder(benchmark, pool, report, budget_seconds, row):
    model, shape, runtime = row
    run_encoder_row(benchmark, pool, report, model, shape, runtime, budget_seconds)
