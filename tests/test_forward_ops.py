"""The one description of a forward (_core.forward_ops(), csrc/forward.h) against what the encoder does: its trace
buckets are Engine.op_times' keys, and the team barriers (parallel_for calls) it lists per step are the ones the
encoder runs, counted by the encoder's own trace (Encoder.last_trace_barriers) on every compiled ISA."""
from __future__ import annotations

import numpy as np
import pytest

import bortengine
from bortengine import _core
from conftest import ISAS, NATIVE

pytestmark = pytest.mark.skipif(not NATIVE, reason="forward_ops describes the native encoder, which is not built")

LAYERS = 3
DTYPES = ("float32", "int8", "bf16")
KINDS = {"embeddings", "gemm", "attention", "layernorm", "scatter", "gather"}
TRACE_KEYS = ["embeddings", "qkv", "attention", "attention_out", "layernorm", "ffn_in", "ffn_out", "output"]


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=48,
                      vocab_size=100, head="pooler", seed=5)


def _inputs(padded: bool):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 100, size=(3, 7), dtype=np.int64)
    mask = np.ones_like(ids)
    if padded:
        mask[1, 4:] = 0
        mask[2, 1:] = 0
    return ids, mask


def _first_appearances(values):
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def test_schema():
    steps = _core.forward_ops()
    names = [s["name"] for s in steps]
    assert names == ["embeddings", "embeddings_project", "qkv", "attention", "attention_out", "ln1", "ffn_in",
                     "ffn_out", "ln2", "scatter", "pooler_gather", "pooler"]
    for s in steps:
        assert s["kind"] in KINDS and s["scope"] in {"forward", "layer", "pooler"}
        assert s["when"] in {"always", "padded", "projected"}
        assert s["trace"] in TRACE_KEYS
        assert set(s["barriers"]) == set(DTYPES) and all(n >= 1 for n in s["barriers"].values())
        gemm_keys = {"K", "N", "epilogue", "rows", "low_precision"}
        if s["kind"] == "gemm":
            assert gemm_keys <= set(s)
            assert s["K"] in {"H", "3H", "I", "E"} and s["N"] in {"H", "3H", "I"}
            assert s["epilogue"] in {"none", "residual", "gelu", "tanh"} and s["rows"] in {"tokens", "sequences"}
        else:
            assert not gemm_keys & set(s)
    assert _first_appearances(s["trace"] for s in steps) == TRACE_KEYS


@pytest.mark.parametrize("isa", ISAS)
def test_barrier_sums(isa):
    """What the latency model charges: 7 barriers per layer in float32 and bf16 (a bf16 GEMM rounds its input
    inside the GEMM), 11 in int8 (each int8 linear first quantizes its rows in a team op of its own), 10 where FFN
    out runs on the bf16 kernels (AMX tiles), 1 for the embeddings, 2 for the pooler (gather + GEMM), and one more
    for the scatter of padded batches."""
    steps = _core.forward_ops(isa)

    def total(dtype, scope, when="always"):
        return sum(s["barriers"][dtype] for s in steps if s["scope"] == scope and s["when"] == when)

    int8 = 10 if "amx" in _core.bf16_kernel_name(isa) else 11
    assert [total(d, "layer") for d in DTYPES] == [7, int8, 7]
    assert [total(d, "forward") for d in DTYPES] == [1, 1, 1]
    assert [total(d, "pooler") for d in DTYPES] == [2, 2, 2]
    assert [total(d, "forward", "padded") for d in DTYPES] == [1, 1, 1]
    # ELECTRA's embeddings_project: an fp32 GEMM in every dtype, charged to the embeddings' trace bucket
    assert [total(d, "forward", "projected") for d in DTYPES] == [1, 1, 1]
    assert {s["trace"] for s in steps if s["when"] == "projected"} == {"embeddings"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_trace_keys_are_op_times_keys(model, dtype):
    engine = bortengine.load(model, num_threads=2, dtype=dtype)
    ids, mask = _inputs(padded=True)
    times = engine.op_times(ids, mask, runs=1)
    traces = _first_appearances(s["trace"] for s in _core.forward_ops())
    assert list(times) == traces + ["total"]
    assert list(engine._encoder.last_trace) == traces


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("pooler", [False, True])
def test_barriers_are_the_encoders(model, isa, dtype, threads, padded, pooler):
    engine = bortengine.load(model, num_threads=threads, isa=isa, dtype=dtype)
    _check_barriers(engine._encoder, isa, dtype, padded, pooler, projected=False)


def _check_barriers(encoder, isa, dtype, padded, pooler, projected):
    ids, mask = _inputs(padded)
    encoder.trace = True
    try:
        encoder.forward(ids, mask, None, pooler=pooler)
    finally:
        encoder.trace = False
    expected = {}
    for s in _core.forward_ops(isa):
        when = {"always": True, "padded": padded, "projected": projected}[s["when"]]
        runs = (s["scope"] != "pooler" or pooler) and when
        expected[s["name"]] = s["barriers"][dtype] * (LAYERS if s["scope"] == "layer" else 1) if runs else 0
    assert dict(encoder.last_trace_barriers) == expected


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("embedding_size", [32, 24])
def test_barriers_of_projected_embeddings(make_encoder, isa, dtype, embedding_size):
    """ELECTRA with embeddings narrower than H runs embeddings_project; with E = H it runs BERT's steps."""
    path = make_encoder(model_type="electra", hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                        intermediate_size=48, embedding_size=embedding_size, seed=5)
    engine = bortengine.load(path, num_threads=2, isa=isa, dtype=dtype)
    assert engine._encoder.projects_embeddings == (embedding_size != 32)
    _check_barriers(engine._encoder, isa, dtype, padded=True, pooler=False, projected=embedding_size != 32)
