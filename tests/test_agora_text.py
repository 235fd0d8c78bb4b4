"""Agora's text pieces: the nearest-neighbour and masked-LM transformations, the engine labeller, the text student
trainer, and one tiny end-to-end loop on texts. Random tiny models with the real MiniLM tokenizer; a few seconds."""
from __future__ import annotations

import numpy as np
import pytest

from bortengine.agora import (AgoraConfig, AgoraError, EngineLabeller, NearestNeighbourSwap, run_agora)

TEXTS = ["a wonderful and moving film with great actors .", "a dull , boring and painfully long movie .",
         "the story is clever and the music beautiful .", "terrible acting and an awful script ."]


@pytest.fixture(scope="module")
def vocab_embeddings(minilm):
    """[V,E] random embeddings, except that 'great' and 'wonderful' are each other's nearest neighbours."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((tok.get_vocab_size(), 16)).astype(np.float32)
    emb[tok.token_to_id("wonderful")] = emb[tok.token_to_id("great")] + 0.01
    return emb, tok


def test_nearest_neighbours_are_by_cosine_and_exclude_the_token(vocab_embeddings, minilm):
    emb, tok = vocab_embeddings
    swap = NearestNeighbourSwap(emb, minilm, fraction=0.5, k=3)
    swap._fill_cache(["great"])
    nn = swap.neighbours(tok.token_to_id("great"))
    assert len(nn) == 3 and tok.token_to_id("great") not in nn
    assert nn[0] == tok.token_to_id("wonderful")


def test_swap_changes_some_words_keeps_the_rest(vocab_embeddings, minilm):
    emb, _ = vocab_embeddings
    swap = NearestNeighbourSwap(emb, minilm, fraction=0.25, k=4)
    out = swap(TEXTS, np.random.default_rng(0), 3)
    assert len(out) == len(TEXTS)
    for text, variants in zip(TEXTS, out):
        assert 1 <= len(variants) <= 3 and len(set(variants)) == len(variants)
        for v in variants:
            assert v != text
            same = sum(a == b for a, b in zip(text.replace(" .", ".").replace(" ,", ",").split(),
                                              v.split()))
            assert same >= len(v.split()) // 2       # most words stay
    again = swap(TEXTS, np.random.default_rng(0), 3)
    assert again == out                               # seeded


def test_swap_returns_nothing_for_texts_without_content_words(vocab_embeddings, minilm):
    emb, _ = vocab_embeddings
    swap = NearestNeighbourSwap(emb, minilm)
    assert swap([". , !", "the and of", ""], np.random.default_rng(0), 4) == [[], [], []]


def test_swap_rejects_a_table_smaller_than_the_vocabulary(minilm):
    with pytest.raises(AgoraError, match="vocabulary"):
        NearestNeighbourSwap(np.zeros((10, 4)), minilm)


def test_masked_lm_fill(minilm):
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertForMaskedLM

    from bortengine.agora import MaskedLMFill

    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64))
    fill = MaskedLMFill(mlm, minilm, fraction=0.3, k=5)
    out = fill(TEXTS[:2], np.random.default_rng(0), 2)
    assert len(out) == 2 and all(1 <= len(v) <= 2 for v in out)
    assert all(v != t for t, vs in zip(TEXTS, out) for v in vs)
    with pytest.raises(AgoraError, match="masked language model"):
        MaskedLMFill(torch.nn.Linear(2, 2), minilm)


def test_engine_labeller_maps_names_and_refuses_other_labels(make_model):
    pos_neg = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                         head="classifier", num_labels=2, seed=5)
    labeller = EngineLabeller(pos_neg, ("negative", "positive"))
    pred = labeller.predict(TEXTS)
    assert pred.shape == (4,) and set(pred.tolist()) <= {0, 1}
    assert labeller.predict([]).shape == (0,)
    three = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                       head="classifier", num_labels=3, seed=5)
    with pytest.raises(AgoraError, match="task's labels"):
        EngineLabeller(three, ("negative", "positive"))


def test_text_loop_end_to_end(make_model, minilm, vocab_embeddings, tmp_path):
    pytest.importorskip("torch")
    from bortengine.agora import TextClassifierTrainer, evaluate_rounds, load_engine_classifier, save_classifier
    from bortengine.training import load_teacher

    student_dir = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    labeller_dir = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                              head="classifier", num_labels=2, seed=7)
    trainer = TextClassifierTrainer(load_teacher(str(student_dir)), student_dir, max_length=16, threads=1)
    emb, _ = vocab_embeddings
    train = (TEXTS * 2, [1, 0, 1, 0] * 2)
    dev = (TEXTS, [1, 0, 1, 0])
    config = AgoraConfig(settings=[{"lr": 1e-3, "epochs": 2, "batch_size": 4}, {"lr": 1e-4, "epochs": 1}],
                         out_dir=str(tmp_path), label_names=["negative", "positive"])
    result = run_agora(config, trainer, train, dev, EngineLabeller(labeller_dir),
                       NearestNeighbourSwap(emb, minilm, k=3), save_model=save_classifier,
                       load_model=load_engine_classifier)
    assert len(result.rounds) == 2 and result.rounds[0].theta_left == 1
    if result.rounds[0].dev_mistakes:
        assert result.rounds[1].train_size > 8
    rows = evaluate_rounds(tmp_path, dev, load_engine_classifier)
    assert [r["round"] for r in rows] == [1, 2] and all(0 <= r["test_accuracy"] <= 1 for r in rows)
    with pytest.raises(AgoraError, match="unknown keys"):
        trainer.fit({"learning_rate": 1e-3}, TEXTS, np.array([1, 0, 1, 0]), 0)


def test_distillation_from_the_labeller(make_model, tmp_path):
    """With a teacher, the student's loss adds the KL to the teacher's tempered soft labels: the student moves
    toward the teacher's probabilities, on texts the gold labels say nothing more about."""
    torch = pytest.importorskip("torch")
    from bortengine.agora import TextClassifierTrainer
    from bortengine.training import load_teacher

    student_dir = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    labeller_dir = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                              head="classifier", num_labels=2, seed=7)
    teacher = EngineLabeller(labeller_dir)
    t_logits = teacher.logits(TEXTS)
    assert t_logits.shape == (4, 2) and teacher.logits([]).shape == (0, 2)
    # logits in the task's class order: their argmax is predict()
    assert (t_logits.argmax(1) == teacher.predict(TEXTS)).all()
    labels = np.array([1, 0, 1, 0])
    t_prob = torch.softmax(torch.as_tensor(t_logits) / 2, -1)

    gaps = {}
    for w in (0.0, 1.0):
        trainer = TextClassifierTrainer(load_teacher(str(student_dir)), student_dir, max_length=16, threads=1,
                                        teacher=teacher if w else None, distill_weight=w)
        clf = trainer.fit({"lr": 3e-3, "epochs": 30, "batch_size": 4}, TEXTS, labels, seed=0)
        from bortengine.training.data import collate

        x, mask = collate(trainer.tokens(TEXTS), trainer.tokenizer.pad_id)
        with torch.no_grad():
            s_prob = torch.softmax(clf.model(input_ids=x, attention_mask=mask).logits / 2, -1)
        gaps[w] = float((s_prob - t_prob).abs().max())
    assert gaps[1.0] < gaps[0.0] and gaps[1.0] < 0.1, gaps
    with pytest.raises(AgoraError, match="logits"):
        TextClassifierTrainer(load_teacher(str(student_dir)), student_dir, teacher=object())
    with pytest.raises(AgoraError, match="distill_weight"):
        TextClassifierTrainer(load_teacher(str(student_dir)), student_dir, teacher=teacher, distill_weight=1.5)


