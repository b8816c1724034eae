// BF16-weight GEMM: y[m, n] = sum_k bf16(x[m, k]) * w[n, k], products summed in float32.
//
// Batch invariance: every output is one accumulator that walks K in the same steps from k = 0 up,
// then the same horizontal sum. Tiles of several rows and columns only share loads, never partial
// sums, so y[m, n] has the same bits whatever tile, batch size, n range or thread computes it.
//
// The scalar path is the reference: a plain sequential sum over k. The vector paths sum in lanes,
// so they match it within rounding, not bit for bit.
#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "kernels/bf16.h"
#include "kernels/isa/isa.h"

#ifndef PF_STEPS
#define PF_STEPS 48
#endif
#ifndef X_BUDGET
#define X_BUDGET 16384
#endif
#ifndef P_BUDGET
#define P_BUDGET 8192
#endif
#ifndef PF_M1
#define PF_M1 1
#endif

namespace mlspecqd {
namespace MLSPECQD_ISA {

namespace {

#if defined(__AVX512BF16__)

// One zmm holds 32 BF16 values; vdpbf16ps adds their pairwise products into 16 float lanes.
using Prepared = uint16_t;  // activations as BF16 bits
using Accumulator = __m512;
constexpr int64_t kStep = 32;
constexpr int kMaxAccumulators = 24;  // of 32 registers: the rest hold weights and an activation
constexpr int kMaxTileRows = 12;
constexpr int kMaxTileCols = 3;

#elif defined(__AVX2__)

// A 256-bit load holds 16 BF16 weights. Shifting each 32-bit lane left by 16 gives the even ones as
// floats, masking off the low half gives the odd ones; the prepared activations are stored in that
// order (per 16: the 8 even-index values, then the 8 odd-index ones) so no shuffles are needed.
using Prepared = float;  // activations rounded to BF16, held as float
using Accumulator = __m256;
constexpr int64_t kStep = 16;
constexpr int kMaxAccumulators = 12;  // of 16 registers: the rest hold weights and a constant
constexpr int kMaxTileRows = 6;
constexpr int kMaxTileCols = 3;

#else

// The reference: activations rounded to BF16 (held as float), one sequential float32 sum per output.
using Prepared = float;
constexpr int64_t kStep = 1;

#endif

// Prepared activations are step-major: the kStep values of step s of row m are at (s * M + m) *
// kStep, zero-padded past K. A tile then reaches all its rows from one pointer, and a step of
// every row is one contiguous run.
int64_t steps_of(int64_t K) { return (K + kStep - 1) / kStep; }

#if defined(__AVX2__)

// One tile's work: Rows activation rows times Cols weight rows over the K block [k_begin, k_end).
// Between blocks the accumulators wait in `partial`; the first block starts them at zero and the
// last one finishes them into y.
struct TileWork {
    const Prepared* x;      // the tile's first row at step k_begin / kStep; x_step_stride to the next step
    int64_t x_step_stride;  // M * kStep
    const uint16_t* w;      // first weight row, at k = 0; rows are K apart
    int64_t K, k_begin, k_end;
    Accumulator* partial;  // Rows x Cols
    float* y;              // y[r * ldy + c]
    int64_t ldy;
    // Weights fetched while this tile computes, so the memory stream never waits: `prefetch_steps`
    // steps ahead, in this block (`rows` weight rows) then in the next block to be computed
    // (`ahead`: its first row at its first step, `ahead_rows` rows, `ahead_steps` long). When a block
    // is computed in several passes (one per tile of activation rows), the next block is the target
    // and pass p fetches the steps s with s % passes == p: the fetch is spread over the whole block
    // and each line is fetched once.
    int64_t rows, prefetch_steps;
    const uint16_t* ahead;
    int64_t ahead_rows, ahead_steps, pass, passes;
};

// Fetches what step `s` (counted from k_begin) of a block of `steps` steps looks ahead to. Inlined
// by hand: GCC drops a call whose only effect is a prefetch.
#define MLSPECQD_PREFETCH_AHEAD(work, s, steps, countdown)                                          \
    do {                                                                                            \
        if (countdown-- == 0) {                                                                     \
            countdown = (work).passes - 1;                                                          \
            const int64_t target_ = (s) + (work).prefetch_steps;                                    \
            const bool here_ = target_ < (steps);                                                   \
            const uint16_t* at_ = here_ ? (work).w + (work).k_begin + target_ * kStep               \
                                        : (work).ahead + (target_ - (steps)) * kStep;              \
            const int64_t count_ = here_ ? (work).rows                                              \
                                         : target_ - (steps) < (work).ahead_steps ? (work).ahead_rows : 0; \
            for (int64_t c_ = 0; c_ < count_; ++c_)                                                 \
                _mm_prefetch(reinterpret_cast<const char*>(at_ + c_ * (work).K), _MM_HINT_T0);     \
        }                                                                                           \
    } while (0)

#endif

#if defined(__AVX512BF16__)

void prepare_step(const float* x, int64_t count, Prepared* out) {
    const __mmask16 low_mask = count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1);
    const __mmask16 high_mask = count >= 32 ? __mmask16(0xffff) : count <= 16 ? 0 : __mmask16((1u << (count - 16)) - 1);
    const __m512 low = _mm512_maskz_loadu_ps(low_mask, x);
    const __m512 high = _mm512_maskz_loadu_ps(high_mask, x + 16);
    _mm512_storeu_si512(out, (__m512i)_mm512_cvtne2ps_pbh(high, low));
}

float sum_lanes(__m512 v) {
    const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    const __m128 quarter = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
    const __m128 eighth = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));
    return _mm_cvtss_f32(_mm_add_ss(eighth, _mm_movehdup_ps(eighth)));
}

