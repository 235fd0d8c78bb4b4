"""Bad data and arguments given to pretrain, finetune and Agora raise TrainingError (AgoraError is one) with a
message that says what to fix, before minutes of loading where they can, never a traceback from inside torch."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bortengine.architecture import Architecture
from bortengine.agora import AgoraError, TextClassifierTrainer, parse_settings
from bortengine.training import DistillConfig, FinetuneConfig, TrainingError, finetune, pretrain

DOCS = [("wiki", "The cat sat on the mat. It was a sunny day. Birds sang in the trees outside.")] * 4


@pytest.fixture(scope="module")
def teacher_dir(make_model):
    return make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=64, seed=3)


def distill(tmp_path, teacher_dir, **kw):
    base = dict(student=Architecture(1, 2, 16, 32, max_positions=64), out_dir=str(tmp_path / "run"),
                teacher=str(teacher_dir), batch_size=4, max_length=32, max_steps=1, threads=1)
    return DistillConfig(**{**base, **kw})


@pytest.mark.parametrize("options,match", [
    ({"max_steps": None}, "stopping rule"), ({"init": "zeros"}, "init must be"), ({"clock": "gpu"}, "clock must be"),
    ({"batch_size": 0}, "batch_size must be"), ({"time_budget": float("nan")}, "time_budget"),
    ({"max_length": 128}, "exceeds the positions"),
    ({"student": Architecture(1, 2, 16, 32, vocab_size=1000, max_positions=64)}, "vocabulary")])
def test_pretrain_refuses_bad_options(tmp_path, teacher_dir, options, match):
    with pytest.raises(TrainingError, match=match):
        pretrain(distill(tmp_path, teacher_dir, **options), documents=DOCS, progress=False)


def test_pretrain_refuses_what_is_not_a_corpus_or_a_teacher(tmp_path, teacher_dir):
    with pytest.raises(TrainingError, match="corpus is empty"):
        pretrain(distill(tmp_path, teacher_dir), documents=[("wiki", "")], progress=False)
    with pytest.raises(TrainingError, match="no model.safetensors"):
        pretrain(distill(tmp_path, tmp_path / "no-teacher"), documents=DOCS, progress=False)
    with pytest.raises(TrainingError, match="more layers than its teacher .*at most 2 layers"):
        pretrain(distill(tmp_path, teacher_dir, student=Architecture(3, 2, 16, 32, max_positions=64)),
                 documents=DOCS, progress=False)


@pytest.mark.parametrize("options,match", [
    ({"task": "sst2"}, "task must be one of"), ({"epochs": 0}, "epochs must be"),
    ({"distill_weight": 2.0}, "distill_weight"), ({"max_length": 512}, "exceeds the model's")])
def test_finetune_refuses_bad_options(teacher_dir, options, match):
    with pytest.raises(TrainingError, match=match):
        finetune(FinetuneConfig(**{"model": str(teacher_dir), "max_steps": 1, "train_limit": 8, "eval_limit": 8,
                                   "threads": 1, **options}), progress=False)


def test_agora_refuses_settings_that_are_not_numbers(teacher_dir):
    assert issubclass(AgoraError, TrainingError)
    with pytest.raises(AgoraError, match="must be a number"):
        parse_settings("lr=fast,epochs=2")
    with pytest.raises(AgoraError, match="not valid JSON"):
        parse_settings("[{lr: 1}]")
    from bortengine.training import load_teacher

    trainer = TextClassifierTrainer(load_teacher(teacher_dir), teacher_dir, max_length=16, threads=1)
    with pytest.raises(AgoraError, match="must be a number"):
        trainer.fit({"lr": "fast"}, ["a good film", "a bad film"], np.array([1, 0]), seed=0)
