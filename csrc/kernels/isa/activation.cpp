// The gated MLP's activations, elementwise: gate <- act(gate) * up, with
//   silu(x)      = x / (1 + exp(-x))
//   gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
//                = x / (1 + exp(-2 sqrt(2 / pi) x (1 + 0.044715 x^2)))
// GELU is computed in its logistic form (0.5 (1 + tanh(y)) = 1 / (1 + exp(-2y))), which needs only exp and
// loses nothing to cancellation where tanh(y) is near -1. The scalar path is the reference; the vector
// paths take the same operations in the same order except exp (exp_ps), so they match it within a few
// units in the last place. Every element takes the same operations wherever it falls (the tail is a
// masked vector), so the result does not depend on how the range is cut.
#include <algorithm>
#include <cmath>

#include "kernels/isa/isa.h"
#include "kernels/isa/vector_exp.h"

namespace mlspecqd {
namespace MLSPECQD_ISA {

namespace {

constexpr float kGeluCubic = 0.044715f;
constexpr float kMinusTwiceRootTwoOverPi = -1.5957691216057308f;  // -2 sqrt(2 / pi)

#if defined(__AVX512BF16__)

inline __mmask16 tail_mask(int64_t remaining) {
    return remaining >= 16 ? __mmask16(0xffff) : __mmask16((1u << remaining) - 1u);
}

#elif defined(__AVX2__)

inline __m256i tail_mask(int64_t remaining) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(std::min<int64_t>(remaining, 8))), lane);
}

#endif

}  // namespace

void silu_multiply(float* gate, const float* up, int64_t n) {
#if defined(__AVX512BF16__)
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
        const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        _mm512_mask_storeu_ps(gate + i, m, _mm512_mul_ps(silu, u));
    }
#elif defined(__AVX2__)
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = tail_mask(n - i);
        const __m256 g = _mm256_maskload_ps(gate + i, m);
        const __m256 u = _mm256_maskload_ps(up + i, m);
        const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_maskstore_ps(gate + i, m, _mm256_mul_ps(silu, u));
    }
#else
    for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
#endif
}

void gelu_tanh_multiply(float* gate, const float* up, int64_t n) {
#if defined(__AVX512BF16__)
    const __m512 one = _mm512_set1_ps(1.0f), cubic = _mm512_set1_ps(kGeluCubic);
    const __m512 slope = _mm512_set1_ps(kMinusTwiceRootTwoOverPi);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
        const __m512 inner = _mm512_mul_ps(g, _mm512_add_ps(one, _mm512_mul_ps(cubic, _mm512_mul_ps(g, g))));
        const __m512 gelu = _mm512_div_ps(g, _mm512_add_ps(one, exp_ps(_mm512_mul_ps(inner, slope))));
        _mm512_mask_storeu_ps(gate + i, m, _mm512_mul_ps(gelu, u));
    }
#elif defined(__AVX2__)
    const __m256 one = _mm256_set1_ps(1.0f), cubic = _mm256_set1_ps(kGeluCubic);
    const __m256 slope = _mm256_set1_ps(kMinusTwiceRootTwoOverPi);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = tail_mask(n - i);
        const __m256 g = _mm256_maskload_ps(gate + i, m);
        const __m256 u = _mm256_maskload_ps(up + i, m);
        const __m256 inner = _mm256_mul_ps(g, _mm256_add_ps(one, _mm256_mul_ps(cubic, _mm256_mul_ps(g, g))));
        const __m256 gelu = _mm256_div_ps(g, _mm256_add_ps(one, exp_ps(_mm256_mul_ps(inner, slope))));
        _mm256_maskstore_ps(gate + i, m, _mm256_mul_ps(gelu, u));
    }
#else
    for (int64_t i = 0; i < n; ++i) {
        const float g = gate[i];
        const float inner = g * (1.0f + kGeluCubic * (g * g));
        gate[i] = g / (1.0f + std::exp(inner * kMinusTwiceRootTwoOverPi)) * up[i];
    }
#endif
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
