// isa.cc: CPUID/XGETBV detection and the single dispatch point from an ISA name to its kernel table.
#include "isa.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>

#if defined(BORTENGINE_X86)
#include <cpuid.h>
#endif
#if defined(BORTENGINE_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace bortengine {
namespace {

#if defined(BORTENGINE_X86)
unsigned long long read_xcr0() {
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
}

// Whether Linux lets this process use the AMX tile data state (it refuses, for one, when a thread's signal stack
// is too small for the larger signal frame). Other OSes: not asked, so no AMX.
bool request_tile_data() {
#if defined(__linux__)
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
}
#endif

CpuInfo detect() {
    CpuInfo ci;
    ci.logical_cpus = static_cast<int>(std::thread::hardware_concurrency());
#if defined(BORTENGINE_X86)
    unsigned a = 0, b = 0, c = 0, d = 0;  // zeroed: GCC cannot see that __get_cpuid sets them (-Wmaybe-uninitialized)
    if (__get_cpuid(0, &a, &b, &c, &d)) {
        char v[13];
        std::memcpy(v, &b, 4); std::memcpy(v + 4, &d, 4); std::memcpy(v + 8, &c, 4); v[12] = 0;
        ci.vendor = v;
    }
    unsigned max_ext = __get_cpuid_max(0x80000000u, nullptr);
    if (max_ext >= 0x80000004u) {
        char m[49] = {0};
        for (unsigned i = 0; i < 3; ++i) {
            __get_cpuid(0x80000002u + i, &a, &b, &c, &d);
            std::memcpy(m + 16 * i, &a, 4); std::memcpy(m + 16 * i + 4, &b, 4);
            std::memcpy(m + 16 * i + 8, &c, 4); std::memcpy(m + 16 * i + 12, &d, 4);
        }
        ci.model = m;
        while (!ci.model.empty() && ci.model.back() == ' ') ci.model.pop_back();
    }
    bool osxsave = false, avx = false, fma = false, f16c = false;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        fma = c & (1u << 12);
        osxsave = c & (1u << 27);
        avx = c & (1u << 28);
        f16c = c & (1u << 29);
    }
    // The OS must save the wide registers on context switch (XCR0), or the CPU's flags mean nothing.
    const unsigned long long xcr0 = osxsave ? read_xcr0() : 0;
    const bool os_avx = (xcr0 & 0x6) == 0x6;
    const bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0;
    bool avx2 = false, f = false, dq = false, bw = false, vl = false, vnni = false, bf16 = false;
    bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
    if (__get_cpuid_max(0, nullptr) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        avx2 = b & (1u << 5);
        f = b & (1u << 16);
        dq = b & (1u << 17);
        bw = b & (1u << 30);
        vl = b & (1u << 31);
        vnni = c & (1u << 11);
        amx_tile = d & (1u << 24);
        amx_bf16 = d & (1u << 22);
        amx_int8 = d & (1u << 25);
        __cpuid_count(7, 1, a, b, c, d);
        bf16 = a & (1u << 5);
    }
    ci.fma = fma && os_avx;
    ci.avx2 = avx2 && avx && os_avx && fma && f16c;
    ci.avx512 = ci.avx2 && os_avx512 && f && dq && bw && vl;
    ci.avx512_vnni = ci.avx512 && vnni;
    ci.avx512_bf16 = ci.avx512 && bf16;
    if (ci.fma) ci.flags.push_back("fma");
    if (ci.avx2) ci.flags.push_back("avx2");
    if (ci.avx512) ci.flags.push_back("avx512f+bw+dq+vl");
    if (ci.avx512_vnni) ci.flags.push_back("avx512_vnni");
    if (ci.avx512_bf16) ci.flags.push_back("avx512_bf16");
    // XCR0 bits 17-18: the OS saves tile configuration and data; then Linux hands the (8 KiB) tile data state to a
    // process only when it asks (arch_prctl ARCH_REQ_XCOMP_PERM), once for all its threads.
    // BORTENGINE_AMX=0 leaves the tiles alone: the process then runs as on a CPU of the same ISA without AMX (the
    // VNNI and AVX512-BF16 kernels), to measure or test what such CPUs get.
    const char* amx_env = std::getenv("BORTENGINE_AMX");
    const bool amx_allowed = amx_env == nullptr || std::string(amx_env) != "0";
    const bool tiles =
        amx_allowed && ci.avx512 && amx_tile && (xcr0 & 0x60000) == 0x60000 && request_tile_data();
    ci.amx_bf16 = tiles && ci.avx512_bf16 && amx_bf16;
    ci.amx_int8 = tiles && ci.avx512_vnni && amx_int8;
    if (ci.amx_bf16) ci.flags.push_back("amx_bf16");
    if (ci.amx_int8) ci.flags.push_back("amx_int8");
#endif
    return ci;
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
}

// The variant of path's kernels named `kernel` (its gemm_name), or the best (the first) for "".
template <class Table>
const Table& pick_variant(const std::vector<const Table*>& variants, const std::string& path,
                          const std::string& kernel, const char* dtype) {
    if (kernel.empty()) return *variants.front();
    std::vector<std::string> names;
    for (const Table* t : variants) {
        if (kernel == t->gemm_name) return *t;
        names.push_back(t->gemm_name);
    }
    throw std::invalid_argument(std::string(dtype) + " kernel '" + kernel + "' does not run on path '" + path +
                                "' here; it runs: " + join(names));
}

const KernelTable* table_of(const std::string& isa) {
#if defined(BORTENGINE_X86)
    if (isa == "avx512") return avx512_kernels();
    if (isa == "avx2") return avx2_kernels();
#endif
    if (isa == "scalar") return scalar_kernels();
    return nullptr;
}

}  // namespace

