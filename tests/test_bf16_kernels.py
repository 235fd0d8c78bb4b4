"""The bf16 GEMM of every variant that runs here (AMX, AVX512_BF16, the AVX-512F and AVX2 emulations, the portable
kernel) against the plain-loop fp32 reference on bf16-rounded inputs.

Rounding is checked bit for bit: each variant's own rounding (what its GEMM does to A, and the engine to weights)
against the reference (csrc/kernels_ref.cc, nearest of the two bf16 neighbours), which is checked against NumPy
bit arithmetic and torch's bfloat16. The products of two bf16 are exact in fp32, so a variant's GEMM differs from
the double-precision reference on the rounded inputs only by its fp32 accumulation: the fp32 GEMM's tolerance,
growing with sqrt(K). Shapes cover edge tiles (M below and around MR and AMX's 16-row tiles, N not a multiple of
NR, K = 1, odd K, K across several KC blocks and not a multiple of AMX's 32) and both thread splits (by columns; by rows for few panels or M >= 512).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bortengine import _core

pytestmark = pytest.mark.skipif(not hasattr(_core, "Bf16Linear"), reason="needs the native core")

ISAS = _core.available_isas()
# (path, kernel): every bf16 kernel that runs here, forced by name (the AVX-512F emulation is not the avx512 path's
# default on a CPU with AVX512_BF16)
VARIANTS = [(isa, kernel) for isa in ISAS for kernel in _core.bf16_kernel_names(isa)]
EPILOGUES = ["none", "gelu", "tanh", "residual"]
SHAPES = [(1, 1, 1), (1, 17, 5), (3, 33, 1), (13, 31, 7), (14, 32, 64), (15, 33, 257), (29, 100, 301),
          (64, 64, 600), (130, 96, 1030), (230, 70, 40), (600, 200, 300), (1030, 70, 41), (16, 32, 32),
          (17, 48, 65), (33, 20, 95)]


def widen(bits):
    """bf16 bits -> their float32 values."""
    return (np.asarray(bits, np.uint32) << 16).view(np.float32)


def bf16_values(x):
    return widen(_core.to_bf16_ref(np.ascontiguousarray(x, np.float32)))


def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _case(rng, M, N, K, epilogue):
    a, w = _rand(rng, M, K), _rand(rng, N, K, scale=1 / np.sqrt(K))
    return a, w, _rand(rng, N), _rand(rng, M, N) if epilogue == "residual" else None


def _tol(K):
    return 2e-6 * np.sqrt(K) + 1e-6


def _special_values():
    ties = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F80C000, 0x3F807FFF, 0x7F7F8000, 0x7F7FFFFF,
                     0x00800000, 0x007FFFFF, 0x80000001, 0x00400000, 0x7F800000, 0xFF800000, 0x7F800001, 0xFFC00000,
                     0x7FBFFFFF, 0x00000000, 0x80000000], np.uint32).view(np.float32)
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32)  # every exponent, NaNs included
    halfway = (bits & 0xFFFF0000) | 0x8000                                       # ties on both parities
    return np.concatenate([ties, bits.view(np.float32), halfway.view(np.float32),
                           _rand(rng, 5000) * np.float32(1e-3)])


def _numpy_bf16(x):
    """Round to nearest even by bit arithmetic, NaN quiet, subnormals to signed zero (vcvtneps2bf16's rule)."""
    u = x.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    mag = u & 0x7FFFFFFF
    r = np.where(mag > 0x7F800000, ((u >> 16) | 0x40).astype(np.uint16), r)
    return np.where(mag < 0x00800000, ((u >> 16) & 0x8000).astype(np.uint16), r)


def test_kernel_names():
    for isa in ISAS:
        names = _core.bf16_kernel_names(isa)
        assert names and _core.bf16_kernel_name(isa) == names[0]
        for name in names:
            variant, tile = name.split("_")[2:]
            on_path = variant.startswith(isa) or (isa, variant) == ("avx512", "amx")
            assert name.startswith("gemm_bf16_") and on_path and "x" in tile, name
    if "avx512" in ISAS:
        flags = _core.cpu_info()["flags"]
        best = ("gemm_bf16_amx_" if "amx_bf16" in flags else "gemm_bf16_avx512bf16_" if "avx512_bf16" in flags else
                "gemm_bf16_avx512_")
        assert _core.bf16_kernel_names("avx512")[0].startswith(best)
        assert _core.bf16_kernel_names("avx512")[-1].startswith("gemm_bf16_avx512_")


def test_reference_rounding():
    x = _special_values()
    ref = _core.to_bf16_ref(x)
    assert ref.dtype == np.uint16 and ref.shape == x.shape
    np.testing.assert_array_equal(ref, _numpy_bf16(x))
    # values: the nearer neighbour, and a tie goes to the even mantissa
    assert list(_core.to_bf16_ref(np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20], np.float32))) == \
        [0x3F80, 0x3F82, 0x3F81]