template <int Rows, int Cols>
void tile(const TileWork& work) {
    const int64_t K = work.K, steps = steps_of(work.k_end - work.k_begin);
    const int64_t full_steps = (work.k_end - work.k_begin) / kStep;
    const uint16_t* w = work.w + work.k_begin;
    const Prepared* x = work.x;
    __m512 acc[Rows][Cols];
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) acc[r][c] = work.k_begin == 0 ? _mm512_setzero_ps() : work.partial[r * Cols + c];
    const auto accumulate = [&](const __m512i (&weights)[Cols]) {
        for (int r = 0; r < Rows; ++r) {
            const __m512i xv = _mm512_load_si512(x + r * kStep);
            for (int c = 0; c < Cols; ++c)
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)xv, (__m512bh)weights[c]);
        }
        x += work.x_step_stride;
    };
    int64_t countdown = work.pass;
    for (int64_t s = 0; s < full_steps; ++s) {
        __m512i weights[Cols];
        for (int c = 0; c < Cols; ++c) weights[c] = _mm512_loadu_si512(w + c * K + s * kStep);
        MLSPECQD_PREFETCH_AHEAD(work, s, steps, countdown);
        accumulate(weights);
    }
    if (full_steps < steps) {  // masked: never read past a row, zeros add nothing (x is zero-padded)
        const __mmask32 mask = (__mmask32{1} << (work.k_end - work.k_begin - full_steps * kStep)) - 1;
        __m512i weights[Cols];
        for (int c = 0; c < Cols; ++c) weights[c] = _mm512_maskz_loadu_epi16(mask, w + c * K + full_steps * kStep);
        accumulate(weights);
    }
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) {
            if (work.k_end == K)
                work.y[r * work.ldy + c] = sum_lanes(acc[r][c]);
            else
                work.partial[r * Cols + c] = acc[r][c];
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

float sum_lanes(__m256 v) {
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
}

template <int Rows, int Cols>
void tile(const TileWork& work) {
    const int64_t K = work.K, steps = steps_of(work.k_end - work.k_begin);
    const int64_t full_steps = (work.k_end - work.k_begin) / kStep;
    const uint16_t* w = work.w + work.k_begin;
    const Prepared* x = work.x;
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
        x += work.x_step_stride;
    };
    int64_t countdown = work.pass;
    for (int64_t s = 0; s < full_steps; ++s) {
        __m256i weights[Cols];
        for (int c = 0; c < Cols; ++c)
            weights[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c * K + s * kStep));
        MLSPECQD_PREFETCH_AHEAD(work, s, steps, countdown);
        accumulate(weights);
    }
    if (full_steps < steps) {  // copy the tail so no load reads past a row; zeros add nothing
        __m256i weights[Cols];
        for (int c = 0; c < Cols; ++c) {
            uint16_t tail[kStep] = {};
            std::memcpy(tail, w + c * K + full_steps * kStep,
                        sizeof(uint16_t) * (work.k_end - work.k_begin - full_steps * kStep));
            weights[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tail));
        }
        accumulate(weights);
    }
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
    // Shapes that would not fit the registers are never chosen (see gemm_chunk) nor compiled.
    return {(Rows * (Cols + 1) <= kMaxAccumulators ? &tile<Rows, std::min(Cols + 1, kMaxAccumulators / Rows)>
                                                    : nullptr)...};
}

