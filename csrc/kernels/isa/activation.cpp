// The gated MLP's activation: gate <- silu(gate) * up = gate / (1 + exp(-gate)) * up, elementwise.
// The scalar path is the reference; the vector paths use exp_ps, so they match it within a few units
// in the last place. Every element takes the same operations wherever it falls (the tail is a masked
// vector), so the result does not depend on how the range is cut.
#include <algorithm>
#include <cmath>

#include "kernels/isa/isa.h"
#include "kernels/isa/vector_exp.h"

namespace mlspecqd {
namespace MLSPECQD_ISA {

void silu_multiply(float* gate, const float* up, int64_t n) {
#if defined(__AVX512BF16__)
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1u);
        const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
        const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        _mm512_mask_storeu_ps(gate + i, m, _mm512_mul_ps(silu, u));
    }
#elif defined(__AVX2__)
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(std::min<int64_t>(n - i, 8))), lane);
        const __m256 g = _mm256_maskload_ps(gate + i, m);
        const __m256 u = _mm256_maskload_ps(up + i, m);
        const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_maskstore_ps(gate + i, m, _mm256_mul_ps(silu, u));
    }
#else
    for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
#endif
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
