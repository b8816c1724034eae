// BF16-weight GEMM: y[m, n] = sum_k bf16(x[m, k]) * w[n, k], products summed in float32.
//
// Batch invariance: every output is one accumulator that walks K in the same steps from k = 0 up,
// then the same horizontal sum. Tiles of several rows and columns only share loads, never partial
// sums, and accumulators parked in memory between K blocks come back with the same bits, so
// y[m, n] is the same whatever tile, batch size, n range or thread computes it.
//
// The scalar path is the reference: a plain sequential sum over k. The vector paths sum in lanes,
// so they match it within rounding, not bit for bit.
#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "cache_aligned.h"
#include "kernels/bf16.h"
#include "kernels/isa/isa.h"

namespace mlspecqd {
namespace MLSPECQD_ISA {

namespace {

#if defined(__AVX512BF16__)

// One zmm holds 32 BF16 values; vdpbf16ps adds their pairwise products into 16 float lanes.
using Prepared = uint16_t;  // activations as BF16 bits
using Accumulator = __m512;
constexpr int64_t kStep = 32;
constexpr int kMaxTileRows = 12;
constexpr int kMaxTileCols = 2;  // 12 x 2 accumulators + 2 weights + 1 activation of 32 registers
// Rows per tile when a chunk takes several passes: 10 rows' activations at K = 1536 (30 KiB) fit
// kActivationsInL1, so the tile needs no K blocks and parks no partial sums; 12 rows (36 KiB) would.
constexpr int kMultiPassTileRows = 10;
// Weight rows a tile of `rows` activation rows takes at once, when a chunk has `passes` row tiles.
// Each weight row is a memory stream. A single pass (decoding, verification) streams the weights from
// memory: up to 7 rows, one weight row at a time keeps up with it; from 8 rows the dot products of one
// weight row fall behind fast memory, and a second weight row gives them independent work. With
// several passes the weights come from L2, and a second weight row halves the activation loads per
// product. A third would leave too few registers (8 x 3 accumulators spill in the loop).
constexpr int tile_cols(int64_t rows, int64_t passes) { return rows <= (passes == 1 ? 7 : 4) ? 1 : 2; }
// K blocks of a row tile whose activations overflow kActivationsInL1 (choose_tiling) hold this many bytes.
constexpr int64_t kActivationBlockBytes = 16 << 10;

#elif defined(__AVX2__)

// A 256-bit load holds 16 BF16 weights. Shifting each 32-bit lane left by 16 gives the even ones as
// floats, masking off the low half gives the odd ones; the prepared activations are stored in that
// order (per 16: the 8 even-index values, then the 8 odd-index ones) so no shuffles are needed.
using Prepared = float;  // activations rounded to BF16, held as float
using Accumulator = __m256;
constexpr int64_t kStep = 16;
constexpr int kMaxTileRows = 6;
constexpr int kMultiPassTileRows = 6;
constexpr int kMaxTileCols = 3;
// Weight rows a tile of `rows` activation rows takes at once: up to 12 accumulators (the rest of the
// 16 registers hold the even and odd weights of one weight row at a time and a constant). Each
// output's two FMAs per step are a chain of 8 cycles, so one weight row at a time could not keep
// up with memory: several give the independent chains.
constexpr int tile_cols(int64_t rows, int64_t /*passes*/) { return std::min<int64_t>(kMaxTileCols, 12 / rows); }
// K blocks of a row tile whose activations overflow kActivationsInL1 (choose_tiling) hold this many bytes:
// as many activation values as the BF16 table's 16 KiB blocks, float32 taking twice the bytes. Longer
// blocks mean fewer tile calls and accumulators parked per product, and 32 KiB still fits the L1 limit.
constexpr int64_t kActivationBlockBytes = 32 << 10;

#else

// The reference: activations rounded to BF16 (held as float), one sequential float32 sum per output.
using Prepared = float;
constexpr int64_t kStep = 1;
constexpr int kMaxTileRows = 1;
constexpr int kMultiPassTileRows = 1;

#endif

int64_t steps_of(int64_t K) { return (K + kStep - 1) / kStep; }

// Activation rows are taken 64 at a time (a chunk: one read of the weights each). A chunk of up to
// kMaxTileRows rows is one tile; a longer one is cut into balanced tiles of up to kMultiPassTileRows
// (13 rows: 7 + 6, not 10 + 3).
constexpr int64_t kRowsPerChunk = 64;

struct RowTiling {
    int64_t passes, rows;  // tiles per chunk; rows per tile (the last may have fewer)
};

RowTiling row_tiling(int64_t chunk_rows) {
    const int64_t passes = chunk_rows <= kMaxTileRows ? 1 : (chunk_rows + kMultiPassTileRows - 1) / kMultiPassTileRows;
    return {passes, (chunk_rows + passes - 1) / passes};
}

// Calls visit(first_row, rows) for every row tile of M rows, in order.
template <class Visit>
void for_each_row_tile(int64_t M, Visit visit) {
    for (int64_t chunk = 0; chunk < M; chunk += kRowsPerChunk) {
        const int64_t chunk_rows = std::min(kRowsPerChunk, M - chunk);
        const int64_t rows = row_tiling(chunk_rows).rows;
        for (int64_t m = chunk; m < chunk + chunk_rows; m += rows) visit(m, std::min(rows, chunk + chunk_rows - m));
    }
}

// Prepared activations: each row tile is one contiguous run, step-major inside (the kStep values
// of step s of its row r are at s * rows + r, times kStep), zero-padded past K. A tile then reaches
// all its rows from one pointer and reads its activations as one stream. The tile of first row f
// starts at f * steps * kStep. (Scalar tiles are single rows: plain row-major.)
int64_t tile_offset(int64_t first_row, int64_t K) { return first_row * steps_of(K) * kStep; }

#if defined(__AVX2__)

// How a row tile of `rows` rows meets the weights: weight rows go tile_cols(rows, passes) at a time (a
// group). K is cut into equal blocks whose activations for one row tile stay in L1 (or into the
// weights' own K blocks, when they are stored in blocks), and `groups` groups (a span) share each
// block: the pass of a row tile runs through all of them, so the span's weight block, read from
// memory by the first pass, is re-read from L2.
struct Tiling {
    int64_t cols, block, groups;
};

Tiling choose_tiling(int64_t rows, int64_t passes, int64_t K, int64_t weight_block_columns) {
    // Sized for a 48 KiB L1 and a 1 MiB L2 (Zen 5). A tile reads its activations at every step, so they
    // must stay in L1.
    constexpr int64_t kActivationsInL1 = 32 << 10;  // a row tile's activations up to this: no K blocks (else
                                                    // blocks of kActivationBlockBytes)
    constexpr int64_t kSpanBlockBytes = 128 << 10;  // L2 share for a span's weights
    Tiling t;
    t.cols = tile_cols(rows, passes);
    const int64_t fitting_steps =
        std::max<int64_t>(8, kActivationBlockBytes / (rows * kStep * int64_t(sizeof(Prepared))));
    const bool fits = rows * steps_of(K) * kStep * int64_t(sizeof(Prepared)) <= kActivationsInL1;
    const int64_t blocks = fits ? 1 : (steps_of(K) + fitting_steps - 1) / fitting_steps;
    t.block = weight_block_columns < K ? weight_block_columns : (steps_of(K) + blocks - 1) / blocks * kStep;
    t.groups = std::max<int64_t>(1, kSpanBlockBytes / (t.cols * t.block * int64_t(sizeof(uint16_t))));
    return t;
}

// A group's K block: the group's span starts at weight row `span`, the group at row `n`, the block at k.
struct BlockRef {
    int64_t span, n, k;
};

// The order in which the first pass over a chunk meets the weight blocks of [n_begin, n_end): span
// by span, within a span K block by K block, within a block group by group (gemm_chunk's loops).
class Schedule {
public:
    Schedule(const Tiling& t, int64_t K, int64_t n_begin, int64_t n_end)
        : t_(t), K_(K), n_end_(n_end), first_{n_begin, n_begin, 0} {}

