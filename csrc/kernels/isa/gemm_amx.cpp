// GEMMs on AMX tiles (the amx copy only): y = x W^T computed as its transpose, Y^T = W X^T, so the
// weights are the A operand and load straight from their own layout, with no repacking.
//
// One TDPBF16PS multiplies an A tile of 16 weight rows x 32 BF16 values of K by a B tile holding the
// same 32 values of K for up to 16 activation rows, as 16 rows of pairs (B row r: x[m, 2r], x[m, 2r + 1]
// for each activation row m), into a C tile of 16 weight rows x 16 activation rows. C element (i, j)
// depends on weight row i and activation row j only, and takes the K steps from k = 0 up, each step one
// instruction, so y[m, n] is the same bits whatever M, the place of m among the activation rows, the n
// range or the thread (batch invariance), provided every M runs this kernel, M = 1 included. AMX reads
// BF16 subnormals as zero and flushes subnormal results, as vdpbf16ps does.
//
// BF16 weights load their A tile from memory, rows block_columns apart (Bf16Weights); MXFP4 weights are
// decoded block by block, 16 rows at a time, into an A tile in L1 (mxfp4_decode.h).
#include <algorithm>

#include "kernels/isa/isa.h"

#if defined(__AMX_BF16__)

#include "kernels/isa/mxfp4_decode.h"
#include "kernels/mxfp4.h"

namespace mlspecqd {
namespace MLSPECQD_ISA {

namespace {

constexpr int64_t kStep = 32;        // K values per tile product: one 64-byte A row
constexpr int64_t kTileRows = 16;    // weight rows of an A tile and of a C tile
constexpr int64_t kChunkRows = 16;   // activation rows of a B tile (a chunk), columns of a C tile
constexpr int64_t kCTiles = 4;      // C tiles a pass holds: groups x chunks
constexpr int64_t kMaxChunks = 4;   // B tiles a pass takes: the weights are read once per 64 activation rows

int64_t steps_of(int64_t K) { return (K + kStep - 1) / kStep; }

// Every tile 16 rows of 64 bytes (palette 1). tmm0..3: C tiles; tmm4 and tmm7: A; tmm5 and tmm6 (and tmm7
// when one A tile is enough): B. Consecutive loads go to different registers, so a load need not wait for
// the product still reading the previous one.
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
    uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};
// Constant-initialized: LDTILECFG reads all 64 bytes through an asm operand GCC sees as 8.
const TileConfig kTileConfig;

// The tile configuration is per thread, and the tile registers hold 8 KiB a context switch must save:
// every kernel call configures the tiles of the thread it runs on and releases them when done.
class TileSession {
public:
    TileSession() { _tile_loadconfig(&kTileConfig); }
    ~TileSession() { _tile_release(); }
    TileSession(const TileSession&) = delete;
    TileSession& operator=(const TileSession&) = delete;
};

// An A tile into tmm4 or tmm7. GCC's _tile_loadd is an asm statement that names no memory, so stores that
// fill a scratch tile could be moved across it, or dropped as never read; these clobber memory.
template <int Register>
inline void load_a_tile(const uint16_t* a, int64_t stride) {
    static_assert(Register == 4 || Register == 7, "A tiles live in tmm4 and tmm7");
    if constexpr (Register == 4)
        __asm__ volatile("tileloadd (%0,%1,1), %%tmm4" ::"r"(a), "r"(stride) : "memory");
    else
        __asm__ volatile("tileloadd (%0,%1,1), %%tmm7" ::"r"(a), "r"(stride) : "memory");
}

// Prepared activations, as BF16 pairs (one uint32: x[m, 2p] low, x[m, 2p + 1] high), K padded with zeros
// to whole steps. Chunk c (activation rows 16c .. 16c + rows - 1) starts at pair 16c * pairs_per_row; in it,
// pair p of its row j is at p * rows + j. The B tile of step s is then 16 rows of 64 bytes, rows * 4
// bytes apart, from pair 16 s * rows: columns past `rows` read other pairs (or the padding past the
// end), whose products land in C columns that are never stored.
int64_t pairs_per_row(int64_t K) { return steps_of(K) * kStep / 2; }
constexpr int64_t kPreparedPaddingBytes = 64;

void prepare_rows(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end, uint32_t* prepared) {
    const int64_t first_step = k_begin / kStep, end_step = steps_of(k_end);
    for (int64_t chunk = 0; chunk < M; chunk += kChunkRows) {
        const int64_t rows = std::min(kChunkRows, M - chunk);
        uint32_t* out = prepared + chunk * pairs_per_row(K);
        const __m512i lanes = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                 _mm512_set1_epi32(static_cast<int>(rows)));
        for (int64_t s = first_step; s < end_step; ++s) {
            const int64_t count = std::min(kStep, K - s * kStep);
            const __mmask16 low_mask = count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1);
            const __mmask16 high_mask =
                count >= 32 ? __mmask16(0xffff) : count <= 16 ? 0 : __mmask16((1u << (count - 16)) - 1);
            for (int64_t j = 0; j < rows; ++j) {
                const float* row = x + (chunk + j) * K + s * kStep;
                const __m512bh pairs = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(high_mask, row + 16),
                                                           _mm512_maskz_loadu_ps(low_mask, row));
                uint32_t* step_out = out + s * (kStep / 2) * rows + j;
                if (rows == 1)
                    _mm512_storeu_si512(step_out, reinterpret_cast<const __m512i&>(pairs));
                else
                    _mm512_i32scatter_epi32(step_out, lanes, reinterpret_cast<const __m512i&>(pairs), 4);
            }
        }
    }
}

