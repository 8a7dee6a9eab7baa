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

#include <type_traits>

#include "kernels/common.h"
#include "kernels/x86_planes.h"

namespace quantconv::kernels {
namespace {

using quant::ElemKind;
using quant::Layout;

constexpr int64_t kChunk = 256;

#define QC_INLINE inline __attribute__((always_inline))

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

// Matvec row groups (Plan::prefetch): the group's bytes [pos, pos + n) are being read now, so ask
// for those `dist` bytes further on. Prefetches never fault, so reading past the matrix is harmless.
inline void prefetch_ahead(const uint8_t* group, int64_t dist, int64_t pos, int64_t n) {
    if (dist <= 0) return;
    const uint8_t* p = group + dist + pos;
    for (int64_t o = 0; o < n; o += 64) _mm_prefetch(reinterpret_cast<const char*>(p + o), _MM_HINT_T0);
}

// lut[idx] for 8 indices < 16, the 16 floats in two registers.
inline __m256 lut16(__m256 lo, __m256 hi, __m256i idx) {
    const __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// ---- exact: float layouts -----------------------------------------------------------------------
// RM rows x RN tokens at once (RM = RN = 1: the vec_dot; kGroupRows x 1: matvec row groups;
// kExactTileRows x kTileTokens: matmul tiles). One accumulator per (row, token), 8 columns per FMA, then
// hsum and the scalar tail in column order: every shape does the same arithmetic per (row, token),
// so matmul equals T matvecs bit for bit. Each converted weight vector serves RN tokens and each
// activation vector RM rows.
template <int RM, int RN, class Load8, class Load1>
inline void float_tile(const uint8_t* W, size_t rb, int64_t n, const Acts* a, float* out, int64_t ldo, Load8 load8,
                       Load1 load1, int64_t prefetch) {
    __m256 acc[RM][RN];
    for (int r = 0; r < RM; ++r)
        for (int t = 0; t < RN; ++t) acc[r][t] = _mm256_setzero_ps();
    const int64_t es = n ? static_cast<int64_t>(rb) / n : 0;  // bytes per weight
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        if constexpr (RN == 1 && RM > 1)
            if (i % 32 == 0) prefetch_ahead(W, prefetch, RM * i * es, RM * 32 * es);
        __m256 w[RM];
        for (int r = 0; r < RM; ++r) w[r] = load8(W + r * rb, i);
        for (int t = 0; t < RN; ++t) {
            const __m256 x = _mm256_loadu_ps(a[t].x + i);
            for (int r = 0; r < RM; ++r) acc[r][t] = _mm256_fmadd_ps(x, w[r], acc[r][t]);
        }
    }
    for (int r = 0; r < RM; ++r)
        for (int t = 0; t < RN; ++t) {
            float s = hsum(acc[r][t]);
            for (int64_t j = i; j < n; ++j) s += a[t].x[j] * load1(W + r * rb, j);
            out[t * ldo + r] = s;
        }
}

struct LoadF32 {
    __m256 operator()(const uint8_t* row, int64_t i) const { return _mm256_loadu_ps(reinterpret_cast<const float*>(row + 4 * i)); }
    float operator()(const uint8_t* row, int64_t i, int) const {
        float w;
        std::memcpy(&w, row + 4 * i, sizeof w);
        return w;
    }
};
struct LoadF16 {
    __m256 operator()(const uint8_t* row, int64_t i) const {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
    }
    float operator()(const uint8_t* row, int64_t i, int) const { return h2f(row + 2 * i); }
};
struct LoadBF16 {
    __m256 operator()(const uint8_t* row, int64_t i) const {
        const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
    }
    float operator()(const uint8_t* row, int64_t i, int) const { return bits_to_f32(static_cast<uint32_t>(rd16(row + 2 * i)) << 16); }
};

template <class L, int RM, int RN>
void exact_float_tile(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t ldo) {
    const L ld;
    float_tile<RM, RN>(W, rb, pl.cols, a, out, ldo, [&](const uint8_t* row, int64_t i) { return ld(row, i); },
                       [&](const uint8_t* row, int64_t i) { return ld(row, i, 0); }, pl.prefetch);
}

template <class L>
float exact_float(const uint8_t* row, const Plan& pl, const Acts& a) {
    float out;
    exact_float_tile<L, 1, 1>(row, 0, pl, &a, &out, 0);
    return out;
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

// MX E4M3 / E5M2 decoders, 8 codes at a time (exact_fp8_rows). HalfFp8: Fp16Fields' bit patterns
// widened by vcvtph2ps, for acts without x96. FloatFp8: Fp8Fields' decode, three integer operations
// and no conversion: mxfp8 matvec -25% in kernels_bench (codes of realistic magnitudes; random codes,
// 1/16 of them subnormal, run slower on AMD cores, which take float32 subnormal inputs through a slow
// path; the reference model's E4M3 codes hold none).
template <bool E4M3>
struct HalfFp8 {
    using F = Fp16Fields<E4M3>;
    static constexpr bool kX96 = false;  // reads Acts::x
    QC_INLINE __m256 eight(const uint8_t* c) const {
        const __m128i v = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
        return _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(v, F::kShift), _mm_set1_epi16(static_cast<short>(F::kMask))));
    }
};

template <bool E4M3>
struct FloatFp8 {
    using F = Fp8Fields<E4M3>;
    static constexpr bool kX96 = true;
    QC_INLINE __m256 eight(const uint8_t* c) const {
        const __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
        return _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(v, F::kShift), _mm256_set1_epi32(static_cast<int>(F::kMask))));
    }
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

