"""How each op is called on the native module: a zero-argument runner per OpSpec that runs the op once as the
forward would (make_runner), the smallest call of each op kind (empty_call), and native encoders with random
weights (random_encoder) for the calibration forwards and for validation.

Weights and inputs are views of one block of random values (ValuePool): values do not change timings. GEMMs
cycle through copies of their packed weights whose total is rotation_bytes (twice the L3 cache by default), so
every call reads its weights from DRAM, as a forward of a model too big for the caches does; their warm twins call
one copy, as a forward of a model that fits does.

Shapes: B = batch, T = tokens per sequence, M = B·T token rows, H = hidden, I = intermediate, A = heads,
D = layers, V = vocab, P = positions, K/N = GEMM depth / output columns (weights are [N, K]).
"""
from __future__ import annotations

import math
from typing import Any, Callable

from bortengine.engine import core
from bortengine.profiling.errors import ProfileError
from bortengine.profiling.ops import (CALIBRATION_HEADS, CALIBRATION_INTERMEDIATE, CALIBRATION_VOCAB,
                                      LAYER_NORM_EPS, OpSpec, gemm_dtype, gemm_weight_bytes,
                                      qkv_gemm_before)
from bortengine.profiling.target import Target, int8_attention_name
from bortengine.profiling.timing import Settings
from bortengine.profiling.workload import Workload

Runner = Callable[[], Any]


class ValuePool:
    """A fixed block of random float32 values; weights and inputs are views of it (values do not change
    timings, and drawing fresh random numbers for every op would dominate the profiling time)."""

    SIZE = 1 << 23  # 32 MiB

    def __init__(self, seed: int = 0):
        import numpy as np

        self.np = np
        rng = np.random.default_rng(seed)
        self.values = rng.standard_normal(self.SIZE, dtype=np.float32)
        self.offset = 0

    def array(self, shape: tuple[int, ...], scale: float = 1.0):
        np = self.np
        n = int(np.prod(shape))
        if n > self.SIZE:
            out = np.resize(self.values, shape)
        else:
            if self.offset + n > self.SIZE:
                self.offset = 0
            out = self.values[self.offset:self.offset + n].reshape(shape)
            self.offset = (self.offset + 4099) % self.SIZE  # the next array starts elsewhere
        return out * np.float32(scale) if scale != 1.0 else out

    def ids(self, n: int, vocab: int, seed: int = 1):
        return self.np.random.default_rng(seed).integers(0, vocab, size=n, dtype=self.np.int64)

    def layernorm_weights(self, hidden: int):
        """gamma = 1, beta = 0 of a [hidden] LayerNorm."""
        return self.np.ones(hidden, self.np.float32), self.np.zeros(hidden, self.np.float32)


def rotation_bytes(target: Target, s: Settings) -> int:
    return int(s.rotation_factor * (target.l3_bytes or 32 << 20))


def weight_copies(spec: OpSpec, w: Workload, rotation: int) -> int:
    """The packed weight copies a GEMM op cycles: one when warm, else as many as the rotation holds (at most 512)."""
    if not spec.cold:
        return 1
    return max(1, min(512, math.ceil(rotation / (gemm_weight_bytes(spec, w) * spec.K * spec.N))))


def attention_is_bf16(w: Workload, isa: str) -> bool:
    """The int8 and bf16 engines run attention in bf16 where the CPU has AVX512_BF16 (int8_attention_name)."""
    return w.dtype != "float32" and "bf16" in int8_attention_name(isa)


# ====================================================================================== one op as the forward runs it
def make_runner(spec: OpSpec, w: Workload, pool: ValuePool, isa: str, rotation: int) -> tuple[Runner, int]:
    """A zero-argument callable that runs the op once as the forward would, and the GEMM weight copies it cycles."""
    if spec.kind == "gemm":
        return _gemm_runner(spec, w, pool, isa, rotation)
    if spec.kind == "attention":
        return _attention_runner(spec, w, pool, isa), 1
    if spec.kind == "layernorm":
        return _layernorm_runner(spec, w, pool, isa), 1
    if spec.kind == "embeddings":
        return _embeddings_runner(spec, w, pool, isa), 1
    if spec.kind == "call":
        return empty_call(spec.of, pool, w.num_threads, isa, w), 1
    if spec.kind == "forward":
        return _forward_runner(spec, w, pool, isa), 1
    raise ProfileError(f"unknown op kind {spec.kind!r}")


