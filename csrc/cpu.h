// CPU feature detection and the one place that decides which instruction set the kernels use.
#pragma once
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace mlspecqd {

struct CpuFeatures {
    bool avx2 = false;
    bool fma = false;
    bool f16c = false;
    bool avx512f = false;
    bool avx512bw = false;
    bool avx512vl = false;
    bool avx512dq = false;
    bool avx512_bf16 = false;
    bool avx512_vnni = false;
    bool avx512_vbmi = false;
    bool avx_vnni = false;  // the VEX-encoded 256-bit vpdpbusd of Intel Core CPUs without AVX-512
    bool amx_bf16 = false;  // AMX tiles with BF16 products, and the OS lets this process use them
};

// avxvnni is the avx2 table but for the int8 dot products (Intel Core Ultra: AVX2 and AVX-VNNI, no AVX-512).
enum class Isa { scalar, avx2, avxvnni, avx512, amx };

const CpuFeatures& cpu_features();

// The best instruction set this CPU runs; the active one starts there.
Isa best_isa();
Isa active_isa();
// Tests force a path to compare it against the scalar reference. Refuses one the CPU lacks.
void set_active_isa(Isa isa);

const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // throws std::invalid_argument
std::vector<Isa> supported_isas();

// The kernel table of the active instruction set.
const KernelTable& kernels();
// The kernel table of `isa`; refuses one the CPU lacks (std::invalid_argument).
const KernelTable& kernels(Isa isa);

}  // namespace mlspecqd
