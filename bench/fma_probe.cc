// The machine's fp32 multiply-add ceiling: independent FMAs, no loads, one thread per core.
//
// Each thread runs ACC independent accumulator chains (enough to cover the FMA latency times the FMA ports) of
// ymm (8 floats) or zmm (16 floats) fused multiply-adds for about the given seconds; the figure is 2 FLOPs per lane
// per FMA over the wall time of the slowest thread. No GEMM can beat it: a GEMM's inner loop is these FMAs plus
// loads. Built and run by bench/fma_peak.py (which compiles it with the system compiler on first use).
//
// `amx` times AMX-BF16 tile products instead (4 independent 16 x 16 fp32 tiles, each tdpbf16ps 16 x 16 x 32
// multiply-adds): the bf16 ceiling of CPUs with AMX, far above their fp32 one. Linux hands a process the tile state
// only when asked (arch_prctl), as the engine does.
//
// usage: fma_probe {ymm|zmm|amx} THREADS SECONDS   -> prints "GFLOP/s"
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int ACC = 12;
constexpr long kInner = 1 << 16;  // FMAs per chain between clock reads

__attribute__((target("avx2,fma"))) double run_ymm(long reps, float seed) {
    __m256 acc[ACC];
    for (int i = 0; i < ACC; ++i) acc[i] = _mm256_set1_ps(seed + i);
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (long r = 0; r < reps; ++r)
        for (long k = 0; k < kInner; ++k)
#pragma GCC unroll 12
            for (int i = 0; i < ACC; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    float out[8], sum = 0;
    for (int i = 0; i < ACC; ++i) { _mm256_storeu_ps(out, acc[i]); sum += out[0]; }
    return sum;  // kept alive so the loop is not removed
}

__attribute__((target("avx512f"))) double run_zmm(long reps, float seed) {
    __m512 acc[ACC];
    for (int i = 0; i < ACC; ++i) acc[i] = _mm512_set1_ps(seed + i);
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (long r = 0; r < reps; ++r)
        for (long k = 0; k < kInner; ++k)
#pragma GCC unroll 12
            for (int i = 0; i < ACC; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    float out[16], sum = 0;
    for (int i = 0; i < ACC; ++i) { _mm512_storeu_ps(out, acc[i]); sum += out[0]; }
    return sum;
}

struct alignas(64) TileConfig {
    std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
    std::uint16_t colsb[16] = {};
    std::uint8_t rows[16] = {};
};

// kInner / 16 steps of 4 independent tile products per rep
__attribute__((target("amx-tile,amx-bf16"))) double run_amx(long reps, float) {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
        c.rows[t] = 16;
        c.colsb[t] = 64;
    }
    _tile_loadconfig(&c);
    alignas(64) static const std::uint16_t ones[16 * 32] = {};
    alignas(64) float out[16 * 16];
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, ones, 64); _tile_loadd(5, ones, 64); _tile_loadd(6, ones, 64); _tile_loadd(7, ones, 64);
    for (long r = 0; r < reps; ++r)
        for (long k = 0; k < kInner / 16; ++k) {
            _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
        }
    _tile_stored(0, out, 64);
    _tile_release();
    return out[0];
}
constexpr double kAmxFlopsPerRep = 2.0 * 4 * 16 * 16 * 32 * (kInner / 16);

bool amx_usable() {
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    const bool cpu = (d & (1u << 24)) && (d & (1u << 22));                              // AMX-TILE, AMX-BF16
    return cpu && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4 || (std::strcmp(argv[1], "ymm") && std::strcmp(argv[1], "zmm") && std::strcmp(argv[1], "amx"))) {
        std::fprintf(stderr, "usage: %s {ymm|zmm|amx} THREADS SECONDS\n", argv[0]);
        return 2;
    }
    const bool zmm = !std::strcmp(argv[1], "zmm"), amx = !std::strcmp(argv[1], "amx");
    const bool has = amx ? amx_usable() : zmm ? __builtin_cpu_supports("avx512f")
                                              : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!has) {
        std::fprintf(stderr, "this CPU (or OS) has no %s\n", amx ? "AMX-BF16 tiles" : argv[1]);
        return 3;
    }
    const int threads = std::atoi(argv[2]);
    const double seconds = std::atof(argv[3]);
    const int lanes = zmm ? 16 : 8;
    auto run = [&](long reps, float seed) {
        return amx ? run_amx(reps, seed) : zmm ? run_zmm(reps, seed) : run_ymm(reps, seed);
    };
    auto once = [&](long reps) { return run(reps, 1.0f); };
    // calibrate on one thread: reps for about `seconds`
    auto t0 = std::chrono::steady_clock::now();
    volatile double sink = once(1);
    double one = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    long reps = std::max(1L, static_cast<long>(seconds / one));
    std::vector<double> results(threads);  // one slot per thread: kept alive, and no shared write
    std::vector<std::thread> pool;
    auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] { results[t] = run(reps, 1.0f + t); });
    for (auto& th : pool) th.join();
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (double r : results) sink = sink + r;
    const double per_rep = amx ? kAmxFlopsPerRep : 2.0 * lanes * ACC * static_cast<double>(kInner);
    double flops = per_rep * reps * threads;
    std::printf("%.1f\n", flops / wall / 1e9);
    (void)sink;
    return 0;
}
