// amx_tiles.h: what the AMX GEMMs (kernels_bf16_amx.cc, kernels_int8_amx.cc) share: the tile configuration and the
// loop of tile products over a C block. Include only in a file compiled with -mamx-tile.
//
// Eight tile registers of 16 rows x 64 bytes: C in 0-3 (a 2 x 2 block of 16 x 16 fp32 or int32), A in 4-5 (16 rows
// of 32 bf16 or 64 u8), B in 6-7 (16 rows of k pairs or groups of 4 for 16 columns). The configuration is per
// thread and costs little beside a GEMM call, so each call loads it and releases the tiles when done (the OS then
// has no tile state to save for that thread).
#pragma once
#include "intrinsics.h"

#include <cstddef>
#include <cstdint>

namespace bortengine {

struct alignas(64) TileConfig {
    std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
    std::uint16_t colsb[16] = {};
    std::uint8_t rows[16] = {};
};

inline void configure_tiles() {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
        c.rows[t] = 16;
        c.colsb[t] = 64;
    }
    _tile_loadconfig(&c);
}

// The C tiles of a 16 x 32 (RT = 1: tiles 0-1) or 32 x 32 (RT = 2: tiles 0-3) block: zeroed before its products,
// and stored after them to `stage`, 32 four-byte elements (fp32 or int32) a row.
template <int RT>
inline void zero_c_tiles() {
    _tile_zero(0);
    _tile_zero(1);
    if (RT == 2) {
        _tile_zero(2);
        _tile_zero(3);
    }
}

template <int RT>
inline void store_c_tiles(void* stage) {
    constexpr int kRow = 32 * 4;  // bytes
    char* s = static_cast<char*>(stage);
    _tile_stored(0, s, kRow);
    _tile_stored(1, s + 64, kRow);
    if (RT == 2) {
        _tile_stored(2, s + 16 * kRow, kRow);
        _tile_stored(3, s + 16 * kRow + 64, kRow);
    }
}

// The products of a C block of 16 x 32 (RT = 1) or 32 x 32 (RT = 2) over `steps` tile rows of depth, into `stage`
// (store_c_tiles). Each step reads 64 bytes of depth: of each A tile's 16 rows, at a0 and a1 (rows lda0 and lda1
// bytes apart), and 16 rows of the B panel, whose 128-byte rows hold its 32 columns as two tiles side by side.
// Dot::products<RT>() multiplies the loaded tiles into the C tiles (A 4 x B 6 -> C 0, 4 x 7 -> 1, 5 x 6 -> 2,
// 5 x 7 -> 3): tdpbf16ps (k pairs of bf16) or tdpbusd (groups of 4 u8 x s8). (GCC's tile intrinsics paste their
// tile numbers into the instruction's text, so they must be literals: no template parameter can name a tile.)
// `pf`, when set, is the next B panel: prefetched a step (2 KiB) per step, as the vector kernels do, so the weights
// of the next panel stream in while this one computes.
template <int RT, class Dot>
inline void tile_products(int steps, const void* a0, std::ptrdiff_t lda0, const void* a1, std::ptrdiff_t lda1,
                          const void* b, void* stage, const void* pf = nullptr) {
    constexpr std::ptrdiff_t kStepA = 64, kRowB = 128, kStepB = 16 * kRowB;
    const char* pa0 = static_cast<const char*>(a0);
    const char* pa1 = static_cast<const char*>(a1);
    const char* pb = static_cast<const char*>(b);
    const char* pp = static_cast<const char*>(pf);
    zero_c_tiles<RT>();
    for (int s = 0; s < steps; ++s) {
        if (pp) {
#pragma GCC unroll 32
            for (std::ptrdiff_t o = 0; o < kStepB; o += 64) __builtin_prefetch(pp + s * kStepB + o, 0, 2);
        }
        const char* bs = pb + s * kStepB;
        _tile_loadd(6, bs, kRowB);
        _tile_loadd(7, bs + 64, kRowB);  // columns 16-31
        _tile_loadd(4, pa0 + s * kStepA, lda0);
        if (RT == 2) _tile_loadd(5, pa1 + s * kStepA, lda1);
        Dot::template products<RT>();
    }
    store_c_tiles<RT>(stage);
}

}  // namespace bortengine
