// kernels_scalar.cc: the scalar kernel path. Compiled with its own ISA flags (setup.py ISA_FLAGS); see kernels_isa.inc.
#define BE_ISA_SCALAR 1
#define BE_ISA_NS isa_scalar
#define BE_TABLE_FN scalar_kernels
#include "kernels_isa.inc"
