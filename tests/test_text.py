"""Texts in: tokenize(), encode() with sentence-transformers pooling, classify(), and the tokenizer fallbacks."""
from __future__ import annotations

import asyncio
import collections
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bortengine
from bortengine import BortEngineError, InvalidInputError, ModelLoadError
from reference import hf_forward, st_embeddings

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "",
    "supercalifragilisticexpialidocious " * 3,
]


@pytest.fixture(scope="module")
def minilm_engine(minilm):
    return bortengine.load(minilm)


def test_minilm_pair_similarity(minilm_engine):
    v = minilm_engine.encode(["A man is eating food.", "A man is eating a piece of bread."])
    assert v.shape == (2, 384) and v.dtype == np.float32
    assert float(v[0] @ v[1]) == pytest.approx(0.7553, abs=5e-4)


def test_minilm_encode_matches_sentence_transformers_pooling(minilm, minilm_engine, isa):
    engine = bortengine.load(minilm, isa=isa)
    ours = engine.encode(SENTENCES, batch_size=4)
    ref = st_embeddings(minilm, SENTENCES, max_length=256)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_encode_order_and_batching_do_not_matter(minilm_engine):
    texts = SENTENCES * 3
    one = minilm_engine.encode(texts, batch_size=1)
    many = minilm_engine.encode(texts, batch_size=7)
    whole = minilm_engine.encode(texts, batch_size=1000)
    assert np.abs(one - many).max() <= 1e-5 and np.abs(one - whole).max() <= 1e-5
    reversed_ = minilm_engine.encode(texts[::-1], batch_size=7)[::-1]
    assert np.abs(reversed_ - many).max() <= 1e-5


def test_encode_single_string_and_empty_list(minilm_engine):
    v = minilm_engine.encode("A man is eating food.")
    assert v.shape == (384,)
    np.testing.assert_allclose(v, minilm_engine.encode(["A man is eating food."])[0], atol=1e-6)
    assert minilm_engine.encode([]).shape == (0, 384)


def test_encode_normalize_override(minilm_engine):
    raw = minilm_engine.encode(SENTENCES[:3], normalize=False)
    norm = minilm_engine.encode(SENTENCES[:3])
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), norm, atol=1e-5)


def test_truncation_defaults_to_max_seq_length(minilm_engine):
    assert minilm_engine.max_length == 256  # sentence_bert_config.json, not tokenizer.json's 128
    long_text = "word " * 1000
    batch = minilm_engine.tokenize([long_text, "short"])
    assert batch["input_ids"].shape == (2, 256)
    assert batch["input_ids"][0, -1] == 102  # [SEP] kept at the end
    assert minilm_engine.tokenize([long_text], max_length=40)["input_ids"].shape == (1, 40)
    v40 = minilm_engine.encode(long_text, max_length=40)
    ref = st_embeddings(minilm_engine.path, [long_text], max_length=40)[0]
    assert np.abs(v40 - ref).max() <= 1e-4


def test_tokenize_matches_transformers_tokenizer(minilm_engine, minilm):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(minilm))(SENTENCES, padding=True, truncation=True, max_length=256,
                                                       return_tensors="np")
    ours = minilm_engine.tokenize(SENTENCES)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert ours[key].dtype == np.int64
        np.testing.assert_array_equal(ours[key], ref[key])


