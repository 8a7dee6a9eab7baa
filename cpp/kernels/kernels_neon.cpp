// NEON kernels for aarch64 (built with -march=armv8.2-a+dotprod+fp16).
//
// Exact paths: 4-bit codes index a 16-float lut with one vqtbl4q_u8 per 4 floats (the lut's 64 bytes
// are the table, each code expands to its 4 byte offsets); int8 codes convert directly; other codes
// are unpacked and decoded through the lut a chunk at a time. w = d * v (+ m) with a separate multiply
// (the same rounding as dequantize), then an FMA into the accumulator.
// Fast paths: codes -> int8 with vqtbl1q_s8 (16 entries) or vqtbl4q_s8 (64, E2M3), SDOT against the
// q8 activations, per q8 block one int32x4 -> float FMA.
#include <arm_neon.h>

#include "kernels/common.h"

namespace quantconv::kernels {
namespace {

using quant::ElemKind;
using quant::Layout;

constexpr int64_t kChunk = 256;

inline float h2f(const uint8_t* p) {
    float16_t h;
    std::memcpy(&h, p, sizeof h);
    return static_cast<float>(h);
}

template <Hdr H>
inline void header(const uint8_t* blk, float& d, float& m) {
    if constexpr (H == Hdr::E8M0) {
        d = e8m0_scale(blk[0]);
        m = 0.0f;
    } else {
        d = h2f(blk);
        m = H == Hdr::F16Affine ? h2f(blk + 2) : 0.0f;
    }
}

template <Hdr H>
inline float32x4_t scale_exact(float32x4_t v, float32x4_t d, float32x4_t m) {
    if constexpr (H == Hdr::E8M0) return vmulq_f32(v, d);
    else if constexpr (H == Hdr::F16Affine) return vaddq_f32(vmulq_f32(d, v), m);
    else return vmulq_f32(d, v);
}

template <Hdr H>
inline float scale_exact1(float v, float d, float m) {
    if constexpr (H == Hdr::E8M0) return v * d;
    else if constexpr (H == Hdr::F16Affine) return d * v + m;
    else return d * v;
}

// A 16-float lut as a 64-byte vqtbl4q table; lut16(t, c4, q) gives lut[c] for codes q*4..q*4+3 of the
// 16 codes whose byte offsets (4 * code) are in c4.
struct Lut16 {
    uint8x16x4_t t;
    explicit Lut16(const float* lut) {
        const auto* b = reinterpret_cast<const uint8_t*>(lut);
        t = {{vld1q_u8(b), vld1q_u8(b + 16), vld1q_u8(b + 32), vld1q_u8(b + 48)}};
    }
    float32x4_t get(uint8x16_t c4, int q) const {
        static const uint8_t kRep[4][16] = {
            {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
            {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
            {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
            {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};
        static const uint8_t kByte[16] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
        const uint8x16_t idx = vorrq_u8(vqtbl1q_u8(c4, vld1q_u8(kRep[q])), vld1q_u8(kByte));
        return vreinterpretq_f32_u8(vqtbl4q_u8(t, idx));
    }
};

// ---- exact: float layouts -----------------------------------------------------------------------

template <class Load4, class Load1>
inline float dot_float_row(int64_t n, const float* x, Load4 load4, Load1 load1) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vfmaq_f32(a0, vld1q_f32(x + i), load4(i));
        a1 = vfmaq_f32(a1, vld1q_f32(x + i + 4), load4(i + 4));
        a2 = vfmaq_f32(a2, vld1q_f32(x + i + 8), load4(i + 8));
        a3 = vfmaq_f32(a3, vld1q_f32(x + i + 12), load4(i + 12));
    }
    for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, vld1q_f32(x + i), load4(i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; ++i) s += x[i] * load1(i);
    return s;
}

float exact_f32(const uint8_t* row, const Plan& pl, const Acts& a) {
    return dot_float_row(
        pl.cols, a.x, [&](int64_t i) { return vreinterpretq_f32_u8(vld1q_u8(row + 4 * i)); },
        [&](int64_t i) {
            float w;
            std::memcpy(&w, row + 4 * i, sizeof w);
            return w;
        });
}

float exact_f16(const uint8_t* row, const Plan& pl, const Acts& a) {
    return dot_float_row(
        pl.cols, a.x, [&](int64_t i) { return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(row + 2 * i))); },
        [&](int64_t i) { return h2f(row + 2 * i); });
}

float exact_bf16(const uint8_t* row, const Plan& pl, const Acts& a) {
    return dot_float_row(
        pl.cols, a.x,
        [&](int64_t i) { return vreinterpretq_f32_u32(vshll_n_u16(vreinterpret_u16_u8(vld1_u8(row + 2 * i)), 16)); },
        [&](int64_t i) { return bits_to_f32(static_cast<uint32_t>(rd16(row + 2 * i)) << 16); });
}

// ---- exact: plane-coded layouts -----------------------------------------------------------------

// 4-bit codes, G a multiple of 16: 8 plane bytes are elements j..j+7 (low) and j+G/2.. (high).
template <Hdr H>
float exact_nib4(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    const int64_t half = f.G / 2;
    const Lut16 lut(f.lut);
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes, x += f.G) {
        float d, m;
        header<H>(row, d, m);
        const float32x4_t vd = vdupq_n_f32(d), vm = vdupq_n_f32(m);
        const uint8_t* nib = row + f.hdr_bytes;
        for (int64_t j = 0; j < half; j += 8) {
            const uint8x8_t bytes = vld1_u8(nib + j);
            // byte offsets into the lut: 4 * code; codes 0..7 are low nibbles, 8..15 high
            const uint8x16_t c4 = vshlq_n_u8(vcombine_u8(vand_u8(bytes, vdup_n_u8(0x0F)), vshr_n_u8(bytes, 4)), 2);
            acc0 = vfmaq_f32(acc0, vld1q_f32(x + j), scale_exact<H>(lut.get(c4, 0), vd, vm));
            acc0 = vfmaq_f32(acc0, vld1q_f32(x + j + 4), scale_exact<H>(lut.get(c4, 1), vd, vm));
            acc1 = vfmaq_f32(acc1, vld1q_f32(x + half + j), scale_exact<H>(lut.get(c4, 2), vd, vm));
            acc1 = vfmaq_f32(acc1, vld1q_f32(x + half + j + 4), scale_exact<H>(lut.get(c4, 3), vd, vm));
        }
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

// Int8 codes (Q8_0, IntSym8): the code byte is the element.
float exact_int8(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    float tail = 0.0f;
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes, x += f.G) {
        const float d = h2f(row);
        const float32x4_t vd = vdupq_n_f32(d);
        const int8_t* q = reinterpret_cast<const int8_t*>(row + f.hdr_bytes);
        int64_t i = 0;
        for (; i + 8 <= f.G; i += 8) {
            const int16x8_t w16 = vmovl_s8(vld1_s8(q + i));
            const float32x4_t w0 = vcvtq_f32_s32(vmovl_s16(vget_low_s16(w16)));
            const float32x4_t w1 = vcvtq_f32_s32(vmovl_s16(vget_high_s16(w16)));
            acc0 = vfmaq_f32(acc0, vld1q_f32(x + i), vmulq_f32(vd, w0));
            acc1 = vfmaq_f32(acc1, vld1q_f32(x + i + 4), vmulq_f32(vd, w1));
        }
        for (; i < f.G; ++i) tail += x[i] * (d * static_cast<float>(q[i]));
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1)) + tail;
}

// Any code width: unpack a chunk of codes, decode it through the lut into floats, then FMA.
template <Hdr H>
float exact_generic(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    float32x4_t acc = vdupq_n_f32(0.0f);
    float tail = 0.0f;
    uint8_t codes[kChunk];
    float w[kChunk];
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes, x += f.G) {
        float d, m;
        header<H>(row, d, m);
        for (int64_t i0 = 0; i0 < f.G; i0 += kChunk) {
            const int64_t n = f.G - i0 < kChunk ? f.G - i0 : kChunk;
            const uint8_t* c = codes;
            if (f.bits == 8) c = row + f.hdr_bytes + i0;  // the plane is the codes
            else unpack_range(row + f.hdr_bytes, f.G, f.bits, i0, i0 + n, codes);
            for (int64_t t = 0; t < n; ++t) w[t] = scale_exact1<H>(f.lut[c[t]], d, m);
            int64_t t = 0;
            for (; t + 4 <= n; t += 4) acc = vfmaq_f32(acc, vld1q_f32(x + i0 + t), vld1q_f32(w + t));
            for (; t < n; ++t) tail += x[i0 + t] * w[t];
        }
    }
    return vaddvq_f32(acc) + tail;
}

