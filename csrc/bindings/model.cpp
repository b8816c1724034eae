// What the package calls: _native.Model (the decoder over NumPy weights), GGUF dequantization into
// cache-aligned arrays, and the MXFP4 cast (mlspecqd.engine.quant).
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "bindings/bindings.h"
#include "cache_aligned.h"
#include "gguf/dequantize.h"
#include "kernels/bf16.h"
#include "kernels/linear.h"
#include "kernels/mxfp4.h"
#include "model/decoder.h"

using namespace mlspecqd;
using namespace mlspecqd::bindings;

namespace {

// A new 1-D array whose data start on a cache line (NumPy aligns to 16 bytes only), so that no 64-byte
// load of a weight row made from it touches two lines.
template <class T>
py::array_t<T> cache_aligned_array(int64_t n) {
    constexpr auto kLine = static_cast<uintptr_t>(kCacheLine);
    py::array_t<uint8_t> storage(static_cast<py::ssize_t>(n * sizeof(T) + kLine));
    uint8_t* start = storage.mutable_data();
    const uintptr_t offset = (kLine - reinterpret_cast<uintptr_t>(start) % kLine) % kLine;
    return py::array_t<T>({n}, {static_cast<py::ssize_t>(sizeof(T))}, reinterpret_cast<T*>(start + offset), storage);
}

// The model's weights as NumPy arrays by GGUF tensor name, used in place (never copied); an expert
// stack may also be a list of one array per expert (experts in mixed precision).
class NumpyTensors : public TensorSource {
public:
    explicit NumpyTensors(const py::dict& weights) {
        for (auto item : weights) {
            const std::string name = py::str(item.first);
            if (!py::isinstance<py::array>(item.second) && !py::isinstance<py::list>(item.second))
                throw std::invalid_argument("weights['" + name + "'] is not a NumPy array (or a list of them)");
            values_.emplace(name, py::reinterpret_borrow<py::object>(item.second));
        }
    }

    Linear linear(const std::string& name, int64_t rows, int64_t cols) const override {
        const py::array a = find(name);
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
        const py::array a = find(name);
        if (!a.dtype().is(py::dtype::of<uint16_t>()))
            throw std::invalid_argument("weights['" + name + "'] must be uint16 (BF16 bits), got " +
                                        std::string(py::str(a.dtype())));
        require_shape(name, a, {rows, cols});
        return static_cast<const uint16_t*>(a.data());
    }

    const float* vector(const std::string& name, int64_t n) const override {
        const py::array a = find(name);
        if (!a.dtype().is(py::dtype::of<float>()))
            throw std::invalid_argument("weights['" + name + "'] must be float32, got " + std::string(py::str(a.dtype())));
        require_shape(name, a, {n});
        return static_cast<const float*>(a.data());
    }

    const float* f32_matrix(const std::string& name, int64_t rows, int64_t cols) const override {
        const py::array a = find(name);
        if (!a.dtype().is(py::dtype::of<float>()))
            throw std::invalid_argument("weights['" + name + "'] must be float32, got " +
                                        std::string(py::str(a.dtype())));
        require_shape(name, a, {rows, cols});
        return static_cast<const float*>(a.data());
    }

    ExpertStack experts(const std::string& name, int64_t count, int64_t rows, int64_t cols) const override {
        return expert_stack(find_value(name), count, rows, cols, "weights['" + name + "']");
    }

    // The arrays (and lists of arrays) the decoder points into; whoever holds the decoder holds these.
    std::vector<py::object> values() const {
        std::vector<py::object> out;
        for (const auto& entry : values_) out.push_back(entry.second);
        return out;
    }

private:
    const py::object& find_value(const std::string& name) const {
        const auto it = values_.find(name);
        if (it == values_.end()) throw std::invalid_argument("weights: missing tensor '" + name + "'");
        return it->second;
    }

