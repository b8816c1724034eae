#include "kernels/isa/isa.h"

#define MLSPECQD_STRINGIFY_(x) #x
#define MLSPECQD_STRINGIFY(x) MLSPECQD_STRINGIFY_(x)

namespace mlspecqd {
namespace MLSPECQD_ISA {

// The amx copy is the AVX-512 one (the same sources, compiled with AMX allowed) but for its GEMMs.
const KernelTable& kernel_table() {
    static const KernelTable table = {
        MLSPECQD_STRINGIFY(MLSPECQD_ISA),
#if defined(__AMX_BF16__)
        amx_prepared_bytes,
        amx_prepare,
        gemm_bf16_amx,
        stream_read,
        cast_mxfp4_f32,
        cast_mxfp4_bf16,
        amx_prepared_bytes,
        amx_prepare,
        gemm_mxfp4_amx,
#else
        gemm_bf16_prepared_bytes,
        gemm_bf16_prepare,
        gemm_bf16,
        stream_read,
        cast_mxfp4_f32,
        cast_mxfp4_bf16,
        gemm_mxfp4_prepared_bytes,
        gemm_mxfp4_prepare,
        gemm_mxfp4,
#endif
        gemm_mxfp4_int8_prepared_bytes,
        gemm_mxfp4_int8_prepare,
        gemm_mxfp4_int8,
        causal_attention,
        silu_multiply,
        gelu_tanh_multiply,
    };
    return table;
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