    BlockRef first() const { return first_; }
    bool done(const BlockRef& b) const { return b.n >= n_end_; }
    int64_t span_end(const BlockRef& b) const { return std::min(n_end_, b.span + t_.groups * t_.cols); }
    int64_t cols(const BlockRef& b) const { return std::min(t_.cols, span_end(b) - b.n); }
    int64_t steps(const BlockRef& b) const { return steps_of(std::min(K_, b.k + t_.block) - b.k); }

    BlockRef next(const BlockRef& b) const {
        if (b.n + t_.cols < span_end(b)) return {b.span, b.n + t_.cols, b.k};
        if (b.k + t_.block < K_) return {b.span, b.span, b.k + t_.block};
        return {span_end(b), span_end(b), 0};
    }

private:
    Tiling t_;
    int64_t K_, n_end_;
    BlockRef first_;
};

// Walks the weights in schedule order a fixed distance ahead of the first pass and fetches them,
// so the memory stream never waits for compute. The tiles step it once per k step of theirs; with
// several passes it moves once every `passes` steps, which spreads the fetch of the next span
// block over all the passes of the current one.
class PrefetchCursor {
public:
    PrefetchCursor(const Schedule& schedule, const Bf16Weights& w, int64_t passes, int64_t lead_steps)
        : schedule_(&schedule), w_(&w), row_stride_(w.block_columns), passes_(passes), countdown_(passes),
          at_(schedule.first()) {
        start_block();
        for (int64_t s = 0; s < lead_steps && (left_ > 0 || next_block()); ++s) {
            line_ += kStep;
            --left_;
        }
    }

