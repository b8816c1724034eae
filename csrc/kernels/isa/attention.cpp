// Causal grouped-query softmax attention over a float32 key/value cache. The scalar path is the
// reference the vector paths are tested against.
//
// One work item is one (head, query row). It makes three passes over its keys 0 .. position:
//   scores[j] = scale * (q . k_j)             (a dot product per key, reduced in head-dimension order)
//   e_j = exp(scores[j] - max), sum = sum e_j (accumulated in key order, lane-wise in the vector paths)
//   out = (sum_j e_j v_j) / sum               (accumulated in key order)
// Nothing in it depends on how many rows share the call, which is what makes it batch invariant.
#include <cmath>
#include <limits>

#include "kernels/isa/isa.h"  // also brings <immintrin.h> in the vector builds


namespace mlspecqd {
namespace MLSPECQD_ISA {

namespace {

#if defined(__AVX512BF16__)

constexpr int64_t kLanes = 16;

inline __mmask16 tail_mask(int64_t remaining) {
    return remaining >= kLanes ? __mmask16(0xffff) : __mmask16((1u << remaining) - 1u);
}

// exp(x) = 2^n * exp(r) with n = round(x / ln 2) and |r| <= ln(2) / 2; a degree-7 Taylor polynomial
// gives exp(r) to about 1e-8 relative.
inline __m512 exp_ps(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.72283f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

inline float dot(const float* a, const float* b, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += kLanes) {
        const __mmask16 m = tail_mask(n - i);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

// scores[j] <- exp(scores[j] - max) for j < n; returns their sum.
inline float exponentiate(float* scores, int64_t n, float max) {
    const __m512 vmax = _mm512_set1_ps(max);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += kLanes) {
        const __mmask16 m = tail_mask(n - j);
        const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + j), vmax));
        _mm512_mask_storeu_ps(scores + j, m, e);
        sum = _mm512_mask_add_ps(sum, m, sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}

// out[d] = factor * sum_j weights[j] * v[j * head_dim + d]; four accumulators over j hide FMA latency.
inline void weighted_sum(const float* weights, const float* v, int64_t n, int64_t head_dim, float factor,
                         float* out) {
    for (int64_t d = 0; d < head_dim; d += kLanes) {
        const __mmask16 m = tail_mask(head_dim - d);
        __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        int64_t j = 0;
        for (; j + 4 <= n; j += 4) {
            const float* row = v + j * head_dim + d;
            acc0 = _mm512_fmadd_ps(_mm512_set1_ps(weights[j]), _mm512_maskz_loadu_ps(m, row), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_set1_ps(weights[j + 1]), _mm512_maskz_loadu_ps(m, row + head_dim), acc1);
            acc2 = _mm512_fmadd_ps(_mm512_set1_ps(weights[j + 2]), _mm512_maskz_loadu_ps(m, row + 2 * head_dim), acc2);
            acc3 = _mm512_fmadd_ps(_mm512_set1_ps(weights[j + 3]), _mm512_maskz_loadu_ps(m, row + 3 * head_dim), acc3);
        }
        for (; j < n; ++j)
            acc0 = _mm512_fmadd_ps(_mm512_set1_ps(weights[j]), _mm512_maskz_loadu_ps(m, v + j * head_dim + d), acc0);
        const __m512 total = _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3));
        _mm512_mask_storeu_ps(out + d, m, _mm512_mul_ps(total, _mm512_set1_ps(factor)));
    }
}

#elif defined(__AVX2__)

constexpr int64_t kLanes = 8;

inline __m256i tail_mask(int64_t remaining) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int32_t count = remaining >= kLanes ? int32_t(kLanes) : int32_t(remaining);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lane);
}

inline float reduce_add(__m256 v) {
    const __m128 pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 two = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
    return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}

// See the AVX-512 path; the exponent goes in through the float's bit pattern (n stays in [-126, 127]).
inline __m256 exp_ps(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.3762f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
}

inline float dot(const float* a, const float* b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += kLanes) {
        const __m256i m = tail_mask(n - i);
        acc = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), acc);
    }
    return reduce_add(acc);
}

inline float exponentiate(float* scores, int64_t n, float max) {
    const __m256 vmax = _mm256_set1_ps(max);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; j += kLanes) {
        const __m256i m = tail_mask(n - j);
        const __m256 e = _mm256_and_ps(exp_ps(_mm256_sub_ps(_mm256_maskload_ps(scores + j, m), vmax)),
                                       _mm256_castsi256_ps(m));
        _mm256_maskstore_ps(scores + j, m, e);
        sum = _mm256_add_ps(sum, e);
    }
    return reduce_add(sum);
}

inline void weighted_sum(const float* weights, const float* v, int64_t n, int64_t head_dim, float factor,
                         float* out) {
    for (int64_t d = 0; d < head_dim; d += kLanes) {
        const __m256i m = tail_mask(head_dim - d);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        int64_t j = 0;
        for (; j + 4 <= n; j += 4) {
            const float* row = v + j * head_dim + d;
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(weights[j]), _mm256_maskload_ps(row, m), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(weights[j + 1]), _mm256_maskload_ps(row + head_dim, m), acc1);
            acc2 = _mm256_fmadd_ps(_mm256_set1_ps(weights[j + 2]), _mm256_maskload_ps(row + 2 * head_dim, m), acc2);
            acc3 = _mm256_fmadd_ps(_mm256_set1_ps(weights[j + 3]), _mm256_maskload_ps(row + 3 * head_dim, m), acc3);
        }
        for (; j < n; ++j)
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(weights[j]), _mm256_maskload_ps(v + j * head_dim + d, m), acc0);
        const __m256 total = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
        _mm256_maskstore_ps(out + d, m, _mm256_mul_ps(total, _mm256_set1_ps(factor)));
    }
}

#else

inline float dot(const float* a, const float* b, int64_t n) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

inline float exponentiate(float* scores, int64_t n, float max) {
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
        scores[j] = std::exp(scores[j] - max);
        sum += scores[j];
    }
    return sum;
}

inline void weighted_sum(const float* weights, const float* v, int64_t n, int64_t head_dim, float factor,
                         float* out) {
    for (int64_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
    for (int64_t j = 0; j < n; ++j)
        for (int64_t d = 0; d < head_dim; ++d) out[d] += weights[j] * v[j * head_dim + d];
    for (int64_t d = 0; d < head_dim; ++d) out[d] *= factor;
}

#endif

}  // namespace

void causal_attention(const AttentionProblem& p, int64_t item_begin, int64_t item_end, float* scores) {
    const int64_t group = p.n_heads / p.n_kv_heads;
    const int64_t row_stride = p.n_heads * p.head_dim;
    for (int64_t item = item_begin; item < item_end; ++item) {
        const int64_t head = item / p.T, row = item % p.T;
        const int64_t n_keys = p.first_position + row + 1;
        const float* q = p.q + row * row_stride + head * p.head_dim;
        const float* k = p.k_cache + (head / group) * p.capacity * p.head_dim;
        const float* v = p.v_cache + (head / group) * p.capacity * p.head_dim;

        float max = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < n_keys; ++j) {
            scores[j] = p.scale * dot(q, k + j * p.head_dim, p.head_dim);
            max = std::fmax(max, scores[j]);
        }
        const float sum = exponentiate(scores, n_keys, max);
        weighted_sum(scores, v, n_keys, p.head_dim, 1.0f / sum, p.out + row * row_stride + head * p.head_dim);
    }
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
