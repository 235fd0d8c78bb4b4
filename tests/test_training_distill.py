"""Distillation pretraining on tiny models: losses, resume = uninterrupted run, budgets, MLM teacher, export,
the surrogate loss."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bortengine
from bortengine.architecture import Architecture
from bortengine.training import load_teacher, read_checkpoint
from bortengine.training.distill import DistillConfig, pretrain, surrogate_loss, uniform_layer_map

DOCS = [("wiki", "The cat sat on the mat. It was a sunny day. Birds sang in the trees outside."),
        ("wiki", "Paris is the capital of France. It has many museums. The Louvre is the largest one."),
        ("imdb", "This film was a waste of time. The acting was wooden. I would not watch it again."),
        ("imdb", "A wonderful movie with a great cast! The story moved me. Highly recommended to everyone.")] * 4
STUDENT = Architecture(1, 2, 16, 32)


@pytest.fixture(scope="module")
def teacher_dir(make_model):
    return make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=64, seed=3)


def _config(tmp_path, teacher_dir, name, **kw):
    base = dict(student=STUDENT.__class__(1, 2, 16, 32, max_positions=64), out_dir=str(tmp_path / name),
                teacher=str(teacher_dir), batch_size=4, max_length=32, warmup_steps=1, checkpoint_every=0.0,
                log_every=1, threads=1)
    base.update(kw)
    return DistillConfig(**base)


def _state(run_dir):
    return read_checkpoint(run_dir / "checkpoint.safetensors", "pretrain").group("model")


def test_layer_map():
    assert uniform_layer_map(4, 6) == [1, 2, 3, 5]  # round half to even: 1.5 -> 2, 4.5 -> 4
    assert uniform_layer_map(3, 6) == [1, 3, 5] and uniform_layer_map(6, 6) == list(range(6))


def test_pretrain_resume_is_exact_and_exports(tmp_path, teacher_dir):
    full = pretrain(_config(tmp_path, teacher_dir, "full", max_steps=4), documents=DOCS, progress=False)
    assert full["steps"] == 4 and np.isfinite(full["final_loss"])
    assert set(full["final_parts"]) == {"hidden", "attention", "embedding"}
    assert full["tokens"] > 0 and full["tokens_per_s_wall"] > 0 and "heldout_mean_cosine" not in full
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]

    def interrupt(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(_config(tmp_path, teacher_dir, "split", max_steps=4), documents=DOCS, progress=False,
                 on_step=interrupt)
    resumed = pretrain(_config(tmp_path, teacher_dir, "split", max_steps=4), documents=DOCS, progress=False)
    assert resumed["steps"] == 4
    a, b = _state(tmp_path / "full"), _state(tmp_path / "split")
    for k in a:
        torch.testing.assert_close(torch.from_numpy(a[k]), torch.from_numpy(b[k]), rtol=0, atol=0, msg=k)

    engine = bortengine.load(full["student_dir"])
    assert engine.config.hidden_size == 16 and engine.encode(["hello there"]).shape == (1, 16)
    with pytest.raises(ValueError, match="different run"):
        pretrain(_config(tmp_path, teacher_dir, "full", max_steps=5, seed=1), documents=DOCS, progress=False)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_keeps_the_steps_done(tmp_path, teacher_dir, signum):
    """Ctrl-C or a kill between the periodic checkpoints (every 2 minutes by default, none yet here) is held until
    the step under way ends, which is checkpointed before KeyboardInterrupt: the resume starts there, not at step
    0, and ends where the uninterrupted run does, bit for bit."""
    full = pretrain(_config(tmp_path, teacher_dir, "full", max_steps=4, checkpoint_every=3600.0), documents=DOCS,
                    progress=False)

    def killed(step, loss):
        if step == 2:
            os.kill(os.getpid(), signum)     # arrives during this step's bookkeeping

    def as_interrupt(received, frame):       # what the command line makes of SIGTERM
        raise KeyboardInterrupt

    # Python's own Ctrl-C handler, as in a shell's foreground: a test run started in the background (`cmd &` in a
    # script) inherits SIGINT ignored, which the run rightly leaves ignored
    previous = signal.signal(signal.SIGTERM, as_interrupt), signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            pretrain(_config(tmp_path, teacher_dir, "split", max_steps=4, checkpoint_every=3600.0), documents=DOCS,
                     progress=False, on_step=killed)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler    # the run's holding handler is gone
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert read_checkpoint(tmp_path / "split" / "checkpoint.safetensors", "pretrain").state["step"] == 2
    resumed = pretrain(_config(tmp_path, teacher_dir, "split", max_steps=4, checkpoint_every=3600.0),
                       documents=DOCS, progress=False)
    assert resumed["steps"] == full["steps"] == 4
    a, b = _state(tmp_path / "full"), _state(tmp_path / "split")
    for k in a:
        torch.testing.assert_close(torch.from_numpy(a[k]), torch.from_numpy(b[k]), rtol=0, atol=0, msg=k)


def test_random_init_and_time_budget(tmp_path, teacher_dir, capsys):
    """The cpu clock counts training steps alone (one step starts before any is counted); the wall clock counts
    the whole call, whose loading spends a budget this small: no step, the initial student written."""
    result = pretrain(_config(tmp_path, teacher_dir, "rand", init="random", time_budget=1e-9, clock="cpu"),
                      documents=DOCS, progress=False)
    assert result["steps"] == 1 and result["layer_map"] == [1]
    wall = pretrain(_config(tmp_path, teacher_dir, "wall", init="random", time_budget=1e-9, clock="wall"),
                    documents=DOCS, progress=False)
    assert wall["steps"] == 0 and bortengine.load(wall["student_dir"]).config.hidden_size == 16
    assert "the time budget was spent before the first step" in capsys.readouterr().err


def test_mlm_teacher(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    config._attn_implementation = "eager"
    mlm = BertForMaskedLM(config).eval()
    from bortengine.testing import minilm_path

    mlm.name_or_path = str(minilm_path())  # its tokenizer
    result = pretrain(DistillConfig(student=Architecture(1, 2, 16, 32, max_positions=64),
                                    out_dir=str(tmp_path / "mlm"), teacher=mlm.name_or_path, batch_size=4,
                                    max_length=32, max_steps=2, threads=1),
                      teacher=mlm, documents=DOCS, progress=False, evaluate=False)
    assert {"mlm_soft", "mlm_hard"} <= set(result["final_parts"])


def test_surrogate_is_deterministic(teacher_dir):
    teacher = load_teacher(teacher_dir)
    kw = dict(teacher=teacher, steps=3, seed=0, batch_size=4, max_length=32, eval_sentences=8, documents=DOCS,
              threads=1)
    a = surrogate_loss(Architecture(1, 2, 16, 32, max_positions=64), **kw)
    b = surrogate_loss(Architecture(1, 2, 16, 32, max_positions=64), **kw)
    c = surrogate_loss(Architecture(2, 4, 32, 64, max_positions=64), **kw)
    assert np.isfinite(a) and a == b
    assert c < a  # the teacher's own shape, sliced from itself, is closest to it


def test_surrogate_on_the_real_teacher():
    """The call the FPTAS makes: default teacher (all-MiniLM-L6-v2), real corpus; a tiny budget here."""
    kw = dict(steps=2, batch_size=4, max_length=32, eval_sentences=8, threads=2)
    small = surrogate_loss(Architecture(1, 4, 128, 256), **kw)
    large = surrogate_loss(Architecture(5, 12, 384, 1536), **kw)
    assert 0 < large < small
