"""Training and serving tokenize alike: the ids a model is trained on (training's tokenizer: the engine's
TextTokenizer on the model directory) are the ids bortengine.load() serves it with, on a real corpus, for the
shipped all-MiniLM-L6-v2, for an exported student, and for a directory with vocab.txt and lower-casing only."""
from __future__ import annotations

import json

import numpy as np
import pytest

import bortengine
from bortengine.engine import TextTokenizer
from bortengine.training import data

MAX_LENGTH = 64      # the RT fine-tuning length; long reviews are cut, as in training


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """The 1,000 held-out sentences and the RT dev and test reviews: 2,700 real texts."""
    texts = data.heldout_sentences() + [e.text for split in ("dev", "test") for e in data.load_split("rt", split)]
    assert len(texts) > 2000
    return texts


def served_ids(model_dir, texts: list[str]) -> list[list[int]]:
    batch = bortengine.load(model_dir).tokenize(texts, max_length=MAX_LENGTH)
    return [row[mask.astype(bool)].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_minilm_trained_and_served_ids_agree(minilm, corpus):
    from bortengine.training import default_teacher_path

    assert default_teacher_path() == minilm
    trained = TextTokenizer.from_directory(minilm, MAX_LENGTH).token_ids(corpus)
    assert trained == served_ids(minilm, corpus)
    assert max(map(len, trained)) == MAX_LENGTH and min(map(len, trained)) > 2


def test_exported_student_trained_and_served_ids_agree(minilm, corpus, tmp_path):
    """A student written by training (the directory pretrain and finetune write, from the teacher's tokenizer
    files), and Agora's trainer tokenizing for it."""
    pytest.importorskip("torch")
    from bortengine.architecture import Architecture
    from bortengine.agora import TextClassifierTrainer
    from bortengine.training import build_model, write_hf_directory

    student = write_hf_directory(build_model(Architecture(1, 2, 32, 64), seed=0), tmp_path / "student", minilm)
    served = served_ids(student, corpus)
    assert TextTokenizer.from_directory(student, MAX_LENGTH).token_ids(corpus) == served
    trainer = TextClassifierTrainer(build_model(Architecture(1, 2, 32, 64), seed=0), student, max_length=MAX_LENGTH,
                                    threads=1)
    assert trainer.tokens(corpus) == served


def test_vocab_txt_with_lower_casing_is_honoured(minilm, corpus, tmp_path):
    """No tokenizer.json: vocab.txt + tokenizer_config.json build the pipeline, and sentence_bert_config.json's
    do_lower_case lower-cases the input, in training as in serving (the old training tokenizer read tokenizer.json
    only, and ignored the lower-casing)."""
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        (tmp_path / name).symlink_to(minilm / name)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": True}))
    texts = corpus[:500] + ["HeLLo Wörld, ÇA VA?"]
    trained = TextTokenizer.from_directory(tmp_path, MAX_LENGTH)
    assert trained.source.endswith("vocab.txt") and trained.lowercase_input
    assert trained.token_ids(texts) == served_ids(tmp_path, texts)
    assert 100 not in trained.token_ids(["Hello"])[0]         # lower-cased first: "hello" is in the uncased vocab


def test_word_pieces_and_decoding(minilm):
    tokenizer = TextTokenizer.from_directory(minilm)
    encoding = tokenizer.encode(["Unbelievably good"], add_special_tokens=False)[0]
    assert encoding.tokens[0] == "un" and encoding.tokens[1].startswith("##")
    assert encoding.word_ids[:2] == [0, 0] and encoding.offsets[0] == (0, 2)
    vocab = tokenizer.vocabulary()
    assert vocab[tokenizer.token_id("[MASK]")] == "[MASK]" and tokenizer.token_id("no-such-token") is None
    assert tokenizer.decode(encoding.ids) == "unbelievably good"
    with pytest.raises(bortengine.ModelLoadError, match="no tokenizer"):
        TextTokenizer.from_directory(minilm / "1_Pooling")
    np.testing.assert_array_equal(tokenizer.encode(["a b"], max_length=3)[0].ids, [101, 1037, 102])
