// Causal grouped-query softmax attention over a float32 key/value cache, optionally within a sliding
// window. The scalar path is the reference the vector paths are tested against.
//
// One work item is one (key/value head, query row): the query heads sharing that key/value head take
// their keys and values block by block, so a block is read from memory once and then from cache by each
// head. Per query head, over keys first .. position (first = 0, or position - window + 1 with a window):
//   scores[j] = scale * (q . k_j)             (kKeyTile keys per vector, each summing over d in order)
//   e_j = exp(scores[j] - max), sum = sum e_j (accumulated in key order, lane-wise in the vector paths)
//   out = (sum_j e_j v_j) / sum               (accumulated in key order, lane-wise over dimensions)
// Nothing in it depends on how many rows share the call, which is what makes it batch invariant: a
// key's score takes the same operations whichever code path (group of tiles, masked tail) covers it, and
// the softmax and the value sums start at the row's own first key. Scores are computed from the start of
// the key block holding a row's first key; those of keys before the window are never read.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "kernels/isa/isa.h"  // also brings <immintrin.h> in the vector builds
#include "kernels/isa/vector_exp.h"


namespace mlspecqd {
namespace MLSPECQD_ISA {

namespace {

#if defined(__AVX512BF16__)

constexpr int64_t kLanes = 16;
static_assert(kKeyTile == kLanes, "one key tile is one vector");

inline __mmask16 tail_mask(int64_t remaining) {
    if (remaining >= kLanes) return __mmask16(0xffff);
    return remaining <= 0 ? __mmask16(0) : __mmask16((1u << remaining) - 1u);
}

inline float max_of(const float* x, int64_t n) {
    __m512 max = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < n; j += kLanes) {
        const __mmask16 m = tail_mask(n - j);
        max = _mm512_mask_max_ps(max, m, max, _mm512_maskz_loadu_ps(m, x + j));
    }
    return _mm512_reduce_max_ps(max);
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

// The query heads of a group share their keys and values: a key or value vector, once loaded, feeds up
// to kHeadsPerPass heads, whose sums then run as independent FMA chains. Per head the operations are
// those of the other paths' key_scores and accumulate_values, lane-wise: a score sums q[d] k[d] over d
// in order, then is scaled; an output dimension sums weight times value over the keys in order.

// Scores of `Heads` heads (q rows head_dim apart) against Tiles key tiles, the last masked by last_mask.
template <int Heads, int Tiles>
inline void score_tiles(const float* q, int64_t head_dim, const float* tiles, __mmask16 last_mask, __m512 scale,
                        float* scores, int64_t scores_stride) {
    const int64_t tile_floats = head_dim * kKeyTile;
    __m512 sums[Heads][Tiles];
    for (int h = 0; h < Heads; ++h)
        for (int t = 0; t < Tiles; ++t) sums[h][t] = _mm512_setzero_ps();
    for (int64_t d = 0; d < head_dim; ++d) {
        __m512 keys[Tiles];
        for (int t = 0; t < Tiles; ++t) {
            keys[t] = _mm512_maskz_loadu_ps(t == Tiles - 1 ? last_mask : __mmask16(0xffff),
                                            tiles + t * tile_floats + d * kKeyTile);
            // The same row of the next tiles: a tile is one or two 4 KiB pages, too short a stream for
            // the hardware prefetcher, and the cache is cold after a layer's weights went through.
            _mm_prefetch(reinterpret_cast<const char*>(tiles + (Tiles + t) * tile_floats + d * kKeyTile), _MM_HINT_T0);
        }
        for (int h = 0; h < Heads; ++h) {
            const __m512 qd = _mm512_set1_ps(q[h * head_dim + d]);
            for (int t = 0; t < Tiles; ++t) sums[h][t] = _mm512_fmadd_ps(qd, keys[t], sums[h][t]);
        }
    }
    for (int h = 0; h < Heads; ++h)
        for (int t = 0; t < Tiles; ++t)
            _mm512_mask_storeu_ps(scores + h * scores_stride + t * kKeyTile,
                                  t == Tiles - 1 ? last_mask : __mmask16(0xffff), _mm512_mul_ps(sums[h][t], scale));
}

template <int Heads>
inline void heads_key_scores(const float* q, const float* tiles, int64_t head_dim, int64_t n, __m512 scale,
                             float* scores, int64_t scores_stride) {
    const int64_t tile_floats = head_dim * kKeyTile;
    int64_t j = 0;
    for (; j + 2 * kKeyTile <= n; j += 2 * kKeyTile)
        score_tiles<Heads, 2>(q, head_dim, tiles + (j / kKeyTile) * tile_floats, 0xffff, scale, scores + j,
                              scores_stride);
    for (; j < n; j += kKeyTile)
        score_tiles<Heads, 1>(q, head_dim, tiles + (j / kKeyTile) * tile_floats, tail_mask(n - j), scale, scores + j,
                              scores_stride);
}

// Value rows are fetched this many keys ahead of their use.
constexpr int64_t kValuesAhead = 8;

// out[h * head_dim + d] += sum_j weights[h * weights_stride + j] * v[j * head_dim + d] for `Heads` heads,
// 64 dimensions per pass over the keys.
template <int Heads>
inline void heads_accumulate_values(const float* weights, int64_t weights_stride, const float* v, int64_t n,
                                    int64_t head_dim, float* out) {
    constexpr int kVectors = 4;
    for (int64_t d = 0; d < head_dim; d += kVectors * kLanes) {
        __mmask16 masks[kVectors];
        __m512 sums[Heads][kVectors];
        for (int i = 0; i < kVectors; ++i) masks[i] = tail_mask(head_dim - d - i * kLanes);
        for (int h = 0; h < Heads; ++h)
            for (int i = 0; i < kVectors; ++i)
                sums[h][i] = _mm512_maskz_loadu_ps(masks[i], out + h * head_dim + d + i * kLanes);
        for (int64_t j = 0; j < n; ++j) {
            __m512 values[kVectors];
            for (int i = 0; i < kVectors; ++i) {
                values[i] = _mm512_maskz_loadu_ps(masks[i], v + j * head_dim + d + i * kLanes);
                _mm_prefetch(reinterpret_cast<const char*>(v + (j + kValuesAhead) * head_dim + d + i * kLanes), _MM_HINT_T0);
            }
            for (int h = 0; h < Heads; ++h) {
                const __m512 w = _mm512_set1_ps(weights[h * weights_stride + j]);
                for (int i = 0; i < kVectors; ++i) sums[h][i] = _mm512_fmadd_ps(w, values[i], sums[h][i]);
            }
        }
        for (int h = 0; h < Heads; ++h)
            for (int i = 0; i < kVectors; ++i)
                _mm512_mask_storeu_ps(out + h * head_dim + d + i * kLanes, masks[i], sums[h][i]);
    }
}

// Up to this many heads share one pass: 6 x 4 value accumulators, the 4 values and a weight fill 29
// of the 32 registers (6 x 2 score accumulators leave room too).
constexpr int64_t kHeadsPerPass = 6;

// Calls call(std::integral_constant<int, heads>{}) for heads in 1 .. sizeof...(Heads).
template <class Call, int... Heads>
inline void dispatch_heads(int64_t heads, std::integer_sequence<int, Heads...>, Call&& call) {
    ((heads == Heads + 1 ? (call(std::integral_constant<int, Heads + 1>{}), true) : false) || ...);
}

// Heads per pass for a group: as even as the passes allow (7 heads go 4 + 3, not 6 + 1, whose lone
// head would run its sums as too few FMA chains to fill the pipeline).
inline int64_t heads_per_pass(int64_t group) {
    const int64_t passes = (group + kHeadsPerPass - 1) / kHeadsPerPass;
    return (group + passes - 1) / passes;
}

inline void group_key_scores(const float* q, int64_t group, const float* tiles, int64_t head_dim, int64_t n,
                             float scale, float* scores, int64_t scores_stride) {
    const __m512 vscale = _mm512_set1_ps(scale);
    const int64_t per_pass = heads_per_pass(group);
    for (int64_t h = 0; h < group; h += per_pass)
        dispatch_heads(std::min(per_pass, group - h), std::make_integer_sequence<int, kHeadsPerPass>(),
                       [&](auto heads) {
                           heads_key_scores<heads()>(q + h * head_dim, tiles, head_dim, n, vscale,
                                                     scores + h * scores_stride, scores_stride);
                       });
}

inline void group_accumulate_values(const float* weights, int64_t weights_stride, int64_t group, const float* v,
                                    int64_t n, int64_t head_dim, float* out) {
    const int64_t per_pass = heads_per_pass(group);
    for (int64_t h = 0; h < group; h += per_pass)
        dispatch_heads(std::min(per_pass, group - h), std::make_integer_sequence<int, kHeadsPerPass>(),
                       [&](auto heads) {
                           heads_accumulate_values<heads()>(weights + h * weights_stride, weights_stride, v, n,
                                                            head_dim, out + h * head_dim);
                       });
}

#elif defined(__AVX2__)

constexpr int64_t kLanes = 8;
static_assert(kKeyTile == 2 * kLanes, "one key tile is two vectors");

inline __m256i tail_mask(int64_t remaining) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int32_t count = remaining >= kLanes ? int32_t(kLanes) : remaining <= 0 ? 0 : int32_t(remaining);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lane);
}

inline float reduce_add(__m256 v) {
    const __m128 pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 two = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
    return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}

inline float reduce_max(__m256 v) {
    const __m128 pair = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 two = _mm_max_ps(pair, _mm_movehl_ps(pair, pair));
    return _mm_cvtss_f32(_mm_max_ss(two, _mm_movehdup_ps(two)));
}

// See the AVX-512 path: two tiles (four half-tile vectors) at a time, then one tile at a time, masked.
inline void key_scores(const float* q, const float* tiles, int64_t head_dim, int64_t n, float scale, float* scores) {
    const int64_t tile_floats = head_dim * kKeyTile;
    const __m256 vscale = _mm256_set1_ps(scale);
    int64_t j = 0;
    for (; j + 2 * kKeyTile <= n; j += 2 * kKeyTile) {
        const float* t = tiles + (j / kKeyTile) * tile_floats;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t d = 0; d < head_dim; ++d) {
            const __m256 qd = _mm256_set1_ps(q[d]);
            const float* row = t + d * kKeyTile;
            a0 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row), a0);
            a1 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row + kLanes), a1);
            a2 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row + tile_floats), a2);
            a3 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row + tile_floats + kLanes), a3);
        }
        _mm256_storeu_ps(scores + j, _mm256_mul_ps(a0, vscale));
        _mm256_storeu_ps(scores + j + kLanes, _mm256_mul_ps(a1, vscale));
        _mm256_storeu_ps(scores + j + kKeyTile, _mm256_mul_ps(a2, vscale));
        _mm256_storeu_ps(scores + j + kKeyTile + kLanes, _mm256_mul_ps(a3, vscale));
    }
    for (; j < n; j += kKeyTile) {
        const __m256i m0 = tail_mask(n - j), m1 = tail_mask(n - j - kLanes);
        const float* t = tiles + (j / kKeyTile) * tile_floats;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;
        for (int64_t d = 0; d < head_dim; ++d) {
            const __m256 qd = _mm256_set1_ps(q[d]);
            a0 = _mm256_fmadd_ps(qd, _mm256_maskload_ps(t + d * kKeyTile, m0), a0);
            a1 = _mm256_fmadd_ps(qd, _mm256_maskload_ps(t + d * kKeyTile + kLanes, m1), a1);
        }
        _mm256_maskstore_ps(scores + j, m0, _mm256_mul_ps(a0, vscale));
        _mm256_maskstore_ps(scores + j + kLanes, m1, _mm256_mul_ps(a1, vscale));
    }
}

