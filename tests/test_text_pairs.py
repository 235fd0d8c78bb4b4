"""Text pairs in: "[CLS] a [SEP] b [SEP]" with token_type_ids 1 on b, truncated longest-first, through
TextTokenizer (token_ids/encode/pad/pair_type_ids) and Engine.tokenize/encode/classify(texts, text_pairs), each
checked against transformers (its tokenizer, BertModel and BertForSequenceClassification run with the same
token_type_ids); and every malformed pair refused with an InvalidInputError."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bortengine
from bortengine import InvalidInputError
from bortengine.engine import TextTokenizer
from reference import hf_forward, st_embeddings

# (question, answer), (premise, hypothesis) and the like; the long ones need truncation at small max_length, from
# either side or both, and a few are lopsided so that longest-first takes tokens from one text only.
TEXTS = [
    "What is the capital of France?",
    "A man is playing a guitar on a stage in front of a large, cheering crowd at an outdoor festival.",
    "How many legs does a spider have?",
    "Two dogs run through a field.",
    "Who wrote Pride and Prejudice, and in which year was it first published?",
    "Ça va? Das Café ist geschlossen — 中文字符 mixed in.",
    "",
    "The new movie is awesome.",
]
PAIRS = [
    "Paris is the capital and most populous city of France, with an estimated population of over two million.",
    "A person performs music.",
    "Eight.",
    "The animals are sleeping on the sofa in the living room while the rain falls outside the window.",
    "Jane Austen; 1813.",
    "Oui, ça va.",
    "An empty first text.",
    "",
]
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def hf_tokenizer(minilm):
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(minilm))


@pytest.fixture(scope="module")
def minilm_engine(minilm):
    return bortengine.load(minilm)


@pytest.fixture(scope="module")
def pair_classifier(minilm, tmp_path_factory):
    """all-MiniLM-L6-v2's encoder and pooler under a seeded random 3-way head, saved as a transformers
    BertForSequenceClassification directory with MiniLM's tokenizer files."""
    import torch
    from transformers import BertForSequenceClassification

    labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
    torch.manual_seed(15)
    model = BertForSequenceClassification.from_pretrained(
        str(minilm), num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()}).eval()
    with torch.no_grad():  # a head of weight ~1/sqrt(H), so the logits are O(1) and differences show
        model.classifier.weight.normal_(0.0, model.config.hidden_size ** -0.5)
        model.classifier.bias.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("pair-classifier")
    model.save_pretrained(path, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, path / name)
    return path


@pytest.fixture(scope="module")
def classifier_engine(pair_classifier):
    return bortengine.load(pair_classifier)


@pytest.fixture(scope="module")
def small_classifier_engine(small_classifier):
    return bortengine.load(small_classifier)


# ------------------------------------------------------------------------------------------------ tokenization
@pytest.mark.parametrize("max_length", [3, 4, 12, 24, 40, 256])
def test_tokenize_pairs_equals_transformers(minilm_engine, hf_tokenizer, max_length):
    ours = minilm_engine.tokenize(TEXTS, PAIRS, max_length=max_length)
    ref = hf_tokenizer(TEXTS, PAIRS, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert ours[key].dtype == np.int64
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)
    assert ours["input_ids"].shape[1] <= max_length
    assert ours["token_type_ids"].any()  # the second texts really are type 1


def test_truncation_takes_tokens_from_the_longer_text(minilm_engine, hf_tokenizer):
    """longest_first: a short question keeps every token while its long answer is cut, and the other way round."""
    short, long_ = "Who wrote it?", "It was written in 1813 by Jane Austen, who published it anonymously. " * 4
    for a, b in ((short, long_), (long_, short)):
        ids = minilm_engine.tokenize(a, b, max_length=32)
        ref = hf_tokenizer(a, b, truncation=True, max_length=32)
        assert ids["input_ids"][0].tolist() == ref["input_ids"] and len(ref["input_ids"]) == 32
        assert ids["token_type_ids"][0].tolist() == ref["token_type_ids"]
        short_ids = hf_tokenizer(short, add_special_tokens=False)["input_ids"]
        segment = 0 if a is short else 1
        kept = [t for t, s in zip(ref["input_ids"], ref["token_type_ids"]) if s == segment][1 - segment:][:-1]
        assert kept == short_ids  # the short text is whole: only the long one was truncated