// The C tiles into y: C tile g * Chunks + c holds y[first_row + 16c + j, n + 16g + i] at (i, j), stored
// for rows n + 16g + i below n_end and activation rows below M.
template <int Groups, int Chunks>
void store_outputs(int64_t first_row, int64_t M, int64_t n, int64_t n_end, float* y, int64_t ldy) {
    alignas(64) float c[kCTiles][kTileRows][kChunkRows];
    _tile_stored(0, c[0], 64);
    if constexpr (Groups * Chunks > 1) _tile_stored(1, c[1], 64);
    if constexpr (Groups * Chunks > 2) _tile_stored(2, c[2], 64);
    if constexpr (Groups * Chunks > 3) _tile_stored(3, c[3], 64);
    for (int g = 0; g < Groups; ++g) {
        const int64_t n0 = n + g * kTileRows, n_rows = std::min(kTileRows, n_end - n0);
        for (int chunk = 0; chunk < Chunks; ++chunk) {
            const int64_t m0 = first_row + chunk * kChunkRows, rows = std::min(kChunkRows, M - m0);
            const auto& tile = c[g * Chunks + chunk];
            for (int64_t j = 0; j < rows; ++j)
                for (int64_t i = 0; i < n_rows; ++i) y[(m0 + j) * ldy + n0 + i] = tile[i][j];
        }
    }
}

