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
// kWeightRowsPerChunk), after all threads have prepared x, in the layout the kernels for w read, into
// the calling thread's scratch buffer. The threads prepare slices of the K columns cut as the rows of a
// product with N = K are, so when x is the output of such a product (the MLP's down projection reads
// silu(gate) * up) each thread converts the columns it wrote and has in cache.
template <class Body>
void parallel_for_prepared(const Linear& w, const float* x, int64_t M, int64_t n, Body body) {
    static_assert(kWeightRowsPerChunk % kPrepareColumns == 0, "column slices must start where prepare allows");
    std::byte* prepared = activation_scratch(static_cast<size_t>(prepared_bytes(w, M)));
    const auto prepare = [&](int64_t k_begin, int64_t k_end) { prepare_columns(w, x, M, k_begin, k_end, prepared); };
    const auto run_body = [&](int64_t begin, int64_t end) { body(static_cast<const void*>(prepared), begin, end); };
    parallel_for_after(w.in_features, kWeightRowsPerChunk, prepare, n, kWeightRowsPerChunk, run_body);
}

// The products of one call must read one prepared x: the same weight type, kernel plan and K > 0 (the
// kernels assume at least one step of K). The decoder's query/key/value and gate/up always do.
void check_shared_input(const Linear& first, const Linear& other, const char* where) {
    if (other.type != first.type || other.plan != first.plan || other.in_features != first.in_features ||
        first.in_features <= 0)
        throw std::invalid_argument(std::string(where) + ": the weights must share their type, kernel plan and an input width K > 0 (K = " +
                                    std::to_string(first.in_features) + " and " +
                                    std::to_string(other.in_features) + ")");
}

}  // namespace

namespace {

// The kernels w's plan gives products of M rows.
struct Kernels {
    const KernelTable& table;
    bool int8_activations;  // MXFP4 weights against int8 activations
};

Kernels kernels_for(const Linear& w, int64_t M) {
    static const KernelChoice kDefault;
    const KernelChoice& choice = w.plan ? w.plan->for_rows(M) : kDefault;
    return {choice.table ? *choice.table : kernels(),
            w.type == WeightType::mxfp4 && choice.mxfp4_activations == Mxfp4Activations::int8};
}

}  // namespace

int64_t prepared_bytes(const Linear& w, int64_t M) {
    const Kernels k = kernels_for(w, M);
    const int64_t K = w.in_features;
    if (k.int8_activations) return k.table.gemm_mxfp4_int8_prepared_bytes(M, K);
    return w.type == WeightType::bf16 ? k.table.gemm_bf16_prepared_bytes(M, K) : k.table.gemm_mxfp4_prepared_bytes(M, K);
}

void prepare_columns(const Linear& w, const float* x, int64_t M, int64_t k_begin, int64_t k_end, void* prepared) {
    const Kernels k = kernels_for(w, M);
    const auto prepare = k.int8_activations          ? k.table.gemm_mxfp4_int8_prepare
                         : w.type == WeightType::bf16 ? k.table.gemm_bf16_prepare
                                                      : k.table.gemm_mxfp4_prepare;
    prepare(x, M, w.in_features, k_begin, k_end, prepared);
}

void multiply_prepared(const Linear& w, const void* prepared, int64_t M, int64_t n_begin, int64_t n_end, float* y) {
    const Kernels k = kernels_for(w, M);
    const int64_t N = w.out_features, K = w.in_features;
    switch (w.type) {
        case WeightType::bf16: {
            const Bf16Weights weights{static_cast<const uint16_t*>(w.data), N, w.block_columns ? w.block_columns : K};
            k.table.gemm_bf16(prepared, M, K, weights, n_begin, n_end, y, N);
            return;
        }
        case WeightType::mxfp4:
            (k.int8_activations ? k.table.gemm_mxfp4_int8 : k.table.gemm_mxfp4)(
                prepared, M, K, static_cast<const uint8_t*>(w.data), n_begin, n_end, y, N);
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
    parallel_for_prepared(w, x, M, w.out_features, multiply);
}

void matmul_shared_input(std::initializer_list<Product> products, const float* x, int64_t M) {
    if (M <= 0 || products.size() == 0) return;
    const Product* first = products.begin();
    int64_t rows = 0;
    for (const Product& product : products) {
        check_shared_input(*first->w, *product.w, "matmul_shared_input");
        rows += product.w->out_features;
    }
    parallel_for_prepared(*first->w, x, M, rows, [&](const void* prepared, int64_t begin, int64_t end) {
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
    parallel_for_prepared(gate, x, M, N, [&](const void* prepared, int64_t begin, int64_t end) {
        multiply_prepared(gate, prepared, M, begin, end, gate_y);
        multiply_prepared(up, prepared, M, begin, end, up_y);
        for (int64_t m = 0; m < M; ++m)
            gate_activation(activation, gate_y + m * N + begin, up_y + m * N + begin, end - begin);
    });
}

}  // namespace mlspecqd
