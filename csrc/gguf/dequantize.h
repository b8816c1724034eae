// Dequantization of GGUF tensor data (ggml block formats) to float32 or BF16.
//
// The float32 results equal gguf-py's NumPy reference (gguf.quants.dequantize) bit for bit: each
// format performs the same float32 operations in the same order. BF16 results are the float32
// results rounded to nearest even (NaN stays NaN, quieted).
#pragma once
#include <cstdint>
#include <vector>

namespace mlspecqd {

// ggml type numbers (the GGUF tensor-info field) of the formats below.
enum class GgmlType : int {
    f32 = 0,
    f16 = 1,
    q4_0 = 2,
    q4_1 = 3,
    q5_0 = 6,
    q5_1 = 7,
    q8_0 = 8,
    q4_k = 12,
    q5_k = 13,
    q6_k = 14,
    bf16 = 30,
    mxfp4 = 39,
};

// A block of `elements` values stored in `bytes` bytes.
struct BlockFormat {
    int64_t elements;
    int64_t bytes;
};

// The ggml type numbers dequantize_* accept.
std::vector<int> dequantizable_types();

// The block format of a type; throws std::invalid_argument for a type not in dequantizable_types().
BlockFormat block_format(int ggml_type);

// Decodes n_elements values (a multiple of the type's block size) from the n_elements / elements *
// bytes bytes at `raw`, threaded over blocks. Throws std::invalid_argument for an unsupported type
// or an element count that is not a whole number of blocks.
void dequantize_to_f32(int ggml_type, const uint8_t* raw, int64_t n_elements, float* out);
void dequantize_to_bf16(int ggml_type, const uint8_t* raw, int64_t n_elements, uint16_t* out);

}  // namespace mlspecqd
