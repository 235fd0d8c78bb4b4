"""The bf16 engine (load(..., dtype="bf16")) against the float32 engine on the same weights, on every path.

The issue's accuracy target: all-MiniLM-L6-v2 sentence embeddings of real sentences (Rotten Tomatoes reviews, the
committed test split, then its dev split) with a mean cosine to float32 >= 0.9995. 1,000 sentences on the default
path; on the other paths, whose bf16 kernels multiply the same bf16 operands (tests/test_bf16_kernels.py), fewer.
"""
from __future__ import annotations

import numpy as np
import pytest

import bortengine
from bortengine import _core

pytestmark = pytest.mark.skipif(not hasattr(_core, "Bf16Linear"), reason="needs the native core")

ISAS = _core.available_isas()


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    from bortengine.training.data import load_split

    return [e.text for split in ("test", "dev") for e in load_split("rt", split)][:1000]


@pytest.fixture(scope="module")
def minilm_fp32_embeddings(minilm, reviews):
    return bortengine.load(minilm, num_threads=2).encode(reviews, batch_size=64)


@pytest.mark.parametrize("isa", ISAS)
def test_minilm_bf16_embeddings_match_fp32(minilm, reviews, minilm_fp32_embeddings, isa):
    n = 1000 if isa == ISAS[0] else 200
    engine = bortengine.load(minilm, num_threads=2, isa=isa, dtype="bf16")
    assert engine.dtype == "bf16" and engine.kernel == _core.bf16_kernel_name(isa)
    bf16_attention = isa == "avx512" and _core.has_bf16_attention()
    best = _core.bf16_attention_names()[0] if bf16_attention else f"attention_f32_{isa}"
    assert engine._encoder.attention_kernel == best
    cos = _cosines(minilm_fp32_embeddings[:n], engine.encode(reviews[:n], batch_size=64))
    assert len(cos) == n and cos.mean() >= 0.9995 and cos.min() >= 0.995, (cos.mean(), cos.min())


def test_bf16_paths_agree(minilm, reviews):
    """Every path multiplies the same bf16 operands; sums differ in order, and the avx512 path's attention runs in
    bf16 where the CPU has it: the paths agree far closer than bf16 keeps to float32."""
    outs = [bortengine.load(minilm, isa=isa, dtype="bf16").encode(reviews[:48]) for isa in ISAS]
    for o in outs[1:]:
        assert _cosines(o, outs[0]).min() > 0.9995


def test_bf16_random_model_mixed_lengths(make_model):
    path = make_model(hidden_size=200, num_hidden_layers=2, num_attention_heads=5, intermediate_size=333,
                      vocab_size=1000, seed=1)
    e32, e16 = bortengine.load(path), bortengine.load(path, dtype="bf16")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, size=(4, 40))
    mask = (np.arange(40)[None, :] < np.array([40, 1, 17, 33])[:, None]).astype(np.int64)
    mask[0, 5:9] = 0  # a hole inside a row
    a, b = e32(ids, mask), e16(ids, mask)
    assert not b.last_hidden_state[mask == 0].any()
    rows = mask.astype(bool)
    assert _cosines(a.last_hidden_state[rows], b.last_hidden_state[rows]).min() > 0.999
    assert _cosines(a.pooler_output, b.pooler_output).min() > 0.999
    np.testing.assert_array_equal(e16(ids, mask).pooler_output, b.pooler_output)  # deterministic


@pytest.mark.parametrize("isa", ISAS)
def test_bf16_random_classifier_agrees_with_fp32(make_model, isa):
    """A classifier's decisions: bf16 and float32 pick the same class for (almost) every input; where they differ
    the float32 logits were nearly tied."""
    path = make_model(hidden_size=96, num_hidden_layers=3, num_attention_heads=4, intermediate_size=160,
                      vocab_size=1000, head="classifier", num_labels=3, seed=7)
    e32, e16 = bortengine.load(path, isa=isa), bortengine.load(path, isa=isa, dtype="bf16")
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 1000, size=(300, 24))
    mask = (np.arange(24)[None, :] < rng.integers(2, 25, size=300)[:, None]).astype(np.int64)
    a, b = e32(ids, mask).logits, e16(ids, mask).logits
    spread = np.abs(a).max()
    assert np.abs(a - b).max() <= 0.02 * spread
    agree = a.argmax(1) == b.argmax(1)
    assert agree.mean() >= 0.98
    top2 = np.sort(a, axis=1)[:, -2:]
    assert ((top2[:, 1] - top2[:, 0])[~agree] <= 0.02 * spread).all()


