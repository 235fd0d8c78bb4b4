"""Wall-clock time budgets hold for the whole call (loading, tokenising, training, the final evaluation, writing
the model), measured around pretrain and finetune on tiny models; the cpu clock stays a compute budget of the
training steps; the progress bar shows the time left of the budget; a resumed run spends what its earlier calls
left.

Budgets are a few seconds here, so beside the 5% the stages promise, each check allows an absolute slack (SLACK)
for one step or one timing of this shared machine going wrong by that much."""
from __future__ import annotations

import re
import time

import pytest

torch = pytest.importorskip("torch")

from bortengine.architecture import Architecture
from bortengine.training import read_checkpoint
from bortengine.training.classification import FinetuneConfig, finetune
from bortengine.training.distill import DistillConfig, pretrain

SLACK = 0.5        # seconds beyond budget x 1.05 a tiny run may take (one slow step or evaluation on a busy host)
DOCS = [("wiki", "The cat sat on the mat. It was a sunny day. Birds sang in the trees outside."),
        ("imdb", "A wonderful movie with a great cast! The story moved me. Highly recommended to everyone.")] * 100


@pytest.fixture(scope="module")
def teacher_dir(make_model):
    return make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=128, seed=11)


def _distill(tmp_path, teacher_dir, name, **kw):
    base = dict(student=Architecture(1, 4, 32, 64, max_positions=128), out_dir=str(tmp_path / name),
                teacher=str(teacher_dir), batch_size=4, max_length=32, warmup_steps=5, threads=1, clock="wall")
    base.update(kw)
    return DistillConfig(**base)


def _timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def _holds(seconds: float, budget: float) -> None:
    assert seconds <= budget * 1.05 + SLACK, f"{seconds:.2f} s for a {budget} s budget"
    assert seconds >= 0.7 * budget, f"{seconds:.2f} s: the budget of {budget} s was not used"


@pytest.mark.parametrize("evaluate", [False, True])
def test_pretrain_holds_a_wall_budget_over_the_whole_call(tmp_path, teacher_dir, evaluate):
    """The held-out evaluation (1,000 sentences through student and teacher) happens after training, inside it."""
    budget = 6.0
    result, seconds = _timed(lambda: pretrain(_distill(tmp_path, teacher_dir, "run", time_budget=budget),
                                              documents=DOCS, progress=False, evaluate=evaluate))
    _holds(seconds, budget)
    assert result["steps"] > 10 and ("heldout_mean_cosine" in result) == evaluate


def test_the_cpu_clock_counts_training_steps_alone(tmp_path, teacher_dir):
    budget = 1.0
    result = pretrain(_distill(tmp_path, teacher_dir, "cpu", time_budget=budget, clock="cpu"), documents=DOCS,
                      progress=False, evaluate=False)
    step = result["train_cpu_s"] / result["steps"]
    assert budget <= result["train_cpu_s"] <= budget + 3 * step + 0.2   # ends at the first step past the budget


def test_the_pretraining_bar_shows_the_budgets_total_and_time_left(tmp_path, teacher_dir, capsys):
    budget = 4.0
    pretrain(_distill(tmp_path, teacher_dir, "bar", time_budget=budget), documents=DOCS, evaluate=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distil")]
    first = re.search(r"\] (\d+)/(\d+) +(\d+)%  elapsed (\d+):(\d\d)  left ~(\d+):(\d\d)", lines[0])
    assert first, lines[0]
    done, total, _, em, es, lm, ls = map(int, first.groups())
    assert total == 1000 and done <= total
    assert abs((60 * em + es) + (60 * lm + ls) - budget) <= 1      # elapsed + left = the budget
    last = re.search(r"\] (\d+)/1000 100%  elapsed (\d+):(\d\d)  left ~0:0(\d)", lines[-1])
    assert last and int(last.group(1)) >= 990, lines[-1]
    assert abs(60 * int(last.group(2)) + int(last.group(3)) + int(last.group(4)) - budget) <= 1


def test_a_resumed_pretraining_spends_what_the_interrupted_call_left(tmp_path, teacher_dir):
    budget = 6.0
    config = _distill(tmp_path, teacher_dir, "resume", time_budget=budget, checkpoint_every=0.0)

    def interrupt(step, loss):
        if step == 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(config, documents=DOCS, progress=False, evaluate=False, on_step=interrupt)
    spent = read_checkpoint(tmp_path / "resume" / "checkpoint.safetensors", "pretrain").state["elapsed"]
    assert 0 < spent < budget
    result, seconds = _timed(lambda: pretrain(config, documents=DOCS, progress=False, evaluate=False))
    assert result["steps"] > 40
    assert seconds <= (budget - spent) * 1.05 + SLACK, (seconds, spent)
    state = read_checkpoint(tmp_path / "resume" / "checkpoint.safetensors", "pretrain").state
    assert budget - 1.0 <= state["elapsed"] <= budget      # the final checkpoint is written inside the budget


def test_finetune_holds_a_wall_budget_over_the_whole_call(tmp_path, teacher_dir):
    """Several epochs, each ending with a dev evaluation, then the final one and the test evaluation, all inside
    the budget."""
    budget = 6.0
    config = FinetuneConfig(model=str(teacher_dir), task="rt", out_dir=str(tmp_path / "ft"), batch_size=8,
                            epochs=1000, train_limit=64, eval_limit=200, threads=1, time_budget=budget,
                            clock="wall", lr=1e-4)
    (_, metrics), seconds = _timed(lambda: finetune(config, progress=False))
    _holds(seconds, budget)
    assert metrics["stopped_by"] == "time budget" and metrics["epochs"] > 2 and len(metrics["history"]) > 2
    assert metrics["test_examples"] == 200


def test_pretrain_command_holds_a_wall_budget(tmp_path, teacher_dir, capsys):
    from bortengine.cli import main

    budget = 5.0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(text for _, text in DOCS))
    code, seconds = _timed(lambda: main([
        "pretrain", "--arch", "1,4,32,64", "--teacher", str(teacher_dir), "--out", str(tmp_path / "run"),
        "--time-budget", f"{budget}s", "--clock", "wall", "--batch-size", "4", "--max-length", "32", "--threads", "1",
        "--corpus", str(corpus), "--corpus-mode", "replace", "--no-progress"]))
    assert code == 0
    _holds(seconds, budget)
    assert '"steps"' in capsys.readouterr().out
