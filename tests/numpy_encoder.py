"""A plain NumPy implementation of the `bortengine._core` module interface (info functions and Encoder).

Two uses: the reference the native Encoder is checked against (float64 arithmetic, exact erf GELU), and a stand-in
for the native module while it is not built (tests/conftest.py installs it as bortengine._core then). It follows
the stub's semantics exactly: only tokens with mask 1 are computed, each sequence attends to its own unmasked
tokens, masked positions output zeros, token t keeps position id t whatever the mask, and the pooler reads
each sequence's first unmasked token (as the native encoder does); embeddings of another width are projected to H
(ELECTRA) and a relative position bias by the distance between unmasked tokens is added to the scores (MPNet).

Shapes: B = batch, T = tokens, n = unmasked tokens of one sequence, H = hidden, I = intermediate, V = vocab,
P = positions, Tt = token types.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

__version__ = "numpy-reference"
ISA = "numpy"

_erf = np.frompyfunc(math.erf, 1, 1)


def available_isas() -> list[str]:
    return [ISA]


def default_isa() -> str:
    return ISA


def kernel_name(isa: str = "") -> str:
    _check_isa(isa)
    return "gemm_f64_numpy_ref"


def int8_kernel_name(isa: str = "") -> str:
    _check_isa(isa)
    return "none (the stand-in runs float32 only)"


bf16_kernel_name = int8_kernel_name


def int8_kernel_names(isa: str = "") -> list[str]:
    return [int8_kernel_name(isa)]


bf16_kernel_names = int8_kernel_names


def cpu_info() -> dict:
    import os

    return {"vendor": "unknown", "model": "numpy reference", "flags": [], "available_isas": available_isas(),
            "default_isa": ISA, "logical_cpus": os.cpu_count() or 1}


def _check_isa(isa: str) -> None:
    if isa not in ("", ISA):
        raise ValueError(f"unknown isa {isa!r}; available: {available_isas()}")


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x) with erf, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """x [n,H] -> [n,H], over the last axis."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, num_heads: int,
              bias: Optional[np.ndarray] = None) -> np.ndarray:
    """q, k, v [n,H] of one sequence -> context [n,H]: softmax(Q K^T / sqrt(d) + bias) V per head; bias [heads,n,n]
    or None."""
    n, h = q.shape
    d = h // num_heads
    qh, kh, vh = (a.reshape(n, num_heads, d).transpose(1, 0, 2) for a in (q, k, v))   # [heads,n,d]
    scores = qh @ kh.transpose(0, 2, 1) / math.sqrt(d)                                 # [heads,n,n]
    if bias is not None:
        scores = scores + bias
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return (p @ vh).transpose(1, 0, 2).reshape(n, h)


