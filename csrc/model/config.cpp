#include "model/config.h"

#include <stdexcept>

namespace mlspecqd {

namespace {

// Bounds that no real checkpoint comes near; they keep a lying header from asking for absurd buffers.
constexpr int64_t kMaxDimension = int64_t{1} << 20;
constexpr int64_t kMaxVocabulary = int64_t{1} << 24;
constexpr int64_t kMaxContext = int64_t{1} << 31;
constexpr int64_t kMaxExperts = 4096;

void require_in_range(const char* field, int64_t value, int64_t low, int64_t high) {
    if (value < low || value > high)
        throw std::invalid_argument("model config: " + std::string(field) + " = " + std::to_string(value) +
                                    " is outside [" + std::to_string(low) + ", " + std::to_string(high) + "]");
}

}  // namespace

void ModelConfig::validate() const {
    require_in_range("n_layers", n_layers, 1, 4096);
    require_in_range("d_model", d_model, 1, kMaxDimension);
    require_in_range("n_heads", n_heads, 1, 4096);
    require_in_range("n_kv_heads", n_kv_heads, 1, n_heads);
    if (n_heads % n_kv_heads != 0)
        throw std::invalid_argument("model config: n_heads = " + std::to_string(n_heads) +
                                    " is not a multiple of n_kv_heads = " + std::to_string(n_kv_heads));
    require_in_range("head_dim", head_dim, 1, 4096);
    require_in_range("n_heads * head_dim", n_heads * head_dim, 1, kMaxDimension);
    require_in_range("d_ff", d_ff, n_experts > 0 ? 0 : 1, kMaxDimension);
    require_in_range("vocab_size", vocab_size, 1, kMaxVocabulary);
    require_in_range("rope_dim", rope_dim, 0, head_dim);
    if (rope_dim % 2 != 0) throw std::invalid_argument("model config: rope_dim = " + std::to_string(rope_dim) + " is odd");
    if (!(rope_base > 0.0)) throw std::invalid_argument("model config: rope_base must be positive");
    if (!(norm_eps >= 0.0)) throw std::invalid_argument("model config: norm_eps must not be negative");
    if (!(attention_scale >= 0.0)) throw std::invalid_argument("model config: attention_scale must not be negative");
    if (rope_scaling.kind == RopeScalingKind::linear && !(rope_scaling.factor > 0.0))
        throw std::invalid_argument("model config: rope_scaling.factor must be positive");
    if (!(embedding_scale > 0.0 && embedding_scale < 1e30))
        throw std::invalid_argument("model config: embedding_scale must be positive and finite");
    require_in_range("n_experts", n_experts, 0, kMaxExperts);
    if (n_experts > 0) {
        require_in_range("n_experts_used", n_experts_used, 1, n_experts);
        require_in_range("expert_d_ff", expert_d_ff, 1, kMaxDimension);
        require_in_range("shared_expert_d_ff", shared_expert_d_ff, 0, kMaxDimension);
        if (!(expert_weights_scale > 0.0 && expert_weights_scale < 1e30))
            throw std::invalid_argument("model config: expert_weights_scale must be positive and finite");
    }
    require_in_range("sliding_window", sliding_window, 0, kMaxContext);
    if (sliding_window > 0) {
        require_in_range("sliding_window_pattern", sliding_window_pattern, 1, 4096);
        if (!(rope_base_sliding > 0.0))
            throw std::invalid_argument("model config: rope_base_sliding must be positive when sliding_window is set");
    }
}

RopeStyle rope_style_from_name(const std::string& name) {
    if (name == "interleaved") return RopeStyle::interleaved;
    if (name == "neox") return RopeStyle::neox;
    throw std::invalid_argument("model config: rope_style '" + name + "' is not 'interleaved' or 'neox'");
}

RopeScalingKind rope_scaling_kind_from_name(const std::string& name) {
    if (name == "none") return RopeScalingKind::none;
    if (name == "linear") return RopeScalingKind::linear;
    if (name == "llama3") return RopeScalingKind::llama3;
    throw std::invalid_argument("model config: rope scaling '" + name +
                                "' is not supported (supported: none, linear, llama3)");
}

GateActivation gate_activation_from_name(const std::string& name) {
    if (name == "silu") return GateActivation::silu;
    if (name == "gelu_tanh") return GateActivation::gelu_tanh;
    throw std::invalid_argument("model config: activation '" + name +
                                "' is not supported (supported: silu, gelu_tanh)");
}

}  // namespace mlspecqd
