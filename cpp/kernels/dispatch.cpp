// Run-time ISA selection (CPUID / QUANTCONV_ISA), the exact switch (QUANTCONV_EXACT), and the row
// loops of matvec / matmul over the selected table.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/internal.h"

namespace quantconv::kernels {
namespace {

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define QUANTCONV_KERNELS_X86 1
#endif

// Whether the CPU runs code compiled with this ISA's flags (cpp/CMakeLists.txt lists them: the
// AVX-512 file is built with f/bw/vl/dq/vnni/vbmi/bf16, so all of them are required).
bool cpu_has(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return true;
#if defined(QUANTCONV_KERNELS_X86) && (defined(__GNUC__) || defined(__clang__))
        case Isa::AVX2:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
        case Isa::AVX512:
            __builtin_cpu_init();
            return cpu_has(Isa::AVX2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi") &&
                   __builtin_cpu_supports("avx512bf16");
#endif
#if defined(__aarch64__)
        case Isa::NEON: return true;  // built for armv8.2-a+dotprod+fp16: the target is assumed to have them
#endif
        default: return false;
    }
}

const KernelTable& table_of(Isa isa) {
    switch (isa) {
#if defined(QUANTCONV_KERNELS_X86)
        case Isa::AVX2: return avx2_table();
        case Isa::AVX512: return avx512_table();
#endif
#if defined(__aarch64__)
        case Isa::NEON: return neon_table();
#endif
        default: return scalar_table();
    }
}

Isa best_isa() {
    for (Isa isa : {Isa::AVX512, Isa::AVX2, Isa::NEON})
        if (cpu_has(isa)) return isa;
    return Isa::Scalar;
}

Isa parse_isa(const std::string& name) {
    for (Isa isa : {Isa::Scalar, Isa::AVX2, Isa::AVX512, Isa::NEON})
        if (name == isa_name(isa)) return isa;
    throw std::runtime_error("QUANTCONV_ISA='" + name + "' is not an ISA (scalar, avx2, avx512, neon)");
}

void require(Isa isa) {
    if (!cpu_has(isa))
        throw std::runtime_error(std::string("ISA '") + isa_name(isa) + "' is not supported by this CPU/build");
}

bool env_flag(const char* name) {
    const char* v = std::getenv(name);
    return v && *v && std::strcmp(v, "0") != 0;
}

constexpr int kUnset = -1;
std::atomic<int> g_isa{kUnset};
std::atomic<int> g_exact{kUnset};

}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return "scalar";
        case Isa::AVX2: return "avx2";
        case Isa::AVX512: return "avx512";
        case Isa::NEON: return "neon";
    }
    return "unknown";
}

Isa active_isa() {
    int v = g_isa.load(std::memory_order_acquire);
    if (v == kUnset) {
        Isa isa = best_isa();
        if (const char* env = std::getenv("QUANTCONV_ISA"); env && *env) {
            isa = parse_isa(env);
            require(isa);  // naming an ISA the CPU lacks is an error, not a silent fallback
        }
        v = static_cast<int>(isa);
        int expected = kUnset;
        g_isa.compare_exchange_strong(expected, v, std::memory_order_acq_rel);
        v = g_isa.load(std::memory_order_acquire);
    }
    return static_cast<Isa>(v);
}

void set_isa(Isa isa) {
    require(isa);
    g_isa.store(static_cast<int>(isa), std::memory_order_release);
}

bool exact() {
    int v = g_exact.load(std::memory_order_relaxed);
    if (v == kUnset) {
        v = env_flag("QUANTCONV_EXACT") ? 1 : 0;
        int expected = kUnset;
        g_exact.compare_exchange_strong(expected, v, std::memory_order_relaxed);
        v = g_exact.load(std::memory_order_relaxed);
    }
    return v == 1;
}

void set_exact(bool on) { g_exact.store(on ? 1 : 0, std::memory_order_relaxed); }

namespace {

// The row kernel for this call: the active table's fast path when the acts carry q8 blocks and the
// exact switch is off (a table without one borrows the scalar fast path, so results never depend
// on which paths an ISA happens to implement), else its exact path. `tile`, when non-null, is the
// matching kTileTokens-token kernel (matmul).
vec_dot_fn pick(const quant::TypeParams& p, const Acts& a, tile_dot_fn* tile = nullptr) {
    const KernelRow& row = table_of(active_isa()).row(p.layout);
    if (tile) *tile = nullptr;
    if (a.has_q8 && !exact()) {
        if (row.fast) {
            if (tile) *tile = row.fast_tile;
            return row.fast;
        }
        if (const vec_dot_fn f = scalar_table().row(p.layout).fast) return f;
    }
    if (tile) *tile = row.exact_tile;
    return row.exact;
}

}  // namespace

void matvec(const quant::TypeParams& p, const uint8_t* W, size_t row_bytes, int64_t cols, const void* acts, float* y,
            int64_t r0, int64_t r1) {
    const Acts a = view_acts(acts);
    const Plan pl = make_plan(p, cols);
    const vec_dot_fn dot = pick(p, a);
    for (int64_t r = r0; r < r1; ++r) y[r - r0] = dot(W + static_cast<size_t>(r) * row_bytes, pl, a);
}

void matmul(const quant::TypeParams& p, const uint8_t* W, size_t row_bytes, int64_t cols, const void* acts, int64_t T,
            float* Y, int64_t ldy, int64_t r0, int64_t r1) {
    if (T <= 0 || r1 <= r0) return;
    const size_t stride = acts_bytes(p, cols);
    const auto* base = static_cast<const uint8_t*>(acts);
    const Plan pl = make_plan(p, cols);
    tile_dot_fn tdot = nullptr;
    const vec_dot_fn dot = pick(p, view_acts(base), &tdot);
    // Token tiles whose activations stay in L2 (~256 KiB) while every row streams past them once;
    // inside a tile each row (in L1) meets all the tile's tokens, kTileTokens at a time through the
    // table's tile kernel where it has one (each decoded weight block then serves several tokens),
    // the rest one by one. A tile kernel repeats the vec_dot's arithmetic per token, so the results
    // match T matvecs bit for bit.
    constexpr size_t kL2Budget = 256 * 1024;
    int64_t tile = std::clamp<int64_t>(static_cast<int64_t>(kL2Budget / std::max<size_t>(stride, 1)), 1, 64);
    if (tdot && tile >= kTileTokens) tile -= tile % kTileTokens;
    Acts tile_acts[64];
    for (int64_t t0 = 0; t0 < T; t0 += tile) {
        const int64_t nt = std::min(tile, T - t0);
        for (int64_t t = 0; t < nt; ++t) tile_acts[t] = view_acts(base + static_cast<size_t>(t0 + t) * stride);
        for (int64_t r = r0; r < r1; ++r) {
            const uint8_t* row = W + static_cast<size_t>(r) * row_bytes;
            int64_t t = 0;
            if (tdot) {
                float out[kTileTokens];
                for (; t + kTileTokens <= nt; t += kTileTokens) {
                    tdot(row, pl, tile_acts + t, out);
                    for (int k = 0; k < kTileTokens; ++k) Y[(t0 + t + k) * ldy + r] = out[k];
                }
            }
            for (; t < nt; ++t) Y[(t0 + t) * ldy + r] = dot(row, pl, tile_acts[t]);
        }
    }
}

}  // namespace quantconv::kernels
