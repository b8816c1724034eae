// Hyper-parameters of a decoder-only transformer (llama, qwen2, qwen3, gemma3, and the Mixture-of-Experts
// qwen2moe, qwen3moe and Mixtral), as the GGUF states them.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/linear.h"

namespace mlspecqd {

enum class RopeStyle {
    interleaved,  // llama.cpp's NORM: rotates pairs (2i, 2i+1)
    neox,         // rotates pairs (i, i + rope_dim/2)
};

enum class RopeScalingKind {
    none,
    linear,  // every frequency divided by `factor`
    llama3,  // frequency i divided by rope_freqs.weight[i] (the GGUF stores llama-3's factors as a tensor)
};

struct RopeScaling {
    RopeScalingKind kind = RopeScalingKind::none;
    double factor = 1.0;  // linear only
};

struct ModelConfig {
    int64_t n_layers = 0;
    int64_t d_model = 0;
    int64_t n_heads = 0;
    int64_t n_kv_heads = 0;
    int64_t head_dim = 0;
    int64_t d_ff = 0;
    int64_t vocab_size = 0;
    double rope_base = 10000.0;
    int64_t rope_dim = 0;  // leading dimensions of each head that RoPE rotates (even, <= head_dim)
    RopeStyle rope_style = RopeStyle::interleaved;
    RopeScaling rope_scaling;
    double norm_eps = 1e-6;
    double attention_scale = 0.0;  // multiplies q . k; 0 means 1 / sqrt(head_dim)
    bool tied_output = false;  // LM head = token embedding matrix
    bool qkv_bias = false;     // qwen2
    bool qk_norm = false;      // qwen3, gemma3: RMSNorm of each q and k head before RoPE
    GateActivation activation = GateActivation::silu;  // of the gated MLP (gemma3: GELU, tanh form)
    double embedding_scale = 1.0;  // multiplies every token embedding (gemma3: sqrt(d_model)), in float32
    bool post_norms = false;       // gemma3: RMSNorm of the attention and MLP outputs before the residual adds
    // Sliding-window (local) attention, gemma3: layer i attends to the last sliding_window positions
    // (itself included) unless (i + 1) % sliding_window_pattern == 0; local layers rotate with
    // rope_base_sliding and no rope scaling. sliding_window = 0: every layer is global.
    int64_t sliding_window = 0;
    int64_t sliding_window_pattern = 0;
    double rope_base_sliding = 0.0;
    // Mixture of experts: n_experts > 0 puts in every layer's place of the MLP n_experts gated MLPs of
    // width expert_d_ff, of which each token runs the n_experts_used its router ranks highest (d_ff is
    // then unused), plus, with shared_expert_d_ff > 0, one shared MLP every token runs (qwen2moe).
    int64_t n_experts = 0;
    int64_t n_experts_used = 0;
    int64_t expert_d_ff = 0;
    int64_t shared_expert_d_ff = 0;
    bool expert_weights_normalized = false;  // the chosen experts' routing weights rescaled to sum to 1
    double expert_weights_scale = 1.0;       // multiplies every routing weight (after any renormalization)

    bool is_sliding(int64_t layer) const {
        return sliding_window > 0 && (layer + 1) % sliding_window_pattern != 0;
    }

    // Throws std::invalid_argument naming the first field that is out of range.
    void validate() const;
};

RopeStyle rope_style_from_name(const std::string& name);              // throws std::invalid_argument
RopeScalingKind rope_scaling_kind_from_name(const std::string& name);  // throws std::invalid_argument
GateActivation gate_activation_from_name(const std::string& name);     // throws std::invalid_argument

}  // namespace mlspecqd
