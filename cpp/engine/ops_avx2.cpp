// AVX2 + FMA + F16C versions of the engine's vector routines (compiled with those flags only; picked
// at run time by ops.cpp). Self-contained on purpose: no inline helpers shared with other files, so
// no AVX2 copy of a shared inline function can leak into code that runs on older CPUs.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine/ops.h"

namespace quantconv::engine {
namespace {

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// e^x for x <= 0 (softmax after subtracting the max): range reduction to r in [-ln2/2, ln2/2] and a
// degree-6 polynomial; relative error about 2e-7. Inputs below -87 give 0.
inline __m256 exp_neg(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    const __m256 tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(tiny, y);
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) { return _cvtsh_ss(*p); }

template <class KV>
float dot_q(const float* q, const KV* k, int64_t hd) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 16 <= hd; d += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), load8(k + d + 8), a1);
    }
    for (; d + 8 <= hd; d += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), a0);
    float s = hsum(_mm256_add_ps(a0, a1));
    for (; d < hd; ++d) s += q[d] * load1(k + d);
    return s;
}

// The 8 horizontal sums of a[0..7], in lane order.
inline __m256 hsum8(const __m256 (&a)[8]) {
    const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 t0 = _mm256_hadd_ps(s01, s23), t1 = _mm256_hadd_ps(s45, s67);
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

// Scores of 8 consecutive keys (hd a multiple of 8): one accumulator per key, one reduction for all.
template <class KV>
inline __m256 dot_q8keys(const float* q, const KV* k, int64_t hd) {
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8) {
        const __m256 qd = _mm256_loadu_ps(q + d);
        for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qd, load8(k + j * hd + d), acc[j]);
    }
    return hsum8(acc);
}

// attend() in three phases that attend_block() shares, so that both give the same values per query.

// Scores of keys [k0, k1) (k0 a multiple of 8; keys past the last multiple of 8 below n only when k1 ==
// n) into scores, their max into vmx / mx.
template <class KV>
inline void score_range(const float* q, const KV* K, int64_t k0, int64_t k1, int64_t n, int64_t hd, float scale,
                        float* scores, __m256& vmx, float& mx) {
    int64_t j = k0;
    if (hd % 8 == 0) {
        const __m256 vs = _mm256_set1_ps(scale);
        for (; j + 8 <= k1; j += 8) {
            const __m256 s = _mm256_mul_ps(vs, dot_q8keys(q, K + j * hd, hd));
            _mm256_storeu_ps(scores + j, s);
            vmx = _mm256_max_ps(vmx, s);
        }
    }
    if (k1 < n && hd % 8 == 0) return;  // a full chunk: no tail here
    for (; j < k1; ++j) {
        const float s = scale * dot_q(q, K + j * hd, hd);
        scores[j] = s;
        mx = s > mx ? s : mx;
    }
}

inline float max_of(__m256 vmx, float mx) {
    alignas(32) float m8[8];
    _mm256_store_ps(m8, vmx);
    for (float v : m8) mx = v > mx ? v : mx;
    return mx;
}

// scores[j] = e^(scores[j] - mx); returns their sum.
inline float exp_scores(float* scores, int64_t n, float mx) {
    const __m256 m8 = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(scores + j), m8));
        _mm256_storeu_ps(scores + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum(vsum);
    for (; j < n; ++j) {
        const float e = std::exp(scores[j] - mx);
        scores[j] = e;
        sum += e;
    }
    return sum;
}

// o[d] += sum_{j in [k0, k1)} p_j V_j[d] for the first hd rounded down to 8 dimensions, 32 at a time in
// registers: even and odd keys in separate accumulators (8 independent FMA chains instead of 4, which
// left the loop waiting on FMA latency), added once at the end of the range. Callers use the same
// ranges (kKeyChunk chunks from key 0) so that every caller sums in the same order.
template <class KV>
inline void pv_range(const float* p, const KV* V, int64_t k0, int64_t k1, int64_t hd, float* o) {
    int64_t d0 = 0;
    for (; d0 + 32 <= hd; d0 += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int64_t j = k0;
        for (; j + 2 <= k1; j += 2) {
            const __m256 pa = _mm256_broadcast_ss(p + j), pb = _mm256_broadcast_ss(p + j + 1);
            const KV* va = V + j * hd + d0;
            const KV* vb = va + hd;
            a0 = _mm256_fmadd_ps(pa, load8(va), a0);
            a1 = _mm256_fmadd_ps(pa, load8(va + 8), a1);
            a2 = _mm256_fmadd_ps(pa, load8(va + 16), a2);
            a3 = _mm256_fmadd_ps(pa, load8(va + 24), a3);
            b0 = _mm256_fmadd_ps(pb, load8(vb), b0);
            b1 = _mm256_fmadd_ps(pb, load8(vb + 8), b1);
            b2 = _mm256_fmadd_ps(pb, load8(vb + 16), b2);
            b3 = _mm256_fmadd_ps(pb, load8(vb + 24), b3);
        }
        if (j < k1) {
            const __m256 pa = _mm256_broadcast_ss(p + j);
            const KV* va = V + j * hd + d0;
            a0 = _mm256_fmadd_ps(pa, load8(va), a0);
            a1 = _mm256_fmadd_ps(pa, load8(va + 8), a1);
            a2 = _mm256_fmadd_ps(pa, load8(va + 16), a2);
            a3 = _mm256_fmadd_ps(pa, load8(va + 24), a3);
        }
        _mm256_storeu_ps(o + d0, _mm256_add_ps(_mm256_loadu_ps(o + d0), _mm256_add_ps(a0, b0)));
        _mm256_storeu_ps(o + d0 + 8, _mm256_add_ps(_mm256_loadu_ps(o + d0 + 8), _mm256_add_ps(a1, b1)));
        _mm256_storeu_ps(o + d0 + 16, _mm256_add_ps(_mm256_loadu_ps(o + d0 + 16), _mm256_add_ps(a2, b2)));
        _mm256_storeu_ps(o + d0 + 24, _mm256_add_ps(_mm256_loadu_ps(o + d0 + 24), _mm256_add_ps(a3, b3)));
    }
    for (; d0 + 8 <= hd; d0 += 8) {
        __m256 a0 = _mm256_setzero_ps();
        for (int64_t j = k0; j < k1; ++j) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), load8(V + j * hd + d0), a0);
        _mm256_storeu_ps(o + d0, _mm256_add_ps(_mm256_loadu_ps(o + d0), a0));
    }
}

