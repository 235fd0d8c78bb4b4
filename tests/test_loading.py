"""Model loading: config validation, the safetensors reader (formats, names, shards, dtypes) and every way a
model directory can be broken, each rejected with a ModelLoadError / UnsupportedModelError that says why."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import bortengine
from bortengine import ModelConfig, ModelLoadError, UnsupportedModelError
from bortengine.engine.weights import read_safetensors_header

TOKENS = np.array([[101, 7592, 2088, 999, 102], [101, 2023, 102, 0, 0]], dtype=np.int64)
MASK = (TOKENS != 0).astype(np.int64)


def model_copy(src: Path, dst: Path, tensors: dict | None = None, config: dict | None = None,
               metadata: dict | None = None) -> Path:
    """dst with src's files, optionally replacing model.safetensors' tensors and/or config.json."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("model.safetensors", "config.json") and not f.name.startswith("."):
            (dst / f.name).symlink_to(f)
    if tensors is None:
        shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    else:
        save_file(tensors, str(dst / "model.safetensors"), metadata=metadata or {"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(config or {})
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def outputs(path) -> np.ndarray:
    return bortengine.load(path)(TOKENS, MASK).last_hidden_state


@pytest.fixture(scope="module")
def weights(small_model) -> dict[str, np.ndarray]:
    return load_file(str(small_model / "model.safetensors"))


@pytest.fixture(scope="module")
def reference_output(small_model) -> np.ndarray:
    return outputs(small_model)


# ----------------------------------------------------------------------------------------------- config.json
BASE = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 100}


def test_config_defaults_are_bert_base():
    c = ModelConfig.from_dict({})
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (768, 12, 12, 3072)
    assert c.kind == "BertModel" and c.num_labels == 2 and c.effective_problem_type == "single_label_classification"


def test_config_classifier_labels():
    c = ModelConfig.from_dict({**BASE, "architectures": ["BertForSequenceClassification"],
                               "id2label": {"0": "neg", "1": "neu", "2": "pos"}})
    assert c.is_classifier and c.labels == ["neg", "neu", "pos"] and c.num_labels == 3
    assert ModelConfig.from_dict({**BASE, "id2label": {"0": "score"}}).effective_problem_type == "regression"
    with pytest.raises(ModelLoadError, match="id2label keys"):
        ModelConfig.from_dict({**BASE, "id2label": {"0": "a", "2": "b"}})
    with pytest.raises(ModelLoadError, match="problem_type"):
        ModelConfig.from_dict({**BASE, "problem_type": "ranking"})
    # a softmax over one logit: probability 1 for every text (transformers refuses the config); a bare encoder's
    # unused head fields are not judged
    one = {**BASE, "architectures": ["BertForSequenceClassification"], "id2label": {"0": "score"},
           "problem_type": "single_label_classification"}
    with pytest.raises(ModelLoadError, match="num_labels=1.*would be 1 for every text.*'regression'"):
        ModelConfig.from_dict(one)
    assert ModelConfig.from_dict({**one, "problem_type": "multi_label_classification"}).num_labels == 1
    assert ModelConfig.from_dict({**one, "architectures": ["BertModel"]}).kind == "BertModel"


@pytest.mark.parametrize("change, match", [
    ({"model_type": "albert"}, "model_type 'albert' is not supported.*shares weights across layers"),
    ({"model_type": "deberta-v2"}, "model_type 'deberta-v2'.*disentangled relative attention"),
    ({"model_type": "roberta"}, r"architectures \['BertModel'\] are not supported; for this roberta model.*"
                                r"\"architectures\": \[\"RobertaModel\"\]"),
    ({"model_type": "distilbert", "architectures": ["DistilBertModel"], "activation": "relu"},
     "activation 'relu' is not supported"),
    ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported.*exact erf GELU"),
    ({"hidden_act": "gelu_new"}, "hidden_act 'gelu_new'"),
    ({"hidden_act": "gelu_pytorch_tanh"}, "gelu_pytorch_tanh"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
    ({"architectures": ["BertForQuestionAnswering"]},
     r"BertForQuestionAnswering.*\"architectures\": \[\"BertModel\"\]"),
    ({"is_decoder": True}, "is_decoder"),
])
def test_config_unsupported(change, match):
    with pytest.raises(UnsupportedModelError, match=match):
        ModelConfig.from_dict({**BASE, **change}, source="config.json")


def test_gelu_python_is_the_exact_gelu(small_model, tmp_path):
    """transformers' "gelu_python" is the erf GELU written in Python: the same function as "gelu"."""
    from reference import hf_forward

    config = json.loads((small_model / "config.json").read_text())
    path = model_copy(small_model, tmp_path / "m", config={**config, "hidden_act": "gelu_python"})
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102]])
    ours = bortengine.load(path)(ids)["last_hidden_state"]
    assert np.array_equal(ours, bortengine.load(small_model)(ids)["last_hidden_state"])
    assert np.abs(ours - hf_forward(path, ids)["last_hidden_state"]).max() <= 1e-4


