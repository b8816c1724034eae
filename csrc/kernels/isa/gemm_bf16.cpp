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

namespace mlspecqd {
namespace MLSPECQD_ISA {

namespace {

constexpr int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

#if defined(__AVX512BF16__)

// One zmm holds 32 BF16 values; vdpbf16ps adds their pairwise products into 16 float lanes.
using Prepared = uint16_t;  // activations as BF16 bits
constexpr int64_t kStep = 32;
constexpr int kMaxTileRows = 4;
constexpr int kMaxTileCols = 4;

int64_t prepared_row_elements(int64_t K) { return round_up(K, kStep); }

void prepare_row(const float* x, int64_t K, Prepared* out) {
    for (int64_t k = 0; k < K; k += kStep) {
        const int64_t left = std::min<int64_t>(K - k, kStep);
        const __mmask16 low_mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
        const __mmask16 high_mask = left >= 32 ? __mmask16(0xffff) : left <= 16 ? 0 : __mmask16((1u << (left - 16)) - 1);
        const __m512 low = _mm512_maskz_loadu_ps(low_mask, x + k);
        const __m512 high = _mm512_maskz_loadu_ps(high_mask, x + k + 16);
        _mm512_storeu_si512(out + k, (__m512i)_mm512_cvtne2ps_pbh(high, low));
    }
}

float sum_lanes(__m512 v) {
    const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    const __m128 quarter = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
    const __m128 eighth = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));
    return _mm_cvtss_f32(_mm_add_ss(eighth, _mm_movehdup_ps(eighth)));
}

// Rows x Cols outputs: x rows r (stride x_stride) against weight rows c (stride K).
template <int Rows, int Cols>
void tile(const Prepared* x, int64_t x_stride, const uint16_t* w, int64_t K, float* y, int64_t ldy) {
    __m512 acc[Rows][Cols];
    for (auto& row : acc)
        for (auto& a : row) a = _mm512_setzero_ps();
    const auto accumulate = [&](int64_t k, const __m512i (&weights)[Cols]) {
        for (int r = 0; r < Rows; ++r) {
            const __m512i xv = _mm512_loadu_si512(x + r * x_stride + k);
            for (int c = 0; c < Cols; ++c)
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)xv, (__m512bh)weights[c]);
        }
    };
    const int64_t full = K - K % kStep;
    for (int64_t k = 0; k < full; k += kStep) {
        __m512i weights[Cols];
        for (int c = 0; c < Cols; ++c) weights[c] = _mm512_loadu_si512(w + c * K + k);
        accumulate(k, weights);
    }
    if (full < K) {  // masked: never read past a row, zeros add nothing (prepared x is zero-padded)
        const __mmask32 mask = (__mmask32{1} << (K - full)) - 1;
        __m512i weights[Cols];
        for (int c = 0; c < Cols; ++c) weights[c] = _mm512_maskz_loadu_epi16(mask, w + c * K + full);
        accumulate(full, weights);
    }
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) y[r * ldy + c] = sum_lanes(acc[r][c]);
}

#elif defined(__AVX2__)

// A 256-bit load holds 16 BF16 weights. Shifting each 32-bit lane left by 16 gives the even ones as
// floats, masking off the low half gives the odd ones; the prepared activations are stored in that
// order (per 16: the 8 even-index values, then the 8 odd-index ones) so no shuffles are needed.
using Prepared = float;  // activations rounded to BF16, held as float
constexpr int64_t kStep = 16;
constexpr int kMaxTileRows = 4;
constexpr int kMaxTileCols = 3;

int64_t prepared_row_elements(int64_t K) { return round_up(K, kStep); }

__m256 round_to_bf16(__m256 v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256i quiet_nan = _mm256_or_si256(bits, _mm256_set1_epi32(0x400000));
    const __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    const __m256 chosen = _mm256_blendv_ps(_mm256_castsi256_ps(rounded), _mm256_castsi256_ps(quiet_nan), is_nan);
    return _mm256_and_ps(chosen, _mm256_castsi256_ps(_mm256_set1_epi32(int32_t(0xffff0000u))));
}

void prepare_row(const float* x, int64_t K, Prepared* out) {
    for (int64_t k = 0; k < K; k += kStep) {
        float chunk[kStep] = {};
        std::memcpy(chunk, x + k, sizeof(float) * std::min<int64_t>(K - k, kStep));
        const __m256 a = round_to_bf16(_mm256_loadu_ps(chunk));      // x0 .. x7
        const __m256 b = round_to_bf16(_mm256_loadu_ps(chunk + 8));  // x8 .. x15
        // Within 128-bit lanes: even = a0 a2 b0 b2 | a4 a6 b4 b6; the permute restores k order.
        const __m256 even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
        const __m256 odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
        _mm256_storeu_ps(out + k, _mm256_permutevar8x32_ps(even, order));
        _mm256_storeu_ps(out + k + 8, _mm256_permutevar8x32_ps(odd, order));
    }
}

float sum_lanes(__m256 v) {
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
}

