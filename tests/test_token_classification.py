"""Token classification (NER, PII tagging) against transformers' token-classification pipeline on the same
random-weight models: BERT, DistilBERT and ELECTRA (WordPiece, word-aware: "##" pieces), RoBERTa and MPNet
(byte-level BPE) and XLM-RoBERTa (Unigram), whose words are found from spaces as the pipeline does. Every aggregation gives the same
entities (label, word, character offsets; scores within 1e-4); the per-token logits match transformers on every
ISA path.
"""
from __future__ import annotations

import asyncio
import json
import warnings

import numpy as np
import pytest

import bortengine
from bortengine import BortEngineError, InvalidInputError, ModelLoadError
from bortengine.engine.entities import AGGREGATIONS
from reference import hf_auto_forward, max_abs_diff_unmasked

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "MISC")
SIZES = dict(hidden_size=200, num_attention_heads=5, intermediate_size=333, num_hidden_layers=2, max_positions=40,
             labels=LABELS, head="token")
MODEL_TYPES = ["bert", "distilbert", "roberta", "xlm-roberta", "electra", "mpnet"]
TEXTS = [
    "Marie Curie was born in Warsaw and worked in Paris.",
    "Angela Merkel met Emmanuel Macron in Berlin.",
    "Zürich, São Paulo and Reykjavík: 12345 unknownwordpieces ☃ here.",
    "x",
    "",
    "Apple and Microsoft opened offices in New York City and London. " * 4,   # cut to 40 tokens
]


@pytest.fixture(scope="module", params=MODEL_TYPES)
def tagger(request, make_encoder):
    return make_encoder(model_type=request.param, **SIZES)


@pytest.fixture(scope="module")
def pipelines():
    """transformers' token-classification pipeline of each model, built once."""
    from transformers import pipeline

    made = {}

    def get(path):
        if path not in made:
            made[path] = pipeline("token-classification", model=str(path), device="cpu")
        return made[path]

    return get


def _as_dicts(entities):
    return [(e.label, e.word, e.start, e.end, e.index) for e in entities]


def _reference(pipe, texts, aggregation):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "Tokenizer does not support real words, using fallback heuristic"
        out = pipe(texts, aggregation_strategy=aggregation)
    return [[(e.get("entity", e.get("entity_group")), e["word"], e["start"], e["end"], e.get("index"))
             for e in text] for text in out], [[float(e["score"]) for e in text] for text in out]


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_entities_match_pipeline(tagger, pipelines, aggregation):
    engine = bortengine.load(tagger)
    ours = engine.classify_tokens(TEXTS, aggregation=aggregation, batch_size=4)
    theirs, scores = _reference(pipelines(tagger), TEXTS, aggregation)
    assert [_as_dicts(text) for text in ours] == theirs
    for text, ref in zip(ours, scores):
        assert np.abs(np.array([e.score for e in text]) - np.array(ref)).max(initial=0) <= 1e-4
    assert sum(map(len, ours)) > 0, "the random model labels nothing: the comparison would be empty"
    for text, entities in zip(TEXTS, ours):
        for e in entities:
            assert 0 <= e.start <= e.end <= len(text)
    # transformers' name for the option, its enum member and an upper-case name mean the same
    from transformers.pipelines.token_classification import AggregationStrategy

    assert engine.classify_tokens(TEXTS, aggregation_strategy=aggregation.upper(), batch_size=4) == ours
    assert engine.classify_tokens(TEXTS, aggregation_strategy=AggregationStrategy(aggregation), batch_size=4) == ours


def test_single_text_and_ignore_labels(make_encoder):
    engine = bortengine.load(make_encoder(model_type="roberta", **SIZES))
    single = engine.classify_tokens(TEXTS[0], aggregation="simple")
    assert single == engine.classify_tokens([TEXTS[0]], aggregation="simple")[0]
    everything = engine.classify_tokens(TEXTS[0], ignore_labels=())
    tokens = engine.tokenizer.encode([TEXTS[0]])[0]
    assert [e.index for e in everything] == [i for i, s in enumerate(tokens.special_tokens_mask) if not s]
    assert {e.label for e in everything} <= set(LABELS)