inline float max_of(const float* x, int64_t n) {
    const __m256 lowest = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    __m256 max = lowest;
    for (int64_t j = 0; j < n; j += kLanes) {
        const __m256i m = tail_mask(n - j);
        max = _mm256_max_ps(max, _mm256_blendv_ps(lowest, _mm256_maskload_ps(x + j, m), _mm256_castsi256_ps(m)));
    }
    return reduce_max(max);
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

// out[d] += sum_j weights[j] * v[j * head_dim + d] in key order, 32 dimensions per pass over the rows.
inline void accumulate_values(const float* weights, const float* v, int64_t n, int64_t head_dim, float* out) {
    for (int64_t d = 0; d < head_dim; d += 4 * kLanes) {
        const __m256i m0 = tail_mask(head_dim - d), m1 = tail_mask(head_dim - d - kLanes),
                      m2 = tail_mask(head_dim - d - 2 * kLanes), m3 = tail_mask(head_dim - d - 3 * kLanes);
        __m256 a0 = _mm256_maskload_ps(out + d, m0), a1 = _mm256_maskload_ps(out + d + kLanes, m1),
               a2 = _mm256_maskload_ps(out + d + 2 * kLanes, m2), a3 = _mm256_maskload_ps(out + d + 3 * kLanes, m3);
        for (int64_t j = 0; j < n; ++j) {
            const __m256 w = _mm256_set1_ps(weights[j]);
            const float* row = v + j * head_dim + d;
            a0 = _mm256_fmadd_ps(w, _mm256_maskload_ps(row, m0), a0);
            a1 = _mm256_fmadd_ps(w, _mm256_maskload_ps(row + kLanes, m1), a1);
            a2 = _mm256_fmadd_ps(w, _mm256_maskload_ps(row + 2 * kLanes, m2), a2);
            a3 = _mm256_fmadd_ps(w, _mm256_maskload_ps(row + 3 * kLanes, m3), a3);
        }
        _mm256_maskstore_ps(out + d, m0, a0);
        _mm256_maskstore_ps(out + d + kLanes, m1, a1);
        _mm256_maskstore_ps(out + d + 2 * kLanes, m2, a2);
        _mm256_maskstore_ps(out + d + 3 * kLanes, m3, a3);
    }
}

#else

inline void key_scores(const float* q, const float* tiles, int64_t head_dim, int64_t n, float scale, float* scores) {
    for (int64_t j = 0; j < n; ++j) {
        const float* key = tiles + key_offset(j, head_dim);
        float sum = 0.0f;
        for (int64_t d = 0; d < head_dim; ++d) sum += q[d] * key[d * kKeyTile];
        scores[j] = sum * scale;
    }
}

inline float max_of(const float* x, int64_t n) {
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) max = std::fmax(max, x[j]);
    return max;
}

