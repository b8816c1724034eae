// BF16-weight GEMM. The scalar path is the reference the vector paths are tested against.
#include "kernels/bf16.h"
#include "kernels/isa/isa.h"

namespace mlspecqd {
namespace MLSPECQD_ISA {

void gemm_bf16(const float* x, int64_t M, int64_t K, const uint16_t* w, int64_t n_begin, int64_t n_end,
               float* y, int64_t ldy) {
    for (int64_t n = n_begin; n < n_end; ++n) {
        const uint16_t* row = w + n * K;
        for (int64_t m = 0; m < M; ++m) {
            const float* xm = x + m * K;
            float sum = 0.0f;
            for (int64_t k = 0; k < K; ++k) sum += xm[k] * bf16_to_float(row[k]);
            y[m * ldy + n] = sum;
        }
    }
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd
