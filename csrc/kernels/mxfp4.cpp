#include "kernels/mxfp4.h"

#include <atomic>

#include "cpu.h"
#include "threads.h"

namespace mlspecqd {

namespace {

// Each thread casts its slice; the smallest bad index any thread saw wins, so the error names the
// first NaN or infinity whatever the thread count.
template <class Value, class Cast>
int64_t cast_threaded(const Value* values, int64_t n_blocks, uint8_t* out, Cast cast) {
    constexpr int64_t kBlocksPerChunk = 1024;
    std::atomic<int64_t> first_bad{-1};
    parallel_for(n_blocks, kBlocksPerChunk, [&](int64_t begin, int64_t end) {
        const int64_t bad = cast(values + begin * kMxfp4BlockValues, end - begin, out + begin * kMxfp4BlockBytes);
        if (bad < 0) return;
        const int64_t index = begin * kMxfp4BlockValues + bad;
        int64_t seen = first_bad.load();
        while ((seen < 0 || index < seen) && !first_bad.compare_exchange_weak(seen, index)) {
        }
    });
    return first_bad.load();
}

}  // namespace

int64_t cast_to_mxfp4(const float* values, int64_t n_blocks, uint8_t* out) {
    return cast_threaded(values, n_blocks, out, kernels().cast_mxfp4_f32);
}

int64_t cast_to_mxfp4(const uint16_t* bf16_values, int64_t n_blocks, uint8_t* out) {
    return cast_threaded(bf16_values, n_blocks, out, kernels().cast_mxfp4_bf16);
}

}  // namespace mlspecqd
