// MXFP4 (OCP Microscaling FP4; GGUF/ggml type 39): the block layout and the rules every path shares.
//
// A block holds 32 consecutive values along K in 17 bytes: one E8M0 exponent byte, then 16 bytes of
// E2M1 codes, byte j holding element j in its low nibble and element j + 16 in its high nibble.
// A code is sign (bit 3) and a magnitude index (bits 0-2) into {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
// Decoding follows ggml (and gguf.quants) exactly: value = doubled E2M1 value times half the scale
// 2^(byte - 128). Every byte then has a finite half scale: byte 255 acts as a scale of 2^128, not as
// OCP's NaN, and code 8 (negative zero) decodes to +0.0.
#pragma once
#include <cstdint>
#include <cstring>

namespace mlspecqd {

constexpr int64_t kMxfp4BlockValues = 32;
constexpr int64_t kMxfp4BlockBytes = 17;

// Doubled E2M1 values by code, so that they are integers (ggml's kvalues_mxfp4).
constexpr float kMxfp4DoubledValues[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// 2^(byte - 128) as a float; bytes 0 and 1 give the subnormals 2^-128 and 2^-127.
inline float mxfp4_half_scale(uint8_t byte) {
    const uint32_t bits = byte < 2 ? 0x00200000u << byte : static_cast<uint32_t>(byte - 1) << 23;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

inline float mxfp4_value(uint8_t exponent_byte, unsigned code) {
    return kMxfp4DoubledValues[code] * mxfp4_half_scale(exponent_byte);
}

// The cast's rules, shared by the scalar path and the vector paths' reference tests.
//
// Exponent byte of a block from the bits of its largest magnitude: floor(log2(absmax)) - 2 + 127, so the
// largest element lands in [4, 8), clamped below at 0 (E8M0's smallest scale, 2^-127; that also encodes
// an all-zero block). Read off the float's exponent field, so it is exact where log2f is not (just
// below a power of two). A finite float gives at most 252: the cast never writes 253..255.
inline uint8_t mxfp4_exponent_byte(uint32_t absmax_bits) {
    const int biased_exponent = static_cast<int>(absmax_bits >> 23);
    return static_cast<uint8_t>(biased_exponent > 2 ? biased_exponent - 2 : 0);
}

// 2^-(byte - 127): bytes 0..252 give normal floats, and |x| times it is exact for every |x| that can
// round to a nonzero code.
inline float mxfp4_inverse_scale(uint8_t exponent_byte) {
    const uint32_t bits = static_cast<uint32_t>(254 - exponent_byte) << 23;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Magnitude index of the E2M1 value nearest to `scaled` (>= 0): ties go to the even index (even
// mantissa), values above 6 saturate to 6. The midpoints 0.25, 1.25, 2.5, 5 round down to an even index,
// 0.75, 1.75, 3.5 round up to one; hence the alternating strict and non-strict comparisons.
inline unsigned e2m1_magnitude_index(float scaled) {
    return (scaled > 0.25f) + (scaled >= 0.75f) + (scaled > 1.25f) + (scaled >= 1.75f) + (scaled > 2.5f) +
           (scaled >= 3.5f) + (scaled > 5.0f);
}

// Casts `n_blocks` consecutive blocks of 32 values (float32, or BF16 bit patterns) to 17-byte MXFP4
// blocks in `out`, on the thread pool. Returns -1, or the index of the first NaN or infinite value: MXFP4
// cannot encode one, and the cast refuses rather than write OCP's NaN scale 0xFF, which ggml reads as
// the finite scale 2^128 (out is then incomplete).
int64_t cast_to_mxfp4(const float* values, int64_t n_blocks, uint8_t* out);
int64_t cast_to_mxfp4(const uint16_t* bf16_values, int64_t n_blocks, uint8_t* out);

}  // namespace mlspecqd