template <Hdr H>
float exact_planes_h(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    if (f.bits == 4 && f.G % 16 == 0) return exact_nib4<H>(row, pl, a);
    if constexpr (H == Hdr::F16)
        if (f.bits == 8 && (pl.p->layout == Layout::Q8_0 || pl.p->layout == Layout::IntSym)) return exact_int8(row, pl, a);
    return exact_generic<H>(row, pl, a);
}

float exact_planes(const uint8_t* row, const Plan& pl, const Acts& a) {
    switch (pl.f.hdr) {
        case Hdr::F16: return exact_planes_h<Hdr::F16>(row, pl, a);
        case Hdr::F16Affine: return exact_planes_h<Hdr::F16Affine>(row, pl, a);
        default: return exact_planes_h<Hdr::E8M0>(row, pl, a);
    }
}

float exact_nvfp4(const uint8_t* row, const Plan& pl, const Acts& a) {
    const Lut16 lut(kE2M1Doubled);
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / 64; ++b, row += 36, x += 64) {
        for (int s = 0; s < 4; ++s) {
            const float32x4_t vd = vdupq_n_f32(pl.ue4m3_half[row[s]]);
            const uint8x8_t bytes = vld1_u8(row + 4 + 8 * s);
            const uint8x16_t c4 = vshlq_n_u8(vcombine_u8(vand_u8(bytes, vdup_n_u8(0x0F)), vshr_n_u8(bytes, 4)), 2);
            const float* xs = x + 16 * s;
            acc0 = vfmaq_f32(acc0, vld1q_f32(xs), vmulq_f32(vd, lut.get(c4, 0)));
            acc1 = vfmaq_f32(acc1, vld1q_f32(xs + 4), vmulq_f32(vd, lut.get(c4, 1)));
            acc0 = vfmaq_f32(acc0, vld1q_f32(xs + 8), vmulq_f32(vd, lut.get(c4, 2)));
            acc1 = vfmaq_f32(acc1, vld1q_f32(xs + 12), vmulq_f32(vd, lut.get(c4, 3)));
        }
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

// ---- fast paths ---------------------------------------------------------------------------------

// acc += sum over 32 elements of w * q * (activation scale of the element's group of 4) * dw: SDOT
// leaves elements 4i..4i+3 of each 16-byte half in lane i, which meets its scale lane for lane.
inline float32x4_t mac32(float32x4_t acc, int8x16_t w0, int8x16_t w1, const int8_t* q, const float* dq, float dw) {
    const int32x4_t s0 = vdotq_s32(vdupq_n_s32(0), w0, vld1q_s8(q));
    const int32x4_t s1 = vdotq_s32(vdupq_n_s32(0), w1, vld1q_s8(q + 16));
    acc = vfmaq_f32(acc, vcvtq_f32_s32(s0), vmulq_n_f32(vld1q_f32(dq), dw));
    return vfmaq_f32(acc, vcvtq_f32_s32(s1), vmulq_n_f32(vld1q_f32(dq + 4), dw));
}

// 4-bit codes, G == 32 or a multiple of 64 (the element order of kernels_avx2.cpp's fast_nib4).
// Unsigned codes (0..15) are already valid int8; the others go through the table.
template <Hdr H, bool U>
float fast_nib4(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    const int8x16_t tab = vld1q_s8(a.table);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    auto decode = [&](uint8x16_t c) {
        if constexpr (U) return vreinterpretq_s8_u8(c);
        else return vqtbl1q_s8(tab, c);
    };
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    float off = 0.0f;
    const int64_t nb = pl.cols / f.G;
    if (f.G == 32) {
        for (int64_t b = 0; b < nb; ++b, row += f.block_bytes) {
            float d, m;
            header<H>(row, d, m);
            const uint8x16_t v = vld1q_u8(row + f.hdr_bytes);
            acc0 = mac32(acc0, decode(vandq_u8(v, m4)), decode(vshrq_n_u8(v, 4)), a.q + 32 * b, a.d + kQ8Scales * b, d * a.tscale);
            if constexpr (U) off += m * a.qsum[b];
        }
        return vaddvq_f32(acc0) + off;
    }
    const int64_t nh = f.G / 64;
    for (int64_t b = 0; b < nb; ++b, row += f.block_bytes) {
        float d, m;
        header<H>(row, d, m);
        const float dw = d * a.tscale;
        const int64_t kb = b * f.G / 32;
        const uint8_t* nib = row + f.hdr_bytes;
        for (int64_t c = 0; c < nh; ++c) {
            const uint8x16_t v0 = vld1q_u8(nib + 32 * c), v1 = vld1q_u8(nib + 32 * c + 16);
            const int64_t kl = kb + c, kh = kb + nh + c;
            acc0 = mac32(acc0, decode(vandq_u8(v0, m4)), decode(vandq_u8(v1, m4)), a.q + 32 * kl, a.d + kQ8Scales * kl, dw);
            acc1 = mac32(acc1, decode(vshrq_n_u8(v0, 4)), decode(vshrq_n_u8(v1, 4)), a.q + 32 * kh, a.d + kQ8Scales * kh, dw);
        }
        if constexpr (U)
            for (int64_t k = 0; k < f.G / 32; ++k) off += m * a.qsum[kb + k];
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1)) + off;
}

