// A linear layer's weight as the kernels hold it, and the threaded matrix products over it.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "kernels/kernels.h"

namespace mlspecqd {

enum class WeightType { bf16, mxfp4 };

// The activation of a gated MLP: act(x G^T) * (x U^T).
enum class GateActivation {
    silu,       // x / (1 + exp(-x)): SwiGLU (llama, qwen)
    gelu_tanh,  // 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))): GeGLU (gemma)
};

// What MXFP4 weights multiply: activations rounded to BF16 (exact products summed in float32, the path
// every target takes), or quantized to int8 per block of 32 with a float scale (integer dot products:
// cheaper where the CPU has no BF16 dot product, lossy, so for models whose outputs are only drafts).
enum class Mxfp4Activations { bf16, int8 };

// Which kernels multiply a weight: a kernel table (null: the active instruction set's) and what MXFP4
// weights multiply.
struct KernelChoice {
    const KernelTable* table = nullptr;
    Mxfp4Activations mxfp4_activations = Mxfp4Activations::bf16;
};

// A model's kernels by the rows M of a product, in four classes: 1, 2-4, 5-16, more. Only a plan that
// makes one choice for every class keeps a row's bits the same at every M, which a target needs (its
// outputs must equal decoding one token at a time); a draft's plan may differ by class.
struct KernelPlan {
    static constexpr int kRowClasses = 4;
    std::array<KernelChoice, kRowClasses> by_rows{};

    static int row_class(int64_t M) { return M <= 1 ? 0 : M <= 4 ? 1 : M <= 16 ? 2 : 3; }
    const KernelChoice& for_rows(int64_t M) const { return by_rows[static_cast<std::size_t>(row_class(M))]; }
};

struct Linear {
    WeightType type = WeightType::bf16;
    int64_t out_features = 0;  // N: rows of W
    int64_t in_features = 0;   // K: the reduction dimension
    const void* data = nullptr;  // BF16: N x K bit patterns, in K blocks of block_columns (Bf16Weights)
                                 // MXFP4: N x (K / 32 * 17) bytes of GGUF blocks (csrc/kernels/mxfp4.h)
    int64_t block_columns = 0;   // BF16: divides K; 0 means K (row-major)
    const KernelPlan* plan = nullptr;  // null: the active table with BF16 activations at every M
};

// y (M x N, row-major) = x (M x K, row-major) times W transposed, for any M >= 0. Threads split N,
// never K, so the bits of each output are the same for every M and every thread count. Activations
// are rounded to BF16 for every weight type but MXFP4 with int8 activations. The kernels are tuned for
// M up to 64; larger M reads W once per 64 rows.
void matmul(const Linear& w, const float* x, int64_t M, float* y);

// One product of a group that reads the same x: the weight and its output (M x w->out_features).
struct Product {
    const Linear* w;
    float* y;
};

// matmul for weights that read the same x (a layer's query, key and value), in one parallel region
// over their rows laid end to end: x is prepared once, and a small matrix does not pay a fork and join
// of the pool of its own. Each output has the same bits as from matmul. The weights must share their
// type, plan and K > 0 (std::invalid_argument otherwise).
void matmul_shared_input(std::initializer_list<Product> products, const float* x, int64_t M);

// The gated MLP's first half: gate_y <- act(x G^T) * (x U^T), up_y <- x U^T (M x N each). One parallel
// region: each thread takes the same rows of G and U and applies act(gate) * up to its own columns at
// once. Each output has the same bits as matmul followed by the elementwise kernel of `activation`
// (silu_multiply or gelu_tanh_multiply). G and U must have one shape and type (std::invalid_argument
// otherwise).
void matmul_gated(const Linear& gate, const Linear& up, GateActivation activation, const float* x, int64_t M,
                  float* gate_y, float* up_y);

// The steps the products above take, for callers that share out work of their own in one parallel
// region (the expert products of csrc/model/moe.cpp). A product is: prepare every column of x, then
// multiply_prepared over slices of W's rows; each output has the bits matmul gives it.
// Bytes that x (M x w.in_features) takes prepared for w.
int64_t prepared_bytes(const Linear& w, int64_t M);
// Prepares columns [k_begin, k_end) of x (M x K = w.in_features) for w into `prepared` (64-byte aligned,
// prepared_bytes long); k_begin is a multiple of kPrepareColumns (kernels/kernels.h), k_end one or K.
// Weights of one type and plan read the same prepared x.
void prepare_columns(const Linear& w, const float* x, int64_t M, int64_t k_begin, int64_t k_end, void* prepared);
// Columns [n_begin, n_end) of y (M x w.out_features) = x W^T, from x prepared for w, on the calling thread.
void multiply_prepared(const Linear& w, const void* prepared, int64_t M, int64_t n_begin, int64_t n_end, float* y);
// gate[i] <- act(gate[i]) * up[i] for i < n: the elementwise step of matmul_gated.
void gate_activation(GateActivation activation, float* gate, const float* up, int64_t n);

}  // namespace mlspecqd
