// MXFP4 weights against int8 activations: y = x W^T where no BF16 dot product runs (the AVX2 table), for
// models whose outputs need not equal the BF16-activation path's (draft levels: the target checks their
// tokens). Block layout: csrc/kernels/mxfp4.h.
//
// Activations are quantized per block of 32 values along K, as llama.cpp's Q8_0: scale d = absmax / 127,
// values q = x * (127 / absmax) rounded to nearest even and clamped to [-127, 127] (a block of zeros, or
// one holding NaN, takes the inverse 0). Weights decode to their doubled E2M1 values, integers in
// [-12, 12], by one byte shuffle. A block's products are exact in int32 and summed in eight lanes, lane l
// taking elements 4l .. 4l + 3; each lane is converted to float and added into its own float
// accumulator by one fused multiply-add with the block's scale (weight half scale times d); the eight
// accumulators are reduced in a fixed tree at the end. The scalar path takes exactly these steps, so
// every path gives the same bits, and no step depends on M, the tile or the n range (batch invariance).
#include <cmath>
#include <cstring>

#include "kernels/isa/isa.h"
#include "kernels/isa/mxfp4_tiles.h"
#include "kernels/mxfp4.h"

namespace mlspecqd {
namespace MLSPECQD_ISA {

namespace {

constexpr int kLanes = 8;  // int32 lanes a block's products are summed in
constexpr int kValuesPerLane = kMxfp4BlockValues / kLanes;

// Prepared activations: M rows of K int8 values, then M rows of K / 32 float block scales.
struct Int8Rows {
    const int8_t* values;
    const float* scales;
    int64_t K;
    Int8Rows from(int64_t m) const { return {values + m * K, scales + m * (K / kMxfp4BlockValues), K}; }
};

Int8Rows prepared_rows(const void* prepared, int64_t M, int64_t K) {
    const int8_t* values = static_cast<const int8_t*>(prepared);
    return {values, reinterpret_cast<const float*>(values + M * K), K};
}

constexpr int8_t kDoubledValues[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

float inverse_of(float absmax) { return absmax > 0.0f ? 127.0f / absmax : 0.0f; }

#if !defined(__AVX2__)

// --- Scalar: the reference. ---

// The largest magnitude of a block from its float bits: an integer maximum, so a NaN wins over every
// number (and then the block's inverse is 0, as for a block of zeros).
float block_absmax(const float* x) {
    uint32_t absmax_bits = 0;
    for (int j = 0; j < kMxfp4BlockValues; ++j) {
        uint32_t bits;
        std::memcpy(&bits, x + j, sizeof bits);
        bits &= 0x7fffffffu;
        absmax_bits = bits > absmax_bits ? bits : absmax_bits;
    }
    float absmax;
    std::memcpy(&absmax, &absmax_bits, sizeof absmax);
    return absmax;
}

int8_t quantize(float value, float inverse) {
    const long q = std::lrint(value * inverse);  // NaN gives LONG_MIN, as the vector conversion's 0x80000000
    return static_cast<int8_t>(q < -127 ? -127 : q > 127 ? 127 : q);
}

// The eight-lane reduction of reduce_add (mxfp4_tiles.h): (l0 + l4) and
// (l2 + l6), (l1 + l5) and (l3 + l7), then the two pairs.
float reduce_lanes(const float lanes[kLanes]) {
    return ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
}

void prepare_block(const float* x, int8_t* q, float* scale) {
    const float absmax = block_absmax(x);
    const float inverse = inverse_of(absmax);
    *scale = absmax / 127.0f;
    for (int j = 0; j < kMxfp4BlockValues; ++j) q[j] = quantize(x[j], inverse);
}

int weight_value(const uint8_t* block, int j) {
    const uint8_t byte = block[1 + j % (kMxfp4BlockValues / 2)];
    return kDoubledValues[j < kMxfp4BlockValues / 2 ? byte & 15 : byte >> 4];
}

void gemm(const Int8Rows& x, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end, float* y,
          int64_t ldy) {
    const int64_t blocks = K / kMxfp4BlockValues;
    for (int64_t n = n_begin; n < n_end; ++n) {
        const uint8_t* row = w + n * blocks * kMxfp4BlockBytes;
        for (int64_t m = 0; m < M; ++m) {
            const Int8Rows xm = x.from(m);
            float lanes[kLanes] = {};
            for (int64_t b = 0; b < blocks; ++b) {
                const uint8_t* block = row + b * kMxfp4BlockBytes;
                const int8_t* xb = xm.values + b * kMxfp4BlockValues;
                const float scale = mxfp4_half_scale(block[0]) * xm.scales[b];
                for (int l = 0; l < kLanes; ++l) {
                    int32_t sum = 0;
                    for (int j = l * kValuesPerLane; j < (l + 1) * kValuesPerLane; ++j) sum += weight_value(block, j) * xb[j];
                    lanes[l] = std::fma(static_cast<float>(sum), scale, lanes[l]);
                }
            }
            y[m * ldy + n] = reduce_lanes(lanes);
        }
    }
}

#else

// --- AVX2 and AVX-512 (256-bit vectors, so every path keeps the reference's eight lanes): weights decoded
// by vpshufb, products by the sign trick (|w| unsigned times x with w's sign, as both int8 dot products
// want one unsigned operand), summed by vpdpbusd where AVX-512 VNNI or AVX-VNNI runs, else vpmaddubsw + vpmaddwd
// (no overflow: a pair is at most 2 x 12 x 127). ---

// Each block's half scale, as a table: mxfp4_half_scale branches on the subnormal bytes.
struct HalfScaleTable {
    float by_exponent[256];
    HalfScaleTable() {
        for (int byte = 0; byte < 256; ++byte) by_exponent[byte] = mxfp4_half_scale(static_cast<uint8_t>(byte));
    }
};
const HalfScaleTable kHalfScales;

// The 32 weights of a block as int8, in element order: the 16 code bytes in both 128-bit lanes, the upper
// copy shifted right by 4 so that its high nibbles come down, then each nibble looked up in the doubled
// values (vpshufb looks up within each lane).
__m256i decode_block(const uint8_t* block) {
    const __m256i packed_twice =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 1)));
    const __m256i nibbles = _mm256_and_si256(_mm256_srlv_epi64(packed_twice, _mm256_setr_epi64x(0, 0, 4, 4)),
                                             _mm256_set1_epi8(0x0f));
    const __m128i table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kDoubledValues));
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(table), nibbles);
}