@pytest.mark.parametrize("isa", ISAS)
def test_bf16_where_slower_than_float32_says_so_at_load(small_model, isa):
    """A PerformanceWarning names the alternative where the bf16 GEMMs have no AMX tiles (and are not an AMD core's
    vdpbf16ps, faster there): measured slower than float32 (bench/README.md)."""
    import warnings

    from bortengine.engine.runtime import _slow_bf16

    kernel = _core.bf16_kernel_name(isa)
    vendor = bortengine.cpu_info().get("vendor", "")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        bortengine.load(small_model, isa=isa, dtype="bf16")
        bortengine.load(small_model, isa=isa, dtype="float32")
    said = [w for w in seen if issubclass(w.category, bortengine.PerformanceWarning)]
    expected = not ("_amx_" in kernel or ("_avx512bf16_" in kernel and vendor != "GenuineIntel"))
    assert len(said) == expected, [str(w.message) for w in seen]
    if said:
        assert "dtype='float32'" in str(said[0].message) and said[0].filename == __file__
    # each rule, whatever this CPU is
    assert _slow_bf16("gemm_bf16_amx_32x32", "GenuineIntel") is None
    assert _slow_bf16("gemm_bf16_avx512bf16_14x32", "AuthenticAMD") is None
    assert "0.72-0.74x" in _slow_bf16("gemm_bf16_avx512bf16_14x32", "GenuineIntel")
    for emulation in ("gemm_bf16_avx512_12x32", "gemm_bf16_avx2_4x16", "gemm_bf16_scalar_4x8"):
        assert "emulation" in _slow_bf16(emulation, "AuthenticAMD")


def test_bf16_weights_are_half_the_bytes(small_model):
    e32, e16 = bortengine.load(small_model), bortengine.load(small_model, dtype="bf16")
    pooler = 64 * 64 * 4  # the pooler stays float32 (one H x H panel set, padded to whole panels)
    assert e16._encoder.packed_bytes < 0.5 * (e32._encoder.packed_bytes - pooler) + 2 * pooler


def test_bad_dtype_names_bf16(small_model):
    with pytest.raises(bortengine.InvalidInputError, match="'bf16'"):
        bortengine.load(small_model, dtype="float16")


# ------------------------------------------------------------------------------------------ BF16 checkpoints
def _bf16_copy(src, dst):
    """A copy of a model directory with BF16 layer weights, as `bortengine export --dtype bf16` writes it."""
    import shutil

    from bortengine.export import bf16_checkpoint

    shutil.copytree(src, dst)
    return dst, bf16_checkpoint(dst)


@pytest.fixture(scope="module")
def bf16_model(make_model, tmp_path_factory):
    path = make_model(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                      vocab_size=500, seed=9)
    out, report = _bf16_copy(path, tmp_path_factory.mktemp("bf16") / "model")
    return path, out, report


def test_bf16_checkpoint_is_written_as_bf16(bf16_model):
    from bortengine.engine import QUANTIZABLE_LAYER_WEIGHTS, read_safetensors_header

    _, out, report = bf16_model
    assert report["converted"] == 12 and report["bytes_after"] < report["bytes_before"]
    dtypes = {name: e.dtype for name, e in read_safetensors_header(out / "model.safetensors").items()}
    linear = {n for n in dtypes if ".layer." in n and n.endswith(QUANTIZABLE_LAYER_WEIGHTS)}
    assert len(linear) == 12 and {dtypes[n] for n in linear} == {"BF16"}
    assert {d for n, d in dtypes.items() if n not in linear} == {"F32"}
    assert '"dtype": "bf16"' in (out / "config.json").read_text()


def test_bf16_checkpoint_loads_straight_into_the_bf16_path(bf16_model, monkeypatch):
    """load(dtype="bf16") hands a BF16 checkpoint's layer weights to the engine as they are stored (never read as
    float32), and runs exactly what rounding the float checkpoint at load runs."""
    from bortengine.engine import BertWeights

    path, out, _ = bf16_model
    ids = np.random.default_rng(1).integers(0, 500, size=(2, 12))
    want = bortengine.load(path, dtype="bf16")(ids).last_hidden_state

    def no_float_read(self, index):
        raise AssertionError("a BF16 layer was read as float32")

    monkeypatch.setattr(BertWeights, "read_layer", no_float_read)
    np.testing.assert_array_equal(bortengine.load(out, dtype="bf16")(ids).last_hidden_state, want)


