// AVX-512 kernels (F/BW/VL/DQ; dispatch.cpp also requires the VNNI/VBMI/BF16 flags this file is
// built with): 512-bit exact paths of the plane-coded layouts, 16 weights at a time. 4-bit codes index
// a 16-float lut in one register (vpermps), 5- and 6-bit codes a 32-float lut in two (vpermt2ps, twice
// for 6 bits; sign-magnitude luts look up the magnitude in half the table).
// The integer fast paths stay AVX2's: on Sapphire Rapids a VPDPBUSD version with 512-bit registers
// (two q8 blocks per instruction) measured 10-50% slower than the AVX2 kernels, whose per-block
// shuffles and scale broadcasts already fill the shuffle port that 512-bit code leans on.
#include <immintrin.h>

#include "kernels/common.h"
#include "kernels/x86_planes.h"

// GCC 12's AVX-512 headers build results on _mm512_undefined_*() (`__m512 __Y = __Y;`), which its
// own -W(maybe-)uninitialized flags wherever the intrinsics inline (GCC bug 105593, fixed in 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace quantconv::kernels {
namespace {

using quant::ElemKind;
using quant::Layout;

inline float h2f(const uint8_t* p) { return _cvtsh_ss(rd16(p)); }

// Horizontal sum (not _mm512_reduce_add_ps: GCC 12's version trips -Wmaybe-uninitialized).
inline float hsum(__m512 v) {
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));  // + the other 256-bit half
    __m256 h = _mm512_castps512_ps256(v);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
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
inline __m512 scale_exact(__m512 v, __m512 d, __m512 m) {
    if constexpr (H == Hdr::E8M0) return _mm512_mul_ps(v, d);
    else if constexpr (H == Hdr::F16Affine) return _mm512_add_ps(_mm512_mul_ps(d, v), m);
    else return _mm512_mul_ps(d, v);
}

// ---- exact: float layouts ----------------------------------------------------------------------
// F32 / F16 / BF16 keep the AVX2 table's rows: their matmul tiles and matvec row groups are AVX2 code,
// and a 512-bit vec_dot beside them would sum the leftover rows and tokens in another order, breaking
// matmul == T matvecs bit for bit (kernels.h).

// ---- exact: plane-coded layouts -----------------------------------------------------------------

// 4-bit codes, G a multiple of 32: 16 plane bytes are elements j..j+15 (low) and j+G/2.. (high).
template <Hdr H>
float exact_nib4(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    const int64_t half = f.G / 2;
    const __m512 lut = _mm512_loadu_ps(f.lut);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes, x += f.G) {
        float d, m;
        header<H>(row, d, m);
        const __m512 vd = _mm512_set1_ps(d), vm = _mm512_set1_ps(m);
        const uint8_t* nib = row + f.hdr_bytes;
        for (int64_t j = 0; j < half; j += 16) {
            const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(nib + j));
            const __m512i ilo = _mm512_cvtepu8_epi32(_mm_and_si128(bytes, m4));
            const __m512i ihi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(bytes, 4), m4));
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), scale_exact<H>(_mm512_permutexvar_ps(ilo, lut), vd, vm), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + half + j), scale_exact<H>(_mm512_permutexvar_ps(ihi, lut), vd, vm), acc1);
        }
    }
    return hsum(_mm512_add_ps(acc0, acc1));
}

// The AVX2 row's exact path, for block geometries the 512-bit code does not cover. (Indexing rows
// directly: KernelTable::row is an inline function, which an ISA file must not emit; see common.h.)
float avx2_exact(const uint8_t* row, const Plan& pl, const Acts& a) {
    return avx2_table().rows[static_cast<size_t>(pl.p->layout)].exact.dot(row, pl, a);
}

// Code -> element value decoders for 16 codes at a time.
struct Int8Codes {  // the code byte is the int8 value (Q8_0, IntSym8)
    __m512 operator()(__m128i c16) const { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c16)); }
};

struct GatherLut {  // 7- and 8-bit codes
    const float* lut;
    __m512 operator()(__m128i c16) const { return _mm512_i32gather_ps(_mm512_cvtepu8_epi32(c16), lut, 4); }
};

