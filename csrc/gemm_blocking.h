// gemm_blocking.h: the blocked GEMM loop of one ISA path, written once for its fp32 (kernels_isa.inc) and bf16
// (kernels_bf16.inc) kernels. Include after vmath.h, inside no namespace.
//
// A Tile says what differs between them: the element types of the copied A block (AElem) and of the packed B
// panels (BElem), the register tile (MR x NR) and cache blocks (KC, MC, NC), how deep a packed panel is
// (panel_depth: K, or K rounded up to the bf16 pairs), how a block of A is copied (pack_a: a memcpy per row, or
// rounded to bf16 on the way), and the micro-kernel (ukernel<R>, for R = 1..MR rows). Panels hold k in order
// (bf16: in pairs, with KC even), so the rows of depth k0 start k0 * NR elements into a panel for both.
//
// Shapes: M = rows, N = columns, K = depth.
#pragma once
#include <cstddef>
#include <utility>

#include "kernels.h"
#include "vmath.h"

namespace bortengine {
namespace BE_ISA_NS {

inline int imin(int a, int b) { return a < b ? a : b; }

// The micro-kernels of a Tile by row count: table[r] computes r rows (1 <= r <= MR); table[0] is null.
template <class Tile, std::size_t... I>
const typename Tile::Ukernel* ukernel_table(std::index_sequence<I...>) {
    static const typename Tile::Ukernel table[] = {nullptr, &Tile::template ukernel<static_cast<int>(I) + 1>...};
    return table;
}

// C[M, N] = epilogue(A[M, K] · Bp) on one thread: for each NC-column block, each KC-deep slice of K and each
// MC-row block of A (copied into `work` by Tile::pack_a), the micro-kernel runs over the block's B panels.
// KC keeps one B micro-panel in L1 while it is reused down all rows of the M block; MC keeps the A block in L2
// while it is reused across the B panels of one NC-column block; NC keeps that B block in L2 while it is reused
// down all M blocks (large M: batch x tokens).
template <class Tile>
void gemm_blocked(int M, int N, int K, const float* A, std::ptrdiff_t lda, const typename Tile::BElem* Bp, float* C,
                  std::ptrdiff_t ldc, const Epilogue& ep, typename Tile::AElem* work) {
    constexpr int MR = Tile::MR, NR = Tile::NR, KC = Tile::KC, MC = Tile::MC, NC = Tile::NC;
    static const typename Tile::Ukernel* tails = ukernel_table<Tile>(std::make_index_sequence<MR>{});
    if (M <= 0 || N <= 0 || K <= 0) return;  // ops reject K = 0; nothing to do for empty blocks
    const std::ptrdiff_t panel = static_cast<std::ptrdiff_t>(Tile::panel_depth(K)) * NR;  // elements per panel
    for (int nb = 0; nb < N; nb += NC) {
        const int nbe = imin(N, nb + NC);
        for (int k0 = 0; k0 < K; k0 += KC) {
            const int kc = imin(KC, K - k0);
            const bool first = k0 == 0, last = k0 + kc >= K;
            for (int m0 = 0; m0 < M; m0 += MC) {
                const int mc = imin(MC, M - m0);
                const std::ptrdiff_t ldab = Tile::pack_a(mc, kc, A + m0 * lda + k0, lda, work);
                for (int n0 = nb; n0 < nbe; n0 += NR) {
                    const int nr = imin(NR, N - n0);
                    const typename Tile::BElem* b = Bp + (n0 / NR) * panel + static_cast<std::ptrdiff_t>(k0) * NR;
                    Epilogue e = ep;
                    if (e.bias) e.bias += n0;
                    // B micro-panel read next: the next panel of this block, or the first of the next K block
                    const typename Tile::BElem* next =
                        n0 + NR < nbe ? b + panel
                        : k0 + KC < K ? Bp + (nb / NR) * panel + static_cast<std::ptrdiff_t>(k0 + KC) * NR
                                      : nullptr;
                    for (int mm = 0; mm < mc; mm += MR) {
                        const int r = imin(MR, mc - mm);
                        if (e.residual) e.residual = ep.residual + (m0 + mm) * ep.ldr + n0;
                        if (ep.row_scale) e.row_scale = ep.row_scale + m0 + mm;
                        const typename Tile::AElem* a = work + mm * ldab;
                        float* c = C + (m0 + mm) * ldc + n0;
                        const typename Tile::BElem* pf = mm == 0 && m0 == 0 ? next : nullptr;
                        if (r == MR) Tile::template ukernel<MR>(kc, a, ldab, b, c, ldc, nr, first, last, e, pf);
                        else tails[r](kc, a, ldab, b, c, ldc, nr, first, last, e, pf);
                    }
                }
            }
        }
    }
}

// C[M, N] = epilogue(A[M, K] · Bp) straight on the micro-kernels, for attention's small products: A is already
// compact and in the Tile's A element type (the query block, or the probabilities), so gemm_blocked's block copy
// would be pure overhead, and K (dh or T) is a single block.
template <class Tile>
void panel_gemm(int M, int N, int K, const typename Tile::AElem* A, std::ptrdiff_t lda,
                const typename Tile::BElem* Bp, float* C, std::ptrdiff_t ldc, const Epilogue& ep) {
    constexpr int MR = Tile::MR, NR = Tile::NR;
    static const typename Tile::Ukernel* tails = ukernel_table<Tile>(std::make_index_sequence<MR>{});
    const std::ptrdiff_t panel = static_cast<std::ptrdiff_t>(Tile::panel_depth(K)) * NR;
    for (int n0 = 0; n0 < N; n0 += NR) {
        const int nr = imin(NR, N - n0);
        const typename Tile::BElem* b = Bp + (n0 / NR) * panel;
        for (int m0 = 0; m0 < M; m0 += MR) {
            const int r = imin(MR, M - m0);
            Epilogue e = ep;
            if (ep.row_scale) e.row_scale = ep.row_scale + m0;
            const typename Tile::AElem* a = A + m0 * lda;
            float* c = C + m0 * ldc + n0;
            if (r == MR) Tile::template ukernel<MR>(K, a, lda, b, c, ldc, nr, true, true, e, nullptr);
            else tails[r](K, a, lda, b, c, ldc, nr, true, true, e, nullptr);
        }
    }
}

}  // namespace BE_ISA_NS
}  // namespace bortengine
