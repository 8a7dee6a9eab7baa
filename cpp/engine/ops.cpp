#include "engine/ops.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "quant/fpconv.h"

namespace quantconv::engine {
namespace {

uint16_t fp16_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0u));
    if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to >= 65520: inf
    if (ax < 0x38800000u) {  // below 2^-14: subnormal (or zero) in fp16
        // value = ax as float; fp16 subnormal unit 2^-24: round(v * 2^24) to nearest even
        float v;
        std::memcpy(&v, &ax, sizeof v);
        const float scaled = v * 16777216.0f;  // exact (power of two)
        const auto r = static_cast<uint32_t>(std::nearbyint(scaled));
        return static_cast<uint16_t>(sign | r);
    }
    // normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even
    const uint32_t mant_odd = (ax >> 13) & 1u;
    const uint32_t r = ax + 0xFFFu + mant_odd;
    return static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13));
}

float dot(const float* a, const float* b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

void softmax_inplace(float* s, int64_t n) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
        s[j] = std::exp(s[j] - mx);
        sum += s[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < n; ++j) s[j] *= inv;
}

float softcap_scalar(float* x, int64_t n, float cap) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; ++i) {
        x[i] = cap * std::tanh(x[i] / cap);
        mx = x[i] > mx ? x[i] : mx;
    }
    return mx;
}

void to_fp16_scalar(const float* x, uint16_t* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = fp16_bits(x[i]);
}

void attend_f32_scalar(const float* q, const float* K, const float* V, int64_t n, int64_t hd, float scale,
                       float cap, float* scores, float* out) {
    for (int64_t j = 0; j < n; ++j) scores[j] = scale * dot(q, K + j * hd, hd);
    if (cap > 0.0f) softcap_scalar(scores, n, cap);
    softmax_inplace(scores, n);
    for (int64_t d = 0; d < hd; ++d) out[d] = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
        const float p = scores[j];
        const float* v = V + j * hd;
        for (int64_t d = 0; d < hd; ++d) out[d] += p * v[d];
    }
}

void attend_f16_scalar(const float* q, const uint16_t* K, const uint16_t* V, int64_t n, int64_t hd, float scale,
                       float cap, float* scores, float* out) {
    for (int64_t j = 0; j < n; ++j) {
        const uint16_t* k = K + j * hd;
        float s = 0.0f;
        for (int64_t d = 0; d < hd; ++d) s += q[d] * quant::fp16_to_fp32(k[d]);
        scores[j] = scale * s;
    }
    if (cap > 0.0f) softcap_scalar(scores, n, cap);
    softmax_inplace(scores, n);
    for (int64_t d = 0; d < hd; ++d) out[d] = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
        const float p = scores[j];
        const uint16_t* v = V + j * hd;
        for (int64_t d = 0; d < hd; ++d) out[d] += p * quant::fp16_to_fp32(v[d]);
    }
}

void swiglu_scalar(float* g, const float* u, int64_t n) {
    for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void geglu_scalar(float* g, const float* u, int64_t n) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    for (int64_t i = 0; i < n; ++i) {
        const float x = g[i];
        g[i] = 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + 0.044715f * x * x * x))) * u[i];
    }
}

// The portable block versions: one query after the other (the same values as attend_*).
// The first key query j (n keys up to its own) sees: the window's first, or key 0.
int64_t first_key(int64_t n, int64_t window) { return window > 0 && n > window ? n - window : 0; }

void attend_block_f32_scalar(const float* q, int64_t ldq, int nq, const float* K, const float* V, int64_t n0,
                             int64_t hd, float scale, float cap, int64_t window, float* scratch, float* out,
                             int64_t ldo) {
    for (int j = 0; j < nq; ++j) {
        const int64_t f = first_key(n0 + j, window);
        attend_f32_scalar(q + j * ldq, K + f * hd, V + f * hd, n0 + j - f, hd, scale, cap, scratch, out + j * ldo);
    }
}

void attend_block_f16_scalar(const float* q, int64_t ldq, int nq, const uint16_t* K, const uint16_t* V, int64_t n0,
                             int64_t hd, float scale, float cap, int64_t window, float* scratch, float* out,
                             int64_t ldo) {
    for (int j = 0; j < nq; ++j) {
        const int64_t f = first_key(n0 + j, window);
        attend_f16_scalar(q + j * ldq, K + f * hd, V + f * hd, n0 + j - f, hd, scale, cap, scratch, out + j * ldo);
    }
}

const detail::OpsTable kScalar = {to_fp16_scalar,          attend_f32_scalar, attend_f16_scalar, swiglu_scalar,
                                  attend_block_f32_scalar, attend_block_f16_scalar, geglu_scalar, softcap_scalar,
                                  "scalar"};

const detail::OpsTable& pick() {
    // QUANTCONV_ISA=scalar (the kernels' switch) also selects the portable routines here
    if (const char* env = std::getenv("QUANTCONV_ISA"); env && std::strcmp(env, "scalar") == 0) return kScalar;
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return detail::ops_avx2_table();
#endif
    return kScalar;
}

const detail::OpsTable& table() {
    static const detail::OpsTable& t = pick();
    return t;
}

}  // namespace

void to_fp16(const float* x, uint16_t* out, int64_t n) { table().to_fp16(x, out, n); }

void attend_f32(const float* q, const float* K, const float* V, int64_t n, int64_t hd, float scale, float cap,
                float* scores, float* out) {
    table().attend_f32(q, K, V, n, hd, scale, cap, scores, out);
}

void attend_f16(const float* q, const uint16_t* K, const uint16_t* V, int64_t n, int64_t hd, float scale,
                float cap, float* scores, float* out) {
    table().attend_f16(q, K, V, n, hd, scale, cap, scores, out);
}

void swiglu(float* g, const float* u, int64_t n) { table().swiglu(g, u, n); }

void geglu(float* g, const float* u, int64_t n) { table().geglu(g, u, n); }

float softcap(float* x, int64_t n, float cap) { return table().softcap(x, n, cap); }

int64_t attend_block_floats(int64_t n_ctx, int64_t hd) { return kAttendBlock * (n_ctx + 8) + kAttendBlock * hd; }

void attend_block_f32(const float* q, int64_t ldq, int nq, const float* K, const float* V, int64_t n0, int64_t hd,
                      float scale, float cap, int64_t window, float* scratch, float* out, int64_t ldo) {
    table().attend_block_f32(q, ldq, nq, K, V, n0, hd, scale, cap, window, scratch, out, ldo);
}

void attend_block_f16(const float* q, int64_t ldq, int nq, const uint16_t* K, const uint16_t* V, int64_t n0,
                      int64_t hd, float scale, float cap, int64_t window, float* scratch, float* out, int64_t ldo) {
    table().attend_block_f16(q, ldq, nq, K, V, n0, hd, scale, cap, window, scratch, out, ldo);
}

const char* ops_isa() { return table().name; }

}  // namespace quantconv::engine
