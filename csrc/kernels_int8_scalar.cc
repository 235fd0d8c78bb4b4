// kernels_int8_scalar.cc: the scalar int8 path. Compiled with its own ISA flags (setup.py ISA_FLAGS); see kernels_int8.inc.
#define BE_ISA_SCALAR 1
#define BE_ISA_NS isa8_scalar
#define BE_INT8_TABLE_FN scalar_int8_kernels
#include "kernels_int8.inc"