// n codes (one byte each) against x, decoded by dec; returns the scalar tail's sum. One 8-lane chain
// in column order, as the F32 vec_dot: the exact matmul of these layouts (decoded rows through the
// F32 tiles) then equals their matvecs bit for bit.
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

// MX E4M3 / E5M2 (8-bit codes, E8M0 scales, G a multiple of 16): RM rows against one token (RM = 1:
// the vec_dot; kGroupRows: matvec row groups, whose independent chains hide the FMA latency). Per
// row and block the products x * value sum in two 8-lane chains (columns 16j..16j+7 and
// 16j+8..16j+15), and the block's scale multiplies their sum once; every RM does the same per row.
// The block scale is a power of two, so this is the dequantized dot product up to float summation
// order (a multiply per weight fewer than scaling each weight first).
template <int RM, class Dec>
void exact_fp8_rows_u(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out) {
    const BlockFmt& f = pl.f;
    const Dec dec;
    __m256 acc[RM];
    for (int r = 0; r < RM; ++r) acc[r] = _mm256_setzero_ps();
    const float* x = Dec::kX96 ? a[0].x96 : a[0].x;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, x += f.G) {
        if constexpr (RM > 1) prefetch_ahead(W, pl.prefetch, b * RM * f.block_bytes, RM * f.block_bytes);
        const uint8_t* codes[RM];
        for (int r = 0; r < RM; ++r) codes[r] = W + r * rb + b * f.block_bytes + f.hdr_bytes;
        __m256 s0[RM], s1[RM];
        auto step = [&](int64_t i, auto first) {
            const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
#pragma GCC unroll 8
            for (int r = 0; r < RM; ++r) {
                const __m256 lo = dec.eight(codes[r] + i), hi = dec.eight(codes[r] + i + 8);
                s0[r] = decltype(first)::value ? _mm256_mul_ps(x0, lo) : _mm256_fmadd_ps(x0, lo, s0[r]);
                s1[r] = decltype(first)::value ? _mm256_mul_ps(x1, hi) : _mm256_fmadd_ps(x1, hi, s1[r]);
            }
        };
        step(0, std::true_type{});
        for (int64_t i = 16; i < f.G; i += 16) step(i, std::false_type{});
        // the decoder's unit (exact: a power of two) on the block's sum, then d straight from the plan's
        // table: a vector multiply instead of folding it into d, which overflows for large scales
#pragma GCC unroll 8
        for (int r = 0; r < RM; ++r) {
            __m256 s = _mm256_add_ps(s0[r], s1[r]);
            if constexpr (Dec::F::kUnit != 1.0f) s = _mm256_mul_ps(s, _mm256_set1_ps(Dec::F::kUnit));
            acc[r] = _mm256_fmadd_ps(s, _mm256_broadcast_ss(pl.e8m0 + codes[r][-f.hdr_bytes]), acc[r]);
        }
    }
    for (int r = 0; r < RM; ++r) out[r] = hsum(acc[r]);
}

template <int RM>
void exact_fp8_rows(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t) {
    // x96 is missing only for activations of 2^31 and more, inf or NaN: fp16's route then
    const bool e4m3 = pl.p->elem.kind == ElemKind::E4M3;
    if (a[0].x96) {
        if (e4m3) exact_fp8_rows_u<RM, FloatFp8<true>>(W, rb, pl, a, out);
        else exact_fp8_rows_u<RM, FloatFp8<false>>(W, rb, pl, a, out);
    } else if (e4m3) {
        exact_fp8_rows_u<RM, HalfFp8<true>>(W, rb, pl, a, out);
    } else {
        exact_fp8_rows_u<RM, HalfFp8<false>>(W, rb, pl, a, out);
    }
}

