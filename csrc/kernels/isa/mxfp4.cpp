// MXFP4 kernels: the cast from float32/BF16 and the GEMM y = x W^T with W in MXFP4 blocks.
// Block layout and rounding rules: csrc/kernels/mxfp4.h. The scalar path is the reference.
//
// GEMM paths. All take activations rounded to BF16 (gemm_mxfp4_prepare), so the products are exact in
// float32 and the paths differ only in the order of the sums. Scalar: summed in order of k. AVX2:
// blocks decoded to float32, FMA. AVX-512: blocks decoded to exact BF16 (one vpermw through a table per
// exponent byte), one vdpbf16ps per block and activation row. Every path keeps one accumulator per output
// through the blocks in order, so y[m, n] does not depend on M, the tile shapes or the n range (batch
// invariance).
//
// These products are exact for BF16 activations, which targets need; mxfp4_int8.cpp multiplies int8
// activations instead (lossy, for drafts).
#include <cmath>
#include <cstring>

#include "kernels/bf16.h"
#include "kernels/isa/isa.h"
#include "kernels/isa/mxfp4_decode.h"
#include "kernels/isa/mxfp4_tiles.h"
#include "kernels/mxfp4.h"

namespace mlspecqd {
namespace MLSPECQD_ISA {

namespace {

uint32_t float_bits(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    return bits;
}

// The sign goes into bit 3 for every value, zero included: -0.0 and negatives that round to zero
// become code 8 (OCP's negative zero; it decodes to +0.0).
unsigned e2m1_code(float value, float inverse_scale) {
    return e2m1_magnitude_index(std::fabs(value) * inverse_scale) | (float_bits(value) >> 31) << 3;
}

// Casts one block of 32 floats; returns the index in the block of its first NaN or infinity, or -1.
int cast_block(const float* values, uint8_t* out) {
    uint32_t absmax_bits = 0;
    for (int j = 0; j < kMxfp4BlockValues; ++j) {
        const uint32_t magnitude = float_bits(values[j]) & 0x7fffffffu;
        absmax_bits = magnitude > absmax_bits ? magnitude : absmax_bits;
    }
    if (absmax_bits >= 0x7f800000u) {
        for (int j = 0; j < kMxfp4BlockValues; ++j)
            if (!std::isfinite(values[j])) return j;
    }
    const uint8_t exponent_byte = mxfp4_exponent_byte(absmax_bits);
    const float inverse_scale = mxfp4_inverse_scale(exponent_byte);
    out[0] = exponent_byte;
    for (int j = 0; j < kMxfp4BlockValues / 2; ++j)
        out[1 + j] = static_cast<uint8_t>(e2m1_code(values[j], inverse_scale) |
                                          e2m1_code(values[j + kMxfp4BlockValues / 2], inverse_scale) << 4);
    return -1;
}

int cast_block(const uint16_t* bf16_values, uint8_t* out) {
    float values[kMxfp4BlockValues];
    for (int j = 0; j < kMxfp4BlockValues; ++j) values[j] = bf16_to_float(bf16_values[j]);
    return cast_block(values, out);
}

#if !defined(__AVX512BF16__)

using Activation = float;  // rounded to BF16 like the AVX-512 path's, so every path computes the same sum

void prepare_activations(const float* x, int64_t count, Activation* out) {
    for (int64_t i = 0; i < count; ++i) out[i] = bf16_to_float(float_to_bf16(x[i]));
}

#endif

#if defined(__AVX2__)

// Horizontal reductions in a fixed order (GCC 12's _mm512_reduce_* warn of uninitialized registers);
// reduce_add(__m256) is mxfp4_tiles.h's.

uint32_t reduce_max_unsigned(__m256i v) {
    v = _mm256_max_epu32(v, _mm256_permute2x128_si256(v, v, 1));
    v = _mm256_max_epu32(v, _mm256_shuffle_epi32(v, 0x4E));
    v = _mm256_max_epu32(v, _mm256_shuffle_epi32(v, 0xB1));
    return static_cast<uint32_t>(_mm256_cvtsi256_si32(v));
}

#endif

#if defined(__AVX512BF16__)

float reduce_add(__m512 v) {
    const __m256 high = _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0xEE));
    return MLSPECQD_ISA::reduce_add(_mm256_add_ps(_mm512_castps512_ps256(v), high));  // mxfp4_tiles.h's
}

uint32_t reduce_max_unsigned(__m512i v) {
    return reduce_max_unsigned(
        _mm256_max_epu32(_mm512_castsi512_si256(v), _mm512_castsi512_si256(_mm512_shuffle_i32x4(v, v, 0xEE))));
}

// --- AVX-512: the cast 16 values at a time; the GEMM decodes a block to BF16 through a per-exponent
// table (vpermw) and multiplies with vdpbf16ps against activations rounded to BF16. ---

// E2M1 codes of 16 values, by the rules of e2m1_magnitude_index: count the midpoints below each scaled
// magnitude (non-strict where a tie rounds up), then put the sign in bit 3.
__m512i e2m1_codes(__m512i bits, __m512 inverse_scale) {
    const __m512 scaled =
        _mm512_mul_ps(_mm512_castsi512_ps(_mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff))), inverse_scale);
    const __m512i one = _mm512_set1_epi32(1);
    __m512i index = _mm512_setzero_si512();
    index = _mm512_mask_add_epi32(index, _mm512_cmp_ps_mask(scaled, _mm512_set1_ps(0.25f), _CMP_GT_OQ), index, one);
    index = _mm512_mask_add_epi32(index, _mm512_cmp_ps_mask(scaled, _mm512_set1_ps(0.75f), _CMP_GE_OQ), index, one);
    index = _mm512_mask_add_epi32(index, _mm512_cmp_ps_mask(scaled, _mm512_set1_ps(1.25f), _CMP_GT_OQ), index, one);
    index = _mm512_mask_add_epi32(index, _mm512_cmp_ps_mask(scaled, _mm512_set1_ps(1.75f), _CMP_GE_OQ), index, one);
    index = _mm512_mask_add_epi32(index, _mm512_cmp_ps_mask(scaled, _mm512_set1_ps(2.5f), _CMP_GT_OQ), index, one);
    index = _mm512_mask_add_epi32(index, _mm512_cmp_ps_mask(scaled, _mm512_set1_ps(3.5f), _CMP_GE_OQ), index, one);
    index = _mm512_mask_add_epi32(index, _mm512_cmp_ps_mask(scaled, _mm512_set1_ps(5.0f), _CMP_GT_OQ), index, one);
    return _mm512_mask_or_epi32(index, _mm512_movepi32_mask(bits), index, _mm512_set1_epi32(8));
}