template <int... Rows>
constexpr std::array<std::array<TileKernel, kMaxTileCols>, sizeof...(Rows)> tile_table(
    std::integer_sequence<int, Rows...>) {
    return {tiles_of_rows<Rows + 1>(std::make_integer_sequence<int, kMaxTileCols>())...};
}

// kTiles[rows - 1][cols - 1]: edge tiles of M and N run the same per-output code as full ones.
constexpr auto kTiles = tile_table(std::make_integer_sequence<int, kMaxTileRows>());

constexpr int64_t kRowsPerChunk = 64;  // activation rows that share one read of the weights

// How a chunk of M activation rows meets the weights. Rows are cut into `passes` balanced tiles
// (13 rows: 7 + 6, not 12 + 1) of at most `rows` rows; weight rows go `cols` at a time (a group),
// as many as the registers allow. When the activations do not fit in L1, K is cut into blocks whose
// activations do, and `groups` groups share each block of activations before the next block.
struct Tiling {
    int64_t passes, rows, cols, block, blocks, groups;
};

Tiling choose_tiling(int64_t M, int64_t K) {
    constexpr int64_t kActivationBlockBytes = X_BUDGET;
    constexpr int64_t kPartialBytes = P_BUDGET;
    Tiling t;
    t.passes = (M + kMaxTileRows - 1) / kMaxTileRows;
    t.rows = (M + t.passes - 1) / t.passes;
    t.cols = std::min<int64_t>(kMaxTileCols, kMaxAccumulators / t.rows);
    const int64_t fitting_steps = std::max<int64_t>(4, kActivationBlockBytes / (M * kStep * int64_t(sizeof(Prepared))));
    t.blocks = (steps_of(K) + fitting_steps - 1) / fitting_steps;
    t.block = (steps_of(K) + t.blocks - 1) / t.blocks * kStep;  // equal blocks: the prefetch keeps pace
    t.groups = t.blocks == 1 ? 1 : std::max<int64_t>(1, kPartialBytes / (M * t.cols * int64_t(sizeof(Accumulator))));
    return t;
}

