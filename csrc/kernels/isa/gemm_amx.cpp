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
#include <cstring>

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
constexpr int64_t kMaxChunks = 4;    // B tiles a pass takes: the weights are read once per 64 activation rows
constexpr int64_t kTileBytes = 1024;  // 16 rows of 64 bytes, every tile

int64_t steps_of(int64_t K) { return (K + kStep - 1) / kStep; }

// Every tile 16 rows of 64 bytes (palette 1). tmm0..3: C tiles of up to four chunks; tmm4: A; tmm5, tmm6: B,
// alternating so a B load need not wait for the product reading the previous one.
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

// GCC's tile loads are asm statements that name no memory: without this, the stores that fill a scratch
// tile could be moved past the load, or dropped as never read.
inline void scratch_written() { __asm__ volatile("" ::: "memory"); }

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
                const __m512bh pairs =
                    _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(high_mask, row + 16), _mm512_maskz_loadu_ps(low_mask, row));
                uint32_t* step_out = out + s * (kStep / 2) * rows + j;
                if (rows == 1)
                    _mm512_storeu_si512(step_out, reinterpret_cast<const __m512i&>(pairs));
                else
                    _mm512_i32scatter_epi32(step_out, lanes, reinterpret_cast<const __m512i&>(pairs), 4);
            }
        }
    }
}

// The C tiles of `chunks` chunks into y: C tile c holds y[first_row + 16c + j, n + i] at (i, j), for
// i < n_rows and j below the chunk's rows.
template <int Chunks>
void store_outputs(int64_t first_row, int64_t M, int64_t n, int64_t n_rows, float* y, int64_t ldy) {
    alignas(64) float c[kMaxChunks][kTileRows][kChunkRows];
    _tile_stored(0, c[0], 64);
    if constexpr (Chunks > 1) _tile_stored(1, c[1], 64);
    if constexpr (Chunks > 2) _tile_stored(2, c[2], 64);
    if constexpr (Chunks > 3) _tile_stored(3, c[3], 64);
    for (int chunk = 0; chunk < Chunks; ++chunk) {
        const int64_t m0 = first_row + chunk * kChunkRows, rows = std::min(kChunkRows, M - m0);
        for (int64_t j = 0; j < rows; ++j)
            for (int64_t i = 0; i < n_rows; ++i) y[(m0 + j) * ldy + n + i] = c[chunk][i][j];
    }
}

// Weight rows [n, n + 16) against activation rows [first_row, first_row + 16 Chunks) (fewer in the last
// chunk), over all of K. `weights.tile(n, s, scratch)` gives the A tile of step s (its first row and the
// bytes between rows); `weights.prefetch(n, s)` fetches what a later group needs.
template <int Chunks, class Weights>
void pass(const uint32_t* x, int64_t M, int64_t K, int64_t first_row, const Weights& weights, int64_t n,
          int64_t n_rows, float* y, int64_t ldy) {
    const int64_t steps = steps_of(K), pairs = pairs_per_row(K);
    const uint32_t* b[kMaxChunks];
    int64_t b_stride[kMaxChunks];
    for (int chunk = 0; chunk < Chunks; ++chunk) {
        const int64_t m0 = first_row + chunk * kChunkRows, rows = std::min(kChunkRows, M - m0);
        b[chunk] = x + m0 * pairs;
        b_stride[chunk] = rows * 4;
    }
    _tile_zero(0);
    if constexpr (Chunks > 1) _tile_zero(1);
    if constexpr (Chunks > 2) _tile_zero(2);
    if constexpr (Chunks > 3) _tile_zero(3);
    alignas(64) uint16_t scratch[2][kTileRows][kStep];
    for (int64_t s = 0; s < steps; ++s) {
        weights.prefetch(n, s);
        int64_t a_stride;
        const uint16_t* a = weights.tile(n, s, scratch[s & 1], a_stride);
        _tile_loadd(4, a, a_stride);
        const int64_t b_offset = s * (kStep / 2);
        _tile_loadd(5, b[0] + b_offset * (b_stride[0] / 4), b_stride[0]);
        _tile_dpbf16ps(0, 4, 5);
        if constexpr (Chunks > 1) {
            _tile_loadd(6, b[1] + b_offset * (b_stride[1] / 4), b_stride[1]);
            _tile_dpbf16ps(1, 4, 6);
        }
        if constexpr (Chunks > 2) {
            _tile_loadd(5, b[2] + b_offset * (b_stride[2] / 4), b_stride[2]);
            _tile_dpbf16ps(2, 4, 5);
        }
        if constexpr (Chunks > 3) {
            _tile_loadd(6, b[3] + b_offset * (b_stride[3] / 4), b_stride[3]);
            _tile_dpbf16ps(3, 4, 6);
        }
    }
    store_outputs<Chunks>(first_row, M, n, n_rows, y, ldy);
}

// Weight rows [n_begin, n_end) 16 at a time, each group taking up to 64 activation rows per pass.
template <class Weights>
void gemm_tiles(const uint32_t* x, int64_t M, int64_t K, const Weights& weights, int64_t n_begin, int64_t n_end,
                float* y, int64_t ldy) {
    const TileSession tiles;
    constexpr int64_t kPassRows = kMaxChunks * kChunkRows;
    for (int64_t first_row = 0; first_row < M; first_row += kPassRows) {
        const int64_t chunks = (std::min(kPassRows, M - first_row) + kChunkRows - 1) / kChunkRows;
        for (int64_t n = n_begin; n < n_end; n += kTileRows) {
            const int64_t n_rows = std::min(kTileRows, n_end - n);
            switch (chunks) {
                case 1: pass<1>(x, M, K, first_row, weights, n, n_rows, y, ldy); break;
                case 2: pass<2>(x, M, K, first_row, weights, n, n_rows, y, ldy); break;
                case 3: pass<3>(x, M, K, first_row, weights, n, n_rows, y, ldy); break;
                default: pass<4>(x, M, K, first_row, weights, n, n_rows, y, ldy); break;
            }
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
        scratch_written();
        stride = kStep * 2;
        return scratch[0];
    }

    // The same step of the next group of rows, into L2: one group ahead (48 KiB at K = 1536 row-major,
    // 28 KiB in a 896-column block), further than L1 holds.
    void prefetch(int64_t n, int64_t s) const {
        if (!in_place_steps_ || n + 2 * kTileRows > w_.rows) return;
        const char* ahead = reinterpret_cast<const char*>(w_.at(n + kTileRows, s * kStep));
        for (int64_t i = 0; i < kTileRows; ++i) _mm_prefetch(ahead + i * w_.block_columns * 2, _MM_HINT_T1);
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
        scratch_written();
        stride = kStep * 2;
        return scratch[0];
    }

    // The group after the next, at the pace this group reads its own (its 16 rows are contiguous).
    void prefetch(int64_t n, int64_t s) const {
        const char* ahead = reinterpret_cast<const char*>(w_ + (n + 2 * kTileRows) * row_bytes_ +
                                                          s * kTileRows * kMxfp4BlockBytes);
        for (int64_t i = 0; i < kTileRows * kMxfp4BlockBytes; i += 64) _mm_prefetch(ahead + i, _MM_HINT_T0);
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
