// The only file that knows pybind11: it turns Python objects into the plain C++ types of csrc/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <stdexcept>
#include <string>

#include "cpu.h"
#include "kernels/bf16.h"
#include "kernels/linear.h"
#include "kernels/mxfp4.h"
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

// MXFP4 weights: the cast and the matrix product, for quant.py, tests and benchmarks.

std::string shape_text(const py::array& a) {
    std::string text = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) text += (d ? ", " : "") + std::to_string(a.shape(d));
    return text + (a.ndim() == 1 ? ",)" : ")");
}

int64_t mxfp4_row_bytes(int64_t K, const std::string& where) {
    if (K <= 0 || K % kMxfp4BlockValues != 0)
        throw std::invalid_argument(where + ": K=" + std::to_string(K) + " is not a positive multiple of " +
                                    std::to_string(kMxfp4BlockValues) + " (the MXFP4 block size)");
    return K / kMxfp4BlockValues * kMxfp4BlockBytes;
}

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
        throw std::invalid_argument(name + ": element [" + index + "] is " + std::string(py::str(py::float_(bad_value))) +
                                    "; MXFP4 cannot encode NaN or infinity");
    }
    return blocks;
}

FloatArray matmul_mxfp4(const FloatArray& x, const py::array& blocks, int64_t K) {
    if (!blocks.dtype().is(py::dtype::of<uint8_t>()) || blocks.ndim() != 2)
        throw std::invalid_argument("matmul_mxfp4: blocks must be a 2-D uint8 array, got " +
                                    std::string(py::str(blocks.dtype())) + " " + shape_text(blocks));
    const int64_t row_bytes = mxfp4_row_bytes(K, "matmul_mxfp4");
    if (blocks.shape(1) != row_bytes)
        throw std::invalid_argument("matmul_mxfp4: blocks " + shape_text(blocks) + " do not hold K=" + std::to_string(K) +
                                    " values per row (expected " + std::to_string(row_bytes) + " bytes)");
    if (x.ndim() != 2 || x.shape(1) != K)
        throw std::invalid_argument("matmul_mxfp4: x " + shape_text(x) + " is not (M, K=" + std::to_string(K) + ")");
    const auto w = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(blocks);
    const int64_t M = x.shape(0), N = w.shape(0);
    Linear linear{WeightType::mxfp4, N, K, w.data()};
    FloatArray y({M, N});
    {
        py::gil_scoped_release release;
        matmul(linear, x.data(), M, y.mutable_data());
    }
    return y;
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

    // MXFP4 weights
    m.def("cast_mxfp4", &cast_mxfp4, py::arg("weights"), py::arg("name") = "weights",
          "float32 or BF16 (uint16) weights (..., K) -> MXFP4 blocks (..., K / 32 * 17), GGUF layout");
    m.def("matmul_mxfp4", &matmul_mxfp4, py::arg("x"), py::arg("blocks"), py::arg("K"),
          "y = x W^T with W given as MXFP4 blocks (N, K / 32 * 17)");
}