def test_vocab_txt_fallback_honours_do_lower_case(minilm, tmp_path):
    """Without tokenizer.json, vocab.txt + tokenizer_config.json give the same ids."""
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json",
                 "sentence_bert_config.json", "modules.json"):
        (tmp_path / name).symlink_to(minilm / name)
    shutil.copytree(minilm / "1_Pooling", tmp_path / "1_Pooling")
    fallback = bortengine.load(tmp_path)
    assert fallback.tokenizer.source.endswith("vocab.txt")
    reference = bortengine.load(minilm)
    texts = SENTENCES + ["HeLLo Wörld, ÇA VA?", "中文字符 mixed"]
    np.testing.assert_array_equal(fallback.tokenize(texts)["input_ids"], reference.tokenize(texts)["input_ids"])

    cased = tmp_path / "cased"
    cased.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        (cased / name).symlink_to(minilm / name)
    (cased / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    ids = bortengine.load(cased).tokenize(["Hello"])["input_ids"][0]
    assert 100 in ids  # "Hello" is not in the uncased vocab: [UNK]


def test_no_tokenizer_texts_refused_ids_work(small_model, tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).symlink_to(small_model / name)
    engine = bortengine.load(tmp_path)
    with pytest.raises(BortEngineError, match="no tokenizer"):
        engine.encode(["hello"])
    assert engine([[101, 102]]).last_hidden_state.shape == (1, 2, 64)


def test_plain_bert_defaults_to_mean_pooling_unnormalized(small_model, small_engine):
    texts = ["one sentence", "and another, longer sentence"]
    ours = small_engine.encode(texts)
    assert small_engine.pooling.modes == ("mean",) and not small_engine.pooling.normalize
    ref = st_embeddings(small_model, texts, max_length=512, normalize=False)
    assert np.abs(ours - ref).max() <= 1e-4


def _with_modules(model: Path, directory: Path, second: dict) -> None:
    """directory: the model's files (linked) as a sentence-transformers directory whose modules.json names the
    transformer, then `second` (its path and type)."""
    for name in model.iterdir():
        (directory / name.name).symlink_to(name)
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", **second}]))


@pytest.mark.parametrize("modes", [["cls"], ["max"], ["mean_sqrt_len"], ["cls", "mean"], ["max", "mean"]])
def test_pooling_modes(small_model, tmp_path, modes):
    _with_modules(small_model, tmp_path, {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    (tmp_path / "1_Pooling").mkdir()
    keys = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
            "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({keys[m]: True for m in modes}))
    engine = bortengine.load(tmp_path)
    texts = ["a b c", "a much longer text with more tokens in it"]
    batch = engine.tokenize(texts)
    hidden = hf_forward(small_model, batch["input_ids"], batch["attention_mask"])["last_hidden_state"]
    m = batch["attention_mask"][:, :, None].astype(np.float64)
    ref_by_mode = {"cls": hidden[:, 0], "max": np.where(m > 0, hidden, -1e9).max(1),
                   "mean": (hidden * m).sum(1) / m.sum(1), "mean_sqrt_len": (hidden * m).sum(1) / np.sqrt(m.sum(1))}
    order = [x for x in ("cls", "max", "mean", "mean_sqrt_len") if x in modes]
    ref = np.concatenate([ref_by_mode[x] for x in order], axis=1)
    ours = engine.encode(texts)
    assert ours.shape == (2, 64 * len(modes))
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("pooling_mode", ["cls", ("mean", "cls"), ("max", "mean_sqrt_len_tokens", "cls")])
def test_sentence_transformers_6_pooling_mode_names_in_their_order(small_model, tmp_path, pooling_mode):
    """sentence-transformers 6 saves `"pooling_mode": "cls"` or a list, whose vectors it joins in the list's order
    (1_Pooling/config.json written by its own Pooling, compared with its own encode)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    out = tmp_path / "st"
    SentenceTransformer(modules=[Transformer(str(small_model)), Pooling(64, pooling_mode=pooling_mode)],
                        device="cpu").save(str(out))
    assert "pooling_mode_" not in (out / "1_Pooling" / "config.json").read_text()   # the new form
    texts = ["a b c", "a much longer text with more tokens in it"]
    theirs = SentenceTransformer(str(out), device="cpu", local_files_only=True).encode(texts)
    ours = bortengine.load(out).encode(texts)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-4


def test_a_default_prompt_is_said_at_load_and_the_prompted_texts_give_its_embeddings(small_model, tmp_path):
    """sentence-transformers puts prompts[default_prompt_name] before every text of encode(); the engine does not,
    and says so when it loads the model (PromptWarning), and what the warning advises matches."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    out = tmp_path / "st"
    SentenceTransformer(modules=[Transformer(str(small_model)), Pooling(64, pooling_mode="mean")], device="cpu",
                        prompts={"query": "query: "}, default_prompt_name="query").save(str(out))
    with pytest.warns(bortengine.PromptWarning, match="default prompt 'query: '"):
        engine = bortengine.load(out)
    texts = ["a b c", "a much longer text with more tokens in it"]
    theirs = SentenceTransformer(str(out), device="cpu", local_files_only=True).encode(texts)
    assert np.abs(engine.encode(["query: " + t for t in texts]) - theirs).max() <= 1e-4


@pytest.mark.parametrize("mode", ["mean", "cls"])
def test_a_default_prompt_kept_out_of_the_pooling_is_not_advised_into_the_texts(small_model, tmp_path, mode):
    """With include_prompt false, sentence-transformers masks [CLS] and the prompt's tokens out of the pooling (its
    "cls" then takes the first token left, the text's own): the prompt put before the texts does not give its
    embeddings (it did not, while the warning advised it); the texts as given give those of encode(texts,
    prompt="")."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    out = tmp_path / "st"
    SentenceTransformer(modules=[Transformer(str(small_model)), Pooling(64, mode, include_prompt=False)],
                        device="cpu", prompts={"query": "query: "}, default_prompt_name="query").save(str(out))
    with pytest.warns(bortengine.PromptWarning, match="does not give them either.*include_prompt false"):
        engine = bortengine.load(out)
    texts = ["a b c", "a much longer text with more tokens in it"]
    st = SentenceTransformer(str(out), device="cpu", local_files_only=True)
    assert np.abs(engine.encode(["query: " + t for t in texts]) - st.encode(texts)).max() > 1e-3
    assert np.abs(engine.encode(texts) - st.encode(texts, prompt="")).max() <= 1e-4
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": mode, "include_prompt": "no"}))
    with pytest.raises(ModelLoadError, match="include_prompt must be true or false"):
        bortengine.load(out)


def test_a_cross_encoders_default_prompt_is_advised_before_the_query(make_model, tmp_path):
    """CrossEncoder.predict and rank put the default prompt before each pair's first text (the query) only."""
    from sentence_transformers import CrossEncoder

    scorer = make_model(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
                        head="classifier", num_labels=1, seed=5)
    out = tmp_path / "ce"
    CrossEncoder(str(scorer), num_labels=1, device="cpu", prompts={"q": "Find the answer: "},
                 default_prompt_name="q").save(str(out))
    with pytest.warns(bortengine.PromptWarning, match="before the first text of every pair.*before the query"):
        engine = bortengine.load(out)
    query, documents = "who found radium?", ["Marie Curie found radium.", "A fox.", "Paris is in France."]
    theirs = CrossEncoder(str(out), device="cpu").rank(query, documents)
    ours = engine.rerank("Find the answer: " + query, documents)
    assert [r.index for r in ours] == [r["corpus_id"] for r in theirs]
    assert np.abs(np.array([r.score for r in ours]) - [r["score"] for r in theirs]).max() <= 1e-4


@pytest.mark.parametrize("case", ["tokens before the pooling", "into another feature", "plain, before the pooling",
                                  "saved by sentence-transformers < 6"])
def test_normalize_does_what_its_config_says(small_model, tmp_path, case):
    """sentence-transformers >= 6 saves the feature a Normalize reads and the one it writes: the engine normalises
    the embedding only where sentence-transformers does, and refuses what it cannot reproduce (token states
    normalised before the pooling) instead of normalising the pooled vector."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer, pooling = Transformer(str(small_model)), Pooling(64, "mean")
    modules = {"tokens before the pooling": [transformer, Normalize(module_input_name="token_embeddings"), pooling],
               "into another feature": [transformer, pooling, Normalize(module_output_name="normalized")],
               "plain, before the pooling": [transformer, Normalize(), pooling],
               "saved by sentence-transformers < 6": [transformer, pooling, Normalize()]}[case]
    out = tmp_path / "st"
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    if case == "saved by sentence-transformers < 6":
        (out / "2_Normalize" / "config.json").unlink(missing_ok=True)
    engine = bortengine.load(out)
    texts = ["a b c", "a much longer text with more tokens in it"]
    if case == "tokens before the pooling":
        with pytest.raises(BortEngineError, match="Normalize of the feature 'token_embeddings' before the Pooling"):
            engine.encode(texts)
        return
    theirs = SentenceTransformer(str(out), device="cpu", local_files_only=True).encode(texts)
    assert np.abs(engine.encode(texts) - theirs).max() <= 1e-4
    assert engine.pooling.normalize == (case == "saved by sentence-transformers < 6")


@pytest.mark.parametrize("name", ["sentence_roberta_config.json", "sentence_distilbert_config.json",
                                  "sentence_xlm-roberta_config.json"])
def test_older_names_of_the_transformers_settings_are_read(minilm, tmp_path, name):
    """sentence-transformers reads max_seq_length and do_lower_case from the first of several file names (early
    versions named the file after the model type)."""
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "st"
    shutil.copytree(minilm, out)
    (out / "sentence_bert_config.json").unlink()
    (out / name).write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))
    engine = bortengine.load(out)
    assert engine.max_length == 16
    texts = ["a long text " * 20, "short"]
    theirs = SentenceTransformer(str(out), device="cpu", local_files_only=True).encode(texts)
    assert np.abs(engine.encode(texts) - theirs).max() <= 1e-4


def test_do_lower_case_lowercases_as_sentence_transformers_does(minilm, tmp_path):
    """do_lower_case adds a Lowercase step to the tokenizer, as sentence-transformers does: special tokens typed in
    a text are split out before it (Python's str.lower() on the text turned "[MASK]" into "[mask]", word pieces),
    and offsets point into the text as given."""
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    out = tmp_path / "st"
    shutil.copytree(minilm, out)
    cased = Tokenizer.from_file(str(out / "tokenizer.json"))
    cased.normalizer = None                    # a cased tokenizer: only do_lower_case lowercases
    cased.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "model_max_length": 512}))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": True}))
    engine = bortengine.load(out)
    st = SentenceTransformer(str(out), device="cpu", local_files_only=True)
    texts = ["Paris [MASK] Warsaw", "Angela [SEP] Merkel", "ΟΔΟΣ ΟΔΟΣ", "Plain Text"]
    for text in texts:
        assert engine.tokenize(text)["input_ids"][0].tolist() == st.tokenize([text])["input_ids"][0].tolist(), text
    assert np.abs(engine.encode(texts) - st.encode(texts)).max() <= 1e-4
    assert engine.tokenizer.lowercase_input


def test_a_legacy_pooling_config_that_enables_no_mode_pools_by_mean(small_model, tmp_path):
    """sentence-transformers reads such a file as mean pooling."""
    _with_modules(small_model, tmp_path, {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False}))
    assert bortengine.load(tmp_path).pooling.modes == ("mean",)


def test_unknown_pooling_mode_names_refused(small_model, tmp_path):
    _with_modules(small_model, tmp_path, {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    (tmp_path / "1_Pooling").mkdir()
    for mode, match in ((["mean", "median"], "unknown pooling_mode 'median'"), ([], "must be a mode's name"),
                        ([1], "must be a mode's name")):
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": mode}))
        with pytest.raises(ModelLoadError, match=match):
            bortengine.load(tmp_path)


def test_a_pooling_folder_modules_json_names_but_that_is_missing_is_refused(small_model, tmp_path):
    """modules.json names 1_Pooling, the folder is not there: mean pooling in its place was another model's
    embeddings without a word (sentence-transformers refuses to load it)."""
    _with_modules(small_model, tmp_path, {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    with pytest.raises(ModelLoadError, match=r"modules.json names a Pooling module in .*1_Pooling, which has no "
                                             r"config.json: .* copy that folder from the model"):
        bortengine.load(tmp_path)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    assert bortengine.load(tmp_path).pooling.modes == ("max",)


def _pooled_in_numpy(hidden, mask, modes, normalize):
    """sentence-transformers' Pooling and Normalize in float64 NumPy: the reference of the native pooling."""
    h, m = hidden.astype(np.float64), mask.astype(np.float64)[:, :, None]
    count = np.maximum(m.sum(1), 1e-9)
    by_mode = {"cls": h[:, 0], "max": np.where(m > 0, h, -1e9).max(1), "mean": (h * m).sum(1) / count,
               "mean_sqrt_len": (h * m).sum(1) / np.sqrt(count)}
    out = np.concatenate([by_mode[x] for x in modes], axis=1)
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


@settings(max_examples=80, deadline=None)
@given(b=st.integers(1, 5), t=st.integers(1, 12), h=st.integers(1, 40), normalize=st.booleans(),
       modes=st.lists(st.sampled_from(["cls", "max", "mean", "mean_sqrt_len"]), min_size=1, max_size=4, unique=True),
       seed=st.integers(0, 2 ** 16))
def test_native_pooling_is_sentence_transformers_pooling_row_by_row(b, t, h, normalize, modes, seed):
    """_core.pool: every mode and their concatenation against float64 NumPy (rows with no real token too), and each
    row's result the same bits alone as in a batch (what combined forwards rely on)."""
    from bortengine.engine.native import core

    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((b, t, h)).astype(np.float32) * 3
    mask = (rng.random((b, t)) < 0.7).astype(np.int64)
    got = core().pool(hidden, mask, modes, normalize)
    assert got.dtype == np.float32 and got.shape == (b, h * len(modes))
    np.testing.assert_allclose(got, _pooled_in_numpy(hidden, mask, modes, normalize), rtol=2e-5, atol=2e-5)
    for row in range(b):
        alone = core().pool(hidden[row:row + 1, : max(1, int(mask[row].nonzero()[0].max(initial=0)) + 1)],
                            mask[row:row + 1, : max(1, int(mask[row].nonzero()[0].max(initial=0)) + 1)], modes,
                            normalize)
        if "max" not in modes or mask[row].any():   # a row with no real token: max is -1e9 over any width
            assert np.array_equal(alone[0], got[row])


def test_native_pooling_on_a_large_batch_and_its_bad_inputs():
    """Above ~1M hidden values the pooling gives the GIL away while it runs: same results; a NaN stays NaN in every
    mode (the server refuses non-finite answers); wrong shapes and modes are ValueErrors that say what is wrong."""
    from bortengine.engine.native import core

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((64, 128, 200)).astype(np.float32)   # 1.6M values
    mask = np.ones((64, 128), np.int64)
    mask[:, 100:] = 0
    modes = ["cls", "max", "mean", "mean_sqrt_len"]
    big = core().pool(hidden, mask, modes, True)
    small = np.concatenate([core().pool(hidden[i:i + 8], mask[i:i + 8], modes, True) for i in range(0, 64, 8)])
    assert np.array_equal(big, small)
    hidden[3, 5, 7] = hidden[3, 0, 9] = np.nan   # a real token's; the first token's (cls)
    assert np.isnan(core().pool(hidden, mask, modes, False)[3, [9, 207, 407, 607]]).all()
    with pytest.raises(ValueError, match="expected \\[B, T, H\\]"):
        core().pool(hidden[0], mask, modes, False)
    with pytest.raises(ValueError, match="mask"):
        core().pool(hidden, mask[:, :5], modes, False)
    with pytest.raises(ValueError, match="unknown pooling mode 'weighted'"):
        core().pool(hidden, mask, ["weighted"], False)
    with pytest.raises(ValueError, match="at least one mode"):
        core().pool(hidden, mask, [], False)


def test_unsupported_sentence_transformers_module_refused(small_model, tmp_path):
    _with_modules(small_model, tmp_path, {"path": "2_LSTM", "type": "sentence_transformers.models.LSTM"})
    engine = bortengine.load(tmp_path)
    with pytest.raises(BortEngineError, match="LSTM"):
        engine.encode("text")


def _save_with_dense(small_model, out, *dense, normalize=True, pooling_mode="mean"):
    """A sentence-transformers directory of small_model (hidden 64): Pooling, the Dense modules given, Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    modules = [Transformer(str(small_model)), Pooling(64, pooling_mode=pooling_mode), *dense]
    SentenceTransformer(modules=modules + ([Normalize()] if normalize else []), device="cpu").save(str(out))
    return SentenceTransformer(str(out), device="cpu", local_files_only=True)


@pytest.mark.parametrize("case", ["gelu+normalize", "tanh-chain", "residual", "identity-no-bias"])
def test_dense_modules_give_sentence_transformers_embeddings(small_model, tmp_path, case):
    """LaBSE- and distiluse-style directories (Pooling, then Dense projections, then maybe Normalize) encode as
    sentence-transformers does; each text's embedding is the same bits alone as in a batch (what the server's
    combined forwards rely on); embedding_dim is the last Dense's size."""
    import torch
    from sentence_transformers.base.modules.dense import Dense

    torch.manual_seed(0)
    dense = {"gelu+normalize": [Dense(64, 24, activation_function=torch.nn.GELU())],
             "tanh-chain": [Dense(128, 48), Dense(48, 20, activation_function=torch.nn.ReLU())],
             "residual": [Dense(64, 64, use_residual=True), Dense(64, 32, use_residual=True,
                                                                   activation_function=torch.nn.SiLU())],
             "identity-no-bias": [Dense(64, 16, bias=False, activation_function=torch.nn.Identity())]}[case]
    st = _save_with_dense(small_model, tmp_path / "st", *dense, normalize=case == "gelu+normalize",
                          pooling_mode=("cls", "mean") if case == "tanh-chain" else "mean")
    engine = bortengine.load(tmp_path / "st")
    texts = ["a b c", "a much longer text with more tokens in it", "x", "the same words, the same words again"]
    theirs = st.encode(texts)
    ours = engine.encode(texts)
    assert engine.embedding_dim == theirs.shape[1] == dense[-1].out_features
    assert "Dense(" in repr(engine.pooling) and len(repr(engine.pooling)) < 400   # sizes, not weight arrays
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-5
    for i, text in enumerate(texts):
        assert np.array_equal(engine.encode(text), ours[i])


def test_dense_modules_that_cannot_run_are_refused_at_load(small_model, tmp_path):
    """Pickled Dense weights, sizes that do not chain, an activation or input the engine does not run: a
    ModelLoadError at load that says what is wrong (not a refusal at the first encode)."""
    import torch
    from sentence_transformers.base.modules.dense import Dense

    out = tmp_path / "st"
    _save_with_dense(small_model, out, Dense(64, 24))
    config_path = out / "2_Dense" / "config.json"
    config = json.loads(config_path.read_text())
    assert bortengine.load(out).embedding_dim == 24

    config_path.write_text(json.dumps({**config, "in_features": 32}))
    with pytest.raises(ModelLoadError, match="linear.weight has shape \\[24, 64\\], expected \\[24, 32\\]"):
        bortengine.load(out)
    weights = out / "2_Dense" / "model.safetensors"
    from safetensors.numpy import save_file
    save_file({"linear.weight": np.zeros((24, 32), np.float32), "linear.bias": np.zeros(24, np.float32)}, weights)
    with pytest.raises(ModelLoadError, match="takes 32 features, but the pooling gives 64"):
        bortengine.load(out)

    config_path.write_text(json.dumps({**config, "activation_function": "torch.nn.modules.activation.Softplus"}))
    with pytest.raises(ModelLoadError, match="Softplus.*not one the engine runs"):
        bortengine.load(out)
    config_path.write_text(json.dumps({**config, "module_input_name": "token_embeddings"}))
    with pytest.raises(ModelLoadError, match="only on the sentence embedding"):
        bortengine.load(out)

    config_path.write_text(json.dumps(config))
    torch.save({"linear.weight": torch.zeros(24, 64), "linear.bias": torch.zeros(24)}, out / "2_Dense" /
               "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ModelLoadError, match="pytorch_model.bin but no model.safetensors.*SentenceTransformer\\("):
        bortengine.load(out)
    (out / "2_Dense" / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"2_Dense has no weights \(model.safetensors\): .* copy that folder"):
        bortengine.load(out)
    save_file({"linear.weight": np.full((24, 64), np.nan, np.float32), "linear.bias": np.zeros(24, np.float32)},
              weights)
    with pytest.raises(ModelLoadError, match="linear.weight"):
        bortengine.load(out)


def test_classify(small_classifier):
    engine = bortengine.load(small_classifier)
    assert engine.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    texts = ["good movie", "terrible film, do not watch", "meh", "an okay film with a long description"]
    result = engine.classify(texts, batch_size=3)
    assert len(result) == 4 and result.probabilities.shape == (4, 3)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, atol=1e-6)
    batch = engine.tokenize(texts)
    logits = hf_forward(small_classifier, **batch)["logits"]
    assert np.abs(result.logits - logits).max() <= 1e-4
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.abs(result.probabilities - expected).max() <= 1e-5
    assert result.labels == [engine.labels[i] for i in expected.argmax(1)]
    label, probs = engine.classify("good movie")
    assert label == result.labels[0] and probs.shape == (3,)
    pairs = list(result)
    assert pairs[1][0] == result.labels[1]


def test_classify_binary_named_labels_and_multilabel(make_model, tmp_path):
    path = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40,
                      head="classifier", num_labels=2, seed=9)
    engine = bortengine.load(path)
    assert engine.labels == ["negative", "positive"]
    assert engine.classify(["x"]).labels[0] in ("negative", "positive")

    for name in path.iterdir():
        if name.name != "config.json":
            (tmp_path / name.name).symlink_to(name)
    config = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "problem_type": "multi_label_classification"}))
    result = bortengine.load(tmp_path).classify(["x", "y z"])
    np.testing.assert_allclose(result.probabilities, 1 / (1 + np.exp(-result.logits)), atol=1e-6)


