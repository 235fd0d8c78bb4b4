// kernels_bf16_avx2.cc: the avx2 bf16 GEMM (an exact emulation: bf16 widened to fp32, then FMA). Compiled with its own
// ISA flags (setup.py ISA_FLAGS); see kernels_bf16.inc.
#define BE_ISA_AVX2 1
#define BE_ISA_NS isa16_avx2
#define BE_BF16_TABLE_FN avx2_bf16_kernels
#include "kernels_bf16.inc"
