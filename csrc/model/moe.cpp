#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

#include "kernels/kernels.h"
#include "kernels/mxfp4.h"
#include "model/decoder.h"
#include "threads.h"

namespace mlspecqd {

namespace {

// Work items of the expert products are this many columns (of the prepared input, or of the output)
// of one active expert: a multiple of kPrepareColumns, and a whole number of cache lines of output.
constexpr int64_t kExpertColumns = 64;
static_assert(kExpertColumns % kPrepareColumns == 0, "column chunks must start where prepare allows");

int64_t column_chunks(int64_t width) { return (width + kExpertColumns - 1) / kExpertColumns; }

// Item i is chunk i % chunks of the i / chunks-th active expert, chunks = column_chunks(width). Calls
// run(a, begin, end) with the columns [begin, end) of active expert a that items [item_begin, item_end)
// cover, one call per expert.
template <class Run>
void for_expert_columns(int64_t item_begin, int64_t item_end, int64_t width, Run run) {
    const int64_t chunks = column_chunks(width);
    for (int64_t i = item_begin; i < item_end;) {
        const int64_t a = i / chunks, last = std::min(item_end, (a + 1) * chunks);
        run(a, (i - a * chunks) * kExpertColumns, std::min(width, (last - a * chunks) * kExpertColumns));
        i = last;
    }
}

// Byte offsets of each active expert's prepared input of `rows[a]` rows, in the layout that expert's
// weights in `stack` read, each on a cache line; returns the total.
int64_t prepared_offsets(const ExpertStack& stack, const std::vector<int32_t>& active, const std::vector<int64_t>& rows,
                         std::vector<int64_t>& offsets) {
    constexpr int64_t kLine = static_cast<int64_t>(kCacheLine);
    offsets.resize(rows.size());
    int64_t total = 0;
    for (size_t a = 0; a < rows.size(); ++a) {
        offsets[a] = total;
        total += (prepared_bytes(stack.expert(active[a]), rows[a]) + kLine - 1) / kLine * kLine;
    }
    return total;
}

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

ExpertStack contiguous_experts(WeightType type, int64_t count, int64_t N, int64_t K, const void* data) {
    const int64_t row_bytes = type == WeightType::bf16 ? K * int64_t{2} : K / kMxfp4BlockValues * kMxfp4BlockBytes;
    ExpertStack stack{N, K, {}};
    for (int64_t e = 0; e < count; ++e)
        stack.experts.push_back(Linear{type, N, K, static_cast<const uint8_t*>(data) + e * N * row_bytes});
    return stack;
}

MoeWeights load_moe_weights(const ModelConfig& c, const TensorSource& tensors, int64_t layer) {
    const std::string block = "blk." + std::to_string(layer) + ".";
    const int64_t d = c.d_model, E = c.n_experts, F = c.expert_d_ff;
    MoeWeights w;
    w.router = tensors.f32_matrix(block + "ffn_gate_inp.weight", E, d);
    w.gate = tensors.experts(block + "ffn_gate_exps.weight", E, F, d);
    w.up = tensors.experts(block + "ffn_up_exps.weight", E, F, d);
    w.down = tensors.experts(block + "ffn_down_exps.weight", E, d, F);
    for (int64_t e = 0; e < E; ++e)
        if (w.gate.expert(e).type != w.up.expert(e).type)
            throw std::invalid_argument("weights['" + block + "ffn_gate_exps.weight'] and weights['" + block +
                                        "ffn_up_exps.weight'] must have one type (BF16 or MXFP4) for each "
                                        "expert; expert " + std::to_string(e) + " has two");
    if (c.shared_expert_d_ff > 0) {
        const int64_t S = c.shared_expert_d_ff;
        w.shared_gate_input = tensors.vector(block + "ffn_gate_inp_shexp.weight", d);
        w.shared_gate = tensors.linear(block + "ffn_gate_shexp.weight", S, d);
        w.shared_up = tensors.linear(block + "ffn_up_shexp.weight", S, d);
        w.shared_down = tensors.linear(block + "ffn_down_shexp.weight", d, S);
    }
    return w;
}

float dot_f32(const float* x, const float* y, int64_t n) {
    constexpr int kLanes = 16;
    float sums[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int lane = 0; lane < kLanes; ++lane) sums[lane] += x[i + lane] * y[i + lane];
    for (int lane = 0; i < n; ++i, ++lane) sums[lane] += x[i] * y[i];
    for (int width = kLanes / 2; width >= 1; width /= 2)
        for (int lane = 0; lane < width; ++lane) sums[lane] += sums[lane + width];
    return sums[0];
}

void route(const ModelConfig& c, const float* router, const float* h, int64_t T, float* logits, int32_t* experts,
           float* weights) {
    const int64_t d = c.d_model, E = c.n_experts, k = c.n_experts_used;
    parallel_for(T * E, 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) logits[i] = dot_f32(h + i / E * d, router + i % E * d, d);
    });
    std::vector<int32_t> order(static_cast<size_t>(E));
    std::vector<float> exps(static_cast<size_t>(E));
    for (int64_t t = 0; t < T; ++t) {
        const float* row = logits + t * E;
        // NaN ranks last (as -infinity), so that the order stays a strict weak one whatever the logits.
        const auto key = [row](int32_t e) { return std::isnan(row[e]) ? -INFINITY : row[e]; };
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(),
                  [&key](int32_t a, int32_t b) { return key(a) > key(b) || (key(a) == key(b) && a < b); });
        // The softmax's sum runs from the smallest term up in rank order, not in index order, so that
        // renumbering the experts (with the router's rows) gives the same bits.
        float sum = 0.0f;
        for (int64_t r = E - 1; r >= 0; --r) sum += exps[r] = std::exp(row[order[r]] - row[order[0]]);
        float chosen = 0.0f;
        for (int64_t j = 0; j < k; ++j) {
            experts[t * k + j] = order[j];
            weights[t * k + j] = exps[j] / sum;
            chosen += weights[t * k + j];
        }
        if (c.expert_weights_normalized)
            for (int64_t j = 0; j < k; ++j) weights[t * k + j] /= chosen;
        if (c.expert_weights_scale != 1.0)
            for (int64_t j = 0; j < k; ++j) weights[t * k + j] *= static_cast<float>(c.expert_weights_scale);
    }
}