// Weight rows [n, n + 16 Groups) against activation rows [first_row, first_row + 16 Chunks) (fewer in the
// last chunk), over all of K; Groups x Chunks independent C tiles, so consecutive products do not wait on
// each other's accumulator. `weights.tile(n, s, scratch, stride)` gives the A tile of 16 rows from n at
// step s (its first row; the bytes between rows in `stride`); `weights.prefetch(n, rows, s)` fetches what
// the next pass needs.
template <int Groups, int Chunks, class Weights>
void pass(const uint32_t* x, int64_t M, int64_t K, int64_t first_row, const Weights& weights, int64_t n,
          int64_t n_end, float* y, int64_t ldy) {
    static_assert(Groups * Chunks <= kCTiles && (Groups <= 2 || Chunks == 1) && (Chunks <= 2 || Groups == 1),
                  "the register plan below");
    const int64_t steps = steps_of(K), pairs = pairs_per_row(K);
    const uint32_t* b[Chunks];
    int64_t b_stride[Chunks];
    for (int chunk = 0; chunk < Chunks; ++chunk) {
        const int64_t m0 = first_row + chunk * kChunkRows, rows = std::min(kChunkRows, M - m0);
        b[chunk] = x + m0 * pairs;
        b_stride[chunk] = rows * 4;
    }
    const auto b_tile = [&](int chunk, int64_t s) { return b[chunk] + s * (kStep / 2) * (b_stride[chunk] / 4); };
    _tile_zero(0);
    if constexpr (Groups * Chunks > 1) _tile_zero(1);
    if constexpr (Groups * Chunks > 2) _tile_zero(2);
    if constexpr (Groups * Chunks > 3) _tile_zero(3);
    // The A tiles of step s + 1 are got (for MXFP4: decoded into scratch) before step s loads its own, so
    // the stores that fill a scratch tile have drained to L1 by the time a tile load reads them.
    alignas(64) uint16_t scratch[2][Groups][kTileRows][kStep];
    const uint16_t* a[Groups];
    int64_t a_stride[Groups];
    const uint16_t* next[Groups];
    int64_t next_stride[Groups];
    for (int g = 0; g < Groups; ++g) next[g] = weights.tile(n + g * kTileRows, 0, scratch[0][g], next_stride[g]);
    for (int64_t s = 0; s < steps; ++s) {
        weights.prefetch(n, Groups * kTileRows, s);
        for (int g = 0; g < Groups; ++g) {
            a[g] = next[g];
            a_stride[g] = next_stride[g];
        }
        if (s + 1 < steps)
            for (int g = 0; g < Groups; ++g)
                next[g] = weights.tile(n + g * kTileRows, s + 1, scratch[(s + 1) & 1][g], next_stride[g]);
        if constexpr (Chunks == 1) {  // B in tmm5; A in tmm4 and tmm7 by turns; C tile g for group g
            _tile_loadd(5, b_tile(0, s), b_stride[0]);
            load_a_tile<4>(a[0], a_stride[0]);
            _tile_dpbf16ps(0, 4, 5);
            if constexpr (Groups > 1) {
                load_a_tile<7>(a[1], a_stride[1]);
                _tile_dpbf16ps(1, 7, 5);
            }
            if constexpr (Groups > 2) {
                load_a_tile<4>(a[2], a_stride[2]);
                _tile_dpbf16ps(2, 4, 5);
            }
            if constexpr (Groups > 3) {
                load_a_tile<7>(a[3], a_stride[3]);
                _tile_dpbf16ps(3, 7, 5);
            }
        } else if constexpr (Chunks == 2) {  // B in tmm5 and tmm6; A in tmm4 and tmm7; C tile 2g + c
            _tile_loadd(5, b_tile(0, s), b_stride[0]);
            _tile_loadd(6, b_tile(1, s), b_stride[1]);
            load_a_tile<4>(a[0], a_stride[0]);
            _tile_dpbf16ps(0, 4, 5);
            _tile_dpbf16ps(1, 4, 6);
            if constexpr (Groups > 1) {
                load_a_tile<7>(a[1], a_stride[1]);
                _tile_dpbf16ps(2, 7, 5);
                _tile_dpbf16ps(3, 7, 6);
            }
        } else {  // one group: A in tmm4; B in tmm5, tmm6, tmm7, then tmm5 again; C tile c
            load_a_tile<4>(a[0], a_stride[0]);
            _tile_loadd(5, b_tile(0, s), b_stride[0]);
            _tile_dpbf16ps(0, 4, 5);
            _tile_loadd(6, b_tile(1, s), b_stride[1]);
            _tile_dpbf16ps(1, 4, 6);
            _tile_loadd(7, b_tile(2, s), b_stride[2]);
            _tile_dpbf16ps(2, 4, 7);
            if constexpr (Chunks > 3) {
                _tile_loadd(5, b_tile(3, s), b_stride[3]);
                _tile_dpbf16ps(3, 4, 5);
            }
        }
    }
    store_outputs<Groups, Chunks>(first_row, M, n, n_end, y, ldy);
}

// Weight rows [n_begin, n_end) in passes of up to 64 (fewer as the activation chunks grow), each pass
// taking up to 64 activation rows.
template <class Weights>
void gemm_tiles(const uint32_t* x, int64_t M, int64_t K, const Weights& weights, int64_t n_begin, int64_t n_end,
                float* y, int64_t ldy) {
    const TileSession tiles;
    constexpr int64_t kPassRows = kMaxChunks * kChunkRows;
    for (int64_t first_row = 0; first_row < M; first_row += kPassRows) {
        const int64_t chunks = (std::min(kPassRows, M - first_row) + kChunkRows - 1) / kChunkRows;
        const int64_t max_groups = chunks == 1 ? 4 : chunks == 2 ? 2 : 1;
        for (int64_t n = n_begin; n < n_end;) {
            const int64_t groups = std::min(max_groups, (n_end - n + kTileRows - 1) / kTileRows);
            switch (chunks * 10 + groups) {
                case 11: pass<1, 1>(x, M, K, first_row, weights, n, n_end, y, ldy); break;
                case 12: pass<2, 1>(x, M, K, first_row, weights, n, n_end, y, ldy); break;
                case 13: pass<3, 1>(x, M, K, first_row, weights, n, n_end, y, ldy); break;
                case 14: pass<4, 1>(x, M, K, first_row, weights, n, n_end, y, ldy); break;
                case 21: pass<1, 2>(x, M, K, first_row, weights, n, n_end, y, ldy); break;
                case 22: pass<2, 2>(x, M, K, first_row, weights, n, n_end, y, ldy); break;
                case 31: pass<1, 3>(x, M, K, first_row, weights, n, n_end, y, ldy); break;
                default: pass<1, 4>(x, M, K, first_row, weights, n, n_end, y, ldy); break;
            }
            n += groups * kTileRows;
        }
    }
}

