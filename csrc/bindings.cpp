// The only file that knows pybind11: it turns Python objects into the plain C++ types of csrc/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cache_aligned.h"
#include "cpu.h"
#include "gguf/dequantize.h"
#include "kernels/bf16.h"
#include "kernels/linear.h"
#include "kernels/mxfp4.h"
#include "model/decoder.h"
#include "kernels/stream_read.h"
#include "threads.h"

namespace py = pybind11;
using namespace mlspecqd;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using Bf16Array = py::array_t<uint16_t, py::array::c_style>;

std::map<std::string, bool> features_dict() {
    const CpuFeatures& f = cpu_features();
    return {{"avx2", f.avx2},           {"fma", f.fma},
            {"f16c", f.f16c},           {"avx512f", f.avx512f},
            {"avx512bw", f.avx512bw},   {"avx512vl", f.avx512vl},
            {"avx512dq", f.avx512dq},   {"avx512_bf16", f.avx512_bf16},
            {"avx512_vnni", f.avx512_vnni}, {"avx512_vbmi", f.avx512_vbmi}};
}

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

// A new 1-D array whose data start on a cache line. NumPy aligns its data to 16 bytes only, and the
// GEMM's 64-byte loads of a weight row that starts inside a line each touch two lines: a 9-token forward
// of the 1.5B took 56.9 ms from such rows against 54.1 ms from aligned ones (fast memory).
template <class T>
py::array_t<T> cache_aligned_array(int64_t n) {
    constexpr auto kLine = static_cast<uintptr_t>(kCacheLine);
    py::array_t<uint8_t> storage(static_cast<py::ssize_t>(n * sizeof(T) + kLine));
    uint8_t* start = storage.mutable_data();
    const uintptr_t offset = (kLine - reinterpret_cast<uintptr_t>(start) % kLine) % kLine;
    return py::array_t<T>({n}, {static_cast<py::ssize_t>(sizeof(T))}, reinterpret_cast<T*>(start + offset), storage);
}

// An array's shape as Python prints it, for error messages.
std::string shape_text(const py::array& a) {
    std::string text = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) text += (i ? ", " : "") + std::to_string(a.shape(i));
    return text + (a.ndim() == 1 ? ",)" : ")");
}