const float* MoeBlock::forward(const ModelConfig& c, const MoeWeights& w, const float* h, int64_t T,
                               int64_t* expert_rows) {
    const int64_t d = c.d_model, k = c.n_experts_used;
    logits_.resize(T * c.n_experts);
    experts_.resize(T * k);
    weights_.resize(T * k);
    route(c, w.router, h, T, logits_.data(), experts_.data(), weights_.data());
    group_rows_by_expert(c, h, T);
    for (int32_t e : active_) expert_rows[e] += first_row_[e + 1] - first_row_[e];
    run_experts(c, w);

    // Each row sums its experts' outputs in rank order.
    out_.resize(T * d);
    for (int64_t t = 0; t < T; ++t) {
        float* out = out_.data() + t * d;
        for (int64_t j = 0; j < k; ++j) {
            const float weight = weights_[t * k + j];
            const float* y = outputs_.data() + grouped_row_[t * k + j] * d;
            if (j == 0) {
                for (int64_t i = 0; i < d; ++i) out[i] = weight * y[i];
            } else {
                for (int64_t i = 0; i < d; ++i) out[i] += weight * y[i];
            }
        }
    }
    if (c.shared_expert_d_ff > 0) add_shared_expert(c, w, h, T);
    return out_.data();
}

// Lays the (row, rank) pairs out expert by expert, rows ascending within an expert, and copies each
// pair's input row to its place in inputs_.
void MoeBlock::group_rows_by_expert(const ModelConfig& c, const float* h, int64_t T) {
    const int64_t d = c.d_model, E = c.n_experts, pairs = T * c.n_experts_used;
    first_row_.assign(E + 1, 0);
    for (int64_t p = 0; p < pairs; ++p) ++first_row_[experts_[p] + 1];
    active_.clear();
    for (int64_t e = 0; e < E; ++e) {
        if (first_row_[e + 1] > 0) active_.push_back(static_cast<int32_t>(e));
        first_row_[e + 1] += first_row_[e];
    }
    std::vector<int64_t> next(first_row_.begin(), first_row_.end() - 1);
    grouped_row_.resize(pairs);
    inputs_.resize(pairs * d);
    for (int64_t p = 0; p < pairs; ++p) {
        grouped_row_[p] = next[experts_[p]]++;
        std::copy(h + p / c.n_experts_used * d, h + (p / c.n_experts_used + 1) * d,
                  inputs_.data() + grouped_row_[p] * d);
    }
}

