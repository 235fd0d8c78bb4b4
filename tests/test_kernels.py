"""Every compiled kernel path against the plain-loop references in csrc/kernels_ref.cc.

Shapes cover the edge tiles of every path: M below and around the microkernel's MR, N not a multiple of NR,
K = 1 and K across several KC blocks, and both ways the ops split work between threads (by columns; by rows, for
few panels or large M).
GEMM tolerance grows with sqrt(K) (fp32 accumulation of K products vs the double reference).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bortengine import _core

pytestmark = pytest.mark.skipif(not hasattr(_core, "gemm_ref"), reason="needs the native core")

ISAS = _core.available_isas()
EPILOGUES = ["none", "gelu", "tanh", "residual"]


def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _gemm_case(rng, M, N, K, epilogue, bias=True):
    a = _rand(rng, M, K)
    w = _rand(rng, N, K, scale=1 / np.sqrt(K))
    b = _rand(rng, N) if bias else None
    r = _rand(rng, M, N) if epilogue == "residual" else None
    return a, w, b, r


def _gemm_tol(K):
    return 2e-6 * np.sqrt(K) + 1e-6


def test_paths_listed_and_default_is_best():
    assert ISAS[-1] == "scalar"
    assert _core.default_isa() in ISAS
    for isa in ISAS:
        name = _core.kernel_name(isa)
        assert name.startswith(f"gemm_f32_{isa}_"), name
    info = _core.cpu_info()
    assert info["available_isas"] == ISAS


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "M,N,K",
    [(1, 1, 1), (1, 17, 5), (3, 33, 1), (13, 31, 7), (14, 32, 64), (15, 33, 257), (29, 100, 300),
     (64, 64, 600), (130, 96, 1030), (230, 70, 40),
     # M >= 512 (ops.cc kRowSplitM): split by rows although there are enough column panels to share
     (600, 200, 300), (1030, 70, 40)],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_matches_reference(isa, M, N, K, threads):
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    for epilogue in EPILOGUES:
        a, w, b, r = _gemm_case(rng, M, N, K, epilogue)
        got = _core.gemm(a, w, b, epilogue, r, num_threads=threads, isa=isa)
        want = _core.gemm_ref(a, w, b, epilogue, r)
        np.testing.assert_allclose(got, want, atol=_gemm_tol(K), rtol=1e-5, err_msg=f"{isa} {epilogue}")


@pytest.mark.parametrize("isa", ISAS)
def test_gemm_without_bias_and_packed_reuse(isa):
    rng = np.random.default_rng(1)
    a, w, _, _ = _gemm_case(rng, 50, 70, 90, "none", bias=False)
    lin = _core.PackedLinear(w, None, isa)
    assert (lin.N, lin.K) == (70, 90)
    want = _core.gemm_ref(a, w)
    for threads in (1, 2, 3):
        np.testing.assert_allclose(lin(a, num_threads=threads), want, atol=_gemm_tol(90), rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(M=st.integers(1, 80), N=st.integers(1, 80), K=st.integers(1, 300), threads=st.integers(1, 3),
       epilogue=st.sampled_from(EPILOGUES), isa=st.sampled_from(ISAS), seed=st.integers(0, 2**31))
def test_gemm_property(M, N, K, threads, epilogue, isa, seed):
    rng = np.random.default_rng(seed)
    a, w, b, r = _gemm_case(rng, M, N, K, epilogue)
    got = _core.gemm(a, w, b, epilogue, r, num_threads=threads, isa=isa)
    np.testing.assert_allclose(got, _core.gemm_ref(a, w, b, epilogue, r), atol=_gemm_tol(K), rtol=1e-5)


def test_gemm_bad_shapes_raise():
    rng = np.random.default_rng(0)
    a, w = _rand(rng, 4, 5), _rand(rng, 6, 7)
    with pytest.raises(ValueError, match=r"\[4, 5\].*\[M, 7\]"):
        _core.gemm(a, w)
    with pytest.raises(ValueError, match="residual"):
        _core.gemm(_rand(rng, 4, 7), w, None, "residual")
    with pytest.raises(ValueError, match="unknown epilogue"):
        _core.gemm(_rand(rng, 4, 7), w, None, "relu")
    with pytest.raises(ValueError, match="bias"):
        _core.gemm(_rand(rng, 4, 7), w, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="num_threads"):
        _core.gemm(_rand(rng, 4, 7), w, num_threads=0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("N", [1, 7, 16, 200, 384, 1024])
def test_layernorm(isa, N):
    rng = np.random.default_rng(N)
    x = _rand(rng, 37, N, scale=3.0) + 5.0  # an offset mean exercises the two-pass variance
    g, b, r = _rand(rng, N), _rand(rng, N), _rand(rng, 37, N)
    for eps in (1e-12, 1e-5):
        np.testing.assert_allclose(_core.layernorm(x, g, b, eps, None, 2, isa), _core.layernorm_ref(x, g, b, eps),
                                   atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(_core.layernorm(x, g, b, eps, r, 1, isa), _core.layernorm_ref(x, g, b, eps, r),
                                   atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "lens,heads,dh",
    [([1], 1, 8), ([1, 2, 3], 2, 40), ([5, 64, 65, 130], 4, 48), ([200, 7], 3, 64), ([512], 2, 32),
     ([129, 31], 2, 128)],
)
def test_attention(isa, lens, heads, dh):
    rng = np.random.default_rng(sum(lens) + heads)
    H = heads * dh
    qkv = _rand(rng, sum(lens), 3 * H, scale=2.0)  # large logits: the max-subtraction matters
    got = _core.attention(qkv, lens, heads, 2, isa)
    np.testing.assert_allclose(got, _core.attention_ref(qkv, lens, heads), atol=2e-5, rtol=1e-4)


def _position_bias(rng, heads, max_len):
    """A relative position bias table [heads, 2P - 1] of order-1 values (MPNet's are of that order)."""
    return rng.standard_normal((heads, 2 * max_len - 1)).astype(np.float32)


def _numpy_attention(qkv, lens, heads, bias):
    """softmax(Q K^T / sqrt(dh) + bias[h, P - 1 + j - i]) V in float64: what the bias table means."""
    H = qkv.shape[1] // 3
    dh, center = H // heads, (bias.shape[1] - 1) // 2
    out, start = np.zeros((qkv.shape[0], H)), 0
    for n in lens:
        x = qkv[start:start + n].astype(np.float64)
        for h in range(heads):
            q, k, v = (x[:, c * H + h * dh:c * H + (h + 1) * dh] for c in range(3))
            s = q @ k.T / np.sqrt(dh) + bias[h, center + np.arange(n)[None, :] - np.arange(n)[:, None]]
            p = np.exp(s - s.max(1, keepdims=True))
            out[start:start + n, h * dh:(h + 1) * dh] = p @ v / p.sum(1, keepdims=True)
        start += n
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "lens,heads,dh,max_len",
    [([1], 1, 8, 1), ([1, 2, 3], 2, 40, 3), ([5, 64, 65, 130], 4, 48, 130), ([200, 7], 3, 64, 512),
     ([17, 33, 9], 5, 40, 40), ([129, 31], 2, 128, 129)],
)
def test_attention_with_position_bias(isa, lens, heads, dh, max_len):
    """MPNet's relative position bias: the value for the distance key - query added to each scaled score, on every
    path; tables longer than the sequences (the encoder's, for max_positions) read from their middle."""
    rng = np.random.default_rng(sum(lens) + max_len)
    qkv = _rand(rng, sum(lens), 3 * heads * dh, scale=2.0)
    bias = _position_bias(rng, heads, max_len)
    want = _core.attention_ref(qkv, lens, heads, position_bias=bias)
    np.testing.assert_allclose(want, _numpy_attention(qkv, lens, heads, bias), atol=1e-5, rtol=1e-5)
    got = _core.attention(qkv, lens, heads, 2, isa, position_bias=bias)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    if max(lens) > 1:  # the bias moved the output: it was read
        assert np.abs(want - _core.attention_ref(qkv, lens, heads)).max() > 0.01


