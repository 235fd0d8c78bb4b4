// kernels_bf16_avx512.cc: self-attention with bf16 dot products (AVX512_BF16 vdpbf16ps: pairs of bf16
// products accumulated in fp32), for the int8 encoder only, on CPUs that have it. Q K^T and P V run as GEMMs with
// bf16 operands and fp32 accumulation; scaling, softmax (exp) and the 1/sum normalisation stay fp32. Twice the
// multiply rate of fp32 FMA, at bf16's 8-bit mantissa on the operands: a precision the int8 path already trades
// away in its linear layers, and which the float32 engine never uses.
//
// Compiled with its own flags (setup.py ISA_FLAGS). Layouts (W = 16 fp32 lanes, NR = 32 columns per panel):
//   B panels: [panel][k/2][NR][2] bf16, i.e. one 32-bit pair of consecutive k per column; A rows: bf16 with
//   pairs of consecutive k contiguous, broadcast 32 bits at a time.
#define BE_ISA_AVX512 1
#define BE_ISA_NS isa_bf16_avx512
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels.h"
#include "simd.h"
#include "vmath.h"

namespace bortengine {
namespace BE_ISA_NS {

constexpr int MRB = 14, NRB = 32;

inline int imin_b(int a, int b) { return a < b ? a : b; }
inline int rup(int x, int m) { return (x + m - 1) / m * m; }

// fp32 -> bf16, round to nearest even (finite inputs: activations here are finite)
inline std::uint16_t bf16(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
}

// n floats -> n bf16 (vectorised), then zero-pad to n_pad
inline void row_to_bf16(const float* src, int n, std::uint16_t* dst, int n_pad) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
    for (; i < n; ++i) dst[i] = bf16(src[i]);
    for (; i < n_pad; ++i) dst[i] = 0;
}

// C block of R rows x NR columns (nr valid) = A[R, 2*groups] . Bp; c = alpha * sum, times row_scale[i] if set.
template <int R>
void ukernel_bf16(int groups, const std::uint16_t* a, std::ptrdiff_t lda, const std::uint16_t* b, float* c,
                  std::ptrdiff_t ldc, int nr, float alpha, const float* row_scale) {
    __m512 acc[R][2];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int g = 0; g < groups; ++g) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + g * 2 * NRB);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + g * 2 * NRB + NRB);
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            std::int32_t pair;
            std::memcpy(&pair, a + i * lda + 2 * g, 4);
            const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
        const __m512 s = _mm512_set1_ps(row_scale ? alpha * row_scale[i] : alpha);
        for (int j = 0; j < 2; ++j) {
            const int n = nr - j * 16;
            if (n <= 0) break;
            const __m512 v = _mm512_mul_ps(acc[i][j], s);
            if (n >= 16) _mm512_storeu_ps(c + i * ldc + j * 16, v);
            else _mm512_mask_storeu_ps(c + i * ldc + j * 16, Vec::mask(n), v);
        }
    }
}

using UkBf16 = void (*)(int, const std::uint16_t*, std::ptrdiff_t, const std::uint16_t*, float*, std::ptrdiff_t, int,
                        float, const float*);
template <std::size_t... I>
const UkBf16* ukernel_bf16_table(std::index_sequence<I...>) {
    static const UkBf16 table[] = {nullptr, &ukernel_bf16<static_cast<int>(I) + 1>...};
    return table;
}

// C[M, N] = alpha * A[M, 2*groups] . B (packed, panel stride groups*2*NR), optionally * row_scale[i].
void gemm_bf16(int M, int N, int groups, const std::uint16_t* A, std::ptrdiff_t lda, const std::uint16_t* Bp,
               float* C, std::ptrdiff_t ldc, float alpha, const float* row_scale) {
    static const UkBf16* tails = ukernel_bf16_table(std::make_index_sequence<MRB>{});
    const std::ptrdiff_t panel = static_cast<std::ptrdiff_t>(groups) * 2 * NRB;
    for (int n0 = 0; n0 < N; n0 += NRB) {
        const int nr = imin_b(NRB, N - n0);
        const std::uint16_t* b = Bp + (n0 / NRB) * panel;
        for (int m0 = 0; m0 < M; m0 += MRB) {
            const int r = imin_b(MRB, M - m0);
            const float* rs = row_scale ? row_scale + m0 : nullptr;
            if (r == MRB) ukernel_bf16<MRB>(groups, A + m0 * lda, lda, b, C + m0 * ldc + n0, ldc, nr, alpha, rs);
            else tails[r](groups, A + m0 * lda, lda, b, C + m0 * ldc + n0, ldc, nr, alpha, rs);
        }
    }
}

inline std::uint16_t* align64_u16(float* p) {
    return reinterpret_cast<std::uint16_t*>((reinterpret_cast<std::uintptr_t>(p) + 63) & ~std::uintptr_t(63));
}

