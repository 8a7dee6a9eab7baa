// The engine's small vector routines (everything that is not a weight matmul): attention over the
// KV cache, fp16 conversion, RoPE, the gated activations, soft-capping. Each has a portable version
// (ops.cpp) and, on x86, an AVX2/F16C one (ops_avx2.cpp) picked once at run time.
#pragma once

#include <cstdint>

namespace quantconv::engine {

inline void add_inplace(float* x, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// Rotates v (one head) by the angles whose cos/sin are given for `half` pairs: adjacent pairs
// (2i, 2i+1) for the norm style, (i, i + half) for neox. Dimensions past 2 * half are left alone.
inline void rope(float* v, const float* cs, const float* sn, int64_t half, bool neox) {
    if (neox) {
        for (int64_t i = 0; i < half; ++i) {
            const float x0 = v[i], x1 = v[i + half];
            v[i] = x0 * cs[i] - x1 * sn[i];
            v[i + half] = x0 * sn[i] + x1 * cs[i];
        }
    } else {
        for (int64_t i = 0; i < half; ++i) {
            const float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * cs[i] - x1 * sn[i];
            v[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
        }
    }
}

// float32 -> IEEE binary16, round to nearest even (overflow to inf).
void to_fp16(const float* x, uint16_t* out, int64_t n);

// One query head against n keys / values (rows of hd values, consecutive): out = softmax(s) V with
// s = scale * K q, or with cap > 0 s = cap * tanh(scale * K q / cap) (Gemma 2's attention soft-capping).
// scores: n floats of scratch.
void attend_f32(const float* q, const float* K, const float* V, int64_t n, int64_t hd, float scale, float cap,
                float* scores, float* out);
void attend_f16(const float* q, const uint16_t* K, const uint16_t* V, int64_t n, int64_t hd, float scale,
                float cap, float* scores, float* out);

// nq consecutive queries of one head (prefill): query j (q + j * ldq) sees keys [f, n0 + j) and writes
// out + j * ldo, where f = 0, or with window > 0 (a sliding-window layer) f = max(0, n0 + j - window).
// Each query's arithmetic is exactly attend_*'s over its keys (attend_*(q, K + f * hd, V + f * hd,
// n0 + j - f), the same values), but the key and value rows are read in chunks that serve all nq queries
// while they sit in L1. scratch: attend_block_floats.
constexpr int kAttendBlock = 8;  // most queries per call
int64_t attend_block_floats(int64_t n_ctx, int64_t hd);
void attend_block_f32(const float* q, int64_t ldq, int nq, const float* K, const float* V, int64_t n0, int64_t hd,
                      float scale, float cap, int64_t window, float* scratch, float* out, int64_t ldo);
void attend_block_f16(const float* q, int64_t ldq, int nq, const uint16_t* K, const uint16_t* V, int64_t n0,
                      int64_t hd, float scale, float cap, int64_t window, float* scratch, float* out, int64_t ldo);

// SwiGLU in place: g[i] = silu(g[i]) * u[i], silu(x) = x / (1 + e^-x).
void swiglu(float* g, const float* u, int64_t n);

// GeGLU in place: g[i] = gelu_tanh(g[i]) * u[i], gelu_tanh(x) = x / 2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
// (torch's gelu(approximate="tanh"), Gemma's hidden_activation).
void geglu(float* g, const float* u, int64_t n);

// Soft-capping in place: x[i] = cap * tanh(x[i] / cap) (Gemma 2's final logits); returns the largest result.
float softcap(float* x, int64_t n, float cap);

// Which implementation is in use ("avx2" or "scalar").
const char* ops_isa();

namespace detail {
struct OpsTable {
    void (*to_fp16)(const float*, uint16_t*, int64_t);
    void (*attend_f32)(const float*, const float*, const float*, int64_t, int64_t, float, float, float*, float*);
    void (*attend_f16)(const float*, const uint16_t*, const uint16_t*, int64_t, int64_t, float, float, float*,
                       float*);
    void (*swiglu)(float*, const float*, int64_t);
    void (*attend_block_f32)(const float*, int64_t, int, const float*, const float*, int64_t, int64_t, float, float,
                             int64_t, float*, float*, int64_t);
    void (*attend_block_f16)(const float*, int64_t, int, const uint16_t*, const uint16_t*, int64_t, int64_t, float,
                             float, int64_t, float*, float*, int64_t);
    void (*geglu)(float*, const float*, int64_t);
    float (*softcap)(float*, int64_t, float);
    const char* name;
};
#if defined(__x86_64__) || defined(_M_X64)
const OpsTable& ops_avx2_table();  // ops_avx2.cpp
#endif
}  // namespace detail

}  // namespace quantconv::engine
