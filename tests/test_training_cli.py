"""`bortengine pretrain / finetune / export` on tiny models; info and demo are untouched (tests/test_cli.py)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from bortengine.cli import main


@pytest.fixture(scope="module")
def teacher_dir(make_model):
    return make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=128, seed=7)


def _json_tail(out: str) -> dict:
    return json.loads(out[out.index("{"):])


def test_help_lists_training_commands(capsys):
    assert main([]) == 1
    out = capsys.readouterr().out
    for command in ("pretrain", "finetune", "export", "info", "demo"):
        assert command in out


def test_pretrain_then_export(tmp_path, teacher_dir, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--arch", "1,2,16,32", "--teacher", str(teacher_dir), "--out", str(run),
                 "--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--max-documents", "12",
                 "--threads", "1", "--no-progress", "--no-eval"]) == 0
    result = _json_tail(capsys.readouterr().out)
    assert result["steps"] == 2 and result["student"] == "⟨1, 2, 16, 32⟩"
    assert main(["export", str(run), "--out", str(tmp_path / "model")]) == 0
    report = _json_tail(capsys.readouterr().out)
    assert report["check_passed"] and report["max_abs_diff_hidden"] <= 1e-4
    assert (tmp_path / "model" / "1_Pooling" / "config.json").is_file()


def test_pretrain_needs_a_stop(tmp_path, capsys):
    assert main(["pretrain", "--arch", "1,2,16,32", "--out", str(tmp_path / "x")]) == 2
    assert "--max-steps" in capsys.readouterr().err


def test_finetune_surrogate_mode(tmp_path, teacher_dir, capsys):
    assert main(["finetune", "--model", str(teacher_dir), "--out", str(tmp_path / "ft"), "--surrogate-steps", "2",
                 "--train-limit", "16", "--batch-size", "8", "--threads", "1"]) == 0
    result = _json_tail(capsys.readouterr().out)
    assert result["steps"] == 2 and result["dev_loss"] > 0
    assert not (tmp_path / "ft").exists()
