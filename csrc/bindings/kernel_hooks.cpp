// Single kernels, called from Python by tests and benchmarks to compare each with its reference; the
// package itself never calls them. Each runs the active instruction set's kernels.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "cpu.h"
#include "kernels/kernels.h"
#include "kernels/linear.h"
#include "kernels/stream_read.h"
#include "model/moe.h"

using namespace mlspecqd;
using namespace mlspecqd::bindings;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// A new float32 (M, N) array, or `out` checked to be a writeable C-contiguous one of that shape.
py::array output_array(const py::object& out, int64_t M, int64_t N, const std::string& where) {
    if (out.is_none()) return FloatArray({M, N});
    py::array y = py::array::ensure(out);
    if (!y || !y.dtype().is(py::dtype::of<float>()) || y.ndim() != 2 || y.shape(0) != M || y.shape(1) != N ||
        !(y.flags() & py::array::c_style) || !y.writeable())
        throw std::invalid_argument(where + ": out must be a writeable C-contiguous float32 array of shape (" +
                                    std::to_string(M) + ", " + std::to_string(N) + ")");
    return y;
}

// Runs a checked matrix product with the GIL released, on the kernels of `isa` (None: the active
// instruction set) with MXFP4 weights multiplying `activations`; y is the (M, N) float32 output.
py::array run_matmul(Linear linear, const FloatArray& x, py::array y, const std::optional<std::string>& isa,
                     const std::string& activations, const std::string& where) {
    KernelPlan plan;
    plan.by_rows.fill(kernel_choice_from_names(isa, activations, where));
    linear.plan = &plan;
    float* y_data = static_cast<float*>(y.mutable_data());
    {
        py::gil_scoped_release release;
        matmul(linear, x.data(), x.shape(0), y_data);
    }
    return y;
}

// Matrix product against BF16 weights, for tests and benchmarks of the kernel itself. w is (N, K)
// row-major or (K / B, N, B): K in blocks of B columns, stored one after another (Bf16Weights). `out`,
// when given, must be a C-contiguous float32 (M, N) array; it is written in place and returned.
py::array matmul_bf16(const FloatArray& x, const py::array& w, const py::object& out, const std::optional<std::string>& isa) {
    if (x.ndim() != 2) throw std::invalid_argument("matmul_bf16: x must be 2-D (M x K), got " + std::to_string(x.ndim()) + "-D");
    if (w.ndim() != 2 && w.ndim() != 3)
        throw std::invalid_argument("matmul_bf16: w must be 2-D (N x K) or 3-D (K blocks x N x block columns), got " +
                                    std::to_string(w.ndim()) + "-D");
    if (!w.dtype().is(py::dtype::of<uint16_t>()))
        throw std::invalid_argument("matmul_bf16: w must hold BF16 bit patterns as uint16, got " +
                                    std::string(py::str(w.dtype())));
    if (!(w.flags() & py::array::c_style)) throw std::invalid_argument("matmul_bf16: w must be C-contiguous");
    const bool blocked = w.ndim() == 3;
    const int64_t M = x.shape(0), K = x.shape(1), N = w.shape(blocked ? 1 : 0);
    const int64_t w_K = blocked ? w.shape(0) * w.shape(2) : w.shape(1);
    if (w_K != K)
        throw std::invalid_argument("matmul_bf16: x has K=" + std::to_string(K) + " but w " + shape_text(w) +
                                    " has K=" + std::to_string(w_K));
    if (K == 0 || N == 0) throw std::invalid_argument("matmul_bf16: w is empty (N=" + std::to_string(N) + ", K=" + std::to_string(K) + ")");
    py::array y = output_array(out, M, N, "matmul_bf16");
    return run_matmul(Linear{WeightType::bf16, N, K, w.data(), blocked ? w.shape(2) : K}, x, y, isa, "bf16", "matmul_bf16");
}

// Matrix product against MXFP4 weights: blocks (N, K / 32 * 17) uint8; `out` as for matmul_bf16.
py::array matmul_mxfp4(const FloatArray& x, const py::array& blocks, int64_t K, const py::object& out,
                       const std::string& activations, const std::optional<std::string>& isa) {
    if (!blocks.dtype().is(py::dtype::of<uint8_t>()) || blocks.ndim() != 2)
        throw std::invalid_argument("matmul_mxfp4: blocks must be a 2-D uint8 array, got " +
                                    std::string(py::str(blocks.dtype())) + " " + shape_text(blocks));
    const int64_t row_bytes = mxfp4_row_bytes(K, "matmul_mxfp4");
    if (blocks.shape(1) != row_bytes)
        throw std::invalid_argument("matmul_mxfp4: blocks " + shape_text(blocks) + " do not hold K=" +
                                    std::to_string(K) + " values per row (expected " + std::to_string(row_bytes) +
                                    " bytes)");
    if (x.ndim() != 2 || x.shape(1) != K)
        throw std::invalid_argument("matmul_mxfp4: x " + shape_text(x) + " is not (M, K=" + std::to_string(K) + ")");
    const auto w = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(blocks);
    const int64_t M = x.shape(0), N = w.shape(0);
    py::array y = output_array(out, M, N, "matmul_mxfp4");
    return run_matmul(Linear{WeightType::mxfp4, N, K, w.data()}, x, y, isa, activations, "matmul_mxfp4");
}