    // Always inlined, as is all it calls: a call inside the tile loop would make the compiler spill
    // every accumulator around it (and GCC drops a call whose only effect is a prefetch). MaxCols, the
    // calling tile's width, is a compile-time bound on the prefetches, so their loop unrolls.
    template <int MaxCols>
    __attribute__((always_inline)) void step() {
        if (--countdown_ > 0) return;
        countdown_ = passes_;
        if (left_ == 0 && !next_block()) return;
        for (int c = 0; c < MaxCols; ++c)
            if (c < cols_) _mm_prefetch(reinterpret_cast<const char*>(line_ + c * row_stride_), _MM_HINT_T0);
        line_ += kStep;
        --left_;
    }

private:
    __attribute__((always_inline)) void start_block() {
        const bool done = schedule_->done(at_);
        line_ = done ? nullptr : w_->at(at_.n, at_.k);
        cols_ = done ? 0 : schedule_->cols(at_);
        left_ = done ? 0 : schedule_->steps(at_);
    }

    // Moves to the next block; false when there is none.
    __attribute__((always_inline)) bool next_block() {
        if (schedule_->done(at_)) return false;
        at_ = schedule_->next(at_);
        start_block();
        return left_ > 0;
    }

    const Schedule* schedule_;
    const Bf16Weights* w_;
    const uint16_t* line_ = nullptr;
    int64_t row_stride_;  // w_->block_columns, held here so the tile loop keeps it in a register
    int64_t passes_, countdown_, cols_ = 0, left_ = 0;
    BlockRef at_;
};

// One tile's work: Rows activation rows times Cols weight rows over the K block [k_begin, k_end).
// Between blocks the accumulators wait in `partial`; the first block starts them at zero and the
// last one finishes them into y.
struct TileWork {
    const Prepared* x;   // the row tile's activations at step k_begin / kStep
    const uint16_t* w;   // first weight row, at k_begin; rows are row_stride apart
    int64_t row_stride;  // the weights' block_columns
    int64_t K, k_begin, k_end;
    Accumulator* partial;  // Rows x Cols
    float* y;              // y[r * ldy + c]
    int64_t ldy;
    PrefetchCursor* prefetch;
};

#endif

#if defined(__AVX512BF16__)

void prepare_step(const float* x, int64_t count, Prepared* out) {
    const __mmask16 low_mask = count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1);
    const __mmask16 high_mask = count >= 32 ? __mmask16(0xffff) : count <= 16 ? 0 : __mmask16((1u << (count - 16)) - 1);
    const __m512 low = _mm512_maskz_loadu_ps(low_mask, x);
    const __m512 high = _mm512_maskz_loadu_ps(high_mask, x + 16);
    _mm512_storeu_si512(out, (__m512i)_mm512_cvtne2ps_pbh(high, low));
}

// The one horizontal sum of every output: lanes i + 8, then i + 4, then i + 2, then i + 1.
float sum_lanes(__m512 v) {
    const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    const __m128 quarter = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
    const __m128 eighth = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));
    return _mm_cvtss_f32(_mm_add_ss(eighth, _mm_movehdup_ps(eighth)));
}

