#include "gguf/dequantize.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/bf16.h"
#include "threads.h"

// Bit-exactness with the NumPy reference needs every product and sum rounded on its own: the build
// must not contract a * b - c into a fused multiply-add (the baseline x86-64 target has no FMA, and
// tests/gguf_files/test_dequantize.py fails if a build ever does).

namespace mlspecqd {

namespace {

// GGUF data is little-endian, as is every CPU this module targets.
uint16_t load_u16(const uint8_t* p) {
    uint16_t value;
    std::memcpy(&value, p, sizeof value);
    return value;
}

uint32_t load_u32(const uint8_t* p) {
    uint32_t value;
    std::memcpy(&value, p, sizeof value);
    return value;
}

float float_from_bits(uint32_t bits) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

// IEEE half to float, exactly as NumPy converts: a NaN keeps its payload and is not quieted.
float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    const uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f) return float_from_bits(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0) return float_from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
    // Zero or subnormal: mantissa * 2^-24 is exact in float32.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    uint32_t bits;
    std::memcpy(&bits, &magnitude, sizeof bits);
    return float_from_bits(sign | bits);
}

// d * q + m as NumPy computes it. When the product and m are both NaN, x86 returns the first operand's NaN,
// and the compiler may put either operand first (IEEE leaves the choice open; a sanitizer build swaps
// them); taking the product's NaN explicitly keeps the bits those of the reference in every build.
inline float scaled_plus_min(float d, float q, float m) {
    const float product = d * q;
    return product != product ? product : product + m;
}

// Each format decodes one block; the comments give the block layout in bytes.

struct F32 {
    static constexpr int64_t elements = 1, bytes = 4;
    static void decode(const uint8_t* block, float* out) { std::memcpy(out, block, 4); }
};

struct F16 {
    static constexpr int64_t elements = 1, bytes = 2;
    static void decode(const uint8_t* block, float* out) { *out = half_to_float(load_u16(block)); }
};

struct BF16 {
    static constexpr int64_t elements = 1, bytes = 2;
    static void decode(const uint8_t* block, float* out) { *out = bf16_to_float(load_u16(block)); }
};

