// The table of kernels one instruction set provides. Every entry is single-threaded over the range it
// is given; csrc/kernels/linear.cpp and csrc/kernels/stream_read.cpp split work across the thread pool.
#pragma once
#include <cstdint>

namespace mlspecqd {

// Keys are cached in tiles of kKeyTile positions: for each key/value head, tile i holds positions
// kKeyTile * i .. kKeyTile * i + kKeyTile - 1 as head_dim rows of kKeyTile floats (row d, lane l: dimension d
// of the key at position kKeyTile * i + l). The attention kernels then get kKeyTile scores from plain
// vector FMAs over d, without horizontal sums, and every score sums its products in d order.
constexpr int64_t kKeyTile = 16;
constexpr int64_t key_tiles(int64_t capacity) { return (capacity + kKeyTile - 1) / kKeyTile; }
// Where dimension 0 of the key at `position` sits in one head's tiles; dimension d is d * kKeyTile further.
constexpr int64_t key_offset(int64_t position, int64_t head_dim) {
    return position / kKeyTile * head_dim * kKeyTile + position % kKeyTile;
}

// One causal attention problem: T query rows at positions first_position .. first_position + T - 1 against
// one layer's key/value cache, which already holds positions 0 .. first_position + T - 1. With a window
// W > 0 (sliding-window attention) the row at position P attends to positions max(0, P - W + 1) .. P
// only; with W = 0, to 0 .. P.
struct AttentionProblem {
    const float* q;        // T x (n_heads * head_dim), RoPE applied
    const float* k_cache;  // n_kv_heads x key_tiles(capacity) tiles of head_dim x kKeyTile (see kKeyTile)
    const float* v_cache;  // n_kv_heads x capacity x head_dim
    float* out;            // T x (n_heads * head_dim)
    int64_t T = 0;
    int64_t n_heads = 0;
    int64_t n_kv_heads = 0;  // divides n_heads; query head h reads key/value head h / (n_heads / n_kv_heads)
    int64_t head_dim = 0;
    int64_t capacity = 0;  // positions each cache head has room for
    int64_t first_position = 0;
    float scale = 1.0f;  // multiplies every q . k
    int64_t window = 0;  // keys a row attends to, itself included; 0: all earlier positions
};

// A BF16 weight matrix W (N x K bit patterns) as gemm_bf16 reads it: K is cut into blocks of
// block_columns columns (block_columns divides K), stored one after another, each an N x block_columns
// row-major matrix. One block of K columns is plain row-major. A pass over one K block of many rows,
// which is how the kernels walk W when the activations must be taken a K block at a time, then reads
// memory in one run instead of a short run from each row.
struct Bf16Weights {
    const uint16_t* data;
    int64_t rows;           // N
    int64_t block_columns;  // divides K

    // Where W[n, k] is. Within a K block, rows are block_columns values apart.
    const uint16_t* at(int64_t n, int64_t k) const {
        const int64_t block = k / block_columns;
        return data + (block * rows + n) * block_columns + (k - block * block_columns);
    }
};

// Column ranges given to the prepare kernels start at multiples of this (every instruction set's step
// divides it).
constexpr int64_t kPrepareColumns = 32;

// The attention kernels take up to this many rows of one key/value head together, each block of keys
// and values going through all of them while it is in L1.
constexpr int64_t kAttentionRowsTogether = 16;

// Floats of scratch the attention kernels need for problem p (causal_attention's `scores`).
inline int64_t attention_scores_floats(const AttentionProblem& p) {
    const int64_t rows = p.T < kAttentionRowsTogether ? p.T : kAttentionRowsTogether;
    return rows * (p.n_heads / p.n_kv_heads) * (p.first_position + p.T);
}

struct KernelTable {
    const char* isa;

