// vmath.h: elementwise math and the GEMM epilogue over the vector type of simd.h, shared by the fp32, int8 and
// bf16 kernels of one ISA path. Include after simd.h, inside no namespace.
#pragma once
#include <cstddef>

#include "kernels.h"
#include "simd.h"

namespace bortengine {
namespace BE_ISA_NS {

using T = Vec::T;
constexpr int W = Vec::W;

// ---------------------------------------------------------------------------------------------------------------
// Elementwise math. exp: Cephes-style range reduction + degree-5 polynomial (~1 ulp on the softmax range).
// erf: the rational approximation XLA and Eigen use for float (odd degree-13 / even degree-8 numerator and
// denominator on [-4, 4], erf = +-1 to float precision outside), max abs error about 1e-7.
inline T vexp(T x) {
    x = Vec::min(x, Vec::set1(88.3762626647949f));
    x = Vec::max(x, Vec::set1(-87.3365478515625f));  // keeps 2^n a normal number
    T fx = Vec::round(Vec::mul(x, Vec::set1(1.44269504088896341f)));
    x = Vec::fnmadd(fx, Vec::set1(0.693359375f), x);
    x = Vec::fnmadd(fx, Vec::set1(-2.12194440e-4f), x);
    T y = Vec::set1(1.9875691500e-4f);
    y = Vec::fmadd(y, x, Vec::set1(1.3981999507e-3f));
    y = Vec::fmadd(y, x, Vec::set1(8.3334519073e-3f));
    y = Vec::fmadd(y, x, Vec::set1(4.1665795894e-2f));
    y = Vec::fmadd(y, x, Vec::set1(1.6666665459e-1f));
    y = Vec::fmadd(y, x, Vec::set1(5.0000001201e-1f));
    y = Vec::fmadd(y, Vec::mul(x, x), Vec::add(x, Vec::set1(1.0f)));
    return Vec::mul(y, Vec::pow2i(fx));
}

inline T verf(T x) {
    x = Vec::max(Vec::min(x, Vec::set1(4.0f)), Vec::set1(-4.0f));
    const T x2 = Vec::mul(x, x);
    T p = Vec::fmadd(x2, Vec::set1(-2.72614225801306e-10f), Vec::set1(2.77068142495902e-08f));
    p = Vec::fmadd(x2, p, Vec::set1(-2.10102402082508e-06f));
    p = Vec::fmadd(x2, p, Vec::set1(-5.69250639462346e-05f));
    p = Vec::fmadd(x2, p, Vec::set1(-7.34990630326855e-04f));
    p = Vec::fmadd(x2, p, Vec::set1(-2.95459980854025e-03f));
    p = Vec::fmadd(x2, p, Vec::set1(-1.60960333262415e-02f));
    p = Vec::mul(x, p);
    T q = Vec::fmadd(x2, Vec::set1(-1.45660718464996e-05f), Vec::set1(-2.13374055278905e-04f));
    q = Vec::fmadd(x2, q, Vec::set1(-1.68282697438203e-03f));
    q = Vec::fmadd(x2, q, Vec::set1(-7.37332916720468e-03f));
    q = Vec::fmadd(x2, q, Vec::set1(-1.42647390514189e-02f));
    return Vec::div(p, q);
}

inline T vgelu(T x) {
    const T half_x = Vec::mul(x, Vec::set1(0.5f));
    return Vec::fmadd(half_x, verf(Vec::mul(x, Vec::set1(0.70710678118654752f))), half_x);
}

// tanh(x) = sign(x) * (1 - 2 / (exp(2|x|) + 1)); evaluated on |x| so large inputs saturate to +-1 exactly.
inline T vtanh(T x) {
    const T ax = Vec::max(x, Vec::sub(Vec::zero(), x));
    const T e = vexp(Vec::mul(ax, Vec::set1(2.0f)));
    const T t = Vec::sub(Vec::set1(1.0f), Vec::div(Vec::set1(2.0f), Vec::add(e, Vec::set1(1.0f))));
    // restore the sign: t * sign(x), with sign(0) irrelevant since t(0) = 0
    const T s = Vec::div(x, Vec::max(ax, Vec::set1(1e-30f)));
    return Vec::mul(t, s);
}

// The largest of the n scores s of one attention query, after adding bias[j] to s[j] when bias is not null (a
// relative position bias, kernels.h: the query's row of it). One pass over the row, which the score GEMM has just
// left in L1.
inline float row_max_biased(float* s, const float* bias, int n) {
    T mx = Vec::set1(-3.4e38f);
    int j = 0;
    if (bias) {
        for (; j + W <= n; j += W) {
            const T v = Vec::add(Vec::load(s + j), Vec::load(bias + j));
            Vec::store(s + j, v);
            mx = Vec::max(mx, v);
        }
        for (int t = j; t < n; ++t) s[t] += bias[t];
    } else {
        for (; j + W <= n; j += W) mx = Vec::max(mx, Vec::load(s + j));
    }
    float m = Vec::reduce_max(mx);
    for (; j < n; ++j) m = s[j] > m ? s[j] : m;
    return m;
}

// The finishing steps of a GEMM element block (see Epilogue): v is alpha * (A.B) for row i, columns j..j+n of
// the block, with bias and residual pointers already at column j. full: n >= W.
inline T apply_epilogue(T v, const Epilogue& ep, int i, int j, int n, bool full) {
    if (ep.alpha != 1.0f) v = Vec::mul(v, Vec::set1(ep.alpha));
    if (ep.row_scale) v = Vec::mul(v, Vec::set1(ep.row_scale[i]));
    if (ep.bias) v = Vec::add(v, full ? Vec::load(ep.bias + j) : Vec::load_n(ep.bias + j, n));
    switch (ep.kind) {
        case Epilogue::kGelu: return vgelu(v);
        case Epilogue::kTanh: return vtanh(v);
        case Epilogue::kResidual: {
            const float* r = ep.residual + i * ep.ldr + j;
            return Vec::add(v, full ? Vec::load(r) : Vec::load_n(r, n));
        }
        default: return v;
    }
}

// Row i of a micro-kernel's C tile (NR floats from c + i * ldc), prefetched for writing, with the residual row
// its epilogue adds (`residual`: ep.residual where this call finishes C with a residual epilogue, else null). The
// micro-kernels call it once per step over their last R steps (`tile_prefetch_from`): a layer's output is larger
// than L2, so without it the tile's stores (and its loads, when accumulating) all miss L1 together once the
// products are done. (BERT-base's four GEMMs at 8 x 128 tokens on Zen 4, 2 threads: 84-86% of the FMA limit
// before, 89-91% after; +4-7% each on one thread.)
template <int NR>
__attribute__((always_inline)) inline void prefetch_c_row(float* c, std::ptrdiff_t ldc, const float* residual,
                                                          std::ptrdiff_t ldr, int i) {
#pragma GCC unroll 8
    for (int j = 0; j < NR; j += 16) {
        __builtin_prefetch(c + i * ldc + j, 1, 3);
        if (residual) __builtin_prefetch(residual + i * ldr + j, 0, 3);
    }
}

// The step of a micro-kernel of R rows and `steps` steps from which it prefetches one C row per step.
inline int tile_prefetch_from(int steps, int R) { return steps > R ? steps - R : 0; }

// The end of a micro-kernel: its R x NV vectors of accumulators go to C (rows ldc apart, nr valid columns), added
// to what C holds unless `first` (K is cut into blocks), with the epilogue applied when `last`.
template <int R, int NV>
__attribute__((always_inline)) inline void store_tile(T (&acc)[R][NV], float* c, std::ptrdiff_t ldc, int nr,
                                                      bool first, bool last, const Epilogue& ep) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
        float* ci = c + i * ldc;
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) {
            const int n = nr - j * W;  // valid columns in this vector
            if (n <= 0) break;
            const bool full = n >= W;
            T v = acc[i][j];
            if (!first) v = Vec::add(v, full ? Vec::load(ci + j * W) : Vec::load_n(ci + j * W, n));
            if (last) v = apply_epilogue(v, ep, i, j * W, n, full);
            if (full) Vec::store(ci + j * W, v); else Vec::store_n(ci + j * W, v, n);
        }
    }
}

}  // namespace BE_ISA_NS
}  // namespace bortengine
