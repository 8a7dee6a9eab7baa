// Helpers with code shared by the kernel files. Everything here has internal linkage (an unnamed
// namespace): each ISA file is compiled with its own -m flags, and an inline function with external
// linkage would let the linker keep, say, the AVX2 copy for the scalar file too (an ODR trap that
// crashes CPUs without AVX2). For the same reason the ISA files do not call quant/fpconv.h's inline
// conversions; they decode scales with their own instructions or through plan tables.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/internal.h"
#include "quant/bitplanes.h"

namespace quantconv::kernels {

// How the integer fast path reads a code (fast_supported layouts only).
enum class FastVal : uint8_t {
    Table,     // signed int8 table in the acts (4-bit and E2M3 codes)
    Int8,      // the code byte is the two's complement int8 itself (Q8_0, IntSym8, MXINT8)
    Unsigned,  // the code is an unsigned integer 0..15 (IntAsym4, Q4_1): offsets go through qsum
};

namespace {

inline FastVal fast_val(const Plan& pl) {
    if (pl.f.hdr == Hdr::F16Affine) return FastVal::Unsigned;
    if (pl.f.bits == 8) return FastVal::Int8;
    return FastVal::Table;
}

// A table's row by key, for the make_table() of each ISA file (KernelTable::row has external linkage,
// which an ISA file must not emit: see above).
constexpr KernelRow& at(KernelTable& t, quant::Layout l) { return t.rows[static_cast<size_t>(l)]; }

inline uint16_t rd16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

inline float bits_to_f32(uint32_t b) {
    float f;
    std::memcpy(&f, &b, sizeof f);
    return f;
}

// 2^(e-127); e = 0 is the subnormal 2^-127. (255 gives inf: the data was validated at load time.)
inline float e8m0_scale(uint8_t e) { return bits_to_f32(e ? static_cast<uint32_t>(e) << 23 : 0x00400000u); }

// MX with 8-bit float elements (E4M3 / E5M2): the x86 exact paths decode them by moving their bits into
// float32's fields (Fp8Fields, with Acts::x96) or fp16's (Fp16Fields, without).
inline bool mx_fp8(const quant::TypeParams& p) {
    return p.layout == quant::Layout::Mx && (p.elem.kind == quant::ElemKind::E4M3 || p.elem.kind == quant::ElemKind::E5M2);
}

// MX E4M3 / E5M2 codes decoded straight into float32's fields by the x86 exact kernels (with
// Acts::x96): the sign-extended code shifted left by kShift puts the magnitude bits in the exponent
// and mantissa fields, which reads value * 2^-(127 - bias) (subnormal codes become float32
// subnormals, exactly); kMask keeps the sign (bit 31) and clears its copies above the exponent. The
// products with x * 2^kX96Exp carry 2^-kUnitExp, which kUnit = 2^kUnitExp undoes on each block sum.
template <bool E4M3>
struct Fp8Fields {
    static constexpr int kShift = E4M3 ? 20 : 21;
    static constexpr uint32_t kMask = E4M3 ? 0x87F00000u : 0x8FE00000u;
    static constexpr int kUnitExp = (E4M3 ? 127 - 7 : 127 - 15) - kX96Exp;
    static constexpr float kUnit = static_cast<float>(1u << kUnitExp);
};

// The same codes as fp16 bit patterns (F16C's vcvtph2ps converts fp16 subnormals exactly): the
// sign-extended code in a 16-bit lane shifted left by kShift and masked with kMask. E5M2 is fp16's
// upper byte; E4M3's 7 magnitude bits land in fp16's exponent and mantissa fields as the value * 2^-8
// (bias 7 against 15), subnormals included, and the sign comes along with the sign extension. The
// decoded value times kUnit is the element's.
template <bool E4M3>
struct Fp16Fields {
    static constexpr int kShift = E4M3 ? 7 : 8;
    static constexpr uint16_t kMask = E4M3 ? 0xBF80u : 0xFF00u;
    static constexpr float kUnit = E4M3 ? 256.0f : 1.0f;
};

// Bit planes of a code width (docs/layouts.md): 8, 4, 2, 1 -> 1; 6, 5, 3 -> 2; 7 -> 3.
constexpr int plane_count(int bits) { return bits == 7 ? 3 : (bits == 3 || bits == 5 || bits == 6) ? 2 : 1; }

// Whether the lut is sign-magnitude: lut[c + half] == -lut[c] for every c < half (as values, so
// +0 and -0 match). True for the minifloat, bfp and blog layouts; false for two's complement ints.
inline bool sign_magnitude(const BlockFmt& f) {
    const int half = 1 << (f.bits - 1);
    for (int c = 0; c < half; ++c)
        if (!(f.lut[c + half] == -f.lut[c])) return false;
    return true;
}

// out[t] (|)= ((src[t] >> s) & mask) << shift for t < n, eight bytes at a time in a 64-bit word
// (SWAR): after the word shift, bits that crossed a byte boundary sit above the mask and are cleared
// (s + width <= 8), and the code's own bits never pass bit 7 (shift + width <= 8). Little-endian
// byte order, as on every target (x86-64, aarch64).
inline void plane_run(const uint8_t* src, int64_t n, int s, unsigned mask, int shift, uint8_t* out, bool first) {
    const uint64_t m8 = 0x0101010101010101ull * mask;
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
        uint64_t v;
        std::memcpy(&v, src + t, 8);
        v = ((v >> s) & m8) << shift;
        if (!first) {
            uint64_t o;
            std::memcpy(&o, out + t, 8);
            v |= o;
        }
        std::memcpy(out + t, &v, 8);
    }
    for (; t < n; ++t) {
        const unsigned c = ((static_cast<unsigned>(src[t]) >> s) & mask) << shift;
        out[t] = static_cast<uint8_t>(first ? c : (out[t] | c));
    }
}

// Codes of elements [i0, i1) of one G-element block whose planes start at `planes` (bit-plane layout
// of docs/layouts.md): plane p of width w is G*w/8 bytes, and its byte j holds element j + k*stride
// in bits k*w. Each run inside one k is a shift-and-mask over consecutive bytes.
inline void unpack_range(const uint8_t* planes, int64_t G, int bits, int64_t i0, int64_t i1, uint8_t* codes) {
    int widths[3];
    const int np = quant::plane_widths(bits, widths);
    int shift = 0;
    for (int pl = 0; pl < np; ++pl) {
        const int w = widths[pl];
        const int64_t stride = G * w / 8;
        const unsigned mask = (1u << w) - 1u;
        int64_t k = i0 ? i0 / stride : 0, j = i0 - k * stride;  // a whole block needs no division
        for (int64_t i = i0; i < i1; ++k, j = 0) {
            const int64_t n = (i1 - i < stride - j) ? i1 - i : stride - j;
            plane_run(planes + j, n, static_cast<int>(k) * w, mask, shift, codes + (i - i0), pl == 0);
            i += n;
        }
        planes += stride;
        shift += w;
    }
}

// IEEE binary16 bits -> float, exactly (fp16 scales of layouts with no plan table).
inline float half_bits_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0) {
        const float v = static_cast<float>(m) * bits_to_f32(0x33800000u);  // m * 2^-24
        return sign ? -v : v;
    }
    return bits_to_f32(sign | (e == 31 ? 0x7F800000u | (m << 13) : ((e + 112) << 23) | (m << 13)));
}