// sum_lanes of 16 vectors at once, each addition with the same operands in the same order, so
// the same bits. Element 4 * l + j of the result is the sum of v[l + 4 * j].
__attribute__((always_inline)) inline __m512 sum_lanes_of_16(const __m512 (&v)[16]) {
    // Each level adds a pair of shuffles of two vectors: the first picks the lanes the single sum
    // puts first (low halves, low quarters, ...), the second their partners.
    __m512 half[8], quarter[4], eighth[2];
    for (int i = 0; i < 8; ++i)  // lanes i + 8; result: 256-bit half h holds source 2i + h
        half[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                                _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
    for (int i = 0; i < 4; ++i)  // lanes i + 4; 128-bit lane l holds source 4i + l
        quarter[i] = _mm512_add_ps(_mm512_shuffle_f32x4(half[2 * i], half[2 * i + 1], 0x88),
                                   _mm512_shuffle_f32x4(half[2 * i], half[2 * i + 1], 0xdd));
    for (int i = 0; i < 2; ++i)  // lanes i + 2, within 128-bit lanes
        eighth[i] = _mm512_add_ps(_mm512_shuffle_ps(quarter[2 * i], quarter[2 * i + 1], 0x44),
                                  _mm512_shuffle_ps(quarter[2 * i], quarter[2 * i + 1], 0xee));
    // lanes i + 1
    return _mm512_add_ps(_mm512_shuffle_ps(eighth[0], eighth[1], 0x88), _mm512_shuffle_ps(eighth[0], eighth[1], 0xdd));
}

// Inlined so the accumulators never have their address taken: the tile loop keeps them in registers.
template <int Rows, int Cols>
__attribute__((always_inline)) inline void finish(const __m512 (&acc)[Rows][Cols], float* y, int64_t ldy) {
    constexpr int kOutputs = Rows * Cols;
    int done = 0;
    for (; kOutputs - done >= 8; done += 16) {  // batches of 16, the last padded with zeros
        __m512 v[16];
        for (int i = 0; i < 16; ++i)
            v[i] = done + i < kOutputs ? acc[(done + i) / Cols][(done + i) % Cols] : _mm512_setzero_ps();
        alignas(64) float sums[16];
        _mm512_store_ps(sums, sum_lanes_of_16(v));
        for (int i = 0; i < 16 && done + i < kOutputs; ++i)
            y[(done + i) / Cols * ldy + (done + i) % Cols] = sums[(i % 4) * 4 + i / 4];
    }
    for (; done < kOutputs; ++done) y[done / Cols * ldy + done % Cols] = sum_lanes(acc[done / Cols][done % Cols]);
}

template <int Rows, int Cols>
void tile(const TileWork& work) {
    const int64_t K = work.K, stride = work.row_stride, length = work.k_end - work.k_begin, full_steps = length / kStep;
    const uint16_t* w = work.w;
    const Prepared* x = work.x;
    PrefetchCursor prefetch = *work.prefetch;  // a local copy stays in registers
    __m512 acc[Rows][Cols];
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) acc[r][c] = work.k_begin == 0 ? _mm512_setzero_ps() : work.partial[r * Cols + c];
    const auto accumulate = [&](const __m512i (&weights)[Cols]) {
        for (int r = 0; r < Rows; ++r) {
            const __m512i xv = _mm512_load_si512(x + r * kStep);
            for (int c = 0; c < Cols; ++c)
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)xv, (__m512bh)weights[c]);
        }
        x += Rows * kStep;
    };
    for (int64_t s = 0; s < full_steps; ++s) {
        __m512i weights[Cols];
        for (int c = 0; c < Cols; ++c) weights[c] = _mm512_loadu_si512(w + c * stride + s * kStep);
        prefetch.step<Cols>();
        accumulate(weights);
    }
    if (full_steps * kStep < length) {  // masked: never read past a row, zeros add nothing (x is zero-padded)
        const __mmask32 mask = (__mmask32{1} << (length - full_steps * kStep)) - 1;
        __m512i weights[Cols];
        for (int c = 0; c < Cols; ++c) weights[c] = _mm512_maskz_loadu_epi16(mask, w + c * stride + full_steps * kStep);
        accumulate(weights);
    }
    *work.prefetch = prefetch;
    if (work.k_end == K) {
        finish(acc, work.y, work.ldy);
    } else {
        for (int r = 0; r < Rows; ++r)
            for (int c = 0; c < Cols; ++c) work.partial[r * Cols + c] = acc[r][c];
    }
}