def test_distillation_on_generated_points_only(make_model):
    """distill_mask: masked points keep cross-entropy alone; with gold_texts the trainer distils only the other
    texts, and a training set of gold texts only is plain fine-tuning (the labeller is not asked)."""
    torch = pytest.importorskip("torch")
    from bortengine.agora import TextClassifierTrainer
    from bortengine.training.classification import classification_loss
    from bortengine.training import load_teacher

    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    full = classification_loss(logits, labels, teacher, 0.5, 2.0)
    assert torch.allclose(classification_loss(logits, labels, teacher, 0.5, 2.0, torch.ones(6, dtype=torch.bool)),
                          full)
    assert torch.allclose(classification_loss(logits, labels, teacher, 0.5, 2.0, torch.zeros(6)), ce)
    half = torch.tensor([1, 1, 1, 0, 0, 0])
    per = [classification_loss(logits[i:i + 1], labels[i:i + 1], teacher[i:i + 1], 0.5, 2.0, half[i:i + 1])
           for i in range(6)]
    assert torch.allclose(classification_loss(logits, labels, teacher, 0.5, 2.0, half), torch.stack(per).mean())

    class Counting:
        def __init__(self, inner):
            self.inner, self.asked = inner, []

        def logits(self, texts):
            self.asked.append(list(texts))
            return self.inner.logits(texts)

    student_dir = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    labeller = Counting(EngineLabeller(make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                  intermediate_size=48, head="classifier", num_labels=2, seed=7)))
    setting = {"lr": 3e-3, "epochs": 3, "batch_size": 4}
    gold = TEXTS[:2]
    plain = TextClassifierTrainer(load_teacher(str(student_dir)), student_dir, max_length=16, threads=1)
    masked = TextClassifierTrainer(load_teacher(str(student_dir)), student_dir, max_length=16, threads=1,
                                   teacher=labeller, distill_weight=0.5, gold_texts=gold)
    a = plain.fit(setting, gold, np.array([1, 0]), seed=0)
    b = masked.fit(setting, gold, np.array([1, 0]), seed=0)
    assert labeller.asked == []                                 # gold only: plain fine-tuning, no labeller
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    masked.fit(setting, TEXTS, np.array([1, 0, 1, 0]), seed=0)
    assert labeller.asked and set(labeller.asked[0]) == set(TEXTS)
    with pytest.raises(AgoraError, match="needs a distillation teacher"):
        TextClassifierTrainer(load_teacher(str(student_dir)), student_dir, gold_texts=gold)


