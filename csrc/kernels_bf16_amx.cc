// kernels_bf16_amx.cc: the AMX-BF16 variant of the bf16 GEMM (kernels_bf16.inc), on CPUs that have AMX tiles and
// whose OS lets this process use them (isa.cc asks Linux for the tile data state once). Rounding, packing and the
// epilogue are the AVX512_BF16 variant's, so it multiplies the same bf16 operands; tdpbf16ps accumulates each pair
// of products in fp32, as vdpbf16ps does. Its attention (kernels_bf16.inc) runs Q K^T and P V on the tiles too.
//
// Compiled with its own flags (setup.py ISA_FLAGS).
#define BE_ISA_AVX512 1
#define BE_BF16_NATIVE 1
#define BE_BF16_AMX 1
#define BE_ISA_NS isa16_amx
#define BE_BF16_TABLE_FN amx_bf16_kernels
#include "kernels_bf16.inc"

namespace bortengine {

AttentionFn bf16_attention_amx() { return &BE_ISA_NS::attention; }

}  // namespace bortengine