#elif defined(__AVX2__)

__m256 round_to_bf16(__m256 v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256i quiet_nan = _mm256_or_si256(bits, _mm256_set1_epi32(0x400000));
    const __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    const __m256 chosen = _mm256_blendv_ps(_mm256_castsi256_ps(rounded), _mm256_castsi256_ps(quiet_nan), is_nan);
    return _mm256_and_ps(chosen, _mm256_castsi256_ps(_mm256_set1_epi32(int32_t(0xffff0000u))));
}

void prepare_step(const float* x, int64_t count, Prepared* out) {
    float chunk[kStep] = {};
    std::memcpy(chunk, x, sizeof(float) * count);
    const __m256 a = round_to_bf16(_mm256_loadu_ps(chunk));      // x0 .. x7
    const __m256 b = round_to_bf16(_mm256_loadu_ps(chunk + 8));  // x8 .. x15
    // Within 128-bit lanes: even = a0 a2 b0 b2 | a4 a6 b4 b6; the permute restores k order.
    const __m256 even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(even, order));
    _mm256_storeu_ps(out + 8, _mm256_permutevar8x32_ps(odd, order));
}

// The one horizontal sum of every output: lanes i + 4, then i + 2, then i + 1.
float sum_lanes(__m256 v) {
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
}

template <int Rows, int Cols>
void tile(const TileWork& work) {
    const int64_t K = work.K, stride = work.row_stride, length = work.k_end - work.k_begin, full_steps = length / kStep;
    const uint16_t* w = work.w;
    const Prepared* x = work.x;
    PrefetchCursor prefetch = *work.prefetch;  // a local copy stays in registers
    __m256 acc[Rows][Cols];
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) acc[r][c] = work.k_begin == 0 ? _mm256_setzero_ps() : work.partial[r * Cols + c];
    const __m256i high_halves = _mm256_set1_epi32(int32_t(0xffff0000u));
    const auto accumulate = [&](const __m256i (&weights)[Cols]) {
        for (int c = 0; c < Cols; ++c) {
            const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(weights[c], 16));
            const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(weights[c], high_halves));
            for (int r = 0; r < Rows; ++r) {
                acc[r][c] = _mm256_fmadd_ps(_mm256_load_ps(x + r * kStep), even, acc[r][c]);
                acc[r][c] = _mm256_fmadd_ps(_mm256_load_ps(x + r * kStep + 8), odd, acc[r][c]);
            }
        }
        x += Rows * kStep;
    };
    for (int64_t s = 0; s < full_steps; ++s) {
        __m256i weights[Cols];
        for (int c = 0; c < Cols; ++c)
            weights[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c * stride + s * kStep));
        prefetch.step<Cols>();
        accumulate(weights);
    }
    if (full_steps * kStep < length) {  // copy the tail so no load reads past a row; zeros add nothing
        __m256i weights[Cols];
        for (int c = 0; c < Cols; ++c) {
            uint16_t tail[kStep] = {};
            std::memcpy(tail, w + c * stride + full_steps * kStep, sizeof(uint16_t) * (length - full_steps * kStep));
            weights[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tail));
        }
        accumulate(weights);
    }
    *work.prefetch = prefetch;
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) {
            if (work.k_end == K)
                work.y[r * work.ldy + c] = sum_lanes(acc[r][c]);
            else
                work.partial[r * Cols + c] = acc[r][c];
        }
}

