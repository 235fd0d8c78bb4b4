// kernels_bf16_scalar.cc: the portable bf16 GEMM (bf16 widened to fp32 in plain C++). Compiled with its own ISA flags
// (setup.py ISA_FLAGS: none); see kernels_bf16.inc.
#define BE_ISA_SCALAR 1
#define BE_ISA_NS isa16_scalar
#define BE_BF16_TABLE_FN scalar_bf16_kernels
#include "kernels_bf16.inc"
