// AVX2 + FMA + F16C kernels (built with those flags only; dispatch.cpp checks CPUID first).
//
// Exact paths decode 8 weights at a time to float: codes come straight from the bit planes
// (x86_planes.h), values from a lut held in registers (vpermps + blends; up to 32 entries, or 64
// for sign-magnitude luts) or through vgatherdps, or by vcvtdq2ps for int8 codes; then w = d * v
// (+ m) with a separate multiply (no FMA: the same rounding as dequantize) and an FMA into the
// accumulator.
// Fast paths: 32 weight codes -> 32 int8 via vpshufb from the acts' int8 table (ggml's IQ4_NL way),
// x q8 activations with the vpmaddubsw sign trick, per q8 block one int32x8 -> float FMA.
#include <immintrin.h>

#include "kernels/common.h"
#include "kernels/x86_planes.h"

namespace quantconv::kernels {
namespace {

using quant::ElemKind;
using quant::Layout;

constexpr int64_t kChunk = 256;

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline float h2f(const uint8_t* p) { return _cvtsh_ss(rd16(p)); }

// Block header -> scale d and offset m.
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

// Element values -> weights, rounded exactly as dequantize_row does.
template <Hdr H>
inline __m256 scale_exact(__m256 v, __m256 d, __m256 m) {
    if constexpr (H == Hdr::E8M0) return _mm256_mul_ps(v, d);
    else if constexpr (H == Hdr::F16Affine) return _mm256_add_ps(_mm256_mul_ps(d, v), m);
    else return _mm256_mul_ps(d, v);
}

template <Hdr H>
inline float scale_exact1(float v, float d, float m) {
    if constexpr (H == Hdr::E8M0) return v * d;
    else if constexpr (H == Hdr::F16Affine) return d * v + m;
    else return d * v;
}

// lut[idx] for 8 indices < 16, the 16 floats in two registers.
inline __m256 lut16(__m256 lo, __m256 hi, __m256i idx) {
    const __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// ---- exact: float layouts -----------------------------------------------------------------------

template <class Load8, class Load1>
inline float dot_float_row(int64_t n, const float* x, Load8 load8, Load1 load1) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), load8(i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), load8(i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), load8(i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), load8(i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), load8(i), a0);
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; ++i) s += x[i] * load1(i);
    return s;
}

float exact_f32(const uint8_t* row, const Plan& pl, const Acts& a) {
    return dot_float_row(
        pl.cols, a.x, [&](int64_t i) { return _mm256_loadu_ps(reinterpret_cast<const float*>(row + 4 * i)); },
        [&](int64_t i) {
            float w;
            std::memcpy(&w, row + 4 * i, sizeof w);
            return w;
        });
}

float exact_f16(const uint8_t* row, const Plan& pl, const Acts& a) {
    return dot_float_row(
        pl.cols, a.x, [&](int64_t i) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i))); },
        [&](int64_t i) { return h2f(row + 2 * i); });
}

float exact_bf16(const uint8_t* row, const Plan& pl, const Acts& a) {
    return dot_float_row(
        pl.cols, a.x,
        [&](int64_t i) {
            const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
            return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        },
        [&](int64_t i) { return bits_to_f32(static_cast<uint32_t>(rd16(row + 2 * i)) << 16); });
}

// kTileTokens tokens at once, two per pass: each converted weight vector serves both tokens. Per
// token the accumulators and the order of the sums are dot_float_row's (4 accumulators: 8 for the
// pair, which fit in registers with the weights), so the results equal the matvec's bit for bit.
static_assert(kTileTokens % 2 == 0, "dot_float_tile takes the tokens in pairs");
template <class Load8, class Load1>
inline void dot_float_tile(int64_t n, const Acts* a, float* out, Load8 load8, Load1 load1) {
    for (int t = 0; t < kTileTokens; t += 2) {
        const float *x = a[t].x, *z = a[t + 1].x;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int64_t i = 0;
        for (; i + 32 <= n; i += 32) {
            const __m256 w0 = load8(i), w1 = load8(i + 8), w2 = load8(i + 16), w3 = load8(i + 24);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), w0, a0);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(z + i), w0, b0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), w1, a1);
            b1 = _mm256_fmadd_ps(_mm256_loadu_ps(z + i + 8), w1, b1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), w2, a2);
            b2 = _mm256_fmadd_ps(_mm256_loadu_ps(z + i + 16), w2, b2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), w3, a3);
            b3 = _mm256_fmadd_ps(_mm256_loadu_ps(z + i + 24), w3, b3);
        }
        for (; i + 8 <= n; i += 8) {
            const __m256 w0 = load8(i);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), w0, a0);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(z + i), w0, b0);
        }
        float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        float u = hsum(_mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)));
        for (; i < n; ++i) {
            const float w = load1(i);
            s += x[i] * w;
            u += z[i] * w;
        }
        out[t] = s;
        out[t + 1] = u;
    }
}