// out = o * inv over the vector dimensions; the scalar remainder of hd from scratch.
template <class KV>
inline void finish(const float* p, const KV* V, int64_t n, int64_t hd, const float* o, float inv, float* out) {
    const int64_t hd8 = hd / 8 * 8;
    const __m256 s = _mm256_set1_ps(inv);
    for (int64_t d = 0; d < hd8; d += 8) _mm256_storeu_ps(out + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), s));
    for (int64_t d = hd8; d < hd; ++d) {
        float acc = 0.0f;
        for (int64_t j = 0; j < n; ++j) acc += p[j] * load1(V + j * hd + d);
        out[d] = acc * inv;
    }
}

// x[i] = cap * tanh(x[i] / cap) with tanh|y| = (1 - e^-2|y|) / (1 + e^-2|y|) (absolute error a few 1e-7,
// times cap); returns the largest result.
inline float softcap_inplace(float* x, int64_t n, float cap) {
    const __m256 vc = _mm256_set1_ps(cap), one = _mm256_set1_ps(1.0f);
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)), m2 = _mm256_set1_ps(-2.0f);
    __m256 vmx = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 y = _mm256_div_ps(_mm256_loadu_ps(x + i), vc);
        const __m256 a = _mm256_and_ps(y, absm);
        const __m256 t = exp_neg(_mm256_mul_ps(m2, a));
        const __m256 th = _mm256_div_ps(_mm256_sub_ps(one, t), _mm256_add_ps(one, t));
        const __m256 r = _mm256_mul_ps(vc, _mm256_or_ps(th, _mm256_andnot_ps(absm, y)));  // sign of y
        _mm256_storeu_ps(x + i, r);
        vmx = _mm256_max_ps(vmx, r);
    }
    float mx = -INFINITY;
    for (; i < n; ++i) {
        x[i] = cap * std::tanh(x[i] / cap);
        mx = x[i] > mx ? x[i] : mx;
    }
    return max_of(vmx, mx);
}

// Keys per chunk of the value sums (and, in attend_block, of the score pass): 64 rows of K or V (16 KB at
// hd = 64 in fp32) stay in L1 while every query of a block uses them.
constexpr int64_t kKeyChunk = 64;

template <class KV>
void attend(const float* q, const KV* K, const KV* V, int64_t n, int64_t hd, float scale, float cap, float* scores,
            float* out) {
    __m256 vmx = _mm256_set1_ps(-INFINITY);
    float mx = -INFINITY;
    score_range(q, K, 0, n, n, hd, scale, scores, vmx, mx);
    const float top = cap > 0.0f ? softcap_inplace(scores, n, cap) : max_of(vmx, mx);
    const float inv = 1.0f / exp_scores(scores, n, top);
    // out doubles as the accumulator (it is written only at the end otherwise)
    for (int64_t d = 0; d < hd; ++d) out[d] = 0.0f;
    for (int64_t c0 = 0; c0 < n; c0 += kKeyChunk) pv_range(scores, V, c0, std::min(c0 + kKeyChunk, n), hd, out);
    finish(scores, V, n, hd, out, inv, out);
}

