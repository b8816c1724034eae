// Included only by csrc/kernels/isa/*.cpp, which CMake compiles once per instruction set with
// MLSPECQD_ISA set to scalar, avx2, avxvnni, avx512 or amx: the same names land in five namespaces.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"

#if defined(__AVX2__)
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized inside their own inline functions (GCC bug 105593);
// the warning is silenced for the header's lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#ifndef MLSPECQD_ISA
#error "MLSPECQD_ISA must name the instruction set this file is compiled for"
#endif

namespace mlspecqd {
namespace MLSPECQD_ISA {

const KernelTable& kernel_table();

// See KernelTable (csrc/kernels/kernels.h) for what each computes.
int64_t gemm_bf16_prepared_bytes(int64_t M, int64_t K);
void gemm_bf16_prepare(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end, void* prepared);
void gemm_bf16(const void* prepared, int64_t M, int64_t K, const Bf16Weights& w, int64_t n_begin, int64_t n_end,
               float* y, int64_t ldy);

uint64_t stream_read(const uint64_t* words, int64_t count);

int64_t cast_mxfp4_f32(const float* values, int64_t n_blocks, uint8_t* out);
int64_t cast_mxfp4_bf16(const uint16_t* values, int64_t n_blocks, uint8_t* out);
int64_t gemm_mxfp4_prepared_bytes(int64_t M, int64_t K);
void gemm_mxfp4_prepare(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end, void* prepared);
void gemm_mxfp4(const void* prepared, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end,
                float* y, int64_t ldy);
int64_t gemm_mxfp4_int8_prepared_bytes(int64_t M, int64_t K);
void gemm_mxfp4_int8_prepare(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end, void* prepared);
void gemm_mxfp4_int8(const void* prepared, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end,
                     float* y, int64_t ldy);
void causal_attention(const AttentionProblem& p, int64_t item_begin, int64_t item_end, float* scores);
void silu_multiply(float* gate, const float* up, int64_t n);
void gelu_tanh_multiply(float* gate, const float* up, int64_t n);

#if defined(__AMX_BF16__)
// The amx table's GEMMs (gemm_amx.cpp): both weight types read activations prepared by amx_prepare.
int64_t amx_prepared_bytes(int64_t M, int64_t K);
void amx_prepare(const float* x, int64_t M, int64_t K, int64_t k_begin, int64_t k_end, void* prepared);
void gemm_bf16_amx(const void* prepared, int64_t M, int64_t K, const Bf16Weights& w, int64_t n_begin, int64_t n_end,
                   float* y, int64_t ldy);
void gemm_mxfp4_amx(const void* prepared, int64_t M, int64_t K, const uint8_t* w, int64_t n_begin, int64_t n_end,
                    float* y, int64_t ldy);
#endif

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
