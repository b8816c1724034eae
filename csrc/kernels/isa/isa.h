// Included only by csrc/kernels/isa/*.cpp, which CMake compiles once per instruction set with
// MLSPECQD_ISA set to scalar, avx2 or avx512: the same names land in three namespaces.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"

#ifndef MLSPECQD_ISA
#error "MLSPECQD_ISA must name the instruction set this file is compiled for"
#endif

namespace mlspecqd {
namespace MLSPECQD_ISA {

const KernelTable& kernel_table();

void gemm_bf16(const float* x, int64_t M, int64_t K, const uint16_t* w, int64_t n_begin, int64_t n_end,
               float* y, int64_t ldy);

int64_t cast_mxfp4_f32(const float* values, int64_t n_blocks, uint8_t* out);
int64_t cast_mxfp4_bf16(const uint16_t* values, int64_t n_blocks, uint8_t* out);
void gemm_mxfp4(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end,
                float* y, int64_t ldy);

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
