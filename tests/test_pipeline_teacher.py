"""The teachers a user gives `bortengine pipeline` and training, read where bortengine.load reads them and kept as
given:

- a sentence-transformers directory in the layout SentenceTransformer.save writes (the transformer in 0_Transformer/
  named by modules.json, 1_Pooling/, 2_Normalize/): fine-tuned, its tokenizer, truncation and Normalize carried to
  OUT/teacher; as a classifier of the task's labels, kept as it is and read by every stage after it;
- a classifier of the task's labels in another order: copied whole, only its classes reordered;
- a model trained for another task (a token classifier): refused before the run directory is touched, saying what
  to give instead;
- training.run_model of a model directory: the class its config.json names (a token classifier keeps its head, a
  masked-LM model stays one, a BertModel without a pooler gets none).

Small random teachers (bortengine.testing), the training stages capped at a few steps, as in test_pipeline.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("pyarrow")

import bortengine  # noqa: E402
from bortengine import ModelLoadError  # noqa: E402
from bortengine.cli import main  # noqa: E402
from bortengine.pipeline import PipelineError, run_pipeline  # noqa: E402
from bortengine.pipeline import run as pipeline_run  # noqa: E402
from bortengine.testing import as_sentence_transformers, make_random_bert  # noqa: E402
from test_cli import assert_error_line  # noqa: E402
from test_pipeline import LABELS, _config, data  # noqa: E402,F401  (data: the module's fixture)

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=128)
TEXTS = ["a gripping, beautifully acted film", "dull", "an ordinary thriller that never surprises"]


@pytest.fixture(autouse=True)
def private_caches(tmp_path_factory, monkeypatch):
    """Profiles and surrogate losses of these runs in this module's own folders (one profile for all its runs)."""
    caches = tmp_path_factory.getbasetemp() / "pipeline-teacher-caches"
    monkeypatch.setenv("BORTENGINE_PROFILE_DIR", str(caches / "profiles"))
    monkeypatch.setenv("BORTENGINE_SURROGATE_CACHE", str(caches / "surrogates"))


def _run_until(stage: str, config, monkeypatch) -> dict:
    """run_pipeline stopped at `stage` (as a kill there would stop it); the stages done before it."""
    def stopped(ctx, seconds):
        raise KeyboardInterrupt(f"stopped at {stage}")

    monkeypatch.setitem(pipeline_run.STAGE_FUNCTIONS, stage, stopped)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config)
    return json.loads((Path(config.out) / "pipeline.json").read_text())["stages"]


def _classifier(path: Path, labels: dict[str, str]) -> Path:
    """A random BertForSequenceClassification whose id2label is `labels`."""
    make_random_bert(path, **SMALL, head="classifier", num_labels=len(labels))
    config = json.loads((path / "config.json").read_text())
    config["id2label"], config["label2id"] = labels, {v: int(k) for k, v in labels.items()}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_a_sentence_transformers_teacher_in_its_0_transformer_folder_is_fine_tuned_and_distilled(
        data, tmp_path, monkeypatch):
    """Was refused at the first stage: "--teacher ...: no config.json there"."""
    encoder = make_random_bert(tmp_path / "bert", **SMALL)
    teacher = as_sentence_transformers(encoder, tmp_path / "st", normalize=True, max_seq_length=48)
    assert not (teacher / "config.json").exists()
    out = tmp_path / "run"
    done = _run_until("finetune", _config(out, data, teacher), monkeypatch)
    assert list(done) == ["profile", "teacher", "extract", "distil"]
    assert done["profile"]["result"]["teacher_architecture"]["hidden"] == 64
    assert done["teacher"]["result"]["fine_tuned"] is True
    # the task's length is measured with the teacher's tokenizer, capped at its max_seq_length
    assert done["teacher"]["result"]["max_length"] <= 48
    fine_tuned, source = bortengine.load(out / "teacher"), bortengine.load(teacher)
    assert fine_tuned.labels == list(LABELS)
    np.testing.assert_array_equal(fine_tuned.tokenize(TEXTS)["input_ids"],
                                  source.tokenize(TEXTS, max_length=fine_tuned.max_length)["input_ids"])
    assert fine_tuned.pooling.normalize        # its modules.json's Normalize carried over
    assert bortengine.load(out / done["distil"]["result"]["student_dir"]).config.num_hidden_layers == 1


