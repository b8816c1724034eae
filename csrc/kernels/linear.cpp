#include "kernels/linear.h"

#include "cpu.h"
#include "threads.h"

namespace mlspecqd {

void matmul(const Linear& w, const float* x, int64_t M, float* y) {
    const KernelTable& k = kernels();
    const int64_t N = w.out_features, K = w.in_features;
    constexpr int64_t kRowsPerChunk = 64;  // a multiple of every kernel's row tile
    parallel_for(N, kRowsPerChunk, [&](int64_t begin, int64_t end) {
        switch (w.type) {
            case WeightType::bf16:
                k.gemm_bf16(x, M, K, static_cast<const uint16_t*>(w.data), begin, end, y, N);
                break;
            case WeightType::mxfp4:
                k.gemm_mxfp4(x, M, K, static_cast<const uint8_t*>(w.data), begin, end, y, N);
                break;
        }
    });
}

}  // namespace mlspecqd
