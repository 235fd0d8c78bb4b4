"""Run directories load without running code: one checkpoint format (safetensors tensors + a JSON header) for
pretrain, finetune and Agora; a pickle planted where earlier versions read one (checkpoint.pt, Agora's state.pkl
and round-k/model.pkl, `bortengine export RUN`) is refused with a TrainingError that says what to do, and never
unpickled (the marker file its __reduce__ would create never appears)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from bortengine import BortEngineError
from bortengine.training import TrainingError, read_checkpoint, write_checkpoint


class Planted:
    """A pickle whose loading creates `marker`: what a run directory someone else made could hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def plant(tmp_path):
    marker = tmp_path / "MARKER-unpickled"
    payload = pickle.dumps(Planted(marker))
    pickle.loads(payload)                      # the payload is live: loading it does create the marker
    assert marker.exists()
    marker.unlink()

    def put(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        return path

    put.marker = marker
    return put


def refused(call, marker, match="older bortengine"):
    with pytest.raises(TrainingError, match=match) as info:
        call()
    assert not marker.exists(), "a planted pickle was loaded"
    return str(info.value)


def test_checkpoint_round_trip_and_kinds(tmp_path):
    path = write_checkpoint(tmp_path / "c.safetensors", "finetune", {"step": 3, "config": {"lr": 1e-3}},
                            {"model/w": np.arange(6, dtype=np.float32).reshape(2, 3),
                             "optimizer/0/step": np.array(3.0, np.float32)})
    saved = read_checkpoint(path, "finetune")
    assert saved.state == {"step": 3, "config": {"lr": 1e-3}} and saved.kind == "finetune"
    np.testing.assert_array_equal(saved.group("model")["w"], np.arange(6).reshape(2, 3))
    assert saved.group("optimizer")["0/step"].shape == ()
    with pytest.raises(TrainingError, match="not pretrain"):
        read_checkpoint(path, "pretrain")
    (tmp_path / "other.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(TrainingError, match="not a bortengine checkpoint|not a readable checkpoint"):
        read_checkpoint(tmp_path / "other.safetensors", "pretrain")


def test_a_pickle_in_place_of_the_new_checkpoint_is_not_loaded(tmp_path, plant):
    path = plant(tmp_path / "run" / "checkpoint.safetensors")
    refused(lambda: read_checkpoint(path, "pretrain"), plant.marker, match="not a readable checkpoint")


def test_pretrain_run_with_a_pickled_checkpoint_is_refused(tmp_path, plant, make_model):
    pytest.importorskip("torch")
    from bortengine.architecture import Architecture
    from bortengine.training import DistillConfig, pretrain

    teacher = make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=64, seed=3)
    run = tmp_path / "pretrain"
    plant(run / "checkpoint.pt")
    plant(run / "corpus-0-32-None.pt")         # the old corpus cache, read with torch.load too
    config = DistillConfig(student=Architecture(1, 2, 16, 32, max_positions=64), out_dir=str(run),
                           teacher=str(teacher), batch_size=4, max_length=32, max_steps=2, threads=1)
    message = refused(lambda: pretrain(config, progress=False), plant.marker)
    assert "checkpoint.pt" in message and "new out directory" in message


def test_finetune_run_with_a_pickled_checkpoint_is_refused(tmp_path, plant, make_model):
    pytest.importorskip("torch")
    from bortengine.training import FinetuneConfig, finetune

    model = make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       max_position_embeddings=128, seed=5)
    run = tmp_path / "finetune"
    plant(run / "checkpoint.pt")
    config = FinetuneConfig(model=str(model), out_dir=str(run), max_steps=2, train_limit=16, eval_limit=8, threads=1)
    refused(lambda: finetune(config, progress=False), plant.marker)


def test_agora_run_with_a_pickled_state_or_model_is_refused(tmp_path, plant):
    from bortengine.agora import AgoraConfig, GaussianNoise, evaluate_rounds, run_agora

    class Trainer:
        def fit(self, setting, points, labels, seed, dev=None):
            raise AssertionError("a refused run trains nothing")

    class Oracle:
        def predict(self, points):
            return (np.stack(points).sum(axis=1) > 0).astype(np.int64)

    x = [np.array([float(i) - 4.5, 0.0]) for i in range(10)]
    data = (x, Oracle().predict(x))
    for planted in ("state.pkl", "round-1/model.pkl"):
        run = tmp_path / planted.replace("/", "-")
        plant(run / planted)
        config = AgoraConfig(settings=[{"lr": 1.0}], out_dir=str(run))
        refused(lambda: run_agora(config, Trainer(), data, data, Oracle(), GaussianNoise(),
                                  save_model=lambda m, d: None, load_model=lambda d: None), plant.marker)
    refused(lambda: evaluate_rounds(tmp_path / "round-1-model.pkl", data, lambda d: None), plant.marker)


def test_export_of_a_pickled_run_is_refused(tmp_path, plant, capsys):
    pytest.importorskip("torch")
    from bortengine.cli import main
    from bortengine.export import export_run

    run = tmp_path / "old-run"
    plant(run / "checkpoint.pt")
    message = refused(lambda: export_run(run, tmp_path / "out"), plant.marker)
    assert "export" in message
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "older bortengine" in capsys.readouterr().err and not plant.marker.exists()
    assert issubclass(TrainingError, BortEngineError) and issubclass(TrainingError, ValueError)
