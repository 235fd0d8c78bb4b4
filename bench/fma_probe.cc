// The machine's fp32 multiply-add ceiling: independent FMAs, no loads, one thread per core.
//
// Each thread runs ACC independent accumulator chains (enough to cover the FMA latency times the FMA ports) of
// ymm (8 floats) or zmm (16 floats) fused multiply-adds for about the given seconds; the figure is 2 FLOPs per lane
// per FMA over the wall time of the slowest thread. No GEMM can beat it: a GEMM's inner loop is these FMAs plus
// loads. Built and run by bench/fma_peak.py (which compiles it with the system compiler on first use).
//
// usage: fma_probe {ymm|zmm} THREADS SECONDS   -> prints "GFLOP/s"
#include <immintrin.h>

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

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4 || (std::strcmp(argv[1], "ymm") && std::strcmp(argv[1], "zmm"))) {
        std::fprintf(stderr, "usage: %s {ymm|zmm} THREADS SECONDS\n", argv[0]);
        return 2;
    }
    const bool zmm = !std::strcmp(argv[1], "zmm");
    if (zmm ? !__builtin_cpu_supports("avx512f") : !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
        std::fprintf(stderr, "this CPU has no %s FMA\n", argv[1]);
        return 3;
    }
    const int threads = std::atoi(argv[2]);
    const double seconds = std::atof(argv[3]);
    const int lanes = zmm ? 16 : 8;
    auto once = [&](long reps) { return zmm ? run_zmm(reps, 1.0f) : run_ymm(reps, 1.0f); };
    // calibrate on one thread: reps for about `seconds`
    auto t0 = std::chrono::steady_clock::now();
    volatile double sink = once(1);
    double one = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    long reps = std::max(1L, static_cast<long>(seconds / one));
    std::vector<double> results(threads);  // one slot per thread: kept alive, and no shared write
    std::vector<std::thread> pool;
    auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] { results[t] = zmm ? run_zmm(reps, 1.0f + t) : run_ymm(reps, 1.0f + t); });
    for (auto& th : pool) th.join();
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (double r : results) sink = sink + r;
    double flops = 2.0 * lanes * ACC * static_cast<double>(kInner) * reps * threads;
    std::printf("%.1f\n", flops / wall / 1e9);
    (void)sink;
    return 0;
}
