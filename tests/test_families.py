"""RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT, ELECTRA and MPNet against transformers on the same weights, on every
ISA path.

Random-weight models of odd sizes (H=200, 5 heads of 40, FFN 333; ELECTRA's embeddings 72 wide, and as wide as H)
built with transformers (config + from_config + save_pretrained) and a tokenizer of each family's kind trained here
(byte-level BPE for RoBERTa and MPNet, Unigram for XLM-R and CamemBERT, WordPiece for DistilBERT and ELECTRA).
Tolerance 1e-4 (fp32) on hidden states at unmasked positions, pooler outputs and logits; int8 (and bf16 for the
families whose layers differ: ELECTRA's projection, MPNet's attention bias) keeps every token's cosine to fp32
>= 0.98. RoBERTa's and MPNet's positions start after the padding id: right-padded batches run as they are, left
padding and holes in the mask are laid out again (engine/positions.py), and both agree with transformers; MPNet's
relative position bias counts distances over columns, so it refuses holes.
"""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import bortengine
from bortengine import InvalidInputError, ModelLoadError, _core
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
    "electra": dict(model_type="electra", head="model", embedding_size=72),
    "electra-square": dict(model_type="electra", head="model"),   # embedding_size = hidden_size: no projection
    "electra-classifier": dict(model_type="electra", head="sequence", labels=("a", "b", "c"), embedding_size=72),
    "mpnet": dict(model_type="mpnet", head="model"),
    "mpnet-classifier": dict(model_type="mpnet", head="sequence", labels=("x", "y")),
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


HEADS = ["roberta-classifier", "distilbert-classifier", "electra-classifier", "mpnet-classifier", "bert-token",
         "distilbert-token"]


@pytest.mark.parametrize("name", HEADS)
def test_a_texts_logits_are_its_own_in_any_batch(make_encoder, isa, name):
    """A text's logits (sequence heads of every shape, token heads) are those of a call on it alone, bit for bit,
    wherever it sits in a batch: the heads run on the encoder's GEMM, whose rows do not depend on their neighbours.
    On NumPy's BLAS they did (the last bits of a row moved with its place in the batch)."""
    model_type, head = name.split("-")
    labels = ("a", "b", "c") if head == "classifier" else ("O", "B-X", "I-X", "B-Y", "I-Y")
    engine = bortengine.load(make_encoder(**SIZES, model_type=model_type, head="sequence" if head == "classifier"
                                          else "token", labels=labels), isa=isa)
    texts = [TEXTS[i % len(TEXTS)] + " " * (i // len(TEXTS)) + "and" * (i % 3) for i in range(37)]
    alone = [engine(**engine.tokenize([t])).logits[0] for t in texts]
    together = engine(**engine.tokenize(texts)).logits
    for i, t in enumerate(texts):
        n = len(alone[i])
        assert np.array_equal(together[i][:n], alone[i]), f"text {i}"
    if head == "classifier":
        assert np.array_equal(engine.classify(texts, batch_size=16).logits, np.stack(alone))


PRETRAINING = [("bert", "masked-lm"), ("bert", "pretraining"), ("roberta", "masked-lm"), ("xlm-roberta", "masked-lm"),
               ("camembert", "masked-lm"), ("distilbert", "masked-lm"), ("electra", "pretraining"),
               ("electra", "masked-lm"), ("mpnet", "masked-lm")]


@pytest.mark.parametrize("model_type, head", PRETRAINING)
def test_pretraining_checkpoints_run_their_encoder_as_automodel_loads_it(make_encoder, isa, model_type, head):
    # how the Hub's base models come (bert-base-uncased: BertForMaskedLM, the ELECTRA discriminators:
    # ElectraForPreTraining, ...): the encoder runs, the pre-training head's tensors are left unread
    import transformers
    from safetensors import safe_open

    extra = {"embedding_size": 72} if model_type == "electra" else {}
    path = make_encoder(**SIZES, model_type=model_type, head=head, **extra)
    kind = json.loads((path / "config.json").read_text())["architectures"][0]
    assert kind.endswith(("ForMaskedLM", "ForPreTraining"))
    engine = bortengine.load(path, isa=isa)
    assert engine.config.kind == kind and not engine.config.is_classifier
    with safe_open(str(path / "model.safetensors"), "np") as f:
        pooler = any("pooler.dense" in k for k in f.keys())      # BertForPreTraining's; no masked-LM model has one
    assert pooler == (kind == "BertForPreTraining")
    takes_pooler = {} if model_type in ("distilbert", "electra") else {"add_pooling_layer": pooler}
    reference = transformers.AutoModel.from_pretrained(path, attn_implementation="eager", **takes_pooler).eval()
    ids, mask = _random_batch(engine, np.random.default_rng(1), [engine.config.max_positions, 1, 9])
    ours = engine(ids, mask)
    import torch

    with torch.no_grad():
        ref = reference(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))
    assert max_abs_diff_unmasked(ours.last_hidden_state, ref.last_hidden_state.numpy(), mask) <= TOL
    if pooler:
        assert np.abs(ours.pooler_output - ref.pooler_output.numpy()).max() <= TOL
    else:
        assert ours.pooler_output is None


def test_texts_and_pairs_tokenized_as_transformers(family_model):
    from transformers import AutoTokenizer

    engine = bortengine.load(family_model)
    tokenizer = AutoTokenizer.from_pretrained(str(family_model))
    for pairs in (None, PAIRS):
        ours = engine.tokenize(TEXTS, text_pairs=pairs)
        theirs = tokenizer(TEXTS, pairs, padding=True, truncation=True, return_tensors="np")
        np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
        np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])
        if engine.config.token_types:           # ELECTRA's pairs: type 1 on the second text, as BERT's
            np.testing.assert_array_equal(ours["token_type_ids"], theirs["token_type_ids"])
            assert (pairs is None) != ours["token_type_ids"].any()
        else:                                   # the others read no token types; transformers passes none
            assert not ours["token_type_ids"].any()
            assert "token_type_ids" not in theirs
        ref = hf_auto_forward(family_model, theirs["input_ids"], theirs["attention_mask"],
                              theirs.get("token_type_ids"))
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


