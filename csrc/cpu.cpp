#include "cpu.h"

#include <asm/prctl.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <stdexcept>

namespace mlspecqd {

namespace scalar { const KernelTable& kernel_table(); }
namespace avx2 { const KernelTable& kernel_table(); }
namespace avxvnni { const KernelTable& kernel_table(); }
namespace avx512 { const KernelTable& kernel_table(); }
namespace amx { const KernelTable& kernel_table(); }

namespace {

constexpr Isa kIsas[] = {Isa::scalar, Isa::avx2, Isa::avxvnni, Isa::avx512, Isa::amx};

bool os_saves_avx512_state() {
    unsigned int eax, edx;
    __asm__("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    const unsigned int ymm_and_zmm = (1u << 1) | (1u << 2) | (1u << 5) | (1u << 6) | (1u << 7);
    return (eax & ymm_and_zmm) == ymm_and_zmm;
}

// XCR0 bits 17 (tile configuration) and 18 (tile data): the OS saves the AMX state.
bool os_saves_tile_state() {
    unsigned int eax, edx;
    __asm__("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (eax & (3u << 17)) == (3u << 17);
}

// Linux hands out the 8 KiB of tile data per process, on request; once granted, every thread of the
// process may use it (each still loads its own tile configuration, see gemm_amx.cpp).
bool os_grants_tile_data() {
    constexpr unsigned long kTileData = 18;  // XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, kTileData) == 0;
}

bool os_saves_avx_state() {
    unsigned int eax, edx;
    __asm__("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (eax & 0x6u) == 0x6u;
}

CpuFeatures detect() {
    CpuFeatures f;
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
    const bool osxsave = ecx & (1u << 27);
    const bool avx_ok = osxsave && os_saves_avx_state();
    f.fma = avx_ok && (ecx & (1u << 12));
    f.f16c = avx_ok && (ecx & (1u << 29));
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return f;
    f.avx2 = avx_ok && (ebx & (1u << 5));
    const bool zmm_ok = avx_ok && os_saves_avx512_state();
    f.avx512f = zmm_ok && (ebx & (1u << 16));
    f.avx512dq = zmm_ok && (ebx & (1u << 17));
    f.avx512bw = zmm_ok && (ebx & (1u << 30));
    f.avx512vl = zmm_ok && (ebx & (1u << 31));
    f.avx512_vbmi = zmm_ok && (ecx & (1u << 1));
    f.avx512_vnni = zmm_ok && (ecx & (1u << 11));
    const bool amx_tile = edx & (1u << 24), amx_bf16 = edx & (1u << 22);
    f.amx_bf16 = zmm_ok && amx_tile && amx_bf16 && os_saves_tile_state() && os_grants_tile_data();
    if (__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) {
        f.avx_vnni = avx_ok && (eax & (1u << 4));
        f.avx512_bf16 = zmm_ok && (eax & (1u << 5));
    }
    return f;
}

bool runs(Isa isa) {
    const CpuFeatures& f = cpu_features();
    switch (isa) {
        case Isa::scalar: return true;
        case Isa::avx2: return f.avx2 && f.fma && f.f16c;
        case Isa::avxvnni: return runs(Isa::avx2) && f.avx_vnni;
        case Isa::avx512:
            return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512_bf16 && f.avx512_vnni &&
                   f.avx512_vbmi && f.avx2 && f.fma && f.f16c;
        case Isa::amx: return runs(Isa::avx512) && f.amx_bf16;
    }
    return false;
}

const KernelTable& table_of(Isa isa) {
    switch (isa) {
        case Isa::amx: return amx::kernel_table();
        case Isa::avx512: return avx512::kernel_table();
        case Isa::avx2: return avx2::kernel_table();
        case Isa::avxvnni: return avxvnni::kernel_table();
        case Isa::scalar: break;
    }
    return scalar::kernel_table();
}

Isa g_active = best_isa();

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures features = detect();
    return features;
}

Isa best_isa() {
    if (runs(Isa::amx)) return Isa::amx;
    if (runs(Isa::avx512)) return Isa::avx512;
    if (runs(Isa::avxvnni)) return Isa::avxvnni;
    if (runs(Isa::avx2)) return Isa::avx2;
    return Isa::scalar;
}

Isa active_isa() { return g_active; }

void set_active_isa(Isa isa) {
    kernels(isa);  // refuses one the CPU lacks
    g_active = isa;
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::scalar: return "scalar";
        case Isa::avx2: return "avx2";
        case Isa::avxvnni: return "avxvnni";
        case Isa::avx512: return "avx512";
        case Isa::amx: return "amx";
    }
    return "?";
}

Isa isa_from_name(const std::string& name) {
    for (Isa isa : kIsas)
        if (name == isa_name(isa)) return isa;
    throw std::invalid_argument("unknown instruction set '" + name + "' (expected scalar, avx2, avxvnni, avx512 or amx)");
}

std::vector<Isa> supported_isas() {
    std::vector<Isa> out;
    for (Isa isa : kIsas)
        if (runs(isa)) out.push_back(isa);
    return out;
}

const KernelTable& kernels() { return table_of(g_active); }

const KernelTable& kernels(Isa isa) {
    if (!runs(isa)) throw std::invalid_argument(std::string("this CPU cannot run the ") + isa_name(isa) + " kernels");
    return table_of(isa);
}

}  // namespace mlspecqd
