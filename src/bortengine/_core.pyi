"""Type stub of the private native module built from csrc/ (bindings.cc). Use the public API in bortengine.

Conventions: float arrays are float32, C-contiguous; id arrays are int64, C-contiguous. Linear weights are in
Hugging Face / torch layout [out_features, in_features]; the engine packs them once for its GEMM. Every compute
call releases the GIL. Bad arguments raise ValueError with both shapes in the message.

Shapes: B = batch, T = tokens per sequence, H = hidden size, I = intermediate (FFN) size, V = vocab size,
P = max positions, Tt = token types, M/N/K = GEMM rows/cols/depth.
"""
from typing import Any, Optional, Sequence

import numpy as np

__version__: str

def available_isas() -> list[str]:
    """Kernel paths compiled in AND runnable on this CPU and OS, best first (e.g. ["avx512", "avx2", "scalar"])."""

def default_isa() -> str:
    """The path the engine uses unless told otherwise: $BORTENGINE_ISA if set (ValueError if this CPU cannot run
    it or it is unknown), else the best available."""

def cpu_info() -> dict:
    """{'vendor', 'model', 'flags': [...], 'available_isas', 'default_isa', 'logical_cpus'} read from CPUID."""

def kernel_name(isa: str = "") -> str:
    """Name of the GEMM microkernel of a path, e.g. 'gemm_f32_avx512_14x32'."""

def bf16_kernel_name(isa: str = "") -> str:
    """The bf16 GEMM kernel a path runs, e.g. 'gemm_bf16_amx_32x32' (AMX tiles), 'gemm_bf16_avx512bf16_14x32'
    (AVX512_BF16), else its emulation."""

def bf16_kernel_names(isa: str = "") -> list[str]:
    """Every bf16 GEMM kernel that runs on a path here, best first (avx512: the AMX kernel where the CPU and OS allow
    it, the AVX512_BF16 kernel where the CPU has it, then the AVX-512F emulation 'gemm_bf16_avx512_12x32'); pass one
    as kernel= to force it."""

def forward_ops(isa: str = "") -> list[dict]:
    """The steps of an encoder forward in order (csrc/forward.h), one dict per step, as encoders of kernel path
    `isa` ("" = default_isa()) run them on this CPU:

    name: "embeddings", "embeddings_project", "qkv", "attention", "attention_out", "ln1", "ffn_in", "ffn_out", "ln2",
        "scatter", "pooler_gather", "pooler" (unique).
    trace: the Encoder.last_trace / Engine.op_times key the step's time is charged to ("embeddings", "qkv",
        "attention", "attention_out", "layernorm", "ffn_in", "ffn_out", "output").
    kind: "embeddings" | "gemm" | "attention" | "layernorm" | "scatter" | "gather".
    scope: "forward" (once per forward) | "layer" (once per encoder layer) | "pooler" (when the pooler output is
        asked for).
    when: "always" | "padded" (only when some position of the batch has mask 0: the scatter back to [B,T,H]) |
        "projected" (only in encoders whose embedding_size differs from the hidden size, ELECTRA's: never BERT's).
    barriers: {"float32": n, "int8": n, "bf16": n}: team barriers (parallel_for calls) the step costs in a forward
        of that dtype (an int8 GEMM quantizes its rows in a team op of its own first; a bf16 GEMM rounds its input
        inside the GEMM).
    GEMM steps only: K, N ("H", "3H", "I" or "E", the embedding width), epilogue ("none" | "residual" | "gelu" |
        "tanh"), rows ("tokens": the batch's real tokens | "sequences": B), low_precision (whether int8 and bf16
        encoders run it on their own kernels; the pooler and the embeddings' projection stay float32), int8_in_bf16
        (whether int8 encoders run it on the bf16 kernels where those run on AMX tiles: FFN out), kernels
        ({dtype: the kernels' dtype in an encoder of that dtype on this path and CPU})."""

