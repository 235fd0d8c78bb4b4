// kernels_bf16_avx512bf16.cc: the AVX512_BF16 variant (vdpbf16ps: pairs of bf16 products accumulated in fp32), on
// CPUs that have it: the bf16 GEMM of kernels_bf16.inc, and self-attention with bf16 dot products, which the int8
// and bf16 encoders run. In the attention, Q K^T and P V run on the same micro-kernel with bf16 operands and fp32
// accumulation; scaling, the relative position bias (MPNet), softmax (exp) and the 1/sum normalisation stay fp32.
// Twice the multiply rate of fp32 FMA, at bf16's 8-bit mantissa on the operands: a precision the int8 and bf16
// paths already trade away in their linear layers, and which the float32 engine never uses.
//
// Compiled with its own flags (setup.py ISA_FLAGS). Layouts (W = 16 fp32 lanes, NR columns per panel): B panels
// [panel][k/2][NR][2] bf16, i.e. one 32-bit pair of consecutive k per column; A rows: bf16 with pairs of
// consecutive k contiguous, broadcast 32 bits at a time (kernels_bf16.inc).
#define BE_ISA_AVX512 1
#define BE_BF16_NATIVE 1
#define BE_ISA_NS isa16_avx512bf16
#define BE_BF16_TABLE_FN avx512bf16_bf16_kernels
#include "kernels_bf16.inc"

namespace bortengine {
namespace BE_ISA_NS {

static_assert(NR <= kMaxBf16PanelWidth, "attention_scratch_floats (kernels.h) sizes panels up to that width");

inline int rup(int x, int m) { return (x + m - 1) / m * m; }

inline std::uint16_t* align64_u16(float* p) {
    return reinterpret_cast<std::uint16_t*>((reinterpret_cast<std::uintptr_t>(p) + 63) & ~std::uintptr_t(63));
}

void attention(int Tn, int dh, const float* q, const float* k, const float* v, std::ptrdiff_t ld, float scale,
               const float* bias, float* out, std::ptrdiff_t ldo, float* scratch) {
    const int dh2 = rup(dh, 2), t2 = rup(Tn, 2), tp = rup(Tn, NR), dp = rup(dh, NR);
    const int QB = kAttnQueryBlock;
    // scratch: K panels (dh2 x tp bf16), V panels (t2 x dp bf16), Q block (QB x dh2 bf16), P block (QB x t2 bf16),
    // scores (QB x tp fp32), 1/sums (QB fp32); see attention_scratch_floats.
    std::uint16_t* kp = align64_u16(scratch);
    std::uint16_t* vp = kp + static_cast<std::ptrdiff_t>(dh2) * tp;
    std::uint16_t* qb = vp + static_cast<std::ptrdiff_t>(t2) * dp;
    std::uint16_t* pb = qb + static_cast<std::ptrdiff_t>(QB) * dh2;
    std::uint16_t* scores = align64_u16(reinterpret_cast<float*>(pb + static_cast<std::ptrdiff_t>(QB) * t2));
    float* s = reinterpret_cast<float*>(scores);
    float* inv = s + static_cast<std::ptrdiff_t>(QB) * tp;

    // K^T as B of S = Q K^T: column j = key j, k = head dim d; a pair (d, d+1) of key j is contiguous in its row.
    {
        std::uint16_t* row = qb;  // the query block's space is free until the first query block
        std::uint32_t* kp32 = reinterpret_cast<std::uint32_t*>(kp);
        const int groups = dh2 / 2;
        for (int j = 0; j < tp; ++j) {
            if (j < Tn) round_row(k + j * ld, dh, row, dh2);
            else std::memset(row, 0, sizeof(std::uint16_t) * dh2);
            const int p = j / NR, jj = j % NR;
            for (int g = 0; g < groups; ++g) {
                std::uint32_t pair;
                std::memcpy(&pair, row + 2 * g, 4);
                kp32[(static_cast<std::ptrdiff_t>(p) * groups + g) * NR + jj] = pair;
            }
        }
    }
    // V as B of O = P V: column = head dim d, k = key j; pairs (j, j+1) come from two rows.
    {
        const int groups = t2 / 2;
        for (int p = 0; p < dp / NR; ++p)
            for (int g = 0; g < groups; ++g)
                for (int dd = 0; dd < NR; ++dd) {
                    const int d = p * NR + dd, j0 = 2 * g;
                    const bool in = d < dh;
                    const std::uint16_t lo = in && j0 < Tn ? bf16_bits(v[j0 * ld + d]) : 0;
                    const std::uint16_t hi = in && j0 + 1 < Tn ? bf16_bits(v[(j0 + 1) * ld + d]) : 0;
                    std::uint16_t* dst = vp + ((static_cast<std::ptrdiff_t>(p) * groups + g) * NR + dd) * 2;
                    dst[0] = lo;
                    dst[1] = hi;
                }
    }
    for (int q0 = 0; q0 < Tn; q0 += QB) {
        const int qn = imin(QB, Tn - q0);
        for (int i = 0; i < qn; ++i) round_row(q + (q0 + i) * ld, dh, qb + i * dh2, dh2);
        Epilogue es;
        es.alpha = scale;
        panel_gemm<Bf16Tile>(qn, Tn, dh, qb, dh2, kp, s, tp, es);
        for (int i = 0; i < qn; ++i) {
            float* si = s + i * tp;
            // the fp32 scores take the relative position bias (MPNet) before the softmax, as in the fp32 kernel
            const __m512 mv = _mm512_set1_ps(row_max_biased(si, bias ? bias - (q0 + i) : nullptr, Tn));
            __m512 sv = _mm512_setzero_ps();
            int j = 0;
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
            round_row(si, Tn, pb + i * t2, t2);
        }
        Epilogue eo;
        eo.row_scale = inv;
        panel_gemm<Bf16Tile>(qn, dh, Tn, pb, t2, vp, out + q0 * ldo, ldo, eo);
    }
}

}  // namespace BE_ISA_NS

AttentionFn bf16_attention_avx512() { return &BE_ISA_NS::attention; }

}  // namespace bortengine
