// csrc/bindings/ is the only folder that knows pybind11: it turns Python objects into the plain C++
// types of csrc/. This header holds what its files share; module.cpp defines the module and calls the
// two registration functions below.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // in every file here: one set of STL conversions across the module

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu.h"
#include "kernels/linear.h"
#include "kernels/mxfp4.h"
#include "model/moe.h"

namespace mlspecqd::bindings {

namespace py = pybind11;

// An array's shape as Python prints it, for error messages.
inline std::string shape_text(const py::array& a) {
    std::string text = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) text += (i ? ", " : "") + std::to_string(a.shape(i));
    return text + (a.ndim() == 1 ? ",)" : ")");
}

// Bytes of one row of K values as MXFP4 blocks; refuses a K the format cannot hold.
inline int64_t mxfp4_row_bytes(int64_t K, const std::string& where) {
    if (K <= 0 || K % kMxfp4BlockValues != 0)
        throw std::invalid_argument(where + ": K=" + std::to_string(K) + " is not a positive multiple of " +
                                    std::to_string(kMxfp4BlockValues) + " (the MXFP4 block size)");
    return K / kMxfp4BlockValues * kMxfp4BlockBytes;
}

// "bf16" or "int8": what MXFP4 weights multiply (kernels/linear.h); ValueError naming `where` otherwise.
inline Mxfp4Activations mxfp4_activations_from_name(const std::string& name, const std::string& where) {
    if (name == "bf16") return Mxfp4Activations::bf16;
    if (name == "int8") return Mxfp4Activations::int8;
    throw std::invalid_argument(where + ": MXFP4 activations '" + name + "' are not 'bf16' or 'int8'");
}

// The kernels of `isa` (None: the active instruction set's) with MXFP4 weights multiplying `activations`;
// ValueError naming `where` for a name that is not one, or a table this CPU cannot run.
inline KernelChoice kernel_choice_from_names(const std::optional<std::string>& isa, const std::string& activations,
                                             const std::string& where) {
    return {isa ? &kernels(isa_from_name(*isa)) : nullptr, mxfp4_activations_from_name(activations, where)};
}

// Refuses an array `what` that is not C-contiguous of `shape` (it is used in place).
void require_shape(const std::string& what, const py::array& a, const std::vector<int64_t>& shape);

// An expert stack of `count` matrices of N x K from Python: one array (count, N, row) of uint16 BF16 bits
// (row = K) or of uint8 MXFP4 blocks (row = K / 32 * 17); or a list of `count` arrays (N, row), each of
// either type (experts in mixed precision). Used in place; `what` names the value in errors.
ExpertStack expert_stack(const py::handle& value, int64_t count, int64_t N, int64_t K, const std::string& what);

// What the package calls (model.cpp): _native.Model, GGUF dequantization and the MXFP4 cast.
void register_model(py::module_& m);

// Single kernels for tests and benchmarks to compare with their references (kernel_hooks.cpp).
void register_kernel_hooks(py::module_& m);

}  // namespace mlspecqd::bindings