def test_token_logits_match_transformers(tagger, isa):
    engine = bortengine.load(tagger, isa=isa)
    batch = engine.tokenize(TEXTS)
    ours = engine(batch["input_ids"], batch["attention_mask"])
    ref = hf_auto_forward(tagger, batch["input_ids"], batch["attention_mask"])
    assert ours.logits.shape == batch["input_ids"].shape + (len(LABELS),)
    assert max_abs_diff_unmasked(ours.logits, ref["logits"], batch["attention_mask"]) <= 1e-4
    assert not ours.logits[batch["attention_mask"] == 0].any()
    assert ours.pooler_output is None and engine.labels == list(LABELS)


def test_int8_token_classifier(make_encoder):
    path = make_encoder(model_type="distilbert", **SIZES)
    fp32, int8 = bortengine.load(path), bortengine.load(path, dtype="int8")
    batch = fp32.tokenize(TEXTS)
    a, b = fp32(batch["input_ids"], batch["attention_mask"]), int8(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].astype(bool)
    x, y = a.last_hidden_state[real], b.last_hidden_state[real]
    assert ((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).min() >= 0.98
    agree = (a.logits[real].argmax(1) == b.logits[real].argmax(1)).mean()
    assert agree >= 0.9, agree


def test_wrong_model_or_arguments_refused(make_encoder):
    tagger = bortengine.load(make_encoder(model_type="bert", **SIZES))
    with pytest.raises(InvalidInputError, match="aggregation must be one of"):
        tagger.classify_tokens("a", aggregation="longest")
    with pytest.raises(InvalidInputError, match="aggregation must be one of.*got 'longest'"):
        tagger.classify_tokens("a", aggregation_strategy="longest")
    with pytest.raises(InvalidInputError, match="the same option; pass one of them"):
        tagger.classify_tokens("a", aggregation="first", aggregation_strategy="first")
    with pytest.raises(InvalidInputError, match=r"texts\[0\] is int"):
        tagger.classify_tokens([1])
    with pytest.raises(BortEngineError, match="use classify_tokens"):
        tagger.classify("a")
    classifier = bortengine.load(make_encoder(model_type="bert", **{**SIZES, "head": "sequence"}))
    with pytest.raises(BortEngineError, match=r"classify_tokens\(\) needs a token classifier"):
        classifier.classify_tokens("a")


def test_server_does_not_serve_token_labels_as_text_labels(make_encoder):
    """/v1/classify labels texts: a token classifier is served for embeddings, and its warm-up classifies nothing."""
    pytest.importorskip("starlette")
    from bortengine.serving.app import ModelService

    tagger = bortengine.load(make_encoder(model_type="roberta", **SIZES))
    assert "it labels tokens, not texts" in ModelService._not_a_classifier(tagger)


@pytest.mark.parametrize("model_type, head", [("bert", "token"), ("xlm-roberta", "token"), ("distilbert", "sequence"),
                                              ("roberta", "model")])
def test_pickled_weights_get_a_conversion_that_keeps_the_head(make_encoder, tmp_path, model_type, head):
    """A directory with only pytorch_model.bin is refused with the command that writes model.safetensors, naming the
    class of its config.json (AutoModel would drop a token classifier's head); run, the model loads and gives what
    the safetensors original gives."""
    import re
    import subprocess
    import sys

    import torch
    import transformers

    source = make_encoder(model_type=model_type, **{**SIZES, "head": head})
    kind = json.loads((source / "config.json").read_text())["architectures"][0]
    pickled = tmp_path / "pickled"
    model = getattr(transformers, kind).from_pretrained(str(source))
    model.config.save_pretrained(pickled)       # transformers 5 saves safetensors only: the pickle written by hand
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (pickled / name).write_bytes((source / name).read_bytes())
    assert (pickled / "pytorch_model.bin").is_file() and not (pickled / "model.safetensors").exists()
    with pytest.raises(ModelLoadError, match="pytorch_model.bin but no model.safetensors") as info:
        bortengine.load(pickled)
    command = re.search(r'python -c "(.*?)"', str(info.value)).group(1)
    assert f"from transformers import {kind};" in command
    subprocess.run([sys.executable, "-c", command], check=True, capture_output=True)
    ours, original = bortengine.load(pickled), bortengine.load(source)
    batch = original.tokenize(TEXTS)
    a, b = ours(**batch), original(**batch)
    np.testing.assert_array_equal(a.last_hidden_state, b.last_hidden_state)
    if head != "model":
        np.testing.assert_array_equal(a.logits, b.logits)


def test_pickled_weights_of_an_unknown_class_get_the_auto_classes(make_encoder, tmp_path):
    """config.json's architectures are printed only when they name a class the engine runs: anything else gets
    AutoModel with the classifiers' Auto classes beside it."""
    from bortengine.engine import Checkpoint

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["X'); import os; os.remove('x'); ('"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"a pickle")
    with pytest.raises(ModelLoadError, match="AutoModelForTokenClassification for a token classifier") as info:
        Checkpoint.open(tmp_path)
    assert "import os" not in str(info.value) and "from transformers import AutoModel;" in str(info.value)


def test_aclassify_tokens_is_classify_tokens_for_asyncio(make_encoder):
    engine = bortengine.load(make_encoder(model_type="xlm-roberta", **SIZES))
    many = TEXTS * 15          # more texts than the event loop tokenizes itself: tokenized and labelled in a thread

    async def main():
        return await asyncio.gather(engine.aclassify_tokens(TEXTS, aggregation="first", batch_size=4),
                                    engine.aclassify_tokens(TEXTS[0]), engine.aclassify_tokens([]),
                                    engine.aclassify_tokens(many, aggregation="simple", batch_size=16))

    first, single, empty, simple = asyncio.run(main())
    assert first == engine.classify_tokens(TEXTS, aggregation="first")
    assert single == engine.classify_tokens(TEXTS[0]) and empty == []
    assert simple == engine.classify_tokens(many, aggregation="simple")
    assert sum(map(len, simple)) > 0
    with pytest.raises(InvalidInputError, match="aggregation must be one of"):
        asyncio.run(engine.aclassify_tokens("a", aggregation="longest"))
    with pytest.raises(InvalidInputError, match="more than max_length"):
        asyncio.run(engine.aclassify_tokens(TEXTS, truncation=False))
    with pytest.raises(InvalidInputError, match="deadline must be a positive number"):
        asyncio.run(engine.aclassify_tokens(TEXTS, deadline=0))
    classifier = bortengine.load(make_encoder(model_type="bert", **{**SIZES, "head": "sequence"}))
    with pytest.raises(BortEngineError, match=r"classify_tokens\(\) needs a token classifier"):
        asyncio.run(classifier.aclassify_tokens("a"))


def test_a_unigram_tokenizer_whose_config_names_no_unk_token_shows_the_texts_words(make_encoder, pipelines, tmp_path):
    """xlm-roberta-base's tokenizer_config.json names no unk token (only model_max_length), and a Unigram model has
    no unk token of its own: transformers' class default, <unk>, is the one. A word the vocabulary lacks shows as
    the text's characters, as the pipeline shows it, not as '<unk>'."""
    import shutil

    from transformers import XLMRobertaTokenizer

    model = tmp_path / "xlmr"
    shutil.copytree(make_encoder(model_type="xlm-roberta", **SIZES), model)
    vocab = [tuple(v) for v in json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]]
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    XLMRobertaTokenizer(vocab=vocab).save_pretrained(model)    # tokenizer.json as transformers builds it
    (model / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    engine = bortengine.load(model)
    text = "Жанна visited Paris"
    unk = engine.tokenizer.unk_id
    assert unk is not None and unk in engine.tokenize(text)["input_ids"][0], "the text must hold an unknown word"
    for aggregation in ("none", "simple", "first"):
        ours = engine.classify_tokens([text], aggregation=aggregation)
        theirs, _ = _reference(pipelines(model), [text], aggregation)
        assert [_as_dicts(t) for t in ours] == theirs, aggregation
        assert all(e.word != "<unk>" for e in ours[0])