float exact_fp8(const uint8_t* row, const Plan& pl, const Acts& a) {
    float out;
    exact_fp8_rows<1>(row, 0, pl, &a, &out, 0);
    return out;
}

// Whether exact_fp8_rows takes this plan (MX E4M3 / E5M2 with G a multiple of 16).
bool fp8_rows(const Plan& pl) { return mx_fp8(*pl.p) && pl.f.G % 16 == 0; }

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
            if (fp8_rows(pl)) return exact_fp8(row, pl, a);
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
// Weights decode to int8 per q8 block (32 elements): |w| as unsigned bytes `aw` and a byte vector
// `sg` carrying w's signs (a zero w has a zero |w|, so its sign byte does not matter). The q8
// activations take the signs (vpsignb), vpmaddubsw multiplies, vpmaddwd sums pairs, one float FMA
// per q8 block scales by the activation scale into a per-weight-block sum, and one FMA per weight
// block by (block scale * tscale) into the row's accumulator. Pairs stay below 2 * 128 * 127 < 32767,
// so nothing saturates.
//
// One kernel per block format, templated on RM rows x RN tokens with one accumulator per (row,
// token): the vec_dot is the 1 x 1 instance, matvec row groups kGroupRows x 1, matmul tiles
// kTileRows x kTileTokens. Every shape does the same arithmetic per (row, token) in the same order,
// so matmul equals T matvecs bit for bit; a decoded weight block serves RN tokens and a q8
// activation block RM rows.

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 16 bytes of a 4-bit plane -> their 32 codes: low nibbles in the lower 128-bit lane, high nibbles in
// the upper (the bytes broadcast to both lanes, the upper shifted: two operations fewer than building
// the register from two 128-bit halves).
inline __m256i nib32(const uint8_t* p) {
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0F));
}

// q8 block k of every token against RM rows' decoded weights: bacc[r][t] += dot * d[t], the integer
// dot scaled by the activation scale only; fast_tile applies the weight block's scale once per
// block (per q8 block this saves a broadcast and a multiply per (row, token): ~10-14% on SF4 g128/64
// matvec and tiles in kernels_bench).
// U: unsigned codes (aw is the code, sg unused).
// SW: sg is the signed weight itself, within +-127: for one token |q| is then shared by the rows
// and the sign moves onto the weights, one vpsignb less per row (the same integer products).
// First: the block's first q8 block, which starts the sums (a multiply instead of an FMA into zeros).
// Off: the weights were offset by +Off to make them unsigned (E2M1Off); Off * x^ per group of
// kQ8Group (Acts::gsum) comes off with the activation scale, an FMA in place of the multiply.
template <bool U, bool SW, bool First, int Off, int RM, int RN>
QC_INLINE void mac_block(const __m256i (&aw)[RM], const __m256i (&sg)[RM], const Acts* a, int64_t k,
                         __m256 (&bacc)[RM][RN]) {
    auto mac = [](__m256 f, __m256 d, __m256& acc) { acc = First ? _mm256_mul_ps(f, d) : _mm256_fmadd_ps(f, d, acc); };
    const __m256i ones = _mm256_set1_epi16(1);
    if constexpr (SW && RN == 1 && RM > 1) {
        const __m256i q = load32(a[0].q + 32 * k), qa = _mm256_sign_epi8(q, q);
        const __m256 d = _mm256_loadu_ps(a[0].d + kQ8Scales * k);  // lane i: elements 4i..4i+3
#pragma GCC unroll 8
        for (int r = 0; r < RM; ++r) {
            const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(qa, _mm256_sign_epi8(sg[r], q)), ones);
            mac(_mm256_cvtepi32_ps(s), d, bacc[r][0]);
        }
        return;
    }
#pragma GCC unroll 8
    for (int t = 0; t < RN; ++t) {
        const __m256i q = load32(a[t].q + 32 * k);
        const __m256 d = _mm256_loadu_ps(a[t].d + kQ8Scales * k);  // lane i: elements 4i..4i+3
        __m256 off = _mm256_setzero_ps();
        if constexpr (Off != 0) off = _mm256_mul_ps(_mm256_loadu_ps(a[t].gsum + kQ8Scales * k), _mm256_set1_ps(-static_cast<float>(Off)));
#pragma GCC unroll 8
        for (int r = 0; r < RM; ++r) {
            const __m256i qs = U ? q : _mm256_sign_epi8(q, sg[r]);
            const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[r], qs), ones);
            if constexpr (Off != 0) bacc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, First ? off : _mm256_add_ps(bacc[r][t], off));
            else mac(_mm256_cvtepi32_ps(s), d, bacc[r][t]);
        }
    }
}

