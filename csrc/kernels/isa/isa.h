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

void causal_attention(const AttentionProblem& p, int64_t item_begin, int64_t item_end, float* scores);

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
