// Keys and values of every layer for positions 0 .. n_past - 1, float32, allocated once for max_context
// positions. Per layer and key/value head, values are capacity x head_dim (position-major) and keys are
// in the tiles of kKeyTile positions that the attention kernels read (csrc/kernels/kernels.h).
#pragma once
#include <cstdint>

#include "cache_aligned.h"
#include "kernels/kernels.h"

namespace mlspecqd {

class KvCache {
public:
    KvCache(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t capacity);

    int64_t capacity() const { return capacity_; }
    int64_t n_past() const { return n_past_; }
    // Forgets positions n .. n_past - 1 (O(1): later appends overwrite them). Throws if n > n_past.
    void truncate(int64_t n);

    // Writes the keys and values of positions n_past .. n_past + T - 1 of one layer; k and v are
    // T x (n_kv_heads * head_dim). The positions count as cached once commit(T) is called.
    void write(int64_t layer, const float* k, const float* v, int64_t T);
    void commit(int64_t T);

    const float* keys(int64_t layer) const { return k_.get() + layer * n_kv_heads_ * key_head_stride(); }
    const float* values(int64_t layer) const { return v_.get() + layer * n_kv_heads_ * value_head_stride(); }

private:
    int64_t key_head_stride() const { return key_tiles(capacity_) * kKeyTile * head_dim_; }
    int64_t value_head_stride() const { return capacity_ * head_dim_; }

    int64_t n_kv_heads_, head_dim_, capacity_;
    int64_t n_past_ = 0;
    // On a cache line, so that each 64-byte load of a key tile row or a value row touches one line.
    CacheAlignedFloats k_, v_;
};

}  // namespace mlspecqd