def test_a_sentence_transformers_classifier_of_the_task_is_kept_as_given_and_read_by_every_stage(
        data, tmp_path, monkeypatch):
    """OUT/teacher is then the sentence-transformers directory itself, which extraction, distillation and the
    student's fine-tuning (texts near the training texts, labelled by the teacher) all read."""
    labels = dict(enumerate(LABELS))
    source = _classifier(tmp_path / "clf", {str(k): v for k, v in labels.items()})
    teacher = as_sentence_transformers(source, tmp_path / "st", max_seq_length=40)
    out = tmp_path / "run"
    done = _run_until("evaluate", _config(out, data, teacher), monkeypatch)
    assert done["teacher"]["result"]["fine_tuned"] is False
    assert (out / "teacher" / "0_Transformer" / "model.safetensors").read_bytes() == \
        (teacher / "0_Transformer" / "model.safetensors").read_bytes()
    assert done["finetune"]["result"]["augmented_examples"] > 0
    student = bortengine.load(out / "model")
    assert student.labels == list(LABELS) and student.max_length == 40    # trained and served at the teacher's
    np.testing.assert_array_equal(student.tokenize(TEXTS)["input_ids"], bortengine.load(teacher).tokenize(TEXTS)
                                  ["input_ids"])


def test_a_classifier_of_the_task_given_as_a_plain_directory_is_kept_and_the_student_gets_the_tasks_length(
        data, tmp_path, monkeypatch):
    """Its own truncation is its positions' (128 here, 512 for a BERT-base): the student was distilled, fine-tuned
    and exported at that, not at the task's length (the tokens that hold 95% of the training texts) that the
    extraction timed it at and a fine-tuned teacher is trained at."""
    from bortengine.pipeline.stages import RunContext
    from bortengine.training import load_task, task_max_length

    source = _classifier(tmp_path / "clf", {str(k): v for k, v in enumerate(LABELS)})
    out = tmp_path / "run"
    config = _config(out, data, source)
    done = _run_until("evaluate", config, monkeypatch)
    task_length = task_max_length(load_task(RunContext(config, {}).data_spec), source)
    teacher = bortengine.load(out / "teacher")
    assert done["teacher"]["result"] == {**done["teacher"]["result"], "fine_tuned": False, "max_length": task_length}
    assert task_length < teacher.max_length == bortengine.load(source).max_length == 128   # the teacher as given
    assert sorted(p.name for p in (out / "teacher").iterdir()) == sorted(p.name for p in source.iterdir())
    for path in source.iterdir():   # (config.json gains the int8 calibration's record)
        if path.name != "config.json":
            assert (out / "teacher" / path.name).read_bytes() == path.read_bytes(), path.name
    assert bortengine.load(out / "model").max_length == task_length      # fine-tuned and exported at it


def test_a_sentence_transformers_classifier_of_the_task_labels_in_another_order_is_copied_with_only_its_classes_reordered(
        data, tmp_path, monkeypatch):
    """Was refused at the first stage in this layout; a classifier kept in one directory was rebuilt through
    transformers (run_model, write_hf_directory) and lost its pooling (CLS -> mean)."""
    source = _classifier(tmp_path / "clf", {"0": "great", "1": "fine", "2": "bad"})   # the task sorts bad, fine, great
    teacher = as_sentence_transformers(source, tmp_path / "st", pooling="cls", max_seq_length=40)
    out = tmp_path / "run"
    done = _run_until("extract", _config(out, data, teacher), monkeypatch)
    assert done["teacher"]["result"]["fine_tuned"] is False
    before, after = bortengine.load(teacher), bortengine.load(out / "teacher")
    assert after.labels == list(LABELS) and after.max_length == before.max_length == 40
    assert after.pooling == before.pooling and after.pooling.modes == ("cls",)
    np.testing.assert_allclose(after.classify(TEXTS).logits, before.classify(TEXTS).logits[:, [2, 1, 0]], atol=1e-6)
    np.testing.assert_array_equal(after.encode(TEXTS), before.encode(TEXTS))
    for name in ("modules.json", "1_Pooling/config.json", "0_Transformer/sentence_bert_config.json",
                 "0_Transformer/tokenizer.json"):
        assert (out / "teacher" / name).read_bytes() == (teacher / name).read_bytes(), name