// d: f16 | 16 bytes of 4-bit q, low nibbles first; value = d * (q - 8)
struct Q4_0 {
    static constexpr int64_t elements = 32, bytes = 18;
    static void decode(const uint8_t* block, float* out) {
        const float d = half_to_float(load_u16(block));
        const uint8_t* qs = block + 2;
        for (int j = 0; j < 16; ++j) {
            out[j] = d * static_cast<float>((qs[j] & 0x0f) - 8);
            out[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
        }
    }
};

// d: f16 | m: f16 | 16 bytes of 4-bit q; value = d * q + m
struct Q4_1 {
    static constexpr int64_t elements = 32, bytes = 20;
    static void decode(const uint8_t* block, float* out) {
        const float d = half_to_float(load_u16(block));
        const float m = half_to_float(load_u16(block + 2));
        const uint8_t* qs = block + 4;
        for (int j = 0; j < 16; ++j) {
            out[j] = scaled_plus_min(d, static_cast<float>(qs[j] & 0x0f), m);
            out[j + 16] = scaled_plus_min(d, static_cast<float>(qs[j] >> 4), m);
        }
    }
};

// The fifth bit of element j of a Q5_0 / Q5_1 block: bit j of the 32-bit qh, as 0 or 16.
inline int high_bit(uint32_t qh, int j) { return static_cast<int>((qh >> j) & 1u) << 4; }

// d: f16 | qh: 32 high bits | 16 bytes of low nibbles; value = d * (q - 16)
struct Q5_0 {
    static constexpr int64_t elements = 32, bytes = 22;
    static void decode(const uint8_t* block, float* out) {
        const float d = half_to_float(load_u16(block));
        const uint32_t qh = load_u32(block + 2);
        const uint8_t* qs = block + 6;
        for (int j = 0; j < 16; ++j) {
            out[j] = d * static_cast<float>(((qs[j] & 0x0f) | high_bit(qh, j)) - 16);
            out[j + 16] = d * static_cast<float>(((qs[j] >> 4) | high_bit(qh, j + 16)) - 16);
        }
    }
};

// d: f16 | m: f16 | qh: 32 high bits | 16 bytes of low nibbles; value = d * q + m
struct Q5_1 {
    static constexpr int64_t elements = 32, bytes = 24;
    static void decode(const uint8_t* block, float* out) {
        const float d = half_to_float(load_u16(block));
        const float m = half_to_float(load_u16(block + 2));
        const uint32_t qh = load_u32(block + 4);
        const uint8_t* qs = block + 8;
        for (int j = 0; j < 16; ++j) {
            out[j] = scaled_plus_min(d, static_cast<float>((qs[j] & 0x0f) | high_bit(qh, j)), m);
            out[j + 16] = scaled_plus_min(d, static_cast<float>((qs[j] >> 4) | high_bit(qh, j + 16)), m);
        }
    }
};

// d: f16 | 32 int8 q; value = q * d
struct Q8_0 {
    static constexpr int64_t elements = 32, bytes = 34;
    static void decode(const uint8_t* block, float* out) {
        const float d = half_to_float(load_u16(block));
        const int8_t* qs = reinterpret_cast<const int8_t*>(block + 2);
        for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(qs[j]) * d;
    }
};

// Q4_K and Q5_K pack eight 6-bit scales and eight 6-bit minimums (one per 32 values) in 12 bytes:
// bytes 0-3 and 4-7 hold the low 6 bits of scales 0-3 and minimums 0-3 (their top 2 bits are the
// high bits of scales / minimums 4-7), bytes 8-11 the low 4 bits of scales 4-7 and minimums 4-7.
void unpack_scales_and_mins(const uint8_t* packed, int scales[8], int mins[8]) {
    for (int j = 0; j < 4; ++j) {
        scales[j] = packed[j] & 63;
        mins[j] = packed[j + 4] & 63;
        scales[j + 4] = (packed[j + 8] & 0x0f) | ((packed[j] >> 2) & 0x30);
        mins[j + 4] = (packed[j + 8] >> 4) | ((packed[j + 4] >> 2) & 0x30);
    }
}

// d: f16 | dmin: f16 | 12 scale bytes | 128 bytes of 4-bit q. Sub-blocks 2i and 2i+1 are the low and
// high nibbles of bytes 32i..32i+31; value = (d * scale) * q - dmin * min
struct Q4_K {
    static constexpr int64_t elements = 256, bytes = 144;
    static void decode(const uint8_t* block, float* out) {
        const float d = half_to_float(load_u16(block));
        const float dmin = half_to_float(load_u16(block + 2));
        int scales[8], mins[8];
        unpack_scales_and_mins(block + 4, scales, mins);
        const uint8_t* qs = block + 16;
        for (int pair = 0; pair < 4; ++pair, qs += 32, out += 64) {
            const float d_low = d * static_cast<float>(scales[2 * pair]);
            const float m_low = dmin * static_cast<float>(mins[2 * pair]);
            const float d_high = d * static_cast<float>(scales[2 * pair + 1]);
            const float m_high = dmin * static_cast<float>(mins[2 * pair + 1]);
            for (int j = 0; j < 32; ++j) out[j] = d_low * static_cast<float>(qs[j] & 0x0f) - m_low;
            for (int j = 0; j < 32; ++j) out[j + 32] = d_high * static_cast<float>(qs[j] >> 4) - m_high;
        }
    }
};

// d: f16 | dmin: f16 | 12 scale bytes | qh: 32 bytes | 128 bytes of low nibbles (as Q4_K). The fifth
// bit of element j of sub-block k is bit k of qh[j]; value = (d * scale) * q - dmin * min
struct Q5_K {
    static constexpr int64_t elements = 256, bytes = 176;
    static void decode(const uint8_t* block, float* out) {
        const float d = half_to_float(load_u16(block));
        const float dmin = half_to_float(load_u16(block + 2));
        int scales[8], mins[8];
        unpack_scales_and_mins(block + 4, scales, mins);
        const uint8_t* qh = block + 16;
        const uint8_t* qs = block + 48;
        for (int sub = 0; sub < 8; ++sub, out += 32) {
            const float scale = d * static_cast<float>(scales[sub]);
            const float min = dmin * static_cast<float>(mins[sub]);
            const uint8_t* low = qs + 32 * (sub / 2);
            const int shift = 4 * (sub % 2);
            for (int j = 0; j < 32; ++j) {
                const int q = ((low[j] >> shift) & 0x0f) | (((qh[j] >> sub) & 1) << 4);
                out[j] = scale * static_cast<float>(q) - min;
            }
        }
    }
};

// ql: 128 bytes | qh: 64 bytes | 16 int8 scales | d: f16. Each half of 128 values uses 64 ql bytes
// (values r < 64 the low nibbles, r >= 64 the high ones, of byte r % 64) and 32 qh bytes (bits
// 2(r / 32) and up of byte r % 32); value = (d * scale[i / 16]) * (q - 32)
struct Q6_K {
    static constexpr int64_t elements = 256, bytes = 210;
    static void decode(const uint8_t* block, float* out) {
        const uint8_t* ql = block;
        const uint8_t* qh = block + 128;
        const int8_t* scales = reinterpret_cast<const int8_t*>(block + 192);
        const float d = half_to_float(load_u16(block + 208));
        // Unpack the 6-bit values first (byte-wide vector work), then scale them 16 at a time.
        int8_t q[256];
        for (int half = 0; half < 2; ++half) {
            for (int group = 0; group < 4; ++group) {
                const uint8_t* low = ql + 64 * half + 32 * (group % 2);
                const uint8_t* high = qh + 32 * half;
                const int low_shift = 4 * (group / 2), high_shift = 2 * group;
                int8_t* target = q + 128 * half + 32 * group;
                for (int j = 0; j < 32; ++j) {
                    const int bits = ((low[j] >> low_shift) & 0x0f) | (((high[j] >> high_shift) & 3) << 4);
                    target[j] = static_cast<int8_t>(bits - 32);
                }
            }
        }
        for (int sub = 0; sub < 16; ++sub) {
            const float scale = d * static_cast<float>(scales[sub]);
            for (int j = 0; j < 16; ++j) out[16 * sub + j] = scale * static_cast<float>(q[16 * sub + j]);
        }
    }
};

// e: E8M0 exponent byte | 16 bytes of 4-bit E2M1 codes, low nibbles first. The table holds twice
// the E2M1 values, so the scale is half of 2^(e - 127); value = scale * table[code]
struct MXFP4 {
    static constexpr int64_t elements = 32, bytes = 17;
    static constexpr int8_t doubled_values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    static float half_scale(uint8_t e) {
        // e < 2 gives a subnormal float32; the others a normal one with exponent e - 1.
        return float_from_bits(e < 2 ? 0x00200000u << e : static_cast<uint32_t>(e - 1) << 23);
    }
    static void decode(const uint8_t* block, float* out) {
        const float d = half_scale(block[0]);
        const uint8_t* qs = block + 1;
        for (int j = 0; j < 16; ++j) {
            out[j] = d * static_cast<float>(doubled_values[qs[j] & 0x0f]);
            out[j + 16] = d * static_cast<float>(doubled_values[qs[j] >> 4]);
        }
    }
};

// Calls visit(Format{}) with the format of a ggml type.
template <class Visitor>
void with_format(int ggml_type, Visitor&& visit) {
    switch (static_cast<GgmlType>(ggml_type)) {
        case GgmlType::f32: return visit(F32{});
        case GgmlType::f16: return visit(F16{});
        case GgmlType::bf16: return visit(BF16{});
        case GgmlType::q4_0: return visit(Q4_0{});
        case GgmlType::q4_1: return visit(Q4_1{});
        case GgmlType::q5_0: return visit(Q5_0{});
        case GgmlType::q5_1: return visit(Q5_1{});
        case GgmlType::q8_0: return visit(Q8_0{});
        case GgmlType::q4_k: return visit(Q4_K{});
        case GgmlType::q5_k: return visit(Q5_K{});
        case GgmlType::q6_k: return visit(Q6_K{});
        case GgmlType::mxfp4: return visit(MXFP4{});
    }
    throw std::invalid_argument("ggml type " + std::to_string(ggml_type) + " cannot be dequantized");
}

// Blocks per slice handed to a thread: about 16K values, so slices are large against their cost.
template <class Format>
constexpr int64_t grain_blocks() {
    return std::max<int64_t>(1, 16384 / Format::elements);
}

template <class Format>
int64_t block_count(int64_t n_elements) {
    if (n_elements < 0 || n_elements % Format::elements != 0)
        throw std::invalid_argument("element count " + std::to_string(n_elements) +
                                    " is not a whole number of blocks of " + std::to_string(Format::elements));
    return n_elements / Format::elements;
}

template <class Format>
void decode_to_f32(const uint8_t* raw, int64_t n_elements, float* out) {
    parallel_for(block_count<Format>(n_elements), grain_blocks<Format>(), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) Format::decode(raw + b * Format::bytes, out + b * Format::elements);
    });
}

