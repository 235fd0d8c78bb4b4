// simd.h: the vector type of one ISA path, chosen by the macro the wrapper file defines before including it
// (BE_ISA_AVX512, BE_ISA_AVX2 or BE_ISA_SCALAR). With kernels_isa.inc, the only place intrinsics live.
// Everything is inside the ISA's own namespace so no inline function is shared between differently-flagged
// translation units (the linker would otherwise be free to pick an AVX-512 copy for the scalar path).
#pragma once

#if defined(BE_ISA_AVX512) || defined(BE_ISA_AVX2)
#include "intrinsics.h"
#endif

namespace bortengine {
namespace BE_ISA_NS {

#if defined(BE_ISA_AVX512)
struct Vec {
    using T = __m512;
    static constexpr int W = 16;
    static T zero() { return _mm512_setzero_ps(); }
    static T set1(float x) { return _mm512_set1_ps(x); }
    static T load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
    static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
    static T load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
    static void store_n(float* p, T v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
    static T add(T a, T b) { return _mm512_add_ps(a, b); }
    static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
    static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
    static T div(T a, T b) { return _mm512_div_ps(a, b); }
    static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
    static T fnmadd(T a, T b, T c) { return _mm512_fnmadd_ps(a, b, c); }
    static T max(T a, T b) { return _mm512_max_ps(a, b); }
    static T min(T a, T b) { return _mm512_min_ps(a, b); }
    static T round(T x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    // 2^n for integral-valued n in [-126, 127].
    static T pow2i(T n) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
    }
    static float reduce_add(T v) { return _mm512_reduce_add_ps(v); }
    static float reduce_max(T v) { return _mm512_reduce_max_ps(v); }
};
#elif defined(BE_ISA_AVX2)
struct Vec {
    using T = __m256;
    static constexpr int W = 8;
    static T zero() { return _mm256_setzero_ps(); }
    static T set1(float x) { return _mm256_set1_ps(x); }
    static T load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
    static __m256i mask(int n) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static T load_n(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
    static void store_n(float* p, T v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
    static T add(T a, T b) { return _mm256_add_ps(a, b); }
    static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
    static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
    static T div(T a, T b) { return _mm256_div_ps(a, b); }
    static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
    static T fnmadd(T a, T b, T c) { return _mm256_fnmadd_ps(a, b, c); }
    static T max(T a, T b) { return _mm256_max_ps(a, b); }
    static T min(T a, T b) { return _mm256_min_ps(a, b); }
    static T round(T x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static T pow2i(T n) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
    }
    static float reduce_add(T v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    static float reduce_max(T v) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
};
#elif defined(BE_ISA_SCALAR)
// The portable path: one float per "vector". Plain C++ the compiler may still vectorize for the baseline ISA.
struct Vec {
    using T = float;
    static constexpr int W = 1;
    static T zero() { return 0.0f; }
    static T set1(float x) { return x; }
    static T load(const float* p) { return *p; }
    static void store(float* p, T v) { *p = v; }
    static T load_n(const float* p, int n) { return n > 0 ? *p : 0.0f; }
    static void store_n(float* p, T v, int n) { if (n > 0) *p = v; }
    static T add(T a, T b) { return a + b; }
    static T sub(T a, T b) { return a - b; }
    static T mul(T a, T b) { return a * b; }
    static T div(T a, T b) { return a / b; }
    static T fmadd(T a, T b, T c) { return a * b + c; }
    static T fnmadd(T a, T b, T c) { return c - a * b; }
    static T max(T a, T b) { return a > b ? a : b; }
    static T min(T a, T b) { return a < b ? a : b; }
    static T round(T x) { return __builtin_nearbyintf(x); }
    static T pow2i(T n) {
        const int e = static_cast<int>(n) + 127;
        unsigned bits = static_cast<unsigned>(e) << 23;
        float r;
        __builtin_memcpy(&r, &bits, 4);
        return r;
    }
    static float reduce_add(T v) { return v; }
    static float reduce_max(T v) { return v; }
};
#else
#error "define BE_ISA_AVX512, BE_ISA_AVX2 or BE_ISA_SCALAR before including simd.h"
#endif

}  // namespace BE_ISA_NS
}  // namespace bortengine
