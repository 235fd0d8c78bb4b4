"""RoBERTa, XLM-RoBERTa, CamemBERT and DistilBERT against transformers on the same weights, on every ISA path.

Random-weight models of odd sizes (H=200, 5 heads of 40, FFN 333) built with transformers (config + from_config +
save_pretrained) and a tokenizer of each family's kind trained here (byte-level BPE for RoBERTa, Unigram for XLM-R
and CamemBERT, WordPiece for DistilBERT). Tolerance 1e-4 (fp32) on hidden states at unmasked positions, pooler
outputs and logits; int8 keeps every token's cosine to fp32 >= 0.98. RoBERTa's positions start after the padding
id: right-padded batches run as they are, left padding and holes in the mask are laid out again
(engine/positions.py), and both agree with transformers.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import bortengine
from bortengine import InvalidInputError, ModelLoadError
from reference import hf_auto_forward, max_abs_diff_unmasked

TOL = 1e-4
SIZES = dict(hidden_size=200, num_attention_heads=5, intermediate_size=333, num_hidden_layers=2, max_positions=40)
MODELS = {
    "roberta": dict(model_type="roberta", head="model"),
    "roberta-classifier": dict(model_type="roberta", head="sequence", labels=("a", "b", "c")),
    "xlm-roberta": dict(model_type="xlm-roberta", head="model", pooler=False),
    "xlm-roberta-classifier": dict(model_type="xlm-roberta", head="sequence"),
    "camembert-classifier": dict(model_type="camembert", head="sequence", labels=("x", "y", "z", "w")),
    "distilbert": dict(model_type="distilbert", head="model"),
    "distilbert-classifier": dict(model_type="distilbert", head="sequence", labels=("neg", "neu", "pos")),
}
TEXTS = ["Marie Curie was born in Warsaw.", "x", "Zürich and São Paulo are cities; 12345 is a number.",
         "A man is eating food. " * 12]   # the last is cut to the model's 40 positions
PAIRS = ["Where was she born?", "y", "Reykjavík", "Who eats?"]


@pytest.fixture(scope="module", params=list(MODELS))
def family_model(request, make_encoder):
    return make_encoder(**SIZES, **MODELS[request.param])


def _random_batch(engine, rng, lengths):
    """Right-padded ids [B,T] that avoid the special ids 0..4 (RoBERTa's padding id is 1)."""
    t = max(lengths)
    ids = rng.integers(5, engine.config.vocab_size, size=(len(lengths), t))
    mask = (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    ids[mask == 0] = engine.config.pad_token_id
    return ids, mask


def _compare(ours, ref, mask):
    diff = max_abs_diff_unmasked(ours.last_hidden_state, ref["last_hidden_state"], mask) \
        if ref["last_hidden_state"] is not None else 0.0
    assert diff <= TOL, f"last_hidden_state differs by {diff:.3g}"
    # transformers pools position 0 even where it is masked (left padding); the engine its first real token
    rows = mask[:, 0].astype(bool)
    for key in ("pooler_output", "logits"):
        if ref[key] is None:
            assert getattr(ours, key) is None, key
        else:
            d = np.abs(getattr(ours, key)[rows] - ref[key][rows]).max()
            assert d <= TOL, f"{key} differs by {d:.3g}"


def test_ids_match_transformers(family_model, isa):
    engine = bortengine.load(family_model, isa=isa)
    rng = np.random.default_rng(0)
    ids, mask = _random_batch(engine, rng, [engine.config.max_positions, 1, 17, 5, 33])
    ours = engine(ids, mask)
    ref = hf_auto_forward(family_model, ids, mask)
    if engine.config.is_classifier:  # transformers' classifiers return only logits: compare the encoder too
        assert ours.last_hidden_state.shape == ids.shape + (200,)
        ref["last_hidden_state"] = None
    _compare(ours, ref, mask)
    assert not ours.last_hidden_state[mask == 0].any()


def test_texts_and_pairs_tokenized_as_transformers(family_model):
    from transformers import AutoTokenizer

    engine = bortengine.load(family_model)
    tokenizer = AutoTokenizer.from_pretrained(str(family_model))
    for pairs in (None, PAIRS):
        ours = engine.tokenize(TEXTS, text_pairs=pairs)
        theirs = tokenizer(TEXTS, pairs, padding=True, truncation=True, return_tensors="np")
        np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
        np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])
        assert not ours["token_type_ids"].any()   # these families read no token types; transformers passes none
        assert "token_type_ids" not in theirs
        ref = hf_auto_forward(family_model, theirs["input_ids"], theirs["attention_mask"])
        if engine.config.is_classifier:
            result = engine.classify(TEXTS, text_pairs=pairs)
            assert np.abs(result.logits - ref["logits"]).max() <= TOL
            assert result.labels == [engine.labels[i] for i in ref["logits"].argmax(1)]
        else:
            mask = theirs["attention_mask"][:, :, None]
            mean = (ref["last_hidden_state"] * mask).sum(1) / mask.sum(1)
            assert np.abs(engine.encode(TEXTS, text_pairs=pairs) - mean).max() <= TOL