    py::array find(const std::string& name) const {
        const py::object& value = find_value(name);
        if (!py::isinstance<py::array>(value))
            throw std::invalid_argument("weights['" + name + "'] must be a NumPy array (only expert stacks may be "
                                        "lists of arrays)");
        return py::reinterpret_borrow<py::array>(value);
    }

    static void require_shape(const std::string& name, const py::array& a, const std::vector<int64_t>& shape) {
        bindings::require_shape("weights['" + name + "']", a, shape);
    }

    std::map<std::string, py::object> values_;
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
    c.activation = gate_activation_from_name(config_value<std::string>(d, "activation"));
    c.embedding_scale = config_value<double>(d, "embedding_scale");
    c.post_norms = config_value<bool>(d, "post_norms");
    c.sliding_window = config_value<int64_t>(d, "sliding_window");
    c.sliding_window_pattern = config_value<int64_t>(d, "sliding_window_pattern");
    c.rope_base_sliding = config_value<double>(d, "rope_base_sliding");
    c.n_experts = config_value<int64_t>(d, "n_experts");
    c.n_experts_used = config_value<int64_t>(d, "n_experts_used");
    c.expert_d_ff = config_value<int64_t>(d, "expert_d_ff");
    c.shared_expert_d_ff = config_value<int64_t>(d, "shared_expert_d_ff");
    c.expert_weights_normalized = config_value<bool>(d, "expert_weights_normalized");
    c.expert_weights_scale = config_value<double>(d, "expert_weights_scale");
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
        weights_ = tensors.values();
    }

    using TokenArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

    py::array_t<float> forward(const TokenArray& tokens, int64_t start, bool all_logits, int64_t slot) {
        return run({segment(tokens, slot, start, all_logits, "forward")});
    }

    // segments: (slot, tokens, start, all_logits) per sequence; their logits rows one after another.
    py::array_t<float> forward_batch(const std::vector<std::tuple<int64_t, TokenArray, int64_t, bool>>& segments) {
        std::vector<Segment> parts;
        for (const auto& [slot, tokens, start, all_logits] : segments)
            parts.push_back(segment(tokens, slot, start, all_logits, "forward_batch"));
        return run(parts);
    }

    void check_forward(const TokenArray& tokens, int64_t start, int64_t slot) const {
        decoder_->check_forward({segment(tokens, slot, start, false, "forward")});
    }

    void truncate(int64_t n, int64_t slot) { decoder_->truncate(n, slot); }
    int64_t n_past(int64_t slot) const { return decoder_->n_past(slot); }
    void reserve_slots(int64_t n) { decoder_->reserve_slots(n); }
    int64_t slot_count() const { return decoder_->slot_count(); }
    py::array_t<int64_t> expert_rows() const {
        const ModelConfig& c = decoder_->config();
        py::array_t<int64_t> counts({c.n_layers, c.n_experts});
        const std::vector<int64_t> rows = decoder_->expert_rows();
        std::copy(rows.begin(), rows.end(), counts.mutable_data());
        return counts;
    }
    void reset_expert_rows() { decoder_->reset_expert_rows(); }
    // One (instruction set or None for the active one, "bf16" or "int8") pair per row class.
    void set_kernel_plan(const std::vector<std::pair<std::optional<std::string>, std::string>>& choices) {
        if (choices.size() != KernelPlan::kRowClasses)
            throw std::invalid_argument("set_kernel_plan: " + std::to_string(choices.size()) + " choices, expected one per row class (" +
                                        std::to_string(KernelPlan::kRowClasses) + ")");
        KernelPlan plan;
        for (size_t i = 0; i < choices.size(); ++i) {
            const auto& [isa, activations] = choices[i];
            plan.by_rows[i] = kernel_choice_from_names(isa, activations, "set_kernel_plan");
        }
        decoder_->set_kernel_plan(plan);
    }
    int64_t max_context() const { return decoder_->max_context(); }
    int64_t vocab_size() const { return decoder_->config().vocab_size; }

private:
    // The segment over `tokens`' data; the caller keeps the array alive until the forward returns.
    static Segment segment(const TokenArray& tokens, int64_t slot, int64_t start, bool all_logits, const char* what) {
        if (tokens.ndim() != 1)
            throw std::invalid_argument(std::string(what) + ": tokens must be 1-D, got shape " + shape_text(tokens));
        return Segment{slot, tokens.data(), tokens.shape(0), start, all_logits};
    }