// Eight int32 sums of four products each: magnitudes (unsigned) times signed activations.
__m256i dot_lanes(__m256i magnitudes, __m256i signed_activations) {
#if defined(__AVX512VNNI__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitudes, signed_activations);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), magnitudes, signed_activations);
#else
    const __m256i pairs = _mm256_maddubs_epi16(magnitudes, signed_activations);
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
}

#if defined(__AVX512F__)
constexpr int kVectorRegisters = 32;
constexpr int kMaxActivationRows = 8;
#else
constexpr int kVectorRegisters = 16;
constexpr int kMaxActivationRows = 4;
#endif

// Quantizes one block: the absmax and both scales by the reference's scalar steps, the values eight
// at a time (vcvtps2dq rounds to nearest even, as lrint; packing saturates, then the clamp to -127).
void prepare_block(const float* x, int8_t* q, float* scale) {
    const __m256i magnitude_mask = _mm256_set1_epi32(0x7fffffff);
    __m256i values[4];
    __m256i absmax = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) {
        values[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 8 * i));
        absmax = _mm256_max_epu32(absmax, _mm256_and_si256(values[i], magnitude_mask));
    }
    absmax = _mm256_max_epu32(absmax, _mm256_permute2x128_si256(absmax, absmax, 1));
    absmax = _mm256_max_epu32(absmax, _mm256_shuffle_epi32(absmax, 0x4E));
    absmax = _mm256_max_epu32(absmax, _mm256_shuffle_epi32(absmax, 0xB1));
    const float block_max = _mm_cvtss_f32(_mm256_castps256_ps128(_mm256_castsi256_ps(absmax)));
    const __m256 inverse = _mm256_set1_ps(inverse_of(block_max));
    *scale = block_max / 127.0f;
    __m256i rounded[4];
    for (int i = 0; i < 4; ++i) rounded[i] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(values[i]), inverse));
    // Packing works within 128-bit lanes; the permute puts the 32 bytes back in element order.
    const __m256i words = _mm256_packs_epi32(rounded[0], rounded[1]), words_high = _mm256_packs_epi32(rounded[2], rounded[3]);
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(words, words_high),
                                                      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_max_epi8(bytes, _mm256_set1_epi8(-127)));
}

