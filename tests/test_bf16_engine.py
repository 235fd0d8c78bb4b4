"""The bf16 engine (load(..., dtype="bf16")) against the float32 engine on the same weights, on every path.

The issue's accuracy target: all-MiniLM-L6-v2 sentence embeddings of real sentences (Rotten Tomatoes reviews, the
committed test split, then its dev split) with a mean cosine to float32 >= 0.9995. 1,000 sentences on the default
path; on the other paths, whose bf16 kernels multiply the same bf16 operands (tests/test_bf16_kernels.py), fewer.
"""
from __future__ import annotations

import numpy as np
import pytest

import bortengine
from bortengine import _core

pytestmark = pytest.mark.skipif(not hasattr(_core, "Bf16Linear"), reason="needs the native core")

ISAS = _core.available_isas()


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    from bortengine.training.data import load_split

    return [e.text for split in ("test", "dev") for e in load_split("rt", split)][:1000]


@pytest.fixture(scope="module")
def minilm_fp32_embeddings(minilm, reviews):
    return bortengine.load(minilm, num_threads=2).encode(reviews, batch_size=64)


@pytest.mark.parametrize("isa", ISAS)
def test_minilm_bf16_embeddings_match_fp32(minilm, reviews, minilm_fp32_embeddings, isa):
    n = 1000 if isa == ISAS[0] else 200
    engine = bortengine.load(minilm, num_threads=2, isa=isa, dtype="bf16")
    assert engine.dtype == "bf16" and engine.kernel == _core.bf16_kernel_name(isa)
    bf16_attention = isa == "avx512" and _core.has_bf16_attention()
    assert engine._encoder.attention_kernel == ("attention_bf16_avx512" if bf16_attention else f"attention_f32_{isa}")
    cos = _cosines(minilm_fp32_embeddings[:n], engine.encode(reviews[:n], batch_size=64))
    assert len(cos) == n and cos.mean() >= 0.9995 and cos.min() >= 0.995, (cos.mean(), cos.min())


def test_bf16_paths_agree(minilm, reviews):
    """Every path multiplies the same bf16 operands; sums differ in order, and the avx512 path's attention runs in
    bf16 where the CPU has it: the paths agree far closer than bf16 keeps to float32."""
    outs = [bortengine.load(minilm, isa=isa, dtype="bf16").encode(reviews[:48]) for isa in ISAS]
    for o in outs[1:]:
        assert _cosines(o, outs[0]).min() > 0.9995


def test_bf16_random_model_mixed_lengths(make_model):
    path = make_model(hidden_size=200, num_hidden_layers=2, num_attention_heads=5, intermediate_size=333,
                      vocab_size=1000, seed=1)
    e32, e16 = bortengine.load(path), bortengine.load(path, dtype="bf16")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, size=(4, 40))
    mask = (np.arange(40)[None, :] < np.array([40, 1, 17, 33])[:, None]).astype(np.int64)
    mask[0, 5:9] = 0  # a hole inside a row
    a, b = e32(ids, mask), e16(ids, mask)
    assert not b.last_hidden_state[mask == 0].any()
    rows = mask.astype(bool)
    assert _cosines(a.last_hidden_state[rows], b.last_hidden_state[rows]).min() > 0.999
    assert _cosines(a.pooler_output, b.pooler_output).min() > 0.999
    np.testing.assert_array_equal(e16(ids, mask).pooler_output, b.pooler_output)  # deterministic


@pytest.mark.parametrize("isa", ISAS)
def test_bf16_random_classifier_agrees_with_fp32(make_model, isa):
    """A classifier's decisions: bf16 and float32 pick the same class for (almost) every input; where they differ
    the float32 logits were nearly tied."""
    path = make_model(hidden_size=96, num_hidden_layers=3, num_attention_heads=4, intermediate_size=160,
                      vocab_size=1000, head="classifier", num_labels=3, seed=7)
    e32, e16 = bortengine.load(path, isa=isa), bortengine.load(path, isa=isa, dtype="bf16")
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 1000, size=(300, 24))
    mask = (np.arange(24)[None, :] < rng.integers(2, 25, size=300)[:, None]).astype(np.int64)
    a, b = e32(ids, mask).logits, e16(ids, mask).logits
    spread = np.abs(a).max()
    assert np.abs(a - b).max() <= 0.02 * spread
    agree = a.argmax(1) == b.argmax(1)
    assert agree.mean() >= 0.98
    top2 = np.sort(a, axis=1)[:, -2:]
    assert ((top2[:, 1] - top2[:, 0])[~agree] <= 0.02 * spread).all()


def test_bf16_weights_are_half_the_bytes(small_model):
    e32, e16 = bortengine.load(small_model), bortengine.load(small_model, dtype="bf16")
    pooler = 64 * 64 * 4  # the pooler stays float32 (one H x H panel set, padded to whole panels)
    assert e16._encoder.packed_bytes < 0.5 * (e32._encoder.packed_bytes - pooler) + 2 * pooler


def test_bad_dtype_names_bf16(small_model):
    with pytest.raises(bortengine.InvalidInputError, match="'bf16'"):
        bortengine.load(small_model, dtype="float16")