def test_attention_bad_args():
    qkv = np.zeros((10, 12), np.float32)
    with pytest.raises(ValueError, match="sum to 9"):
        _core.attention(qkv, [4, 5], 2)
    with pytest.raises(ValueError, match="divisible"):
        _core.attention(qkv, [10], 3)
    with pytest.raises(ValueError, match=">= 1"):
        _core.attention(qkv, [10, 0], 2)
    for shape in ((2, 17), (3, 19), (2, 20), (19,)):   # P = 9 < 10 tokens; 3 heads; an even width; not 2-D
        with pytest.raises(ValueError, match=r"position bias has shape .*expected \[2, 2P - 1\].*P >= 10"):
            _core.attention(qkv, [10], 2, position_bias=np.zeros(shape, np.float32))
        with pytest.raises(ValueError, match="position bias has shape"):
            _core.attention_ref(qkv, [10], 2, position_bias=np.zeros(shape, np.float32))


@pytest.mark.parametrize("isa", ISAS)
def test_gelu_and_tanh_accuracy(isa):
    x = np.linspace(-12, 12, 200_001, dtype=np.float32)
    np.testing.assert_allclose(_core.gelu(x, isa), _core.gelu_ref(x), atol=2e-6, rtol=0)
    # tanh only runs as the pooler epilogue: check it through a 1x1 GEMM with weight 1
    a = x[:, None].copy()
    got = _core.gemm(a, np.ones((1, 1), np.float32), None, "tanh", isa=isa)[:, 0]
    np.testing.assert_allclose(got, np.tanh(x.astype(np.float64)), atol=2e-6, rtol=0)


