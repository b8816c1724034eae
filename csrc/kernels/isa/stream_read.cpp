// The streaming-read baseline: the fastest this machine reads memory once, with the widest loads the
// instruction set has, so GEMM bandwidth can be reported as a share of it.
#include "kernels/isa/isa.h"

namespace mlspecqd {
namespace MLSPECQD_ISA {

namespace {

// Software prefetch this far ahead, as the GEMM kernels do, so the baseline reads memory at least as
// fast as they can: a slower baseline would flatter them.
constexpr int64_t kPrefetchWords = 2048;  // 16 KiB

}  // namespace

uint64_t stream_read(const uint64_t* words, int64_t count) {
    int64_t i = 0;
    uint64_t sum = 0;
#if defined(__AVX2__)
    const auto prefetch = [&](int64_t at) {
        if (at + kPrefetchWords < count) _mm_prefetch(reinterpret_cast<const char*>(words + at + kPrefetchWords), _MM_HINT_T0);
    };
#endif
#if defined(__AVX512F__)
    // Four independent sums so the adds never wait on each other; only the loads limit the speed.
    __m512i sums[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                       _mm512_setzero_si512()};
    for (; i + 32 <= count; i += 32)
        for (int j = 0; j < 4; ++j) {
            prefetch(i + 8 * j);
            sums[j] = _mm512_add_epi64(sums[j], _mm512_loadu_si512(words + i + 8 * j));
        }
    const __m512i total = _mm512_add_epi64(_mm512_add_epi64(sums[0], sums[1]), _mm512_add_epi64(sums[2], sums[3]));
    // The lanes are added as uint64_t, which wraps: _mm512_reduce_add_epi64 adds them as signed, where
    // overflow is undefined.
    alignas(64) uint64_t lanes[8];
    _mm512_store_si512(lanes, total);
    for (const uint64_t lane : lanes) sum += lane;
#elif defined(__AVX2__)
    __m256i sums[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                       _mm256_setzero_si256()};
    for (; i + 16 <= count; i += 16) {
        prefetch(i);
        prefetch(i + 8);
        for (int j = 0; j < 4; ++j)
            sums[j] = _mm256_add_epi64(
                sums[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + i + 4 * j)));
    }
    const __m256i total = _mm256_add_epi64(_mm256_add_epi64(sums[0], sums[1]), _mm256_add_epi64(sums[2], sums[3]));
    alignas(32) uint64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), total);
    sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
#endif
    for (; i < count; ++i) sum += words[i];
    return sum;
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