// 8-bit two's complement codes (Q8_0, IntSym8, MXINT8), G a multiple of 32.
template <Hdr H>
float fast_i8(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    const int64_t per = f.G / 32;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes) {
        float d, m;
        header<H>(row, d, m);
        const float dw = d * a.tscale;
        const int64_t kb = b * per;
        const int8_t* w = reinterpret_cast<const int8_t*>(row + f.hdr_bytes);
        for (int64_t k = 0; k < per; ++k) {
            const int8x16_t w0 = vld1q_s8(w + 32 * k), w1 = vld1q_s8(w + 32 * k + 16);
            const int8_t* q = a.q + 32 * (kb + k);
            const float* dq = a.d + kQ8Scales * (kb + k);
            if (k & 1) acc1 = mac32(acc1, w0, w1, q, dq, dw);
            else acc0 = mac32(acc0, w0, w1, q, dq, dw);
        }
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

// MX E2M3, G = 32: 6-bit codes from the 4-bit plane (elements j, j+16 in byte j) and the 2-bit plane
// (element j + 8k in bits 2k of byte j), looked up in the 64-entry table with vqtbl4q_s8.
float fast_e2m3(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    const int8x16x4_t tab = {{vld1q_s8(a.table), vld1q_s8(a.table + 16), vld1q_s8(a.table + 32), vld1q_s8(a.table + 48)}};
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const uint8x8_t m2 = vdup_n_u8(0x03);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < pl.cols / 32; ++b, row += f.block_bytes) {
        const float d = e8m0_scale(row[0]);
        const uint8x16_t v = vld1q_u8(row + 1);
        const uint8x8_t p2 = vld1_u8(row + 17);
        const uint8x16_t h0 = vcombine_u8(vand_u8(p2, m2), vand_u8(vshr_n_u8(p2, 2), m2));  // elements 0..15
        const uint8x16_t h1 = vcombine_u8(vand_u8(vshr_n_u8(p2, 4), m2), vshr_n_u8(p2, 6));  // 16..31
        const uint8x16_t c0 = vorrq_u8(vandq_u8(v, m4), vshlq_n_u8(h0, 4));
        const uint8x16_t c1 = vorrq_u8(vshrq_n_u8(v, 4), vshlq_n_u8(h1, 4));
        acc = mac32(acc, vqtbl4q_s8(tab, c0), vqtbl4q_s8(tab, c1), a.q + 32 * b, a.d + kQ8Scales * b, d * a.tscale);
    }
    return vaddvq_f32(acc);
}