void exact_f32_tile(const uint8_t* row, const Plan& pl, const Acts* a, float* out) {
    dot_float_tile(
        pl.cols, a, out, [&](int64_t i) { return _mm256_loadu_ps(reinterpret_cast<const float*>(row + 4 * i)); },
        [&](int64_t i) {
            float w;
            std::memcpy(&w, row + 4 * i, sizeof w);
            return w;
        });
}

void exact_f16_tile(const uint8_t* row, const Plan& pl, const Acts* a, float* out) {
    dot_float_tile(
        pl.cols, a, out,
        [&](int64_t i) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i))); },
        [&](int64_t i) { return h2f(row + 2 * i); });
}

void exact_bf16_tile(const uint8_t* row, const Plan& pl, const Acts* a, float* out) {
    dot_float_tile(
        pl.cols, a, out,
        [&](int64_t i) {
            const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
            return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        },
        [&](int64_t i) { return bits_to_f32(static_cast<uint32_t>(rd16(row + 2 * i)) << 16); });
}

// ---- exact: plane-coded layouts -----------------------------------------------------------------

// 4-bit codes, G a multiple of 16: each 8 plane bytes hold elements j..j+7 (low nibbles) and
// j+G/2..j+G/2+7 (high nibbles).
template <Hdr H>
float exact_nib4(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    const int64_t half = f.G / 2;
    const __m256 tlo = _mm256_loadu_ps(f.lut), thi = _mm256_loadu_ps(f.lut + 8);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes, x += f.G) {
        float d, m;
        header<H>(row, d, m);
        const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
        const uint8_t* nib = row + f.hdr_bytes;
        for (int64_t j = 0; j < half; j += 8) {
            const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(nib + j));
            const __m256i ilo = _mm256_cvtepu8_epi32(_mm_and_si128(bytes, m4));
            const __m256i ihi = _mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(bytes, 4), m4));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), scale_exact<H>(lut16(tlo, thi, ilo), vd, vm), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + half + j), scale_exact<H>(lut16(tlo, thi, ihi), vd, vm), acc1);
        }
    }
    return hsum(_mm256_add_ps(acc0, acc1));
}

// Code -> element value decoders for 8 codes at a time (dot_codes below).
struct Int8Codes {  // the code byte is the int8 value (Q8_0, IntSym8)
    __m256 operator()(__m128i c8) const { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c8)); }
};

struct GatherLut {  // any lut (those too large for RegLut / SignedLut)
    const float* lut;
    __m256 operator()(__m128i c8) const { return _mm256_i32gather_ps(lut, _mm256_cvtepu8_epi32(c8), 4); }
};

// Luts of up to 32 entries held in NR registers: vpermps in each, then a blend tree on the index
// bits above the low 3 (moved into the sign bit, which is what vblendvps reads). Cheaper than
// vgatherdps, which is slow on several cores (notably AMD's).
template <int NR>
struct RegLut {
    __m256 t[NR];
    explicit RegLut(const float* lut) {  // TypeParams::lut has 256 entries: reading 8 * NR is safe
        for (int r = 0; r < NR; ++r) t[r] = _mm256_loadu_ps(lut + 8 * r);
    }
    __m256 operator()(__m128i c8) const { return lookup(_mm256_cvtepu8_epi32(c8)); }
    __m256 lookup(__m256i idx) const {  // index bits above 3 + log2(NR) are ignored
        __m256 v[NR];
        for (int r = 0; r < NR; ++r) v[r] = _mm256_permutevar8x32_ps(t[r], idx);
        int n = NR;
        for (int bit = 3; n > 1; ++bit, n /= 2) {
            const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 31 - bit));
            for (int r = 0; r < n / 2; ++r) v[r] = _mm256_blendv_ps(v[2 * r], v[2 * r + 1], sel);
        }
        return v[0];
    }
};

