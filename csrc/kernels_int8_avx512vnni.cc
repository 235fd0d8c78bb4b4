// kernels_int8_avx512vnni.cc: the avx512vnni int8 path. Compiled with its own ISA flags (setup.py ISA_FLAGS); see kernels_int8.inc.
#define BE_ISA_AVX512 1
#define BE_ISA_NS isa8_avx512vnni
#define BE_INT8_TABLE_FN avx512vnni_int8_kernels
#include "kernels_int8.inc"
