"""Texts longer than max_length: truncation=True (the default) cuts them as transformers' tokenizer(...,
truncation=True, max_length=...) does (pairs longest-first), counts them and warns once per Engine; truncation=False
refuses the first with a TextTooLongError naming its index, its tokens and max_length, before any forward, and the
engine works on afterwards. Checked for BERT (its real WordPiece tokenizer), RoBERTa (byte-level BPE) and DistilBERT
(WordPiece, no token types), on random-weight classifiers, against transformers' tokenizer and models; the counts
against the engine's own whole-text count_tokens, over random texts (hypothesis). Also the one tokenization behind
it: TextTokenizer.encode_counted gives encode()'s Encodings in every field.
"""
from __future__ import annotations

import asyncio
import pickle
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bortengine
from bortengine import InvalidInputError, ModelLoadError, TextTooLongError, TruncationWarning
from bortengine.engine import TextTokenizer
from reference import hf_auto_forward

TOL = 1e-4
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
WORDS = ("river", "quiet", "engine", "paper", "Zürich", "São", "unbelievable", "12345", ",", "the", "a", "中文")
# short, long, lopsided pairs: at max_length 12..24 longest-first takes from one text, the other or both
TEXTS = ["A short one.", " ".join(WORDS) * 2, "Marie Curie was born in Warsaw and worked in Paris.", "x",
         "the " * 30 + "end"]
PAIRS = ["Where?", "Paris is the capital of France and its most populous city.", " ".join(WORDS), "y " * 25, "z"]


@pytest.fixture(scope="module", params=["bert", "roberta", "distilbert"])
def family(request, make_model, make_encoder):
    """(name, directory) of a random-weight sequence classifier of the family, with that family's tokenizer."""
    if request.param == "bert":   # make_random_bert: all-MiniLM-L6-v2's uncased WordPiece, [CLS] a [SEP] b [SEP]
        return request.param, make_model(**SIZES, head="classifier", num_labels=3, seed=5)
    return request.param, make_encoder(model_type=request.param, head="sequence", max_positions=40,
                                       labels=("a", "b", "c"), **SIZES)


@pytest.fixture(scope="module")
def engine(family):
    return bortengine.load(family[1], num_threads=1)


@pytest.fixture(scope="module")
def hf_tokenizer(family):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(family[1]))


def fresh(path) -> bortengine.Engine:
    """An engine that has not warned yet."""
    return bortengine.load(path, num_threads=1)


def cut_warnings(record) -> list[warnings.WarningMessage]:
    return [w for w in record if issubclass(w.category, TruncationWarning)]


# ------------------------------------------------------------------------------------------- truncation=True
@pytest.mark.filterwarnings("ignore::bortengine.TruncationWarning")
@pytest.mark.parametrize("max_length", [7, 12, 17, 24])
def test_cut_texts_and_pairs_are_transformers_truncation(family, engine, hf_tokenizer, max_length):
    for pairs in (None, PAIRS):
        ours = engine.tokenize(TEXTS, pairs, max_length=max_length)
        theirs = hf_tokenizer(TEXTS, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
        np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])
        if "token_type_ids" in theirs:    # BERT's; RoBERTa's and DistilBERT's tokenizers give none
            np.testing.assert_array_equal(ours["token_type_ids"], theirs["token_type_ids"])
        assert ours["attention_mask"].sum(1).max() == max_length    # something was cut
        ref = hf_auto_forward(family[1], theirs["input_ids"], theirs["attention_mask"], theirs.get("token_type_ids"))
        logits = engine.classify(TEXTS, pairs, max_length=max_length).logits
        assert np.abs(logits - ref["logits"]).max() <= TOL
        alogits = asyncio.run(engine.aclassify(TEXTS, pairs, max_length=max_length, truncation=True)).logits
        assert np.array_equal(alogits, logits)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["bert", "wordpiece", "bpe", "unigram"]), data=st.data(),
       max_length=st.integers(min_value=4, max_value=40), paired=st.booleans())
def test_encode_counted_is_encode_in_every_field(tokenizers, kind, data, max_length, paired):
    """The one tokenization the engine counts and cuts with (texts whole, then the tokenizer's post_process) gives
    what encode() gives, field by field, and the counts the whole-text tokenization gives."""
    tokenizer = tokenizers[kind]
    texts = data.draw(st.lists(_texts(), min_size=1, max_size=5))
    pairs = data.draw(st.lists(_texts(), min_size=len(texts), max_size=len(texts))) if paired else None
    encodings, counts = tokenizer.encode_counted(texts, max_length, pairs)
    for ours, theirs in zip(encodings, tokenizer.encode(texts, max_length, pairs=pairs)):
        for field in ("ids", "type_ids", "tokens", "offsets", "word_ids", "sequence_ids", "special_tokens_mask"):
            assert getattr(ours, field) == getattr(theirs, field), field
    assert counts == [len(ids) for ids in tokenizer.token_ids(texts, 1 << 30, pairs=pairs)]
    assert tokenizer.counted(texts, max_length, pairs).ids == [e.ids for e in encodings]


