// kernels_avx2.cc: the avx2 kernel path. Compiled with its own ISA flags (setup.py ISA_FLAGS); see kernels_isa.inc.
#define BE_ISA_AVX2 1
#define BE_ISA_NS isa_avx2
#define BE_TABLE_FN avx2_kernels
#include "kernels_isa.inc"