// Encodes the block whose values have the float bits `low` (elements 0..15) and `high` (16..31);
// false, writing nothing, if one is NaN or infinite.
bool encode_block(__m512i low, __m512i high, uint8_t* out) {
    const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
    const uint32_t absmax_bits =
        reduce_max_unsigned(_mm512_max_epu32(_mm512_and_si512(low, magnitude), _mm512_and_si512(high, magnitude)));
    if (absmax_bits >= 0x7f800000u) return false;
    const uint8_t exponent_byte = mxfp4_exponent_byte(absmax_bits);
    const __m512 inverse_scale = _mm512_set1_ps(mxfp4_inverse_scale(exponent_byte));
    const __m512i packed =
        _mm512_or_si512(e2m1_codes(low, inverse_scale), _mm512_slli_epi32(e2m1_codes(high, inverse_scale), 4));
    out[0] = exponent_byte;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 1), _mm512_cvtepi32_epi8(packed));
    return true;
}

int cast_one_block(const float* values, uint8_t* out) {
    if (encode_block(_mm512_loadu_si512(values), _mm512_loadu_si512(values + 16), out)) return -1;
    return cast_block(values, out);  // finds the bad value
}

__m512i bf16_to_float_bits(const uint16_t* values) {
    return _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(values))), 16);
}

int cast_one_block(const uint16_t* values, uint8_t* out) {
    if (encode_block(bf16_to_float_bits(values), bf16_to_float_bits(values + 16), out)) return -1;
    return cast_block(values, out);
}

using Activation = uint16_t;  // BF16 bits

void prepare_activations(const float* x, int64_t count, Activation* out) {
    for (int64_t i = 0; i < count; i += 32) {
        const __m512bh pair = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512(out + i, reinterpret_cast<const __m512i&>(pair));
    }
}