// Up to 64 entries: vpermps (16) / vpermt2ps (32), and bit 5 of the code picks between two of those.
template <int N>
struct RegLut {
    __m512 t[4];
    explicit RegLut(const float* lut) {  // TypeParams::lut has 256 entries: reading N is safe
        for (int r = 0; r < 4; ++r) t[r] = r * 16 < N ? _mm512_loadu_ps(lut + 16 * r) : _mm512_setzero_ps();
    }
    __m512 operator()(__m128i c16) const { return lookup(_mm512_cvtepu8_epi32(c16)); }
    __m512 lookup(__m512i idx) const {  // index bits above log2(N) are ignored
        if constexpr (N <= 16) return _mm512_permutexvar_ps(idx, t[0]);
        const __m512 lo = _mm512_permutex2var_ps(t[0], idx, t[1]);
        if constexpr (N <= 32) return lo;
        const __m512 hi = _mm512_permutex2var_ps(t[2], idx, t[3]);
        return _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)), lo, hi);
    }
};

// Sign-magnitude luts (lut[c + half] == -lut[c]): magnitude from half the table, sign from the top
// code bit ("-0" codes give -0.0f, which no dot product can tell from +0.0f).
template <int N>
struct SignedLut {
    RegLut<N> mag;
    int sign_shift;
    SignedLut(const float* lut, int bits) : mag(lut), sign_shift(32 - bits) {}
    __m512 operator()(__m128i c16) const {
        const __m512i idx = _mm512_cvtepu8_epi32(c16);
        const __m512i sign = _mm512_and_si512(_mm512_slli_epi32(idx, static_cast<unsigned>(sign_shift)), _mm512_set1_epi32(INT32_MIN));
        return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(mag.lookup(idx)), sign));
    }
};

// Any code width: 8-bit planes are the codes; other codes come straight from the planes, 16 at a
// time. Blocks whose planes are narrower than that (a 2-bit plane of a 32-element block is 8 bytes)
// go to the AVX2 kernel, which reads 8 at a time (decoding into a buffer instead would stall on
// store-to-load forwarding).
template <Hdr H, int Bits, class Dec>
float exact_codes(const uint8_t* row, const Plan& pl, const Acts& a, const Dec& dec) {
    const BlockFmt& f = pl.f;
    using Reader = PlaneReader<16, plane_count(Bits)>;
    if ((Bits < 8 && !Reader::fits(f)) || (Bits == 8 && f.G % 16 != 0)) return avx2_exact(row, pl, a);
    __m512 acc = _mm512_setzero_ps();
    const float* x = a.x;
    Reader rd(f);
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes, x += f.G) {
        float d, m;
        header<H>(row, d, m);
        const __m512 vd = _mm512_set1_ps(d), vm = _mm512_set1_ps(m);
        const uint8_t* codes = row + f.hdr_bytes;
        if constexpr (Bits != 8) rd.start(codes);
        for (int64_t i = 0; i < f.G; i += 16) {
            __m128i c;
            if constexpr (Bits == 8) c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i));
            else c = rd.next();
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), scale_exact<H>(dec(c), vd, vm), acc);
        }
    }
    return hsum(acc);
}

// MX E4M3 / E5M2, G a multiple of 16: the AVX2 file's exact_fp8_rows for one row, 16 lanes. With
// Acts::x96 the codes go straight into float32's fields (Fp8Fields), else into fp16's (Fp16Fields,
// widened by vcvtph2ps); per block one chain of x * value, then the decode's unit and the block's
// power of two on its sum.
template <bool E4M3, bool X96>
float exact_fp8_u(const uint8_t* row, const Plan& pl, const Acts& a) {
    using F = Fp8Fields<E4M3>;
    using H = Fp16Fields<E4M3>;
    const BlockFmt& f = pl.f;
    __m512 acc = _mm512_setzero_ps();
    const float* x = X96 ? a.x96 : a.x;
    const float unit = X96 ? F::kUnit : H::kUnit;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes, x += f.G) {
        __m512 s = _mm512_setzero_ps();
        for (int64_t i = 0; i < f.G; i += 16) {
            const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + f.hdr_bytes + i));
            __m512 w;
            if constexpr (X96) {
                const __m512i v = _mm512_slli_epi32(_mm512_cvtepi8_epi32(c), F::kShift);
                w = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(F::kMask))));
            } else {
                const __m256i v = _mm256_slli_epi16(_mm256_cvtepi8_epi16(c), H::kShift);
                w = _mm512_cvtph_ps(_mm256_and_si256(v, _mm256_set1_epi16(static_cast<short>(H::kMask))));
            }
            s = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), w, s);
        }
        if (unit != 1.0f) s = _mm512_mul_ps(s, _mm512_set1_ps(unit));
        acc = _mm512_fmadd_ps(s, _mm512_set1_ps(pl.e8m0[row[0]]), acc);
    }
    return hsum(acc);
}