@pytest.mark.parametrize("change, match", [
    ({"hidden_size": 66}, "not a multiple of num_attention_heads=4"),
    ({"hidden_size": 0}, "hidden_size must be an integer >= 1"),
    ({"num_hidden_layers": "2"}, "num_hidden_layers must be an integer"),
    ({"vocab_size": 1.5}, "vocab_size"),
    ({"layer_norm_eps": -1}, "layer_norm_eps"),
    # float32 infinity in the kernels (every text got one embedding), and 0 (refused there, not as a load error)
    ({"layer_norm_eps": 1e300}, r"layer_norm_eps must be a positive number float32 holds .*got 1e\+300"),
    ({"layer_norm_eps": 1e-50}, r"layer_norm_eps must be a positive number float32 holds .*got 1e-50"),
    ({"id2label": {"0": "a"}, "num_labels": 2}, "num_labels=2 disagrees"),
])
def test_config_invalid(change, match):
    with pytest.raises(ModelLoadError, match=match) as info:
        ModelConfig.from_dict({**BASE, **change})
    assert not isinstance(info.value, UnsupportedModelError)


def test_real_other_model_configs_rejected(tmp_path, small_model):
    """Configs as transformers writes them for ALBERT and DeBERTa (families the engine does not run)."""
    from transformers import AlbertConfig, DebertaV2Config

    for cfg in (AlbertConfig(hidden_size=64, num_attention_heads=4), DebertaV2Config(hidden_size=64,
                                                                                     num_attention_heads=4)):
        d = tmp_path / cfg.model_type
        d.mkdir()
        cfg.save_pretrained(d)
        shutil.copy(small_model / "model.safetensors", d)
        with pytest.raises(UnsupportedModelError, match=f"model_type '{cfg.model_type}'"):
            bortengine.load(d)


@pytest.mark.parametrize("model_type", ["electra", "mpnet"])
def test_defaults_of_electra_and_mpnet_are_transformers(model_type):
    """A config.json that names only the model_type reads as transformers' config class does: its defaults."""
    import transformers

    theirs = transformers.AutoConfig.for_model(model_type)
    ours = ModelConfig.from_dict({"model_type": model_type})
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                  "max_position_embeddings", "layer_norm_eps", "hidden_act", "pad_token_id"):
        assert getattr(ours, field) == getattr(theirs, field), field
    if model_type == "electra":   # embeddings 128 wide, projected to 256
        assert (ours.embedding_size, ours.type_vocab_size, ours.projects_embeddings) == (theirs.embedding_size, 2, True)
        assert ours.relative_attention_num_buckets == 0 and ours.position_offset == 0 and ours.token_types
    else:                         # positions after the padding index 1, a 32-bucket bias, no token types
        assert ours.relative_attention_num_buckets == theirs.relative_attention_num_buckets == 32
        assert (ours.position_offset, ours.max_positions, ours.type_vocab_size) == (2, 510, 1)
        assert not ours.token_types and not ours.projects_embeddings