def test_a_classifier_of_other_classes_is_fine_tuned_with_a_new_head_and_the_run_says_so(data, tmp_path,
                                                                                          monkeypatch, capsys):
    """Its head was replaced without a word: a user who meant its classes did not learn that the names differ."""
    source = _classifier(tmp_path / "clf", {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"})
    done = _run_until("extract", _config(tmp_path / "run", data, source), monkeypatch)
    teacher = done["teacher"]["result"]
    assert teacher["fine_tuned"] is True
    assert "'LABEL_0', 'LABEL_1', 'LABEL_2', not the task's 'bad', 'fine', 'great'" in teacher["note"]
    assert "a new classification head" in teacher["note"] and teacher["note"] in capsys.readouterr().err


def test_a_run_continued_with_a_changed_teacher_is_refused_until_it_is_restored(data, tmp_path, monkeypatch):
    """Went on silently with OUT/teacher copied from the old teacher, the report naming the new one; a changed data
    file was refused already."""
    source = _classifier(tmp_path / "clf", {str(k): v for k, v in enumerate(LABELS)})
    weights = source / "model.safetensors"
    original = weights.read_bytes()
    out = tmp_path / "run"
    config = _config(out, data, source)
    extract = pipeline_run.STAGE_FUNCTIONS["extract"]
    assert list(_run_until("extract", config, monkeypatch)) == ["profile", "teacher"]
    changed = bytearray(original)
    changed[-1] ^= 1          # one bit of the last weight
    weights.write_bytes(bytes(changed))
    with pytest.raises(PipelineError, match="is a run of another teacher") as refused:
        run_pipeline(config)
    assert "restore the teacher the run began with" in str(refused.value)
    weights.write_bytes(original)
    monkeypatch.setitem(pipeline_run.STAGE_FUNCTIONS, "extract", extract)
    assert list(_run_until("distil", config, monkeypatch)) == ["profile", "teacher", "extract"]


def test_a_token_classifier_teacher_is_refused_before_the_run_directory_is_touched(data, make_encoder, tmp_path):
    """Was fine-tuned from its encoder with its per-token head dropped, without a word."""
    tagger = make_encoder(model_type="bert", head="token", labels=("O", "B-PER", "I-PER"), hidden_size=32,
                          num_attention_heads=2, intermediate_size=48, num_hidden_layers=1, max_positions=64)
    out = tmp_path / "run"
    with pytest.raises(PipelineError, match="BertForTokenClassification") as refused:
        run_pipeline(_config(out, data, tagger))
    assert "drop the head" in str(refused.value) and "BertModel.from_pretrained" in str(refused.value)
    assert not out.exists()


def test_the_command_line_takes_a_sentence_transformers_teacher_and_refuses_one_without_its_transformer(
        data, tmp_path, capsys):
    """--teacher was refused as holding no config.json; one whose 0_Transformer/ is missing is refused naming it."""
    teacher = as_sentence_transformers(make_random_bert(tmp_path / "bert", **SMALL), tmp_path / "st")
    broken = tmp_path / "broken"
    shutil.copytree(teacher, broken, ignore=shutil.ignore_patterns("0_Transformer"))
    common = ["--train", str(data), "--text-column", "review", "--label-column", "grade", "--no-progress"]
    capsys.readouterr()      # transformers' progress bars of building the teacher
    message = assert_error_line(capsys, "pipeline", main(["pipeline", "--teacher", str(broken), *common,
                                                          "--out", str(tmp_path / "run")]))
    assert "0_Transformer" in message and "modules.json" in message
    assert not (tmp_path / "run").exists()
    bad_options = ["--budget", "0s"]      # accepted teacher: the next check (the budget) is what fails
    message = assert_error_line(capsys, "pipeline", main(["pipeline", "--teacher", str(teacher), *common,
                                                          *bad_options, "--out", str(tmp_path / "run")]))
    assert "budget" in message and "teacher" not in message


# -- training.run_model of a model directory: the class its config.json names ------------------------------------
def _same_state(model, directory: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(directory / "model.safetensors"))
    state = model.state_dict()
    assert set(saved) <= set(state), set(saved) - set(state)
    for name, tensor in saved.items():
        np.testing.assert_array_equal(state[name].numpy(), tensor.numpy(), err_msg=name)


def test_run_model_keeps_a_token_classifiers_head(make_encoder, tmp_path):
    """Was read as a BertModel (the head dropped, a random pooler added)."""
    from transformers import BertForTokenClassification

    from bortengine.training import run_model, write_hf_directory

    tagger = make_encoder(model_type="bert", head="token", labels=("O", "B-PER", "I-PER"), hidden_size=32,
                          num_attention_heads=2, intermediate_size=48, num_hidden_layers=1, max_positions=64)
    model, tokenizer_dir = run_model(tagger)
    assert isinstance(model, BertForTokenClassification) and model.bert.pooler is None
    _same_state(model, tagger)
    write_hf_directory(model, tmp_path / "out", tokenizer_dir)
    got, want = bortengine.load(tmp_path / "out"), bortengine.load(tagger)
    assert got.config.labels == want.config.labels == ["O", "B-PER", "I-PER"]
    ids = want.tokenize(TEXTS)
    np.testing.assert_allclose(got(ids).logits, want(ids).logits, atol=1e-5)


def test_run_model_gives_no_pooler_to_a_checkpoint_without_one_and_keeps_a_masked_lm_model(tmp_path):
    """Were given a random pooler, and a BertForMaskedLM was read as BertModel (its LM head dropped)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from bortengine.training import run_model

    plain = make_random_bert(tmp_path / "plain", **SMALL, head="none")
    model, _ = run_model(plain)
    assert model.pooler is None
    _same_state(model, plain)

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    mlm = tmp_path / "mlm"
    BertForMaskedLM(config).save_pretrained(mlm, safe_serialization=True)
    model, _ = run_model(mlm)
    assert isinstance(model, BertForMaskedLM)
    _same_state(model, mlm)


def test_relabel_classifier_refuses_other_classes(tmp_path):
    from bortengine.training import TrainingError, relabel_classifier

    source = _classifier(tmp_path / "clf", {"0": "bad", "1": "fine", "2": "great"})
    with pytest.raises(TrainingError, match=r"not \['bad', 'good', 'great'\] in another order"):
        relabel_classifier(source, ["bad", "good", "great"])


@pytest.mark.parametrize("pooling, normalize", [("cls", True), ("mean", False)])
def test_a_student_written_from_a_teacher_pools_as_the_teacher_does(tmp_path, pooling, normalize):
    """write_hf_directory (distillation's and fine-tuning's students, the fine-tuned teacher) wrote mean pooling
    whatever the teacher had: a student of a CLS-pooling embedding model then encoded by mean."""
    from bortengine.architecture import Architecture
    from bortengine.training import build_model, write_hf_directory

    encoder = make_random_bert(tmp_path / "bert", **SMALL)
    teacher = as_sentence_transformers(encoder, tmp_path / "st", pooling=pooling, normalize=normalize)
    student = write_hf_directory(build_model(Architecture(1, 2, 32, 64), seed=0), tmp_path / "student", teacher)
    got = bortengine.load(student)
    assert got.pooling == bortengine.load(teacher).pooling
    assert got.pooling.modes == (pooling,) and got.pooling.normalize is normalize
    assert json.loads((student / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 32
    hidden = got(got.tokenize(TEXTS)).last_hidden_state
    if pooling == "cls":
        np.testing.assert_allclose(got.encode(TEXTS), hidden[:, 0] / np.linalg.norm(hidden[:, 0], axis=1,
                                                                                    keepdims=True), atol=1e-5)


def test_a_teacher_dense_the_engine_cannot_run_does_not_stop_its_student(tmp_path):
    """A student takes the teacher's pooling and Normalize, not its Dense (of the teacher's width): writing the
    student reads no Dense, so a teacher whose Dense the engine refuses (pickled weights only) still gives one."""
    from bortengine.architecture import Architecture
    from bortengine.training import build_model, write_hf_directory

    teacher = as_sentence_transformers(make_random_bert(tmp_path / "bert", **SMALL), tmp_path / "st", normalize=True)
    modules = json.loads((teacher / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (teacher / "modules.json").write_text(json.dumps(modules))
    (teacher / "2_Dense").mkdir()
    (teacher / "2_Dense" / "config.json").write_text(json.dumps({"in_features": SMALL["hidden_size"],
                                                                 "out_features": 8}))
    (teacher / "2_Dense" / "pytorch_model.bin").write_bytes(b"a pickle the engine does not read")
    with pytest.raises(ModelLoadError, match="pytorch_model.bin but no model.safetensors"):
        bortengine.load(teacher)

    student = write_hf_directory(build_model(Architecture(1, 2, 32, 64), seed=0), tmp_path / "student", teacher)
    got = bortengine.load(student)
    assert got.pooling.modes == ("mean",) and got.pooling.normalize and not got.pooling.dense
    assert got.encode(TEXTS).shape == (len(TEXTS), 32)
