// kernels_bf16_avx512bf16.cc: the AVX512_BF16 variant (vdpbf16ps: pairs of bf16 products accumulated in fp32), on
// CPUs that have it: the bf16 GEMM of kernels_bf16.inc, and its self-attention with bf16 dot products (also in
// kernels_bf16.inc), which the int8 and bf16 encoders run.
//
// Compiled with its own flags (setup.py ISA_FLAGS). Layouts (W = 16 fp32 lanes, NR columns per panel): B panels
// [panel][k/2][NR][2] bf16, i.e. one 32-bit pair of consecutive k per column; A rows: bf16 with pairs of
// consecutive k contiguous, broadcast 32 bits at a time (kernels_bf16.inc).
#define BE_ISA_AVX512 1
#define BE_BF16_NATIVE 1
#define BE_ISA_NS isa16_avx512bf16
#define BE_BF16_TABLE_FN avx512bf16_bf16_kernels
#include "kernels_bf16.inc"

namespace bortengine {

AttentionFn bf16_attention_avx512() { return &BE_ISA_NS::attention; }

}  // namespace bortengine
