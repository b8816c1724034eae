#include "kernels/linear.h"

#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

#include "cpu.h"
#include "threads.h"

namespace mlspecqd {

namespace {

// The calling thread's buffer for converted activations: the pool threads share it read-only, and
// steady-state decoding reuses it instead of allocating on every call.
std::byte* activation_scratch(size_t bytes) {
    constexpr size_t kAlignment = 64;
    thread_local std::vector<std::byte> buffer;
    if (buffer.size() < bytes + kAlignment) buffer.resize(bytes + kAlignment);
    void* start = buffer.data();
    size_t space = buffer.size();
    return static_cast<std::byte*>(std::align(kAlignment, bytes, start, space));
}

// Activations are prepared once, by the calling thread, in the layout the kernel reads; then the kernel
// runs on slices of N across the pool.
template <class Weight>
void matmul_prepared(int64_t (*prepared_bytes)(int64_t M, int64_t K),
                     void (*prepare)(const float* x, int64_t M, int64_t K, void* prepared),
                     void (*gemm)(const void* prepared, int64_t M, int64_t K, const Weight* w, int64_t n_begin,
                                  int64_t n_end, float* y, int64_t ldy),
                     const Weight* w, int64_t N, int64_t K, const float* x, int64_t M, float* y) {
    std::byte* prepared = activation_scratch(static_cast<size_t>(prepared_bytes(M, K)));
    prepare(x, M, K, prepared);
    constexpr int64_t kWeightRowsPerChunk = 64;  // thread slices of N never share a cache line of y
    parallel_for(N, kWeightRowsPerChunk, [&](int64_t begin, int64_t end) { gemm(prepared, M, K, w, begin, end, y, N); });
}

}  // namespace

void matmul(const Linear& w, const float* x, int64_t M, float* y) {
    if (M <= 0 || w.out_features <= 0) return;
    if (w.in_features <= 0) {  // empty sums; the kernels assume at least one step of K
        std::fill(y, y + M * w.out_features, 0.0f);
        return;
    }
    const KernelTable& k = kernels();
    const int64_t N = w.out_features, K = w.in_features;
    switch (w.type) {
        case WeightType::bf16:
            matmul_prepared(k.gemm_bf16_prepared_bytes, k.gemm_bf16_prepare, k.gemm_bf16,
                            static_cast<const uint16_t*>(w.data), N, K, x, M, y);
            return;
        case WeightType::mxfp4:
            matmul_prepared(k.gemm_mxfp4_prepared_bytes, k.gemm_mxfp4_prepare, k.gemm_mxfp4,
                            static_cast<const uint8_t*>(w.data), N, K, x, M, y);
            return;
    }
}

}  // namespace mlspecqd