@pytest.mark.parametrize("lengths", [[1], list(range(1, SIZES["max_positions"] + 1))])
@pytest.mark.parametrize("name", ["electra", "mpnet"])
def test_every_length_matches_transformers(make_encoder, isa, name, lengths):
    """One token alone, and every length from 1 to the maximum in one right-padded batch: every distance MPNet's
    bias has a bucket for (exact up to 7, then logarithmic: 8, 16 and 32 start buckets) in sequences of every
    length, and ELECTRA's projection of every token."""
    path = make_encoder(**SIZES, **MODELS[name])
    engine = bortengine.load(path, isa=isa)
    ids, mask = _random_batch(engine, np.random.default_rng(len(lengths)), lengths)
    _compare(engine(ids, mask), hf_auto_forward(path, ids, mask), mask)


def test_relative_position_buckets_are_transformers():
    """MPNet's buckets of every distance a model of up to 1100 positions sees, as transformers computes them (in
    float32: the logarithm crosses an integer exactly at 16, 32 and 64)."""
    import torch
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    from bortengine.engine.positions import relative_position_bias, relative_position_buckets

    distance = np.arange(-1100, 1101)
    theirs = MPNetEncoder.relative_position_bucket(torch.as_tensor(distance)).numpy()
    np.testing.assert_array_equal(relative_position_buckets(distance), theirs)
    table = np.arange(32 * 3, dtype=np.float32).reshape(32, 3)     # [buckets, heads]
    bias = relative_position_bias(table, 5)
    assert bias.shape == (3, 9) and bias.dtype == np.float32
    np.testing.assert_array_equal(bias[:, 4 + distance[1096:1105]], table[theirs[1096:1105]].T)


def test_mpnet_positions_padding_and_holes(make_encoder, isa, tmp_path):
    """MPNet numbers positions after the padding index 1 (fixed: pad_token_id does not move it), as RoBERTa does:
    left padding is laid out again and agrees with transformers. Its bias counts the columns between tokens, so a
    hole in a row's mask is refused, through every entry point."""
    path = make_encoder(**SIZES, **MODELS["mpnet"])
    engine = bortengine.load(path, isa=isa)
    rng = np.random.default_rng(4)
    ids, mask = _random_batch(engine, rng, [12, 7, 3])
    left_ids, left_mask = np.ones_like(ids), np.zeros_like(mask)
    for r, n in enumerate(mask.sum(1)):
        left_ids[r], left_mask[r] = np.roll(ids[r], 12 - n), np.roll(mask[r], 12 - n)
    _compare(engine(left_ids, left_mask), hf_auto_forward(path, left_ids, left_mask), left_mask)
    other_pad = bortengine.load(_copy(path, tmp_path / "pad0", {"pad_token_id": 0}), isa=isa)
    assert other_pad.config.position_offset == 2
    _compare(other_pad(left_ids, left_mask), hf_auto_forward(path, left_ids, left_mask), left_mask)

    holes = mask.copy()
    holes[0, [3, 4]] = 0
    import asyncio

    with pytest.raises(InvalidInputError, match=r"attention_mask\[0, 3\] is 0 between tokens with mask 1"):
        engine(ids, holes)
    with pytest.raises(InvalidInputError, match="between tokens with mask 1"):
        asyncio.run(engine.acall(ids, holes))
    with pytest.raises(InvalidInputError, match="between tokens with mask 1"):
        engine.op_times(ids, holes, runs=1)


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
@pytest.mark.parametrize("name", ["electra-classifier", "mpnet"])
def test_low_precision_of_the_new_families(make_encoder, isa, name, dtype):
    """ELECTRA's projection stays fp32 like the embeddings; MPNet's bias goes into the low-precision encoders'
    attention (bf16 dot products on avx512 with AVX512_BF16, the path's fp32 attention elsewhere): every token's
    cosine to fp32 >= 0.98 on every path."""
    path = make_encoder(**SIZES, **MODELS[name])
    fp32, low = bortengine.load(path, isa=isa), bortengine.load(path, isa=isa, dtype=dtype)
    if name.startswith("mpnet"):
        bf16 = isa == "avx512" and _core.has_bf16_attention()  # the best bf16 attention runs the bias too
        assert low._encoder.has_position_bias
        assert low._encoder.attention_kernel == (_core.bf16_attention_names()[0] if bf16 else f"attention_f32_{isa}")
    else:
        assert low._encoder.projects_embeddings
    _check_low_precision(fp32, low, np.random.default_rng(5))


