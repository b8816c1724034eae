// The table of kernels one instruction set provides. Every entry is single-threaded over the range it
// is given; csrc/kernels/linear.cpp and csrc/kernels/stream_read.cpp split work across the thread pool.
#pragma once
#include <cstdint>

namespace mlspecqd {

struct KernelTable {
    const char* isa;

    // BF16-weight GEMM in two steps, so activations are converted once per call, not once per thread:
    //   gemm_bf16_prepare rounds x (M x K float32) to BF16 (nearest even) into `prepared` (64-byte
    //     aligned, gemm_bf16_prepared_bytes(M, K) long), in the layout this instruction set reads;
    //   gemm_bf16 computes y[m * ldy + n] = sum_k x'[m, k] * W[n * K + k] for m < M and n in
    //     [n_begin, n_end), summing in float32, x' being the prepared x. W holds BF16 bit patterns,
    //     N x K row-major.
    // Each output has one fixed reduction order that depends on neither M, nor the n range, nor which
    // rows share a tile, so a row's result is the same bits in any batch (batch invariance).
    int64_t (*gemm_bf16_prepared_bytes)(int64_t M, int64_t K);
    void (*gemm_bf16_prepare)(const float* x, int64_t M, int64_t K, void* prepared);
    void (*gemm_bf16)(const void* prepared, int64_t M, int64_t K, const uint16_t* w, int64_t n_begin,
                      int64_t n_end, float* y, int64_t ldy);

    // Reads words[0 .. count) once and returns their wrapping sum: the streaming-read baseline that
    // GEMM bandwidth is compared against.
    uint64_t (*stream_read)(const uint64_t* words, int64_t count);

    // MXFP4 (csrc/kernels/mxfp4.h). The casts turn n_blocks runs of 32 values into 17-byte blocks and
    // return the index of the first NaN or infinite value, or -1.
    int64_t (*cast_mxfp4_f32)(const float* values, int64_t n_blocks, uint8_t* out);
    int64_t (*cast_mxfp4_bf16)(const uint16_t* values, int64_t n_blocks, uint8_t* out);
    // MXFP4-weight GEMM, in the same two steps and with the same batch invariance as the BF16 one:
    // gemm_mxfp4_prepare rounds x to BF16 into `prepared` (64-byte aligned, gemm_mxfp4_prepared_bytes(M, K)
    // long), and gemm_mxfp4 is gemm_bf16 with W as MXFP4 blocks, N x (K / 32 * 17) bytes, K a multiple
    // of 32.
    int64_t (*gemm_mxfp4_prepared_bytes)(int64_t M, int64_t K);
    void (*gemm_mxfp4_prepare)(const float* x, int64_t M, int64_t K, void* prepared);
    void (*gemm_mxfp4)(const void* prepared, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin,
                       int64_t n_end, float* y, int64_t ldy);
};

}  // namespace mlspecqd
