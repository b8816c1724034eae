#include "model/decoder.h"

#include <cmath>
#include <stdexcept>

#include "cpu.h"
#include "threads.h"

namespace mlspecqd {

namespace {

std::string block(int64_t layer, const char* rest) { return "blk." + std::to_string(layer) + "." + rest; }

LayerWeights load_layer(const ModelConfig& c, const TensorSource& tensors, int64_t i) {
    const int64_t q_width = c.n_heads * c.head_dim, kv_width = c.n_kv_heads * c.head_dim;
    LayerWeights w;
    w.attn_norm = tensors.vector(block(i, "attn_norm.weight"), c.d_model);
    w.q = tensors.linear(block(i, "attn_q.weight"), q_width, c.d_model);
    w.k = tensors.linear(block(i, "attn_k.weight"), kv_width, c.d_model);
    w.v = tensors.linear(block(i, "attn_v.weight"), kv_width, c.d_model);
    w.o = tensors.linear(block(i, "attn_output.weight"), c.d_model, q_width);
    if (c.qkv_bias) {
        w.q_bias = tensors.vector(block(i, "attn_q.bias"), q_width);
        w.k_bias = tensors.vector(block(i, "attn_k.bias"), kv_width);
        w.v_bias = tensors.vector(block(i, "attn_v.bias"), kv_width);
    }
    if (c.qk_norm) {
        w.q_norm = tensors.vector(block(i, "attn_q_norm.weight"), c.head_dim);
        w.k_norm = tensors.vector(block(i, "attn_k_norm.weight"), c.head_dim);
    }
    w.ffn_norm = tensors.vector(block(i, "ffn_norm.weight"), c.d_model);
    w.gate = tensors.linear(block(i, "ffn_gate.weight"), c.d_ff, c.d_model);
    w.up = tensors.linear(block(i, "ffn_up.weight"), c.d_ff, c.d_model);
    w.down = tensors.linear(block(i, "ffn_down.weight"), c.d_model, c.d_ff);
    if (c.post_norms) {
        w.post_attention_norm = tensors.vector(block(i, "post_attention_norm.weight"), c.d_model);
        w.post_ffw_norm = tensors.vector(block(i, "post_ffw_norm.weight"), c.d_model);
    }
    return w;
}

const ModelConfig& validated(const ModelConfig& config) {
    config.validate();
    return config;
}

const float* rope_freq_factors(const ModelConfig& c, const TensorSource& tensors) {
    if (c.rope_scaling.kind != RopeScalingKind::llama3) return nullptr;
    return tensors.vector("rope_freqs.weight", c.rope_dim / 2);
}

std::optional<Rope> sliding_rope(const ModelConfig& c) {
    if (c.sliding_window == 0) return std::nullopt;
    return Rope(c.rope_style, c.head_dim, c.rope_dim, c.rope_base_sliding, RopeScaling{}, nullptr);
}

void add_rows(float* x, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace

Decoder::Decoder(const ModelConfig& config, const TensorSource& tensors, int64_t max_context)
    : config_(validated(config)),
      rope_(config_.rope_style, config_.head_dim, config_.rope_dim, config_.rope_base, config_.rope_scaling,
            rope_freq_factors(config_, tensors)),
      sliding_rope_(sliding_rope(config_)),
      cache_(config_.n_layers, config_.n_kv_heads, config_.head_dim, max_context) {
    const ModelConfig& c = config_;
    token_embedding_ = tensors.bf16_matrix("token_embd.weight", c.vocab_size, c.d_model);
    for (int64_t i = 0; i < c.n_layers; ++i) layers_.push_back(load_layer(c, tensors, i));
    output_norm_ = tensors.vector("output_norm.weight", c.d_model);
    output_ = tensors.linear(c.tied_output ? "token_embd.weight" : "output.weight", c.vocab_size, c.d_model);
}

int64_t Decoder::n_past() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return cache_.n_past();
}

void Decoder::truncate(int64_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    cache_.truncate(n);
}

void Decoder::check_forward(const int64_t* tokens, int64_t T, int64_t start) const {
    std::lock_guard<std::mutex> lock(mutex_);
    check_forward_locked(tokens, T, start);
}

void Decoder::check_forward_locked(const int64_t* tokens, int64_t T, int64_t start) const {
    if (T < 1) throw std::invalid_argument("forward: tokens is empty (T = 0); pass at least one token");
    if (start < 0 || start > cache_.n_past())
        throw std::invalid_argument("forward: start = " + std::to_string(start) + " must be in [0, n_past = " +
                                    std::to_string(cache_.n_past()) + "]");
    if (start + T > cache_.capacity())
        throw std::invalid_argument("forward: start + T = " + std::to_string(start) + " + " + std::to_string(T) +
                                    " exceeds max_context = " + std::to_string(cache_.capacity()));
    for (int64_t t = 0; t < T; ++t)
        if (tokens[t] < 0 || tokens[t] >= config_.vocab_size)
            throw std::invalid_argument("forward: token id " + std::to_string(tokens[t]) + " at index " +
                                        std::to_string(t) + " is outside the vocabulary [0, " +
                                        std::to_string(config_.vocab_size) + ")");
}

void Decoder::forward(const int64_t* tokens, int64_t T, int64_t start, bool all_logits, float* logits) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_forward_locked(tokens, T, start);
    cache_.truncate(start);

