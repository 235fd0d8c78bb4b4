// ops.h: operations over whole tensors. Ops check shapes (throwing std::invalid_argument with both shapes),
// split the work across the threads of the current OpenMP team and call one ISA's kernels.
//
// Team contract: the *_team functions must be called by every thread of the enclosing parallel region (or
// outside any region, where the caller is a team of one); they end with a barrier, so their outputs are
// complete for all threads on return. They never throw: validate before entering the region.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "buffer.h"
#include "kernels.h"

namespace bortengine {
namespace ops {

// A GEMM B operand packed once for one ISA: from a torch Linear weight w [N, K] (out x in).
struct PackedMatrix {
    const KernelTable* kt = nullptr;
    int K = 0, N = 0;
    AlignedBuffer data;
    std::size_t bytes() const { return data.bytes(); }
};
PackedMatrix pack_linear(const KernelTable& kt, const float* w, int N, int K);

// An int8 GEMM B operand: a torch Linear weight quantized per output channel (symmetric, s8 in [-127, 127]),
// packed for one int8 path, with its scales and per-channel sums (for the activations' zero points).
struct QuantizedMatrix {
    const Int8KernelTable* kt = nullptr;
    int K = 0, N = 0;
    AlignedArray<std::int8_t> data;
    std::vector<float> scale;       // [N]
    std::vector<std::int32_t> sum;  // [N] sum over k of the s8 weights
    std::size_t bytes() const { return data.bytes() + scale.size() * 4 + sum.size() * 4; }
};
// From float w [N, K]: scale[n] = max|w[n, :]| / 127 (1 if the row is zero), q = clamp(nearbyint(w / scale)).
QuantizedMatrix quantize_linear(const Int8KernelTable& kt, const float* w, int N, int K);
// From already quantized s8 w [N, K] and scales [N] (pre-quantized exports).
QuantizedMatrix pack_quantized_linear(const Int8KernelTable& kt, const std::int8_t* w, const float* scale, int N,
                                      int K);

// Per-call buffers of the int8 GEMM: the quantized activations and their per-row scale and zero point.
struct QuantScratch {
    AlignedArray<std::uint8_t> q;
    AlignedArray<float> scale;
    AlignedArray<std::int32_t> zp;
    std::ptrdiff_t ldq = 0;
    // Sizes the buffers for M rows of depth K (call before the parallel region).
    void reserve(int M, int K);
};

// C[M, B.N] = epilogue(dequant(quantize(A) · B)): rows of A are quantized by the team, then the GEMM is split
// like gemm_team. raw_int32 stores the exact int32 sums (tests).
void gemm_int8_team(int M, const float* A, std::ptrdiff_t lda, const QuantizedMatrix& B, float* C,
                    std::ptrdiff_t ldc, const Epilogue& ep, QuantScratch& qs, bool raw_int32 = false);

// C[M, B.N] = epilogue(A[M, B.K] · B). Splits columns (panels) across threads when there are enough of them,
// else rows: each thread then streams only its share of the weights.
void gemm_team(int M, const float* A, std::ptrdiff_t lda, const PackedMatrix& B, float* C, std::ptrdiff_t ldc,
               const Epilogue& ep);

// y[M, N] = LayerNorm(x (+ r)) row-wise; rows split across threads. y may alias x.
void layernorm_team(const KernelTable& kt, int M, int N, const float* x, const float* r, const float* g,
                    const float* b, float eps, float* y);

// ctx[Ntok, H] = self-attention of packed sequences (seq_start[s], seq_len[s]) over qkv [Ntok, 3H], one task per
// (sequence, head), longest sequences first, dynamically scheduled. scratch: per-thread blocks of
// scratch_stride floats, at least attention_scratch_floats(kt, max_len, H/heads).
void attention_team(const KernelTable& kt, const float* qkv, int H, int heads, const std::vector<int>& seq_start,
                    const std::vector<int>& seq_len, const std::vector<int>& longest_first, float* ctx,
                    float* scratch, std::size_t scratch_stride);

// Runs fn(tid, nthreads) on a team of `threads` threads (1 = the calling thread only).
template <class F>
void run_team(int threads, F&& fn);

int current_thread();
int current_team_size();

Epilogue::Kind parse_epilogue(const std::string& name);

}  // namespace ops
}  // namespace bortengine

#include <omp.h>
namespace bortengine {
namespace ops {
template <class F>
void run_team(int threads, F&& fn) {
    if (threads <= 1) {
        fn();
        return;
    }
#pragma omp parallel num_threads(threads)
    fn();
}
}  // namespace ops
}  // namespace bortengine