template <class KV>
void attend_block(const float* q, int64_t ldq, int nq, const KV* K, const KV* V, int64_t n0, int64_t hd, float scale,
                  float cap, int64_t window, float* scratch, float* out, int64_t ldo) {
    // query j: keys [first[j], first[j] + len[j]), counted from its own first key as attend() counts them
    int64_t first[kAttendBlock], len[kAttendBlock], n_max = 0;
    for (int j = 0; j < nq; ++j) {
        const int64_t n = n0 + j;
        first[j] = window > 0 && n > window ? n - window : 0;
        len[j] = n - first[j];
        n_max = std::max(n_max, len[j]);
    }
    const int64_t stride = (n_max + 7) / 8 * 8;
    float* acc = scratch + nq * stride;  // nq x hd accumulators
    __m256 vmx[kAttendBlock];
    float mx[kAttendBlock], inv[kAttendBlock];
    for (int j = 0; j < nq; ++j) {
        vmx[j] = _mm256_set1_ps(-INFINITY);
        mx[j] = -INFINITY;
    }
    for (int64_t c0 = 0; c0 < n_max; c0 += kKeyChunk)
        for (int j = 0; j < nq; ++j) {
            const int64_t n = len[j], c1 = std::min(c0 + kKeyChunk, n);
            if (c0 < c1)
                score_range(q + j * ldq, K + first[j] * hd, c0, c1, n, hd, scale, scratch + j * stride, vmx[j], mx[j]);
        }
    for (int j = 0; j < nq; ++j) {
        float* sj = scratch + j * stride;
        const float top = cap > 0.0f ? softcap_inplace(sj, len[j], cap) : max_of(vmx[j], mx[j]);
        inv[j] = 1.0f / exp_scores(sj, len[j], top);
        for (int64_t d = 0; d < hd; ++d) acc[j * hd + d] = 0.0f;
    }
    for (int64_t c0 = 0; c0 < n_max; c0 += kKeyChunk)
        for (int j = 0; j < nq; ++j) {
            const int64_t c1 = std::min(c0 + kKeyChunk, len[j]);
            if (c0 < c1) pv_range(scratch + j * stride, V + first[j] * hd, c0, c1, hd, acc + j * hd);
        }
    for (int j = 0; j < nq; ++j)
        finish(scratch + j * stride, V + first[j] * hd, len[j], hd, acc + j * hd, inv[j], out + j * ldo);
}

void to_fp16_avx2(const float* x, uint16_t* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; ++i) out[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

void attend_f32_avx2(const float* q, const float* K, const float* V, int64_t n, int64_t hd, float scale, float cap,
                     float* scores, float* out) {
    attend<float>(q, K, V, n, hd, scale, cap, scores, out);
}

void attend_f16_avx2(const float* q, const uint16_t* K, const uint16_t* V, int64_t n, int64_t hd, float scale,
                     float cap, float* scores, float* out) {
    attend<uint16_t>(q, K, V, n, hd, scale, cap, scores, out);
}

// silu(g) * u with e = e^-|g| (never overflows): silu(g) = g / (1 + e) for g >= 0 and g * e / (1 + e)
// below (the same value as g / (1 + e^-g)); relative error a few 1e-7.
void swiglu_avx2(float* g, const float* u, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = exp_neg(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_and_ps(x, absm)));
        const __m256 num = _mm256_blendv_ps(x, _mm256_mul_ps(x, e), x);  // sign bit of x picks g * e
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(num, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// gelu_tanh(g) * u through 0.5 (1 + tanh(z)) = 1 / (1 + e^-2z): gelu_tanh(x) = x sigmoid(2z), z = sqrt(2/pi)
// (x + 0.044715 x^3), with the same overflow-free sigmoid as swiglu (z has the sign of x).
void geglu_avx2(float* g, const float* u, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 c1 = _mm256_set1_ps(2.0f * 0.7978845608028654f), c3 = _mm256_set1_ps(0.044715f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 z2 = _mm256_mul_ps(c1, _mm256_fmadd_ps(_mm256_mul_ps(c3, x), _mm256_mul_ps(x, x), x));
        const __m256 e = exp_neg(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_and_ps(z2, absm)));
        const __m256 num = _mm256_blendv_ps(x, _mm256_mul_ps(x, e), x);
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(num, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    for (; i < n; ++i) {
        const float x = g[i];
        g[i] = 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + 0.044715f * x * x * x))) * u[i];
    }
}

float softcap_avx2(float* x, int64_t n, float cap) { return softcap_inplace(x, n, cap); }

void attend_block_f32_avx2(const float* q, int64_t ldq, int nq, const float* K, const float* V, int64_t n0, int64_t hd,
                           float scale, float cap, int64_t window, float* scratch, float* out, int64_t ldo) {
    attend_block<float>(q, ldq, nq, K, V, n0, hd, scale, cap, window, scratch, out, ldo);
}

void attend_block_f16_avx2(const float* q, int64_t ldq, int nq, const uint16_t* K, const uint16_t* V, int64_t n0,
                           int64_t hd, float scale, float cap, int64_t window, float* scratch, float* out, int64_t ldo) {
    attend_block<uint16_t>(q, ldq, nq, K, V, n0, hd, scale, cap, window, scratch, out, ldo);
}

const detail::OpsTable kAvx2 = {to_fp16_avx2,          attend_f32_avx2,       attend_f16_avx2, swiglu_avx2,
                                attend_block_f32_avx2, attend_block_f16_avx2, geglu_avx2,      softcap_avx2,
                                "avx2"};

}  // namespace

const detail::OpsTable& detail::ops_avx2_table() { return kAvx2; }

}  // namespace quantconv::engine
