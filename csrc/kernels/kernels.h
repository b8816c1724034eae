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
};

}  // namespace mlspecqd