def test_positions_laid_out_for_left_padding_and_holes(make_encoder, isa):
    """RoBERTa numbers positions by the non-padding ids: left padding shifts none of them, a masked real id still
    counts. The engine lays such batches out again and gives transformers' outputs, through every entry point."""
    path = make_encoder(**SIZES, **MODELS["roberta"])
    engine = bortengine.load(path, isa=isa)
    rng = np.random.default_rng(1)
    ids, mask = _random_batch(engine, rng, [12, 7, 3])
    left_ids, left_mask = np.zeros_like(ids), np.zeros_like(mask)
    for r, n in enumerate(mask.sum(1)):   # the same rows, left-padded
        left_ids[r], left_mask[r] = np.roll(ids[r], 12 - n), np.roll(mask[r], 12 - n)
    holes = mask.copy()
    holes[0, [3, 4, 9]] = 0               # masked real ids: they keep their positions for the tokens after them
    for batch_ids, batch_mask in ((left_ids, left_mask), (ids, holes)):
        ref = hf_auto_forward(path, batch_ids, batch_mask)
        _compare(engine(batch_ids, batch_mask), ref, batch_mask)
    import asyncio

    _compare(asyncio.run(engine.acall(left_ids, left_mask)), hf_auto_forward(path, left_ids, left_mask), left_mask)
    ops = engine.op_times(left_ids, left_mask, runs=1)
    assert ops["total"] > 0

    inside = ids.copy()
    inside[0, 5] = engine.config.pad_token_id
    with pytest.raises(InvalidInputError, match=r"input_ids\[0, 5\] is the padding id 1 with attention_mask 1"):
        engine(inside, mask)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.data())
def test_position_layout_puts_each_token_at_its_position(b, t, data):
    """Any batch: each real token lands in the column of transformers' position for it (fairseq's make_positions,
    minus padding_idx + 1), its id and type with it, and restore() brings the rows back."""
    from bortengine.engine.positions import position_layout

    ids = np.array(data.draw(st.lists(st.lists(st.integers(0, 3), min_size=t, max_size=t), min_size=b, max_size=b)))
    mask = np.array(data.draw(st.lists(st.lists(st.integers(0, 1), min_size=t, max_size=t), min_size=b,
                                       max_size=b)))
    mask[:, 0] |= ~mask.any(1)
    types = np.arange(b * t).reshape(b, t)
    if (mask.astype(bool) & (ids == 1)).any():
        with pytest.raises(InvalidInputError, match="is the padding id 1 with attention_mask 1"):
            position_layout(ids, mask, types, 1)
        return
    (laid_ids, laid_mask, laid_types), layout = position_layout(ids, mask, types, 1)
    expected = np.cumsum(ids != 1, axis=1) * (ids != 1) + 1 - 2        # transformers' position ids - (padding_idx + 1)
    hidden = np.zeros(laid_ids.shape + (1,))
    for r, c in zip(*np.nonzero(mask)):
        placed = c if layout is None else expected[r, c]
        assert expected[r, c] == placed and laid_mask[r, placed] == 1
        assert laid_ids[r, placed] == ids[r, c] and (laid_types is None or laid_types[r, placed] == types[r, c])
        hidden[r, placed, 0] = types[r, c] + 1
    assert laid_mask.sum() == mask.sum()
    if layout is not None:
        np.testing.assert_array_equal(layout.restore(hidden)[..., 0], (types + 1) * mask)


def test_position_table_sliced_at_padding(make_encoder):
    path = make_encoder(**SIZES, **MODELS["roberta"])
    engine = bortengine.load(path)
    c = engine.config
    assert (c.position_offset, c.max_position_embeddings, c.max_positions) == (2, 42, 40)
    assert engine.max_length == 40
    too_long = np.full((1, 41), 7)
    with pytest.raises(InvalidInputError, match="41 tokens per sequence but the model has positions for 40"):
        engine(too_long)


@pytest.mark.parametrize("name", ["roberta", "xlm-roberta-classifier", "distilbert-classifier"])
def test_int8_cosine(make_encoder, name):
    path = make_encoder(**SIZES, **MODELS[name])
    fp32, int8 = bortengine.load(path), bortengine.load(path, dtype="int8")
    rng = np.random.default_rng(2)
    ids, mask = _random_batch(fp32, rng, [40, 9, 23])
    a, b = fp32(ids, mask), int8(ids, mask)
    real = mask.astype(bool)
    x, y = a.last_hidden_state[real], b.last_hidden_state[real]
    cosine = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cosine.min() >= 0.98, cosine.min()
    if a.logits is not None:
        assert np.abs(a.logits - b.logits).max() < 0.1


def _st_dir(model, out, pooling):
    out.mkdir()
    for f in model.iterdir():
        if not f.name.startswith("."):
            (out / f.name).symlink_to(f)
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 200,
                                                               "pooling_mode": pooling}))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return out