def _f32(a: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a float32 C-contiguous array")
    if a.shape != shape:
        raise ValueError(f"{name} has shape {list(a.shape)}, expected {list(shape)}")
    return a


class Encoder:
    """NumPy twin of _core.Encoder (same constructor, setters, forward and properties)."""

    def __init__(self, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int, vocab_size: int,
                 max_position_embeddings: int, type_vocab_size: int, layer_norm_eps: float, num_threads: int,
                 isa: str = "", dtype: str = "float32", embedding_size: int = 0):
        _check_isa(isa)
        if dtype != "float32":
            raise ValueError(f"dtype {dtype!r}: {int8_kernel_name()}")
        if min(hidden_size, num_layers, num_heads, intermediate_size, vocab_size, max_position_embeddings,
               type_vocab_size) < 1 or hidden_size % num_heads or embedding_size < 0:
            raise ValueError("bad encoder sizes")
        self.H, self.D, self.heads, self.I = hidden_size, num_layers, num_heads, intermediate_size
        self.E = embedding_size or hidden_size
        self._projection = None
        self._position_bias = None
        self.V, self.P, self.Tt, self.eps = vocab_size, max_position_embeddings, type_vocab_size, layer_norm_eps
        self.num_threads = num_threads
        self._embeddings = None
        self._layers: list[Optional[tuple]] = [None] * num_layers
        self._pooler = None

    @property
    def num_threads(self) -> int:
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"num_threads must be >= 1, got {value}")
        self._num_threads = int(value)

    isa = property(lambda self: ISA)
    kernel = property(lambda self: kernel_name())
    ready = property(lambda self: self._embeddings is not None and all(x is not None for x in self._layers)
                     and (self._projection is not None or not self.projects_embeddings))
    has_pooler = property(lambda self: self._pooler is not None)
    projects_embeddings = property(lambda self: self.E != self.H)
    has_position_bias = property(lambda self: self._position_bias is not None)

    @property
    def packed_bytes(self) -> int:
        return sum(a.nbytes for layer in self._layers if layer for a in layer)

    def warm_caches(self, min_idle_s: float = 0.0) -> bool:
        return False    # nothing is packed: NumPy reads the arrays where they are

    warm_stats = property(lambda self: {"started": 0, "stopped": 0, "running": False})

    def set_embeddings(self, word, position, token_type, ln_weight, ln_bias) -> None:
        E = self.E
        self._embeddings = (_f32(word, (self.V, E), "word"), _f32(position, (self.P, E), "position"),
                            _f32(token_type, (self.Tt, E), "token_type"), _f32(ln_weight, (E,), "ln_weight"),
                            _f32(ln_bias, (E,), "ln_bias"))

    def set_embedding_projection(self, weight, bias) -> None:
        if not self.projects_embeddings:
            raise ValueError("embedding_size is hidden_size: this encoder has no embedding projection")
        self._projection = (_f32(weight, (self.H, self.E), "weight").astype(np.float64),
                            _f32(bias, (self.H,), "bias").astype(np.float64))

    def set_position_bias(self, table) -> None:
        """table [heads, 2P' - 1], P' >= P: column P' - 1 + d is the bias of a key d tokens after its query."""
        if table.ndim != 2 or table.shape[0] != self.heads or table.shape[1] % 2 == 0 or table.shape[1] < 2 * self.P - 1:
            raise ValueError(f"position bias has shape {list(table.shape)}, expected [{self.heads}, 2P - 1]")
        self._position_bias = table.astype(np.float64)

    def set_layer(self, index, q_w, q_b, k_w, k_b, v_w, v_b, ao_w, ao_b, ln1_w, ln1_b, i_w, i_b, o_w, o_b,
                  ln2_w, ln2_b) -> None:
        if not 0 <= index < self.D:
            raise ValueError(f"layer index {index} out of range [0, {self.D})")
        H, I = self.H, self.I
        shapes = [(H, H), (H,), (H, H), (H,), (H, H), (H,), (H, H), (H,), (H,), (H,), (I, H), (I,), (H, I), (H,),
                  (H,), (H,)]
        args = (q_w, q_b, k_w, k_b, v_w, v_b, ao_w, ao_b, ln1_w, ln1_b, i_w, i_b, o_w, o_b, ln2_w, ln2_b)
        self._layers[index] = tuple(_f32(a, s, f"layer arg {i}").astype(np.float64)
                                    for i, (a, s) in enumerate(zip(args, shapes)))

    def set_pooler(self, weight, bias) -> None:
        self._pooler = (_f32(weight, (self.H, self.H), "weight").astype(np.float64),
                        _f32(bias, (self.H,), "bias").astype(np.float64))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, pooler=False):
        if not self.ready:
            raise ValueError("encoder is not ready: set_embeddings and every set_layer first")
        for name, a in (("input_ids", input_ids), ("attention_mask", attention_mask),
                        ("token_type_ids", token_type_ids)):
            if a is not None and (not isinstance(a, np.ndarray) or a.dtype != np.int64 or a.ndim != 2
                                  or not a.flags.c_contiguous):
                raise ValueError(f"{name} must be an int64 C-contiguous [B,T] array")
        B, T = input_ids.shape
        if B < 1 or T < 1 or T > self.P:
            raise ValueError(f"input_ids shape {list(input_ids.shape)} invalid")
        mask = np.ones((B, T), np.int64) if attention_mask is None else attention_mask
        types = np.zeros((B, T), np.int64) if token_type_ids is None else token_type_ids
        if mask.shape != (B, T) or types.shape != (B, T):
            raise ValueError("mask/types shape differs from input_ids")
        if ((input_ids < 0) | (input_ids >= self.V)).any() or ((types < 0) | (types >= self.Tt)).any():
            raise ValueError("id out of range")
        if ((mask != 0) & (mask != 1)).any() or not mask.any(axis=1).all():
            raise ValueError("mask must be 0/1 with at least one 1 per row")
        if pooler and self._pooler is None:
            raise ValueError("no pooler set")

        word, pos, typ, ln_w, ln_b = (a.astype(np.float64) for a in self._embeddings)
        out = np.zeros((B, T, self.H), dtype=np.float32)
        for b in range(B):
            idx = np.flatnonzero(mask[b])                                   # [n]
            x = word[input_ids[b, idx]] + pos[idx] + typ[types[b, idx]]     # [n,H]
            x = layernorm(x, ln_w, ln_b, self.eps)
            if self._projection is not None:
                x = x @ self._projection[0].T + self._projection[1]             # [n,E] -> [n,H]
            bias = self._bias(len(idx))
            for layer in self._layers:
                x = self._layer(x, layer, bias)
            out[b, idx] = x
        pooled = None
        if pooler:
            w, bias = self._pooler
            first = mask.argmax(axis=1)                                      # first unmasked token per row
            cls = out[np.arange(B), first].astype(np.float64)               # [B,H]
            pooled = np.tanh(cls @ w.T + bias).astype(np.float32)
        return out, pooled

    def _bias(self, n: int) -> Optional[np.ndarray]:
        """The relative position bias [heads,n,n] of a sequence of n unmasked tokens, or None."""
        if self._position_bias is None:
            return None
        center = (self._position_bias.shape[1] - 1) // 2
        distance = np.arange(n)[None, :] - np.arange(n)[:, None]             # [n,n] key - query
        return self._position_bias[:, center + distance]

    def _layer(self, x: np.ndarray, layer: tuple, bias: Optional[np.ndarray]) -> np.ndarray:
        """x [n,H] -> [n,H]: post-LN BERT layer."""
        q_w, q_b, k_w, k_b, v_w, v_b, ao_w, ao_b, ln1_w, ln1_b, i_w, i_b, o_w, o_b, ln2_w, ln2_b = layer
        ctx = attention(x @ q_w.T + q_b, x @ k_w.T + k_b, x @ v_w.T + v_b, self.heads, bias)
        x = layernorm(ctx @ ao_w.T + ao_b + x, ln1_w, ln1_b, self.eps)
        ffn = gelu(x @ i_w.T + i_b) @ o_w.T + o_b                            # [n,I] -> [n,H]
        return layernorm(ffn + x, ln2_w, ln2_b, self.eps)