def test_classify_refused_on_encoder(small_engine):
    with pytest.raises(BortEngineError, match="classifier"):
        small_engine.classify(["hello"])


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(min_size=0, max_size=200), min_size=1, max_size=4), cut=st.integers(3, 40),
       paired=st.booleans())
def test_ids_without_offsets_are_the_ids_with_them(minilm_engine, texts, cut, paired):
    """counted() and token_ids() tokenize without offsets (encode_batch_fast): the same ids, cuts and counts."""
    tokenizer = minilm_engine.tokenizer
    pairs = [t[::-1] for t in texts] if paired else None
    slow, slow_counts = tokenizer.encode_counted(texts, cut, pairs)
    fast, fast_counts = tokenizer.encode_counted(texts, cut, pairs, offsets=False)
    assert [e.ids for e in fast] == [e.ids for e in slow] == tokenizer.token_ids(texts, cut, pairs)
    assert fast_counts == slow_counts == tokenizer.counted(texts, cut, pairs).counts


def test_ids_past_the_vocabulary_refused_with_their_place(make_model, small_engine):
    """A tokenizer with more ids than the model's vocabulary has its batches checked before any forward (the error
    says its files do not fit the weights: it was "ids must come from this model's tokenizer", which they did); one
    that has not, its own ids are not checked again, but TokenizedTexts built elsewhere are."""
    from bortengine.engine.tokenization import TokenizedTexts

    short = bortengine.load(make_model(vocab_size=2000))   # the MiniLM tokenizer's 30522 ids on 2000 rows
    with pytest.raises(InvalidInputError, match=r"the tokenizer of .* turned the text into token id\(s\) \[\d+.*\], "
                                                r"beyond the model's vocab_size=2000 \(its ids go up to 30521\): the "
                                                r"tokenizer files .* are not those of these weights"):
        short.encode(["zebra crossings everywhere"])
    assert short.encode(["the a of"]).shape == (1, 64)          # ids 101, 1996, 1037, 1997, 102
    with pytest.raises(InvalidInputError, match=r"input_ids\[1, 1\] = 30522 is outside \[0, 30522\)"):
        small_engine.encode(TokenizedTexts([[101, 102], [101, 30522, 102]], [2, 3], 128))
    with pytest.raises(InvalidInputError, match=r"input_ids\[0, 1\] = -5 is outside \[0, 30522\)"):
        small_engine.encode(TokenizedTexts([[101, -5, 102]], [3], 128))
    assert small_engine.encode(TokenizedTexts([[101, 2023, 102]], [3], 128)).shape == (1, 64)


