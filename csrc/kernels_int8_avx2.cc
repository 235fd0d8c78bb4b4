// kernels_int8_avx2.cc: the avx2 int8 path. Compiled with its own ISA flags (setup.py ISA_FLAGS); see kernels_int8.inc.
#define BE_ISA_AVX2 1
#define BE_ISA_NS isa8_avx2
#define BE_INT8_TABLE_FN avx2_int8_kernels
#include "kernels_int8.inc"
