// kernels_bf16_avx512.cc: the AVX-512F bf16 GEMM for CPUs without AVX512_BF16 (an exact emulation: bf16 widened to
// fp32, then FMA). Compiled with its own ISA flags (setup.py ISA_FLAGS); see kernels_bf16.inc.
#define BE_ISA_AVX512 1
#define BE_ISA_NS isa16_avx512
#define BE_BF16_TABLE_FN avx512_bf16_kernels
#include "kernels_bf16.inc"