void gemm_chunk(const Prepared* x, int64_t x_step_stride, int64_t M, int64_t K, const uint16_t* w,
                int64_t n_begin, int64_t n_end, float* y, int64_t ldy) {
    const Tiling t = choose_tiling(M, K);
    constexpr int64_t kMaxPartials = P_BUDGET / int64_t(sizeof(Accumulator)) + kRowsPerChunk * kMaxTileCols;
    alignas(64) Accumulator partial[kMaxPartials];
    const bool prefetch = PF_M1 || M > 1;
    TileWork work{};
    work.x_step_stride = x_step_stride;
    work.K = K;
    work.ldy = ldy;
    work.passes = t.passes;
    const int64_t block_steps = t.block / kStep;
    // One pass reads a block as it streams in: look a fixed distance ahead. Several passes read it
    // from cache after the first: the next block is what the memory stream must bring meanwhile.
    work.prefetch_steps = t.passes == 1 ? std::min<int64_t>(PF_STEPS, block_steps) : block_steps;
    const int64_t span = t.groups * t.cols;  // weight rows sharing each block of activations
    for (int64_t n_first = n_begin; n_first < n_end; n_first += span) {
        const int64_t n_last = std::min(n_end, n_first + span);
        for (int64_t k = 0; k < K; k += t.block) {
            work.k_begin = k;
            work.k_end = std::min(K, k + t.block);
            for (int64_t n = n_first; n < n_last; n += t.cols) {
                const int64_t cols = std::min(t.cols, n_last - n);
                // The block computed next: the next group here, else the first group at the next
                // block, else the first group of the next span.
                int64_t ahead_n = n + cols, ahead_k = k, ahead_end = n_last;
                if (ahead_n == n_last) {
                    ahead_n = n_first, ahead_k = k + t.block;
                    if (ahead_k >= K) ahead_n = n_last, ahead_k = 0, ahead_end = std::min(n_end, n_last + span);
                }
                work.w = w + n * K;
                work.rows = prefetch ? cols : 0;
                work.ahead = w + ahead_n * K + ahead_k;
                work.ahead_rows = prefetch ? std::min(t.cols, ahead_end - ahead_n) : 0;
                work.ahead_steps = steps_of(std::min(K, ahead_k + t.block) - ahead_k);
                for (int64_t m = 0, pass = 0; m < M; m += t.rows, ++pass) {
                    const int64_t rows = std::min(t.rows, M - m);
                    work.x = x + (k / kStep) * x_step_stride + m * kStep;
                    work.y = y + m * ldy + n;
                    work.partial = partial + ((n - n_first) * M + m * cols);
                    work.pass = pass;
                    kTiles[rows - 1][cols - 1](work);
                }
            }
        }
    }
}

void gemm_rows(const Prepared* x, int64_t M, int64_t K, const uint16_t* w, int64_t n_begin, int64_t n_end, float* y,
               int64_t ldy) {
    for (int64_t m = 0; m < M; m += kRowsPerChunk)
        gemm_chunk(x + m * kStep, M * kStep, std::min(kRowsPerChunk, M - m), K, w, n_begin, n_end, y + m * ldy, ldy);
}

#else

void gemm_rows(const Prepared* x, int64_t M, int64_t K, const uint16_t* w, int64_t n_begin, int64_t n_end, float* y,
               int64_t ldy) {
    for (int64_t n = n_begin; n < n_end; ++n) {
        const uint16_t* row = w + n * K;
        for (int64_t m = 0; m < M; ++m) {
            float sum = 0.0f;
            for (int64_t k = 0; k < K; ++k) sum += x[k * M + m] * bf16_to_float(row[k]);
            y[m * ldy + n] = sum;
        }
    }
}

#endif

}  // namespace

int64_t gemm_bf16_prepared_bytes(int64_t M, int64_t K) { return M * steps_of(K) * kStep * int64_t(sizeof(Prepared)); }

void gemm_bf16_prepare(const float* x, int64_t M, int64_t K, void* prepared) {
    auto* out = static_cast<Prepared*>(prepared);
    const int64_t steps = steps_of(K);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t s = 0; s < steps; ++s)
            prepare_step(x + m * K + s * kStep, std::min(kStep, K - s * kStep), out + (s * M + m) * kStep);
}

void gemm_bf16(const void* prepared, int64_t M, int64_t K, const uint16_t* w, int64_t n_begin, int64_t n_end,
               float* y, int64_t ldy) {
    gemm_rows(static_cast<const Prepared*>(prepared), M, K, w, n_begin, n_end, y, ldy);
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
