// The module mlspecqd._native: CPU features, the instruction set and thread count in use, and the
// functions and classes of model.cpp and kernel_hooks.cpp.
#include <map>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "cpu.h"
#include "threads.h"

using namespace mlspecqd;
using namespace mlspecqd::bindings;

namespace {

std::map<std::string, bool> features_dict() {
    const CpuFeatures& f = cpu_features();
    return {{"avx2", f.avx2},           {"fma", f.fma},
            {"f16c", f.f16c},           {"avx512f", f.avx512f},
            {"avx512bw", f.avx512bw},   {"avx512vl", f.avx512vl},
            {"avx512dq", f.avx512dq},   {"avx512_bf16", f.avx512_bf16},
            {"avx512_vnni", f.avx512_vnni}, {"avx512_vbmi", f.avx512_vbmi},
            {"avx_vnni", f.avx_vnni},   {"amx_bf16", f.amx_bf16}};
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

    register_model(m);
    register_kernel_hooks(m);
}