// The block formats: decode(blk, k, aw, sg) gives q8 block k (< per) of the weight block at blk.
// 4-bit codes through the acts' 16-entry int8 table (or unsigned), G == 32: the 16 plane bytes are
// elements 0..15 (low nibbles) | 16..31 (high nibbles).
template <Hdr H_, bool U_>
struct Nib4G32 {
    static constexpr Hdr H = H_;
    static constexpr bool U = U_;
    static constexpr bool SW = !U_;  // table values are within +-127
    static constexpr int kOffset = 0;
    const __m256i tab, m4 = _mm256_set1_epi8(0x0F);
    const int hdr;
    static constexpr int64_t per = 1;
    Nib4G32(const Plan& pl, const Acts& a)
        : tab(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.table)))), hdr(pl.f.hdr_bytes) {}
    void decode(const uint8_t* blk, int64_t, __m256i& aw, __m256i& sg) const { from_codes(nib32(blk + hdr), aw, sg); }
    // 32 codes -> the weights (unsigned: the codes; else the table's int8 values and their magnitudes)
    QC_INLINE void from_codes(__m256i c, __m256i& aw, __m256i& sg) const {
        if constexpr (U) {
            aw = c;
        } else {
            sg = _mm256_shuffle_epi8(tab, c);
            aw = _mm256_sign_epi8(sg, sg);
        }
    }
    // G = 64n (n = 2 * half q8 blocks): the 32 plane bytes at 32c hold q8 block c in their low nibbles
    // and q8 block half + c in their high nibbles
    QC_INLINE void decode_wide(const uint8_t* blk, int64_t k, int64_t half, __m256i& aw, __m256i& sg) const {
        const bool hi = k >= half;
        __m256i c = load32(blk + hdr + 32 * (hi ? k - half : k));
        if (hi) c = _mm256_srli_epi16(c, 4);
        from_codes(_mm256_and_si256(c, m4), aw, sg);
    }
};

// G = 64n, any n (Nib4G32::decode_wide).
template <Hdr H_, bool U_>
struct Nib4Wide : Nib4G32<H_, U_> {
    const int64_t per, half;
    Nib4Wide(const Plan& pl, const Acts& a) : Nib4G32<H_, U_>(pl, a), per(pl.f.G / 32), half(pl.f.G / 64) {}
    void decode(const uint8_t* blk, int64_t k, __m256i& aw, __m256i& sg) const { this->decode_wide(blk, k, half, aw, sg); }
};

// Nib4Wide with G = 32 * PER known at compile time (G = 64 and 128, the common groups): the
// q8-block loop has a fixed trip count and each decode knows its nibble half (SF4 g64 matvec ~8%,
// 2x4 tiles ~7% faster in kernels_bench).
template <Hdr H_, bool U_, int PER>
struct Nib4Fixed : Nib4G32<H_, U_> {
    static constexpr int64_t per = PER, half = PER / 2;
    Nib4Fixed(const Plan& pl, const Acts& a) : Nib4G32<H_, U_>(pl, a) {}
    QC_INLINE void decode(const uint8_t* blk, int64_t k, __m256i& aw, __m256i& sg) const {
        this->decode_wide(blk, k, half, aw, sg);  // half is a constant here: the branch folds away per k
    }
};

// 8-bit two's complement codes (Q8_0, IntSym8, MXINT8), G a multiple of 32.
template <Hdr H_>
struct Int8Fmt {
    static constexpr Hdr H = H_;
    static constexpr bool U = false;
    static constexpr bool SW = false;  // -128 is a code
    static constexpr int kOffset = 0;
    const int hdr;
    const int64_t per;
    Int8Fmt(const Plan& pl, const Acts&) : hdr(pl.f.hdr_bytes), per(pl.f.G / 32) {}
    void decode(const uint8_t* blk, int64_t k, __m256i& aw, __m256i& sg) const {
        sg = load32(blk + hdr + 32 * k);
        aw = _mm256_sign_epi8(sg, sg);
    }
};

// G = 32 (Q8_0, MXINT8): one q8 block per weight block, known at compile time.
template <Hdr H_>
struct Int8G32 : Int8Fmt<H_> {
    static constexpr int64_t per = 1;
    using Int8Fmt<H_>::Int8Fmt;
};

