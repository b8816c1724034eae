#include "kernels/linear.h"

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>

#include "cache_aligned.h"
#include "cpu.h"
#include "threads.h"

namespace mlspecqd {

namespace {

// Thread slices of N are multiples of this many rows, so they never share a cache line of y.
constexpr int64_t kWeightRowsPerChunk = 64;

// The calling thread's buffer for converted activations: the pool threads fill it and then read it,
// and steady-state decoding reuses it instead of allocating on every call.
std::byte* activation_scratch(size_t bytes) {
    thread_local CacheAlignedVector<std::byte> buffer;
    if (buffer.size() < bytes) buffer.resize(bytes);
    return buffer.data();
}

// Calls body(prepared, begin, end) on thread slices of [0, n) (edges at multiples of
// kWeightRowsPerChunk), after all threads have prepared x, in the layout the kernels for `type` read,
// into the calling thread's scratch buffer. The threads prepare slices of the K columns cut as the
// rows of a product with N = K are, so when x is the output of such a product (the MLP's down
// projection reads silu(gate) * up) each thread converts the columns it wrote and has in cache.
template <class Body>
void parallel_for_prepared(WeightType type, const float* x, int64_t M, int64_t K, int64_t n, Body body) {
    static_assert(kWeightRowsPerChunk % kPrepareColumns == 0, "column slices must start where prepare allows");
    std::byte* prepared = activation_scratch(static_cast<size_t>(prepared_bytes(type, M, K)));
    const auto prepare = [&](int64_t k_begin, int64_t k_end) {
        prepare_columns(type, x, M, K, k_begin, k_end, prepared);
    };
    const auto run_body = [&](int64_t begin, int64_t end) { body(static_cast<const void*>(prepared), begin, end); };
    parallel_for_after(K, kWeightRowsPerChunk, prepare, n, kWeightRowsPerChunk, run_body);
}

// The products of one call must read one prepared x: the same weight type and the same K > 0 (the
// kernels assume at least one step of K). The decoder's query/key/value and gate/up always do.
void check_shared_input(const Linear& first, const Linear& other, const char* where) {
    if (other.type != first.type || other.in_features != first.in_features || first.in_features <= 0)
        throw std::invalid_argument(std::string(where) + ": the weights must share their type and an input width K > 0 (K = " +
                                    std::to_string(first.in_features) + " and " +
                                    std::to_string(other.in_features) + ")");
}

}  // namespace

int64_t prepared_bytes(WeightType type, int64_t M, int64_t K) {
    const KernelTable& k = kernels();
    return type == WeightType::bf16 ? k.gemm_bf16_prepared_bytes(M, K) : k.gemm_mxfp4_prepared_bytes(M, K);
}

void prepare_columns(WeightType type, const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end,
                     void* prepared) {
    const KernelTable& k = kernels();
    (type == WeightType::bf16 ? k.gemm_bf16_prepare : k.gemm_mxfp4_prepare)(x, M, K, k_begin, k_end, prepared);
}

void multiply_prepared(const Linear& w, const void* prepared, int64_t M, int64_t n_begin, int64_t n_end, float* y) {
    const KernelTable& k = kernels();
    const int64_t N = w.out_features, K = w.in_features;
    switch (w.type) {
        case WeightType::bf16: {
            const Bf16Weights weights{static_cast<const uint16_t*>(w.data), N, w.block_columns ? w.block_columns : K};
            k.gemm_bf16(prepared, M, K, weights, n_begin, n_end, y, N);
            return;
        }
        case WeightType::mxfp4:
            k.gemm_mxfp4(prepared, M, K, static_cast<const uint8_t*>(w.data), n_begin, n_end, y, N);
            return;
    }
}

void gate_activation(GateActivation activation, float* gate, const float* up, int64_t n) {
    const KernelTable& k = kernels();
    (activation == GateActivation::gelu_tanh ? k.gelu_tanh_multiply : k.silu_multiply)(gate, up, n);
}

void matmul(const Linear& w, const float* x, int64_t M, float* y) {
    if (M <= 0 || w.out_features <= 0) return;
    if (w.in_features <= 0) {  // empty sums
        std::fill(y, y + M * w.out_features, 0.0f);
        return;
    }
    const auto multiply = [&](const void* prepared, int64_t begin, int64_t end) {
        multiply_prepared(w, prepared, M, begin, end, y);
    };
    parallel_for_prepared(w.type, x, M, w.in_features, w.out_features, multiply);
}

void matmul_shared_input(std::initializer_list<Product> products, const float* x, int64_t M) {
    if (M <= 0 || products.size() == 0) return;
    const Product* first = products.begin();
    int64_t rows = 0;
    for (const Product& product : products) {
        check_shared_input(*first->w, *product.w, "matmul_shared_input");
        rows += product.w->out_features;
    }
    const int64_t K = first->w->in_features;
    parallel_for_prepared(first->w->type, x, M, K, rows, [&](const void* prepared, int64_t begin, int64_t end) {
        int64_t offset = 0;  // the first row of `product` in the rows laid end to end
        for (const Product& product : products) {
            const int64_t n_begin = std::max(begin - offset, int64_t{0});
            const int64_t n_end = std::min(end - offset, product.w->out_features);
            if (n_begin < n_end) multiply_prepared(*product.w, prepared, M, n_begin, n_end, product.y);
            offset += product.w->out_features;
        }
    });
}

void matmul_gated(const Linear& gate, const Linear& up, GateActivation activation, const float* x, int64_t M,
                  float* gate_y, float* up_y) {
    const int64_t N = gate.out_features;
    if (M <= 0 || N <= 0) return;
    check_shared_input(gate, up, "matmul_gated");
    if (up.out_features != N)
        throw std::invalid_argument("matmul_gated: gate has " + std::to_string(N) + " rows, up " +
                                    std::to_string(up.out_features));
    parallel_for_prepared(gate.type, x, M, gate.in_features, N, [&](const void* prepared, int64_t begin, int64_t end) {
        multiply_prepared(gate, prepared, M, begin, end, gate_y);
        multiply_prepared(up, prepared, M, begin, end, up_y);
        for (int64_t m = 0; m < M; ++m)
            gate_activation(activation, gate_y + m * N + begin, up_y + m * N + begin, end - begin);
    });
}

}  // namespace mlspecqd
