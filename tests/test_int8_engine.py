"""The int8 engine (load(..., dtype="int8")) against the float32 engine on the same weights, on every path."""
from __future__ import annotations

import numpy as np
import pytest

import bortengine
from bortengine import _core

pytestmark = pytest.mark.skipif(not hasattr(_core, "QuantizedLinear"), reason="needs the native core")

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "The movie was a complete waste of two hours, with a plot full of holes.",
    "An unexpectedly moving film with superb performances from the whole cast.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates.",
    "The cathedral, completed in the 13th century, is a masterpiece of Gothic architecture.",
]


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm_fp32(minilm):
    return bortengine.load(minilm, num_threads=2)


@pytest.mark.parametrize("isa", _core.available_isas())
def test_minilm_int8_embeddings_close_to_fp32(minilm, minilm_fp32, isa):
    e8 = bortengine.load(minilm, num_threads=2, isa=isa, dtype="int8")
    assert e8.dtype == "int8" and e8.kernel.startswith("gemm_u8s8_")
    bf16 = isa == "avx512" and _core.has_bf16_attention()
    assert e8._encoder.attention_kernel == (_core.bf16_attention_names()[0] if bf16 else f"attention_f32_{isa}")
    cos = _cosines(minilm_fp32.encode(SENTENCES), e8.encode(SENTENCES))
    assert cos.min() >= 0.99, cos
    pair = e8.encode(SENTENCES[:2])
    assert abs(float(pair[0] @ pair[1]) - 0.7553) < 0.02


def test_int8_paths_agree(minilm):
    """Paths compute the same integer sums for the same quantized inputs (test_int8_kernels.py), but fp32 parts
    (LayerNorm, attention) differ in summation order, an activation on a rounding boundary can land one quantum
    apart, and the avx512 path's attention runs in bf16 where the CPU has it: the paths agree closely (well within
    the 0.99 that int8 keeps to float32), not bitwise."""
    outs = [bortengine.load(minilm, isa=isa, dtype="int8").encode(SENTENCES) for isa in _core.available_isas()]
    for o in outs[1:]:
        assert _cosines(o, outs[0]).min() > 0.995


def test_int8_random_model_mixed_lengths(make_model):
    path = make_model(hidden_size=200, num_hidden_layers=2, num_attention_heads=5, intermediate_size=333,
                      vocab_size=1000, seed=1)
    e32, e8 = bortengine.load(path), bortengine.load(path, dtype="int8")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, size=(4, 40))
    mask = (np.arange(40)[None, :] < np.array([40, 1, 17, 33])[:, None]).astype(np.int64)
    a = e32(ids, mask).last_hidden_state
    b = e8(ids, mask).last_hidden_state
    assert not b[mask == 0].any()
    rows = mask.astype(bool)
    cos = _cosines(a[rows], b[rows])
    assert cos.min() > 0.98, cos.min()
    np.testing.assert_allclose(e8(ids, mask).pooler_output, e8(ids, mask).pooler_output)  # deterministic


def test_bad_dtype(small_model):
    with pytest.raises(bortengine.InvalidInputError, match="dtype"):
        bortengine.load(small_model, dtype="float16")