@pytest.mark.parametrize("option,value,match", [
    ("min_confidence", 0.0, "min_confidence must lie in"), ("min_confidence", float("nan"), "min_confidence"),
    ("select_fraction", 1.0, "select_fraction must lie in"), ("distill_weight", -0.5, "distillation weight"),
    ("distill_weight", float("inf"), "distillation weight")])
def test_finetune_agora_refuses_bad_options_before_loading_anything(option, value, match, tmp_path):
    """The ranges are checked first: no student, labeller or split is read (none of these paths exists)."""
    from bortengine.agora import finetune_agora

    with pytest.raises(AgoraError, match=match):
        finetune_agora(labeller=tmp_path / "no-labeller", out_dir=tmp_path / "out", model=tmp_path / "no-model",
                       **{option: value})


def test_finetune_agora_takes_all_of_the_users_training_file_unless_told(tmp_path):
    """train_limit defaults to none, as on the command line: a user's 60 training rows are all trained on (a default
    of 500 for the built-in task's experiments cut a user's 1,500 to 500, silently)."""
    import inspect

    from bortengine.agora import finetune_agora
    from bortengine.training import DataSpec
    from bortengine.training.agora.recipes import _task

    path = tmp_path / "a.csv"
    path.write_text("text,label\n" + "".join(f"text number {i},{('yes', 'no')[i % 2]}\n" for i in range(75)))
    default = inspect.signature(finetune_agora).parameters["train_limit"].default
    assert len(_task(DataSpec(train=str(path)), default, 0).train) == 75 - 2 * 8     # dev and test: 10% a class
    assert len(_task(DataSpec(train=str(path)), 20, 0).train) == 20