@pytest.mark.parametrize("method, keyword, says", [
    ("encode", "normalize_embeddings", "normalize=True or False"),
    ("encode", "convert_to_tensor", "torch.from_numpy"),
    ("encode", "output_value", "last_hidden_state"),
    ("encode", "prompt_name", "prompt + text"),
    ("encode", "normalise", "it takes texts, text_pairs, batch_size, normalize, max_length, truncation"),
    ("aencode", "show_progress_bar", "no progress bar"),
    ("classify", "top_k", "ClassificationResult.probabilities"),
    ("aclassify", "function_to_apply", "ClassificationResult.logits"),
    ("rerank", "return_documents", ".text"),
    ("arerank", "batchsize", "batch_size"),
    ("tokenize", "padding", "it takes texts, text_pairs, max_length, truncation"),
    ("tokenized", "return_tensors", "it takes texts"),
    ("ascores", "top_k", "ClassificationResult.probabilities"),
])
def test_another_librarys_keyword_says_what_the_engine_calls_it(small_engine, method, keyword, says):
    """sentence-transformers' and transformers' option names got Python's bare "unexpected keyword argument"; the
    error (still a TypeError) now says what the engine calls the option, or why it has none."""
    from bortengine.errors import UnknownOptionError

    args = ("a query", ["a document"]) if "rerank" in method else (["a text"],)
    call = getattr(small_engine, method)
    with pytest.raises(UnknownOptionError, match=rf"Engine\.{method}\(\) takes no keyword argument '{keyword}'.*"
                                                 rf"{re.escape(says)}") as refused:
        result = call(*args, **{keyword: True})
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    assert isinstance(refused.value, TypeError) and isinstance(refused.value, InvalidInputError)
    assert asyncio.iscoroutinefunction(call) == method.startswith("a")