// MX E2M1, G = 32: the acts' table holds the doubled values -12..12 (fill_table), and +12 makes
// every weight an unsigned 0..24 that vpmaddubsw multiplies with the signed activations directly:
// no vpsignb for the weights' magnitudes nor for the activations' signs. The 12 * x^ this adds per
// group of kQ8Group comes off with the activation scale (mac_block's Off). Two operations fewer per
// row and block than Nib4G32 (mxfp4 matvec -9 % in kernels_bench).
struct E2M1Off {
    static constexpr Hdr H = Hdr::E8M0;
    static constexpr bool U = true;  // aw is the unsigned weight
    static constexpr bool SW = false;
    static constexpr int kOffset = 12;
    static constexpr int64_t per = 1;
    const __m256i tab;
    const int hdr;
    E2M1Off(const Plan& pl, const Acts& a)
        : tab(_mm256_add_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.table))),
                              _mm256_set1_epi8(kOffset))),
          hdr(pl.f.hdr_bytes) {}
    void decode(const uint8_t* blk, int64_t, __m256i& aw, __m256i&) const { aw = _mm256_shuffle_epi8(tab, nib32(blk + hdr)); }
};

// MX E2M3 (6-bit sign-magnitude codes, G = 32): a 4-bit plane (elements j, j+16 in byte j) and a
// 2-bit plane (element j + 8k in bits 2k of byte j). The table is symmetric (the magnitude's int8
// is at code & 31): the magnitude from two vpshufb, the sign from code bit 5.
struct E2M3Fmt {
    static constexpr Hdr H = Hdr::E8M0;
    static constexpr bool U = false;
    static constexpr bool SW = false;  // sg is only a sign
    static constexpr int kOffset = 0;
    const __m256i t0, t1;
    static constexpr int64_t per = 1;
    E2M3Fmt(const Plan&, const Acts& a)
        : t0(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.table)))),
          t1(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.table + 16)))) {}
    void decode(const uint8_t* blk, int64_t, __m256i& aw, __m256i& sg) const {
        const __m256i one = _mm256_set1_epi8(1);
        const __m256i lo4 = nib32(blk + 1);  // the low 4 code bits
        // top 2 code bits: the 8 plane bytes in every 64-bit lane, lane k shifted by 2k: bit 0 of each byte
        // is code bit 4, bit 1 the sign (bits above are the other elements' and ignored)
        const __m256i hi2 = _mm256_srlv_epi64(_mm256_broadcastq_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 17))),
                                              _mm256_setr_epi64x(0, 2, 4, 6));
        // vpblendvb reads each byte's bit 7: a 16-bit shift by 7 moves both bytes' bit 0 there
        aw = _mm256_blendv_epi8(_mm256_shuffle_epi8(t0, lo4), _mm256_shuffle_epi8(t1, lo4), _mm256_slli_epi16(hi2, 7));
        sg = _mm256_sub_epi8(one, _mm256_and_si256(hi2, _mm256_set1_epi8(2)));  // +1 / -1 from code bit 5
    }
};

// The RM rows' fp16 block scales times the table unit (dw) and offsets (m; 0 unless F16Affine): the
// RM halves gathered into one register and converted together (vcvtph2ps and the multiply once for
// all rows instead of once per row: the same values, fewer operations per block, which the
// 64-element blocks of 576-wide rows pay often). E8M0 scales need none of this (fast_tile).
template <Hdr H, int RM>
QC_INLINE void block_scales(const uint8_t* const (&blk)[RM], float ts, float (&dw)[8], float (&m)[8]) {
    static_assert(RM <= 8, "one register of halves");
    static_assert(H != Hdr::E8M0, "E8M0 scales are broadcast from Plan::e8m0");
    __m128i hd = _mm_setzero_si128(), hm = _mm_setzero_si128();
#pragma GCC unroll 8
    for (int r = 0; r < RM; ++r) {
        hd = _mm_insert_epi16(hd, rd16(blk[r]), r);
        if constexpr (H == Hdr::F16Affine) hm = _mm_insert_epi16(hm, rd16(blk[r] + 2), r);
    }
    if constexpr (RM <= 4) {
        _mm_store_ps(dw, _mm_mul_ps(_mm_cvtph_ps(hd), _mm_set1_ps(ts)));
        if constexpr (H == Hdr::F16Affine) _mm_store_ps(m, _mm_cvtph_ps(hm));
    } else {
        _mm256_store_ps(dw, _mm256_mul_ps(_mm256_cvtph_ps(hd), _mm256_set1_ps(ts)));
        if constexpr (H == Hdr::F16Affine) _mm256_store_ps(m, _mm256_cvtph_ps(hm));
    }
}

