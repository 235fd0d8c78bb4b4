"""Pre-converted int8 and bf16 checkpoints (bortengine.export.quantize_checkpoint / bf16_checkpoint, what
`bortengine export --dtype int8|bf16` runs) of every family the engine loads: BERT, RoBERTa, XLM-RoBERTa,
CamemBERT, DistilBERT, ELECTRA (with its embeddings_project) and MPNet, bare encoders and heads.

Random-weight models built with transformers (bortengine.testing.make_random_encoder). What is converted is checked
against transformers' own module tree, not the engine's names: the nn.Linear weights inside the encoder's layer list,
6 per layer in every family; every other tensor stays byte for byte. The engine on a converted checkpoint computes
exactly (bit for bit) what it computes converting the float checkpoint at load: the conversion is the same function
(_core.quantize_weights, _core.to_bf16) on the same float32 values. A model the engine cannot load is refused with
the engine's reason. `bortengine export DIR --out OUT --dtype int8|bf16` does all of it on a model directory of each
family: checked against transformers, then converted, then checked against conversion at load.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import bortengine
from bortengine import ModelLoadError, UnsupportedModelError
from bortengine.cli import main
from bortengine.engine import SCALE_SUFFIX, read_safetensors_header
from bortengine.export import bf16_checkpoint, quantize_checkpoint
from reference import hf_auto_model
from test_cli import assert_error_line

LINEAR_PER_LAYER = 6   # query, key, value, attention output, FFN in, FFN out
MODELS = {
    "bert": dict(model_type="bert", head="model"),
    "bert-classifier": dict(model_type="bert", head="sequence"),
    "roberta-classifier": dict(model_type="roberta", head="sequence", labels=("a", "b", "c")),
    "xlm-roberta": dict(model_type="xlm-roberta", head="model", pooler=False),
    "camembert-token": dict(model_type="camembert", head="token", labels=("O", "B-X", "I-X")),
    "distilbert": dict(model_type="distilbert", head="model"),
    "distilbert-classifier": dict(model_type="distilbert", head="sequence"),
    "electra": dict(model_type="electra", head="model", embedding_size=24),   # embeddings_project stays float
    "electra-classifier": dict(model_type="electra", head="sequence", embedding_size=24),
    "mpnet": dict(model_type="mpnet", head="model"),
    "mpnet-classifier": dict(model_type="mpnet", head="sequence"),
}
CONVERSIONS = {"int8": (quantize_checkpoint, "quantized", "I8"), "bf16": (bf16_checkpoint, "converted", "BF16")}
# The int8 engine runs each layer's FFN out (its last linear) on the bf16 kernels: an int8 export stores it as BF16.
FFN_OUT_STORED = {"int8": "BF16", "bf16": "BF16"}


@pytest.fixture(scope="module", params=list(MODELS))
def family_model(request, make_encoder):
    return make_encoder(num_hidden_layers=3, **MODELS[request.param])


def _converted_copy(src, dst, dtype):
    shutil.copytree(src, dst)
    return dst, CONVERSIONS[dtype][0](dst)


def _layer_linear_weights(path) -> set[str]:
    """The checkpoint names of the nn.Linear weights inside the encoder's layers, from transformers' module tree:
    the first ModuleList of each of these families is its layers (encoder.layer, DistilBERT's transformer.layer)."""
    import torch

    model = hf_auto_model(str(path))
    layers = next(m for _, m in model.named_modules() if isinstance(m, torch.nn.ModuleList))
    inside = {id(m) for m in layers.modules()}
    return {f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and id(m) in inside}


def _ffn_out_weights(path) -> set[str]:
    """The checkpoint names of each layer's FFN out weight: its last nn.Linear in transformers' module tree
    (BERT's output.dense, DistilBERT's ffn.lin2, MPNet's output.dense)."""
    import torch

    model = hf_auto_model(str(path))
    layers_name, layers = next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList))
    last = {}
    for name, m in layers.named_modules():
        if isinstance(m, torch.nn.Linear):
            last[name.split(".", 1)[0]] = name
    return {f"{layers_name}.{name}.weight" for name in last.values()}


