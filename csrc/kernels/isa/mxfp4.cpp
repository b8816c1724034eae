// MXFP4 kernels: the cast from float32/BF16 and the GEMM y = x W^T with W in MXFP4 blocks.
// Block layout and rounding rules: csrc/kernels/mxfp4.h. The scalar path is the reference.
#include <cmath>
#include <cstring>

#include "kernels/bf16.h"
#include "kernels/isa/isa.h"
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

template <class Value>
int64_t cast_blocks(const Value* values, int64_t n_blocks, uint8_t* out) {
    for (int64_t b = 0; b < n_blocks; ++b) {
        const int bad = cast_block(values + b * kMxfp4BlockValues, out + b * kMxfp4BlockBytes);
        if (bad >= 0) return b * kMxfp4BlockValues + bad;
    }
    return -1;
}

void gemm_reference(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end,
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

}  // namespace

int64_t cast_mxfp4_f32(const float* values, int64_t n_blocks, uint8_t* out) {
    return cast_blocks(values, n_blocks, out);
}

int64_t cast_mxfp4_bf16(const uint16_t* values, int64_t n_blocks, uint8_t* out) {
    return cast_blocks(values, n_blocks, out);
}

void gemm_mxfp4(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end, float* y,
                int64_t ldy) {
    gemm_reference(x, M, K, w, n_begin, n_end, y, ldy);
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