float exact_fp8(const uint8_t* row, const Plan& pl, const Acts& a) {
    if (pl.f.G % 16 != 0) return avx2_exact(row, pl, a);
    const bool e4m3 = pl.p->elem.kind == ElemKind::E4M3;
    if (a.x96) return e4m3 ? exact_fp8_u<true, true>(row, pl, a) : exact_fp8_u<false, true>(row, pl, a);
    return e4m3 ? exact_fp8_u<true, false>(row, pl, a) : exact_fp8_u<false, false>(row, pl, a);
}

template <Hdr H>
float exact_planes_h(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    switch (f.bits) {
        case 1: return exact_codes<H, 1>(row, pl, a, RegLut<8>(f.lut));
        case 2: return exact_codes<H, 2>(row, pl, a, RegLut<8>(f.lut));
        case 3: return exact_codes<H, 3>(row, pl, a, RegLut<8>(f.lut));
        case 4:
            if (f.G % 32 == 0) return exact_nib4<H>(row, pl, a);
            return exact_codes<H, 4>(row, pl, a, RegLut<16>(f.lut));
        case 5: return exact_codes<H, 5>(row, pl, a, RegLut<32>(f.lut));
        case 6:
            if (sign_magnitude(f)) return exact_codes<H, 6>(row, pl, a, SignedLut<32>(f.lut, 6));
            return exact_codes<H, 6>(row, pl, a, RegLut<64>(f.lut));
        case 7:
            if (sign_magnitude(f)) return exact_codes<H, 7>(row, pl, a, SignedLut<64>(f.lut, 7));
            return exact_codes<H, 7>(row, pl, a, GatherLut{f.lut});
        default:
            if (pl.p->layout == Layout::Q8_0 || pl.p->layout == Layout::IntSym) return exact_codes<H, 8>(row, pl, a, Int8Codes{});
            if (mx_fp8(*pl.p)) return exact_fp8(row, pl, a);
            return exact_codes<H, 8>(row, pl, a, GatherLut{f.lut});
    }
}

float exact_planes(const uint8_t* row, const Plan& pl, const Acts& a) {
    switch (pl.f.hdr) {
        case Hdr::F16: return exact_planes_h<Hdr::F16>(row, pl, a);
        case Hdr::F16Affine: return exact_planes_h<Hdr::F16Affine>(row, pl, a);
        default: return exact_planes_h<Hdr::E8M0>(row, pl, a);
    }
}

// The AVX2 table with the plane-coded exact products replaced (built at run time: AVX2's table lives in
// another file); the float layouts, NVFP4's exact product and every fast product stay AVX2. AVX2's
// exact row groups (Mx's) sum like AVX2's vec_dot, so they go too: with another vec_dot a row would
// give one result in a matvec group and another in a matmul (kernels.h's contract).
KernelTable make_table() {
    KernelTable t = avx2_table();
    t.isa = Isa::AVX512;
    for (Layout l : {Layout::IntSym, Layout::IntAsym, Layout::Codebook4, Layout::Mx, Layout::Bfp, Layout::Bmf,
                     Layout::Blog, Layout::Q8_0, Layout::Q4_0, Layout::Q4_1})
        at(t, l).exact = {exact_planes};
    return t;
}

}  // namespace

const KernelTable& avx512_table() {
    static const KernelTable t = make_table();
    return t;
}

}  // namespace quantconv::kernels
