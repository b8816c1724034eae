// MXFP4 blocks decoded to BF16 with AVX-512 (csrc/kernels/isa/*.cpp only): shared by the vdpbf16ps GEMM
// (mxfp4.cpp) and the AMX one (gemm_amx.cpp), which both multiply exact BF16 weights.
#pragma once
#include <cstdint>

#include "kernels/bf16.h"
#include "kernels/isa/isa.h"
#include "kernels/mxfp4.h"

#if defined(__AVX512BF16__)

namespace mlspecqd {
namespace MLSPECQD_ISA {

// BF16 bit patterns of every (exponent byte, code): exact, since each value is a power of two times
// 1, 1.5 or 0 (or infinite, as in the float decoding). 32 entries per byte, the 16 codes twice, because
// vpermw reads 5 index bits and the decoder leaves junk in the fifth.
struct Bf16ValueTable {
    alignas(64) uint16_t by_exponent[256][32];
    Bf16ValueTable() {
        for (int byte = 0; byte < 256; ++byte)
            for (int i = 0; i < 32; ++i)
                by_exponent[byte][i] = float_to_bf16(mxfp4_value(static_cast<uint8_t>(byte), i & 15));
    }
};
inline const Bf16ValueTable kBf16Values;

// The 32 values of a block as BF16, in element order.
inline __m512i decode_block(const uint8_t* block) {
    const __m256i packed_twice =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 1)));
    // Shifting the upper copy's 16-bit words right by 4 brings each byte's high nibble to its low four bits.
    const __m256i nibbles = _mm256_mask_srli_epi16(packed_twice, 0xFF00, packed_twice, 4);
    const __m512i values = _mm512_load_si512(kBf16Values.by_exponent[block[0]]);
    return _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(nibbles), values);
}

}  // namespace MLSPECQD_ISA
}  // namespace mlspecqd

#endif
