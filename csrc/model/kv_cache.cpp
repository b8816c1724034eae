#include "model/kv_cache.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace mlspecqd {

KvCache::KvCache(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t capacity)
    : n_kv_heads_(n_kv_heads), head_dim_(head_dim), capacity_(capacity) {
    if (capacity < 1) throw std::invalid_argument("max_context must be at least 1, got " + std::to_string(capacity));
    constexpr int64_t kMaxBytesPerCache = int64_t{1} << 40;  // refuses sizes no machine has, before allocating
    const double bytes = double(n_layers) * double(n_kv_heads) * double(head_dim) * double(capacity + kKeyTile) * sizeof(float);
    if (bytes > double(kMaxBytesPerCache))
        throw std::invalid_argument("max_context = " + std::to_string(capacity) + " needs a key/value cache of " +
                                    std::to_string(int64_t(bytes / 1e9)) + " GB per tensor");
    k_ = cache_aligned_floats(n_layers * n_kv_heads * key_head_stride());
    v_ = cache_aligned_floats(n_layers * n_kv_heads * value_head_stride());
}

void KvCache::truncate(int64_t n) {
    if (n < 0 || n > n_past_)
        throw std::invalid_argument("truncate(" + std::to_string(n) + "): the cache holds " + std::to_string(n_past_) +
                                    " positions, so n must be in [0, " + std::to_string(n_past_) + "]");
    n_past_ = n;
}

void KvCache::write(int64_t layer, const float* k, const float* v, int64_t T) {
    float* k_layer = k_.get() + layer * n_kv_heads_ * key_head_stride();
    float* v_layer = v_.get() + layer * n_kv_heads_ * value_head_stride();
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < n_kv_heads_; ++h) {
            const float* key = k + (t * n_kv_heads_ + h) * head_dim_;
            float* key_slot = k_layer + h * key_head_stride() + key_offset(n_past_ + t, head_dim_);
            for (int64_t d = 0; d < head_dim_; ++d) key_slot[d * kKeyTile] = key[d];
            std::memcpy(v_layer + h * value_head_stride() + (n_past_ + t) * head_dim_,
                        v + (t * n_kv_heads_ + h) * head_dim_, size_t(head_dim_) * sizeof(float));
        }
}

void KvCache::commit(int64_t T) { n_past_ += T; }

}  // namespace mlspecqd
