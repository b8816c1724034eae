#include "model/layers.h"

#include <cmath>

#include "kernels/bf16.h"
#include "threads.h"

namespace mlspecqd {

void embed_tokens(const uint16_t* embedding, int64_t d, const int64_t* tokens, int64_t T, float scale, float* x) {
    for (int64_t t = 0; t < T; ++t) {
        const uint16_t* row = embedding + tokens[t] * d;
        for (int64_t i = 0; i < d; ++i) x[t * d + i] = bf16_to_float(row[i]) * scale;
    }
}

namespace {

// sum x[i]^2 in double (exact enough that the order hardly matters; it is fixed anyway): four partial
// sums over i mod 4, added in one order at the end, so the additions are four independent chains
// instead of one long dependent one.
double sum_of_squares(const float* x, int64_t n) {
    double partial[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int lane = 0; lane < 4; ++lane) partial[lane] += double(x[i + lane]) * double(x[i + lane]);
    for (; i < n; ++i) partial[i % 4] += double(x[i]) * double(x[i]);
    return (partial[0] + partial[1]) + (partial[2] + partial[3]);
}

// Rows per thread slice: a norm of a few rows costs less than waking the pool.
constexpr int64_t kNormRowsPerChunk = 16;

}  // namespace

void rms_norm(const float* x, const float* weight, int64_t rows, int64_t width, double eps, float* y) {
    parallel_for(rows, kNormRowsPerChunk, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const float* in = x + r * width;
            float* out = y + r * width;
            const float inverse_rms = float(1.0 / std::sqrt(sum_of_squares(in, width) / double(width) + eps));
            for (int64_t i = 0; i < width; ++i) out[i] = in[i] * inverse_rms * weight[i];
        }
    });
}

void add_bias(float* x, const float* bias, int64_t rows, int64_t width) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < width; ++i) x[r * width + i] += bias[i];
}

Rope::Rope(RopeStyle style, int64_t head_dim, int64_t rope_dim, double base, const RopeScaling& scaling,
           const float* freq_factors)
    : style_(style), head_dim_(head_dim), pairs_(rope_dim / 2) {
    inverse_frequency_.resize(pairs_);
    for (int64_t i = 0; i < pairs_; ++i) {
        double inv = std::pow(base, -2.0 * double(i) / double(rope_dim));
        if (scaling.kind == RopeScalingKind::linear) inv /= scaling.factor;
        if (scaling.kind == RopeScalingKind::llama3) inv /= freq_factors[i];
        inverse_frequency_[i] = inv;
    }
}

void Rope::tables(const int64_t* positions, int64_t T, std::vector<float>& cos, std::vector<float>& sin) const {
    cos.resize(T * pairs_);
    sin.resize(T * pairs_);
    for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < pairs_; ++i) {
            const double angle = double(positions[t]) * inverse_frequency_[i];
            cos[t * pairs_ + i] = float(std::cos(angle));
            sin[t * pairs_ + i] = float(std::sin(angle));
        }
}

void Rope::apply(float* x, int64_t T, int64_t heads, const std::vector<float>& cos,
                 const std::vector<float>& sin) const {
    // Interleaved pairs are (2i, 2i + 1); NEOX pairs are (i, i + pairs).
    const int64_t first_stride = style_ == RopeStyle::interleaved ? 2 : 1;
    const int64_t partner_offset = style_ == RopeStyle::interleaved ? 1 : pairs_;
    for (int64_t t = 0; t < T; ++t) {
        const float* c = cos.data() + t * pairs_;
        const float* s = sin.data() + t * pairs_;
        for (int64_t h = 0; h < heads; ++h) {
            float* head = x + (t * heads + h) * head_dim_;
            for (int64_t i = 0; i < pairs_; ++i) {
                float* a = head + i * first_stride;
                float* b = a + partner_offset;
                const float x0 = *a, x1 = *b;
                *a = x0 * c[i] - x1 * s[i];
                *b = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

}  // namespace mlspecqd