void attention(int Tn, int dh, const float* q, const float* k, const float* v, std::ptrdiff_t ld, float scale,
               float* out, std::ptrdiff_t ldo, float* scratch) {
    const int dh2 = rup(dh, 2), t2 = rup(Tn, 2), tp = rup(Tn, NRB), dp = rup(dh, NRB);
    const int QB = kAttnQueryBlock;
    // scratch: K panels (dh2 x tp bf16), V panels (t2 x dp bf16), Q block (QB x dh2 bf16), P block (QB x t2 bf16),
    // scores (QB x tp fp32), 1/sums (QB fp32); see attention_scratch_floats.
    std::uint16_t* kp = align64_u16(scratch);
    std::uint16_t* vp = kp + static_cast<std::ptrdiff_t>(dh2) * tp;
    std::uint16_t* qb = vp + static_cast<std::ptrdiff_t>(t2) * dp;
    std::uint16_t* pb = qb + static_cast<std::ptrdiff_t>(QB) * dh2;
    float* s = reinterpret_cast<float*>(align64_u16(reinterpret_cast<float*>(pb + static_cast<std::ptrdiff_t>(QB) * t2)));
    float* inv = s + static_cast<std::ptrdiff_t>(QB) * tp;

    // K^T as B of S = Q K^T: column j = key j, k = head dim d; a pair (d, d+1) of key j is contiguous in its row.
    {
        std::uint16_t* row = qb;  // the query block's space is free until the first query block
        std::uint32_t* kp32 = reinterpret_cast<std::uint32_t*>(kp);
        const int groups = dh2 / 2;
        for (int j = 0; j < tp; ++j) {
            if (j < Tn) row_to_bf16(k + j * ld, dh, row, dh2);
            else std::memset(row, 0, sizeof(std::uint16_t) * dh2);
            const int p = j / NRB, jj = j % NRB;
            for (int g = 0; g < groups; ++g) {
                std::uint32_t pair;
                std::memcpy(&pair, row + 2 * g, 4);
                kp32[(static_cast<std::ptrdiff_t>(p) * groups + g) * NRB + jj] = pair;
            }
        }
    }
    // V as B of O = P V: column = head dim d, k = key j; pairs (j, j+1) come from two rows.
    {
        const int groups = t2 / 2;
        for (int p = 0; p < dp / NRB; ++p)
            for (int g = 0; g < groups; ++g)
                for (int dd = 0; dd < NRB; ++dd) {
                    const int d = p * NRB + dd, j0 = 2 * g;
                    const bool in = d < dh;
                    const std::uint16_t lo = in && j0 < Tn ? bf16(v[j0 * ld + d]) : 0;
                    const std::uint16_t hi = in && j0 + 1 < Tn ? bf16(v[(j0 + 1) * ld + d]) : 0;
                    std::uint16_t* dst = vp + ((static_cast<std::ptrdiff_t>(p) * groups + g) * NRB + dd) * 2;
                    dst[0] = lo;
                    dst[1] = hi;
                }
    }
    for (int q0 = 0; q0 < Tn; q0 += QB) {
        const int qn = imin_b(QB, Tn - q0);
        for (int i = 0; i < qn; ++i) row_to_bf16(q + (q0 + i) * ld, dh, qb + i * dh2, dh2);
        gemm_bf16(qn, Tn, dh2 / 2, qb, dh2, kp, s, tp, scale, nullptr);
        for (int i = 0; i < qn; ++i) {
            float* si = s + i * tp;
            __m512 mx = _mm512_set1_ps(-3.4e38f);
            int j = 0;
            for (; j + 16 <= Tn; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(si + j));
            float m = _mm512_reduce_max_ps(mx);
            for (; j < Tn; ++j) m = si[j] > m ? si[j] : m;
            const __m512 mv = _mm512_set1_ps(m);
            __m512 sv = _mm512_setzero_ps();
            j = 0;
            for (; j + 16 <= Tn; j += 16) {
                const __m512 e = vexp(_mm512_sub_ps(_mm512_loadu_ps(si + j), mv));
                _mm512_storeu_ps(si + j, e);
                sv = _mm512_add_ps(sv, e);
            }
            if (j < Tn) {
                const __mmask16 mk = Vec::mask(Tn - j);
                const __m512 e = _mm512_maskz_mov_ps(mk, vexp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, si + j), mv)));
                _mm512_mask_storeu_ps(si + j, mk, e);
                sv = _mm512_add_ps(sv, e);
            }
            // the sum is of the fp32 probabilities; P goes to bf16 for the product with V
            inv[i] = 1.0f / _mm512_reduce_add_ps(sv);
            row_to_bf16(si, Tn, pb + i * t2, t2);
        }
        gemm_bf16(qn, dh, t2 / 2, pb, t2, vp, out + q0 * ldo, ldo, 1.0f, inv);
    }
}

}  // namespace BE_ISA_NS

AttentionFn bf16_attention_avx512() { return &BE_ISA_NS::attention; }

}  // namespace bortengine