// The attention kernel alone, for tests: q (T, n_heads, head_dim) at positions first_position.. against
// caches k, v (n_kv_heads, capacity, head_dim) that hold positions 0 .. first_position + T - 1 (k is
// copied into the kernel's key tiles); window as AttentionProblem::window.
FloatArray causal_attention(const FloatArray& q, const FloatArray& k, const FloatArray& v, int64_t first_position,
                            int64_t window) {
    if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3)
        throw std::invalid_argument("causal_attention wants 3-D q (T, heads, d), k and v (kv_heads, capacity, d)");
    AttentionProblem p;
    p.T = q.shape(0);
    p.n_heads = q.shape(1);
    p.head_dim = q.shape(2);
    p.n_kv_heads = k.shape(0);
    p.capacity = k.shape(1);
    p.first_position = first_position;
    p.scale = float(1.0 / std::sqrt(double(p.head_dim)));
    p.window = window;
    if (window < 0)
        throw std::invalid_argument("causal_attention: window = " + std::to_string(window) + " is negative");
    const bool shapes_fit = k.shape(2) == p.head_dim && v.shape(0) == p.n_kv_heads && v.shape(1) == p.capacity &&
                            v.shape(2) == p.head_dim && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0 &&
                            first_position >= 0 && first_position + p.T <= p.capacity;
    if (!shapes_fit) throw std::invalid_argument("causal_attention: shapes " + shape_text(q) + ", " + shape_text(k) + ", " +
                                                 shape_text(v) + " and first_position do not fit together");
    const int64_t tile_floats = key_tiles(p.capacity) * kKeyTile * p.head_dim;
    std::vector<float> key_tiles_copy(p.n_kv_heads * tile_floats);
    for (int64_t h = 0; h < p.n_kv_heads; ++h)
        for (int64_t position = 0; position < p.capacity; ++position)
            for (int64_t d = 0; d < p.head_dim; ++d)
                key_tiles_copy[h * tile_floats + key_offset(position, p.head_dim) + d * kKeyTile] = k.at(h, position, d);
    FloatArray out({p.T, p.n_heads, p.head_dim});
    p.q = q.data();
    p.k_cache = key_tiles_copy.data();
    p.v_cache = v.data();
    p.out = out.mutable_data();
    std::vector<float> scores(attention_scores_floats(p));
    kernels().causal_attention(p, 0, p.n_kv_heads * p.T, scores.data());
    return out;
}

// A gated MLP's activation kernel alone, for tests: act(gate) * up, elementwise, as a new array.
FloatArray gated_activation(const FloatArray& gate, const FloatArray& up, void (*kernel)(float*, const float*, int64_t),
                            const char* name) {
    if (gate.ndim() != 1 || up.ndim() != 1 || gate.shape(0) != up.shape(0))
        throw std::invalid_argument(std::string(name) + " wants two 1-D arrays of one length, got " + shape_text(gate) +
                                    " and " + shape_text(up));
    FloatArray out({gate.shape(0)});
    std::copy(gate.data(), gate.data() + gate.shape(0), out.mutable_data());
    kernel(out.mutable_data(), up.data(), gate.shape(0));
    return out;
}

FloatArray silu_multiply(const FloatArray& gate, const FloatArray& up) {
    return gated_activation(gate, up, kernels().silu_multiply, "silu_multiply");
}

FloatArray gelu_tanh_multiply(const FloatArray& gate, const FloatArray& up) {
    return gated_activation(gate, up, kernels().gelu_tanh_multiply, "gelu_tanh_multiply");
}

// The streaming-read baseline over a buffer of whole, aligned 64-bit words, with the GIL released.
uint64_t stream_read_array(const py::array& buffer) {
    if (!(buffer.flags() & py::array::c_style)) throw std::invalid_argument("stream_read: buffer must be C-contiguous");
    if (buffer.nbytes() % 8 != 0 || reinterpret_cast<uintptr_t>(buffer.data()) % 8 != 0)
        throw std::invalid_argument("stream_read: buffer must be 8-byte aligned and a whole number of 64-bit words");
    const auto* words = static_cast<const uint64_t*>(buffer.data());
    const int64_t count = buffer.nbytes() / 8;
    py::gil_scoped_release release;
    return stream_read(words, count);
}