const CpuInfo& cpu_info() {
    static const CpuInfo ci = detect();
    return ci;
}

const std::vector<std::string>& available_isas() {
    static const std::vector<std::string> isas = [] {
        std::vector<std::string> v;
        const CpuInfo& ci = cpu_info();
        if (ci.avx512) v.push_back("avx512");
        if (ci.avx2) v.push_back("avx2");
        v.push_back("scalar");
        return v;
    }();
    return isas;
}

const KernelTable& kernels_for(const std::string& isa_in) {
    const std::string isa = isa_in.empty() ? default_isa() : isa_in;
    for (const auto& a : available_isas())
        if (a == isa) return *table_of(isa);
    if (table_of(isa) == nullptr)
        throw std::invalid_argument("unknown kernel path '" + isa + "'; known paths: avx512, avx2, scalar");
    throw std::invalid_argument("kernel path '" + isa + "' cannot run on this CPU/OS (" + cpu_info().model +
                                "); available: " + join(available_isas()));
}

std::vector<const Int8KernelTable*> int8_kernel_variants(const std::string& isa_in) {
    const std::string isa = kernels_for(isa_in).isa;  // validates the name
    std::vector<const Int8KernelTable*> v;
#if defined(BORTENGINE_X86)
    if (isa == "avx512") {
        if (cpu_info().amx_int8) v.push_back(amx_int8_kernels());
        v.push_back(cpu_info().avx512_vnni ? avx512vnni_int8_kernels() : avx2_int8_kernels());
    }
    if (isa == "avx2") v.push_back(avx2_int8_kernels());
#endif
    if (isa == "scalar") v.push_back(scalar_int8_kernels());
    return v;
}

const Int8KernelTable& int8_kernels_for(const std::string& isa, const std::string& kernel) {
    return pick_variant(int8_kernel_variants(isa), kernels_for(isa).isa, kernel, "int8");
}

std::vector<const Bf16KernelTable*> bf16_kernel_variants(const std::string& isa_in) {
    const std::string isa = kernels_for(isa_in).isa;  // validates the name
    std::vector<const Bf16KernelTable*> v;
#if defined(BORTENGINE_X86)
    if (isa == "avx512") {
        if (cpu_info().amx_bf16) v.push_back(amx_bf16_kernels());
        if (cpu_info().avx512_bf16) v.push_back(avx512bf16_bf16_kernels());
        v.push_back(avx512_bf16_kernels());
    }
    if (isa == "avx2") v.push_back(avx2_bf16_kernels());
#endif
    if (isa == "scalar") v.push_back(scalar_bf16_kernels());
    return v;
}

const Bf16KernelTable& bf16_kernels_for(const std::string& isa, const std::string& kernel) {
    return pick_variant(bf16_kernel_variants(isa), kernels_for(isa).isa, kernel, "bf16");
}

bool bf16_on_tiles(const std::string& isa) { return std::string(bf16_kernels_for(isa).variant) == "amx"; }

namespace {
// Whether this CPU and build can run a bf16 attention: AVX512_BF16 and the avx512 path.
bool bf16_attention_runs() {
    const auto& isas = available_isas();
    return cpu_info().avx512_bf16 && std::find(isas.begin(), isas.end(), "avx512") != isas.end();
}
}  // namespace

std::vector<NamedAttention> bf16_attention_variants() {
    std::vector<NamedAttention> v;
#if defined(BORTENGINE_X86)
    if (!bf16_attention_runs()) return v;
    if (cpu_info().amx_bf16) v.push_back({"attention_bf16_amx", bf16_attention_amx()});
    v.push_back({"attention_bf16_avx512", bf16_attention_avx512()});
#endif
    return v;
}

AttentionFn bf16_attention_for(const std::string& isa_in, const char** name) {
    const KernelTable& kt = kernels_for(isa_in);
    const std::vector<NamedAttention> bf16 = bf16_attention_variants();
    if (std::string(kt.isa) == "avx512" && has_bf16_attention()) {
        if (name) *name = bf16.front().name;
        return bf16.front().fn;
    }
    if (name) *name = std::string(kt.isa) == "avx512" ? "attention_f32_avx512"
                      : std::string(kt.isa) == "avx2" ? "attention_f32_avx2" : "attention_f32_scalar";
    return kt.attention;
}

bool has_bf16_attention() {
    // vdpbf16ps alone does not pay on Intel cores: the int8 encoder's attention ran 1.25x (bert-base, 1 x 128) to
    // 1.54x (8 x 128) slower in bf16 than in fp32 on an AMX Xeon with BORTENGINE_AMX=0 (on AMD Zen 4 it pays)
    return bf16_attention_runs() && (cpu_info().amx_bf16 || cpu_info().vendor != "GenuineIntel");
}

const std::string& default_isa() {
    static std::once_flag once;
    static std::string chosen;
    static std::string error;
    std::call_once(once, [] {
        const char* env = std::getenv("BORTENGINE_ISA");
        if (env == nullptr || *env == 0) {
            chosen = available_isas().front();
            return;
        }
        const std::string want(env);
        for (const auto& a : available_isas())
            if (a == want) { chosen = want; return; }
        error = "BORTENGINE_ISA=" + want + " is " +
                (table_of(want) ? "not runnable on this CPU/OS" : "not a known kernel path (avx512, avx2, scalar)") +
                "; available here: " + join(available_isas()) + ". Unset it or pick one of those.";
    });
    if (!error.empty()) throw std::invalid_argument(error);
    return chosen;
}

}  // namespace bortengine
