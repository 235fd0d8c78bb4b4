// isa.h: which kernel paths this CPU and OS can run, the one chosen by default, the env override, and the kernel
// tables of a path (the single dispatch point).
#pragma once
#include <string>
#include <vector>

#include "kernels.h"

namespace bortengine {

struct CpuInfo {
    std::string vendor, model;
    std::vector<std::string> flags;  // the ISA features the engine cares about
    bool avx2 = false, fma = false, avx512 = false, avx512_vnni = false, avx512_bf16 = false;
    // AMX-TILE and AMX-BF16 / AMX-INT8, the OS saving tile state, and this process allowed to use it
    bool amx_bf16 = false, amx_int8 = false;
    int logical_cpus = 1;
};

const CpuInfo& cpu_info();
// Compiled and runnable paths, best first.
const std::vector<std::string>& available_isas();
// $BORTENGINE_ISA if set (throws std::invalid_argument if unknown or not runnable here), else the best path.
// Read once and cached.
const std::string& default_isa();
// The kernel table of a path ("" = default_isa()). Throws std::invalid_argument if unknown or not runnable.
const KernelTable& kernels_for(const std::string& isa);
// The int8 GEMM kernels that run on a path, best first: "avx512": the AMX kernel where the CPU and OS allow it, the
// VNNI kernel where the CPU has it, else the AVX2 int8 kernels; "avx2": those; "scalar": the portable kernel.
std::vector<const Int8KernelTable*> int8_kernel_variants(const std::string& isa);
// The int8 kernels of a path: the best, or the one whose gemm_name is `kernel` (std::invalid_argument if it is not
// among int8_kernel_variants(isa)).
const Int8KernelTable& int8_kernels_for(const std::string& isa, const std::string& kernel = "");
// The bf16 GEMM kernels that run on a path, best first: "avx512": the AMX kernel where the CPU and OS allow it, the
// AVX512_BF16 kernel where the CPU has it, then the AVX-512F emulation; "avx2": its emulation; "scalar": the portable kernel.
std::vector<const Bf16KernelTable*> bf16_kernel_variants(const std::string& isa);
// The bf16 kernels of a path: the best, or the one whose gemm_name is `kernel` (tests force an emulation with it;
// std::invalid_argument if it is not among bf16_kernel_variants(isa)).
const Bf16KernelTable& bf16_kernels_for(const std::string& isa, const std::string& kernel = "");
// Whether a path's bf16 GEMMs (its best variant) run on AMX tiles: int8 encoders then run forward.h's int8_in_bf16
// GEMMs on them (forward.h kernel_dtype).
bool bf16_on_tiles(const std::string& isa);
// The bf16 attentions this CPU and build run (on the avx512 path), best first: AMX tiles where the CPU and OS allow
// them ("attention_bf16_amx"), then vdpbf16ps ("attention_bf16_avx512"); none without AVX512_BF16.
struct NamedAttention {
    const char* name;
    AttentionFn fn;
};
std::vector<NamedAttention> bf16_attention_variants();
// The attention the int8 and bf16 encoders run on a path: the best bf16 one where they run one (has_bf16_attention,
// path "avx512"), else the path's fp32 attention. name: its name, e.g. "attention_bf16_amx" or "attention_f32_<isa>".
AttentionFn bf16_attention_for(const std::string& isa, const char** name = nullptr);
// Whether the int8 and bf16 encoders of this CPU and build run a bf16 attention: AVX512_BF16 and the avx512 path,
// and AMX tiles or a CPU not Intel's (vdpbf16ps alone ran attention slower than fp32 on an Intel core).
bool has_bf16_attention();

}  // namespace bortengine
