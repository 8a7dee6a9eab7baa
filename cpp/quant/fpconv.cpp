#include "fpconv.h"

#include <cmath>

namespace quantconv::quant {

bool minifloat_in_range(int ebits, int mbits, int bias) {
    if (ebits < 0 || ebits > 8 || mbits < 0 || mbits > 23) return false;
    const int top = ((1 << ebits) - 1) - bias;  // exponent of the largest binade
    const int lowest = 1 - bias - mbits;        // exponent of the smallest subnormal step
    return top <= 127 && lowest >= -149;
}

float minifloat_to_fp32(uint32_t code, int ebits, int mbits, int bias, bool neg_zero) {
    const uint32_t man = code & ((1u << mbits) - 1u);
    const uint32_t exp = (code >> mbits) & ((1u << ebits) - 1u);
    const bool negative = ((code >> (ebits + mbits)) & 1u) != 0;
    const uint32_t sig = exp ? ((1u << mbits) | man) : man;
    const int e = (exp ? static_cast<int>(exp) - bias : 1 - bias) - mbits;
    // sig < 2^24 and e within float32's range: ldexp is exact
    const float mag = std::ldexp(static_cast<float>(sig), e);
    if (!negative) return mag;
    if (mag == 0.0f) return neg_zero ? -0.0f : 0.0f;
    return -mag;
}

}  // namespace quantconv::quant
