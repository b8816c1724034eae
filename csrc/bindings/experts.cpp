// Expert stacks and shape checks shared by _native.Model's weights and the moe_block test hook.
#include <string>
#include <vector>

#include "bindings/bindings.h"

namespace mlspecqd::bindings {

void require_shape(const std::string& what, const py::array& a, const std::vector<int64_t>& shape) {
    bool same = a.ndim() == py::ssize_t(shape.size());
    for (size_t i = 0; same && i < shape.size(); ++i) same = a.shape(i) == shape[i];
    if (!same) {
        std::string expected = "(";
        for (size_t i = 0; i < shape.size(); ++i) expected += (i ? ", " : "") + std::to_string(shape[i]);
        expected += shape.size() == 1 ? ",)" : ")";
        throw std::invalid_argument(what + " has shape " + shape_text(a) + ", expected " + expected);
    }
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(what + " must be C-contiguous (it is used in place)");
}

namespace {

// The type of an array of experts: BF16 bits (uint16) or MXFP4 blocks (uint8).
WeightType expert_type(const py::array& a, const std::string& what) {
    if (a.dtype().is(py::dtype::of<uint16_t>())) return WeightType::bf16;
    if (a.dtype().is(py::dtype::of<uint8_t>())) return WeightType::mxfp4;
    throw std::invalid_argument(what + ": experts must be uint16 (BF16 bits) or uint8 (MXFP4 blocks), got " +
                                std::string(py::str(a.dtype())));
}

int64_t row_bytes(WeightType type, int64_t K, const std::string& what) {
    return type == WeightType::bf16 ? K : mxfp4_row_bytes(K, what);
}

}  // namespace

ExpertStack expert_stack(const py::handle& value, int64_t count, int64_t N, int64_t K, const std::string& what) {
    if (py::isinstance<py::array>(value)) {
        const auto a = py::reinterpret_borrow<py::array>(value);
        const WeightType type = expert_type(a, what);
        require_shape(what, a, {count, N, row_bytes(type, K, what)});
        return contiguous_experts(type, count, N, K, a.data());
    }
    if (!py::isinstance<py::list>(value))
        throw std::invalid_argument(what + " must be a NumPy array or a list of one array per expert, got " +
                                    std::string(py::str(py::type::of(value).attr("__name__"))));
    const auto experts = py::reinterpret_borrow<py::list>(value);
    if (static_cast<int64_t>(experts.size()) != count)
        throw std::invalid_argument(what + " lists " + std::to_string(experts.size()) + " experts, expected " +
                                    std::to_string(count));
    ExpertStack stack{N, K, {}};
    for (size_t e = 0; e < experts.size(); ++e) {
        const std::string where = what + "[" + std::to_string(e) + "]";
        if (!py::isinstance<py::array>(experts[e])) throw std::invalid_argument(where + " is not a NumPy array");
        const auto a = py::reinterpret_borrow<py::array>(experts[e]);
        const WeightType type = expert_type(a, where);
        require_shape(where, a, {N, row_bytes(type, K, where)});
        stack.experts.push_back(Linear{type, N, K, a.data()});
    }
    return stack;
}

}  // namespace mlspecqd::bindings