@pytest.mark.parametrize("bad", [b"bytes", 3, [1, 2], ["ok", None], None])
def test_bad_texts(small_engine, bad):
    with pytest.raises(InvalidInputError):
        small_engine.encode(bad)


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(max_size=20), min_size=1, max_size=4), where=st.integers(0, 3),
       surrogate=st.integers(0xD800, 0xDFFF), at=st.integers(0, 20))
def test_a_lone_surrogate_is_refused_with_its_place(minilm_engine, texts, where, surrogate, at):
    """A str `tokenizers` cannot take (no UTF-8 form: e.g. bytes decoded with surrogateescape) is named, in every
    text method, not a bare TypeError from inside `tokenizers`."""
    where = min(where, len(texts) - 1)
    text = texts[where]
    at = min(at, len(text))
    texts[where] = text[:at] + chr(surrogate) + text[at:]
    for call in (minilm_engine.encode, minilm_engine.tokenize, minilm_engine.count_tokens,
                 lambda t: minilm_engine.encode(["q"] * len(t), text_pairs=t)):
        with pytest.raises(InvalidInputError, match=rf"\[{where}\] holds .* at character {at}, half of a UTF-16"):
            call(texts)


@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(batch_size=2.5), dict(max_length=0),
                                    dict(max_length=513), dict(max_length="64")])