class Encoder:
    """A BERT encoder (embeddings + D layers + optional pooler) on packed weights, run in one call per forward;
    optionally with embeddings of another width projected to H (ELECTRA) and a relative position bias in every
    layer's attention (MPNet)."""

    def __init__(
        self, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int, vocab_size: int,
        max_position_embeddings: int, type_vocab_size: int, layer_norm_eps: float, num_threads: int,
        isa: str = "", dtype: str = "float32", embedding_size: int = 0,
    ) -> None:
        """dtype "int8": the four linears of each layer run on the int8 kernels (see QuantizedLinear); "bf16": on
        the bf16 kernels (see Bf16Linear). embedding_size: E, the embedding tables' width (0: hidden_size); when it
        differs from hidden_size the encoder needs set_embedding_projection."""
    def set_embeddings(self, word: np.ndarray, position: np.ndarray, token_type: np.ndarray,
                       ln_weight: np.ndarray, ln_bias: np.ndarray) -> None:
        """word [V,E], position [P,E], token_type [Tt,E], ln_* [E]. The arrays are referenced, not copied."""
    def set_embedding_projection(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """weight [H,E], bias [H]: x = LayerNorm(embeddings) @ weight.T + bias, in float32 whatever the dtype
        (ELECTRA's embeddings_project). Only for embedding_size != hidden_size."""
    def set_position_bias(self, table: np.ndarray) -> None:
        """table [heads, 2P - 1] float32 with P >= max_position_embeddings: column P - 1 + d is each head's bias for
        a key d tokens after its query, added to the scaled attention scores of every layer (MPNet). Copied."""
    def set_layer(self, index: int,
                  q_w: np.ndarray, q_b: np.ndarray, k_w: np.ndarray, k_b: np.ndarray, v_w: np.ndarray, v_b: np.ndarray,
                  ao_w: np.ndarray, ao_b: np.ndarray, ln1_w: np.ndarray, ln1_b: np.ndarray,
                  i_w: np.ndarray, i_b: np.ndarray, o_w: np.ndarray, o_b: np.ndarray,
                  ln2_w: np.ndarray, ln2_b: np.ndarray, dtype: str = "") -> None:
        """q/k/v/ao_w [H,H], *_b [H], i_w [I,H], i_b [I], o_w [H,I], o_b [H], ln* [H]. Packed (copied). dtype: this
        layer's arithmetic ("": the encoder's; "float32" in an int8 or bf16 encoder, linears and attention; "bf16"
        in an int8 encoder, its linears)."""
    def set_layer_quantized(self, index: int, quantized: dict, q_b: np.ndarray, k_b: np.ndarray, v_b: np.ndarray,
                            ao_b: np.ndarray, ln1_w: np.ndarray, ln1_b: np.ndarray, i_b: np.ndarray, o_b: np.ndarray,
                            ln2_w: np.ndarray, ln2_b: np.ndarray) -> None:
        """int8 encoders: pre-quantized weights. quantized has {q,k,v,ao,i,o}_w int8 [out,in] in [-127, 127] and
        {q,k,v,ao,i,o}_s float32 [out] per-channel scales (w ~= q * s)."""
    def set_layer_bf16(self, index: int, bf16: dict, q_b: np.ndarray, k_b: np.ndarray, v_b: np.ndarray,
                       ao_b: np.ndarray, ln1_w: np.ndarray, ln1_b: np.ndarray, i_b: np.ndarray, o_b: np.ndarray,
                       ln2_w: np.ndarray, ln2_b: np.ndarray) -> None:
        """bf16 encoders: weights already bf16 (a BF16 checkpoint's). bf16 has {q,k,v,ao,i,o}_w uint16 [out,in],
        the bits of the bf16 weights; packed as they are (subnormals read as zero)."""
    def set_pooler(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """weight [H,H], bias [H]: pooler_output = tanh(weight @ h + bias), h = the first token with mask 1 of each
        row (position 0 for right-padded input, as transformers; transformers reads position 0 even if masked)."""
    def forward(self, input_ids: np.ndarray, attention_mask: Optional[np.ndarray] = None,
                token_type_ids: Optional[np.ndarray] = None, pooler: bool = False, threads: int = 0
                ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """input_ids [B,T] int64; attention_mask [B,T] int64 of 0/1 or None (all ones); token_type_ids [B,T] int64
        or None (zeros). Returns (last_hidden_state [B,T,H], pooler_output [B,H] or None). threads: the threads of
        this forward, at most num_threads (0: num_threads); concurrent forwards run side by side, each in its own workspace.

        Only tokens with mask 1 are computed (sequences packed end to end); rows of masked positions are zeros.
        Each row needs at least one token with mask 1. Token t keeps position id t whatever the mask."""
    num_threads: int
    @property
    def isa(self) -> str: ...
    @property
    def kernel(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def attention_kernel(self) -> str:
        """'attention_f32_<isa>', or for int8 and bf16 encoders where has_bf16_attention() the best of
        bf16_attention_names()."""
    trace: bool
    @property
    def last_trace(self) -> dict[str, float]:
        """With trace on: seconds per op kind of the last forward (embeddings, qkv, attention, attention_out,
        layernorm, ffn_in, ffn_out, output), summed over layers, each including its closing barrier."""
    @property
    def last_trace_barriers(self) -> dict[str, int]:
        """With trace on: team barriers (parallel_for calls) per step of forward_ops() in the last forward, summed
        over layers (0 for steps that did not run). For tests: what forward_ops()' barrier counts must add up to."""
    @property
    def layer_dtypes(self) -> list[str]:
        """Each layer's arithmetic: the encoder's dtype, or what set_layer(dtype=...) gave it."""
    @property
    def packed_bytes(self) -> int: ...
    def warm_caches(self, min_idle_s: float = 0.0) -> bool:
        """Starts reading the packed weights back into the caches on a background thread (on another CPU than the
        caller's), if no forward is running and none has ended, nor reads started, for min_idle_s seconds; returns
        at once, True if it started (False also for a caller allowed one CPU only). A forward stops the reads."""
    @property
    def warm_stats(self) -> dict[str, Any]:
        """For tests: {"started": reads started, "stopped": of those, ended by a forward, "running": bool}."""
    @property
    def ready(self) -> bool: ...
    @property
    def has_pooler(self) -> bool: ...
    @property
    def projects_embeddings(self) -> bool:
        """Whether the forward runs embeddings_project (embedding_size != hidden_size: ELECTRA)."""
    @property
    def has_position_bias(self) -> bool:
        """Whether set_position_bias gave every layer's attention a relative position bias (MPNet)."""

# Single ops, for tests, benchmarks and the profiler. isa="" means default_isa(). Each runs its own thread team.
def gemm(a: np.ndarray, w: np.ndarray, bias: Optional[np.ndarray] = None, epilogue: str = "none",
         residual: Optional[np.ndarray] = None, num_threads: int = 1, isa: str = "") -> np.ndarray:
    """a [M,K] @ w[N,K]^T + bias[N], then epilogue: 'none', 'gelu' (exact erf), 'tanh', 'residual'
    (+ residual [M,N]). Packs w on every call (use PackedLinear to time the GEMM alone)."""
def gemm_ref(a: np.ndarray, w: np.ndarray, bias: Optional[np.ndarray] = None, epilogue: str = "none",
             residual: Optional[np.ndarray] = None) -> np.ndarray:
    """Plain-loop reference (double accumulation) of gemm."""

class PackedLinear:
    """w [N,K] packed once for one ISA path; __call__(a [M,K]) -> [M,N] as gemm."""
    def __init__(self, w: np.ndarray, bias: Optional[np.ndarray] = None, isa: str = "") -> None: ...
    def __call__(self, a: np.ndarray, epilogue: str = "none", residual: Optional[np.ndarray] = None,
                 num_threads: int = 1) -> np.ndarray: ...

def layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, residual: Optional[np.ndarray] = None,
              num_threads: int = 1, isa: str = "") -> np.ndarray:
    """LayerNorm(x [+ residual]) over the last axis of x [M,N]."""
def layernorm_ref(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float,
                  residual: Optional[np.ndarray] = None) -> np.ndarray: ...
def attention(qkv: np.ndarray, seq_lens: Sequence[int], num_heads: int, num_threads: int = 1,
              isa: str = "", bf16: bool = False, position_bias: Optional[np.ndarray] = None,
              kernel: str = "") -> np.ndarray:
    """qkv [Ntok, 3H] (Q | K | V, sequences packed end to end, lengths seq_lens summing to Ntok) -> context
    [Ntok, H]: softmax(Q K^T / sqrt(H/num_heads) + bias) V per sequence and head. bf16: the int8 and bf16 encoders'
    attention (bf16 dot products, fp32 softmax; needs isa "avx512" and AVX512_BF16). position_bias: None, or
    [num_heads, 2P - 1] with P >= every length: bias[h, P - 1 + j - i] is added to the score of query i, key j.
    kernel: with bf16, one of bf16_attention_names() ("": the best)."""
def bf16_attention_names() -> list[str]:
    """The bf16 attentions that run here, best first: 'attention_bf16_amx' (AMX tiles), 'attention_bf16_avx512'."""
def has_bf16_attention() -> bool:
    """Whether the int8 and bf16 encoders of this CPU and build run a bf16 attention: AVX512_BF16 and the avx512
    path, and AMX tiles or a CPU not Intel's (vdpbf16ps alone ran attention slower than fp32 on Intel cores).
    bf16_attention_names() lists the bf16 attentions that can run, which attention(bf16=True) runs by name."""
def attention_ref(qkv: np.ndarray, seq_lens: Sequence[int], num_heads: int,
                  position_bias: Optional[np.ndarray] = None) -> np.ndarray: ...
def gelu(x: np.ndarray, isa: str = "") -> np.ndarray: ...
def gelu_ref(x: np.ndarray) -> np.ndarray: ...
def embed_layernorm(ids: np.ndarray, positions: np.ndarray, types: np.ndarray, word: np.ndarray,
                    position: np.ndarray, token_type: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float,
                    num_threads: int = 1, isa: str = "") -> np.ndarray:
    """ids, positions, types [Ntok] int64 -> LayerNorm(word[ids] + position[positions] + token_type[types]) [Ntok, H]."""

# int8. Weights: per output channel, symmetric s8 in [-127, 127], scale = max|w| / 127. Activations: per row
# (token), asymmetric u8 with a zero point; int32 sums; dequantization fused into the epilogue.
def int8_kernel_name(isa: str = "") -> str:
    """e.g. 'gemm_u8s8_amx_32x32' (AVX-512 uses AMX tiles where the CPU and OS allow them, else VNNI when the CPU
    has it, else the AVX2 int8 kernel)."""
def int8_kernel_names(isa: str = "") -> list[str]:
    """Every int8 GEMM kernel that runs on a path here, best first; pass one as kernel= to force it."""
def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [N,K] float32 -> (q int8 [N,K], scale float32 [N])."""
def quantize_rows(a: np.ndarray, isa: str = "", kernel: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a [M,K] -> (q uint8 [M, K padded to the kernel's k-group], scale [M], zero point int32 [M])."""
def quantize_rows_ref(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def gemm_u8s8_i32_ref(qa: np.ndarray, zp: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact int32 sum_k (qa[i,k] - zp[i]) * w[j,k]."""

class QuantizedLinear:
    """w float32 [N,K] (quantized here) or int8 [N,K] with scale [N]; __call__(a [M,K]) -> [M,N] float32, or with
    raw=True the exact int32 sums minus zero point x weight sums."""
    def __init__(self, w: np.ndarray, scale: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                 isa: str = "", kernel: str = "") -> None: ...
    def __call__(self, a: np.ndarray, epilogue: str = "none", residual: Optional[np.ndarray] = None,
                 num_threads: int = 1, raw: bool = False) -> np.ndarray: ...
    N: int
    K: int
    kernel: str

# bf16. Weights rounded to bf16 once, activations as each GEMM copies its A blocks (round to nearest even, NaN
# kept, subnormals to a signed zero: vcvtneps2bf16's rule on every variant), exact bf16 products accumulated in
# fp32, the fp32 epilogue. bf16 values cross as their uint16 bits.
def to_bf16(x: np.ndarray, isa: str = "", kernel: str = "") -> np.ndarray:
    """x float32 (any shape) -> uint16 bf16 bits of the same shape, rounded as the kernel rounds A."""
def to_bf16_ref(x: np.ndarray) -> np.ndarray:
    """The reference rounding: the nearer bf16 neighbour, the even one on a tie."""

class Bf16Linear:
    """w float32 [N,K] (rounded here) or uint16 [N,K] (bf16 bits, e.g. a BF16 checkpoint's tensor) packed once for
    a bf16 kernel of a path (kernel="": the path's best, see bf16_kernel_names); __call__(a [M,K]) -> [M,N] float32
    as gemm, with a rounded to bf16."""
    def __init__(self, w: np.ndarray, bias: Optional[np.ndarray] = None, isa: str = "", kernel: str = "") -> None: ...
    def __call__(self, a: np.ndarray, epilogue: str = "none", residual: Optional[np.ndarray] = None,
                 num_threads: int = 1) -> np.ndarray: ...
    N: int
    K: int
    kernel: str