    const ModelConfig& c = config_;
    const int64_t d = c.d_model;
    x_.resize(T * d);
    normed_.resize(T * d);
    q_.resize(T * c.n_heads * c.head_dim);
    k_.resize(T * c.n_kv_heads * c.head_dim);
    v_.resize(T * c.n_kv_heads * c.head_dim);
    attention_.resize(T * c.n_heads * c.head_dim);
    gate_.resize(T * c.d_ff);
    up_.resize(T * c.d_ff);

    embed_tokens(token_embedding_, d, tokens, T, float(c.embedding_scale), x_.data());
    rope_.tables(start, T, rope_cos_, rope_sin_);
    if (sliding_rope_) sliding_rope_->tables(start, T, sliding_cos_, sliding_sin_);
    for (int64_t layer = 0; layer < c.n_layers; ++layer) {
        attention_block(layers_[layer], layer, T, start);
        mlp_block(layers_[layer], T);
    }
    cache_.commit(T);

    const int64_t rows = all_logits ? T : 1;
    rms_norm(x_.data() + (T - rows) * d, output_norm_, rows, d, c.norm_eps, normed_.data());
    matmul(output_, normed_.data(), rows, logits);
}

// x += W_o attention(rope(W_q h), rope(W_k h), W_v h) with h = rms_norm(x), the product normed again
// first with post_norms; appends this layer's keys and values for the T new positions to the cache. A
// sliding-window layer rotates with its own base and attends within the window.
void Decoder::attention_block(const LayerWeights& w, int64_t layer, int64_t T, int64_t start) {
    const ModelConfig& c = config_;
    const int64_t d = c.d_model, q_width = c.n_heads * c.head_dim, kv_width = c.n_kv_heads * c.head_dim;
    rms_norm(x_.data(), w.attn_norm, T, d, c.norm_eps, normed_.data());
    matmul_shared_input({{&w.q, q_.data()}, {&w.k, k_.data()}, {&w.v, v_.data()}}, normed_.data(), T);
    if (c.qkv_bias) {
        add_bias(q_.data(), w.q_bias, T, q_width);
        add_bias(k_.data(), w.k_bias, T, kv_width);
        add_bias(v_.data(), w.v_bias, T, kv_width);
    }
    if (c.qk_norm) {
        rms_norm(q_.data(), w.q_norm, T * c.n_heads, c.head_dim, c.norm_eps, q_.data());
        rms_norm(k_.data(), w.k_norm, T * c.n_kv_heads, c.head_dim, c.norm_eps, k_.data());
    }
    const bool sliding = c.is_sliding(layer);
    const Rope& rope = sliding ? *sliding_rope_ : rope_;
    const std::vector<float>& cos = sliding ? sliding_cos_ : rope_cos_;
    const std::vector<float>& sin = sliding ? sliding_sin_ : rope_sin_;
    rope.apply(q_.data(), T, c.n_heads, cos, sin);
    rope.apply(k_.data(), T, c.n_kv_heads, cos, sin);
    cache_.write(layer, k_.data(), v_.data(), T);

    AttentionProblem problem;
    problem.q = q_.data();
    problem.k_cache = cache_.keys(layer);
    problem.v_cache = cache_.values(layer);
    problem.out = attention_.data();
    problem.T = T;
    problem.n_heads = c.n_heads;
    problem.n_kv_heads = c.n_kv_heads;
    problem.head_dim = c.head_dim;
    problem.capacity = cache_.capacity();
    problem.first_position = start;
    problem.scale = float(c.attention_scale > 0.0 ? c.attention_scale : 1.0 / std::sqrt(double(c.head_dim)));
    problem.window = sliding ? c.sliding_window : 0;
    const KernelTable& kernel = kernels();
    // Items are ordered head-major, so a thread's slice is whole key/value heads when it can be, and
    // the slices cost about the same (later rows have more keys).
    parallel_for(c.n_kv_heads * T, 1, [&](int64_t begin, int64_t end) {
        thread_local std::vector<float> scores;  // each pool thread's, grown once to the largest need
        scores.resize(std::max<size_t>(scores.size(), attention_scores_floats(problem)));
        kernel.causal_attention(problem, begin, end, scores.data());
    });

    matmul(w.o, attention_.data(), T, normed_.data());
    if (c.post_norms) rms_norm(normed_.data(), w.post_attention_norm, T, d, c.norm_eps, normed_.data());
    add_rows(x_.data(), normed_.data(), T * d);
}

// x += W_down (act(W_gate h) * W_up h) with h = rms_norm(x), the product normed again first with
// post_norms.
void Decoder::mlp_block(const LayerWeights& w, int64_t T) {
    const ModelConfig& c = config_;
    rms_norm(x_.data(), w.ffn_norm, T, c.d_model, c.norm_eps, normed_.data());
    matmul_gated(w.gate, w.up, c.activation, normed_.data(), T, gate_.data(), up_.data());
    matmul(w.down, gate_.data(), T, normed_.data());
    if (c.post_norms) rms_norm(normed_.data(), w.post_ffw_norm, T, c.d_model, c.norm_eps, normed_.data());
    add_rows(x_.data(), normed_.data(), T * c.d_model);
}

}  // namespace mlspecqd