// BF16 GEMM and the streaming-read baseline
// Runs a checked matrix product with the GIL released; y is the (M, N) float32 output.
py::array run_matmul(const Linear& linear, const FloatArray& x, py::array y) {
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
py::array matmul_bf16(const FloatArray& x, const py::array& w, const py::object& out) {
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
    return run_matmul(Linear{WeightType::bf16, N, K, w.data(), blocked ? w.shape(2) : K}, x, y);
}

// Bytes of one row of K values as MXFP4 blocks; refuses a K the format cannot hold.
int64_t mxfp4_row_bytes(int64_t K, const std::string& where) {
    if (K <= 0 || K % kMxfp4BlockValues != 0)
        throw std::invalid_argument(where + ": K=" + std::to_string(K) + " is not a positive multiple of " +
                                    std::to_string(kMxfp4BlockValues) + " (the MXFP4 block size)");
    return K / kMxfp4BlockValues * kMxfp4BlockBytes;
}

// Decoder: _native.Model

// The model's weights as NumPy arrays by GGUF tensor name, used in place (never copied).
class NumpyTensors : public TensorSource {
public:
    explicit NumpyTensors(const py::dict& weights) {
        for (auto item : weights) {
            const std::string name = py::str(item.first);
            if (!py::isinstance<py::array>(item.second))
                throw std::invalid_argument("weights['" + name + "'] is not a NumPy array");
            arrays_.emplace(name, py::reinterpret_borrow<py::array>(item.second));
        }
    }

    Linear linear(const std::string& name, int64_t rows, int64_t cols) const override {
        const py::array& a = find(name);
        if (a.dtype().is(py::dtype::of<uint16_t>())) {  // (N, K), or (K / B, N, B) in column blocks
            if (a.ndim() != 3) {
                require_shape(name, a, {rows, cols});
                return Linear{WeightType::bf16, rows, cols, a.data()};
            }
            const int64_t block_columns = a.shape(2);
            if (block_columns <= 0 || cols % block_columns != 0)
                throw std::invalid_argument("weights['" + name + "'] has shape " + shape_text(a) + ": blocks of " +
                                            std::to_string(block_columns) + " columns do not divide K = " +
                                            std::to_string(cols));
            require_shape(name, a, {cols / block_columns, rows, block_columns});
            return Linear{WeightType::bf16, rows, cols, a.data(), block_columns};
        }
        if (a.dtype().is(py::dtype::of<uint8_t>())) {
            require_shape(name, a, {rows, mxfp4_row_bytes(cols, "weights['" + name + "']")});
            return Linear{WeightType::mxfp4, rows, cols, a.data()};
        }
        throw std::invalid_argument("weights['" + name + "']: a linear weight must be uint16 (BF16 bits) or uint8 "
                                    "(MXFP4 blocks), got " + std::string(py::str(a.dtype())));
    }

    const uint16_t* bf16_matrix(const std::string& name, int64_t rows, int64_t cols) const override {
        const py::array& a = find(name);
        if (!a.dtype().is(py::dtype::of<uint16_t>()))
            throw std::invalid_argument("weights['" + name + "'] must be uint16 (BF16 bits), got " +
                                        std::string(py::str(a.dtype())));
        require_shape(name, a, {rows, cols});
        return static_cast<const uint16_t*>(a.data());
    }

    const float* vector(const std::string& name, int64_t n) const override {
        const py::array& a = find(name);
        if (!a.dtype().is(py::dtype::of<float>()))
            throw std::invalid_argument("weights['" + name + "'] must be float32, got " + std::string(py::str(a.dtype())));
        require_shape(name, a, {n});
        return static_cast<const float*>(a.data());
    }

    // The arrays the decoder points into; whoever holds the decoder holds these.
    std::vector<py::array> arrays() const {
        std::vector<py::array> out;
        for (const auto& entry : arrays_) out.push_back(entry.second);
        return out;
    }

private:
    const py::array& find(const std::string& name) const {
        const auto it = arrays_.find(name);
        if (it == arrays_.end()) throw std::invalid_argument("weights: missing tensor '" + name + "'");
        return it->second;
    }

    static void require_shape(const std::string& name, const py::array& a, const std::vector<int64_t>& shape) {
        bool same = a.ndim() == py::ssize_t(shape.size());
        for (size_t i = 0; same && i < shape.size(); ++i) same = a.shape(i) == shape[i];
        if (!same) {
            std::string expected = "(";
            for (size_t i = 0; i < shape.size(); ++i) expected += (i ? ", " : "") + std::to_string(shape[i]);
            expected += shape.size() == 1 ? ",)" : ")";
            throw std::invalid_argument("weights['" + name + "'] has shape " + shape_text(a) + ", expected " + expected);
        }
        if (!(a.flags() & py::array::c_style))
            throw std::invalid_argument("weights['" + name + "'] must be C-contiguous (it is used in place)");
    }

    std::map<std::string, py::array> arrays_;
};

template <class T>
T config_value(const py::dict& config, const char* key) {
    if (!config.contains(key)) throw std::invalid_argument(std::string("model config: missing '") + key + "'");
    try {
        return config[key].cast<T>();
    } catch (const py::cast_error&) {
        throw std::invalid_argument(std::string("model config: '") + key + "' has the wrong type");
    }
}

// Reads the fields of mlspecqd.gguf.ModelSpec (as dataclasses.asdict gives them); other keys are ignored.
ModelConfig model_config_from_dict(const py::dict& d) {
    ModelConfig c;
    c.n_layers = config_value<int64_t>(d, "n_layers");
    c.d_model = config_value<int64_t>(d, "d_model");
    c.n_heads = config_value<int64_t>(d, "n_heads");
    c.n_kv_heads = config_value<int64_t>(d, "n_kv_heads");
    c.head_dim = config_value<int64_t>(d, "head_dim");
    c.d_ff = config_value<int64_t>(d, "d_ff");
    c.vocab_size = config_value<int64_t>(d, "vocab_size");
    c.rope_base = config_value<double>(d, "rope_base");
    c.rope_dim = config_value<int64_t>(d, "rope_dim");
    c.rope_style = rope_style_from_name(config_value<std::string>(d, "rope_style"));
    c.norm_eps = config_value<double>(d, "norm_eps");
    c.attention_scale = config_value<double>(d, "attention_scale");
    c.tied_output = config_value<bool>(d, "tied_output");
    c.qkv_bias = config_value<bool>(d, "qkv_bias");
    c.qk_norm = config_value<bool>(d, "qk_norm");
    const py::dict scaling = config_value<py::dict>(d, "rope_scaling");
    c.rope_scaling.kind = rope_scaling_kind_from_name(config_value<std::string>(scaling, "kind"));
    if (c.rope_scaling.kind == RopeScalingKind::linear) c.rope_scaling.factor = config_value<double>(scaling, "factor");
    return c;
}

// _native.Model: the decoder plus the NumPy arrays its weights live in.
class NativeModel {
public:
    NativeModel(const py::dict& config, const py::dict& weights, int64_t max_context) {
        const NumpyTensors tensors(weights);
        decoder_ = std::make_unique<Decoder>(model_config_from_dict(config), tensors, max_context);
        arrays_ = tensors.arrays();
    }

    py::array_t<float> forward(const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& tokens,
                               int64_t start, bool all_logits) {
        if (tokens.ndim() != 1)
            throw std::invalid_argument("forward: tokens must be 1-D, got shape " + shape_text(tokens));
        const int64_t T = tokens.shape(0);
        decoder_->check_forward(tokens.data(), T, start);  // before allocating T x vocab logits
        py::array_t<float> logits({all_logits ? T : int64_t{1}, decoder_->config().vocab_size});
        {
            py::gil_scoped_release release;
            decoder_->forward(tokens.data(), T, start, all_logits, logits.mutable_data());
        }
        return logits;
    }

    void truncate(int64_t n) { decoder_->truncate(n); }
    int64_t n_past() const { return decoder_->n_past(); }
    int64_t max_context() const { return decoder_->max_context(); }
    int64_t vocab_size() const { return decoder_->config().vocab_size; }

private:
    std::unique_ptr<Decoder> decoder_;
    std::vector<py::array> arrays_;  // keeps the weights the decoder points into alive
};

// The attention kernel alone, for tests: q (T, n_heads, head_dim) at positions first_position.. against
// caches k, v (n_kv_heads, capacity, head_dim) that hold positions 0 .. first_position + T - 1 (k is
// copied into the kernel's key tiles).
FloatArray causal_attention(const FloatArray& q, const FloatArray& k, const FloatArray& v, int64_t first_position) {
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

// The gated MLP's activation kernel alone, for tests: silu(gate) * up, elementwise, as a new array.
FloatArray silu_multiply(const FloatArray& gate, const FloatArray& up) {
    if (gate.ndim() != 1 || up.ndim() != 1 || gate.shape(0) != up.shape(0))
        throw std::invalid_argument("silu_multiply wants two 1-D arrays of one length, got " + shape_text(gate) +
                                    " and " + shape_text(up));
    FloatArray out({gate.shape(0)});
    std::copy(gate.data(), gate.data() + gate.shape(0), out.mutable_data());
    kernels().silu_multiply(out.mutable_data(), up.data(), gate.shape(0));
    return out;
}

uint64_t stream_read_array(const py::array& buffer) {
    if (!(buffer.flags() & py::array::c_style)) throw std::invalid_argument("stream_read: buffer must be C-contiguous");
    if (buffer.nbytes() % 8 != 0 || reinterpret_cast<uintptr_t>(buffer.data()) % 8 != 0)
        throw std::invalid_argument("stream_read: buffer must be 8-byte aligned and a whole number of 64-bit words");
    const auto* words = static_cast<const uint64_t*>(buffer.data());
    const int64_t count = buffer.nbytes() / 8;
    py::gil_scoped_release release;
    return stream_read(words, count);
}

// MXFP4 weights: the cast and the matrix product, for quant.py, tests and benchmarks.

// weights: float32 or BF16 bit patterns (uint16), shape (..., K) -> uint8 blocks, shape (..., K / 32 * 17).
py::array_t<uint8_t> cast_mxfp4(const py::array& weights, const std::string& name) {
    const bool is_f32 = weights.dtype().is(py::dtype::of<float>());
    if (!is_f32 && !weights.dtype().is(py::dtype::of<uint16_t>()))
        throw std::invalid_argument(name + ": cannot cast dtype " + std::string(py::str(weights.dtype())) +
                                    " to MXFP4 (expected float32, or uint16 holding BF16)");
    if (weights.ndim() < 1) throw std::invalid_argument(name + ": cannot cast a 0-d array to MXFP4");
    const int64_t K = weights.shape(weights.ndim() - 1);
    std::vector<py::ssize_t> shape(weights.shape(), weights.shape() + weights.ndim());
    shape.back() = mxfp4_row_bytes(K, name + " " + shape_text(weights));
    py::array_t<uint8_t> blocks(shape);
    const int64_t n_blocks = weights.size() / kMxfp4BlockValues;
    int64_t bad;
    float bad_value;
    if (is_f32) {
        const auto values = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(weights);
        py::gil_scoped_release release;
        bad = cast_to_mxfp4(values.data(), n_blocks, blocks.mutable_data());
        bad_value = bad >= 0 ? values.data()[bad] : 0.0f;
    } else {
        const auto values = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>::ensure(weights);
        py::gil_scoped_release release;
        bad = cast_to_mxfp4(values.data(), n_blocks, blocks.mutable_data());
        bad_value = bad >= 0 ? bf16_to_float(values.data()[bad]) : 0.0f;
    }
    if (bad >= 0) {
        std::string index;
        for (py::ssize_t d = weights.ndim() - 1; d >= 0; --d) {
            index = std::to_string(bad % weights.shape(d)) + (index.empty() ? "" : ", ") + index;
            bad /= weights.shape(d);
        }
        throw std::invalid_argument(name + ": element [" + index + "] is " +
                                    std::string(py::str(py::float_(bad_value))) +
                                    "; MXFP4 cannot encode NaN or infinity");
    }
    return blocks;
}

py::array matmul_mxfp4(const FloatArray& x, const py::array& blocks, int64_t K, const py::object& out) {
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
    return run_matmul(Linear{WeightType::mxfp4, N, K, w.data()}, x, y);
}

// GGUF dequantization: the raw bytes of one tensor to float32 values or BF16 bit patterns (1-D), in a
// new array that starts on a cache line (these become the model's weights).
py::array dequantize(const py::array_t<uint8_t, py::array::c_style>& raw, int ggml_type, int64_t n_elements,
                     bool to_bf16) {
    const BlockFormat format = block_format(ggml_type);
    if (n_elements < 0 || n_elements % format.elements != 0)
        throw std::invalid_argument("dequantize: " + std::to_string(n_elements) +
                                    " elements is not a whole number of blocks of " + std::to_string(format.elements));
    const int64_t expected_bytes = n_elements / format.elements * format.bytes;
    if (raw.size() != expected_bytes)
        throw std::invalid_argument("dequantize: " + std::to_string(n_elements) + " elements of ggml type " +
                                    std::to_string(ggml_type) + " take " + std::to_string(expected_bytes) +
                                    " bytes, got " + std::to_string(raw.size()));
    if (to_bf16) {
        py::array_t<uint16_t> out = cache_aligned_array<uint16_t>(n_elements);
        {
            py::gil_scoped_release release;
            dequantize_to_bf16(ggml_type, raw.data(), n_elements, out.mutable_data());
        }
        return out;
    }
    py::array_t<float> out = cache_aligned_array<float>(n_elements);
    {
        py::gil_scoped_release release;
        dequantize_to_f32(ggml_type, raw.data(), n_elements, out.mutable_data());
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "mlspecqd native kernels and decoder";

    m.def("cpu_features", &features_dict, "CPU features detected at import");
    m.def("best_isa", [] { return std::string(isa_name(best_isa())); });
    m.def("active_isa", [] { return std::string(isa_name(active_isa())); });
    m.def("supported_isas", [] {
        std::vector<std::string> names;
        for (Isa isa : supported_isas()) names.push_back(isa_name(isa));
        return names;
    });
    m.def("set_isa", [](const std::string& name) { set_active_isa(isa_from_name(name)); }, py::arg("name"),
          "Force the kernels of one instruction set (tests compare each against scalar).");
    m.def("default_num_threads", &default_num_threads);
    m.def("num_threads", &num_threads);
    m.def("set_num_threads", &set_num_threads, py::arg("n"));

    // BF16 GEMM and the streaming-read baseline
    m.def("matmul_bf16", &matmul_bf16, py::arg("x"), py::arg("w"), py::arg("out") = py::none(),
          "y = bf16(x) @ w.T with w (N, K) uint16 BF16 bits; float32 sums, batch-invariant bits.");
    m.def("stream_read", &stream_read_array, py::arg("buffer"),
          "Read a buffer once on every thread; returns the wrapping sum of its 64-bit words.");

    // MXFP4 weights
    m.def("cast_mxfp4", &cast_mxfp4, py::arg("weights"), py::arg("name") = "weights",
          "float32 or BF16 (uint16) weights (..., K) -> MXFP4 blocks (..., K / 32 * 17), GGUF layout");
    m.def("matmul_mxfp4", &matmul_mxfp4, py::arg("x"), py::arg("blocks"), py::arg("K"), py::arg("out") = py::none(),
          "y = bf16(x) W^T with W given as MXFP4 blocks (N, K / 32 * 17); out as for matmul_bf16.");
    // Decoder
    py::class_<NativeModel>(m, "Model", "A dense transformer (llama, qwen2, qwen3) with its key/value cache")
        .def(py::init<const py::dict&, const py::dict&, int64_t>(), py::arg("config"), py::arg("weights"),
             py::arg("max_context"))
        .def("forward", &NativeModel::forward, py::arg("tokens"), py::arg("start"), py::arg("all_logits") = false,
             "Truncate the cache to `start`, run the tokens, return float32 logits (T or 1, vocab).")
        .def("truncate", &NativeModel::truncate, py::arg("n"))
        .def_property_readonly("n_past", &NativeModel::n_past)
        .def_property_readonly("max_context", &NativeModel::max_context)
        .def_property_readonly("vocab_size", &NativeModel::vocab_size);
    m.def("causal_attention", &causal_attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("first_position"),
          "The active instruction set's attention kernel on its own (for tests).");
    m.def("silu_multiply", &silu_multiply, py::arg("gate"), py::arg("up"),
          "The active instruction set's silu(gate) * up kernel on its own (for tests).");

    // GGUF dequantization
    m.def("dequantize", &dequantize, py::arg("raw"), py::arg("ggml_type"), py::arg("n_elements"),
          py::arg("to_bf16"), "Raw GGUF tensor bytes -> 1-D float32 (or BF16 bits as uint16 when to_bf16).");
    m.def("dequantizable_types", &dequantizable_types, "ggml type numbers that dequantize accepts");
}