def test_bad_encode_options(small_engine, kwargs):
    with pytest.raises(InvalidInputError):
        small_engine.encode(["hello"], **kwargs)


# Every boolean option of the text methods, by method: (method, option, whether None is accepted).
FLAG_OPTIONS = [("encode", "normalize", True), ("encode", "truncation", False), ("aencode", "normalize", True),
                ("aencode", "truncation", False), ("aencode", "lead_when_idle", False),
                ("classify", "truncation", False), ("aclassify", "truncation", False),
                ("aclassify", "lead_when_idle", False), ("classify_tokens", "truncation", False),
                ("rerank", "truncation", False), ("tokenize", "truncation", False), ("tokenized", "truncation", False)]
NOT_BOOLS = st.one_of(st.text(max_size=8), st.integers(), st.floats(), st.none(), st.lists(st.booleans(), max_size=2),
                      st.sampled_from(["yes", "no", "false", "True", 0, 1, np.int64(1), 1.0]))


@pytest.fixture(scope="module")
def flag_engines(small_classifier, make_encoder):
    """A sequence classifier (encode, classify, rerank, tokenize and their asyncio forms) and a token classifier."""
    tagger = make_encoder(model_type="bert", head="token", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=40, labels=("O", "B-PER", "I-PER"))
    return bortengine.load(small_classifier, num_threads=1), bortengine.load(tagger, num_threads=1)


def _flag_call(engines, method, texts, **options):
    """engine.method(texts, **options), awaited for the asyncio forms; rerank ranks texts for one query."""
    import asyncio

    engine = engines[1] if method == "classify_tokens" else engines[0]
    if method == "rerank":
        return engine.rerank("a query", texts, label=0, **options)
    result = getattr(engine, method)(texts, **options)
    return asyncio.run(result) if method.startswith("a") else result


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(FLAG_OPTIONS), value=NOT_BOOLS, texts=st.sampled_from([[], ["a short text"]]))
def test_a_boolean_option_refuses_what_is_not_a_bool(flag_engines, case, value, texts):
    """A truthy "no" or 0/1 passed for a boolean option is refused (naming the option, the value and what it takes),
    whether or not there is anything to compute; None only where it means something (normalize: the model's)."""
    method, option, none_allowed = case
    if value is None and none_allowed:
        _flag_call(flag_engines, method, texts, **{option: value})
        return
    with pytest.raises(InvalidInputError) as info:
        _flag_call(flag_engines, method, texts, **{option: value})
    message = str(info.value)
    accepted = "True, False or None" if none_allowed else "True or False"
    assert message.startswith(f"{option} must be {accepted} (") and f"got {value!r} ({type(value).__name__})" in message


@pytest.mark.parametrize("case", FLAG_OPTIONS)
@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_a_boolean_option_takes_bools(flag_engines, case, value):
    method, option, _ = case
    assert _flag_call(flag_engines, method, ["a short text"], **{option: value}) is not None


@pytest.mark.parametrize("value", ["no", 0, 1, None])
def test_load_refuses_a_batching_that_is_not_a_bool(small_model, value):
    with pytest.raises(InvalidInputError, match=rf"batching must be True or False .*got {value!r}"):
        bortengine.load(small_model, batching=value)


# texts in the containers a caller may pass: each ordered one gives what its list gives; the others are refused
ORDERED_TEXTS = {"tuple": tuple, "array": np.array, "deque": collections.deque,
                 "dict values": lambda texts: dict(enumerate(texts)).values()}
REFUSED_TEXTS = {"dict": (dict.fromkeys, "dict, whose keys would be read as the texts"),
                 "set": (set, "set, which has no order"), "frozenset": (frozenset, "frozenset, which has no order"),
                 "generator": (lambda texts: (t for t in texts), "generator, which can be read only once"),
                 "iterator": (iter, "list_iterator, which can be read only once"),
                 "map": (lambda texts: map(str, texts), "map, which can be read only once")}