inline float exponentiate(float* scores, int64_t n, float max) {
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
        scores[j] = std::exp(scores[j] - max);
        sum += scores[j];
    }
    return sum;
}

inline void accumulate_values(const float* weights, const float* v, int64_t n, int64_t head_dim, float* out) {
    for (int64_t j = 0; j < n; ++j)
        for (int64_t d = 0; d < head_dim; ++d) out[d] += weights[j] * v[j * head_dim + d];
}

#endif

#if !defined(__AVX512BF16__)

// The heads of a group one after another (the AVX-512 path shares each key and value load among them).
inline void group_key_scores(const float* q, int64_t group, const float* tiles, int64_t head_dim, int64_t n,
                             float scale, float* scores, int64_t scores_stride) {
    for (int64_t g = 0; g < group; ++g)
        key_scores(q + g * head_dim, tiles, head_dim, n, scale, scores + g * scores_stride);
}

inline void group_accumulate_values(const float* weights, int64_t weights_stride, int64_t group, const float* v,
                                    int64_t n, int64_t head_dim, float* out) {
    for (int64_t g = 0; g < group; ++g)
        accumulate_values(weights + g * weights_stride, v, n, head_dim, out + g * head_dim);
}

#endif

}  // namespace

void causal_attention(const AttentionProblem& p, int64_t item_begin, int64_t item_end, float* scores) {
    // Keys per block: the block's keys, then its values (16 KiB each at head_dim 128), stay in L1 while
    // every query head of every row taken together goes over them, instead of coming from L2 once per
    // row. Two tiles, the score kernels' widest step, so blocks never split a step.
    constexpr int64_t kBlock = 2 * kKeyTile;
    const int64_t group = p.n_heads / p.n_kv_heads;
    const int64_t row_stride = p.n_heads * p.head_dim;
    const int64_t key_head_stride = key_tiles(p.capacity) * kKeyTile * p.head_dim;
    const int64_t value_head_stride = p.capacity * p.head_dim;
    const int64_t scores_stride = p.first_position + p.T;  // between heads; rows are group times that apart
    for (int64_t item = item_begin; item < item_end;) {
        // Rows first_row .. first_row + rows - 1 of one key/value head; row i has n_keys(i) keys.
        const int64_t kv_head = item / p.T, first_row = item % p.T;
        const int64_t rows = std::min({item_end - item, p.T - first_row, kAttentionRowsTogether});
        const auto n_keys = [&](int64_t i) { return p.first_position + first_row + i + 1; };
        const auto first_key = [&](int64_t i) {
            return p.window > 0 ? std::max<int64_t>(0, n_keys(i) - p.window) : int64_t{0};
        };
        // Rows are in position order, so row 0's window starts first.
        const int64_t first_block = first_key(0) / kBlock * kBlock;
        const auto q = [&](int64_t i) { return p.q + (first_row + i) * row_stride + kv_head * group * p.head_dim; };
        const auto out = [&](int64_t i) { return p.out + (first_row + i) * row_stride + kv_head * group * p.head_dim; };
        const auto row_scores = [&](int64_t i) { return scores + i * group * scores_stride; };
        const float* keys = p.k_cache + kv_head * key_head_stride;
        const float* values = p.v_cache + kv_head * value_head_stride;

        for (int64_t j = first_block; j < n_keys(rows - 1); j += kBlock)
            for (int64_t i = 0; i < rows; ++i)
                if (j < n_keys(i) && j + kBlock > first_key(i))
                    group_key_scores(q(i), group, keys + key_offset(j, p.head_dim), p.head_dim,
                                     std::min(kBlock, n_keys(i) - j), p.scale, row_scores(i) + j, scores_stride);
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t g = 0; g < group; ++g) {
                float* head_scores = row_scores(i) + g * scores_stride + first_key(i);
                const int64_t n = n_keys(i) - first_key(i);
                const float sum = exponentiate(head_scores, n, max_of(head_scores, n));
                const float inverse_sum = 1.0f / sum;
                for (int64_t j = 0; j < n; ++j) head_scores[j] *= inverse_sum;
            }
        for (int64_t i = 0; i < rows; ++i) std::fill(out(i), out(i) + group * p.head_dim, 0.0f);
        for (int64_t j = first_block; j < n_keys(rows - 1); j += kBlock)
            for (int64_t i = 0; i < rows; ++i) {
                const int64_t from = std::max(j, first_key(i)), to = std::min(j + kBlock, n_keys(i));
                if (from < to)
                    group_accumulate_values(row_scores(i) + from, scores_stride, group, values + from * p.head_dim,
                                            to - from, p.head_dim, out(i));
            }
        item += rows;
    }
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