template <class Format>
void decode_to_bf16(const uint8_t* raw, int64_t n_elements, uint16_t* out) {
    // Blocks go through a small float32 buffer that stays in L1, then are rounded to BF16.
    constexpr int64_t staged_blocks = Format::elements >= 256 ? 1 : 256 / Format::elements;
    constexpr int64_t staged_elements = staged_blocks * Format::elements;
    parallel_for(block_count<Format>(n_elements), grain_blocks<Format>(), [&](int64_t begin, int64_t end) {
        float staged[staged_elements];
        for (int64_t first = begin; first < end; first += staged_blocks) {
            const int64_t count = std::min(staged_blocks, end - first);
            for (int64_t b = 0; b < count; ++b)
                Format::decode(raw + (first + b) * Format::bytes, staged + b * Format::elements);
            uint16_t* target = out + first * Format::elements;
            for (int64_t i = 0; i < count * Format::elements; ++i) target[i] = float_to_bf16(staged[i]);
        }
    });
}

}  // namespace

std::vector<int> dequantizable_types() {
    std::vector<int> types;
    for (GgmlType type : {GgmlType::f32, GgmlType::f16, GgmlType::q4_0, GgmlType::q4_1, GgmlType::q5_0,
                          GgmlType::q5_1, GgmlType::q8_0, GgmlType::q4_k, GgmlType::q5_k, GgmlType::q6_k,
                          GgmlType::bf16, GgmlType::mxfp4})
        types.push_back(static_cast<int>(type));
    return types;
}

BlockFormat block_format(int ggml_type) {
    BlockFormat result{};
    with_format(ggml_type, [&](auto format) { result = {decltype(format)::elements, decltype(format)::bytes}; });
    return result;
}

void dequantize_to_f32(int ggml_type, const uint8_t* raw, int64_t n_elements, float* out) {
    with_format(ggml_type, [&](auto format) { decode_to_f32<decltype(format)>(raw, n_elements, out); });
}

void dequantize_to_bf16(int ggml_type, const uint8_t* raw, int64_t n_elements, uint16_t* out) {
    with_format(ggml_type, [&](auto format) { decode_to_bf16<decltype(format)>(raw, n_elements, out); });
}

}  // namespace mlspecqd