// Sign-magnitude luts (minifloats, bfp, blog: lut[c + half] == -lut[c]): the magnitude from half the
// table, the sign from the top code bit. Halves the registers and blends of RegLut; "-0" codes give
// -0.0f instead of +0.0f, which no dot product can tell apart.
template <int NR>
struct SignedLut {
    RegLut<NR> mag;
    int sign_shift;  // moves the top code bit to bit 31
    SignedLut(const float* lut, int bits) : mag(lut), sign_shift(32 - bits) {}
    __m256 operator()(__m128i c8) const {
        const __m256i idx = _mm256_cvtepu8_epi32(c8);
        const __m256i sign = _mm256_and_si256(_mm256_slli_epi32(idx, sign_shift), _mm256_set1_epi32(INT32_MIN));
        return _mm256_xor_ps(mag.lookup(idx), _mm256_castsi256_ps(sign));
    }
};

// n codes (one byte each) against x, decoded by dec; returns the scalar tail's sum.
template <Hdr H, class Dec>
inline float dot_codes(const uint8_t* codes, int64_t n, const Dec& dec, const float* lut, float d, float m,
                       const float* x, __m256& acc) {
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = dec(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i)));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), scale_exact<H>(v, vd, vm), acc);
    }
    float tail = 0.0f;
    for (; i < n; ++i) tail += x[i] * scale_exact1<H>(lut[codes[i]], d, m);
    return tail;
}

// 8-bit codes: the plane is the codes.
template <Hdr H, class Dec>
float exact_byte(const uint8_t* row, const Plan& pl, const Acts& a, const Dec& dec) {
    const BlockFmt& f = pl.f;
    __m256 acc = _mm256_setzero_ps();
    float tail = 0.0f;
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes, x += f.G) {
        float d, m;
        header<H>(row, d, m);
        tail += dot_codes<H>(row + f.hdr_bytes, f.G, dec, f.lut, d, m, x, acc);
    }
    return hsum(acc) + tail;
}

// Any code width: codes straight from the planes, 8 at a time, where the planes allow it; else
// unpack a chunk of codes into a buffer, then decode them.
template <Hdr H, int Bits, class Dec>
float exact_generic(const uint8_t* row, const Plan& pl, const Acts& a, const Dec& dec) {
    const BlockFmt& f = pl.f;
    __m256 acc = _mm256_setzero_ps();
    float tail = 0.0f;
    using Reader = PlaneReader<8, plane_count(Bits)>;
    if (Reader::fits(f)) {
        Reader rd(f);
        const float* x = a.x;
        for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes, x += f.G) {
            float d, m;
            header<H>(row, d, m);
            const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
            rd.start(row + f.hdr_bytes);
            for (int64_t i = 0; i < f.G; i += 8)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), scale_exact<H>(dec(rd.next()), vd, vm), acc);
        }
        return hsum(acc);
    }
    alignas(32) uint8_t codes[kChunk];
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes, x += f.G) {
        float d, m;
        header<H>(row, d, m);
        for (int64_t i0 = 0; i0 < f.G; i0 += kChunk) {
            const int64_t n = f.G - i0 < kChunk ? f.G - i0 : kChunk;
            unpack_range(row + f.hdr_bytes, f.G, f.bits, i0, i0 + n, codes);
            tail += dot_codes<H>(codes, n, dec, f.lut, d, m, x + i0, acc);
        }
    }
    return hsum(acc) + tail;
}

template <Hdr H>
float exact_planes_h(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    switch (f.bits) {
        case 1: return exact_generic<H, 1>(row, pl, a, RegLut<1>(f.lut));
        case 2: return exact_generic<H, 2>(row, pl, a, RegLut<1>(f.lut));
        case 3: return exact_generic<H, 3>(row, pl, a, RegLut<1>(f.lut));
        case 4:
            if (f.G % 16 == 0) return exact_nib4<H>(row, pl, a);
            return exact_generic<H, 4>(row, pl, a, RegLut<2>(f.lut));
        case 5:
            if (sign_magnitude(f)) return exact_generic<H, 5>(row, pl, a, SignedLut<2>(f.lut, 5));
            return exact_generic<H, 5>(row, pl, a, RegLut<4>(f.lut));
        case 6:
            if (sign_magnitude(f)) return exact_generic<H, 6>(row, pl, a, SignedLut<4>(f.lut, 6));
            return exact_generic<H, 6>(row, pl, a, GatherLut{f.lut});  // RegLut<8> spills: slower
        case 7:
            if (sign_magnitude(f)) return exact_generic<H, 7>(row, pl, a, SignedLut<8>(f.lut, 7));
            return exact_generic<H, 7>(row, pl, a, GatherLut{f.lut});
        default:  // 8: the code byte is the int8 value (Q8_0, IntSym8) or indexes the lut
            if (pl.p->layout == Layout::Q8_0 || pl.p->layout == Layout::IntSym) return exact_byte<H>(row, pl, a, Int8Codes{});
            return exact_byte<H>(row, pl, a, GatherLut{f.lut});
    }
}