def test_missing_config_and_directory(tmp_path, small_model):
    with pytest.raises(ModelLoadError, match="does not exist"):
        bortengine.load(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="is a file"):
        bortengine.load(small_model / "config.json")
    (tmp_path / "model.safetensors").symlink_to(small_model / "model.safetensors")
    with pytest.raises(ModelLoadError, match="no config.json"):
        bortengine.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        bortengine.load(tmp_path)


# --------------------------------------------------------------------------------- config vs. weights checks
@pytest.mark.parametrize("change, match", [
    ({"hidden_size": 32, "num_attention_heads": 4}, r"config says hidden_size=32 but \S+ is \[30522, 64\]"),
    ({"intermediate_size": 128}, r"config says intermediate_size=128 but encoder.layer.0.intermediate.dense.weight "
                                 r"is \[96, 64\]"),
    ({"vocab_size": 1000}, r"config says vocab_size=1000 but embeddings.word_embeddings.weight is \[30522, 64\]"),
    ({"max_position_embeddings": 128}, "config says max_position_embeddings=128"),
    ({"type_vocab_size": 3}, "config says type_vocab_size=3"),
    ({"num_hidden_layers": 3}, r"config says num_hidden_layers=3 but \S+ holds tensors of 2 encoder layer"),
    ({"num_hidden_layers": 1}, r"does not use: encoder.layer.1.*num_hidden_layers=1"),
    ({"architectures": ["BertForSequenceClassification"]}, "missing 2 tensor.*classifier.weight"),
])
def test_config_disagrees_with_weights(small_model, tmp_path, change, match):
    path = model_copy(small_model, tmp_path / "m", config=change)
    with pytest.raises(ModelLoadError, match=match):
        bortengine.load(path)


def test_missing_tensors_listed(small_model, weights, tmp_path):
    kept = {k: v for k, v in weights.items()
            if k not in ("encoder.layer.1.output.dense.bias", "embeddings.LayerNorm.weight")}
    with pytest.raises(ModelLoadError, match=r"missing 2 tensor\(s\).*embeddings.LayerNorm.weight.*"
                                             r"encoder.layer.1.output.dense.bias"):
        bortengine.load(model_copy(small_model, tmp_path / "m", kept))


def test_integer_weight_rejected(small_model, weights, tmp_path):
    bad = dict(weights, **{"embeddings.LayerNorm.bias": np.zeros(64, np.int32)})
    with pytest.raises(ModelLoadError, match="embeddings.LayerNorm.bias has dtype I32"):
        bortengine.load(model_copy(small_model, tmp_path / "m", bad))


# ----------------------------------------------------------------------------------------- names and dtypes
def test_bert_prefix_legacy_names_and_ignored_tensors(small_model, weights, reference_output, tmp_path):
    renamed = {}
    for k, v in weights.items():
        k = "bert." + k
        if k.endswith("LayerNorm.weight"):
            k = k[: -len("weight")] + "gamma"
        elif k.endswith("LayerNorm.bias"):
            k = k[: -len("bias")] + "beta"
        renamed[k] = v
    renamed["bert.embeddings.position_ids"] = np.arange(512, dtype=np.int64)[None]
    renamed["cls.predictions.bias"] = np.zeros(30522, np.float32)
    out = outputs(model_copy(small_model, tmp_path / "m", renamed))
    np.testing.assert_array_equal(out, reference_output)


def test_duplicate_names_rejected(small_model, weights, tmp_path):
    dup = dict(weights, **{"bert.pooler.dense.bias": weights["pooler.dense.bias"]})
    with pytest.raises(ModelLoadError, match="are both pooler.dense.bias"):
        bortengine.load(model_copy(small_model, tmp_path / "m", dup))


