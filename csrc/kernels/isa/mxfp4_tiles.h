// The loop both vector MXFP4 GEMMs share (csrc/kernels/isa/*.cpp only): y = x W^T over tiles of MT
// activation rows by R weight rows, W in GGUF's row-major MXFP4 blocks. The GEMMs differ in how a tile
// multiplies (BF16 activations in mxfp4.cpp, int8 activations in mxfp4_int8.cpp) and say so through a
// Tiles type:
//   Tiles::Rows                  prepared activation rows; rows.from(m) is the view that starts at row m
//   Tiles::kMaxTileM             activation rows a tile takes at most
//   Tiles::kMaxTileMFromL2       the same when kMaxTileM rows of activations overflow L1
//   Tiles::activation_row_bytes(K)  bytes one prepared activation row takes
//   Tiles::row_tile(MT)          weight rows of a tile of MT activation rows (divides kRowsPerPass)
//   Tiles::tile<R, MT>(rows, K, w, row_bytes, y, ldy)  y[m * ldy + r] for m < MT, r < R
// A tile's result must not depend on R or MT; then neither does y's (batch invariance).
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "kernels/isa/isa.h"
#include "kernels/mxfp4.h"

#if defined(__AVX2__)

namespace mlspecqd {
namespace MLSPECQD_ISA {

// The sum of eight lanes in a fixed order: (l0 + l4) and (l2 + l6), (l1 + l5) and (l3 + l7), then the two.
inline float reduce_add(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// While a tile runs, the tile after next (rows are contiguous, so R * row_bytes further on) is requested
// at the pace the tile reads its own rows. Short rows (816 bytes at K = 1536) end before the hardware
// prefetcher has learned their stream; this keeps enough reads in flight to cover memory latency (one
// tile ahead is too close at K = 1536). Prefetching past the array's end is harmless: prefetches never
// fault.
template <int R>
inline void prefetch_ahead(const uint8_t* w, int64_t row_bytes, int64_t b) {
    const uint8_t* ahead = w + 2 * R * row_bytes + b * R * kMxfp4BlockBytes;
    for (int i = 0; i < R * kMxfp4BlockBytes; i += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + i), _MM_HINT_T0);
}

// Weight rows a tile of MT activation rows takes when each of its R x MT outputs holds one register and
// each decoded weight block `per_block` more: the most, of 8, 4, 3, 2 and 1, that fit beside `spare`.
constexpr int fitting_row_tile(int activation_rows, int registers, int per_block, int spare) {
    for (int rows : {8, 4, 3, 2})
        if (rows * (activation_rows + per_block) + spare <= registers) return rows;
    return 1;
}

constexpr int kRowsPerPass = 24;
// Activation rows that share one read of W: their prepared copy stays in L2 while W streams past.
constexpr int64_t kRowsPerChunkM = 64;
// Activation bytes of a tile that L1 (48 KiB on the reference machine) keeps beside the weight rows.
constexpr int64_t kL1ActivationBytes = 32 << 10;

template <class Tiles>
using PassFn = void (*)(const typename Tiles::Rows& x, int64_t K, const uint8_t* w, int64_t row_bytes, int rows,
                        float* y, int64_t ldy);

// `rows` (<= kRowsPerPass) weight rows against MT activation rows.
template <class Tiles, int MT>
void tile_pass(const typename Tiles::Rows& x, int64_t K, const uint8_t* w, int64_t row_bytes, int rows, float* y,
               int64_t ldy) {
    constexpr int R = Tiles::row_tile(MT);
    static_assert(kRowsPerPass % R == 0, "a pass is whole tiles but for its last rows");
    int r = 0;
    for (; r + R <= rows; r += R) Tiles::template tile<R, MT>(x, K, w + r * row_bytes, row_bytes, y + r, ldy);
    for (; r < rows; ++r) Tiles::template tile<1, MT>(x, K, w + r * row_bytes, row_bytes, y + r, ldy);
}

template <class Tiles, std::size_t... I>
constexpr std::array<PassFn<Tiles>, sizeof...(I)> pass_table(std::index_sequence<I...>) {
    return {{&tile_pass<Tiles, static_cast<int>(I) + 1>...}};
}

// Weight rows outside, activation tiles inside, so a pass's rows are read from memory once and reused
// from cache by every activation tile.
template <class Tiles>
void gemm_tiled(const typename Tiles::Rows& x, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end,
                float* y, int64_t ldy) {
    static constexpr std::array<PassFn<Tiles>, Tiles::kMaxTileM> passes =
        pass_table<Tiles>(std::make_index_sequence<Tiles::kMaxTileM>{});
    const int64_t row_bytes = K / kMxfp4BlockValues * kMxfp4BlockBytes;
    for (int64_t chunk = 0; chunk < M; chunk += kRowsPerChunkM) {
        const int64_t chunk_rows = std::min(kRowsPerChunkM, M - chunk);
        // Activation rows split into equal tiles (7 = 4 + 3, not 6 + 1): fewer, fuller tiles.
        const int64_t max_tile_m = Tiles::kMaxTileM * Tiles::activation_row_bytes(K) <= kL1ActivationBytes
                                       ? Tiles::kMaxTileM
                                       : Tiles::kMaxTileMFromL2;
        const int64_t tiles = (chunk_rows + max_tile_m - 1) / max_tile_m;
        for (int64_t n = n_begin; n < n_end; n += kRowsPerPass) {
            const int rows = static_cast<int>(std::min<int64_t>(kRowsPerPass, n_end - n));
            for (int64_t t = 0; t < tiles; ++t) {
                const int64_t m = chunk + chunk_rows * t / tiles, tile_m = chunk + chunk_rows * (t + 1) / tiles - m;
                passes[tile_m - 1](x.from(m), K, w + n * row_bytes, row_bytes, rows, y + m * ldy + n, ldy);
            }
        }
    }
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd

#endif