float exact_planes(const uint8_t* row, const Plan& pl, const Acts& a) {
    switch (pl.f.hdr) {
        case Hdr::F16: return exact_planes_h<Hdr::F16>(row, pl, a);
        case Hdr::F16Affine: return exact_planes_h<Hdr::F16Affine>(row, pl, a);
        default: return exact_planes_h<Hdr::E8M0>(row, pl, a);
    }
}

float exact_nvfp4(const uint8_t* row, const Plan& pl, const Acts& a) {
    const __m256 tlo = _mm256_loadu_ps(kE2M1Doubled), thi = _mm256_loadu_ps(kE2M1Doubled + 8);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / 64; ++b, row += 36, x += 64) {
        for (int s = 0; s < 4; ++s) {
            const __m256 vd = _mm256_set1_ps(pl.ue4m3_half[row[s]]);
            const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + 4 + 8 * s));
            const __m256i ilo = _mm256_cvtepu8_epi32(_mm_and_si128(bytes, m4));
            const __m256i ihi = _mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(bytes, 4), m4));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + 16 * s), _mm256_mul_ps(vd, lut16(tlo, thi, ilo)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + 16 * s + 8), _mm256_mul_ps(vd, lut16(tlo, thi, ihi)), acc1);
        }
    }
    return hsum(_mm256_add_ps(acc0, acc1));
}

// ---- fast paths ---------------------------------------------------------------------------------

// 32 signed int8 weights . 32 int8 activations -> 8 int32 partial sums. vpmaddubsw wants one
// unsigned operand: |w| times a with w's sign (w = -128 gives |w| = 128 read as unsigned: still right;
// pairs stay below 2 * 128 * 127 < 32767, so nothing saturates).
inline __m256i dot_s8(__m256i w, __m256i q) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// Unsigned weights (0..15) need no sign trick.
inline __m256i dot_u8(__m256i u, __m256i q) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1));
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 4-bit codes, G == 32 or G a multiple of 64. Unsigned (asymmetric) codes are their own integer;
// the others go through the table. G == 32: the 16 plane bytes are elements 0..15 | 16..31, one q8
// block. G = 64k: 32 plane bytes at 32c are elements 32c.. (q8 block c) and G/2 + 32c.. (q8 block
// G/64 + c) of the weight block.
template <Hdr H, bool U>
float fast_nib4(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.table)));
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    float off = 0.0f;
    const int64_t nb = pl.cols / f.G;
    if (f.G == 32) {
        for (int64_t b = 0; b < nb; ++b, row += f.block_bytes) {
            float d, m;
            header<H>(row, d, m);
            const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + f.hdr_bytes));
            __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), m4);
            const __m256i q = load32(a.q + 32 * b);
            __m256i s;
            if constexpr (U) {
                s = dot_u8(w, q);
                off += m * a.xsum[b];
            } else {
                s = dot_s8(_mm256_shuffle_epi8(tab, w), q);
            }
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d * a.tscale * a.d[b]), acc0);
        }
        return hsum(acc0) + off;
    }
    const int64_t nh = f.G / 64;
    for (int64_t b = 0; b < nb; ++b, row += f.block_bytes) {
        float d, m;
        header<H>(row, d, m);
        const float dw = d * a.tscale;
        const int64_t kb = b * f.G / 32;
        const uint8_t* nib = row + f.hdr_bytes;
        for (int64_t c = 0; c < nh; ++c) {
            const __m256i v = load32(nib + 32 * c);
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            const int64_t kl = kb + c, kh = kb + nh + c;
            __m256i sl, sh;
            if constexpr (U) {
                sl = dot_u8(lo, load32(a.q + 32 * kl));
                sh = dot_u8(hi, load32(a.q + 32 * kh));
            } else {
                sl = dot_s8(_mm256_shuffle_epi8(tab, lo), load32(a.q + 32 * kl));
                sh = dot_s8(_mm256_shuffle_epi8(tab, hi), load32(a.q + 32 * kh));
            }
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sl), _mm256_set1_ps(dw * a.d[kl]), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sh), _mm256_set1_ps(dw * a.d[kh]), acc1);
        }
        if constexpr (U)
            for (int64_t k = 0; k < f.G / 32; ++k) off += m * a.xsum[kb + k];
    }
    return hsum(_mm256_add_ps(acc0, acc1)) + off;
}

