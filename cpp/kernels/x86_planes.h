// Reading bit-plane codes straight into SSE registers (x86 kernel files only; internal linkage, see
// common.h). Decoding a block into a byte buffer first and reading it back costs store-to-load
// forwarding stalls on Intel cores when the writes and the reads have different widths.
#pragma once

#include <immintrin.h>

#include "kernels/common.h"

namespace quantconv::kernels {
namespace {

// The codes of a block's elements in order, Step (8 or 16) at a time, each plane read with one load,
// a shift by its k * width (elements j + k*stride sit in bits k*w of byte j), a mask, and a shift to
// its place in the code. Needs every plane's stride (G*w/8 bytes) to be a multiple of Step. NP, the
// plane count of the code width (plane_widths), is a template argument so that the per-plane state
// stays in registers: kept in memory, its updates chain through store-to-load forwarding.
template <int Step, int NP>
class PlaneReader {
   public:
    static bool fits(const BlockFmt& f) {
        int w[3];
        if (quant::plane_widths(f.bits, w) != NP) return false;
        for (int p = 0; p < NP; ++p)
            if ((f.G * w[p] / 8) % Step != 0) return false;
        return true;
    }
    explicit PlaneReader(const BlockFmt& f) {
        quant::plane_widths(f.bits, width_);
        int shift = 0;
        int64_t off = 0;
        for (int p = 0; p < NP; ++p) {
            stride_[p] = f.G * width_[p] / 8;
            offset_[p] = off;
            off += stride_[p];
            out_shift_[p] = _mm_cvtsi32_si128(shift);
            mask_[p] = _mm_set1_epi8(static_cast<char>((1 << width_[p]) - 1));
            shift += width_[p];
        }
    }
    void start(const uint8_t* planes) {
        for (int p = 0; p < NP; ++p) {
            at_[p] = planes + offset_[p];
            left_[p] = stride_[p];
            k_[p] = 0;
        }
    }
    __m128i next() {
        __m128i c = _mm_setzero_si128();
        for (int p = 0; p < NP; ++p) {
            __m128i v;
            if constexpr (Step == 8) v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(at_[p]));
            else v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(at_[p]));
            // 16-bit shifts: bits that cross into a neighbouring byte land above the mask (s + w <= 8)
            v = _mm_and_si128(_mm_srl_epi16(v, _mm_cvtsi32_si128(k_[p] * width_[p])), mask_[p]);
            c = _mm_or_si128(c, _mm_sll_epi16(v, out_shift_[p]));
            at_[p] += Step;
            if ((left_[p] -= Step) == 0) {  // next k: back to the plane's first byte
                at_[p] -= stride_[p];
                left_[p] = stride_[p];
                ++k_[p];
            }
        }
        return c;
    }

   private:
    int width_[3] = {};  // plane_widths writes up to 3
    int64_t stride_[NP] = {}, offset_[NP] = {}, left_[NP] = {};
    int k_[NP] = {};
    const uint8_t* at_[NP] = {};
    __m128i out_shift_[NP], mask_[NP];
};

}  // namespace
}  // namespace quantconv::kernels
