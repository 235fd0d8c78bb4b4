// kernels_ref.h: plain-loop reference kernels (double accumulation where it matters). Slow and obviously right:
// the oracle that tests check every ISA path against.
//
// Shapes: a [M,K], w [N,K] (torch Linear layout), c [M,N]; qkv [Ntok, 3H]; x [M,N].
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels.h"

namespace bortengine {
namespace ref {

void gemm(int M, int N, int K, const float* a, const float* w, const float* bias, Epilogue::Kind kind,
          const float* residual, float* c);
void layernorm(int M, int N, const float* x, const float* r, const float* g, const float* b, float eps, float* y);
// bias: a relative position bias (kernels.h PositionBias; no table: none) added to the scaled scores.
void attention(const float* qkv, int H, int heads, const std::vector<int>& seq_lens, const PositionBias& bias,
               float* ctx);
float gelu(float x);
// The int8 scheme of Int8KernelTable, in plain loops: quantize rows exactly as the kernels do, and the exact
// int32 products minus zero point * weight sums.
void quantize_rows(int M, int K, const float* a, std::uint8_t* q, float* scale, std::int32_t* zp);
void gemm_u8s8_i32(int M, int N, int K, const std::uint8_t* qa, const std::int32_t* zp, const std::int8_t* w,
                   std::int32_t* c);

// fp32 -> bf16 bits as Bf16KernelTable rounds (kernels.h): the nearer of the two bf16 neighbours, the even one on a
// tie; NaN quiet, subnormals to a zero of their sign.
std::uint16_t bf16(float x);

}  // namespace ref
}  // namespace bortengine
