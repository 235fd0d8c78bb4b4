"""`bortengine export RUN` for every kind of run directory: an Agora run exports its last round's best student
(made here by a tiny real Agora run, loaded back by bortengine.load), a folder of model directories (a pipeline
run's model/ and teacher/) is refused naming them, and so is an Agora run whose last round is missing."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

import bortengine
from bortengine.cli import main
from bortengine.export import export_run
from bortengine.training import TrainingError, run_directory
from test_cli import assert_error_line

TEXTS = ["a wonderful and moving film with great actors .", "a dull , boring and painfully long movie .",
         "the story is clever and the music beautiful .", "terrible acting and an awful script ."]


@pytest.fixture(scope="module")
def agora_run(make_model, minilm, tmp_path_factory):
    """The out directory of a two-round Agora run on texts: state.safetensors, round-1/, round-2/."""
    from bortengine.agora import (AgoraConfig, EngineLabeller, NearestNeighbourSwap, TextClassifierTrainer,
                                  load_engine_classifier, run_agora, save_classifier)
    from bortengine.training import load_teacher

    student = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    labeller = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                          head="classifier", num_labels=2, seed=7)
    out = tmp_path_factory.mktemp("agora") / "run"
    embeddings = np.random.default_rng(0).standard_normal((30522, 16)).astype(np.float32)
    config = AgoraConfig(settings=[{"lr": 1e-3, "epochs": 2, "batch_size": 4}, {"lr": 1e-4, "epochs": 1}],
                         out_dir=str(out), label_names=["negative", "positive"])
    result = run_agora(config, TextClassifierTrainer(load_teacher(str(student)), student, max_length=16, threads=1),
                       (TEXTS * 2, [1, 0, 1, 0] * 2), (TEXTS, [1, 0, 1, 0]), EngineLabeller(labeller),
                       NearestNeighbourSwap(embeddings, minilm, k=3), save_model=save_classifier,
                       load_model=load_engine_classifier)
    assert [r.round for r in result.rounds] == [1, 2]
    return out


def _report(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def test_an_agora_run_exports_its_last_rounds_student(agora_run, tmp_path, capsys):
    assert run_directory(agora_run) == agora_run / "round-2"
    assert main(["export", str(agora_run), "--out", str(tmp_path / "model")]) == 0
    report = _report(capsys)
    assert report["check_passed"] and report["model_directory"] == str(agora_run / "round-2")
    exported, last = bortengine.load(tmp_path / "model"), bortengine.load(agora_run / "round-2")
    assert exported.config.num_labels == 2
    np.testing.assert_array_equal(exported.classify(TEXTS).logits,
                                  last.classify(TEXTS).logits)
    assert not np.array_equal(exported.classify(TEXTS).logits,
                              bortengine.load(agora_run / "round-1").classify(TEXTS).logits)


def test_an_agora_run_without_its_last_round_names_the_rounds(agora_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(agora_run, run)
    shutil.rmtree(run / "round-2")
    with pytest.raises(TrainingError, match=f"ends with round 2, but {run / 'round-2'} holds no model; export one "
                                            f"of the model directories inside it: {run / 'round-1'}"):
        export_run(run, tmp_path / "out")
    code = main(["export", str(run), "--out", str(tmp_path / "out")])
    assert str(run / "round-1") in assert_error_line(capsys, "export", code)


def test_a_folder_of_model_directories_is_refused_naming_them(agora_run, make_model, tmp_path, capsys):
    """Every model directory inside is named, a sentence-transformers one that keeps its transformer in
    0_Transformer/ (a teacher as the user gave it) too."""
    from bortengine.testing import as_sentence_transformers

    pipeline = tmp_path / "pipeline"
    shutil.copytree(agora_run / "round-2", pipeline / "model")
    as_sentence_transformers(make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=48), pipeline / "teacher")
    assert not (pipeline / "teacher" / "config.json").exists()
    (pipeline / "pipeline.json").write_text("{}")
    # the student (model/) comes first and is the example, whatever sorts before it (distil/, agora/: an Agora run)
    shutil.copytree(agora_run / "round-1", pipeline / "distil")
    shutil.copytree(agora_run, pipeline / "agora")
    code = main(["export", str(pipeline), "--out", str(tmp_path / "out")])
    message = assert_error_line(capsys, "export", code)
    listed = f"{pipeline / 'model'}, {pipeline / 'agora'}, {pipeline / 'distil'}, {pipeline / 'teacher'}"
    assert (f"{pipeline} is not a run or model directory itself: it holds the model directories {listed}; export "
            f"one of them, e.g. bortengine export {pipeline / 'model'}") in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(TrainingError, match=f"inside it: {listed}"):
        export_run(pipeline, tmp_path / "out")
    assert main(["export", str(pipeline / "model"), "--out", str(tmp_path / "out")]) == 0
    assert _report(capsys)["check_passed"] and bortengine.load(tmp_path / "out").config.num_labels == 2