// NVFP4: a q8 block is two 16-element sub-blocks of 8 plane bytes each (low nibbles elements 0..7,
// high 8..15): put each sub-block back in element order and SDOT it with its half of the q8 block.
float fast_nvfp4(const uint8_t* row, const Plan& pl, const Acts& a) {
    const int8x16_t tab = vld1q_s8(a.table);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < pl.cols / 64; ++b, row += 36) {
        for (int h = 0; h < 2; ++h) {
            const uint8x16_t v = vld1q_u8(row + 4 + 16 * h);
            const uint8x16_t lo = vandq_u8(v, m4), hi = vshrq_n_u8(v, 4);
            const int8x16_t w0 = vqtbl1q_s8(tab, vcombine_u8(vget_low_u8(lo), vget_low_u8(hi)));
            const int8x16_t w1 = vqtbl1q_s8(tab, vcombine_u8(vget_high_u8(lo), vget_high_u8(hi)));
            const int8_t* q = a.q + 64 * b + 32 * h;
            const int32x4_t s0 = vdotq_s32(vdupq_n_s32(0), w0, vld1q_s8(q));
            const int32x4_t s1 = vdotq_s32(vdupq_n_s32(0), w1, vld1q_s8(q + 16));
            const float* dq = a.d + kQ8Scales * (2 * b + h);
            acc = vfmaq_f32(acc, vcvtq_f32_s32(s0), vmulq_n_f32(vld1q_f32(dq), pl.ue4m3_half[row[2 * h]] * a.tscale));
            acc = vfmaq_f32(acc, vcvtq_f32_s32(s1), vmulq_n_f32(vld1q_f32(dq + 4), pl.ue4m3_half[row[2 * h + 1]] * a.tscale));
        }
    }
    return vaddvq_f32(acc);
}