def test_reference_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    x = _special_values()
    normal = np.isfinite(x) & (np.abs(x) >= np.finfo(np.float32).tiny)  # torch keeps subnormals; NaN payloads differ
    want = torch.from_numpy(x[normal]).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(_core.to_bf16_ref(x[normal]), want)


@pytest.mark.parametrize("isa,kernel", VARIANTS)
def test_rounding_is_the_reference(isa, kernel):
    x = _special_values()
    for n in (len(x), 1, 15, 17, 33):  # vector tails
        np.testing.assert_array_equal(_core.to_bf16(x[:n], isa, kernel), _core.to_bf16_ref(x[:n]))
    m = x[: 37 * 8].reshape(37, 8)
    np.testing.assert_array_equal(_core.to_bf16(m, isa, kernel), _core.to_bf16_ref(m))


@pytest.mark.parametrize("isa,kernel", VARIANTS)
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_matches_reference_on_rounded_inputs(isa, kernel, M, N, K, threads):
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    for epilogue in EPILOGUES:
        a, w, b, r = _case(rng, M, N, K, epilogue)
        lin = _core.Bf16Linear(w, b, isa, kernel)
        assert (lin.N, lin.K, lin.kernel) == (N, K, kernel)
        got = lin(a, epilogue, r, threads)
        want = _core.gemm_ref(bf16_values(a), bf16_values(w), b, epilogue, r)
        np.testing.assert_allclose(got, want, atol=_tol(K), rtol=1e-5, err_msg=f"{kernel} {epilogue}")


@settings(max_examples=40, deadline=None)
@given(M=st.integers(1, 80), N=st.integers(1, 80), K=st.integers(1, 300), threads=st.integers(1, 3),
       epilogue=st.sampled_from(EPILOGUES), variant=st.sampled_from(VARIANTS), seed=st.integers(0, 2**31))
def test_gemm_property(M, N, K, threads, epilogue, variant, seed):
    rng = np.random.default_rng(seed)
    a, w, b, r = _case(rng, M, N, K, epilogue)
    got = _core.Bf16Linear(w, b, *variant)(a, epilogue, r, threads)
    want = _core.gemm_ref(bf16_values(a), bf16_values(w), b, epilogue, r)
    np.testing.assert_allclose(got, want, atol=_tol(K), rtol=1e-5)


@pytest.mark.parametrize("isa,kernel", VARIANTS)
def test_bf16_bits_and_floats_pack_alike(isa, kernel):
    """A BF16 checkpoint's weights (uint16 bits) run exactly as float weights rounded at packing."""
    rng = np.random.default_rng(2)
    a, w, b, _ = _case(rng, 37, 45, 99, "none")
    from_floats = _core.Bf16Linear(w, b, isa, kernel)(a, "gelu", None, 2)
    from_bits = _core.Bf16Linear(_core.to_bf16_ref(w), b, isa, kernel)(a, "gelu", None, 2)
    np.testing.assert_array_equal(from_bits, from_floats)


@pytest.mark.parametrize("isa,kernel", VARIANTS)
def test_subnormal_weights_are_zero_on_every_variant(isa, kernel):
    """vdpbf16ps reads a subnormal bf16 as zero; packing flushes them so the emulations agree."""
    w = np.array([[0x0001, 0x3F80], [0x8040, 0x0000]], np.uint16)  # [[subnormal, 1], [-subnormal, 0]]
    a = np.array([[2.0**100, 3.0]], np.float32)
    np.testing.assert_array_equal(_core.Bf16Linear(w, None, isa, kernel)(a), [[3.0, 0.0]])


@pytest.mark.parametrize("isa,kernel", VARIANTS)
def test_close_to_float32(isa, kernel):
    """bf16 keeps 8 mantissa bits: relative rounding errors up to 2^-9 per operand, which average out over K."""
    rng = np.random.default_rng(4)
    a, w, b, _ = _case(rng, 64, 96, 384, "none")
    got = _core.Bf16Linear(w, b, isa, kernel)(a, "none", None, 2)
    exact = _core.gemm_ref(a, w, b)
    assert np.abs(got - exact).max() <= 0.02 * np.abs(exact).max()


def test_bad_arguments():
    rng = np.random.default_rng(0)
    w = _rand(rng, 6, 7)
    with pytest.raises(ValueError, match=r"\[4, 5\].*\[M, 7\]"):
        _core.Bf16Linear(w)(_rand(rng, 4, 5))
    with pytest.raises(ValueError, match="residual"):
        _core.Bf16Linear(w)(_rand(rng, 4, 7), "residual")
    with pytest.raises(ValueError, match="bias"):
        _core.Bf16Linear(w, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="num_threads"):
        _core.Bf16Linear(w)(_rand(rng, 4, 7), num_threads=0)
    with pytest.raises(ValueError, match="positive sizes"):
        _core.Bf16Linear(np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="does not run on path 'scalar'.*gemm_bf16_scalar_4x8"):
        _core.Bf16Linear(w, None, "scalar", "gemm_bf16_avx2_4x16")
    with pytest.raises(ValueError, match="unknown kernel path"):
        _core.to_bf16(w, "sse9")