def test_sentence_transformers_directories(make_encoder, tmp_path):
    """sentence-transformers directories of each family (CLS and mean pooling, normalised) encode as
    SentenceTransformer does."""
    from sentence_transformers import SentenceTransformer

    for i, (name, pooling) in enumerate((("roberta", "cls"), ("xlm-roberta", "mean"), ("distilbert", "mean"))):
        st_dir = _st_dir(make_encoder(**SIZES, **MODELS[name]), tmp_path / name, pooling)
        ours = bortengine.load(st_dir).encode(TEXTS)
        theirs = SentenceTransformer(str(st_dir), device="cpu", local_files_only=True).encode(TEXTS)
        assert np.abs(ours - theirs).max() <= TOL, name
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------------------------- loading
def _copy(src, dst, config=None, drop=()):
    from safetensors.numpy import load_file, save_file

    dst.mkdir()
    for f in src.iterdir():
        if f.name not in ("model.safetensors", "config.json") and not f.name.startswith("."):
            (dst / f.name).symlink_to(f)
    tensors = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if k not in drop}
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    data = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**data, **(config or {})}))
    return dst


def test_family_errors_use_the_family_names(make_encoder, tmp_path):
    distil = make_encoder(**SIZES, **MODELS["distilbert-classifier"])
    with pytest.raises(ModelLoadError, match=r"config says dim=96 but \S+word_embeddings.weight is \[\d+, 200\]"):
        bortengine.load(_copy(distil, tmp_path / "a", {"dim": 96, "n_heads": 4}))
    with pytest.raises(ModelLoadError, match=r"config says n_layers=3 but \S+ holds tensors of 2 encoder layer"):
        bortengine.load(_copy(distil, tmp_path / "b", {"n_layers": 3}))
    with pytest.raises(ModelLoadError, match=r"missing 2 tensor\(s\).*transformer.layer.1.attention.q_lin.weight.*"
                                             r"pre_classifier.weight"):
        bortengine.load(_copy(distil, tmp_path / "c", drop=("distilbert.transformer.layer.1.attention.q_lin.weight",
                                                            "pre_classifier.weight")))
    roberta = make_encoder(**SIZES, **MODELS["roberta-classifier"])
    with pytest.raises(ModelLoadError, match=r"missing 1 tensor\(s\).*classifier.out_proj.bias.*\"RobertaModel\""):
        bortengine.load(_copy(roberta, tmp_path / "d", drop=("classifier.out_proj.bias",)))
    with pytest.raises(ModelLoadError, match="numbers positions from pad_token_id \\+ 1, so pad_token_id=41"):
        bortengine.load(_copy(roberta, tmp_path / "e", {"pad_token_id": 41}))
    bare = bortengine.load(_copy(roberta, tmp_path / "f", {"architectures": ["RobertaModel"]}))
    assert bare.labels is None and bare.config.head == "encoder"


def test_missing_model_type_read_from_architectures(make_encoder, tmp_path):
    roberta = make_encoder(**SIZES, **MODELS["roberta-classifier"])
    data = json.loads((roberta / "config.json").read_text())
    del data["model_type"]
    path = _copy(roberta, tmp_path / "m")
    (path / "config.json").write_text(json.dumps(data))
    assert bortengine.load(path).config.family.name == "roberta"


# ------------------------------------------------------------------------------------ the rest of the package
@pytest.mark.parametrize("name", ["roberta-classifier", "distilbert"])
def test_demo_checks_other_families_against_transformers(make_encoder, capsys, name):
    from bortengine.cli import main

    path = make_encoder(**SIZES, **MODELS[name])
    assert main(["demo", "--model", str(path), "--threads", "1", "--batch", "1x8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "and 4 sentence pairs" in out and "MISMATCH" not in out and out.strip().endswith("demo passed")
    assert ("logits" in out) == (name == "roberta-classifier")


def test_training_and_extraction_refuse_other_families(make_encoder, tmp_path):
    """Profiles, extraction and training describe BERT: another family is refused up front, not sliced as BERT."""
    from bortengine import UnsupportedModelError
    from bortengine.architecture import Architecture
    from bortengine.search import resolve_surrogate

    roberta = make_encoder(**SIZES, **MODELS["roberta"])
    distil = make_encoder(**SIZES, **MODELS["distilbert-classifier"])
    with pytest.raises(UnsupportedModelError, match="model_type 'distilbert' is not BERT; extraction, profiles"):
        Architecture.from_hf_config(distil)
    with pytest.raises(UnsupportedModelError, match="model_type 'roberta' is not BERT"):
        resolve_surrogate("distill", teacher=str(roberta))
    with pytest.raises(UnsupportedModelError, match="model_type 'roberta' is not BERT"):
        resolve_surrogate("finetune", teacher=str(roberta))
    pytest.importorskip("torch")
    from bortengine.training import FinetuneConfig, finetune, load_teacher

    with pytest.raises(UnsupportedModelError, match="model_type 'roberta' is not BERT.*bortengine.load"):
        load_teacher(roberta)
    with pytest.raises(UnsupportedModelError, match="model_type 'distilbert' is not BERT"):
        finetune(FinetuneConfig(model=str(distil), max_steps=1, train_limit=8, eval_limit=8, threads=1,
                                out_dir=str(tmp_path / "ft")), progress=False)