// Tile shapes: a tile of R weight rows by MT activation rows holds R * MT accumulators and R decoded
// blocks in registers, and reads its MT activation rows once per R weight rows. Up to 8 activation
// rows (R = 3) while those rows stay in L1; when they do not (K = 8960), the re-reads come from L2,
// and at most 6 (R = 4) lets each activation row read serve more weight rows.
constexpr int kVectorRegisters = 32;
constexpr int kRegistersPerDecodedBlock = 1;
constexpr int kSpareRegisters = 4;  // activations, decoding temporaries
constexpr int kMaxActivationRows = 8;
constexpr int kMaxActivationRowsFromL2 = 6;

// y[m, r] for m < MT and r < R: one 16-lane accumulator per output, one vdpbf16ps per block, blocks in
// order, then a fixed reduction. Nothing here depends on R or MT, which keeps the batch invariance.
template <int R, int MT>
void gemm_tile(const Activation* x, int64_t K, const uint8_t* w, int64_t row_bytes, float* y, int64_t ldy) {
    __m512 sum[R][MT];
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < MT; ++m) sum[r][m] = _mm512_setzero_ps();
    const int64_t blocks = K / kMxfp4BlockValues;
    // The loops over r and m are unrolled in full so the accumulators stay in registers.
    for (int64_t b = 0; b < blocks; ++b) {
        prefetch_ahead<R>(w, row_bytes, b);
        __m512i weights[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) weights[r] = decode_block(w + r * row_bytes + b * kMxfp4BlockBytes);
#pragma GCC unroll 8
        for (int m = 0; m < MT; ++m) {
            const __m512i activations = _mm512_loadu_si512(x + m * K + b * kMxfp4BlockValues);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r)
                sum[r][m] = _mm512_dpbf16_ps(sum[r][m], reinterpret_cast<const __m512bh&>(weights[r]),
                                             reinterpret_cast<const __m512bh&>(activations));
        }
    }
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < MT; ++m) y[m * ldy + r] = reduce_add(sum[r][m]);
}

#elif defined(__AVX2__)

// --- AVX2: the cast 8 values at a time; the GEMM decodes a block to float32 through a per-exponent
// table of magnitudes (vpermps) and multiplies with FMA. ---

__m256i e2m1_codes(__m256i bits, __m256 inverse_scale) {
    const __m256 scaled =
        _mm256_mul_ps(_mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff))), inverse_scale);
    // A true comparison is all ones, -1: subtracting it counts the midpoint.
    const auto below = [&](float midpoint, int predicate) {
        return _mm256_castps_si256(_mm256_cmp_ps(scaled, _mm256_set1_ps(midpoint), predicate));
    };
    __m256i index = _mm256_setzero_si256();
    index = _mm256_sub_epi32(index, below(0.25f, _CMP_GT_OQ));
    index = _mm256_sub_epi32(index, below(0.75f, _CMP_GE_OQ));
    index = _mm256_sub_epi32(index, below(1.25f, _CMP_GT_OQ));
    index = _mm256_sub_epi32(index, below(1.75f, _CMP_GE_OQ));
    index = _mm256_sub_epi32(index, below(2.5f, _CMP_GT_OQ));
    index = _mm256_sub_epi32(index, below(3.5f, _CMP_GE_OQ));
    index = _mm256_sub_epi32(index, below(5.0f, _CMP_GT_OQ));
    return _mm256_or_si256(index, _mm256_and_si256(_mm256_srli_epi32(bits, 28), _mm256_set1_epi32(8)));
}

// bits[q] holds the float bits of elements 8q..8q+7.
bool encode_block(const __m256i bits[4], uint8_t* out) {
    const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
    const uint32_t absmax_bits = reduce_max_unsigned(
        _mm256_max_epu32(_mm256_max_epu32(_mm256_and_si256(bits[0], magnitude), _mm256_and_si256(bits[1], magnitude)),
                         _mm256_max_epu32(_mm256_and_si256(bits[2], magnitude), _mm256_and_si256(bits[3], magnitude))));
    if (absmax_bits >= 0x7f800000u) return false;
    const uint8_t exponent_byte = mxfp4_exponent_byte(absmax_bits);
    const __m256 inverse_scale = _mm256_set1_ps(mxfp4_inverse_scale(exponent_byte));
    const auto packed = [&](int first, int second) {  // a code from each in the low and high nibbles
        return _mm256_or_si256(e2m1_codes(bits[first], inverse_scale),
                               _mm256_slli_epi32(e2m1_codes(bits[second], inverse_scale), 4));
    };
    const __m256i low = packed(0, 2), high = packed(1, 3);  // bytes 0..7 and 8..15
    // 16-bit packing interleaves the 128-bit lanes; the permute puts bytes 0..7 before 8..15 again.
    const __m256i words = _mm256_permute4x64_epi64(_mm256_packus_epi32(low, high), 0xD8);
    out[0] = exponent_byte;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 1),
                     _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1)));
    return true;
}

