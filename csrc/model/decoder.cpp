#include "model/decoder.h"

#include <algorithm>
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
    if (c.n_experts > 0) {
        w.moe = load_moe_weights(c, tensors, i);
    } else {
        w.gate = tensors.linear(block(i, "ffn_gate.weight"), c.d_ff, c.d_model);
        w.up = tensors.linear(block(i, "ffn_up.weight"), c.d_ff, c.d_model);
        w.down = tensors.linear(block(i, "ffn_down.weight"), c.d_model, c.d_ff);
    }
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

void check_slot(int64_t slot, size_t slots, const char* what) {
    if (slot < 0 || slot >= int64_t(slots))
        throw std::invalid_argument(std::string(what) + ": slot " + std::to_string(slot) + " does not exist (the model has " +
                                    std::to_string(slots) + "; reserve_slots makes more)");
}

void add_rows(float* x, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace

Decoder::Decoder(const ModelConfig& config, const TensorSource& tensors, int64_t max_context)
    : config_(validated(config)),
      max_context_(max_context),
      rope_(config_.rope_style, config_.head_dim, config_.rope_dim, config_.rope_base, config_.rope_scaling,
            rope_freq_factors(config_, tensors)),
      sliding_rope_(sliding_rope(config_)) {
    const ModelConfig& c = config_;
    caches_.push_back(std::make_unique<KvCache>(c.n_layers, c.n_kv_heads, c.head_dim, max_context));
    token_embedding_ = tensors.bf16_matrix("token_embd.weight", c.vocab_size, c.d_model);
    for (int64_t i = 0; i < c.n_layers; ++i) layers_.push_back(load_layer(c, tensors, i));
    output_norm_ = tensors.vector("output_norm.weight", c.d_model);
    output_ = tensors.linear(c.tied_output ? "token_embd.weight" : "output.weight", c.vocab_size, c.d_model);
    expert_rows_.assign(c.n_layers * c.n_experts, 0);
    const auto follow_plan = [&](Linear& w) { w.plan = &kernel_plan_; };
    for (LayerWeights& w : layers_) {
        for (Linear* linear : {&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down, &w.moe.shared_gate, &w.moe.shared_up,
                               &w.moe.shared_down})
            follow_plan(*linear);
        for (ExpertStack* stack : {&w.moe.gate, &w.moe.up, &w.moe.down})
            for (Linear& expert : stack->experts) follow_plan(expert);
    }
    follow_plan(output_);
}

void Decoder::set_kernel_plan(const KernelPlan& plan) {
    std::lock_guard<std::mutex> lock(mutex_);
    kernel_plan_ = plan;
}

std::vector<int64_t> Decoder::expert_rows() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return expert_rows_;
}

void Decoder::reset_expert_rows() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::fill(expert_rows_.begin(), expert_rows_.end(), 0);
}

int64_t Decoder::slot_count() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return int64_t(caches_.size());
}

void Decoder::reserve_slots(int64_t n) {
    if (n < 1 || n > kMaxSlots)
        throw std::invalid_argument("reserve_slots: " + std::to_string(n) + " sequences; a model holds 1 to " +
                                    std::to_string(kMaxSlots));
    std::lock_guard<std::mutex> lock(mutex_);
    const ModelConfig& c = config_;
    while (int64_t(caches_.size()) < n)
        caches_.push_back(std::make_unique<KvCache>(c.n_layers, c.n_kv_heads, c.head_dim, max_context_));
}

int64_t Decoder::n_past(int64_t slot) const {
    std::lock_guard<std::mutex> lock(mutex_);
    check_slot(slot, caches_.size(), "n_past");
    return caches_[slot]->n_past();
}

void Decoder::truncate(int64_t n, int64_t slot) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_slot(slot, caches_.size(), "truncate");
    caches_[slot]->truncate(n);
}

void Decoder::check_forward(const std::vector<Segment>& segments) const {
    std::lock_guard<std::mutex> lock(mutex_);
    check_forward_locked(segments);
}

