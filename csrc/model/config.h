// Hyper-parameters of a dense decoder-only transformer (llama, qwen2, qwen3), as the GGUF states them.
#pragma once
#include <cstdint>
#include <string>

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
    bool qk_norm = false;      // qwen3: RMSNorm of each q and k head before RoPE

    // Throws std::invalid_argument naming the first field that is out of range.
    void validate() const;
};

RopeStyle rope_style_from_name(const std::string& name);              // throws std::invalid_argument
RopeScalingKind rope_scaling_kind_from_name(const std::string& name);  // throws std::invalid_argument

}  // namespace mlspecqd