template <class Fmt, int RM, int RN>
void fast_tile(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t ldo) {
    const BlockFmt& f = pl.f;
    const Fmt fmt(pl, a[0]);
    const float ts = a[0].tscale;
    __m256 acc[RM][RN];
    float off[RM][RN];  // asymmetric codes: the sum of m * qsum
#pragma GCC unroll 8
    for (int r = 0; r < RM; ++r)
#pragma GCC unroll 8
        for (int t = 0; t < RN; ++t) {
            acc[r][t] = _mm256_setzero_ps();
            off[r][t] = 0.0f;
        }
    const int64_t nb = pl.cols / f.G;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk[RM];
#pragma GCC unroll 8
        for (int r = 0; r < RM; ++r) blk[r] = W + r * rb + b * f.block_bytes;
        alignas(32) float dw[8], m[8];
        if constexpr (Fmt::H != Hdr::E8M0) block_scales<Fmt::H, RM>(blk, ts, dw, m);
        if constexpr (RN == 1 && RM > 1) prefetch_ahead(W, pl.prefetch, b * RM * f.block_bytes, RM * f.block_bytes);
        const int64_t kb = b * fmt.per;
        // the block's q8 blocks with their activation scales, then the weight scale once
        __m256 bacc[RM][RN];
        auto step = [&](int64_t k, auto first) {
            __m256i aw[RM], sg[RM];
#pragma GCC unroll 8
            for (int r = 0; r < RM; ++r) fmt.decode(blk[r], k, aw[r], sg[r]);
            mac_block<Fmt::U, Fmt::SW, decltype(first)::value, Fmt::kOffset>(aw, sg, a, kb + k, bacc);
        };
        step(0, std::true_type{});
        for (int64_t k = 1; k < fmt.per; ++k) step(k, std::false_type{});
#pragma GCC unroll 8
        for (int r = 0; r < RM; ++r) {
            // E8M0: the power of two straight from the plan's table (the table unit ts is applied
            // once per row at the end): two operations per row and 32-element block instead of the
            // eight of decoding the byte and scaling it (mxfp4 matvec -13 % in kernels_bench)
            const __m256 vd = Fmt::H == Hdr::E8M0 ? _mm256_broadcast_ss(pl.e8m0 + blk[r][0]) : _mm256_broadcast_ss(dw + r);
#pragma GCC unroll 8
            for (int t = 0; t < RN; ++t) acc[r][t] = _mm256_fmadd_ps(bacc[r][t], vd, acc[r][t]);
        }
        if constexpr (Fmt::H == Hdr::F16Affine) {
            // Per token the block's activation sum once (shared by the rows), then one FMA per
            // (row, token): the per-(row, token, q8 block) scalar loop this replaces took ~40% of
            // int4:asym prefill. The same operations in every shape (matmul == matvec bit for bit).
            float xs[RN];
#pragma GCC unroll 8
            for (int t = 0; t < RN; ++t) {
                const float* s = a[t].qsum + kb;
                float v = s[0];
                for (int64_t k = 1; k < fmt.per; ++k) v += s[k];
                xs[t] = v;
            }
#pragma GCC unroll 8
            for (int r = 0; r < RM; ++r)
#pragma GCC unroll 8
                for (int t = 0; t < RN; ++t) off[r][t] = __builtin_fmaf(m[r], xs[t], off[r][t]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RM; ++r)
#pragma GCC unroll 8
        for (int t = 0; t < RN; ++t) out[t * ldo + r] = (Fmt::H == Hdr::E8M0 ? hsum(acc[r][t]) * ts : hsum(acc[r][t])) + off[r][t];
}

template <Hdr H, int RM, int RN>
void fast_int8_tile(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t ldo) {
    if (pl.f.G == 32) fast_tile<Int8G32<H>, RM, RN>(W, rb, pl, a, out, ldo);
    else fast_tile<Int8Fmt<H>, RM, RN>(W, rb, pl, a, out, ldo);
}

template <Hdr H, bool U, int RM, int RN>
void fast_nib4_tile(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t ldo) {
    if (pl.f.G == 32) fast_tile<Nib4G32<H, U>, RM, RN>(W, rb, pl, a, out, ldo);
    else if (pl.f.G == 64) fast_tile<Nib4Fixed<H, U, 2>, RM, RN>(W, rb, pl, a, out, ldo);
    else if (pl.f.G == 128) fast_tile<Nib4Fixed<H, U, 4>, RM, RN>(W, rb, pl, a, out, ldo);
    else fast_tile<Nib4Wide<H, U>, RM, RN>(W, rb, pl, a, out, ldo);
}

template <int RM, int RN>
void fast_intsym_tile(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t ldo) {
    if (pl.f.bits == 4) fast_nib4_tile<Hdr::F16, false, RM, RN>(W, rb, pl, a, out, ldo);
    else fast_int8_tile<Hdr::F16, RM, RN>(W, rb, pl, a, out, ldo);
}

template <int RM, int RN>
void fast_mx_tile(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t ldo) {
    switch (pl.p->elem.kind) {
        case ElemKind::E2M1:
            if (pl.f.G == 32) fast_tile<E2M1Off, RM, RN>(W, rb, pl, a, out, ldo);
            else fast_nib4_tile<Hdr::E8M0, false, RM, RN>(W, rb, pl, a, out, ldo);
            return;
        case ElemKind::Int8: fast_int8_tile<Hdr::E8M0, RM, RN>(W, rb, pl, a, out, ldo); return;
        default: fast_tile<E2M3Fmt, RM, RN>(W, rb, pl, a, out, ldo);
    }
}

// A tile kernel's 1 x 1 instance as a vec_dot.
template <void (*Tile)(const uint8_t*, size_t, const Plan&, const Acts*, float*, int64_t)>
float vec_of(const uint8_t* row, const Plan& pl, const Acts& a) {
    float out;
    Tile(row, 0, pl, &a, &out, 0);
    return out;
}

// NVFP4: a q8 block is two 16-element sub-blocks (16 plane bytes: low nibbles are elements 0..7 of
// each, high nibbles 8..15); interleave them back into element order, one scale per 128-bit lane.
float fast_nvfp4(const uint8_t* row, const Plan& pl, const Acts& a) {
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.table)));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < pl.cols / 64; ++b, row += 36) {
        for (int h = 0; h < 2; ++h) {
            const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 4 + 16 * h));
            const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
            const __m256i w = _mm256_shuffle_epi8(tab, _mm256_set_m128i(_mm_unpackhi_epi64(lo, hi), _mm_unpacklo_epi64(lo, hi)));
            const __m256i q = _mm256_sign_epi8(load32(a.q + 64 * b + 32 * h), w);
            const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), q), ones);
            const __m256 u = _mm256_mul_ps(_mm256_set1_ps(a.tscale), _mm256_loadu_ps(a.d + kQ8Scales * (2 * b + h)));
            const __m256 scale = _mm256_mul_ps(_mm256_set_m128(_mm_set1_ps(pl.ue4m3_half[row[2 * h + 1]]),
                                                               _mm_set1_ps(pl.ue4m3_half[row[2 * h]])), u);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
        }
    }
    return hsum(acc);
}

