"""bench/family_carry.py: a BERT classifier carried into each family's layout computes the same function on the same
ids, in transformers and in the engine, and tokenizes with BERT's ids (what family_int8.py's measurement rests on)."""
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from family_carry import FAMILIES, FITTED_HEADS, HEADS, carry, compare, fit_head  # noqa: E402

TEXTS = ["A gripping, beautifully acted film.",
         "far too long, and the jokes land nowhere; I left before the end of it, bored and tired of the whole thing",
         "Marie Curie was born in Warsaw and worked in Paris at the University of Paris with her husband.", "ok"]


@pytest.fixture(scope="module")
def bert_classifier(make_model) -> Path:
    # 40 positions: the longest text is cut at the table's end, where a shifted table would show an off-by-one
    return make_model(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
                      head="classifier", num_labels=2, max_position_embeddings=40, seed=5)


@pytest.mark.parametrize("family", FAMILIES)
def test_carry_computes_the_bert_classifier(bert_classifier, family, tmp_path):
    import bortengine

    bert = bortengine.load(bert_classifier)
    tok = bert.tokenize(TEXTS + [TEXTS[1] * 3])
    ids, mask = tok["input_ids"], tok["attention_mask"]
    assert ids.shape[1] == 40 and (mask.sum(axis=1) < 40).any()   # one text cut at the last position, others padded

    path = carry(bert_classifier, tmp_path / family, family)
    checked = compare(bert_classifier, path, family, ids, mask)
    assert checked["max_abs_hidden"] < 1e-5
    assert checked["max_abs_logits"] < 1e-5   # fitted heads: against their own layers applied to BERT's states
    if family not in FITTED_HEADS:   # the very classifier: transformers' carried logits are BERT's engine logits
        np.testing.assert_allclose(checked["logits"], bert(ids, attention_mask=mask).logits, atol=1e-4)

    engine = bortengine.load(path)
    carried_tok = engine.tokenize(TEXTS + [TEXTS[1] * 3])
    np.testing.assert_array_equal(carried_tok["input_ids"], ids)   # BERT's ids, [CLS] ... [SEP], [PAD] as padding
    np.testing.assert_array_equal(carried_tok["attention_mask"], mask)
    np.testing.assert_allclose(engine(ids, attention_mask=mask).logits, checked["logits"], atol=1e-4)
    assert engine.labels == bert.labels


def test_fit_head_writes_the_regression_as_the_last_layer(bert_classifier, tmp_path):
    from safetensors.numpy import load_file

    path = carry(bert_classifier, tmp_path / "electra", "electra")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 48)) * rng.uniform(0.1, 3, size=48) + rng.normal(size=48)
    labels = (features[:, 3] - features.mean(axis=0)[3] > 0).astype(int)
    accuracy = fit_head(path, "electra", features, labels)
    w = load_file(str(path / "model.safetensors"))
    last = HEADS["electra"][2]
    logits = features @ w[last + ".weight"].T + w[last + ".bias"]
    assert accuracy > 0.95 and (logits.argmax(axis=1) == labels).mean() == pytest.approx(accuracy)


def test_carry_refuses_other_models(make_encoder, tmp_path):
    roberta = make_encoder(model_type="roberta", head="sequence")
    with pytest.raises(ValueError, match="needs a BertForSequenceClassification"):
        carry(roberta, tmp_path / "out", "mpnet")
    with pytest.raises(ValueError, match="family must be one of"):
        carry(roberta, tmp_path / "out", "gpt2")