// The MoE block without a shared expert on h (T x d): router (E x d) float32, gate and up experts of
// F x d, down experts of d x F, each stack an array or a list of one array per expert (see expert_stack).
// Returns (out T x d, experts T x n_used, weights T x n_used).
py::tuple moe_block(const FloatArray& h, const FloatArray& router, const py::object& gate, const py::object& up,
                    const py::object& down, int64_t n_used, bool normalized) {
    if (h.ndim() != 2 || router.ndim() != 2 || router.shape(1) != h.shape(1))
        throw std::invalid_argument("moe_block: h (T, d) and router (E, d) do not fit: h " + shape_text(h) +
                                    ", router " + shape_text(router));
    ModelConfig c;
    c.d_model = h.shape(1);
    c.n_experts = router.shape(0);
    c.n_experts_used = n_used;
    // F: rows of a gate expert, from the stack (E, F, K) or the first array (F, K) of a list.
    const bool listed = py::isinstance<py::list>(gate) && py::len(gate) > 0;
    const py::object first_gate = listed ? py::object(py::reinterpret_borrow<py::list>(gate)[0]) : gate;
    if (!py::isinstance<py::array>(first_gate) || py::reinterpret_borrow<py::array>(first_gate).ndim() != (listed ? 2 : 3))
        throw std::invalid_argument("moe_block: gate must be an array (E, F, d) or a list of E arrays (F, d)");
    c.expert_d_ff = py::reinterpret_borrow<py::array>(first_gate).shape(listed ? 0 : 1);
    c.expert_weights_normalized = normalized;
    if (n_used < 1 || n_used > c.n_experts)
        throw std::invalid_argument("moe_block: n_used = " + std::to_string(n_used) + " is outside [1, " +
                                    std::to_string(c.n_experts) + "]");
    MoeWeights w;
    w.router = router.data();
    w.gate = expert_stack(gate, c.n_experts, c.expert_d_ff, c.d_model, "moe_block: gate");
    w.up = expert_stack(up, c.n_experts, c.expert_d_ff, c.d_model, "moe_block: up");
    w.down = expert_stack(down, c.n_experts, c.d_model, c.expert_d_ff, "moe_block: down");
    for (int64_t e = 0; e < c.n_experts; ++e)
        if (w.gate.expert(e).type != w.up.expert(e).type)
            throw std::invalid_argument("moe_block: gate and up expert " + std::to_string(e) + " must have one type");
    const int64_t T = h.shape(0);
    FloatArray out({T, c.d_model}), logits({T, c.n_experts}), weights({T, n_used});
    py::array_t<int32_t> experts({T, n_used});
    {
        py::gil_scoped_release release;
        MoeBlock block;
        std::vector<int64_t> expert_rows(static_cast<size_t>(c.n_experts));
        const float* y = block.forward(c, w, h.data(), T, expert_rows.data());
        std::copy(y, y + T * c.d_model, out.mutable_data());
        route(c, w.router, h.data(), T, logits.mutable_data(), experts.mutable_data(), weights.mutable_data());
    }
    return py::make_tuple(out, experts, weights);
}

}  // namespace

namespace mlspecqd::bindings {

void register_kernel_hooks(py::module_& m) {
    m.def("matmul_bf16", &matmul_bf16, py::arg("x"), py::arg("w"), py::arg("out") = py::none(),
          py::arg("isa") = py::none(),
          "y = bf16(x) @ w.T with w (N, K) uint16 BF16 bits; float32 sums, batch-invariant bits; on the kernels of "
          "`isa` (default: the active instruction set).");
    m.def("matmul_mxfp4", &matmul_mxfp4, py::arg("x"), py::arg("blocks"), py::arg("K"), py::arg("out") = py::none(),
          py::arg("activations") = "bf16", py::arg("isa") = py::none(),
          "y = x' W^T with W given as MXFP4 blocks (N, K / 32 * 17) and x' = bf16(x), or with activations='int8' x "
          "quantized per block of 32 to int8 with a float scale; out and isa as for matmul_bf16.");
    m.def("causal_attention", &causal_attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("first_position"),
          py::arg("window") = 0,
          "The active instruction set's attention kernel on its own (for tests); window > 0: sliding window.");
    m.def("silu_multiply", &silu_multiply, py::arg("gate"), py::arg("up"),
          "The active instruction set's silu(gate) * up kernel on its own (for tests).");
    m.def("gelu_tanh_multiply", &gelu_tanh_multiply, py::arg("gate"), py::arg("up"),
          "The active instruction set's gelu_tanh(gate) * up kernel on its own (for tests).");
    m.def("moe_block", &moe_block, py::arg("h"), py::arg("router"), py::arg("gate"), py::arg("up"), py::arg("down"),
          py::arg("n_used"), py::arg("normalized"),
          "One Mixture-of-Experts block (no shared expert) on h, each expert stack an array (E, N, K) or a list "
          "of one array per expert; returns (out, experts, weights) (for tests).");
    m.def("stream_read", &stream_read_array, py::arg("buffer"),
          "Read a buffer once on every thread; returns the wrapping sum of its 64-bit words.");
}

}  // namespace mlspecqd::bindings
