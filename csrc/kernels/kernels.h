// The table of kernels one instruction set provides. Every entry is single-threaded over the range it
// is given; csrc/kernels/linear.cpp splits work across the thread pool.
#pragma once
#include <cstdint>

namespace mlspecqd {

struct KernelTable {
    const char* isa;
    // y[m * ldy + n] = sum_k x[m * K + k] * W[n * K + k] for m < M and n in [n_begin, n_end).
    // W holds BF16 bit patterns, N x K row-major. The reduction order of each output depends on
    // neither M nor the n range, so a row's result is the same bits in any batch (batch invariance).
    void (*gemm_bf16)(const float* x, int64_t M, int64_t K, const uint16_t* w, int64_t n_begin,
                      int64_t n_end, float* y, int64_t ldy);

    // MXFP4 (csrc/kernels/mxfp4.h). The casts turn n_blocks runs of 32 values into 17-byte blocks and
    // return the index of the first NaN or infinite value, or -1. The GEMM is gemm_bf16's contract with
    // W as MXFP4 blocks, N x (K / 32 * 17) bytes; K is a multiple of 32.
    int64_t (*cast_mxfp4_f32)(const float* values, int64_t n_blocks, uint8_t* out);
    int64_t (*cast_mxfp4_bf16)(const uint16_t* values, int64_t n_blocks, uint8_t* out);
    void (*gemm_mxfp4)(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end,
                       float* y, int64_t ldy);
};

}  // namespace mlspecqd