float fast_intsym(const uint8_t* row, const Plan& pl, const Acts& a) {
    return pl.f.bits == 4 ? fast_nib4<Hdr::F16, false>(row, pl, a) : fast_i8<Hdr::F16>(row, pl, a);
}

float fast_mx(const uint8_t* row, const Plan& pl, const Acts& a) {
    switch (pl.p->elem.kind) {
        case ElemKind::E2M1: return fast_nib4<Hdr::E8M0, false>(row, pl, a);
        case ElemKind::Int8: return fast_i8<Hdr::E8M0>(row, pl, a);
        default: return fast_e2m3(row, pl, a);
    }
}

constexpr KernelTable make_table() {
    KernelTable t{Isa::NEON, {}};
    at(t, Layout::F32) = {{exact_f32}};
    at(t, Layout::F16) = {{exact_f16}};
    at(t, Layout::BF16) = {{exact_bf16}};
    at(t, Layout::IntSym) = {{exact_planes}, {fast_intsym}, ActsFmt::Q8};
    at(t, Layout::IntAsym) = {{exact_planes}, {fast_nib4<Hdr::F16Affine, true>}, ActsFmt::Q8};
    at(t, Layout::Codebook4) = {{exact_planes}, {fast_nib4<Hdr::F16, false>}, ActsFmt::Q8};
    at(t, Layout::Mx) = {{exact_planes}, {fast_mx}, ActsFmt::Q8};
    for (Layout l : {Layout::Bfp, Layout::Bmf, Layout::Blog}) at(t, l) = {{exact_planes}};
    at(t, Layout::Q8_0) = {{exact_planes}, {fast_i8<Hdr::F16>}, ActsFmt::Q8};
    at(t, Layout::Q4_0) = {{exact_planes}, {fast_nib4<Hdr::F16, false>}, ActsFmt::Q8};
    at(t, Layout::Q4_1) = {{exact_planes}, {fast_nib4<Hdr::F16Affine, true>}, ActsFmt::Q8};
    at(t, Layout::NVFP4) = {{exact_nvfp4}, {fast_nvfp4}, ActsFmt::Q8};
    at(t, Layout::Q5_0) = {{exact_q5<false>}};  // common.h's portable product, built with this file's flags
    at(t, Layout::Q5_1) = {{exact_q5<true>}};
    return t;
}
constexpr KernelTable kNeon = make_table();

}  // namespace

const KernelTable& neon_table() { return kNeon; }

}  // namespace quantconv::kernels