@pytest.mark.parametrize("name", ["roberta", "xlm-roberta-classifier", "distilbert-classifier"])
def test_int8_cosine(make_encoder, name):
    path = make_encoder(**SIZES, **MODELS[name])
    _check_low_precision(bortengine.load(path), bortengine.load(path, dtype="int8"), np.random.default_rng(2))


def _check_low_precision(fp32, low, rng):
    """Every real token's cosine between the two engines' hidden states >= 0.98, logits within 0.1."""
    ids, mask = _random_batch(fp32, rng, [40, 9, 23])
    a, b = fp32(ids, mask), low(ids, mask)
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

    for i, (name, pooling) in enumerate((("roberta", "cls"), ("xlm-roberta", "mean"), ("distilbert", "mean"),
                                         ("electra", "mean"), ("mpnet", "cls"))):
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
    # a padding id every text holds (<s>'s 0) loaded, then refused every text; null, which transformers cannot run
    with pytest.raises(ModelLoadError, match=r"pad_token_id is 0, the id of '<s>', which the tokenizer puts in every "
                                             r"text.*Set pad_token_id to 1, the id of the tokenizer's padding token"):
        bortengine.load(_copy(roberta, tmp_path / "g", {"pad_token_id": 0}))
    with pytest.raises(ModelLoadError, match=r"pad_token_id is null, but a roberta model numbers positions"):
        bortengine.load(_copy(roberta, tmp_path / "h", {"pad_token_id": None}))
    bare = bortengine.load(_copy(roberta, tmp_path / "f", {"architectures": ["RobertaModel"]}))
    assert bare.labels is None and bare.config.head == "encoder"


def test_the_padding_token_as_text_is_refused_naming_the_text(make_encoder):
    """'<pad>' in a text is RoBERTa's padding id with mask 1 (transformers embeds it at the padding row, which the
    engine does not load): refused naming the caller's text, not a row of the engine's length-sorted batch."""
    engine = bortengine.load(make_encoder(**SIZES, **MODELS["roberta-classifier"]))
    texts = ["a long first text of many words " * 3, "a <pad> b", "c"]
    for call in (lambda: engine.encode(texts), lambda: engine.classify(texts),
                 lambda: engine.encode(engine.tokenized(texts))):
        with pytest.raises(InvalidInputError, match=r"texts\[1\] holds '<pad>', this model's padding token, as text"):
            call()
    with pytest.raises(InvalidInputError, match=r"documents\[1\] with the query holds '<pad>'"):
        engine.rerank("q", texts)
    assert engine.encode(["a < pad> b"]).shape == (1, 200)
    # a token classifier too (it said "input_ids[0, 3] is the padding id ... set attention_mask 0 there", the row
    # of the length-sorted batch, advice for a caller who passed no ids)
    tagger = bortengine.load(make_encoder(**SIZES, model_type="roberta", head="token", labels=("O", "B-X")))
    with pytest.raises(InvalidInputError, match=r"texts\[1\] holds '<pad>', this model's padding token, as text"):
        tagger.classify_tokens(texts, batch_size=2)
    with pytest.raises(InvalidInputError, match=r"texts\[1\] holds '<pad>'"):
        asyncio.run(tagger.aclassify_tokens(texts))