// ggml Q5_0 (d * (u - 16)) and Q5_1 (d * u + m): the exact product, one decoded weight times its
// float activation, eight partial sums. The fifth bit of code j is bit j of the block's 32-bit qh.
template <bool Affine>
float exact_q5(const uint8_t* row, const Plan& pl, const Acts& a) {
    constexpr int64_t kHdr = Affine ? 4 : 2, kBytes = kHdr + 4 + 16;
    float s[8] = {};
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / 32; ++b, row += kBytes, x += 32) {
        const float d = half_bits_to_f32(rd16(row));
        const float m = Affine ? half_bits_to_f32(rd16(row + 2)) : 0.0f;
        const uint8_t* qh = row + kHdr;
        const uint32_t h = static_cast<uint32_t>(qh[0]) | (static_cast<uint32_t>(qh[1]) << 8) |
                           (static_cast<uint32_t>(qh[2]) << 16) | (static_cast<uint32_t>(qh[3]) << 24);
        const uint8_t* qs = qh + 4;
        float w[32];
        for (int j = 0; j < 16; ++j) {
            const int lo = (qs[j] & 0x0F) | static_cast<int>(((h >> j) & 1u) << 4);
            const int hi = (qs[j] >> 4) | static_cast<int>(((h >> (j + 16)) & 1u) << 4);
            w[j] = Affine ? d * static_cast<float>(lo) + m : d * static_cast<float>(lo - 16);
            w[j + 16] = Affine ? d * static_cast<float>(hi) + m : d * static_cast<float>(hi - 16);
        }
        for (int j = 0; j < 32; ++j) s[j & 7] += x[j] * w[j];
    }
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

}  // namespace
}  // namespace quantconv::kernels