def _stored(dtype, path) -> dict[str, set[str]]:
    """Stored dtype -> the layers' linear weights a conversion to dtype stores in it; and "scaled": those with an
    int8 scale."""
    linear, ffn_out = _layer_linear_weights(path), _ffn_out_weights(path)
    assert len(ffn_out) * LINEAR_PER_LAYER == len(linear) and ffn_out <= linear
    stored = CONVERSIONS[dtype][2]
    out = {stored: linear - ffn_out}
    out.setdefault(FFN_OUT_STORED[dtype], set()).update(ffn_out)
    out["scaled"] = linear - ffn_out if dtype == "int8" else set()
    return out


@pytest.mark.parametrize("dtype", list(CONVERSIONS))
def test_converts_exactly_the_layers_linear_weights(family_model, tmp_path, dtype):
    """layers x 6 tensors converted, the nn.Linear weights of the layers and nothing else; their int8 scales
    added; every other tensor stored as it was."""
    _, counted, stored = CONVERSIONS[dtype]
    out, report = _converted_copy(family_model, tmp_path / "model", dtype)
    config = json.loads((family_model / "config.json").read_text())
    layers = config.get("num_hidden_layers", config.get("n_layers"))
    linear = _layer_linear_weights(family_model)
    assert len(linear) == layers * LINEAR_PER_LAYER
    assert report[counted] == layers * LINEAR_PER_LAYER
    assert report["family"] == bortengine.load(family_model).config.family.name
    assert report["bytes_after"] < report["bytes_before"]

    before = read_safetensors_header(family_model / "model.safetensors")
    after = read_safetensors_header(out / "model.safetensors")
    want = _stored(dtype, family_model)
    scales = {n + SCALE_SUFFIX for n in want["scaled"]}
    assert set(after) == set(before) | scales
    for stored_dtype in ("I8", "BF16"):
        assert {n for n, e in after.items() if e.dtype == stored_dtype} == want.get(stored_dtype, set())
    assert {after[n].dtype for n in scales} <= {"F32"}
    for name in set(before) - linear:
        np.testing.assert_array_equal(after[name].read_stored(), before[name].read_stored(), err_msg=name)
    assert json.loads((out / "config.json").read_text())["bortengine_quantization"]["dtype"] == dtype


@pytest.mark.parametrize("dtype", list(CONVERSIONS))
def test_converted_checkpoint_computes_what_conversion_at_load_computes(family_model, tmp_path, dtype):
    """load(converted, dtype) == load(float, dtype), bit for bit, on every output the model has; and the converted
    checkpoint still loads as float32 (dequantized or widened) near the float model."""
    out, _ = _converted_copy(family_model, tmp_path / "model", dtype)
    at_load = bortengine.load(family_model, dtype=dtype)
    converted = bortengine.load(out, dtype=dtype)
    ids = np.random.default_rng(0).integers(5, at_load.config.vocab_size, size=(3, 17))
    mask = (np.arange(17)[None, :] < np.array([17, 4, 11])[:, None]).astype(np.int64)
    want, got = at_load(ids, mask), converted(ids, mask)
    for key in ("last_hidden_state", "pooler_output", "logits"):
        if getattr(want, key) is None:
            assert getattr(got, key) is None, key
        else:
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)

    as_float, float_model = bortengine.load(out)(ids, mask), bortengine.load(family_model)(ids, mask)
    rows = mask.astype(bool)
    a, b = as_float.last_hidden_state[rows], float_model.last_hidden_state[rows]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99, cos.min()


def test_converting_again_changes_nothing(make_encoder, tmp_path):
    src = make_encoder(**MODELS["distilbert"], num_hidden_layers=3)
    out, _ = _converted_copy(src, tmp_path / "model", "int8")
    data = (out / "model.safetensors").read_bytes()
    report = quantize_checkpoint(out)
    assert report["quantized"] == 0 and report["family"] == "distilbert"
    assert (out / "model.safetensors").read_bytes() == data


def test_int8_from_a_bf16_checkpoint(make_encoder, tmp_path):
    """A BF16 checkpoint's weights are floats to the int8 engine (widened exactly, then quantized): quantizing them
    stores what load(dtype="int8") computes from them."""
    src = make_encoder(**MODELS["mpnet"], num_hidden_layers=3)
    bf16, _ = _converted_copy(src, tmp_path / "bf16", "bf16")
    int8, report = _converted_copy(bf16, tmp_path / "int8", "int8")
    assert report["quantized"] == 3 * (LINEAR_PER_LAYER - 1)  # FFN out is BF16 already, as the int8 engine runs it
    ids = np.random.default_rng(1).integers(5, 300, size=(2, 9))
    np.testing.assert_array_equal(bortengine.load(int8, dtype="int8")(ids).last_hidden_state,
                                  bortengine.load(bf16, dtype="int8")(ids).last_hidden_state)