def _gemm_runner(spec: OpSpec, w: Workload, pool: ValuePool, isa: str, rotation: int) -> tuple[Runner, int]:
    """Shapes: a [M,K], weight [N,K], bias [N], residual [M,N]."""
    native, th = core(), w.num_threads
    a = pool.array((spec.M, spec.K))
    weight = pool.array((spec.N, spec.K), 0.02)
    bias = pool.array((spec.N,), 0.02)
    dtype = gemm_dtype(spec, w)
    copies = weight_copies(spec, w, rotation)
    if dtype == "int8":  # quantized once; the call quantizes its input rows, as the int8 forward does per layer
        q, scale = native.quantize_weights(weight)  # once; each copy only packs
        packed = [native.QuantizedLinear(q, scale, bias, isa) for _ in range(copies)]
    elif dtype == "bf16":  # rounded once; the call rounds its input rows, as the bf16 forward does per layer
        bits = native.to_bf16(weight, isa)
        packed = [native.Bf16Linear(bits, bias, isa) for _ in range(copies)]
    else:
        packed = [native.PackedLinear(weight, bias, isa) for _ in range(copies)]
    residual = pool.array((spec.M, spec.N)) if spec.epilogue == "residual" else None
    state = [0]

    def run():
        state[0] = (state[0] + 1) % copies
        return packed[state[0]](a, spec.epilogue, residual, th)

    return run, copies


def _attention_runner(spec: OpSpec, w: Workload, pool: ValuePool, isa: str) -> Runner:
    """Shapes: qkv [M, 3 H] of B sequences of T tokens; after_qkv: written by the QKV GEMM (x [M, H]) just before;
    position_bias: [A, 2T - 1] added to the scores by key - query distance (MPNet's)."""
    lens = [w.seq_len] * w.batch_size
    native, th, bf16 = core(), w.num_threads, attention_is_bf16(w, isa)
    bias = pool.array((spec.heads, 2 * w.seq_len - 1), 0.5) if spec.position_bias else None
    if spec.after_qkv:
        gemm, _ = _gemm_runner(qkv_gemm_before(spec, w), w, pool, isa, rotation=0)
        return lambda: native.attention(gemm(), lens, spec.heads, th, isa, bf16, bias)
    qkv = pool.array((w.tokens, 3 * spec.heads * spec.head_dim))
    return lambda: native.attention(qkv, lens, spec.heads, th, isa, bf16, bias)


def _layernorm_runner(spec: OpSpec, w: Workload, pool: ValuePool, isa: str) -> Runner:
    """Shapes: x [M,H]."""
    x = pool.array((w.tokens, spec.hidden))
    g, b = pool.layernorm_weights(spec.hidden)
    native, th = core(), w.num_threads
    return lambda: native.layernorm(x, g, b, LAYER_NORM_EPS, None, th, isa)


def _embeddings_runner(spec: OpSpec, w: Workload, pool: ValuePool, isa: str) -> Runner:
    """Shapes: ids/positions/types [M] into word [V,H], position [P,H], token_type [2,H]."""
    np, native, th, h, T = pool.np, core(), w.num_threads, spec.hidden, w.seq_len
    word = pool.array((spec.vocab, h), 0.02)
    position = pool.array((max(T, 2), h), 0.02)
    token_type = pool.array((2, h), 0.02)
    g, b = pool.layernorm_weights(h)
    ids = pool.ids(w.tokens, spec.vocab)
    positions = np.tile(np.arange(T, dtype=np.int64), w.batch_size)
    types = np.zeros(w.tokens, np.int64)
    return lambda: native.embed_layernorm(ids, positions, types, word, position, token_type, g, b, LAYER_NORM_EPS,
                                          th, isa)