int cast_one_block(const float* values, uint8_t* out) {
    __m256i bits[4];
    for (int q = 0; q < 4; ++q) bits[q] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + 8 * q));
    if (encode_block(bits, out)) return -1;
    return cast_block(values, out);  // finds the bad value
}

int cast_one_block(const uint16_t* values, uint8_t* out) {
    __m256i bits[4];
    for (int q = 0; q < 4; ++q)
        bits[q] = _mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(values + 8 * q))), 16);
    if (encode_block(bits, out)) return -1;
    return cast_block(values, out);
}

// Magnitudes of codes 0..7 for every exponent byte; the sign bit is applied after the lookup.
// Decoding is a lookup of the code's low three bits (vpermps) xor the code shifted to bits 28..31, which
// puts its sign bit in place; the table holds each magnitude pre-xored with the three bits that
// shift lands on bits 28..30, so they cancel.
struct MagnitudeTable {
    alignas(32) uint32_t by_exponent[256][8];
    MagnitudeTable() {
        for (int byte = 0; byte < 256; ++byte)
            for (uint32_t i = 0; i < 8; ++i) {
                const float magnitude = mxfp4_value(static_cast<uint8_t>(byte), i);
                std::memcpy(&by_exponent[byte][i], &magnitude, sizeof magnitude);
                by_exponent[byte][i] ^= i << 28;
            }
    }
};
const MagnitudeTable kMagnitudes;

// Rows are decoded one at a time: a row's four weight vectors, activations, the magnitude table and
// decoding temporaries take the spare registers.
constexpr int kVectorRegisters = 16;
constexpr int kRegistersPerDecodedBlock = 0;
constexpr int kSpareRegisters = 7;
constexpr int kMaxActivationRows = 4;
constexpr int kMaxActivationRowsFromL2 = 4;

// Eight weights from codes in the low four bits of each 32-bit lane (higher bits are ignored).
__m256 decode_eight(__m256 magnitudes, __m256i codes) {
    const __m256 sign_and_table_bits = _mm256_castsi256_ps(_mm256_slli_epi32(codes, 28));
    return _mm256_xor_ps(_mm256_permutevar8x32_ps(magnitudes, codes), sign_and_table_bits);
}

// y[m, r] for m < MT and r < R: one 8-lane accumulator per output taking a block's four products in
// order, blocks in order, then a fixed reduction; independent of R and MT (batch invariance).
template <int R, int MT>
void gemm_tile(const Activation* x, int64_t K, const uint8_t* w, int64_t row_bytes, float* y, int64_t ldy) {
    __m256 sum[R][MT];
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < MT; ++m) sum[r][m] = _mm256_setzero_ps();
    const int64_t blocks = K / kMxfp4BlockValues;
    // The loops over r, m and q are unrolled in full so the accumulators stay in registers.
    for (int64_t b = 0; b < blocks; ++b) {
        prefetch_ahead<R>(w, row_bytes, b);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const uint8_t* block = w + r * row_bytes + b * kMxfp4BlockBytes;
            const __m256 magnitudes = _mm256_castsi256_ps(
                _mm256_load_si256(reinterpret_cast<const __m256i*>(kMagnitudes.by_exponent[block[0]])));
            const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 1));
            const __m256i low_bytes = _mm256_cvtepu8_epi32(packed);
            const __m256i high_bytes = _mm256_cvtepu8_epi32(_mm_srli_si128(packed, 8));
            const __m256 weights[4] = {decode_eight(magnitudes, low_bytes), decode_eight(magnitudes, high_bytes),
                                       decode_eight(magnitudes, _mm256_srli_epi32(low_bytes, 4)),
                                       decode_eight(magnitudes, _mm256_srli_epi32(high_bytes, 4))};