#else

void prepare_step(const float* x, int64_t count, Prepared* out) {
    for (int64_t k = 0; k < count; ++k) out[k] = bf16_to_float(float_to_bf16(x[k]));
}

#endif

#if defined(__AVX2__)

using TileKernel = void (*)(const TileWork&);

template <int Rows, int... Cols>
constexpr std::array<TileKernel, sizeof...(Cols)> tiles_of_rows(std::integer_sequence<int, Cols...>) {
    return {&tile<Rows, Cols + 1>...};
}

template <int... Rows>
constexpr std::array<std::array<TileKernel, kMaxTileCols>, sizeof...(Rows)> tile_table(
    std::integer_sequence<int, Rows...>) {
    return {tiles_of_rows<Rows + 1>(std::make_integer_sequence<int, kMaxTileCols>())...};
}

// kTiles[rows - 1][cols - 1], every shape up to kMaxTileRows x kMaxTileCols: edge tiles of M and N
// run the same per-output code as full ones, and an edge row tile may be narrower than the chosen
// width allows (those shapes are compiled, and spill, but run only at the edges).
constexpr auto kTiles = tile_table(std::make_integer_sequence<int, kMaxTileRows>());

// Accumulators parked between K blocks: per calling thread, grown once to the largest need.
Accumulator* partial_sums(size_t count) {
    constexpr size_t kFloats = sizeof(Accumulator) / sizeof(float);
    thread_local CacheAlignedVector<float> buffer;
    if (buffer.size() < count * kFloats) buffer.resize(count * kFloats);
    return reinterpret_cast<Accumulator*>(buffer.data());
}