@pytest.fixture(scope="module")
def tokenizers(minilm) -> dict[str, TextTokenizer]:
    """MiniLM's tokenizer and one of each kind make_random_encoder trains (WordPiece, byte-level BPE, Unigram)."""
    from bortengine.testing import train_tokenizer

    kinds = {kind: TextTokenizer(train_tokenizer(kind), 40, 0, False, kind) for kind in ("wordpiece", "bpe", "unigram")}
    return {"bert": TextTokenizer.from_directory(minilm), **kinds}


def _texts():
    words = st.sampled_from(WORDS + ("[SEP]", "<s>", "</s>", "  ", "Ünïcode"))
    return st.one_of(st.lists(words, max_size=30).map(" ".join), st.text(max_size=60))


def test_truncation_warned_once_per_engine(family):
    long = [TEXTS[1], "short"]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = fresh(family[1])
        first.classify(long, max_length=16)
        line = _lineno() - 1    # the call above's
        first.classify(long, max_length=16)
        asyncio.run(first.aclassify(TEXTS, PAIRS, max_length=16))
        first.tokenize(long, max_length=16)
        first.rerank("a query", long, max_length=16, label=1)
        first.classify(["short", "texts", "fit"], max_length=16)    # nothing cut: nothing counted
        threads = [threading.Thread(target=first.classify, args=(long,), kwargs=dict(max_length=16))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        once = cut_warnings(record)
        second = fresh(family[1])
        second.classify(long, max_length=16)
        second.classify(long, max_length=16)
        twice = cut_warnings(record)
    assert len(once) == 1 and len(twice) == 2
    counts = first.count_tokens(TEXTS, PAIRS)
    assert first.truncated_texts == 1 + 1 + sum(n > 16 for n in counts) + 1 + 1 + 0 + 4
    assert second.truncated_texts == 2
    message = str(once[0].message)
    assert message.startswith(f"1 of 2 texts had more than max_length=16 tokens (the first is text 0, "
                              f"with {first.count_tokens(long[0])[0]}) and were cut to 16")
    assert "truncation=False" in message and "a larger max_length" in message and "once per Engine" in message
    assert once[0].filename == __file__ and once[0].lineno == line   # it points at the caller's line


def _lineno() -> int:
    import inspect

    return inspect.currentframe().f_back.f_lineno


def test_tokenized_texts_are_cut_knowingly(family):
    """engine.tokenized() hands the cut to its caller (.truncated): no warning, no count, then or when computed;
    truncation=False refuses them there or when computed."""
    engine = fresh(family[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        tokenized = engine.tokenized(TEXTS, max_length=12)
        engine.classify(tokenized)
    assert tokenized.truncated and engine.truncated_texts == 0
    with pytest.raises(TextTooLongError, match=rf"texts\[{tokenized.truncated[0]}\] has"):
        engine.classify(tokenized, truncation=False)
    with pytest.raises(TextTooLongError):
        engine.tokenized(TEXTS, max_length=12, truncation=False)


# ------------------------------------------------------------------------------------- truncation_side "left"
def _left_sided(path, tmp_path_factory, how: str = "tokenizer_config"):
    """A copy of model directory `path` whose tokenizer cuts texts from the left: tokenizer_config.json
    truncation_side, or (how="tokenizer.json") only the truncation direction of tokenizer.json."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("left")
    shutil.copytree(path, out, dirs_exist_ok=True)
    name = "tokenizer_config.json" if how == "tokenizer_config" else "tokenizer.json"
    data = json.loads((out / name).read_text())
    if how == "tokenizer_config":
        data["truncation_side"] = "left"
    else:
        data["truncation"] = {"max_length": 512, "strategy": "LongestFirst", "stride": 0, "direction": "Left"}
    (out / name).write_text(json.dumps(data))
    return out


@pytest.fixture(scope="module", params=["tokenizer_config", "tokenizer.json"])
def left_family(request, family, tmp_path_factory):
    """(name, directory, engine, transformers' tokenizer) of the family's classifier cutting from the left."""
    from transformers import AutoTokenizer

    path = _left_sided(family[1], tmp_path_factory, request.param)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(path))
    assert hf_tokenizer.truncation_side == "left"       # transformers reads the side where the engine does
    return family[0], path, fresh(path), hf_tokenizer


@pytest.mark.parametrize("max_length", [7, 12, 24])
def test_a_left_truncation_side_cuts_texts_and_pairs_as_transformers(left_family, engine, max_length):
    """tokenizer_config.json truncation_side "left" (or tokenizer.json's direction): texts lose their beginnings,
    pairs longest-first from the left of each text, as transformers' tokenizer cuts them; the logits are
    transformers' model's on those ids."""
    name, path, left, hf_tokenizer = left_family
    assert left.tokenizer.truncation_side == "left"
    with pytest.warns(TruncationWarning, match="did not read their beginnings"):
        fresh(path).tokenize(TEXTS, max_length=max_length)
    for pairs in (None, PAIRS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)
            ours = left.tokenize(TEXTS, pairs, max_length=max_length)
            right = engine.tokenize(TEXTS, pairs, max_length=max_length)
            logits = left.classify(TEXTS, pairs, max_length=max_length).logits
        theirs = hf_tokenizer(TEXTS, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key in theirs:
                np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
        assert not np.array_equal(right["input_ids"], ours["input_ids"])   # the test can fail: the right side differs
        ref = hf_auto_forward(path, theirs["input_ids"], theirs["attention_mask"], theirs.get("token_type_ids"))
        assert np.abs(logits - ref["logits"]).max() <= TOL
    assert left.count_tokens(TEXTS, PAIRS) == engine.count_tokens(TEXTS, PAIRS)     # counted before the cut


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(_texts(), min_size=1, max_size=4), data=st.data(), max_length=st.integers(4, 30),
       paired=st.booleans())
def test_left_truncation_is_transformers_on_any_text(left_family, texts, data, max_length, paired):
    _, _, left, hf_tokenizer = left_family
    pairs = data.draw(st.lists(_texts(), min_size=len(texts), max_size=len(texts))) if paired else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        ours = left.tokenized(texts, pairs, max_length=max_length).ids
    assert ours == hf_tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]


def test_a_truncation_side_neither_left_nor_right_is_refused(family, tmp_path_factory):
    import json

    path = _left_sided(family[1], tmp_path_factory)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "truncation_side": "middle"}))
    with pytest.raises(ModelLoadError, match="truncation_side must be 'left' or 'right'.*got 'middle'"):
        bortengine.load(path)


# ------------------------------------------------------------------------------------------ truncation=False
def test_truncation_false_refuses_before_any_forward(family, engine):
    forwards = []
    engine.add_batch_listener(forwards.append)
    limit = 16
    counts, pair_counts = engine.count_tokens(TEXTS), engine.count_tokens(TEXTS, PAIRS)
    first, first_pair = _first_over(counts, limit), _first_over(pair_counts, limit)
    calls = {
        "classify": lambda: engine.classify(TEXTS, max_length=limit, truncation=False),
        "aclassify": lambda: asyncio.run(engine.aclassify(TEXTS, max_length=limit, truncation=False)),
        "encode": lambda: engine.encode(TEXTS, max_length=limit, truncation=False),
        "aencode": lambda: asyncio.run(engine.aencode(TEXTS, max_length=limit, truncation=False)),
        "tokenize": lambda: engine.tokenize(TEXTS, max_length=limit, truncation=False),
        "tokenized": lambda: engine.tokenized(TEXTS, max_length=limit, truncation=False),
    }
    for name, call in calls.items():
        with pytest.raises(TextTooLongError) as raised:
            call()
        e = raised.value
        assert (e.index, e.tokens, e.max_length) == (first, counts[first], limit), name
        assert str(e).startswith(f"texts[{first}] has {counts[first]} tokens (special tokens included), more than "
                                 f"max_length={limit} ({sum(n > limit for n in counts)} of the 5 texts are), and "
                                 f"truncation=False: nothing was computed"), name
        assert "truncation=True" in str(e) and "a larger max_length" in str(e) and "shorten" in str(e)
        assert isinstance(e, InvalidInputError)
    with pytest.raises(TextTooLongError, match=rf"^texts\[{first_pair}\] with text_pairs\[{first_pair}\] has "
                                               rf"{pair_counts[first_pair]} tokens \(special tokens included, the "
                                               rf"pair together\).*longest-first"):
        engine.classify(TEXTS, PAIRS, max_length=limit, truncation=False)
    with pytest.raises(TextTooLongError, match=r"^documents\[1\] with the query has"):
        engine.rerank("a query", ["short", TEXTS[1]], max_length=limit, truncation=False, label=1)
    with pytest.raises(TextTooLongError, match=r"^the text has"):
        engine.classify(TEXTS[1], max_length=limit, truncation=False)
    assert forwards == []    # nothing ran
    # ... and the engine works on: the same texts cut, or ones that fit, computed as before
    fits = [t for t, n in zip(TEXTS, counts) if n <= limit]
    assert np.array_equal(engine.classify(fits, max_length=limit, truncation=False).logits,
                          engine.classify(fits, max_length=limit).logits)
    assert engine.classify(TEXTS, max_length=limit).logits.shape == (5, 3) and forwards


def _first_over(counts: list[int], limit: int) -> int:
    return next(i for i, n in enumerate(counts) if n > limit)


def test_a_text_of_exactly_max_length_passes(engine):
    positions = engine.config.max_positions
    for pairs in (None, PAIRS):
        counts = engine.count_tokens(TEXTS, pairs)
        for i, n in enumerate(counts):
            if not 5 < n <= positions:      # n - 1 must still hold the special tokens (RoBERTa's pairs: 4)
                continue
            assert engine.tokenize(TEXTS[i], pairs and pairs[i], max_length=n, truncation=False)[
                "attention_mask"].sum() == n
            with pytest.raises(TextTooLongError) as raised:
                engine.tokenize(TEXTS[i], pairs and pairs[i], max_length=n - 1, truncation=False)
            assert (raised.value.tokens, raised.value.max_length) == (n, n - 1)
    fit = [t for t, n in zip(TEXTS, engine.count_tokens(TEXTS)) if n <= positions]
    limit = max(engine.count_tokens(fit))    # every text fits: computed as with truncation=True
    assert len(fit) >= 3 and np.array_equal(engine.encode(fit, max_length=limit, truncation=False),
                                            engine.encode(fit, max_length=limit))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(min_value=0, max_value=45), min_size=1, max_size=6),
       max_length=st.integers(min_value=5, max_value=40), paired=st.booleans())
def test_truncation_false_raises_iff_a_text_is_longer(engine, lengths, max_length, paired):
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(n)) for i, n in enumerate(lengths)]
    pairs = [t[::-1] for t in texts] if paired else None
    counts = engine.count_tokens(texts, pairs)            # the whole-text count, tokenized apart
    over = [i for i, n in enumerate(counts) if n > max_length]
    try:
        logits = engine.classify(texts, pairs, max_length=max_length, truncation=False).logits
    except TextTooLongError as e:
        assert over and (e.index, e.tokens, e.max_length) == (over[0], counts[over[0]], max_length)
    else:
        assert not over
        assert np.array_equal(logits, engine.classify(texts, pairs, max_length=max_length).logits)


def test_classify_tokens_truncation(make_encoder):
    tagger = fresh(make_encoder(model_type="distilbert", head="token", max_positions=40, **SIZES))
    counts = tagger.count_tokens(TEXTS)
    with pytest.raises(TextTooLongError, match=rf"^texts\[{_first_over(counts, 12)}\] has"):
        tagger.classify_tokens(TEXTS, max_length=12, truncation=False)
    with pytest.warns(TruncationWarning, match=f"{sum(n > 12 for n in counts)} of 5 texts"):
        cut = tagger.classify_tokens(TEXTS, max_length=12)
    whole = tagger.classify_tokens(TEXTS)    # the model's 40 positions
    for i, n in enumerate(counts):     # a text that fits is labelled alike; a cut one up to the cut only
        if n <= 12:
            assert cut[i] == whole[i]
        else:
            read = max(end for _, end in tagger.tokenizer.encode([TEXTS[i]], 12)[0].offsets)
            assert cut[i] and max(e.end for e in cut[i]) <= read < len(TEXTS[i])


# ----------------------------------------------------------------------------------------------- the arguments
def test_truncation_must_be_a_bool(engine):
    for bad in ("false", 0, None, [True]):
        with pytest.raises(InvalidInputError, match=r"truncation must be True or False \(True cuts"):
            engine.classify(["a text"], truncation=bad)
    assert engine.classify(["a text"], truncation=np.bool_(False)).labels


def test_max_length_below_the_special_tokens_is_refused(engine):
    """`tokenizers` leaves a text uncut when max_length cannot hold the template's special tokens: refused."""
    special = engine.count_tokens("")[0]
    with pytest.raises(InvalidInputError, match=f"max_length={special - 1} cannot hold a text, .* use max_length >= "
                                                f"{special}"):
        engine.encode(["a text"], max_length=special - 1)
    assert engine.tokenize("a longer text than that", max_length=special)["attention_mask"].sum() == special


def test_text_too_long_error_pickles_whole():
    e = pickle.loads(pickle.dumps(TextTooLongError("texts[3] has 9 tokens", 3, 9, 8)))
    assert (str(e), e.index, e.tokens, e.max_length) == ("texts[3] has 9 tokens", 3, 9, 8)