def test_bf16_checkpoint_loads_as_float32(bf16_model):
    """dtype float32 widens the BF16 weights (exactly): the float32 engine on the bf16-rounded weights."""
    path, out, _ = bf16_model
    ids = np.random.default_rng(2).integers(0, 500, size=(3, 10))
    engine = bortengine.load(out)
    assert engine.dtype == "float32" and engine.kernel.startswith("gemm_f32_")
    a, b = engine(ids).last_hidden_state, bortengine.load(path)(ids).last_hidden_state
    assert _cosines(a.reshape(-1, 64), b.reshape(-1, 64)).min() > 0.999
    assert _cosines(a.reshape(-1, 64), bortengine.load(out, dtype="bf16")(ids).last_hidden_state.reshape(-1, 64)
                    ).min() > 0.9999


def test_mixed_checkpoint_loads(bf16_model, tmp_path):
    """Layers whose weights are BF16 go straight in; a layer stored as float32 is rounded at packing."""
    from bortengine.engine import read_safetensors_header, write_safetensors

    import shutil

    path, out, _ = bf16_model
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    src = read_safetensors_header(path / "model.safetensors")
    entries = read_safetensors_header(mixed / "model.safetensors")
    tensors = {name: (src[name].dtype, src[name].read_stored()) if name.startswith("encoder.layer.1.")
               else (e.dtype, e.read_stored()) for name, e in entries.items()}
    write_safetensors(mixed / "model.safetensors", tensors)
    ids = np.random.default_rng(3).integers(0, 500, size=(2, 9))
    np.testing.assert_array_equal(bortengine.load(mixed, dtype="bf16")(ids).last_hidden_state,
                                  bortengine.load(path, dtype="bf16")(ids).last_hidden_state)


def test_write_safetensors_round_trip(tmp_path):
    from bortengine.engine import read_safetensors_header, write_safetensors

    rng = np.random.default_rng(0)
    tensors = {"f32": ("F32", rng.standard_normal((3, 5)).astype(np.float32)),
               "bf16": ("BF16", rng.integers(0, 2**16, size=(4, 2), dtype=np.uint16)),
               "i8": ("I8", rng.integers(-127, 128, size=7, dtype=np.int8)),
               "i64": ("I64", np.arange(3, dtype=np.int64))}
    write_safetensors(tmp_path / "t.safetensors", tensors, {"format": "pt"})
    entries = read_safetensors_header(tmp_path / "t.safetensors")
    assert list(entries) == list(tensors)
    for name, (dtype, array) in tensors.items():
        assert entries[name].dtype == dtype and entries[name].shape == array.shape
        np.testing.assert_array_equal(entries[name].read_stored(), array)
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    loaded = load_file(str(tmp_path / "t.safetensors"))  # the reference reader: BF16 as torch.bfloat16
    assert loaded["bf16"].dtype == torch.bfloat16
    np.testing.assert_array_equal(loaded["bf16"].view(torch.int16).numpy().view(np.uint16), tensors["bf16"][1])
    with pytest.raises(ValueError, match="2-byte"):
        write_safetensors(tmp_path / "bad.safetensors", {"x": ("BF16", np.zeros(2, np.float32))})


def test_bf16_weights_are_checked():
    core = _core

    enc16 = core.Encoder(64, 1, 4, 96, 100, 16, 2, 1e-12, 1, "", "bf16")
    vectors = [np.zeros(n, np.float32) for n in (64, 64, 64, 64, 64, 64, 96, 64, 64, 64)]
    weights = {k: np.zeros((64, 64), np.uint16) for k in ("q_w", "k_w", "v_w", "ao_w")}
    weights.update(i_w=np.zeros((96, 64), np.uint16), o_w=np.zeros((64, 96), np.uint16))
    enc16.set_layer_bf16(0, weights, *vectors)
    with pytest.raises(ValueError, match=r"layer 0 i_w has shape \[64, 96\], expected \[96, 64\]"):
        enc16.set_layer_bf16(0, {**weights, "i_w": weights["o_w"]}, *vectors)
    with pytest.raises(ValueError, match="must be uint16"):
        enc16.set_layer_bf16(0, {**weights, "q_w": np.zeros((64, 64), np.float32)}, *vectors)
    with pytest.raises(ValueError, match="need 'o_w'"):
        enc16.set_layer_bf16(0, {k: v for k, v in weights.items() if k != "o_w"}, *vectors)
    enc32 = core.Encoder(64, 1, 4, 96, 100, 16, 2, 1e-12, 1, "", "float32")
    with pytest.raises(ValueError, match="need a bf16 encoder"):
        enc32.set_layer_bf16(0, weights, *vectors)