// Kernels as types with a static run<RM, RN>, so that one table row can name all their shapes.
template <Hdr H, bool U>
struct Nib4K {
    template <int RM, int RN>
    static void run(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t ldo) {
        fast_nib4_tile<H, U, RM, RN>(W, rb, pl, a, out, ldo);
    }
};
template <class Fmt>
struct FmtK {
    template <int RM, int RN>
    static void run(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t ldo) {
        fast_tile<Fmt, RM, RN>(W, rb, pl, a, out, ldo);
    }
};
struct IntSymK {
    template <int RM, int RN>
    static void run(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t ldo) {
        fast_intsym_tile<RM, RN>(W, rb, pl, a, out, ldo);
    }
};
struct MxK {
    template <int RM, int RN>
    static void run(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t ldo) {
        fast_mx_tile<RM, RN>(W, rb, pl, a, out, ldo);
    }
};

// Kernel K's fast product in its shapes.
template <class K>
constexpr Product fast_product() {
    return {vec_of<&K::template run<1, 1>>, &K::template run<kTileRows, kTileTokens>, &K::template run<kGroupRows, 1>};
}
// Mx's exact matvec row groups: E4M3 / E5M2 in groups (exact_fp8_rows), the other element kinds
// row by row through the vec_dot (the same results as no row group).
void mx_exact_rows(const uint8_t* W, size_t rb, const Plan& pl, const Acts* a, float* out, int64_t ldo) {
    if (fp8_rows(pl)) return exact_fp8_rows<kGroupRows>(W, rb, pl, a, out, ldo);
    for (int r = 0; r < kGroupRows; ++r) out[r] = exact_planes(W + r * rb, pl, a[0]);
}
template <class L>
constexpr KernelRow float_row() {
    return {{exact_float<L>, exact_float_tile<L, kExactTileRows, kTileTokens>, exact_float_tile<L, kGroupRows, 1>}};
}

