"""The whole encoder against transformers on the same weights, on every ISA path compiled and runnable here.

Tolerance: max abs diff <= 1e-4 on last_hidden_state at unmasked positions (masked positions are zeros by
contract, and transformers computes something there), on pooler_output and on logits. Shapes cover the real
all-MiniLM-L6-v2 and random models with sizes that do not fit the kernels' tiles: H=200 with 5 heads of 40, heads
of 48, a tiny H=8 model, odd FFN widths; sequences of 1 and 512 tokens, mixed lengths, masks with holes.
"""
from __future__ import annotations

import numpy as np
import pytest

import bortengine
from reference import hf_forward, hf_model, max_abs_diff_unmasked

TOL = 1e-4

# name -> make_random_bert arguments
RANDOM_MODELS = {
    "h200_5x40_pooler": dict(hidden_size=200, num_hidden_layers=2, num_attention_heads=5, intermediate_size=333,
                             vocab_size=1000, seed=1),
    "h144_3x48_nopooler": dict(hidden_size=144, num_hidden_layers=2, num_attention_heads=3, intermediate_size=300,
                               vocab_size=1000, head="none", seed=2),
    "h8_tiny_classifier": dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=5,
                               vocab_size=50, max_position_embeddings=24, type_vocab_size=3, head="classifier",
                               num_labels=3, seed=4),
    "h64_classifier": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                           vocab_size=1000, head="classifier", num_labels=2, seed=5),
    "h96_1head_eps1e-5": dict(hidden_size=96, num_hidden_layers=1, num_attention_heads=1, intermediate_size=17,
                              vocab_size=300, layer_norm_eps=1e-5, type_vocab_size=1, seed=6),
}


def _random_batch(rng, config, b, t, holes=False, types=True):
    ids = rng.integers(0, config.vocab_size, size=(b, t), dtype=np.int64)
    lengths = rng.integers(1, t + 1, size=b)
    lengths[0] = t  # at least one full row
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    if holes:  # zero some positions inside the rows too, keeping each row's first token
        mask &= (rng.random((b, t)) > 0.3).astype(np.int64)
        mask[:, 0] = 1
    tt = rng.integers(0, config.type_vocab_size, size=(b, t), dtype=np.int64) if types else None
    return ids, mask, tt


def compare(engine, path, ids, mask=None, types=None):
    """Run both and assert every output agrees within TOL at unmasked positions."""
    ours = engine(ids, mask, types)
    ref = hf_forward(path, ids, mask, types)
    assert ours.last_hidden_state.shape == ref["last_hidden_state"].shape
    assert ours.last_hidden_state.dtype == np.float32
    diff = max_abs_diff_unmasked(ours.last_hidden_state, ref["last_hidden_state"], mask)
    assert diff <= TOL, f"last_hidden_state differs by {diff:.3g} (isa {engine.isa})"
    if mask is not None:  # masked positions are zeros by contract
        assert not ours.last_hidden_state[~mask.astype(bool)].any()
    if ref["pooler_output"] is None:
        assert ours.pooler_output is None
    else:
        # transformers pools row 0 even where it is masked; the engine's row 0 is then zeros. Compare the rest.
        rows = np.ones(len(ids), bool) if mask is None else mask[:, 0].astype(bool)
        d = np.abs(ours.pooler_output[rows] - ref["pooler_output"][rows]).max()
        assert d <= TOL, f"pooler_output differs by {d:.3g}"
    if ref["logits"] is None:
        assert ours.logits is None
    else:
        d = np.abs(ours.logits - ref["logits"]).max()
        assert d <= TOL, f"logits differ by {d:.3g}"
    return ours


@pytest.fixture(scope="module", params=list(RANDOM_MODELS))
def random_model(request, make_model):
    return make_model(**RANDOM_MODELS[request.param])


def test_random_models_mixed_lengths(random_model, isa):
    engine = bortengine.load(random_model, isa=isa)
    assert engine.isa == isa
    rng = np.random.default_rng(0)
    t = min(37, engine.config.max_position_embeddings)
    ids, mask, types = _random_batch(rng, engine.config, 5, t)
    compare(engine, random_model, ids, mask, types)


def test_random_models_masks_with_holes(random_model, isa):
    engine = bortengine.load(random_model, isa=isa)
    rng = np.random.default_rng(1)
    t = min(19, engine.config.max_position_embeddings)
    ids, mask, types = _random_batch(rng, engine.config, 4, t, holes=True)
    compare(engine, random_model, ids, mask, types)


def test_random_models_no_mask_no_types(random_model, isa):
    engine = bortengine.load(random_model, isa=isa)
    rng = np.random.default_rng(2)
    ids, _, _ = _random_batch(rng, engine.config, 3, 9)
    compare(engine, random_model, ids)