// 8-bit two's complement codes (Q8_0, IntSym8, MXINT8), G a multiple of 32.
template <Hdr H>
float fast_i8(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    const int64_t per = f.G / 32;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes) {
        float d, m;
        header<H>(row, d, m);
        const float dw = d * a.tscale;
        const int64_t kb = b * per;
        const uint8_t* w = row + f.hdr_bytes;
        int64_t k = 0;
        for (; k + 2 <= per; k += 2) {
            const __m256i s0 = dot_s8(load32(w + 32 * k), load32(a.q + 32 * (kb + k)));
            const __m256i s1 = dot_s8(load32(w + 32 * k + 32), load32(a.q + 32 * (kb + k + 1)));
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_set1_ps(dw * a.d[kb + k]), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_set1_ps(dw * a.d[kb + k + 1]), acc1);
        }
        if (k < per) {
            const __m256i s0 = dot_s8(load32(w + 32 * k), load32(a.q + 32 * (kb + k)));
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_set1_ps(dw * a.d[kb + k]), acc0);
        }
    }
    return hsum(_mm256_add_ps(acc0, acc1));
}

// MX E2M3 (6-bit sign-magnitude codes, G = 32): a 4-bit plane (elements j, j+16 in byte j) and a
// 2-bit plane (element j + 8k in bits 2k of byte j). The table is symmetric (the magnitude's int8
// is at code & 31), so the magnitude is looked up with two vpshufb and the sign moves onto q.
float fast_e2m3(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    const __m256i t0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.table)));
    const __m256i t1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.table + 16)));
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03), one = _mm256_set1_epi8(1);
    const __m256i shifts = _mm256_setr_epi64x(0, 2, 4, 6);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < pl.cols / 32; ++b, row += f.block_bytes) {
        const float d = e8m0_scale(row[0]);
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 1));
        const __m256i lo4 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), m4);
        int64_t p2;
        std::memcpy(&p2, row + 17, 8);
        const __m256i hi2 = _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x(p2), shifts), m2);
        const __m256i bit4 = _mm256_cmpeq_epi8(_mm256_and_si256(hi2, one), one);
        const __m256i mag = _mm256_blendv_epi8(_mm256_shuffle_epi8(t0, lo4), _mm256_shuffle_epi8(t1, lo4), bit4);
        // sign: +1 or -1 per byte from code bit 5 (hi2 bit 1)
        const __m256i sgn = _mm256_sub_epi8(one, _mm256_and_si256(hi2, _mm256_set1_epi8(2)));
        const __m256i q = _mm256_sign_epi8(load32(a.q + 32 * b), sgn);
        const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(mag, q), _mm256_set1_epi16(1));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d * a.tscale * a.d[b]), acc);
    }
    return hsum(acc);
}

// NVFP4: a q8 block is two 16-element sub-blocks (16 plane bytes: low nibbles are elements 0..7 of
// each, high nibbles 8..15); interleave them back into element order, one scale per 128-bit lane.
float fast_nvfp4(const uint8_t* row, const Plan& pl, const Acts& a) {
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.table)));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < pl.cols / 64; ++b, row += 36) {
        for (int h = 0; h < 2; ++h) {
            const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 4 + 16 * h));
            const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
            const __m256i w = _mm256_set_m128i(_mm_unpackhi_epi64(lo, hi), _mm_unpacklo_epi64(lo, hi));
            const __m256i s = dot_s8(_mm256_shuffle_epi8(tab, w), load32(a.q + 64 * b + 32 * h));
            const float u = a.tscale * a.d[2 * b + h];
            const __m256 scale = _mm256_set_m128(_mm_set1_ps(pl.ue4m3_half[row[2 * h + 1]] * u),
                                                 _mm_set1_ps(pl.ue4m3_half[row[2 * h]] * u));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
        }
    }
    return hsum(acc);
}

