#include "kernels/stream_read.h"

#include <atomic>

#include "cpu.h"
#include "threads.h"

namespace mlspecqd {

uint64_t stream_read(const uint64_t* words, int64_t count) {
    const KernelTable& k = kernels();
    std::atomic<uint64_t> sum{0};
    constexpr int64_t kWordsPerChunk = 4096;  // 32 KiB: whole pages per thread
    parallel_for(count, kWordsPerChunk, [&](int64_t begin, int64_t end) {
        sum.fetch_add(k.stream_read(words + begin, end - begin), std::memory_order_relaxed);
    });
    return sum.load();
}

}  // namespace mlspecqd