def test_electra_and_mpnet_errors(make_encoder, tmp_path):
    """ELECTRA without the projection its embedding_size needs (or with one its config does not), MPNet with a bias
    table transformers cannot run or that the weights do not hold: ModelLoadError saying what is wrong."""
    electra = make_encoder(**SIZES, **MODELS["electra"])
    with pytest.raises(ModelLoadError, match=r"missing 2 tensor\(s\).*embeddings_project.weight, embeddings_project"
                                             r".bias \(config says embedding_size=72 and hidden_size=200"):
        bortengine.load(_copy(electra, tmp_path / "a", drop=("embeddings_project.weight",
                                                             "embeddings_project.bias")))
    with pytest.raises(ModelLoadError, match=r"does not use: embeddings_project.bias, embeddings_project.weight \(config "
                                             r"says embedding_size = hidden_size = 200, so there is nothing"):
        bortengine.load(_copy(electra, tmp_path / "b", {"embedding_size": 200}))
    with pytest.raises(ModelLoadError, match=r"config says embedding_size=80 but \S+word_embeddings.weight is "
                                             r"\[\d+, 72\]"):
        bortengine.load(_copy(electra, tmp_path / "c", {"embedding_size": 80}))
    mpnet = make_encoder(**SIZES, **MODELS["mpnet"])
    for buckets in (0, -3, 16, "32", None):
        with pytest.raises(ModelLoadError, match=f"relative_attention_num_buckets must be an integer >= 32, got "
                                                 f"{buckets!r}: transformers' MPNet looks up 32 distance buckets"):
            bortengine.load(_copy(mpnet, tmp_path / f"d{buckets}", {"relative_attention_num_buckets": buckets}))
    with pytest.raises(ModelLoadError, match=r"config says relative_attention_num_buckets=64 but "
                                             r"encoder.relative_attention_bias.weight is \[32, 5\]"):
        bortengine.load(_copy(mpnet, tmp_path / "e", {"relative_attention_num_buckets": 64}))
    with pytest.raises(ModelLoadError, match=r"missing 1 tensor\(s\).*encoder.relative_attention_bias.weight"):
        bortengine.load(_copy(mpnet, tmp_path / "f", drop=("encoder.relative_attention_bias.weight",)))
    with pytest.raises(ModelLoadError, match=r"missing 1 tensor\(s\).*attention.attn.q.weight"):
        bortengine.load(_copy(mpnet, tmp_path / "g", drop=("encoder.layer.1.attention.attn.q.weight",)))


def test_missing_model_type_read_from_architectures(make_encoder, tmp_path):
    roberta = make_encoder(**SIZES, **MODELS["roberta-classifier"])
    data = json.loads((roberta / "config.json").read_text())
    del data["model_type"]
    path = _copy(roberta, tmp_path / "m")
    (path / "config.json").write_text(json.dumps(data))
    assert bortengine.load(path).config.family.name == "roberta"


# ------------------------------------------------------------------------------------ the rest of the package
@pytest.mark.parametrize("name", ["roberta-classifier", "distilbert", "electra-classifier", "mpnet"])
def test_demo_checks_other_families_against_transformers(make_encoder, capsys, name):
    from bortengine.cli import main

    path = make_encoder(**SIZES, **MODELS[name])
    assert main(["demo", "--model", str(path), "--threads", "1", "--batch", "1x8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "and 4 sentence pairs" in out and "MISMATCH" not in out and out.strip().endswith("demo passed")
    assert ("logits" in out) == name.endswith("classifier")


def test_training_and_extraction_refuse_other_families(make_encoder, tmp_path):
    """Profiles, extraction and training describe BERT: another family is refused up front, not sliced as BERT."""
    from bortengine import UnsupportedModelError
    from bortengine.architecture import Architecture
    from bortengine.search import resolve_surrogate

    roberta = make_encoder(**SIZES, **MODELS["roberta"])
    distil = make_encoder(**SIZES, **MODELS["distilbert-classifier"])
    with pytest.raises(UnsupportedModelError, match="model_type 'distilbert' is not BERT; extraction, profiles"):
        Architecture.from_hf_config(distil)
    for name in ("electra", "mpnet"):
        with pytest.raises(UnsupportedModelError, match=f"model_type '{name}' is not BERT"):
            Architecture.from_hf_config(make_encoder(**SIZES, **MODELS[name]))
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


def test_a_padding_id_that_is_the_unknown_tokens_names_the_config(make_encoder, tmp_path):
    """A config.json whose pad_token_id is <unk>'s (a model that numbers positions after the padding id cannot embed
    it): a text with an unknown character is refused with the config named, not with advice to edit the text."""
    import shutil

    model = tmp_path / "xlmr"
    shutil.copytree(make_encoder(model_type="xlm-roberta", hidden_size=32, num_attention_heads=4,
                                 intermediate_size=40, num_hidden_layers=1), model)
    engine = bortengine.load(model)
    unk = engine.tokenizer.unk_id
    config = json.loads((model / "config.json").read_text())
    config["pad_token_id"] = unk
    (model / "config.json").write_text(json.dumps(config))
    engine = bortengine.load(model)
    assert engine.encode(["visited Paris"]).shape[0] == 1
    with pytest.raises(InvalidInputError, match=r"does not know.*config.json names as padding.*set pad_token_id"):
        engine.encode(["Жанна visited Paris"])