def test_float64_weights_equal(small_model, weights, reference_output, tmp_path):
    f64 = {k: v.astype(np.float64) for k, v in weights.items()}
    np.testing.assert_array_equal(outputs(model_copy(small_model, tmp_path / "m", f64)), reference_output)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_weights_convert_exactly(small_model, weights, tmp_path, dtype):
    """A half-precision file gives exactly the outputs of a float32 file holding the same (rounded) values."""
    import torch
    from safetensors.torch import save_file as save_torch

    half = {k: torch.from_numpy(v).to(getattr(torch, dtype)) for k, v in weights.items()}
    model_copy(small_model, tmp_path / "half", {})
    save_torch(half, str(tmp_path / "half" / "model.safetensors"))
    rounded = {k: v.float().numpy() for k, v in half.items()}
    expected = outputs(model_copy(small_model, tmp_path / "rounded", rounded))
    np.testing.assert_array_equal(outputs(tmp_path / "half"), expected)


def test_half_weights_chunked_conversion(small_model, weights, tmp_path, monkeypatch):
    """Conversion in many small chunks (each tensor split at odd boundaries) gives the same values."""
    import bortengine.engine.weights as w

    half = {k: v.astype(np.float16) for k, v in weights.items()}
    path = model_copy(small_model, tmp_path / "m", half)
    whole = outputs(path)
    monkeypatch.setattr(w, "_CONVERT_CHUNK_BYTES", 998)
    np.testing.assert_array_equal(outputs(path), whole)


def test_sharded_checkpoint(small_model, weights, reference_output, tmp_path):
    path = model_copy(small_model, tmp_path / "m", {})
    (path / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(path / shard))
        weight_map.update({k: shard for k in keys})
    index = path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    np.testing.assert_array_equal(outputs(path), reference_output)

    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="lists shard model-00002-of-00002.safetensors.*does not exist"):
        bortengine.load(path)
    # a device or a folder in its place is said to be one (it "did not exist")
    (path / "model-00002-of-00002.safetensors").symlink_to("/dev/zero")
    with pytest.raises(ModelLoadError, match=r"model-00002-of-00002.safetensors is not a regular file"):
        bortengine.load(path)
    index.write_text(json.dumps({"weights": {}}))
    with pytest.raises(ModelLoadError, match="weight_map"):
        bortengine.load(path)


def test_pytorch_bin_only(small_model, tmp_path):
    path = model_copy(small_model, tmp_path / "m", {})
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"\x80\x02 pickle")
    with pytest.raises(ModelLoadError, match=r"pytorch_model.bin but no model.safetensors.*safe_serialization=True"):
        bortengine.load(path)
    (path / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match="has no weights"):
        bortengine.load(path)
    # a device or a folder where the file should be: said so (it was "has no weights: expected model.safetensors")
    (path / "model.safetensors").symlink_to("/dev/zero")
    with pytest.raises(ModelLoadError, match=r"model.safetensors is not a regular file .*must be a safetensors file"):
        bortengine.load(path)
    (path / "model.safetensors").unlink()
    (path / "model.safetensors").mkdir()
    with pytest.raises(ModelLoadError, match=r"model.safetensors is not a regular file"):
        bortengine.load(path)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json"])
def test_a_model_file_that_is_a_device_or_a_dangling_link_is_said_so(small_model, tmp_path, name):
    """/dev/zero (or a folder) in place of config.json said "no config.json", of tokenizer.json "has no tokenizer";
    a link whose target is gone (a Hugging Face cache snapshot without its blob) was a missing file."""
    path = model_copy(small_model, tmp_path / "m", None)
    for f in ("tokenizer.json", "vocab.txt"):
        if (path / f).exists() and f != name:
            (path / f).unlink()   # the one tested is what the tokenizer is read from
    if (path / name).exists() or (path / name).is_symlink():
        (path / name).unlink()
    (path / name).symlink_to("/dev/zero")
    with pytest.raises(ModelLoadError, match=rf"{name} is not a regular file"):
        bortengine.load(path)
    (path / name).unlink()
    (path / name).symlink_to(tmp_path / "gone")
    with pytest.raises(ModelLoadError, match=rf"{name} is a link to .*gone, which does not exist"):
        bortengine.load(path)


