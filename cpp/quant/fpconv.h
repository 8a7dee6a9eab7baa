// Scalar conversions of the small floating-point encodings used by quantconv's layouts
// (docs/layouts.md): IEEE binary16, bfloat16, E8M0 shared exponents, ggml's UE4M3 NVFP4 scales
// and generic sign|exp|mant minifloats. Every function is exact (no rounding happens: each
// encoded value is representable in float32) and free of undefined behaviour for every input.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace quantconv::quant {

inline float f32_from_bits(uint32_t b) {
    float f;
    std::memcpy(&f, &b, sizeof f);
    return f;
}

inline uint32_t f32_to_bits(float f) {
    uint32_t b;
    std::memcpy(&b, &f, sizeof b);
    return b;
}

inline uint16_t load_u16le(const uint8_t* p) {
    return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

inline uint32_t load_u32le(const uint8_t* p) {
    return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
           (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

// ---- IEEE binary16 ------------------------------------------------------------------------------

inline bool fp16_is_finite(uint16_t h) { return (h & 0x7C00u) != 0x7C00u; }

// binary16 -> float32, exact for every input (subnormals, signed zeros, inf, NaN payloads).
inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu;
    const uint32_t man = h & 0x3FFu;
    if (exp == 0) {
        // zero or subnormal: man * 2^-24, exact in float32
        const float v = static_cast<float>(man) * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 0x1F) return f32_from_bits(sign | 0x7F800000u | (man << 13));  // inf / NaN
    return f32_from_bits(sign | ((exp + (127 - 15)) << 23) | (man << 13));
}

// ---- bfloat16 -----------------------------------------------------------------------------------

inline float bf16_to_fp32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

// ---- E8M0 (OCP MX shared exponent): 2^(e-127); 255 is NaN -----------------------------------------

inline bool e8m0_is_valid(uint8_t e) { return e != 0xFFu; }

// 2^(e-127) as float32 (e = 0 gives the subnormal 2^-127); NaN for e = 255.
inline float e8m0_to_fp32(uint8_t e) {
    if (e == 0) return f32_from_bits(0x00400000u);
    if (e == 0xFFu) return std::numeric_limits<float>::quiet_NaN();
    return f32_from_bits(static_cast<uint32_t>(e) << 23);
}

// ---- ggml's unsigned E4M3 (NVFP4 sub-block scale) -------------------------------------------------
// As gguf-py's NVFP4.ue4m3_to_fp32 without its 0.5 factor: bias 7, subnormals man * 2^-9, bit 7
// ignored, and 0x7F (the E4M3 NaN) decodes to 0 like ggml does.
inline float ue4m3_to_fp32(uint8_t x) {
    if (x == 0 || x == 0x7Fu) return 0.0f;
    const int exp = (x >> 3) & 0xF;
    const int man = x & 0x7;
    if (exp == 0) return static_cast<float>(man) * 0x1p-9f;
    // (8 + man) * 2^(exp - 10): an integer below 16 times a power of two, exact
    return static_cast<float>(8 + man) * f32_from_bits(static_cast<uint32_t>(exp - 10 + 127) << 23);
}

// ---- generic minifloat s|exp|mant ------------------------------------------------------------------
// value = (-1)^s * (exp ? (2^mbits + man) * 2^(exp - bias - mbits) : man * 2^(1 - bias - mbits)).
// No special codes: callers mark E4M3 / E5M2 NaN and inf codes themselves. A sign-bit zero gives
// -0.0f when neg_zero, else +0.0f. Requires 0 <= ebits <= 8, 0 <= mbits <= 23 and a result exponent
// inside float32's normal/subnormal range (checked by the caller through minifloat_in_range).
float minifloat_to_fp32(uint32_t code, int ebits, int mbits, int bias, bool neg_zero);

// Whether every code of the minifloat decodes exactly in float32.
bool minifloat_in_range(int ebits, int mbits, int bias);

}  // namespace quantconv::quant
