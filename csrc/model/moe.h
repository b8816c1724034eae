// The Mixture-of-Experts feed-forward block (qwen2moe, qwen3moe, Mixtral), as llama.cpp runs it: router
// logits in float32, softmax over all experts, the n_experts_used largest (ties to the lower index),
// their weights rescaled to sum to 1 where the model says so and multiplied by its expert_weights_scale,
// and the weighted sum of those experts' gated MLPs, plus qwen2moe's shared expert scaled by a sigmoid gate.
//
// Batch invariance: a row's output is the same bits whatever rows share the call. Routing is per row in
// a fixed order; an expert multiplies the rows routed to it as one batch, and the GEMM kernels give each
// row the same bits in any batch; a row sums its experts' outputs in its own rank order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cache_aligned.h"
#include "kernels/linear.h"
#include "model/config.h"

namespace mlspecqd {

class TensorSource;  // model/decoder.h

// `count` weight matrices of one shape, each on its own BF16 or MXFP4: a GGUF *_exps tensor (one type,
// one after another), or experts in mixed precision (hot ones BF16, the rest MXFP4), wherever each lives.
struct ExpertStack {
    int64_t out_features = 0;     // N
    int64_t in_features = 0;      // K
    std::vector<Linear> experts;  // row-major: BF16 N x K bit patterns, or MXFP4 N x (K / 32 * 17) bytes

    int64_t count() const { return static_cast<int64_t>(experts.size()); }
    const Linear& expert(int64_t e) const { return experts[static_cast<size_t>(e)]; }
};

// `count` matrices of `type`, N x K each, stored one after another from `data` (a GGUF *_exps tensor).
ExpertStack contiguous_experts(WeightType type, int64_t count, int64_t N, int64_t K, const void* data);

struct MoeWeights {
    const float* router = nullptr;  // n_experts x d_model, float32 (ffn_gate_inp)
    ExpertStack gate, up, down;     // n_experts x (expert_d_ff x d_model, expert_d_ff x d_model, d_model x expert_d_ff)
    // shared_expert_d_ff > 0 only: the shared expert, and the vector its gate sigmoid(h . v) reads.
    const float* shared_gate_input = nullptr;
    Linear shared_gate, shared_up, shared_down;
};

// Layer `layer`'s router and experts; std::invalid_argument naming a tensor that is missing or misshaped
// (an expert count that differs from the config's is a misshape), or a gate and an up expert of one
// number in two types (they multiply one prepared input).
MoeWeights load_moe_weights(const ModelConfig& c, const TensorSource& tensors, int64_t layer);

// x . y summed in 16 interleaved float32 partial sums (element i into sum i % 16), which then add
// pairwise: one fixed order, the same on every CPU and in every batch.
float dot_f32(const float* x, const float* y, int64_t n);

// The routing of T rows h (T x d_model): row t's experts experts[t * n_used + j] for j < n_used, from
// the highest router logit down (ties to the lower expert index), and their weights: softmax
// probabilities over all experts, rescaled to sum to 1 when c.expert_weights_normalized, then multiplied
// by c.expert_weights_scale (llama.cpp's {arch}.expert_weights_scale). `logits`
// receives the T x n_experts router logits. Renumbering the experts together with the router's rows
// changes the chosen experts' numbers only, never a weight's bits.
void route(const ModelConfig& c, const float* router, const float* h, int64_t T, float* logits, int32_t* experts,
           float* weights);

// Runs the block; holds the work buffers, grown to the largest call and reused.
class MoeBlock {
public:
    // The block's output for the T rows h (T x d_model, the normed residual stream): T x d_model floats,
    // valid until the next call. Adds to expert_rows[e] the rows routed to expert e (n_experts counters).
    const float* forward(const ModelConfig& c, const MoeWeights& w, const float* h, int64_t T, int64_t* expert_rows);

private:
    void group_rows_by_expert(const ModelConfig& c, const float* h, int64_t T);
    void run_experts(const ModelConfig& c, const MoeWeights& w);
    void add_shared_expert(const ModelConfig& c, const MoeWeights& w, const float* h, int64_t T);

    std::vector<float> logits_, weights_;
    std::vector<int32_t> experts_;
    std::vector<int64_t> first_row_;      // expert e's rows in the grouped order: [first_row_[e], first_row_[e + 1])
    std::vector<int64_t> grouped_row_;    // where (row t, rank j) sits in the grouped order
    std::vector<int32_t> active_;         // experts with at least one row, ascending
    std::vector<int64_t> input_offset_, hidden_offset_;  // bytes into prepared_ of each active expert's inputs
    CacheAlignedVector<float> inputs_, hidden_, up_, outputs_, out_, shared_gate_, shared_up_, shared_out_;
    CacheAlignedVector<std::byte> prepared_inputs_, prepared_hidden_;
};

}  // namespace mlspecqd