def _forward_runner(spec: OpSpec, w: Workload, pool: ValuePool, isa: str) -> Runner:
    """A forward on B sequences of T tokens of a tiny calibration encoder (with its pooler), or of a residency
    probe's encoder (spec.intermediate set)."""
    heads, inter, head = ((spec.heads, spec.intermediate, spec.head) if spec.intermediate else
                          (CALIBRATION_HEADS, CALIBRATION_INTERMEDIATE, "pooler"))
    enc, tables = random_encoder(pool, spec.layers, heads, spec.hidden, inter, CALIBRATION_VOCAB,
                                 max(w.seq_len, 2), head, w.num_threads, isa, dtype=w.dtype)
    ids = pool.ids(w.tokens, CALIBRATION_VOCAB).reshape(w.batch_size, w.seq_len)

    def forward():
        return enc.forward(ids, None, None, True), tables

    return forward


def empty_call(kind: str, pool: ValuePool, th: int, isa: str, w: Workload) -> Runner:
    """The smallest call of an op: what a single-op call costs beyond the work (binding, team start, join)."""
    np, native = pool.np, core()
    if kind == "gemm":  # a layer GEMM's call in the workload's dtype (int8: quantize one row, then the GEMM)
        a = pool.array((1, 1))
        linear = {"int8": native.QuantizedLinear, "bf16": native.Bf16Linear}.get(w.dtype, native.PackedLinear)
        lin = linear(pool.array((1, 1)), bias=None, isa=isa)
        return lambda: lin(a, "none", None, th)
    if kind == "attention":
        qkv = pool.array((1, 3))
        bf16 = attention_is_bf16(w, isa)
        return lambda: native.attention(qkv, [1], 1, th, isa, bf16)
    if kind == "layernorm":
        x = pool.array((1, 2))
        g, b = pool.layernorm_weights(2)
        return lambda: native.layernorm(x, g, b, LAYER_NORM_EPS, None, th, isa)
    if kind == "embeddings":
        table = pool.array((2, 2))
        g, b = pool.layernorm_weights(2)
        z = np.zeros(1, np.int64)
        return lambda: native.embed_layernorm(z, z, z, table, table, table, g, b, LAYER_NORM_EPS, th, isa)
    raise ProfileError(f"unknown op kind {kind!r}")


def random_encoder(pool: ValuePool, D: int, A: int, H: int, I: int, V: int, P: int, head: str, threads: int,
                   isa: str, word=None, dtype: str = "float32"):
    """A native Encoder with random weights (views of the pool; set_layer packs copies, so layers are distinct),
    and the embedding tables it references (keep them alive as long as the encoder).

    Shapes: word [V,H], position [P,H], token_type [2,H]; per layer q/k/v/ao [H,H], i [I,H], o [H,I], biases and
    LayerNorms [H] or [I].
    """
    np = pool.np
    enc = core().Encoder(H, D, A, I, V, P, 2, LAYER_NORM_EPS, threads, isa, dtype)
    ones, zeros = pool.layernorm_weights(H)
    word = pool.array((V, H), 0.02) if word is None else word
    emb = (np.ascontiguousarray(word), pool.array((P, H), 0.02).copy(), pool.array((2, H), 0.02).copy(), ones,
           zeros)
    enc.set_embeddings(*emb)
    s = 0.02
    for layer in range(D):
        enc.set_layer(layer, pool.array((H, H), s), pool.array((H,), s), pool.array((H, H), s),
                      pool.array((H,), s), pool.array((H, H), s), pool.array((H,), s), pool.array((H, H), s),
                      pool.array((H,), s), ones, zeros, pool.array((I, H), s), pool.array((I,), s),
                      pool.array((H, I), s), pool.array((H,), s), ones, zeros)
    if head != "none":
        enc.set_pooler(pool.array((H, H), s), pool.array((H,), s))
    return enc, emb  # the caller keeps the embedding tables alive as long as the encoder

