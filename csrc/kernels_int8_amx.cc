// kernels_int8_amx.cc: the AMX-INT8 variant of the int8 GEMM (kernels_int8.inc), on CPUs that have AMX tiles and
// whose OS lets this process use them (isa.cc). Quantization, packing (groups of 4 k, as vpdpbusd reads them) and
// the dequantizing epilogue are the avx512vnni path's, and tdpbusd sums the same u8 x s8 products exactly, so its
// results are bit for bit that path's. Compiled with its own flags (setup.py ISA_FLAGS).
#define BE_ISA_AVX512 1
#define BE_INT8_AMX 1
#define BE_ISA_NS isa8_amx
#define BE_INT8_TABLE_FN amx_int8_kernels
#include "kernels_int8.inc"