def _write_prequantized(src, dst, ffn_out="bf16"):
    """A pre-quantized copy of a model directory: as `bortengine export --dtype int8` writes it (FFN out, the
    "output.dense.weight" of each layer, as BF16), or with ffn_out="int8" as exports made before FFN out left int8
    wrote it (every linear weight I8 with its scale)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from bortengine.engine.weights import QUANTIZABLE_LAYER_WEIGHTS

    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    for name in list(tensors):
        if name.endswith(QUANTIZABLE_LAYER_WEIGHTS) and ".layer." in name:
            if name.endswith(".output.dense.weight") and ".attention." not in name and ffn_out == "bf16":
                continue  # kept float32 here: the engine rounds it to bf16 at load, as from the export's BF16
            q, s = _core.quantize_weights(tensors[name])
            tensors[name], tensors[name + "_scale"] = q, s
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def _bf16_on_tiles(isa: str) -> bool:
    return "amx" in _core.bf16_kernel_name(isa)


@pytest.mark.parametrize("isa", _core.available_isas())
def test_int8_runs_ffn_out_on_the_bf16_kernels_where_they_run_on_tiles(isa):
    """FFN out runs on the bf16 kernels where those are AMX tiles (an int8 forward pays ~13% for it there) and stays
    int8 elsewhere, where a bf16 GEMM is no faster than a float32 one (csrc/forward.h int8_in_bf16)."""
    from bortengine.engine import int8_kernels, int8_stored_bf16

    ffn_out = "bf16" if _bf16_on_tiles(isa) else "int8"
    assert int8_kernels(isa) == {"q": "int8", "k": "int8", "v": "int8", "ao": "int8", "i": "int8", "o": ffn_out}
    assert int8_stored_bf16() == {"o"}  # what an export stores as BF16, whatever this CPU runs
    steps = {s["name"]: s for s in _core.forward_ops(isa)}
    assert steps["ffn_out"]["int8_in_bf16"] and not steps["ffn_in"]["int8_in_bf16"]
    assert steps["ffn_out"]["kernels"] == {"float32": "float32", "int8": ffn_out, "bf16": "bf16"}
    assert steps["ffn_in"]["kernels"] == {"float32": "float32", "int8": "int8", "bf16": "bf16"}
    assert steps["pooler"]["kernels"] == dict.fromkeys(("float32", "int8", "bf16"), "float32")
    # a bf16 GEMM is one team op (it rounds its input inside the GEMM), an int8 one two (it first quantizes rows)
    assert steps["ffn_out"]["barriers"]["bf16"] < steps["ffn_in"]["barriers"]["int8"]
    assert steps["ffn_out"]["barriers"]["int8"] == steps["ffn_out"]["barriers"][ffn_out]


def test_prequantized_checkpoint_loads_as_int8_and_float32(make_model, tmp_path):
    path = make_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                      vocab_size=500, seed=9)
    pre = _write_prequantized(path, tmp_path / "pre")
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 500, size=(2, 12))
    # int8 from pre-quantized weights == int8 quantized at load (same rounding rule)
    np.testing.assert_allclose(bortengine.load(pre, dtype="int8")(ids).last_hidden_state,
                               bortengine.load(path, dtype="int8")(ids).last_hidden_state, atol=1e-5)
    # float32 from pre-quantized weights runs the dequantized weights
    a = bortengine.load(pre)(ids).last_hidden_state
    b = bortengine.load(path)(ids).last_hidden_state
    assert _cosines(a.reshape(-1, 64), b.reshape(-1, 64)).min() > 0.99


def test_prequantized_checkpoint_of_an_earlier_export_loads(make_model, tmp_path):
    """An export made before FFN out left int8 holds it as I8: an int8 engine runs it on the bf16 kernels from
    the dequantized weights (their s8 rounding kept), close to the weights' own rounding."""
    path = make_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                      vocab_size=500, seed=9)
    old = _write_prequantized(path, tmp_path / "old", ffn_out="int8")
    ids = np.random.default_rng(1).integers(0, 500, size=(2, 12))
    a = bortengine.load(old, dtype="int8")(ids).last_hidden_state.reshape(-1, 64)
    b = bortengine.load(path, dtype="int8")(ids).last_hidden_state.reshape(-1, 64)
    assert _cosines(a, b).min() > 0.999
    assert not np.array_equal(a, b)  # FFN out's weights went through s8 first


def test_prequantized_checkpoint_missing_scale(make_model, tmp_path):
    from safetensors.numpy import load_file, save_file

    path = make_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                      vocab_size=500, seed=9)
    pre = _write_prequantized(path, tmp_path / "pre")
    tensors = load_file(str(pre / "model.safetensors"))
    del tensors["encoder.layer.1.attention.output.dense.weight_scale"]
    save_file(tensors, str(pre / "model.safetensors"))
    with pytest.raises(bortengine.ModelLoadError, match="attention.output.dense.weight_scale"):
        bortengine.load(pre, dtype="int8")


def test_quantize_checkpoint_api(make_model, tmp_path):
    """bortengine.export.quantize_checkpoint (what `bortengine export --dtype int8` runs) writes what
    load(dtype="int8") would compute at load, and a smaller file."""
    import shutil

    from bortengine.export import quantize_checkpoint

    path = make_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                      vocab_size=500, seed=9)
    out = tmp_path / "q"
    shutil.copytree(path, out)
    report = quantize_checkpoint(out)
    assert report["quantized"] == 12 and report["bytes_after"] < report["bytes_before"]
    ids = np.random.default_rng(3).integers(0, 500, size=(2, 9))
    np.testing.assert_allclose(bortengine.load(out, dtype="int8")(ids).last_hidden_state,
                               bortengine.load(path, dtype="int8")(ids).last_hidden_state, atol=1e-5)
    assert "bortengine_quantization" in (out / "config.json").read_text()


@pytest.mark.parametrize("isa", _core.available_isas())
def test_engine_names_the_kernel_of_each_gemm(minilm, isa):
    e8 = bortengine.load(minilm, isa=isa, dtype="int8")
    ffn_out = _core.bf16_kernel_name(isa) if _bf16_on_tiles(isa) else e8.kernel
    assert e8.kernels == {"qkv": e8.kernel, "attention_out": e8.kernel, "ffn_in": e8.kernel,
                          "ffn_out": ffn_out, "attention": e8._encoder.attention_kernel}
    assert e8.kernel == _core.int8_kernel_name(isa)
    e32 = bortengine.load(minilm, isa=isa)
    assert set(e32.kernels.values()) == {e32.kernel, e32._encoder.attention_kernel}