def test_text_tokenizer_pair_api(minilm, hf_tokenizer):
    tokenizer = TextTokenizer.from_directory(minilm, max_length=40)
    ref = hf_tokenizer(TEXTS, PAIRS, truncation=True, max_length=40)
    assert tokenizer.sep_id == hf_tokenizer.sep_token_id == 102
    ids = tokenizer.token_ids(TEXTS, pairs=PAIRS)
    assert ids == ref["input_ids"]
    encodings = tokenizer.encode(TEXTS, pairs=PAIRS)
    assert [e.type_ids for e in encodings] == ref["token_type_ids"]

    padded = tokenizer.pad(ids, pairs=True)
    for row, types in enumerate(ref["token_type_ids"]):
        assert padded["token_type_ids"][row, :len(types)].tolist() == types
        assert not padded["token_type_ids"][row, len(types):].any()  # 0 on padding
    np.testing.assert_array_equal(
        tokenizer.pair_type_ids(padded["input_ids"], padded["attention_mask"]), padded["token_type_ids"])
    # without a mask every position counts as a token: the [PAD] after a pair's last [SEP] is then type 1
    unmasked = tokenizer.pair_type_ids(padded["input_ids"])
    assert (unmasked >= padded["token_type_ids"]).all() and unmasked[padded["attention_mask"] == 0].all()

    # single texts: unchanged by the new keyword
    assert tokenizer.token_ids(TEXTS) == tokenizer.token_ids(TEXTS, pairs=None) == hf_tokenizer(
        TEXTS, truncation=True, max_length=40)["input_ids"]
    assert not tokenizer.pad(tokenizer.token_ids(TEXTS))["token_type_ids"].any()


def test_vocab_txt_tokenizer_encodes_pairs_the_same(minilm, tmp_path):
    """The WordPiece pipeline built from vocab.txt (no tokenizer.json) has the same pair template."""
    for name in ("vocab.txt", "tokenizer_config.json", "config.json"):
        (tmp_path / name).symlink_to(minilm / name)
    fallback = TextTokenizer.from_directory(tmp_path, max_length=24)
    reference = TextTokenizer.from_directory(minilm, max_length=24)
    assert fallback.source.endswith("vocab.txt") and fallback.sep_id == 102
    ids = fallback.token_ids(TEXTS, pairs=PAIRS)
    assert ids == reference.token_ids(TEXTS, pairs=PAIRS)
    np.testing.assert_array_equal(fallback.pad(ids, pairs=True)["token_type_ids"],
                                  reference.pad(ids, pairs=True)["token_type_ids"])