// ---- fast paths, kTileTokens tokens at once (matmul) ------------------------------------------
// The same per-token arithmetic as fast_nib4 / fast_i8 (so the same results), with each weight block
// decoded (and its sign taken) once for all the tile's tokens.

template <Hdr H, bool U>
void fast_nib4_tile(const uint8_t* row, const Plan& pl, const Acts* a, float* out) {
    constexpr int NT = kTileTokens;
    const BlockFmt& f = pl.f;
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a[0].table)));
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const float ts = a[0].tscale;
    __m256 acc0[NT], acc1[NT];
    float off[NT];
    for (int t = 0; t < NT; ++t) {
        acc0[t] = acc1[t] = _mm256_setzero_ps();
        off[t] = 0.0f;
    }
    const int64_t nb = pl.cols / f.G;
    if (f.G == 32) {
        for (int64_t b = 0; b < nb; ++b, row += f.block_bytes) {
            float d, m;
            header<H>(row, d, m);
            const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + f.hdr_bytes));
            const __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), m4);
            const float dw = d * ts;
            if constexpr (U) {
                for (int t = 0; t < NT; ++t) {
                    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(w, load32(a[t].q + 32 * b)), ones);
                    off[t] += m * a[t].xsum[b];
                    acc0[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(dw * a[t].d[b]), acc0[t]);
                }
            } else {
                const __m256i ws = _mm256_shuffle_epi8(tab, w), aw = _mm256_sign_epi8(ws, ws);
                for (int t = 0; t < NT; ++t) {
                    const __m256i q = _mm256_sign_epi8(load32(a[t].q + 32 * b), ws);
                    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, q), ones);
                    acc0[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(dw * a[t].d[b]), acc0[t]);
                }
            }
        }
        for (int t = 0; t < NT; ++t) out[t] = hsum(acc0[t]) + off[t];
        return;
    }
    const int64_t nh = f.G / 64;
    for (int64_t b = 0; b < nb; ++b, row += f.block_bytes) {
        float d, m;
        header<H>(row, d, m);
        const float dw = d * ts;
        const int64_t kb = b * f.G / 32;
        const uint8_t* nib = row + f.hdr_bytes;
        for (int64_t c = 0; c < nh; ++c) {
            const __m256i v = load32(nib + 32 * c);
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            const int64_t kl = kb + c, kh = kb + nh + c;
            __m256i alo = lo, ahi = hi;
            if constexpr (!U) {
                lo = _mm256_shuffle_epi8(tab, lo);
                hi = _mm256_shuffle_epi8(tab, hi);
                alo = _mm256_sign_epi8(lo, lo);
                ahi = _mm256_sign_epi8(hi, hi);
            }
            for (int t = 0; t < NT; ++t) {
                __m256i ql = load32(a[t].q + 32 * kl), qh = load32(a[t].q + 32 * kh);
                if constexpr (!U) {
                    ql = _mm256_sign_epi8(ql, lo);
                    qh = _mm256_sign_epi8(qh, hi);
                }
                const __m256i sl = _mm256_madd_epi16(_mm256_maddubs_epi16(alo, ql), ones);
                const __m256i sh = _mm256_madd_epi16(_mm256_maddubs_epi16(ahi, qh), ones);
                acc0[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sl), _mm256_set1_ps(dw * a[t].d[kl]), acc0[t]);
                acc1[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sh), _mm256_set1_ps(dw * a[t].d[kh]), acc1[t]);
            }
        }
        if constexpr (U)
            for (int t = 0; t < NT; ++t)
                for (int64_t k = 0; k < f.G / 32; ++k) off[t] += m * a[t].xsum[kb + k];
    }
    for (int t = 0; t < NT; ++t) out[t] = hsum(_mm256_add_ps(acc0[t], acc1[t])) + off[t];
}