// BF16 weights: the A tile is read in place when the 16 rows exist and the step lies inside one K block
// of whole steps; otherwise (the last rows of W, a K that is not a multiple of 32) it is copied into
// scratch with zeros for the rows and columns W does not have, which add nothing.
class Bf16Tiles {
public:
    Bf16Tiles(const Bf16Weights& w, int64_t K)
        : w_(w), K_(K), in_place_steps_(K % kStep == 0 && w.block_columns % kStep == 0) {}

    const uint16_t* tile(int64_t n, int64_t s, uint16_t (*scratch)[kStep], int64_t& stride) const {
        const int64_t k = s * kStep;
        if (in_place_steps_ && n + kTileRows <= w_.rows) {
            stride = w_.block_columns * 2;
            return w_.at(n, k);
        }
        for (int64_t i = 0; i < kTileRows; ++i)
            for (int64_t c = 0; c < kStep; ++c)
                scratch[i][c] = n + i < w_.rows && k + c < K_ ? *w_.at(n + i, k + c) : uint16_t{0};
        stride = kStep * 2;
        return scratch[0];
    }

    // The next pass's rows (the `rows` after [n, n + rows)), into L2 at the pace this pass reads its own. In
    // each K block those rows are one contiguous run (rows * block_columns values), which the pass's steps
    // through the block walk in order, `rows` lines a step: one sequential stream, where the tile loads
    // themselves touch `rows` lines far apart.
    void prefetch(int64_t n, int64_t rows, int64_t s) const {
        if (!in_place_steps_ || n + 2 * rows > w_.rows) return;
        const int64_t k = s * kStep, in_block = k % w_.block_columns;
        const char* ahead = reinterpret_cast<const char*>(w_.at(n + rows, k - in_block)) + in_block / kStep * rows * 64;
        for (int64_t i = 0; i < rows; ++i) _mm_prefetch(ahead + i * 64, _MM_HINT_T1);
    }

private:
    Bf16Weights w_;
    int64_t K_;
    bool in_place_steps_;
};

// MXFP4 weights (GGUF's row-major blocks, K a multiple of 32): step s is block s of each row, decoded
// into scratch; rows W does not have are zeros.
class Mxfp4Tiles {
public:
    Mxfp4Tiles(const uint8_t* w, int64_t K, int64_t rows)
        : w_(w), row_bytes_(K / kMxfp4BlockValues * kMxfp4BlockBytes), rows_(rows) {}

    const uint16_t* tile(int64_t n, int64_t s, uint16_t (*scratch)[kStep], int64_t& stride) const {
        const uint8_t* block = w_ + n * row_bytes_ + s * kMxfp4BlockBytes;
        const int64_t present = std::min(kTileRows, rows_ - n);
        for (int64_t i = 0; i < present; ++i) _mm512_store_si512(scratch[i], decode_block(block + i * row_bytes_));
        for (int64_t i = present; i < kTileRows; ++i) _mm512_store_si512(scratch[i], _mm512_setzero_si512());
        stride = kStep * 2;
        return scratch[0];
    }

    // The next pass's rows (the `rows` after [n, n + rows)), into L2 at the pace this pass reads its own:
    // both are contiguous. Prefetches never fault, so the rows need not exist.
    void prefetch(int64_t n, int64_t rows, int64_t s) const {
        const char* ahead = reinterpret_cast<const char*>(w_ + (n + rows) * row_bytes_ + s * rows * kMxfp4BlockBytes);
        for (int64_t i = 0; i < rows * kMxfp4BlockBytes; i += 64) _mm_prefetch(ahead + i, _MM_HINT_T1);
    }

private:
    const uint8_t* w_;
    int64_t row_bytes_, rows_;
};

}  // namespace

int64_t amx_prepared_bytes(int64_t M, int64_t K) { return M * pairs_per_row(K) * 4 + kPreparedPaddingBytes; }

void amx_prepare(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end, void* prepared) {
    prepare_rows(x, M, K, k_begin, k_end, static_cast<uint32_t*>(prepared));
}

void gemm_bf16_amx(const void* prepared, int64_t M, int64_t K, const Bf16Weights& w, int64_t n_begin, int64_t n_end,
                   float* y, int64_t ldy) {
    gemm_tiles(static_cast<const uint32_t*>(prepared), M, K, Bf16Tiles(w, K), n_begin, n_end, y, ldy);
}

void gemm_mxfp4_amx(const void* prepared, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end,
                    float* y, int64_t ldy) {
    gemm_tiles(static_cast<const uint32_t*>(prepared), M, K, Mxfp4Tiles(w, K, n_end), n_begin, n_end, y, ldy);
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd

#endif
