"""`bortengine pretrain / finetune / export` on tiny models, and their errors: one line `bortengine <command>:
error: ...` (exit 2) for a bad path or option combination, argparse's usage for a malformed value (exit 2), a
line saying how to resume after Ctrl-C (exit 130). info and demo are in tests/test_cli.py."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from bortengine.cli import main
from test_cli import assert_error_line, assert_usage_error


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


@pytest.mark.parametrize("dtype, stored", [("int8", "I8"), ("bf16", "BF16")])
def test_export_dtype(tmp_path, teacher_dir, capsys, dtype, stored):
    """--dtype int8 / bf16: the float export checked against torch, then its linear weights stored as the engine
    runs them; the engine on the stored weights computes what it computed converting the float export at load."""
    import bortengine
    from bortengine.engine import read_safetensors_header

    out = tmp_path / "model"
    assert main(["export", str(teacher_dir), "--out", str(out), "--dtype", dtype]) == 0
    report = _json_tail(capsys.readouterr().out)
    assert report["check_passed"] and report[dtype]["max_abs_vs_at_load"] == 0.0
    entries = read_safetensors_header(out / "model.safetensors")
    assert entries["encoder.layer.1.intermediate.dense.weight"].dtype == stored
    assert bortengine.load(out, dtype=dtype).dtype == dtype


def test_pretrain_needs_a_stop(tmp_path, capsys):
    assert main(["pretrain", "--arch", "1,2,16,32", "--out", str(tmp_path / "x")]) == 2
    assert "--max-steps" in assert_error_line(capsys, "pretrain", 2)


@pytest.mark.parametrize("argv, says", [
    (["--arch", "4,7,1000,768"], "argument --arch: Architecture hidden=1000 must be a multiple of heads=7"),
    (["--arch", "4,8,256"], "argument --arch: an architecture is four integers"),
    (["--time-budget", "xyz"], "argument --time-budget: a duration is seconds"),
    (["--checkpoint-every=-2m"], "argument --checkpoint-every: a duration must be finite and not negative"),
    (["--batch-size", "0"], "argument --batch-size: expected a positive integer"),
    (["--lr=-1"], "argument --lr: expected a positive number"),
])
def test_pretrain_bad_arguments(tmp_path, capsys, argv, says):
    base = {"--arch": "1,2,16,32", "--out": str(tmp_path / "run"), "--max-steps": "1"}
    args = [x for k, v in base.items() if k not in argv for x in (k, v)] + argv
    assert says in assert_usage_error(capsys, ["pretrain", *args], "pretrain")


@pytest.mark.parametrize("teacher, says", [("missing", "does not exist"), ("empty", "holds no config.json"),
                                           ("file", "is a file"), ("broken", "is not valid JSON")])
def test_pretrain_bad_teacher(tmp_path, capsys, teacher, says):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    code = main(["pretrain", "--arch", "1,2,16,32", "--teacher", str(tmp_path / teacher), "--out",
                 str(tmp_path / "run"), "--max-steps", "1"])
    assert says in assert_error_line(capsys, "pretrain", code)
    assert not (tmp_path / "run").exists()


def test_pretrain_out_is_a_file(tmp_path, teacher_dir, capsys):
    (tmp_path / "run").write_text("")
    code = main(["pretrain", "--arch", "1,2,16,32", "--teacher", str(teacher_dir), "--out", str(tmp_path / "run"),
                 "--max-steps", "1"])
    assert "--out" in assert_error_line(capsys, "pretrain", code)


def test_pretrain_interrupt_says_how_to_resume(tmp_path, teacher_dir, capsys, monkeypatch):
    from bortengine import training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "pretrain", interrupted)
    run = tmp_path / "run"
    assert main(["pretrain", "--arch", "1,2,16,32", "--teacher", str(teacher_dir), "--out", str(run),
                 "--max-steps", "1"]) == 130
    assert capsys.readouterr().err.strip() == (f"bortengine pretrain: interrupted: run the same command again to "
                                               f"resume from the last checkpoint in {run}")


def test_export_of_an_interrupted_run_says_it_is_mid_run(tmp_path, teacher_dir, capsys, monkeypatch):
    """Ctrl-C after the first of 3 steps: the checkpoint kept is exported with a warning naming the step; once the
    same command has finished the run, its export has none."""
    import signal
    import warnings

    from bortengine.training import UnfinishedRunWarning
    from bortengine.training.loop import TrainingLoop

    take_step = TrainingLoop.take_step

    def ctrl_c_after_the_first(loop, *args, **kwargs):
        outcome = take_step(loop, *args, **kwargs)
        if loop.step == 1:
            signal.raise_signal(signal.SIGINT)      # held by the loop until the step's end, as a real Ctrl-C is
        return outcome

    run = tmp_path / "run"
    argv = ["pretrain", "--arch", "1,2,16,32", "--teacher", str(teacher_dir), "--out", str(run), "--max-steps", "3",
            "--batch-size", "4", "--max-length", "32", "--max-documents", "12", "--threads", "1", "--no-progress",
            "--no-eval"]
    monkeypatch.setattr(TrainingLoop, "take_step", ctrl_c_after_the_first)
    # as from a terminal: a runner started in the background (CI) hands SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(argv) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(TrainingLoop, "take_step", take_step)
    with pytest.warns(UnfinishedRunWarning, match=r"pretrain run interrupted at step 1, before its end"):
        assert main(["export", str(run), "--out", str(tmp_path / "early"), "--no-check"]) == 0
    capsys.readouterr()
    assert main(argv) == 0
    assert _json_tail(capsys.readouterr().out)["steps"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfinishedRunWarning)
        assert main(["export", str(run), "--out", str(tmp_path / "model"), "--no-check"]) == 0


@pytest.mark.parametrize("argv, says", [
    (["--train-limit", "0"], "argument --train-limit: expected a positive integer"),
    (["--time-budget", "1.5d"], "argument --time-budget: a duration is seconds"),
    (["--agora", "--student-arch", "4,8,250,512"], "argument --student-arch: Architecture hidden=250"),
    (["--agora", "--settings", "lr=fast"], "argument --settings: Θ is"),
    (["--task", "sst2"], "argument --task: invalid choice"),
])
def test_finetune_bad_arguments(tmp_path, capsys, argv, says):
    assert says in assert_usage_error(capsys, ["finetune", "--out", str(tmp_path / "ft"), *argv], "finetune")


def test_finetune_bad_directories(tmp_path, teacher_dir, capsys):
    (tmp_path / "empty").mkdir()
    out = ["--out", str(tmp_path / "ft")]
    code = main(["finetune", "--model", str(tmp_path / "empty"), "--surrogate-steps", "1", *out])
    assert "--model" in assert_error_line(capsys, "finetune", code)
    code = main(["finetune", "--model", str(teacher_dir), "--teacher", str(tmp_path / "missing"), *out])
    assert "--teacher" in assert_error_line(capsys, "finetune", code)
    assert "--labeller" in assert_error_line(capsys, "finetune", main(["finetune", "--agora", *out]))
    code = main(["finetune", "--agora", "--labeller", str(tmp_path / "missing"), "--student-arch", "none", *out])
    assert "--labeller" in assert_error_line(capsys, "finetune", code)
    assert not (tmp_path / "ft").exists()


def test_export_errors(tmp_path, teacher_dir, capsys):
    out = ["--out", str(tmp_path / "model")]
    assert "--dtype" in assert_usage_error(capsys, ["export", str(teacher_dir), *out, "--dtype", "int4"], "export")
    (tmp_path / "empty").mkdir()
    code = main(["export", str(tmp_path / "empty"), *out])
    assert "holds no checkpoint.safetensors or config.json" in assert_error_line(capsys, "export", code)
    (tmp_path / "empty" / "config.json").write_text("")
    assert "not valid JSON" in assert_error_line(capsys, "export", main(["export", str(tmp_path / "empty"), *out]))
    (tmp_path / "file").write_text("")
    code = main(["export", str(teacher_dir), "--out", str(tmp_path / "file")])
    assert "is a file" in assert_error_line(capsys, "export", code)
    code = main(["export", str(teacher_dir), "--out", str(teacher_dir)])
    assert "is the run directory itself" in assert_error_line(capsys, "export", code)


def test_finetune_surrogate_mode(tmp_path, teacher_dir, capsys):
    assert main(["finetune", "--model", str(teacher_dir), "--out", str(tmp_path / "ft"), "--surrogate-steps", "2",
                 "--train-limit", "16", "--batch-size", "8", "--threads", "1"]) == 0
    result = _json_tail(capsys.readouterr().out)
    assert result["steps"] == 2 and result["dev_loss"] > 0
    assert not (tmp_path / "ft").exists()


def test_finetune_agora_keeps_the_time_budget(tmp_path, teacher_dir, capsys, monkeypatch):
    """`finetune --agora --time-budget 3m` took 212 s: the budget never reached finetune_agora."""
    import bortengine.training as training

    given = {}

    def finetune_agora(**kwargs):
        given.update(kwargs)
        return {"rounds": []}

    monkeypatch.setattr(training, "finetune_agora", finetune_agora)
    base = ["finetune", "--agora", "--labeller", str(teacher_dir), "--out", str(tmp_path / "ag")]
    assert main([*base, "--time-budget", "3m"]) == 0
    assert 170 < given["time_budget"] <= 180     # counted from the command's start
    assert main([*base, "--time-budget", "3m", "--clock", "cpu"]) == 2
    assert "leave out --clock cpu" in capsys.readouterr().err
