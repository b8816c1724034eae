// The only file that knows pybind11: it turns Python objects into the plain C++ types of csrc/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <stdexcept>
#include <string>

#include "cpu.h"
#include "gguf/dequantize.h"
#include "kernels/linear.h"
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

// Matrix product against BF16 weights, for tests and benchmarks of the kernel itself.
FloatArray matmul_bf16(const FloatArray& x, const Bf16Array& w) {
    if (x.ndim() != 2 || w.ndim() != 2) throw std::invalid_argument("matmul_bf16 wants 2-D x (M x K) and w (N x K)");
    if (x.shape(1) != w.shape(1))
        throw std::invalid_argument("matmul_bf16: x has K=" + std::to_string(x.shape(1)) + " but w has K=" +
                                    std::to_string(w.shape(1)));
    const int64_t M = x.shape(0), K = x.shape(1), N = w.shape(0);
    Linear linear{WeightType::bf16, N, K, w.data()};
    FloatArray y({M, N});
    {
        py::gil_scoped_release release;
        matmul(linear, x.data(), M, y.mutable_data());
    }
    return y;
}

// GGUF dequantization: the raw bytes of one tensor to float32 values or BF16 bit patterns (1-D).
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
        Bf16Array out(n_elements);
        {
            py::gil_scoped_release release;
            dequantize_to_bf16(ggml_type, raw.data(), n_elements, out.mutable_data());
        }
        return out;
    }
    FloatArray out(n_elements);
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

    m.def("matmul_bf16", &matmul_bf16, py::arg("x"), py::arg("w"));

    // GGUF dequantization
    m.def("dequantize", &dequantize, py::arg("raw"), py::arg("ggml_type"), py::arg("n_elements"),
          py::arg("to_bf16"), "Raw GGUF tensor bytes -> 1-D float32 (or BF16 bits as uint16 when to_bf16).");
    m.def("dequantizable_types", &dequantizable_types, "ggml type numbers that dequantize accepts");
}
