// A linear layer's weight as the kernels hold it, and the threaded matrix product over it.
#pragma once
#include <cstdint>

namespace mlspecqd {

enum class WeightType { bf16 };

struct Linear {
    WeightType type = WeightType::bf16;
    int64_t out_features = 0;  // N: rows of W
    int64_t in_features = 0;   // K: the reduction dimension
    const void* data = nullptr;  // BF16: N x K bit patterns, row-major
};

// y (M x N, row-major) = x (M x K, row-major) times W transposed, for any M >= 0. Threads split N,
// never K, so the bits of each output are the same for every M and every thread count. The BF16
// kernels are tuned for M up to 64; larger M reads W once per 64 rows.
void matmul(const Linear& w, const float* x, int64_t M, float* y);

}  // namespace mlspecqd
