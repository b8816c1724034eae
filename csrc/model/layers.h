// The per-row pieces of a transformer layer around the matrix products. Every function treats each row
// on its own, in a fixed order, so a row's result does not depend on which other rows share the call.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace mlspecqd {

// x[t] <- bf16 row tokens[t] of the (vocab x d) embedding matrix, widened to float32 and multiplied by
// `scale` in float32 (one rounding; scale 1 leaves the widened values as they are).
void embed_tokens(const uint16_t* embedding, int64_t d, const int64_t* tokens, int64_t T, float scale, float* x);

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight for `rows` rows of `width` floats (y may be x).
void rms_norm(const float* x, const float* weight, int64_t rows, int64_t width, double eps, float* y);

// x[r] += bias for `rows` rows of `width` floats.
void add_bias(float* x, const float* bias, int64_t rows, int64_t width);

// Rotary position embedding: the inverse frequency of each rotated pair, after any scaling.
class Rope {
public:
    // Rotates the leading rope_dim dimensions of heads of head_dim with the given base and scaling;
    // freq_factors: the rope_dim/2 divisors of llama3 scaling (rope_freqs.weight), else null.
    Rope(RopeStyle style, int64_t head_dim, int64_t rope_dim, double base, const RopeScaling& scaling,
         const float* freq_factors);

    // cos/sin of every pair for the T rows at positions[0 .. T - 1] (T x rope_dim/2 each).
    void tables(const int64_t* positions, int64_t T, std::vector<float>& cos, std::vector<float>& sin) const;

    // Rotates each of the `heads` heads of every row of x (T rows of heads * head_dim floats).
    void apply(float* x, int64_t T, int64_t heads, const std::vector<float>& cos,
               const std::vector<float>& sin) const;

private:
    RopeStyle style_;
    int64_t head_dim_;
    int64_t pairs_;
    std::vector<double> inverse_frequency_;
};

}  // namespace mlspecqd
