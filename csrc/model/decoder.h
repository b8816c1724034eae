// A dense decoder-only transformer (llama, qwen2, qwen3, gemma3) with its key/value cache. One forward
// call runs T tokens through every layer. Activations are float32 throughout; the matrix products take
// whatever weight type each Linear holds (BF16 or MXFP4). Batch invariant: the logits of a position are
// the same bits whether it is computed alone, in a verification batch, or inside a prompt.
#pragma once
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cache_aligned.h"
#include "kernels/linear.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/layers.h"

namespace mlspecqd {

// Where the decoder finds its weights, by GGUF tensor name. csrc/bindings/model.cpp implements it over
// NumPy arrays; every accessor throws std::invalid_argument naming the tensor when it is missing or
// mis-shaped.
class TensorSource {
public:
    virtual ~TensorSource() = default;
    virtual Linear linear(const std::string& name, int64_t rows, int64_t cols) const = 0;
    virtual const uint16_t* bf16_matrix(const std::string& name, int64_t rows, int64_t cols) const = 0;
    virtual const float* vector(const std::string& name, int64_t n) const = 0;
};

struct LayerWeights {
    const float* attn_norm = nullptr;
    Linear q, k, v, o;
    const float *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr;  // qkv_bias only
    const float *q_norm = nullptr, *k_norm = nullptr;                      // qk_norm only
    const float* post_attention_norm = nullptr;                            // post_norms only
    const float* ffn_norm = nullptr;
    Linear gate, up, down;
    const float* post_ffw_norm = nullptr;  // post_norms only
};

class Decoder {
public:
    // Keeps pointers into `tensors`' arrays, which must outlive the decoder.
    Decoder(const ModelConfig& config, const TensorSource& tensors, int64_t max_context);

    const ModelConfig& config() const { return config_; }
    int64_t max_context() const { return cache_.capacity(); }
    int64_t n_past() const;
    void truncate(int64_t n);

    // Throws std::invalid_argument unless forward(tokens, T, start, ...) would run: 1 <= T,
    // 0 <= start <= n_past, start + T <= max_context, every token id in the vocabulary.
    void check_forward(const int64_t* tokens, int64_t T, int64_t start) const;
    // Truncates the cache to `start`, appends the T tokens and writes the logits of every position
    // (all_logits, T x vocab) or of the last one (1 x vocab).
    void forward(const int64_t* tokens, int64_t T, int64_t start, bool all_logits, float* logits);

private:
    void check_forward_locked(const int64_t* tokens, int64_t T, int64_t start) const;
    void attention_block(const LayerWeights& w, int64_t layer, int64_t T, int64_t start);
    void mlp_block(const LayerWeights& w, int64_t T);

    ModelConfig config_;
    const uint16_t* token_embedding_ = nullptr;
    std::vector<LayerWeights> layers_;
    const float* output_norm_ = nullptr;
    Linear output_;
    Rope rope_;
    std::optional<Rope> sliding_rope_;  // the local layers' own, when the model has sliding-window layers
    // Every layer caches every position, local layers included: their attention reads only the window,
    // and keeping the whole cache lets truncation (speculative rollback) stay O(1) for every layer.
    KvCache cache_;
    mutable std::mutex mutex_;  // one forward or truncate at a time (forward runs without the GIL)

    // Work buffers, grown to the largest T seen and then reused.
    CacheAlignedVector<float> x_, normed_, q_, k_, v_, attention_, gate_, up_;
    std::vector<float> rope_cos_, rope_sin_, sliding_cos_, sliding_sin_;
};

}  // namespace mlspecqd