#pragma GCC unroll 8
            for (int m = 0; m < MT; ++m) {
                const float* xb = x + m * K + b * kMxfp4BlockValues;
#pragma GCC unroll 4
                for (int q = 0; q < 4; ++q)
                    sum[r][m] = _mm256_fmadd_ps(weights[q], _mm256_loadu_ps(xb + 8 * q), sum[r][m]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < MT; ++m) y[m * ldy + r] = reduce_add(sum[r][m]);
}

#endif

#if !defined(__AVX2__)

// --- Scalar: the reference. Float32 products of the activations and the decoded weights, summed in
// order of k. ---

void gemm_reference(const Activation* x, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end,
                    float* y, int64_t ldy) {
    const int64_t blocks_per_row = K / kMxfp4BlockValues;
    for (int64_t n = n_begin; n < n_end; ++n) {
        const uint8_t* row = w + n * blocks_per_row * kMxfp4BlockBytes;
        for (int64_t m = 0; m < M; ++m) {
            const float* xm = x + m * K;
            float sum = 0.0f;
            for (int64_t b = 0; b < blocks_per_row; ++b) {
                const uint8_t* block = row + b * kMxfp4BlockBytes;
                const float* xb = xm + b * kMxfp4BlockValues;
                for (int j = 0; j < kMxfp4BlockValues / 2; ++j) sum += xb[j] * mxfp4_value(block[0], block[1 + j] & 15);
                for (int j = 0; j < kMxfp4BlockValues / 2; ++j)
                    sum += xb[j + kMxfp4BlockValues / 2] * mxfp4_value(block[0], block[1 + j] >> 4);
            }
            y[m * ldy + n] = sum;
        }
    }
}

#endif

#if defined(__AVX2__)

// --- The tiles both vector paths give gemm_tiled (mxfp4_tiles.h). ---

struct ActivationRows {
    const Activation* data;
    int64_t K;
    ActivationRows from(int64_t m) const { return {data + m * K, K}; }
};

struct Bf16ActivationTiles {
    using Rows = ActivationRows;
    static constexpr int kMaxTileM = kMaxActivationRows;
    static constexpr int kMaxTileMFromL2 = kMaxActivationRowsFromL2;
    static constexpr int64_t activation_row_bytes(int64_t K) { return K * static_cast<int64_t>(sizeof(Activation)); }
    static constexpr int row_tile(int MT) {
        return fitting_row_tile(MT, kVectorRegisters, kRegistersPerDecodedBlock, kSpareRegisters);
    }
    template <int R, int MT>
    static void tile(const Rows& x, int64_t K, const uint8_t* w, int64_t row_bytes, float* y, int64_t ldy) {
        gemm_tile<R, MT>(x.data, K, w, row_bytes, y, ldy);
    }
};

#endif

template <class Value>
int64_t cast_blocks(const Value* values, int64_t n_blocks, uint8_t* out) {
    for (int64_t b = 0; b < n_blocks; ++b) {
#if defined(__AVX2__)
        const int bad = cast_one_block(values + b * kMxfp4BlockValues, out + b * kMxfp4BlockBytes);
#else
        const int bad = cast_block(values + b * kMxfp4BlockValues, out + b * kMxfp4BlockBytes);
#endif
        if (bad >= 0) return b * kMxfp4BlockValues + bad;
    }
    return -1;
}

}  // namespace

int64_t cast_mxfp4_f32(const float* values, int64_t n_blocks, uint8_t* out) {
    return cast_blocks(values, n_blocks, out);
}

int64_t cast_mxfp4_bf16(const uint16_t* values, int64_t n_blocks, uint8_t* out) {
    return cast_blocks(values, n_blocks, out);
}

int64_t gemm_mxfp4_prepared_bytes(int64_t M, int64_t K) { return M * K * static_cast<int64_t>(sizeof(Activation)); }

void gemm_mxfp4_prepare(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end, void* prepared) {
    for (int64_t m = 0; m < M; ++m)
        prepare_activations(x + m * K + k_begin, k_end - k_begin, static_cast<Activation*>(prepared) + m * K + k_begin);
}

void gemm_mxfp4(const void* prepared, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end,
                float* y, int64_t ldy) {
    const Activation* x = static_cast<const Activation*>(prepared);
#if defined(__AVX2__)
    gemm_tiled<Bf16ActivationTiles>(ActivationRows{x, K}, M, K, w, n_begin, n_end, y, ldy);
#else
    gemm_reference(x, M, K, w, n_begin, n_end, y, ldy);
#endif
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