struct Int8ActivationTiles {
    using Rows = Int8Rows;
    static constexpr int kMaxTileM = kMaxActivationRows;
    static constexpr int kMaxTileMFromL2 = kMaxActivationRows;
    static constexpr int64_t activation_row_bytes(int64_t K) { return K; }
    // Each decoded block keeps its weights and their magnitudes in registers; the activations, their
    // signed copy, the lane sums and the decoding constants take six more.
    static constexpr int row_tile(int MT) { return fitting_row_tile(MT, kVectorRegisters, 2, 6); }

    template <int R, int MT>
    static void tile(const Rows& x, int64_t K, const uint8_t* w, int64_t row_bytes, float* y, int64_t ldy) {
        __m256 sum[R][MT];
        for (int r = 0; r < R; ++r)
            for (int m = 0; m < MT; ++m) sum[r][m] = _mm256_setzero_ps();
        const int64_t blocks = K / kMxfp4BlockValues;
        // The loops over r and m are unrolled in full so the accumulators stay in registers.
        for (int64_t b = 0; b < blocks; ++b) {
            prefetch_ahead<R>(w, row_bytes, b);
            __m256i weights[R], magnitudes[R];
            const float* half_scales[R];  // broadcast from memory below: a load, not a shuffle
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                const uint8_t* block = w + r * row_bytes + b * kMxfp4BlockBytes;
                weights[r] = decode_block(block);
                magnitudes[r] = _mm256_sign_epi8(weights[r], weights[r]);
                half_scales[r] = &kHalfScales.by_exponent[block[0]];
            }
#pragma GCC unroll 8
            for (int m = 0; m < MT; ++m) {
                const __m256i activations =
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.values + m * K + b * kMxfp4BlockValues));
                const __m256 activation_scale = _mm256_broadcast_ss(x.scales + m * blocks + b);
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) {
                    const __m256i lanes = dot_lanes(magnitudes[r], _mm256_sign_epi8(activations, weights[r]));
                    const __m256 scale = _mm256_mul_ps(_mm256_broadcast_ss(half_scales[r]), activation_scale);
                    sum[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), scale, sum[r][m]);
                }
            }
        }
        for (int r = 0; r < R; ++r)
            for (int m = 0; m < MT; ++m) y[m * ldy + r] = reduce_add(sum[r][m]);
    }
};

void gemm(const Int8Rows& x, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end, float* y,
          int64_t ldy) {
    gemm_tiled<Int8ActivationTiles>(x, M, K, w, n_begin, n_end, y, ldy);
}

#endif

}  // namespace

int64_t gemm_mxfp4_int8_prepared_bytes(int64_t M, int64_t K) {
    return M * K + M * (K / kMxfp4BlockValues) * static_cast<int64_t>(sizeof(float));
}

void gemm_mxfp4_int8_prepare(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end, void* prepared) {
    int8_t* all_values = static_cast<int8_t*>(prepared);  // the layout of Int8Rows
    float* all_scales = reinterpret_cast<float*>(all_values + M * K);
    for (int64_t m = 0; m < M; ++m) {
        int8_t* values = all_values + m * K;
        float* scales = all_scales + m * (K / kMxfp4BlockValues);
        for (int64_t k = k_begin; k < k_end; k += kMxfp4BlockValues)
            prepare_block(x + m * K + k, values + k, scales + k / kMxfp4BlockValues);
    }
}

void gemm_mxfp4_int8(const void* prepared, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end,
                     float* y, int64_t ldy) {
    gemm(prepared_rows(prepared, M, K), M, K, w, n_begin, n_end, y, ldy);
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
