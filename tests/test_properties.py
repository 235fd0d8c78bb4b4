"""Property tests (hypothesis) over batch shapes, masks and token types, on small random models and every ISA.

Properties: the engine agrees with transformers at unmasked positions, and with tests/numpy_encoder.py everywhere
(including the pooler of rows whose position 0 is masked); masked positions are zeros; a sequence's
outputs do not depend on the other sequences of its batch, nor on the ids, token types or amount of padding at its
masked positions.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bortengine
from conftest import ISAS
from reference import hf_forward, max_abs_diff_unmasked

MODELS = {
    "h40_h5": dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=5, intermediate_size=37, vocab_size=97,
                   max_position_embeddings=64, type_vocab_size=3, seed=11),
    "h32_h2_cls": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       vocab_size=97, max_position_embeddings=64, head="classifier", num_labels=4, seed=12),
    "h24_h1_nopool": dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=1, intermediate_size=50,
                          vocab_size=97, max_position_embeddings=64, head="none", seed=13),
}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def engines(make_model):
    """(model name, isa) -> (path, engine), loaded once."""
    out = {}
    for name, kwargs in MODELS.items():
        path = make_model(**kwargs)
        for isa in ISAS:
            out[name, isa] = (path, bortengine.load(path, isa=isa, num_threads=min(2, bortengine.available_cpus())))
    return out


@st.composite
def batches(draw, max_b=4, max_t=40):
    """(ids [B,T], mask [B,T] with >= 1 one per row, token types [B,T] or None, model name, isa)."""
    name = draw(st.sampled_from(sorted(MODELS)))
    isa = draw(st.sampled_from(ISAS))
    b = draw(st.integers(1, max_b))
    t = draw(st.integers(1, max_t))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["ones", "right_padded", "holes", "left_padded"]))
    if kind == "ones":
        mask = np.ones((b, t), np.int64)
    else:
        lengths = rng.integers(1, t + 1, size=b)
        mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
        if kind == "left_padded":
            mask = mask[:, ::-1].copy()
        elif kind == "holes":
            mask = (rng.random((b, t)) < draw(st.floats(0.1, 0.9))).astype(np.int64)
            mask[np.arange(b), rng.integers(0, t, size=b)] = 1
    ids = rng.integers(0, 97, size=(b, t), dtype=np.int64)
    types = rng.integers(0, 3 if name == "h40_h5" else 2, size=(b, t), dtype=np.int64) if draw(st.booleans()) else None
    return ids, mask, types, name, isa


@SETTINGS
@given(batches())
def test_agrees_with_transformers(engines, batch):
    ids, mask, types, name, isa = batch
    path, engine = engines[name, isa]
    ours = engine(ids, mask, types)
    ref = hf_forward(path, ids, mask, types)
    assert max_abs_diff_unmasked(ours.last_hidden_state, ref["last_hidden_state"], mask) <= 1e-4
    assert not ours.last_hidden_state[mask == 0].any()
    if ref["pooler_output"] is not None:
        rows = mask[:, 0] == 1
        assert np.abs(ours.pooler_output[rows] - ref["pooler_output"][rows]).max(initial=0) <= 1e-4
    if ref["logits"] is not None:
        rows = mask[:, 0] == 1
        assert np.abs(ours.logits[rows] - ref["logits"][rows]).max(initial=0) <= 1e-4


@SETTINGS
@given(batches(), st.integers(0, 7), st.integers(0, 2**32 - 1))
def test_masked_positions_and_batch_neighbours_do_not_matter(engines, batch, extra, seed):
    ids, mask, types, name, isa = batch
    _, engine = engines[name, isa]
    base = engine(ids, mask, types).last_hidden_state
    rng = np.random.default_rng(seed)
    # Change every masked id and token type, and append `extra` padding columns.
    ids2 = np.where(mask == 1, ids, rng.integers(0, 97, size=ids.shape))
    ids2 = np.concatenate([ids2, rng.integers(0, 97, size=(len(ids), extra))], axis=1)
    mask2 = np.concatenate([mask, np.zeros((len(ids), extra), np.int64)], axis=1)
    types2 = None if types is None else np.concatenate(
        [np.where(mask == 1, types, 0), np.zeros((len(ids), extra), np.int64)], axis=1)
    padded = engine(ids2, mask2, types2).last_hidden_state
    assert np.abs(padded[:, : ids.shape[1]] - base).max() <= 1e-5
    # Each row alone gives what it gave inside the batch.
    for r in range(len(ids)):
        alone = engine(ids[r:r + 1], mask[r:r + 1], None if types is None else types[r:r + 1]).last_hidden_state
        assert np.abs(alone[0] - base[r]).max() <= 1e-5


@pytest.fixture(scope="module")
def numpy_references(engines):
    """model name -> numpy_encoder.Encoder on the same weights."""
    import numpy_encoder

    from bortengine.engine.weights import BertWeights, Checkpoint

    out = {}
    for name in MODELS:
        path, engine = engines[name, ISAS[0]]
        c = engine.config
        w = BertWeights(Checkpoint.open(path), c)
        enc = numpy_encoder.Encoder(c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
                                    c.vocab_size, c.max_position_embeddings, c.type_vocab_size, c.layer_norm_eps, 1)
        enc.set_embeddings(*w.read_embeddings())
        for i in range(c.num_hidden_layers):
            enc.set_layer(i, *w.read_layer(i))
        if w.has_pooler:
            enc.set_pooler(w.read("pooler.dense.weight"), w.read("pooler.dense.bias"))
        out[name] = enc
    return out


@SETTINGS
@given(batches())
def test_agrees_with_numpy_reference(engines, numpy_references, batch):
    ids, mask, types, name, isa = batch
    _, engine = engines[name, isa]
    reference = numpy_references[name]
    ours = engine(ids, mask, types)
    hidden, pooled = reference.forward(ids, mask, types, pooler=reference.has_pooler)
    assert np.abs(ours.last_hidden_state - hidden).max() <= 1e-4
    if pooled is not None:
        assert np.abs(ours.pooler_output - pooled).max() <= 1e-4