@pytest.mark.parametrize("t", [1, 2, 512])
def test_sequence_length_extremes(make_model, isa, t):
    path = make_model(**RANDOM_MODELS["h200_5x40_pooler"])
    engine = bortengine.load(path, isa=isa)
    rng = np.random.default_rng(t)
    ids, mask, types = _random_batch(rng, engine.config, 2, t)
    compare(engine, path, ids, mask, types)


def test_max_positions_of_tiny_model(make_model, isa):
    path = make_model(**RANDOM_MODELS["h8_tiny_classifier"])
    engine = bortengine.load(path, isa=isa)
    p = engine.config.max_position_embeddings
    ids, mask, types = _random_batch(np.random.default_rng(3), engine.config, 3, p)
    compare(engine, path, ids, mask, types)


def test_masked_first_token_row(make_model, isa):
    """A row whose position 0 is masked: the other tokens keep their position ids; the pooler reads token 4."""
    import torch

    path = make_model(**RANDOM_MODELS["h64_classifier"])
    engine = bortengine.load(path, isa=isa)
    rng = np.random.default_rng(4)
    ids, mask, types = _random_batch(rng, engine.config, 3, 12)
    mask[1, :4] = 0
    mask[1, 4:] = 1
    out = engine(ids, mask, types)
    ref = hf_forward(path, ids, mask, types)
    assert max_abs_diff_unmasked(out.last_hidden_state, ref["last_hidden_state"], mask) <= TOL
    # The pooler reads the first unmasked token (transformers would read masked position 0).
    bert, classifier = hf_model(str(path))
    with torch.no_grad():
        first = torch.from_numpy(ref["last_hidden_state"][1, 4][None])
        pooled = bert.pooler.activation(bert.pooler.dense(first)).numpy()[0]
        logits = classifier(torch.from_numpy(pooled[None])).numpy()[0]
    assert np.abs(out.pooler_output[1] - pooled).max() <= TOL
    assert np.abs(out.logits[1] - logits).max() <= TOL


def test_minilm_sentences(minilm, isa):
    engine = bortengine.load(minilm, isa=isa)
    batch = engine.tokenize(["A man is eating food.", "A man is eating a piece of bread.",
                             "The girl is carrying a baby, and the baby is asleep in a sling.", "Hi"])
    compare(engine, minilm, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def test_minilm_512_tokens(minilm, isa):
    engine = bortengine.load(minilm, isa=isa)
    rng = np.random.default_rng(5)
    ids, mask, types = _random_batch(rng, engine.config, 2, 512)
    ids[:, 0] = 101
    compare(engine, minilm, ids, mask, types)


def test_outputs_same_across_isas(make_model):
    """Every path agrees with every other (tighter than the transformers check: same algorithm)."""
    path = make_model(**RANDOM_MODELS["h200_5x40_pooler"])
    rng = np.random.default_rng(6)
    outs = {}
    for name in bortengine.available_isas():
        engine = bortengine.load(path, isa=name)
        if not outs:
            ids, mask, types = _random_batch(rng, engine.config, 3, 33, holes=True)
        outs[name] = engine(ids, mask, types).last_hidden_state
    first = next(iter(outs.values()))
    for name, out in outs.items():
        assert np.abs(out - first).max() <= TOL, name


def test_numpy_reference_agrees_with_transformers(make_model):
    """tests/numpy_encoder.py is itself right, so it can stand in for the core and check it."""
    import numpy_encoder

    from bortengine.engine.config import ModelConfig
    from bortengine.engine.weights import BertWeights, Checkpoint

    path = make_model(**RANDOM_MODELS["h200_5x40_pooler"])
    c = ModelConfig.from_file(path)
    w = BertWeights(Checkpoint.open(path), c)
    enc = numpy_encoder.Encoder(c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
                                c.vocab_size, c.max_position_embeddings, c.type_vocab_size, c.layer_norm_eps, 1)
    enc.set_embeddings(*w.read_embeddings())
    for i in range(c.num_hidden_layers):
        enc.set_layer(i, *w.read_layer(i))
    enc.set_pooler(w.read("pooler.dense.weight"), w.read("pooler.dense.bias"))
    ids, mask, types = _random_batch(np.random.default_rng(7), c, 3, 21, holes=True)
    hidden, pooled = enc.forward(ids, mask, types, pooler=True)
    ref = hf_forward(path, ids, mask, types)
    assert max_abs_diff_unmasked(hidden, ref["last_hidden_state"], mask) <= 1e-5
    assert np.abs(pooled - ref["pooler_output"]).max() <= 1e-5