# -------------------------------------------------------------------------------- broken safetensors files
def _broken(small_model, tmp_path, data: bytes) -> Path:
    path = model_copy(small_model, tmp_path / "m", {})
    (path / "model.safetensors").write_bytes(data)
    return path


def test_truncated_file_names_file_and_tensor(small_model, tmp_path):
    data = (small_model / "model.safetensors").read_bytes()
    header = read_safetensors_header(small_model / "model.safetensors")
    last = max(header.values(), key=lambda e: e.offset)
    path = _broken(small_model, tmp_path, data[: last.offset + 10])
    with pytest.raises(ModelLoadError, match=rf"model.safetensors is truncated: tensor {last.name} ends"):
        bortengine.load(path)


@pytest.mark.parametrize("cut", [0, 5, 8, 100])
def test_truncated_inside_header(small_model, tmp_path, cut):
    data = (small_model / "model.safetensors").read_bytes()
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        bortengine.load(_broken(small_model, tmp_path, data[:cut]))


def _with_header(header: dict, data_size: int) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(data_size)


@pytest.mark.parametrize("header, data_size, match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 4, "truncated: tensor a ends at data byte 8"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, r"shape \[3\] of F32 needs 12 bytes"),
    ({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, 8, "unknown dtype 'Q7'"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "shape must be a list"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, "data_offsets must be"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "tensors a and b overlap"),
    ({"a": [1, 2]}, 0, "malformed header entry"),
    ({"a": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, 8, "unknown dtype"),
])
def test_corrupt_headers(small_model, tmp_path, header, data_size, match):
    path = _broken(small_model, tmp_path, _with_header(header, data_size))
    with pytest.raises(ModelLoadError, match=match):
        bortengine.load(path)


def test_garbage_files(small_model, tmp_path):
    with pytest.raises(ModelLoadError, match="header claims"):
        bortengine.load(_broken(small_model, tmp_path / "a", b"PK\x03\x04 this is a zip file, not safetensors"))
    whole = struct.pack("<Q", 40) + b"{}" + bytes(30)   # a header length of the whole file, its 8 bytes included
    with pytest.raises(ModelLoadError, match="header claims more bytes than the 32 that follow") as info:
        bortengine.load(_broken(small_model, tmp_path / "whole", whole))
    # the length is not said: a link to another file (an uploaded model's) would have its first 8 bytes told
    assert "40" not in str(info.value).replace(str(tmp_path), "")
    with pytest.raises(ModelLoadError, match="header is not JSON"):
        bortengine.load(_broken(small_model, tmp_path / "b", struct.pack("<Q", 4) + b"\xff\xfe{]" + bytes(16)))
    with pytest.raises(ModelLoadError, match="not a JSON object"):
        bortengine.load(_broken(small_model, tmp_path / "c", struct.pack("<Q", 2) + b"[]"))


def test_short_read_during_load(small_model, weights, tmp_path, monkeypatch):
    """A file that shrinks between header check and read (e.g. being overwritten) still gives a clear error."""
    path = model_copy(small_model, tmp_path / "m", dict(weights))
    from bortengine.engine.weights import BertWeights, Checkpoint

    checkpoint = Checkpoint.open(path)
    w = BertWeights(checkpoint, bortengine.ModelConfig.from_file(path))
    with open(path / "model.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ModelLoadError, match=r"truncated: tensor .* only \d+ could be read"):
        w.read("encoder.layer.1.output.dense.weight")