constexpr KernelTable make_table() {
    KernelTable t{Isa::AVX2, {}};
    at(t, Layout::F32) = float_row<LoadF32>();
    at(t, Layout::F16) = float_row<LoadF16>();
    at(t, Layout::BF16) = float_row<LoadBF16>();
    at(t, Layout::IntSym) = {{exact_planes}, fast_product<IntSymK>(), ActsFmt::Q8};
    at(t, Layout::IntAsym) = {{exact_planes}, fast_product<Nib4K<Hdr::F16Affine, true>>(), ActsFmt::Q8};
    at(t, Layout::Codebook4) = {{exact_planes}, fast_product<Nib4K<Hdr::F16, false>>(), ActsFmt::Q8};
    at(t, Layout::Mx) = {{exact_planes, nullptr, mx_exact_rows}, fast_product<MxK>(), ActsFmt::Q8};
    for (Layout l : {Layout::Bfp, Layout::Bmf, Layout::Blog}) at(t, l) = {{exact_planes}};
    at(t, Layout::Q8_0) = {{exact_planes}, fast_product<FmtK<Int8G32<Hdr::F16>>>(), ActsFmt::Q8};
    at(t, Layout::Q4_0) = {{exact_planes}, fast_product<Nib4K<Hdr::F16, false>>(), ActsFmt::Q8};
    at(t, Layout::Q4_1) = {{exact_planes}, fast_product<Nib4K<Hdr::F16Affine, true>>(), ActsFmt::Q8};
    at(t, Layout::NVFP4) = {{exact_nvfp4}, {fast_nvfp4}, ActsFmt::Q8};
    at(t, Layout::Q5_0) = {{exact_q5<false>}};  // common.h's portable product, built with this file's flags
    at(t, Layout::Q5_1) = {{exact_q5<true>}};
    return t;
}
constexpr KernelTable kAvx2 = make_table();

}  // namespace

const KernelTable& avx2_table() { return kAvx2; }

// q8_blocks_portable with 8 lanes: max and the clamps ignore NaN the same way, vcvtps2dq rounds to
// even as lrint does in the default rounding mode, so the bytes are the same.
void q8_blocks_avx2(const float* x, int64_t nb, float* d, int8_t* q) {
    // one scale per group of 4 = per 128-bit half of a register: the group max by two in-lane swaps
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f), k127 = _mm256_set1_ps(127.0f);
    for (int64_t b = 0; b < nb; ++b, x += kQ8Block, q += kQ8Block, d += kQ8Scales) {
        __m256i r[4];
        __m256 dv[4];
        for (int i = 0; i < 4; ++i) {
            const __m256 v = _mm256_loadu_ps(x + 8 * i);
            __m256 m = _mm256_and_ps(v, absm);
            m = _mm256_andnot_ps(_mm256_cmp_ps(m, m, _CMP_UNORD_Q), m);  // NaN counts as 0 (the portable max skips it)
            m = _mm256_max_ps(m, _mm256_permute_ps(m, 0xB1));
            m = _mm256_max_ps(m, _mm256_permute_ps(m, 0x4E));
            const __m256 db = _mm256_div_ps(m, k127);
            const __m256 id = _mm256_and_ps(_mm256_cmp_ps(db, _mm256_setzero_ps(), _CMP_GT_OQ), _mm256_div_ps(k127, m));
            const __m256 s = _mm256_mul_ps(v, id);
            const __m256 nan = _mm256_cmp_ps(s, s, _CMP_UNORD_Q);
            const __m256 c = _mm256_max_ps(_mm256_min_ps(s, hi), lo);
            r[i] = _mm256_cvtps_epi32(_mm256_andnot_ps(nan, c));
            dv[i] = db;
        }
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        // lanes 0 and 4 of each dv hold its two groups' scales
        const __m256 s01 = _mm256_shuffle_ps(dv[0], dv[1], 0x00), s23 = _mm256_shuffle_ps(dv[2], dv[3], 0x00);
        const __m256 all = _mm256_shuffle_ps(s01, s23, 0x88);  // lanes: d0 d2 d4 d6 | d1 d3 d5 d7
        _mm256_storeu_ps(d, _mm256_permutevar8x32_ps(all, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
}

}  // namespace quantconv::kernels