def _run_with_isa_env(value):
    code = "from bortengine import _core; print(_core.default_isa())"
    env = dict(os.environ, BORTENGINE_ISA=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("isa", ISAS)
def test_env_forces_path(isa):
    out = _run_with_isa_env(isa)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isa


def test_env_unknown_path_fails_loudly():
    out = _run_with_isa_env("avx1024")
    assert out.returncode != 0
    assert "BORTENGINE_ISA=avx1024" in out.stderr and "available here" in out.stderr


@pytest.mark.skipif("avx512" in ISAS, reason="this CPU runs AVX-512; the unrunnable-path error needs one that cannot")
def test_env_unrunnable_path_fails_loudly():
    out = _run_with_isa_env("avx512")
    assert out.returncode != 0 and "not runnable" in out.stderr


def test_unknown_isa_argument():
    with pytest.raises(ValueError, match="unknown kernel path"):
        _core.kernel_name("sse9")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("H", [1, 40, 384])
def test_embed_layernorm(isa, H):
    rng = np.random.default_rng(H)
    word, pos, typ = _rand(rng, 50, H), _rand(rng, 16, H), _rand(rng, 2, H)
    g, b = _rand(rng, H), _rand(rng, H)
    ids, positions, types = rng.integers(0, 50, 33), rng.integers(0, 16, 33), rng.integers(0, 2, 33)
    got = _core.embed_layernorm(ids, positions, types, word, pos, typ, g, b, 1e-12, 2, isa)
    want = _core.layernorm_ref(word[ids] + pos[positions] + typ[types], g, b, 1e-12)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        _core.embed_layernorm(ids + 50, positions, types, word, pos, typ, g, b, 1e-12, 1, isa)


@pytest.mark.parametrize("call", ["forward ids", "forward mask", "QuantizedLinear", "Bf16Linear"])
def test_an_array_that_cannot_be_converted_raises_instead_of_crashing(call):
    """A broadcast view the native core must copy to read (2^40 rows of one id; 2^40 int8 weights) could not be
    copied: the conversion gave a null array, which was read, and the process died of a segmentation fault. Run in
    a child process, whose death would be this test's failure."""
    code = {
        "forward ids": "e.forward(np.broadcast_to(np.int64(1), (2**40, 1)))",
        "forward mask": "e.forward(np.ones((1, 1), np.int64), np.broadcast_to(np.int64(1), (2**40, 1)))",
        "QuantizedLinear": "C.QuantizedLinear(np.broadcast_to(np.int8(1), (2**20, 2**20)), "
                           "scale=np.ones(2**20, np.float32))",
        "Bf16Linear": "C.Bf16Linear(np.broadcast_to(np.uint16(1), (2**20, 2**20)))",
    }[call]
    script = ("import numpy as np\nfrom bortengine import _core as C\n"
              "e = C.Encoder(64, 1, 2, 64, 64, 2, 2, 1e-12, 1, '', 'float32')\n"
              f"try:\n    {code}\nexcept MemoryError:\n    print('MemoryError')\n")
    # (under AddressSanitizer, scripts/asan.sh, a 8 TiB request aborts unless its allocator may return null as
    # malloc does)
    asan = os.environ.get("ASAN_OPTIONS")
    env = {**os.environ, **({"ASAN_OPTIONS": asan + ":allocator_may_return_null=1"} if asan else {})}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "MemoryError", (done.returncode, done.stderr[-2000:])
