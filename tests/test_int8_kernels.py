"""The int8 path of every ISA, and every int8 kernel that runs on it (AMX, VNNI), against the plain integer
reference, exactly.

Quantization of activations (per row, asymmetric u8) and the int32 sums (minus zero point x weight sums) must be
bit-identical to csrc/kernels_ref.cc on every path; the dequantized output is then checked against the reference
sums scaled in float64.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bortengine import _core

pytestmark = pytest.mark.skipif(not hasattr(_core, "gemm_ref"), reason="needs the native core")

ISAS = _core.available_isas()
# (path, kernel): every int8 kernel that runs here, forced by name (VNNI is not the avx512 path's default with AMX)
VARIANTS = [(isa, kernel) for isa in ISAS for kernel in _core.int8_kernel_names(isa)]
# M >= 512: split by rows (ops.cc kRowSplitM); M around AMX's 16-row tiles, K around its 64-deep tile rows
SHAPES = [(1, 1, 1), (1, 17, 5), (3, 33, 3), (13, 37, 29), (14, 32, 64), (15, 33, 257), (64, 100, 770),
          (130, 96, 1030), (200, 70, 40), (600, 200, 300), (16, 32, 64), (17, 48, 65), (33, 20, 127)]


def _case(rng, M, N, K):
    a = rng.standard_normal((M, K)).astype(np.float32)
    a[:, : min(K, 3)] += 3.0  # a skewed range exercises the zero point
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    return a, w


def test_int8_kernel_names():
    for isa in ISAS:
        names = _core.int8_kernel_names(isa)
        assert names and _core.int8_kernel_name(isa) == names[0]
        assert all(name.startswith("gemm_u8s8_") for name in names), names
    flags = _core.cpu_info()["flags"]
    if "avx512" in ISAS and "avx512_vnni" in flags:
        names = _core.int8_kernel_names("avx512")
        assert names[0].startswith("gemm_u8s8_amx_" if "amx_int8" in flags else "gemm_u8s8_avx512vnni")
        assert names[-1].startswith("gemm_u8s8_avx512vnni")
    with pytest.raises(ValueError, match="does not run on path 'scalar'.*gemm_u8s8_scalar_4x8"):
        _core.QuantizedLinear(np.ones((2, 3), np.float32), isa="scalar", kernel="gemm_u8s8_avx2_6x16")


@pytest.mark.parametrize("isa,kernel", VARIANTS)
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_int32_sums_exact(isa, kernel, M, N, K, threads):
    rng = np.random.default_rng(M * 7919 + N * 31 + K)
    a, w = _case(rng, M, N, K)
    q, s, z = _core.quantize_rows(a, isa, kernel)
    qr, sr, zr = _core.quantize_rows_ref(a)
    assert np.array_equal(q[:, :K], qr) and np.array_equal(s, sr) and np.array_equal(z, zr)
    assert not q[:, K:].any()  # K padding is zero
    qw, sw = _core.quantize_weights(w)
    raw = _core.QuantizedLinear(qw, sw, None, isa, kernel)(a, raw=True, num_threads=threads)
    assert raw.dtype == np.int32
    np.testing.assert_array_equal(raw, _core.gemm_u8s8_i32_ref(qr, zr, qw))


@pytest.mark.parametrize("isa,kernel", VARIANTS)
@pytest.mark.parametrize("epilogue", ["none", "gelu", "residual"])
@pytest.mark.parametrize("M", [45, 600])  # split by columns; by rows (M >= 512), residual rows offset per chunk
def test_dequantized_epilogues(isa, kernel, epilogue, M):
    rng = np.random.default_rng(5)
    N, K = 70, 300
    a, w = _case(rng, M, N, K)
    bias = rng.standard_normal(N).astype(np.float32)
    res = rng.standard_normal((M, N)).astype(np.float32) if epilogue == "residual" else None
    qw, sw = _core.quantize_weights(w)
    qr, sr, zr = _core.quantize_rows_ref(a)
    sums = _core.gemm_u8s8_i32_ref(qr, zr, qw).astype(np.float64) * sr[:, None] * sw[None, :] + bias
    want = {"none": sums, "gelu": np.asarray(_core.gelu_ref(sums.astype(np.float32)), np.float64),
            "residual": sums + (res if res is not None else 0)}[epilogue]
    got = _core.QuantizedLinear(w, None, bias, isa, kernel)(a, epilogue, res, num_threads=2)
    np.testing.assert_allclose(got, want, atol=5e-5 * np.abs(want).max(), rtol=1e-5)
    # and the int8 result is a close approximation of the fp32 product
    exact = _core.gemm_ref(a, w, bias, epilogue, res)
    assert np.abs(got - exact).max() <= 0.03 * np.abs(exact).max()


@settings(max_examples=30, deadline=None)
@given(M=st.integers(1, 40), N=st.integers(1, 70), K=st.integers(1, 200), variant=st.sampled_from(VARIANTS),
       threads=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_int32_sums_property(M, N, K, variant, threads, seed):
    isa, kernel = variant
    rng = np.random.default_rng(seed)
    a, w = _case(rng, M, N, K)
    qr, _, zr = _core.quantize_rows_ref(a)
    qw, sw = _core.quantize_weights(w)
    raw = _core.QuantizedLinear(qw, sw, None, isa, kernel)(a, raw=True, num_threads=threads)
    np.testing.assert_array_equal(raw, _core.gemm_u8s8_i32_ref(qr, zr, qw))


def test_extreme_rows_quantize_exactly():
    a = np.array([[0.0] * 8, [1e-30] * 8, [-5.0] * 8, [3.0, -3.0] * 4, [1e30, -1e30, 0, 0, 0, 0, 0, 0]], np.float32)
    for isa, kernel in VARIANTS:
        q, s, z = _core.quantize_rows(a, isa, kernel)
        qr, sr, zr = _core.quantize_rows_ref(a)
        assert np.array_equal(q[:, :8], qr) and np.array_equal(s, sr) and np.array_equal(z, zr)
    assert (qr[0] == zr[0]).all()  # zero stays exactly representable


def test_quantized_weights_validated():
    with pytest.raises(ValueError, match=r"\[-127, 127\]"):
        _core.QuantizedLinear(np.full((2, 3), -128, np.int8), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="scale"):
        _core.QuantizedLinear(np.ones((2, 3), np.int8))
    with pytest.raises(ValueError, match="non-finite"):
        _core.QuantizedLinear(np.array([[np.nan, 1.0]], np.float32))


@pytest.mark.skipif(not _core.bf16_attention_names(), reason="needs the avx512 path on a CPU with AVX512_BF16")
@pytest.mark.parametrize("lens,heads,dh", [([1], 1, 8), ([1, 2, 3], 2, 40), ([5, 64, 65, 130], 4, 48),
                                           ([200, 7], 3, 64), ([512], 2, 32), ([33], 2, 130)])
def test_bf16_attention(lens, heads, dh):
    """The int8 encoder's attention: bf16 operands, fp32 accumulation and softmax. Error of bf16 rounding of Q, K,
    V and P (8-bit mantissa, relative rounding error up to 2^-9): the largest error stays under 1% of the output's
    scale, the mean under 0.3%."""
    rng = np.random.default_rng(sum(lens) * heads)
    qkv = rng.standard_normal((sum(lens), 3 * heads * dh)).astype(np.float32)
    # with and without a relative position bias (MPNet's), added to the fp32 scores
    bias = rng.standard_normal((heads, 2 * max(lens) - 1)).astype(np.float32)
    names = _core.bf16_attention_names()  # every bf16 attention that runs here (AMX, vdpbf16ps), forced by name
    assert names[-1] == "attention_bf16_avx512"
    assert (names[0] == "attention_bf16_amx") == ("amx_bf16" in _core.cpu_info()["flags"])
    for kernel in names:
        for position_bias in (None, bias):
            got = _core.attention(qkv, lens, heads, 2, "avx512", True, position_bias=position_bias, kernel=kernel)
            want = _core.attention_ref(qkv, lens, heads, position_bias=position_bias)
            scale = np.abs(want).max()
            assert np.abs(got - want).max() <= 0.01 * scale, kernel
            assert np.abs(got - want).mean() <= 0.003 * scale, kernel
    with pytest.raises(ValueError, match="does not run here; it runs: .*attention_bf16_avx512"):
        _core.attention(qkv, lens, heads, 1, "avx512", True, kernel="attention_bf16_neon")


def test_encoders_run_the_bf16_attention_where_it_pays():
    """int8 and bf16 encoders run a bf16 attention with AMX tiles, or on a CPU not Intel's; vdpbf16ps alone made the
    int8 encoder's attention 1.25-1.54x slower than fp32 on an Intel core (BORTENGINE_AMX=0): there they run fp32."""
    info = _core.cpu_info()
    runs = bool(_core.bf16_attention_names())
    pays = "amx_bf16" in info["flags"] or info["vendor"] != "GenuineIntel"
    assert _core.has_bf16_attention() == (runs and pays)
    encoder = _core.Encoder(64, 1, 2, 64, 64, 2, 2, 1e-12, 1, "avx512" if runs else "", "int8")
    assert ("bf16" in encoder.attention_kernel) == _core.has_bf16_attention()


def test_bf16_attention_refused_elsewhere():
    with pytest.raises(ValueError, match="AVX512_BF16"):
        _core.attention(np.zeros((4, 12), np.float32), [4], 2, 1, "scalar", True)