void Decoder::check_forward_locked(const std::vector<Segment>& segments) const {
    if (segments.empty()) throw std::invalid_argument("forward: no sequences given");
    std::vector<bool> named(caches_.size(), false);
    for (size_t i = 0; i < segments.size(); ++i) {
        const Segment& s = segments[i];
        // One sequence keeps the plain messages; in a batch they say which sequence is wrong.
        const std::string where = segments.size() == 1 ? "forward: "
                                  : "forward, sequence " + std::to_string(i) + " (slot " + std::to_string(s.slot) + "): ";
        check_slot(s.slot, caches_.size(), "forward");
        if (named[s.slot]) throw std::invalid_argument(where + "another sequence of this forward uses the same slot");
        named[s.slot] = true;
        const KvCache& cache = *caches_[s.slot];
        if (s.T < 1) throw std::invalid_argument(where + "tokens is empty (T = 0); pass at least one token");
        if (s.start < 0 || s.start > cache.n_past())
            throw std::invalid_argument(where + "start = " + std::to_string(s.start) + " must be in [0, n_past = " +
                                        std::to_string(cache.n_past()) + "]");
        if (s.start + s.T > cache.capacity())
            throw std::invalid_argument(where + "start + T = " + std::to_string(s.start) + " + " + std::to_string(s.T) +
                                        " exceeds max_context = " + std::to_string(cache.capacity()));
        for (int64_t t = 0; t < s.T; ++t)
            if (s.tokens[t] < 0 || s.tokens[t] >= config_.vocab_size)
                throw std::invalid_argument(where + "token id " + std::to_string(s.tokens[t]) + " at index " +
                                            std::to_string(t) + " is outside the vocabulary [0, " +
                                            std::to_string(config_.vocab_size) + ")");
    }
}

void Decoder::forward(const std::vector<Segment>& segments, float* logits) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_forward_locked(segments);

    const ModelConfig& c = config_;
    tokens_.clear();
    positions_.clear();
    for (const Segment& s : segments) {
        caches_[s.slot]->truncate(s.start);
        tokens_.insert(tokens_.end(), s.tokens, s.tokens + s.T);
        for (int64_t t = 0; t < s.T; ++t) positions_.push_back(s.start + t);
    }
    const int64_t rows = int64_t(tokens_.size()), d = c.d_model;
    x_.resize(rows * d);
    normed_.resize(rows * d);
    q_.resize(rows * c.n_heads * c.head_dim);
    k_.resize(rows * c.n_kv_heads * c.head_dim);
    v_.resize(rows * c.n_kv_heads * c.head_dim);
    attention_.resize(rows * c.n_heads * c.head_dim);
    gate_.resize(rows * c.d_ff);
    up_.resize(rows * c.d_ff);

    embed_tokens(token_embedding_, d, tokens_.data(), rows, float(c.embedding_scale), x_.data());
    rope_.tables(positions_.data(), rows, rope_cos_, rope_sin_);
    if (sliding_rope_) sliding_rope_->tables(positions_.data(), rows, sliding_cos_, sliding_sin_);
    for (int64_t layer = 0; layer < c.n_layers; ++layer) {
        attention_block(layers_[layer], layer, segments, rows);
        mlp_block(layers_[layer], layer, rows);
    }
    for (const Segment& s : segments) caches_[s.slot]->commit(s.T);

    // The rows whose logits are asked for, together, so the LM head is read once for all of them.
    int64_t first_row = 0, logit_rows = 0;
    for (const Segment& s : segments) {
        const int64_t n = s.logit_rows();
        rms_norm(x_.data() + (first_row + s.T - n) * d, output_norm_, n, d, c.norm_eps, normed_.data() + logit_rows * d);
        first_row += s.T;
        logit_rows += n;
    }
    matmul(output_, normed_.data(), logit_rows, logits);
}