template <Hdr H>
void fast_i8_tile(const uint8_t* row, const Plan& pl, const Acts* a, float* out) {
    constexpr int NT = kTileTokens;
    const BlockFmt& f = pl.f;
    const __m256i ones = _mm256_set1_epi16(1);
    const float ts = a[0].tscale;
    __m256 acc0[NT], acc1[NT];
    for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
    const int64_t per = f.G / 32;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes) {
        float d, m;
        header<H>(row, d, m);
        const float dw = d * ts;
        const int64_t kb = b * per;
        const uint8_t* w = row + f.hdr_bytes;
        int64_t k = 0;
        for (; k + 2 <= per; k += 2) {
            const __m256i w0 = load32(w + 32 * k), w1 = load32(w + 32 * k + 32);
            const __m256i a0 = _mm256_sign_epi8(w0, w0), a1 = _mm256_sign_epi8(w1, w1);
            for (int t = 0; t < NT; ++t) {
                const __m256i q0 = _mm256_sign_epi8(load32(a[t].q + 32 * (kb + k)), w0);
                const __m256i q1 = _mm256_sign_epi8(load32(a[t].q + 32 * (kb + k + 1)), w1);
                const __m256i s0 = _mm256_madd_epi16(_mm256_maddubs_epi16(a0, q0), ones);
                const __m256i s1 = _mm256_madd_epi16(_mm256_maddubs_epi16(a1, q1), ones);
                acc0[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_set1_ps(dw * a[t].d[kb + k]), acc0[t]);
                acc1[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_set1_ps(dw * a[t].d[kb + k + 1]), acc1[t]);
            }
        }
        if (k < per) {
            const __m256i w0 = load32(w + 32 * k), a0 = _mm256_sign_epi8(w0, w0);
            for (int t = 0; t < NT; ++t) {
                const __m256i q0 = _mm256_sign_epi8(load32(a[t].q + 32 * (kb + k)), w0);
                const __m256i s0 = _mm256_madd_epi16(_mm256_maddubs_epi16(a0, q0), ones);
                acc0[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_set1_ps(dw * a[t].d[kb + k]), acc0[t]);
            }
        }
    }
    for (int t = 0; t < NT; ++t) out[t] = hsum(_mm256_add_ps(acc0[t], acc1[t]));
}

void fast_intsym_tile(const uint8_t* row, const Plan& pl, const Acts* a, float* out) {
    if (pl.f.bits == 4) fast_nib4_tile<Hdr::F16, false>(row, pl, a, out);
    else fast_i8_tile<Hdr::F16>(row, pl, a, out);
}

void fast_mx_tile(const uint8_t* row, const Plan& pl, const Acts* a, float* out) {
    switch (pl.p->elem.kind) {
        case ElemKind::E2M1: fast_nib4_tile<Hdr::E8M0, false>(row, pl, a, out); return;
        case ElemKind::Int8: fast_i8_tile<Hdr::E8M0>(row, pl, a, out); return;
        default:
            for (int t = 0; t < kTileTokens; ++t) out[t] = fast_e2m3(row, pl, a[t]);
    }
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

const KernelTable kAvx2 = {
    Isa::AVX2,
    {
        {exact_f32, nullptr, exact_f32_tile, nullptr},                                                      // F32
        {exact_f16, nullptr, exact_f16_tile, nullptr},                                                      // F16
        {exact_bf16, nullptr, exact_bf16_tile, nullptr},                                                    // BF16
        {exact_planes, fast_intsym, nullptr, fast_intsym_tile},                                             // IntSym
        {exact_planes, fast_nib4<Hdr::F16Affine, true>, nullptr, fast_nib4_tile<Hdr::F16Affine, true>},     // IntAsym
        {exact_planes, fast_nib4<Hdr::F16, false>, nullptr, fast_nib4_tile<Hdr::F16, false>},               // Codebook4
        {exact_planes, fast_mx, nullptr, fast_mx_tile},                                                     // Mx
        {exact_planes, nullptr},                                                                            // Bfp
        {exact_planes, nullptr},                                                                            // Bmf
        {exact_planes, nullptr},                                                                            // Blog
        {exact_planes, fast_i8<Hdr::F16>, nullptr, fast_i8_tile<Hdr::F16>},                                 // Q8_0
        {exact_planes, fast_nib4<Hdr::F16, false>, nullptr, fast_nib4_tile<Hdr::F16, false>},               // Q4_0
        {exact_planes, fast_nib4<Hdr::F16Affine, true>, nullptr, fast_nib4_tile<Hdr::F16Affine, true>},     // Q4_1
        {exact_nvfp4, fast_nvfp4},                                                                          // NVFP4
    }};

}  // namespace

const KernelTable& avx2_table() { return kAvx2; }

}  // namespace quantconv::kernels