TEXT_METHODS = ["encode", "tokenize", "tokenized", "count_tokens", "classify", "classify_tokens", "rerank",
                "encode text_pairs"]


def _texts_call(engines, method, texts, n):
    """engine.method(texts) (n of them) as a comparable value; rerank ranks texts as the documents of one query,
    "encode text_pairs" pairs "a question" with each of texts."""
    classifier, tagger = engines
    if method == "rerank":
        return [(r.index, r.score, r.text) for r in classifier.rerank("a query", texts, label=0)]
    if method == "encode text_pairs":
        return classifier.encode(["a question"] * n, texts)
    if method == "classify_tokens":
        return tagger.classify_tokens(texts)
    result = getattr(classifier, method)(texts)
    return {"classify": lambda: result.logits, "tokenize": lambda: result["input_ids"],
            "tokenized": lambda: result.ids}.get(method, lambda: result)()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=15), min_size=1, max_size=4), method=st.sampled_from(TEXT_METHODS),
       container=st.sampled_from(sorted(ORDERED_TEXTS) + sorted(REFUSED_TEXTS)))
def test_texts_are_a_sequence_of_strings(flag_engines, texts, method, container):
    """A sequence of strings gives what the list of them gives; a dict (whose keys would be encoded), a set (no
    order to give the results in) or a one-pass iterator is refused, saying what was given and what is expected."""
    if container in ORDERED_TEXTS:
        np.testing.assert_equal(_texts_call(flag_engines, method, ORDERED_TEXTS[container](texts), len(texts)),
                                _texts_call(flag_engines, method, texts, len(texts)))
        return
    wrap, says = REFUSED_TEXTS[container]
    with pytest.raises(InvalidInputError, match="must be a string or a sequence of strings") as info:
        _texts_call(flag_engines, method, wrap(texts), len(texts))
    assert f"got a {says}" in str(info.value)


def test_texts_may_be_a_pandas_series(flag_engines):
    pandas = pytest.importorskip("pandas")
    texts = ["a first text", "", "a third"]
    np.testing.assert_array_equal(flag_engines[0].encode(pandas.Series(texts)), flag_engines[0].encode(texts))
    with pytest.raises(InvalidInputError, match="got a 0-d array"):
        flag_engines[0].encode(np.array("one text"))    # not its characters
    # labels to leave out have no order: a set of them is fine
    assert flag_engines[1].classify_tokens(texts, ignore_labels={"O", "B-PER"}) == \
        flag_engines[1].classify_tokens(texts, ignore_labels=["O", "B-PER"])