// x += W_o attention(rope(W_q h), rope(W_k h), W_v h) with h = rms_norm(x), the product normed again
// first with post_norms; appends each segment's keys and values to its slot's cache, and each segment's
// rows attend to their own cache only. A sliding-window layer rotates with its own base and attends
// within the window.
void Decoder::attention_block(const LayerWeights& w, int64_t layer, const std::vector<Segment>& segments,
                              int64_t rows) {
    const ModelConfig& c = config_;
    const int64_t d = c.d_model, q_width = c.n_heads * c.head_dim, kv_width = c.n_kv_heads * c.head_dim;
    rms_norm(x_.data(), w.attn_norm, rows, d, c.norm_eps, normed_.data());
    matmul_shared_input({{&w.q, q_.data()}, {&w.k, k_.data()}, {&w.v, v_.data()}}, normed_.data(), rows);
    if (c.qkv_bias) {
        add_bias(q_.data(), w.q_bias, rows, q_width);
        add_bias(k_.data(), w.k_bias, rows, kv_width);
        add_bias(v_.data(), w.v_bias, rows, kv_width);
    }
    if (c.qk_norm) {
        rms_norm(q_.data(), w.q_norm, rows * c.n_heads, c.head_dim, c.norm_eps, q_.data());
        rms_norm(k_.data(), w.k_norm, rows * c.n_kv_heads, c.head_dim, c.norm_eps, k_.data());
    }
    const bool sliding = c.is_sliding(layer);
    const Rope& rope = sliding ? *sliding_rope_ : rope_;
    const std::vector<float>& cos = sliding ? sliding_cos_ : rope_cos_;
    const std::vector<float>& sin = sliding ? sliding_sin_ : rope_sin_;
    rope.apply(q_.data(), rows, c.n_heads, cos, sin);
    rope.apply(k_.data(), rows, c.n_kv_heads, cos, sin);

    // One attention problem per segment, over its own rows and its own slot's cache. Work items are
    // numbered segment by segment, each segment's head-major (kv_head * T + row), so a thread's slice is
    // whole key/value heads when it can be, and the slices cost about the same (later rows have more keys).
    problems_.clear();
    int64_t first_row = 0, items = 0, scores_floats = 0;
    for (const Segment& s : segments) {
        KvCache& cache = *caches_[s.slot];
        cache.write(layer, k_.data() + first_row * kv_width, v_.data() + first_row * kv_width, s.T);
        AttentionProblem problem;
        problem.q = q_.data() + first_row * q_width;
        problem.k_cache = cache.keys(layer);
        problem.v_cache = cache.values(layer);
        problem.out = attention_.data() + first_row * q_width;
        problem.T = s.T;
        problem.n_heads = c.n_heads;
        problem.n_kv_heads = c.n_kv_heads;
        problem.head_dim = c.head_dim;
        problem.capacity = cache.capacity();
        problem.first_position = s.start;
        problem.scale = float(c.attention_scale > 0.0 ? c.attention_scale : 1.0 / std::sqrt(double(c.head_dim)));
        problem.window = sliding ? c.sliding_window : 0;
        problems_.push_back(problem);
        first_row += s.T;
        items += c.n_kv_heads * s.T;
        scores_floats = std::max(scores_floats, attention_scores_floats(problem));
    }
    const KernelTable& kernel = kernels();
    parallel_for(items, 1, [&](int64_t begin, int64_t end) {
        thread_local std::vector<float> scores;  // each pool thread's, grown once to the largest need
        scores.resize(std::max<size_t>(scores.size(), size_t(scores_floats)));
        int64_t segment_first = 0;  // the first item of the segment problems_[i]
        for (const AttentionProblem& problem : problems_) {
            const int64_t segment_items = problem.n_kv_heads * problem.T;
            const int64_t from = std::max(begin, segment_first), to = std::min(end, segment_first + segment_items);
            if (from < to) kernel.causal_attention(problem, from - segment_first, to - segment_first, scores.data());
            segment_first += segment_items;
        }
    });

    matmul(w.o, attention_.data(), rows, normed_.data());
    if (c.post_norms) rms_norm(normed_.data(), w.post_attention_norm, rows, d, c.norm_eps, normed_.data());
    add_rows(x_.data(), normed_.data(), rows * d);
}

// x += W_down (act(W_gate h) * W_up h) with h = rms_norm(x), the product normed again first with
// post_norms; with experts, x += the MoE block of h (csrc/model/moe.h).
void Decoder::mlp_block(const LayerWeights& w, int64_t layer, int64_t rows) {
    const ModelConfig& c = config_;
    rms_norm(x_.data(), w.ffn_norm, rows, c.d_model, c.norm_eps, normed_.data());
    if (c.n_experts > 0) {
        int64_t* expert_rows = expert_rows_.data() + layer * c.n_experts;
        add_rows(x_.data(), moe_.forward(c, w.moe, normed_.data(), rows, expert_rows), rows * c.d_model);
        return;
    }
    matmul_gated(w.gate, w.up, c.activation, normed_.data(), rows, gate_.data(), up_.data());
    matmul(w.down, gate_.data(), rows, normed_.data());
    if (c.post_norms) rms_norm(normed_.data(), w.post_ffw_norm, rows, c.d_model, c.norm_eps, normed_.data());
    add_rows(x_.data(), normed_.data(), rows * c.d_model);
}

}  // namespace mlspecqd