template <int Rows, int Cols>
void tile(const Prepared* x, int64_t x_stride, const uint16_t* w, int64_t K, float* y, int64_t ldy) {
    __m256 acc[Rows][Cols];
    for (auto& row : acc)
        for (auto& a : row) a = _mm256_setzero_ps();
    const __m256i high_halves = _mm256_set1_epi32(int32_t(0xffff0000u));
    const auto accumulate = [&](int64_t k, int c, __m256i weights) {
        const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(weights, 16));
        const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(weights, high_halves));
        for (int r = 0; r < Rows; ++r) {
            acc[r][c] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * x_stride + k), even, acc[r][c]);
            acc[r][c] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * x_stride + k + 8), odd, acc[r][c]);
        }
    };
    const int64_t full = K - K % kStep;
    for (int64_t k = 0; k < full; k += kStep)
        for (int c = 0; c < Cols; ++c)
            accumulate(k, c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c * K + k)));
    if (full < K) {  // copy the tail so no load reads past a row; zeros add nothing
        for (int c = 0; c < Cols; ++c) {
            uint16_t tail[kStep] = {};
            std::memcpy(tail, w + c * K + full, sizeof(uint16_t) * (K - full));
            accumulate(full, c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tail)));
        }
    }
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) y[r * ldy + c] = sum_lanes(acc[r][c]);
}

#else

// The reference: activations rounded to BF16 (held as float), one sequential float32 sum per output.
using Prepared = float;

int64_t prepared_row_elements(int64_t K) { return K; }

void prepare_row(const float* x, int64_t K, Prepared* out) {
    for (int64_t k = 0; k < K; ++k) out[k] = bf16_to_float(float_to_bf16(x[k]));
}

#endif

#if defined(__AVX2__)

using TileKernel = void (*)(const Prepared*, int64_t, const uint16_t*, int64_t, float*, int64_t);

template <int Rows, int... Cols>
constexpr std::array<TileKernel, sizeof...(Cols)> tiles_of_rows(std::integer_sequence<int, Cols...>) {
    return {&tile<Rows, Cols + 1>...};
}

template <int... Rows>
constexpr std::array<std::array<TileKernel, kMaxTileCols>, sizeof...(Rows)> tile_table(
    std::integer_sequence<int, Rows...>) {
    return {tiles_of_rows<Rows + 1>(std::make_integer_sequence<int, kMaxTileCols>())...};
}

// kTiles[rows - 1][cols - 1]: edge tiles of M and N run the same per-output code as full ones.
constexpr auto kTiles = tile_table(std::make_integer_sequence<int, kMaxTileRows>());

void gemm_rows(const Prepared* x, int64_t x_stride, int64_t M, int64_t K, const uint16_t* w, int64_t n_begin,
               int64_t n_end, float* y, int64_t ldy) {
    // Each group of weight rows is read from memory once; the row tiles of x re-read it from cache.
    for (int64_t n = n_begin; n < n_end; n += kMaxTileCols) {
        const int64_t cols = std::min<int64_t>(kMaxTileCols, n_end - n);
        for (int64_t m = 0; m < M; m += kMaxTileRows) {
            const int64_t rows = std::min<int64_t>(kMaxTileRows, M - m);
            kTiles[rows - 1][cols - 1](x + m * x_stride, x_stride, w + n * K, K, y + m * ldy + n, ldy);
        }
    }
}

#else

void gemm_rows(const Prepared* x, int64_t x_stride, int64_t M, int64_t K, const uint16_t* w, int64_t n_begin,
               int64_t n_end, float* y, int64_t ldy) {
    for (int64_t n = n_begin; n < n_end; ++n) {
        const uint16_t* row = w + n * K;
        for (int64_t m = 0; m < M; ++m) {
            const Prepared* xm = x + m * x_stride;
            float sum = 0.0f;
            for (int64_t k = 0; k < K; ++k) sum += xm[k] * bf16_to_float(row[k]);
            y[m * ldy + n] = sum;
        }
    }
}

#endif

}  // namespace

int64_t gemm_bf16_prepared_row_bytes(int64_t K) {
    // Whole 64-byte lines, so every prepared row starts cache-line aligned.
    return round_up(prepared_row_elements(K) * int64_t(sizeof(Prepared)), 64);
}

void gemm_bf16_prepare(const float* x, int64_t M, int64_t K, void* prepared) {
    const int64_t row_bytes = gemm_bf16_prepared_row_bytes(K);
    for (int64_t m = 0; m < M; ++m) {
        prepare_row(x + m * K, K, reinterpret_cast<Prepared*>(static_cast<char*>(prepared) + m * row_bytes));
    }
}

void gemm_bf16(const void* prepared, int64_t M, int64_t K, const uint16_t* w, int64_t n_begin, int64_t n_end,
               float* y, int64_t ldy) {
    const int64_t x_stride = gemm_bf16_prepared_row_bytes(K) / int64_t(sizeof(Prepared));
    gemm_rows(static_cast<const Prepared*>(prepared), x_stride, M, K, w, n_begin, n_end, y, ldy);
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