// For every active expert e and its rows x: hidden = act(x G_e^T) * (x U_e^T), then outputs = hidden
// D_e^T. Two parallel regions, each preparing its inputs and then multiplying; threads split the active
// experts x output columns, so each active expert's weights are read once. Each expert's inputs are
// prepared for its own type (gate and up share one), so a stack may mix BF16 and MXFP4 experts.
void MoeBlock::run_experts(const ModelConfig& c, const MoeWeights& w) {
    const int64_t d = c.d_model, F = c.expert_d_ff, pairs = static_cast<int64_t>(grouped_row_.size());
    const int64_t n_active = static_cast<int64_t>(active_.size());
    std::vector<int64_t> rows(active_.size());
    for (int64_t a = 0; a < n_active; ++a) rows[a] = first_row_[active_[a] + 1] - first_row_[active_[a]];
    const auto first = [&](int64_t a) { return first_row_[active_[a]]; };
    hidden_.resize(pairs * F);
    up_.resize(pairs * F);
    outputs_.resize(pairs * d);

    prepared_inputs_.resize(prepared_offsets(w.gate, active_, rows, input_offset_));
    const auto prepare_inputs = [&](int64_t begin, int64_t end) {
        for_expert_columns(begin, end, d, [&](int64_t a, int64_t k_begin, int64_t k_end) {
            prepare_columns(w.gate.expert(active_[a]), inputs_.data() + first(a) * d, rows[a], k_begin, k_end,
                            prepared_inputs_.data() + input_offset_[a]);
        });
    };
    const auto gate_and_up = [&](int64_t begin, int64_t end) {
        for_expert_columns(begin, end, F, [&](int64_t a, int64_t n_begin, int64_t n_end) {
            const void* x = prepared_inputs_.data() + input_offset_[a];
            float* gate = hidden_.data() + first(a) * F;
            float* up = up_.data() + first(a) * F;
            multiply_prepared(w.gate.expert(active_[a]), x, rows[a], n_begin, n_end, gate);
            multiply_prepared(w.up.expert(active_[a]), x, rows[a], n_begin, n_end, up);
            for (int64_t m = 0; m < rows[a]; ++m)
                gate_activation(c.activation, gate + m * F + n_begin, up + m * F + n_begin, n_end - n_begin);
        });
    };
    parallel_for_after(n_active * column_chunks(d), 1, prepare_inputs, n_active * column_chunks(F), 1, gate_and_up);

    prepared_hidden_.resize(prepared_offsets(w.down, active_, rows, hidden_offset_));
    const auto prepare_hidden = [&](int64_t begin, int64_t end) {
        for_expert_columns(begin, end, F, [&](int64_t a, int64_t k_begin, int64_t k_end) {
            prepare_columns(w.down.expert(active_[a]), hidden_.data() + first(a) * F, rows[a], k_begin, k_end,
                            prepared_hidden_.data() + hidden_offset_[a]);
        });
    };
    const auto down = [&](int64_t begin, int64_t end) {
        for_expert_columns(begin, end, d, [&](int64_t a, int64_t n_begin, int64_t n_end) {
            multiply_prepared(w.down.expert(active_[a]), prepared_hidden_.data() + hidden_offset_[a], rows[a],
                              n_begin, n_end, outputs_.data() + first(a) * d);
        });
    };
    parallel_for_after(n_active * column_chunks(F), 1, prepare_hidden, n_active * column_chunks(d), 1, down);
}

// out_ += sigmoid(h . v) * shared expert(h), row by row.
void MoeBlock::add_shared_expert(const ModelConfig& c, const MoeWeights& w, const float* h, int64_t T) {
    const int64_t d = c.d_model, S = c.shared_expert_d_ff;
    shared_gate_.resize(T * S);
    shared_up_.resize(T * S);
    shared_out_.resize(T * d);
    matmul_gated(w.shared_gate, w.shared_up, c.activation, h, T, shared_gate_.data(), shared_up_.data());
    matmul(w.shared_down, shared_gate_.data(), T, shared_out_.data());
    for (int64_t t = 0; t < T; ++t) {
        const float gate = sigmoid(dot_f32(h + t * d, w.shared_gate_input, d));
        float* out = out_.data() + t * d;
        const float* y = shared_out_.data() + t * d;
        for (int64_t i = 0; i < d; ++i) out[i] += gate * y[i];
    }
}

}  // namespace mlspecqd