def test_an_mpnet_vocab_txt_tokenizer_has_mpnets_pair_template(make_encoder, tmp_path):
    """MPNetTokenizer from vocab.txt (no tokenizer.json): "<s> A </s></s> B </s>", as transformers builds it, with
    the logits of transformers' MPNetForSequenceClassification. (The vocabulary is the test model's BPE one read as
    WordPiece: many words are <unk> to both; the special tokens and their places are what is compared.)"""
    import torch
    from transformers import AutoTokenizer, MPNetForSequenceClassification

    source = make_encoder(model_type="mpnet", hidden_size=40, num_attention_heads=5, intermediate_size=50,
                          num_hidden_layers=2, max_positions=64, head="sequence", labels=("no", "yes"))
    path = tmp_path / "mpnet"
    shutil.copytree(source, path)
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    (path / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    (path / "tokenizer.json").unlink()
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "MPNetTokenizer", "do_lower_case": True, "model_max_length": 64, "bos_token": "<s>",
        "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "mask_token": "<mask>"}))
    engine, hf_tokenizer = bortengine.load(path), AutoTokenizer.from_pretrained(str(path))
    assert engine.tokenizer.source.endswith("vocab.txt")
    for max_length in (12, 64):
        ours = engine.tokenize(TEXTS, PAIRS, max_length=max_length)
        theirs = hf_tokenizer(TEXTS, PAIRS, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
    with torch.no_grad():
        batch = hf_tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")
        logits = MPNetForSequenceClassification.from_pretrained(str(path)).eval()(**batch).logits.numpy()
    assert np.abs(engine.classify(TEXTS, PAIRS).logits - logits).max() <= 1e-4


# --------------------------------------------------------------------------------------------- model outputs
def test_classify_pairs_equals_transformers(classifier_engine, pair_classifier, hf_tokenizer):
    assert classifier_engine.labels == ["entailment", "neutral", "contradiction"]
    for max_length in (24, 512):
        result = classifier_engine.classify(TEXTS, PAIRS, batch_size=3, max_length=max_length)
        batch = hf_tokenizer(TEXTS, PAIRS, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        logits = hf_forward(pair_classifier, **batch)["logits"]
        assert np.abs(result.logits - logits).max() <= 1e-4
        assert result.labels == [classifier_engine.labels[i] for i in logits.argmax(1)]
        # the test can fail: the same pairs read as one segment (token_type_ids 0) give other logits
        untyped = hf_forward(pair_classifier, batch["input_ids"], batch["attention_mask"])["logits"]
        assert np.abs(untyped - logits).max() > 1e-3  # 10x the tolerance above

    label, probs = classifier_engine.classify(TEXTS[0], PAIRS[0])
    one = classifier_engine.classify([TEXTS[0]], [PAIRS[0]])
    assert label == one.labels[0] and np.abs(probs - one.probabilities[0]).max() <= 1e-6


def test_encode_pairs_equals_transformers_mean_pooling(minilm_engine, minilm):
    ours = minilm_engine.encode(TEXTS, PAIRS, batch_size=3)
    ref = st_embeddings(minilm, TEXTS, max_length=256, text_pairs=PAIRS)
    assert ours.shape == ref.shape == (len(TEXTS), 384)
    assert np.abs(ours - ref).max() <= 1e-4
    short = minilm_engine.encode(TEXTS, PAIRS, max_length=20)
    assert np.abs(short - st_embeddings(minilm, TEXTS, max_length=20, text_pairs=PAIRS)).max() <= 1e-4
    single = minilm_engine.encode(TEXTS[1], PAIRS[1])
    assert single.shape == (384,) and np.abs(single - ref[1]).max() <= 1e-4


def test_pairs_stay_with_their_texts_through_batching(minilm_engine):
    """encode() sorts inputs by token count into batches; each pair must travel with its text."""
    texts, pairs = TEXTS * 2, PAIRS[::-1] * 2
    whole = minilm_engine.encode(texts, pairs, batch_size=1000)
    order = np.random.default_rng(0).permutation(len(texts))
    shuffled = minilm_engine.encode([texts[i] for i in order], [pairs[i] for i in order], batch_size=3)
    assert np.abs(shuffled - whole[order]).max() <= 1e-5
    one_by_one = np.stack([minilm_engine.encode(a, b) for a, b in zip(texts, pairs)])
    assert np.abs(one_by_one - whole).max() <= 1e-5
    swapped = minilm_engine.encode(pairs, texts, batch_size=1000)  # (b, a) is another input than (a, b)
    assert np.abs(swapped - whole).max() > 1e-2


# ------------------------------------------------------------------------------------------------- bad input
BAD_PAIRS = [
    (["a", "b"], ["x"], "texts has 2 text(s) but text_pairs has 1"),
    (["a"], ["x", "y"], "texts has 1 text(s) but text_pairs has 2"),
    ("a", ["x"], "text_pairs must be one string too"),
    (["a", "b"], "x", "one per text"),
    (["a", "b"], ["x", 3], "text_pairs[1] is int"),
    (["a"], [None], "text_pairs[0] is NoneType"),
    ("a", b"x", "decode it first"),
    (["a"], 64, "by keyword"),
    (["a"], 1.5, "by keyword"),
]


@pytest.mark.parametrize("method", ["tokenize", "encode", "classify"])
@pytest.mark.parametrize("texts, pairs, says", BAD_PAIRS)
def test_bad_pairs_are_refused(small_classifier_engine, method, texts, pairs, says):
    with pytest.raises(InvalidInputError, match="text_pairs") as info:
        getattr(small_classifier_engine, method)(texts, pairs)
    assert says in str(info.value)


@pytest.mark.parametrize("method", ["tokenize", "encode", "classify"])
def test_pairs_need_room_for_the_template(small_classifier_engine, method):
    with pytest.raises(InvalidInputError, match=r"max_length=2 cannot hold a text pair.*max_length >= 3"):
        getattr(small_classifier_engine, method)(["a question"], ["an answer"], max_length=2)
    assert getattr(small_classifier_engine, method)(["a question"], ["an answer"], max_length=3) is not None


def test_model_without_token_types_refuses_pairs(make_model):
    path = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40,
                      type_vocab_size=1, head="classifier", num_labels=2, seed=5)
    engine = bortengine.load(path)
    for method in ("tokenize", "encode", "classify"):
        with pytest.raises(InvalidInputError, match="type_vocab_size=1.*join each pair into one text"):
            getattr(engine, method)(["a"], ["b"])
        assert getattr(engine, method)(["a b"]) is not None  # single texts still work


def test_text_tokenizer_refuses_unequal_pairs(minilm):
    tokenizer = TextTokenizer.from_directory(minilm)
    with pytest.raises(InvalidInputError, match="2 texts but 1 pairs"):
        tokenizer.token_ids(["a", "b"], pairs=["x"])
    with pytest.raises(InvalidInputError, match="padded ids"):
        tokenizer.pair_type_ids([101, 102])


_ELEMENT = st.one_of(st.text(max_size=20), st.integers(), st.none(), st.binary(max_size=3), st.floats())
_TEXTS = st.one_of(st.text(max_size=30), st.lists(_ELEMENT, max_size=4), st.lists(st.text(max_size=30), max_size=4),
                   st.integers(), st.none(), st.binary(max_size=3))
_PAIRS = st.one_of(st.none(), _TEXTS)


def _valid(texts, pairs, max_length) -> bool:
    """Whether the call must succeed: strings (or lists of strings) that match, and room for the pair."""
    def kind(value):
        if isinstance(value, str):
            return "one"
        if isinstance(value, list) and all(isinstance(t, str) for t in value):
            return len(value)
        return None

    if kind(texts) is None:
        return False
    # [CLS] and [SEP] take two tokens, a pair's second [SEP] a third: a shorter max_length holds no text
    length_ok = max_length is None or 3 <= max_length <= 512 or (pairs is None and 2 <= max_length <= 512)
    return length_ok and (pairs is None or kind(pairs) == kind(texts))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=_TEXTS, pairs=_PAIRS, max_length=st.one_of(st.none(), st.integers(-2, 600)),
       method=st.sampled_from(["tokenize", "encode", "classify"]))
def test_any_pair_input_gives_a_result_or_invalid_input_error(small_classifier_engine, texts, pairs, max_length,
                                                              method):
    engine = small_classifier_engine
    try:
        result = getattr(engine, method)(texts, pairs, max_length=max_length)
    except InvalidInputError as e:
        assert not _valid(texts, pairs, max_length), f"valid input refused: {e}"
        return
    assert _valid(texts, pairs, max_length)
    n = 1 if isinstance(texts, str) else len(texts)
    if method == "tokenize":
        assert result["input_ids"].shape[0] == n
        assert (result["token_type_ids"] == 1).any() == (pairs is not None and n > 0)
    elif method == "encode":
        assert result.shape == ((engine.embedding_dim,) if isinstance(texts, str) else (n, engine.embedding_dim))
    elif not isinstance(texts, str):
        assert len(result) == n


# texts that hold the tokenizer's special tokens typed out, which it reads as those tokens
TYPED_SEP = [("first [SEP] still first", "second"), ("first", "second [SEP] still second"),
             ("a [SEP] b [SEP] c", "d [SEP]"), ("[SEP]", "[SEP]"), ("x [CLS] y [PAD]", "z [MASK]"),
             ("first [sep] still", "second")]


def test_a_typed_sep_keeps_the_tokenizers_token_types(classifier_engine, pair_classifier, hf_tokenizer):
    """A "[SEP]" typed inside a text is read as the special token by the engine's tokenizer and transformers' alike;
    the token types are the tokenizer's own (the first text's all 0, its typed [SEP] too), as transformers gives
    them, in every text method and batch order, and so are the logits."""
    texts, pairs = [a for a, _ in TYPED_SEP], [b for _, b in TYPED_SEP]
    ref = hf_tokenizer(texts, pairs, truncation=True, padding=True, return_tensors="np")
    assert (ref["input_ids"] == 102).sum() > 2 * len(texts)     # the typed ones are the special token
    ours = classifier_engine.tokenize(texts, pairs)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)
    # the test can fail: types rebuilt from the ids end the first text at its typed [SEP]
    assert not np.array_equal(classifier_engine.tokenizer.pair_type_ids(ours["input_ids"], ours["attention_mask"]),
                              ref["token_type_ids"])
    logits = hf_forward(pair_classifier, **ref)["logits"]
    tokenized = classifier_engine.tokenized(texts, pairs)
    for result in (classifier_engine.classify(texts, pairs), classifier_engine.classify(texts, pairs, batch_size=4),
                   classifier_engine.classify(tokenized, batch_size=4),
                   asyncio.run(classifier_engine.aclassify(texts, pairs, batch_size=4))):
        assert np.abs(result.logits - logits).max() <= 1e-4
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for (a, b), expected in zip(TYPED_SEP, probabilities):    # one pair at a time: the padding-free row alone
        assert np.abs(classifier_engine.classify(a, b)[1] - expected).max() <= 1e-5


