// The streaming-read baseline: read a buffer once on every thread of the pool.
#pragma once
#include <cstdint>

namespace mlspecqd {

// Wrapping sum of words[0 .. count): a checksum, so the reads cannot be optimized away.
uint64_t stream_read(const uint64_t* words, int64_t count);

}  // namespace mlspecqd
