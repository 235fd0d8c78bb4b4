"""Reranking with cross-encoders (BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA, MPNet) against sentence-transformers'
CrossEncoder on the same random-weight models: (query, document) pairs through each family's pair template, scores
through the model's activation_fn (sigmoid by default, identity or tanh when config.json or, as sentence-transformers 6
saves it, config_sentence_transformers.json says so), the same order;
two-label models score a class probability."""
from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

import bortengine
from bortengine import BortEngineError, InvalidInputError

SIZES = dict(hidden_size=200, num_attention_heads=5, intermediate_size=333, num_hidden_layers=2, max_positions=40,
             head="sequence")
QUERY = "Who wrote the novel about the whale?"
DOCUMENTS = ["Herman Melville wrote Moby-Dick.", "The quick brown fox jumps over the lazy dog.", "x",
             "Marie Curie was born in Warsaw and worked in Paris. " * 5, "Herman Melville wrote Moby-Dick.", ""]


@pytest.fixture(scope="module")
def cross_encoder():
    from sentence_transformers import CrossEncoder

    return lambda path: CrossEncoder(str(path), device="cpu", local_files_only=True)


def _identity_copy(path, out):
    shutil.copytree(path, out)
    config = json.loads((out / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (out / "config.json").write_text(json.dumps(config))
    return out


def _saved_with_tanh(path, out):
    """The model saved by sentence-transformers' CrossEncoder with activation_fn=Tanh: it writes the activation in
    config_sentence_transformers.json (v6), which CrossEncoder reads before config.json's."""
    import torch
    from sentence_transformers import CrossEncoder

    CrossEncoder(str(path), device="cpu", local_files_only=True, activation_fn=torch.nn.Tanh()).save(str(out))
    assert "Tanh" in (out / "config_sentence_transformers.json").read_text()
    return out


@pytest.mark.parametrize("model_type", ["roberta", "bert", "distilbert", "xlm-roberta", "electra", "mpnet"])
def test_rerank_matches_cross_encoder(make_encoder, cross_encoder, tmp_path, model_type):
    path = make_encoder(model_type=model_type, labels=("score",), **SIZES)
    for directory in (path, _identity_copy(path, tmp_path / "identity"), _saved_with_tanh(path, tmp_path / "tanh")):
        ours = bortengine.load(directory).rerank(QUERY, DOCUMENTS)
        theirs = cross_encoder(directory).rank(QUERY, DOCUMENTS)
        assert [r.index for r in ours] == [r["corpus_id"] for r in theirs]
        assert np.abs(np.array([r.score for r in ours]) - [r["score"] for r in theirs]).max() <= 1e-4
        assert [r.text for r in ours] == [DOCUMENTS[r.index] for r in ours]
    assert ours[0].score != ours[-1].score


def test_two_label_cross_encoder_scores_a_class(make_encoder, cross_encoder):
    path = make_encoder(model_type="roberta", labels=("irrelevant", "relevant"), **SIZES)
    engine = bortengine.load(path)
    logits = cross_encoder(path).predict([(QUERY, d) for d in DOCUMENTS])       # identity: the logits
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for label, column in ((None, 1), ("irrelevant", 0), (1, 1)):
        ranked = engine.rerank(QUERY, DOCUMENTS, label=label)
        assert np.abs(np.array([r.score for r in ranked]) - probs[[r.index for r in ranked], column]).max() <= 1e-4
        assert [r.index for r in ranked] == sorted(range(len(DOCUMENTS)), key=lambda i: -probs[i, column])


def test_top_k_ties_and_empty(make_encoder):
    engine = bortengine.load(make_encoder(model_type="roberta", labels=("score",), **SIZES))
    ranked = engine.rerank(QUERY, DOCUMENTS)
    assert engine.rerank(QUERY, DOCUMENTS, top_k=2) == ranked[:2]
    assert engine.rerank(QUERY, DOCUMENTS, top_k=100) == ranked
    same = [r.index for r in ranked if r.text == DOCUMENTS[0]]
    assert same == [0, 4]            # equal scores keep the documents' order
    assert engine.rerank(QUERY, []) == []
    assert engine.rerank(QUERY, "one document")[0].index == 0


def test_rerank_refusals(make_encoder, tmp_path):
    one = bortengine.load(make_encoder(model_type="roberta", labels=("score",), **SIZES))
    with pytest.raises(InvalidInputError, match="top_k must be a positive integer"):
        one.rerank(QUERY, DOCUMENTS, top_k=0)
    with pytest.raises(InvalidInputError, match="query must be a string"):
        one.rerank(["a"], DOCUMENTS)
    with pytest.raises(InvalidInputError, match="label='x' needs a model with several labels"):
        one.rerank(QUERY, DOCUMENTS, label="x")
    with pytest.raises(BortEngineError, match=r"regression model .* relevance scores come from "
                                              r"engine.rerank\(query, documents\)"):
        one.classify(DOCUMENTS)
    three = bortengine.load(make_encoder(model_type="distilbert", labels=("a", "b", "c"), **SIZES))
    with pytest.raises(InvalidInputError, match=r"has 3 labels \['a', 'b', 'c'\]; pass label="):
        three.rerank(QUERY, DOCUMENTS)
    with pytest.raises(InvalidInputError, match="label 'd' is not one of"):
        three.rerank(QUERY, DOCUMENTS, label="d")
    assert len(three.rerank(QUERY, DOCUMENTS, label="c")) == len(DOCUMENTS)
    encoder = bortengine.load(make_encoder(model_type="roberta", **{**SIZES, "head": "model"}))
    with pytest.raises(BortEngineError, match=r"rerank\(\) needs a cross-encoder"):
        encoder.rerank(QUERY, DOCUMENTS)
    odd = _identity_copy(make_encoder(model_type="bert", labels=("score",), **SIZES), tmp_path / "tanh")
    config = json.loads((odd / "config.json").read_text())
    config["sentence_transformers"]["activation_fn"] = "torch.nn.modules.activation.Softplus"
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(BortEngineError, match="activation_fn is torch.nn.modules.activation.Softplus"):
        bortengine.load(odd).rerank(QUERY, DOCUMENTS)


def test_arerank_is_rerank_for_asyncio(make_encoder):
    engine = bortengine.load(make_encoder(model_type="roberta", labels=("score",), **SIZES))

    async def main():
        # concurrent calls share forwards (combined by the engine's queue): each still gets its own documents' order
        return await asyncio.gather(engine.arerank(QUERY, DOCUMENTS), engine.arerank(QUERY, DOCUMENTS[::-1], top_k=2),
                                    engine.arerank(QUERY, []), engine.arerank(QUERY, DOCUMENTS * 20, batch_size=8))

    whole, reversed_top, empty, many = asyncio.run(main())
    assert whole == engine.rerank(QUERY, DOCUMENTS)
    assert reversed_top == engine.rerank(QUERY, DOCUMENTS[::-1], top_k=2)
    assert empty == [] and many == engine.rerank(QUERY, DOCUMENTS * 20)
    with pytest.raises(InvalidInputError, match="top_k must be a positive integer"):
        asyncio.run(engine.arerank(QUERY, DOCUMENTS, top_k=0))
    with pytest.raises(InvalidInputError, match="deadline must be a positive number"):
        asyncio.run(engine.arerank(QUERY, [], deadline=-1))
    # a pair refused by truncation=False is named as rerank() names it
    with pytest.raises(InvalidInputError, match=r"documents\[\d\] with the query has \d+ tokens") as refused:
        asyncio.run(engine.arerank(QUERY, DOCUMENTS, truncation=False))
    with pytest.raises(InvalidInputError) as refused_sync:
        engine.rerank(QUERY, DOCUMENTS, truncation=False)
    assert str(refused.value) == str(refused_sync.value)