def test_bf16_of_an_int8_checkpoint_is_refused(make_encoder, tmp_path):
    src = make_encoder(**MODELS["electra"], num_hidden_layers=3)
    out, _ = _converted_copy(src, tmp_path / "model", "int8")
    data = (out / "model.safetensors").read_bytes()
    with pytest.raises(ModelLoadError, match=r"already stores its linear weights as I8 .*convert the float checkpoint instead"):
        bf16_checkpoint(out)
    assert (out / "model.safetensors").read_bytes() == data


@pytest.mark.parametrize("dtype", list(CONVERSIONS))
def test_a_model_the_engine_cannot_load_is_refused(make_encoder, tmp_path, dtype):
    """Another family (ALBERT), a config of another model, no config.json: the engine's reason, said as the
    conversion's, and the file untouched."""
    src = make_encoder(**MODELS["distilbert"], num_hidden_layers=3)
    convert = CONVERSIONS[dtype][0]
    out = shutil.copytree(src, tmp_path / "model")
    data = (out / "model.safetensors").read_bytes()
    config = json.loads((out / "config.json").read_text())

    (out / "config.json").write_text(json.dumps({**config, "model_type": "albert"}))
    with pytest.raises(UnsupportedModelError, match=rf"cannot convert .* to {dtype}: .*'albert' is not supported"):
        convert(out)
    (out / "config.json").write_text(json.dumps({**config, "n_layers": 2}))
    with pytest.raises(ModelLoadError, match=r"cannot convert .*more layers"):
        convert(out)
    (out / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"cannot convert .*no config\.json"):
        convert(out)
    assert (out / "model.safetensors").read_bytes() == data


# ------------------------------------------------------------------------------------- bortengine export --dtype
def _printed_report(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


@pytest.mark.parametrize("dtype", list(CONVERSIONS))
def test_cli_exports_every_family(family_model, tmp_path, capsys, dtype):
    """The float export checked against transformers (BERT re-saved through training's classes, the others copied),
    then the layers' linear weights stored in dtype, and the report says how many and of which family."""
    _, counted, stored = CONVERSIONS[dtype]
    out = tmp_path / "model"
    assert main(["export", str(family_model), "--out", str(out), "--dtype", dtype]) == 0
    report = _printed_report(capsys)
    assert report["check_passed"] and report["max_abs_diff_hidden"] <= 1e-4, report
    assert report[dtype]["max_abs_vs_at_load"] == 0.0
    family = bortengine.load(family_model).config.family.name
    assert report[dtype]["family"] == family and report.get("family", "bert") == family
    assert report[dtype][counted] == 3 * LINEAR_PER_LAYER
    entries = read_safetensors_header(out / "model.safetensors")
    want = _stored(dtype, family_model)
    for stored_dtype in ("I8", "BF16"):
        assert {n for n, e in entries.items() if e.dtype == stored_dtype} == want.get(stored_dtype, set())
    assert bortengine.load(out, dtype=dtype).dtype == dtype


def test_cli_copies_what_the_engine_reads(make_encoder, tmp_path, capsys):
    """A model directory of another family is copied as it is, without the weights of other frameworks."""
    src = shutil.copytree(make_encoder(**MODELS["mpnet-classifier"], num_hidden_layers=3), tmp_path / "src")
    (src / "pytorch_model.bin").write_bytes(b"a pickle")
    out = tmp_path / "model"
    assert main(["export", str(src), "--out", str(out), "--no-check"]) == 0
    assert _printed_report(capsys)["copied"] is True
    assert not (out / "pytorch_model.bin").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name


def test_cli_refuses_a_family_the_engine_does_not_run(make_encoder, tmp_path, capsys):
    src = shutil.copytree(make_encoder(**MODELS["distilbert"], num_hidden_layers=3), tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "albert"}))
    code = main(["export", str(src), "--out", str(tmp_path / "model"), "--dtype", "int8"])
    assert "model_type 'albert' is not supported" in assert_error_line(capsys, "export", code)