    py::array_t<float> run(const std::vector<Segment>& segments) {
        decoder_->check_forward(segments);  // before allocating the logits
        int64_t rows = 0;
        for (const Segment& s : segments) rows += s.logit_rows();
        py::array_t<float> logits({rows, decoder_->config().vocab_size});
        {
            py::gil_scoped_release release;
            decoder_->forward(segments, logits.mutable_data());
        }
        return logits;
    }

    std::unique_ptr<Decoder> decoder_;
    std::vector<py::object> weights_;  // keeps the weights the decoder points into alive
};

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

namespace mlspecqd::bindings {

void register_model(py::module_& m) {
    py::class_<NativeModel>(m, "Model",
                            "A transformer (llama, qwen2, qwen3, gemma3, qwen2moe, qwen3moe) with a key/value cache per "
                            "sequence slot")
        .def(py::init<const py::dict&, const py::dict&, int64_t>(), py::arg("config"), py::arg("weights"),
             py::arg("max_context"))
        .def("forward", &NativeModel::forward, py::arg("tokens"), py::arg("start"), py::arg("all_logits") = false,
             py::arg("slot") = 0,
             "Truncate slot's cache to `start`, run the tokens, return float32 logits (T or 1, vocab).")
        .def("forward_batch", &NativeModel::forward_batch, py::arg("segments"),
             "One forward over several sequences, each (slot, tokens, start, all_logits) in its own slot; "
             "returns their logits rows (T or 1 each) one sequence after another.")
        .def("check_forward", &NativeModel::check_forward, py::arg("tokens"), py::arg("start"), py::arg("slot") = 0,
             "Raise ValueError where forward(tokens, start, slot=slot) would.")
        .def("truncate", &NativeModel::truncate, py::arg("n"), py::arg("slot") = 0)
        .def("n_past", &NativeModel::n_past, py::arg("slot") = 0)
        .def("reserve_slots", &NativeModel::reserve_slots, py::arg("n"),
             "Make slots 0 .. n - 1 exist, each with its own empty key/value cache.")
        .def_property_readonly("slot_count", &NativeModel::slot_count)
        .def("expert_rows", &NativeModel::expert_rows)
        .def("reset_expert_rows", &NativeModel::reset_expert_rows)
        .def("set_kernel_plan", &NativeModel::set_kernel_plan, py::arg("choices"),
             "The kernels of every product by its rows (1, 2-4, 5-16, more): one (instruction set, or None for the "
             "active one; 'bf16' or 'int8', what MXFP4 weights multiply) pair per class.")
        .def_property_readonly("max_context", &NativeModel::max_context)
        .def_property_readonly("vocab_size", &NativeModel::vocab_size);

    m.def("dequantize", &dequantize, py::arg("raw"), py::arg("ggml_type"), py::arg("n_elements"),
          py::arg("to_bf16"), "Raw GGUF tensor bytes -> 1-D float32 (or BF16 bits as uint16 when to_bf16).");
    m.def("dequantizable_types", &dequantizable_types, "ggml type numbers that dequantize accepts");

    m.def("cast_mxfp4", &cast_mxfp4, py::arg("weights"), py::arg("name") = "weights",
          "float32 or BF16 (uint16) weights (..., K) -> MXFP4 blocks (..., K / 32 * 17), GGUF layout");
}

}  // namespace mlspecqd::bindings
