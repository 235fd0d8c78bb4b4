// amx_tiles.h: the tile configuration the AMX GEMMs (kernels_bf16_amx.cc, kernels_int8_amx.cc) share. Include only
// in a file compiled with -mamx-tile.
//
// Eight tile registers of 16 rows x 64 bytes: C in 0-3 (a 2 x 2 block of 16 x 16 fp32 or int32), A in 4-5 (16 rows
// of 32 bf16 or 64 u8), B in 6-7 (16 rows of k pairs or groups of 4 for 16 columns). The configuration is per
// thread and costs little beside a GEMM call, so each call loads it and releases the tiles when done (the OS then
// has no tile state to save for that thread).
#pragma once
#include <immintrin.h>

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

}  // namespace bortengine
