// kernels_avx512.cc: the avx512 kernel path. Compiled with its own ISA flags (setup.py ISA_FLAGS); see kernels_isa.inc.
#define BE_ISA_AVX512 1
#define BE_ISA_NS isa_avx512
#define BE_TABLE_FN avx512_kernels
#include "kernels_isa.inc"