    // BF16-weight GEMM in two steps, so activations are converted once per call, not once per thread:
    //   gemm_bf16_prepare rounds columns [k_begin, k_end) of x (M x K float32) to BF16 (nearest even)
    //     into `prepared` (64-byte aligned, gemm_bf16_prepared_bytes(M, K) long), in the layout this
    //     instruction set reads; k_begin and k_end are multiples of kPrepareColumns, or K. Threads may
    //     prepare disjoint column ranges at once;
    //   gemm_bf16 computes y[m * ldy + n] = sum_k x'[m, k] * W[n, k] for m < M and n in [n_begin, n_end),
    //     summing in float32, x' being the prepared x.
    // Each output has one fixed reduction order that depends on neither M, nor the n range, nor which
    // rows share a tile, so a row's result is the same bits in any batch (batch invariance).
    int64_t (*gemm_bf16_prepared_bytes)(int64_t M, int64_t K);
    void (*gemm_bf16_prepare)(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end, void* prepared);
    void (*gemm_bf16)(const void* prepared, int64_t M, int64_t K, const Bf16Weights& w, int64_t n_begin,
                      int64_t n_end, float* y, int64_t ldy);

    // Reads words[0 .. count) once and returns their wrapping sum: the streaming-read baseline that
    // GEMM bandwidth is compared against.
    uint64_t (*stream_read)(const uint64_t* words, int64_t count);

    // MXFP4 (csrc/kernels/mxfp4.h). The casts turn n_blocks runs of 32 values into 17-byte blocks and
    // return the index of the first NaN or infinite value, or -1.
    int64_t (*cast_mxfp4_f32)(const float* values, int64_t n_blocks, uint8_t* out);
    int64_t (*cast_mxfp4_bf16)(const uint16_t* values, int64_t n_blocks, uint8_t* out);
    // MXFP4-weight GEMM, in the same two steps and with the same batch invariance as the BF16 one:
    // gemm_mxfp4_prepare rounds columns [k_begin, k_end) of x to BF16 into `prepared` (64-byte aligned,
    // gemm_mxfp4_prepared_bytes(M, K) long), and gemm_mxfp4 is gemm_bf16 with W as MXFP4 blocks,
    // N x (K / 32 * 17) bytes, K a multiple of 32.
    int64_t (*gemm_mxfp4_prepared_bytes)(int64_t M, int64_t K);
    void (*gemm_mxfp4_prepare)(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end, void* prepared);
    void (*gemm_mxfp4)(const void* prepared, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin,
                       int64_t n_end, float* y, int64_t ldy);
    // MXFP4-weight GEMM against int8 activations (csrc/kernels/isa/mxfp4_int8.cpp), in the same two steps:
    // the prepare step quantizes columns [k_begin, k_end) of x per block of 32 to int8 with a float scale,
    // and the product sums exact int32 block dot products scaled in float32. Lossy next to gemm_mxfp4 (the
    // activations lose bits), batch invariant, and every instruction set gives the same bits.
    int64_t (*gemm_mxfp4_int8_prepared_bytes)(int64_t M, int64_t K);
    void (*gemm_mxfp4_int8_prepare)(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end,
                                    void* prepared);
    void (*gemm_mxfp4_int8)(const void* prepared, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin,
                            int64_t n_end, float* y, int64_t ldy);
    // Softmax attention for the work items [item_begin, item_end) of `p`; item = kv_head * T + row covers
    // the n_heads / n_kv_heads query heads of that key/value head. `scores` has room for
    // attention_scores_floats(p) floats. Each query visits its keys (those in its window) in position
    // order and sums in an order fixed by the row's position and the window alone, so a row's output is
    // the same bits in any batch.
    void (*causal_attention)(const AttentionProblem& p, int64_t item_begin, int64_t item_end, float* scores);

    // The gated MLP's activations, elementwise over n floats (csrc/kernels/isa/activation.cpp):
    // gate[i] <- silu(gate[i]) * up[i], and gate[i] <- gelu_tanh(gate[i]) * up[i].
    void (*silu_multiply)(float* gate, const float* up, int64_t n);
    void (*gelu_tanh_multiply)(float* gate, const float* up, int64_t n);
};

}  // namespace mlspecqd
