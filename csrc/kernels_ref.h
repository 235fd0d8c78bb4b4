// kernels_ref.h: plain-loop reference kernels (double accumulation where it matters). Slow and obviously right:
// the oracle that tests check every ISA path against.
//
// Shapes: a [M,K], w [N,K] (torch Linear layout), c [M,N]; qkv [Ntok, 3H]; x [M,N].
#pragma once
#include <cstddef>
#include <vector>

#include "kernels.h"

namespace bortengine {
namespace ref {

void gemm(int M, int N, int K, const float* a, const float* w, const float* bias, Epilogue::Kind kind,
          const float* residual, float* c);
void layernorm(int M, int N, const float* x, const float* r, const float* g, const float* b, float eps, float* y);
void attention(const float* qkv, int H, int heads, const std::vector<int>& seq_lens, float* ctx);
float gelu(float x);

}  // namespace ref
}  // namespace bortengine