def test_sentence_transformers_subfolder_layout(minilm, minilm_engine, tmp_path):
    """modules.json naming a Transformer sub-folder (0_Transformer/) that holds config, weights and tokenizer."""
    sub = tmp_path / "0_Transformer"
    sub.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "sentence_bert_config.json"):
        (sub / name).symlink_to(minilm / name)
    shutil.copytree(minilm / "1_Pooling", tmp_path / "1_Pooling")
    modules = json.loads((minilm / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    engine = bortengine.load(tmp_path)
    assert engine.max_length == 256 and engine.pooling.normalize
    np.testing.assert_array_equal(engine.encode(SENTENCES[:4]), minilm_engine.encode(SENTENCES[:4]))


def test_texts_are_tokenized_in_parts_with_the_same_ids(minilm_engine, monkeypatch):
    """`tokenizers` is called on ENCODE_PART texts at a time (a Ctrl-C waited for the whole list: 9 s for 100,000
    texts); the ids, pairs and counts are those of one call."""
    from bortengine.engine import tokenization

    tokenizer = minilm_engine.tokenizer
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(11)]
    pairs = [t[::-1] for t in texts]
    whole = (tokenizer.token_ids(texts, 8, pairs), tokenizer.counted(texts, 8).counts)
    monkeypatch.setattr(tokenization, "ENCODE_PART", 3)
    assert (tokenizer.token_ids(texts, 8, pairs), tokenizer.counted(texts, 8).counts) == whole
    assert [e.offsets for e in tokenizer.encode(texts)] == [e.offsets for e in tokenizer.encode(texts[:3])
                                                            + tokenizer.encode(texts[3:])]


def _bert_tokenizer_dir(minilm: Path, out: Path, config_edit, cased_json: bool, keep_config: bool = True,
                        steps_before: tuple = ()) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.normalizers import Sequence

    shutil.copytree(minilm, out)
    if cased_json or steps_before:
        tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
        if cased_json:
            tokenizer.normalizer.lowercase = False
            tokenizer.normalizer.strip_accents = False
        if steps_before:
            tokenizer.normalizer = Sequence([*steps_before, tokenizer.normalizer])
        tokenizer.save(str(out / "tokenizer.json"))
    config = json.loads((out / "tokenizer_config.json").read_text())
    config_edit(config)
    if keep_config:
        (out / "tokenizer_config.json").write_text(json.dumps(config))
    else:
        (out / "tokenizer_config.json").unlink()
    return out


@pytest.mark.parametrize("case", ["config says cased, tokenizer.json lower-cases",
                                  "config names no do_lower_case, tokenizer.json cased",
                                  "no tokenizer_config.json, tokenizer.json cased",
                                  "no tokenizer class: the model type's",
                                  "the generic class takes tokenizer.json as it is",
                                  "strip_accents false",
                                  "tokenizer.json lower-cases in a step before (sentence-transformers 6.3's save)",
                                  "tokenizer.json normalises NFKC first"])
def test_bert_tokenizer_flags_are_read_as_transformers_reads_them(minilm, tmp_path, case):
    """transformers' BertTokenizer builds its normaliser from tokenizer_config.json's flags (lower-casing by default),
    not from tokenizer.json's: where the two files disagree, the ids are transformers'. (sentence-transformers 6.3
    saves Transformer(do_lower_case=True) as a Lowercase step in tokenizer.json, which SentenceTransformer(dir)
    then drops: the engine lowercased, so its embeddings were those of the model before it was saved.)"""
    from tokenizers.normalizers import NFKC, Lowercase
    from transformers import AutoTokenizer

    edits = {"config says cased, tokenizer.json lower-cases": (lambda c: c.update(do_lower_case=False), False, True),
             "config names no do_lower_case, tokenizer.json cased": (lambda c: c.pop("do_lower_case"), True, True),
             "no tokenizer_config.json, tokenizer.json cased": (lambda c: None, True, False),
             "no tokenizer class: the model type's": (
                 lambda c: (c.pop("tokenizer_class"), c.update(do_lower_case=False)), False, True),
             "the generic class takes tokenizer.json as it is": (
                 lambda c: c.update(do_lower_case=False, tokenizer_class="TokenizersBackend"), False, True),
             "strip_accents false": (lambda c: c.update(strip_accents=False), False, True),
             "tokenizer.json lower-cases in a step before (sentence-transformers 6.3's save)": (
                 lambda c: c.update(do_lower_case=False), True, True, (Lowercase(),)),
             "tokenizer.json normalises NFKC first": (lambda c: c.update(do_lower_case=False), True, True, (NFKC(),))}
    edit, cased_json, keep_config, *steps = edits[case]
    model = _bert_tokenizer_dir(minilm, tmp_path / "m", edit, cased_json, keep_config, *steps)
    text = "Hello WORLD from Paris, Zürich and 北京 ﬁnance Ｆｕｌｌ"
    theirs = AutoTokenizer.from_pretrained(str(model))(text)["input_ids"]
    assert bortengine.load(model).tokenize(text)["input_ids"][0].tolist() == theirs


@pytest.mark.parametrize("tokenizer_class", [None, "RobertaTokenizer", "RobertaTokenizerFast"])
@pytest.mark.parametrize("add_prefix_space", [None, True, False])
def test_robertas_add_prefix_space_is_read_as_transformers_reads_it(make_encoder, tmp_path, tokenizer_class,
                                                                     add_prefix_space):
    """RobertaTokenizer builds its byte-level pre-tokenizer from add_prefix_space (false by default); the generic
    class (a tokenizer_config.json naming none, as this test's models have) takes tokenizer.json as it is."""
    from transformers import AutoTokenizer

    model = tmp_path / "roberta"
    shutil.copytree(make_encoder(model_type="roberta"), model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    if add_prefix_space is not None:
        config["add_prefix_space"] = add_prefix_space
    if tokenizer_class is not None:
        config["tokenizer_class"] = tokenizer_class
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    text = "Paris is nice"
    theirs = AutoTokenizer.from_pretrained(str(model))(text)["input_ids"]
    assert bortengine.load(model).tokenize(text)["input_ids"][0].tolist() == theirs


@pytest.mark.parametrize("model_type", ["xlm-roberta", "camembert"])
@pytest.mark.parametrize("tokenizer_class", ["named", None, "TokenizersBackend"])
def test_sentencepiece_tokenizers_are_read_as_transformers_builds_them(make_encoder, tmp_path, model_type,
                                                                      tokenizer_class):
    """XLMRobertaTokenizer and CamembertTokenizer (named, or the model type's) rebuild the pipeline around
    tokenizer.json's vocabulary: whitespace split then Metaspace, the normaliser's Precompiled charsmap alone. Read
    as the file had it (xlm-roberta-base's Replace of space runs and a Metaspace that splits on spaces only), every
    word's first token started at the space before it (classify_tokens' entities were one character early) and tabs
    and newlines tokenized otherwise. The generic class takes tokenizer.json as it is."""
    from transformers import AutoTokenizer

    model = tmp_path / model_type
    shutil.copytree(make_encoder(model_type=model_type), model)
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]}
    tokenizer["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = json.loads((model / "tokenizer_config.json").read_text())
    classes = {"xlm-roberta": "XLMRobertaTokenizer", "camembert": "CamembertTokenizer"}
    config.pop("tokenizer_class", None)
    if tokenizer_class is not None:
        config["tokenizer_class"] = classes[model_type] if tokenizer_class == "named" else tokenizer_class
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    theirs = AutoTokenizer.from_pretrained(str(model))
    engine = bortengine.load(model)
    texts = ["Marie Curie worked in Paris.", "  two  spaces\tand a tab\nand a line ", "   ", "",
             "café\u0301 東京 😀"]
    for text in texts:
        expected = theirs(text, return_offsets_mapping=True)
        mine = engine._text_tokenizer().encode([text])[0]
        assert mine.ids == expected["input_ids"], text
        assert [tuple(o) for o in mine.offsets] == [tuple(o) for o in expected["offset_mapping"]], text
    first, second = "Paris\tParis", "in  Paris"
    assert (engine.tokenize([first], text_pairs=[second])["input_ids"][0].tolist()
            == theirs(first, second)["input_ids"])


def test_a_bert_tokenizer_saved_without_its_decoder_decodes_as_bert_tokenizer_does(minilm, tmp_path):
    """BertTokenizer sets its WordPiece decoder whatever tokenizer.json holds; read as the file had it ("decoder":
    null), classify_tokens' words came out as "cu ##rie"."""
    from transformers import AutoTokenizer

    model = tmp_path / "m"
    shutil.copytree(minilm, model)
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["decoder"] = None
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    text = "Marie Curie worked in Zürich"
    theirs = AutoTokenizer.from_pretrained(str(model))
    ids = theirs(text, add_special_tokens=False)["input_ids"]
    assert any(theirs.convert_ids_to_tokens(i).startswith("##") for i in ids)    # a word cut in pieces
    assert bortengine.load(model)._text_tokenizer().decode(ids) == theirs.decode(ids) == "marie curie worked in zurich"
