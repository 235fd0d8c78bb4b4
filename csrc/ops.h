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
