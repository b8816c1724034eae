// A decoder-only transformer (llama, qwen2, qwen3, gemma3; with experts qwen2moe, qwen3moe, Mixtral) with
// key/value caches for one or more sequences. One forward call runs rows from any of those sequences
// through every layer: each sequence appends to its own cache slot at its own positions, and every
// weight is read once for all of them.
// Activations are float32 throughout; the matrix products take whatever weight type each Linear holds
// (BF16 or MXFP4). Batch invariant: the logits of a position are the same bits whether it is computed
// alone, in a verification batch, inside a prompt, or beside other sequences' rows.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cache_aligned.h"
#include "kernels/linear.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/moe.h"

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
    virtual const float* f32_matrix(const std::string& name, int64_t rows, int64_t cols) const = 0;
    // `count` matrices of rows x cols, BF16 or MXFP4 (a GGUF *_exps tensor).
    virtual ExpertStack experts(const std::string& name, int64_t count, int64_t rows, int64_t cols) const = 0;
};

struct LayerWeights {
    const float* attn_norm = nullptr;
    Linear q, k, v, o;
    const float *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr;  // qkv_bias only
    const float *q_norm = nullptr, *k_norm = nullptr;                      // qk_norm only
    const float* post_attention_norm = nullptr;                            // post_norms only
    const float* ffn_norm = nullptr;
    Linear gate, up, down;  // dense models
    MoeWeights moe;         // config.n_experts > 0
    const float* post_ffw_norm = nullptr;  // post_norms only
};

// One sequence's part of a forward: T tokens appended to cache slot `slot` at positions start ..
// start + T - 1 (the slot's cache is truncated to `start` first).
struct Segment {
    int64_t slot = 0;
    const int64_t* tokens = nullptr;
    int64_t T = 0;
    int64_t start = 0;
    bool all_logits = false;  // logits of every row, or of the last one only

    int64_t logit_rows() const { return all_logits ? T : 1; }
};

class Decoder {
public:
    // Most sequences one decoder holds caches for; each slot's cache is allocated when reserved.
    static constexpr int64_t kMaxSlots = 256;

    // Keeps pointers into `tensors`' arrays, which must outlive the decoder. Starts with one cache slot.
    Decoder(const ModelConfig& config, const TensorSource& tensors, int64_t max_context);

    const ModelConfig& config() const { return config_; }
    int64_t max_context() const { return max_context_; }
    int64_t slot_count() const;
    // Makes slots 0 .. n - 1 exist (each with an empty cache of max_context positions); 1 <= n <= kMaxSlots.
    void reserve_slots(int64_t n);
    int64_t n_past(int64_t slot = 0) const;
    void truncate(int64_t n, int64_t slot = 0);

    // Throws std::invalid_argument unless forward(segments, ...) would run: at least one segment, each
    // in an existing slot that no other segment names, 1 <= T, 0 <= start <= the slot's n_past,
    // start + T <= max_context, every token id in the vocabulary.
    void check_forward(const std::vector<Segment>& segments) const;
    // Runs every segment's tokens and writes their logits rows (Segment::logit_rows each, vocab wide) to
    // `logits`, one segment after another in the order given.
    void forward(const std::vector<Segment>& segments, float* logits);

    // With experts: rows routed to each expert since construction or the last reset, n_layers x
    // n_experts counters, layer-major (a row counts once for each of its n_experts_used experts).
    std::vector<int64_t> expert_rows() const;
    void reset_expert_rows();

    // The kernels every weight's products run on, by row class (kernels/linear.h). The default plan runs
    // the active table with BF16 activations at every row count.
    void set_kernel_plan(const KernelPlan& plan);

private:
    void check_forward_locked(const std::vector<Segment>& segments) const;
    void attention_block(const LayerWeights& w, int64_t layer, const std::vector<Segment>& segments, int64_t rows);
    void mlp_block(const LayerWeights& w, int64_t layer, int64_t rows);

    ModelConfig config_;
    int64_t max_context_;
    const uint16_t* token_embedding_ = nullptr;
    std::vector<LayerWeights> layers_;
    const float* output_norm_ = nullptr;
    Linear output_;
    KernelPlan kernel_plan_;  // every Linear above points at it
    Rope rope_;
    std::optional<Rope> sliding_rope_;  // the local layers' own, when the model has sliding-window layers
    // One per sequence slot. Every layer caches every position, local layers included: their attention
    // reads only the window, and keeping the whole cache lets truncation (speculative rollback) stay O(1).
    std::vector<std::unique_ptr<KvCache>> caches_;
    mutable std::mutex mutex_;  // one forward, truncate or reserve at a time (forward runs without the GIL)

    // Work buffers, grown to the largest row count seen and then reused.
    CacheAlignedVector<float> x_, normed_, q_, k_, v_, attention_, gate_, up_;
    std::vector<int64_t> tokens_, positions_;
    std::vector<AttentionProblem> problems_;
    std::vector<float> rope_cos_, rope_sin_, sliding_cos_, sliding_sin_;
    MoeBlock moe_;  // with experts: the MoE layers' own work buffers
    std::vector<int64_t> expert_rows_;  // with experts: see expert_rows()
};

}  // namespace mlspecqd
