// single_ops.h: each op on its own, behind the bindings' single-op functions (tests, benchmarks, the profiler,
// which times every op of a forward through them). Arrays come in with their shapes (ops::ArrayRef); each op has a
// check_<op> that checks shapes, values and the thread count (std::invalid_argument with both shapes in the
// message) and returns the shape of its output, so the caller can allocate it, and a runner that checks again
// (shapes only: cheap), sizes a workspace of its own and runs the op on a team of `threads` threads. References
// (<op>_ref, kernels_ref.h) take the same checks.
//
// Shapes: M = rows, K = depth, N = output columns; Ntok = packed tokens, H = hidden, V = vocab, P = positions,
// Tt = token types. Linear weights in torch layout [N, K].
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels.h"
#include "ops.h"

namespace bortengine {
namespace ops {

// ----- float32

// A workspace kept from one call to the next (grown, never shrunk), as the encoder keeps its own: the profiler
// times these single ops to predict a forward's, so they must not pay an allocation per call that the forward
// does not pay. Calls on one object take turns on it.
template <class Scratch>
struct KeptWorkspace {
    std::mutex mu;
    Scratch scratch;
};

// A torch Linear packed once for one path: weight w [N, K]; bias [N] is borrowed (the caller keeps it alive).
struct PackedLinear {
    PackedMatrix w;
    const float* bias = nullptr;
    std::unique_ptr<KeptWorkspace<GemmScratch>> work = std::make_unique<KeptWorkspace<GemmScratch>>();
};
PackedLinear make_packed_linear(const KernelTable& kt, const ArrayRef<float>& w, const ArrayRef<float>& bias);
// c [M, N] = epilogue(a [M, K] · w^T + bias), residual [M, N] for the residual epilogue (else ignored).
Shape check_linear(const PackedLinear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
                   const ArrayRef<float>& residual);
void linear(const PackedLinear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
            const ArrayRef<float>& residual, float* c);
// The reference: a [M, K], w [N, K], bias [N] or absent, residual as above -> c [M, N].
Shape check_gemm_ref(const ArrayRef<float>& a, const ArrayRef<float>& w, const ArrayRef<float>& bias,
                     Epilogue::Kind kind, const ArrayRef<float>& residual);
void gemm_ref(const ArrayRef<float>& a, const ArrayRef<float>& w, const ArrayRef<float>& bias, Epilogue::Kind kind,
              const ArrayRef<float>& residual, float* c);

// y [M, N] = LayerNorm(x (+ r)) * g + b over rows: x [M, N], g, b [N], r [M, N] or absent.
Shape check_layernorm(int threads, const ArrayRef<float>& x, const ArrayRef<float>& g, const ArrayRef<float>& b,
                      const ArrayRef<float>& r);
void layernorm(const KernelTable& kt, int threads, const ArrayRef<float>& x, const ArrayRef<float>& g,
               const ArrayRef<float>& b, float eps, const ArrayRef<float>& r, float* y);
void layernorm_ref(const ArrayRef<float>& x, const ArrayRef<float>& g, const ArrayRef<float>& b, float eps,
                   const ArrayRef<float>& r, float* y);

// ctx [Ntok, H] = attention of qkv [Ntok, 3H], sequences of lengths seq_lens (each >= 1, summing to Ntok) packed
// end to end, `heads` heads dividing H; bias absent, or a relative position bias table [heads, 2P - 1] (ops.h
// position_bias) with P >= the longest sequence, added to the scores.
Shape check_attention(int threads, const ArrayRef<float>& qkv, const std::vector<int>& seq_lens, int heads,
                      const ArrayRef<float>& bias);
// The kernel: the path's fp32 attention, or with bf16 the int8 and bf16 encoders' (throws unless the CPU has
// AVX512_BF16 and isa is "avx512"): the best, or the bf16_attention_variants() entry named `kernel`.
AttentionFn attention_kernel(const std::string& isa, bool bf16, const std::string& kernel = "");
void attention(const KernelTable& kt, AttentionFn kernel, int threads, const ArrayRef<float>& qkv,
               const std::vector<int>& seq_lens, int heads, const ArrayRef<float>& bias, float* ctx);
void attention_ref(const ArrayRef<float>& qkv, const std::vector<int>& seq_lens, int heads,
                   const ArrayRef<float>& bias, float* ctx);

// y [Ntok, H] = LayerNorm(word[ids] + position[positions] + token_type[types]) * g + b: ids, positions, types
// [Ntok] (each within its table), word [V, H], position [P, H], token_type [Tt, H], g, b [H].
Shape check_embed_layernorm(int threads, const ArrayRef<std::int64_t>& ids, const ArrayRef<std::int64_t>& positions,
                            const ArrayRef<std::int64_t>& types, const ArrayRef<float>& word,
                            const ArrayRef<float>& position, const ArrayRef<float>& token_type,
                            const ArrayRef<float>& g, const ArrayRef<float>& b);
void embed_layernorm(const KernelTable& kt, int threads, const ArrayRef<std::int64_t>& ids,
                     const ArrayRef<std::int64_t>& positions, const ArrayRef<std::int64_t>& types,
                     const ArrayRef<float>& word, const ArrayRef<float>& position, const ArrayRef<float>& token_type,
                     const ArrayRef<float>& g, const ArrayRef<float>& b, float eps, float* y);

// y[i] = gelu(x[i]) (exact erf) over n elements, on one thread.
void gelu(const KernelTable& kt, std::ptrdiff_t n, const float* x, float* y);
void gelu_ref(std::ptrdiff_t n, const float* x, float* y);

// ----- int8 (the scheme of Int8KernelTable, kernels.h)

// A torch Linear quantized and packed once for one int8 path: from float w [N, K] (quantized here), or from s8
// w [N, K] in [-127, 127] with scale [N]; bias [N] is borrowed.
struct QuantizedLinear {
    QuantizedMatrix w;
    const float* bias = nullptr;
    std::unique_ptr<KeptWorkspace<QuantScratch>> work = std::make_unique<KeptWorkspace<QuantScratch>>();
};
QuantizedLinear make_quantized_linear(const Int8KernelTable& kt, const ArrayRef<float>& w,
                                      const ArrayRef<float>& bias);
QuantizedLinear make_quantized_linear(const Int8KernelTable& kt, const ArrayRef<std::int8_t>& w,
                                      const ArrayRef<float>& scale, const ArrayRef<float>& bias);
// c [M, N] as linear, or with raw the exact int32 sums minus zero point x weight sums (c then holds int32).
Shape check_quantized_linear(const QuantizedLinear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
                             const ArrayRef<float>& residual);
void quantized_linear(const QuantizedLinear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
                      const ArrayRef<float>& residual, bool raw, void* c);

// w [N, K] -> q int8 [N, K], scale [N] (ops.h quantize_weights). Returns [N, K].
Shape check_quantize_weights(const ArrayRef<float>& w);
void quantize_weights(const ArrayRef<float>& w, std::int8_t* q, float* scale);
// a [M, K] -> q u8 [M, Kp] (Kp = K padded to the path's k-group; the reference: Kp = K), scale [M], zp [M].
// Returns [M, Kp].
Shape check_quantize_rows(const Int8KernelTable& kt, const ArrayRef<float>& a);
void quantize_rows(const Int8KernelTable& kt, const ArrayRef<float>& a, std::uint8_t* q, float* scale,
                   std::int32_t* zp);
Shape check_quantize_rows_ref(const ArrayRef<float>& a);
void quantize_rows_ref(const ArrayRef<float>& a, std::uint8_t* q, float* scale, std::int32_t* zp);
// c [M, N] = exact int32 sum_k (qa[i, k] - zp[i]) * w[j, k]: qa u8 [M, K], zp [M], w s8 [N, K].
Shape check_gemm_u8s8_i32_ref(const ArrayRef<std::uint8_t>& qa, const ArrayRef<std::int32_t>& zp,
                              const ArrayRef<std::int8_t>& w);
void gemm_u8s8_i32_ref(const ArrayRef<std::uint8_t>& qa, const ArrayRef<std::int32_t>& zp,
                       const ArrayRef<std::int8_t>& w, std::int32_t* c);

// ----- bf16 (the scheme of Bf16KernelTable, kernels.h)

// A torch Linear as bf16, packed once for one bf16 kernel: from float w [N, K] (rounded here), or from bf16 w
// [N, K] given as its uint16 bits; bias [N] is borrowed.
struct Bf16Linear {
    Bf16Matrix w;
    const float* bias = nullptr;
    std::unique_ptr<KeptWorkspace<Bf16Scratch>> work = std::make_unique<KeptWorkspace<Bf16Scratch>>();
};
Bf16Linear make_bf16_linear(const Bf16KernelTable& kt, const ArrayRef<float>& w, const ArrayRef<float>& bias);
Bf16Linear make_bf16_linear(const Bf16KernelTable& kt, const ArrayRef<std::uint16_t>& w,
                            const ArrayRef<float>& bias);
// c [M, N] = epilogue(bf16(a [M, K]) · w^T + bias), residual [M, N] for the residual epilogue (else ignored).
Shape check_linear(const Bf16Linear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
                   const ArrayRef<float>& residual);
void linear(const Bf16Linear& lin, int threads, const ArrayRef<float>& a, Epilogue::Kind kind,
            const ArrayRef<float>& residual, float* c);
// y = bf16 bits of x (any shape), rounded as kernel kt rounds (what its GEMM does to A, and the ops tier to
// weights); the reference: the same rule in plain code.
void round_bf16(const Bf16KernelTable& kt, const ArrayRef<float>& x, std::uint16_t* y);
void round_bf16_ref(const ArrayRef<float>& x, std::uint16_t* y);

// ----- sentence pooling (sentence-transformers' Pooling, then Normalize): hidden [B, T, H], mask [B, T] (its
// values weigh the tokens, as sentence-transformers' float mask does) -> [B, H x modes], the modes side by side
// in order. Row by row, each row's result the same whatever else is in the batch. For a served batch of short
// texts it takes microseconds where NumPy's dozen calls released and re-took the GIL at each (bindings.cc).
enum class PoolMode { Cls, Max, Mean, MeanSqrtLen };
Shape check_pool(const ArrayRef<float>& hidden, const ArrayRef<std::int64_t>& mask, const std::vector<PoolMode>& modes);
void pool(const ArrayRef<float>& hidden, const ArrayRef<std::int64_t>& mask, const std::vector<PoolMode>& modes,
          bool normalize, float* out);

}  // namespace ops
}  // namespace bortengine