// Activation rows [chunk, chunk + chunk_rows) against weight rows [n_begin, n_end).
void gemm_chunk(const Prepared* prepared, int64_t chunk, int64_t chunk_rows, int64_t K, const Bf16Weights& w,
                int64_t n_begin, int64_t n_end, float* y, int64_t ldy) {
    const RowTiling rows = row_tiling(chunk_rows);
    const Tiling t = choose_tiling(rows.rows, rows.passes, K, w.block_columns);
    const Schedule schedule(t, K, n_begin, n_end);
    // One pass reads a block as it streams in: a fixed distance ahead is enough (16 KiB of weights for
    // one weight row, 9 KiB for two; tuned for Zen 5). Several passes re-read a span's block from
    // cache: the next one is what memory must bring meanwhile.
    const int64_t lead_bytes = t.cols == 1 ? 16 << 10 : 9 << 10;
    const int64_t lead = rows.passes > 1 ? t.groups * t.block / kStep
                                         : lead_bytes / (t.cols * kStep * int64_t(sizeof(uint16_t)));
    PrefetchCursor prefetch(schedule, w, rows.passes, lead);
    const int64_t span_rows = t.groups * t.cols;
    Accumulator* partial = t.block < K ? partial_sums(span_rows * chunk_rows) : nullptr;
    TileWork work{};
    work.K = K;
    work.row_stride = w.block_columns;
    work.ldy = ldy;
    work.prefetch = &prefetch;
    for (int64_t span = n_begin; span < n_end; span += span_rows) {
        const int64_t span_end = std::min(n_end, span + span_rows);
        for (int64_t k = 0; k < K; k += t.block) {
            work.k_begin = k;
            work.k_end = std::min(K, k + t.block);
            const uint16_t* block_row_0 = w.at(0, k);  // rows of the block follow at row_stride (no division per tile)
            for (int64_t m = chunk; m < chunk + chunk_rows; m += rows.rows) {
                const int64_t tile_rows = std::min(rows.rows, chunk + chunk_rows - m);
                work.x = prepared + tile_offset(m, K) + k * tile_rows;
                for (int64_t n = span; n < span_end; n += t.cols) {
                    const int64_t cols = std::min(t.cols, span_end - n);
                    work.w = block_row_0 + n * work.row_stride;
                    work.y = y + m * ldy + n;
                    work.partial = partial + (n - span) * chunk_rows + (m - chunk) * cols;
                    kTiles[tile_rows - 1][cols - 1](work);
                }
            }
        }
    }
}

void gemm_rows(const Prepared* prepared, int64_t M, int64_t K, const Bf16Weights& w, int64_t n_begin, int64_t n_end,
               float* y, int64_t ldy) {
    for (int64_t chunk = 0; chunk < M; chunk += kRowsPerChunk)
        gemm_chunk(prepared, chunk, std::min(kRowsPerChunk, M - chunk), K, w, n_begin, n_end, y, ldy);
}

#else

void gemm_rows(const Prepared* prepared, int64_t M, int64_t K, const Bf16Weights& w, int64_t n_begin, int64_t n_end,
               float* y, int64_t ldy) {
    for (int64_t n = n_begin; n < n_end; ++n)
        for (int64_t m = 0; m < M; ++m) {
            const Prepared* xm = prepared + m * K;
            float sum = 0.0f;
            for (int64_t block = 0; block < K; block += w.block_columns) {
                const uint16_t* row = w.at(n, block);
                for (int64_t k = 0; k < w.block_columns; ++k) sum += xm[block + k] * bf16_to_float(row[k]);
            }
            y[m * ldy + n] = sum;
        }
}

#endif

}  // namespace

int64_t gemm_bf16_prepared_bytes(int64_t M, int64_t K) { return M * steps_of(K) * kStep * int64_t(sizeof(Prepared)); }

void gemm_bf16_prepare(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end, void* prepared) {
    static_assert(kPrepareColumns % kStep == 0, "a prepared column range starts at a step");
    const int64_t first_step = k_begin / kStep, end_step = steps_of(k_end);
    for_each_row_tile(M, [&](int64_t first, int64_t rows) {
        Prepared* out = static_cast<Prepared*>(prepared) + tile_offset(first, K);
        for (int64_t s = first_step; s < end_step; ++s)
            for (int64_t r = 0; r < rows; ++r)
                prepare_step(x + (first + r) * K + s * kStep, std::min(kStep, K - s * kStep),
                             out + (s * rows + r) * kStep);
    });
}

void gemm_bf16(const void* prepared, int64_t M, int64_t K, const Bf16Weights& w, int64_t n_begin, int64_t n_end,
               float* y, int64_t ldy) {
    gemm_rows(static_cast<const Prepared*>(prepared), M, K, w, n_begin, n_end, y, ldy);
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