@pytest.mark.filterwarnings("ignore::bortengine.TruncationWarning")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), max_length=st.integers(3, 24))
def test_token_types_are_transformers_for_any_typed_special_token(minilm_engine, hf_tokenizer, data, max_length):
    words = st.sampled_from(["[SEP]", "[CLS]", "[PAD]", "[MASK]", "[sep]", "word", "piece", "Zürich", "", "."])
    text = st.lists(words, max_size=12).map(" ".join)
    texts = data.draw(st.lists(text, min_size=1, max_size=4))
    pairs = data.draw(st.lists(text, min_size=len(texts), max_size=len(texts)))
    ours = minilm_engine.tokenize(texts, pairs, max_length=max_length)
    ref = hf_tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)


def test_tokenized_texts_of_pairs_carry_their_types(small_classifier_engine):
    """TokenizedTexts made elsewhere without types (training's ids) get them rebuilt from the ids; types that are not
    one per id, or not the model's, are refused."""
    from bortengine import TokenizedTexts

    tokenized = small_classifier_engine.tokenized(["a question"], ["an answer"])
    assert tokenized.type_ids == [[0, 0, 0, 0, 1, 1, 1]]     # [CLS] a question [SEP] | an answer [SEP]
    bare = TokenizedTexts(tokenized.ids, tokenized.counts, tokenized.max_length, pairs=True)
    np.testing.assert_array_equal(small_classifier_engine.classify(bare).logits,
                                  small_classifier_engine.classify(tokenized).logits)
    with pytest.raises(InvalidInputError, match="one type per id"):
        small_classifier_engine.classify(dataclasses.replace(tokenized, type_ids=[tokenized.type_ids[0][:-1]]))
    with pytest.raises(InvalidInputError, match=r"type_ids must lie in \[0, 2\)"):
        small_classifier_engine.classify(dataclasses.replace(tokenized, type_ids=[[2] * len(tokenized.ids[0])]))
