// Run-time ISA selection (CPUID / QUANTCONV_ISA), the exact switch (QUANTCONV_EXACT), and the row
// loops of matvec / matmul over the selected table.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/internal.h"
#include "quant/traits.h"

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

constexpr size_t kRowBlockBytes = 64 * 1024;

// Matvec streams its weights from memory once: the row groups interleave kGroupRows streams, which
// the hardware prefetchers follow poorly, so the row-group kernels prefetch the bytes
// kPrefetchGroups groups ahead (Plan::prefetch), a few lines per block as they read their own:
// spread out, the prefetches overlap the arithmetic instead of queueing up in one burst per group
// (Q8_0 rows streaming from DRAM, kernels_bench KB_ROWS=131072 KB_CLOCK=cpu: 5.6-6.3 ms per
// matvec vs 6.9-7.7 ms with the burst; SF4 is compute-bound there and unchanged).
// QUANTCONV_PREFETCH_GROUPS (read once; 0 turns it off) overrides the distance for tuning runs.
const int64_t kPrefetchGroups = [] {
    const char* v = std::getenv("QUANTCONV_PREFETCH_GROUPS");
    return v && *v ? std::max<int64_t>(0, std::atol(v)) : int64_t{4};
}();

// The kernels for this call: the active table's fast product when the acts carry q8 blocks and the
// exact switch is off (fast_supported held, so the row reads Q8 acts), else its exact product.
struct Kernels : Product {
    int64_t tile_rows = kTileRows;
    bool exact = false;
};

Kernels pick(const quant::TypeParams& p, const Acts& a) {
    const KernelRow& row = table_of(active_isa()).row(p.layout);
    if (a.has_q8 && !exact()) return {row.fast, kTileRows};
    return {row.exact, kExactTileRows, true};
}

// Rows per matmul row block: as many whole tiles as fit kRowBlockBytes (L2), at least one tile.
int64_t row_block(const Kernels& k, size_t row_bytes) {
    const int64_t tr = k.tile_rows;
    return std::max<int64_t>(tr, static_cast<int64_t>(kRowBlockBytes / row_bytes) / tr * tr);
}

// The row loop of a matmul (rows [r0, r1) of W, T tokens whose acts lie stride bytes apart): row
// blocks that stay in L2 against token groups of kTileTokens (their q8 blocks stay in L1),
// k.tile_rows rows at a time through the table's tile kernel where it has one; tokens and rows left
// over go one by one.
void run_row_blocks(const Kernels& k, const Plan& pl, const uint8_t* W, size_t row_bytes, const uint8_t* base,
                    size_t stride, int64_t T, float* Y, int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t tr = k.tile_rows, block = row_block(k, row_bytes);
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
        const int64_t b1 = std::min(r1, b0 + block);
        Acts ta[kTileTokens];
        int64_t t = 0;
        if (k.tile) {
            for (; t + kTileTokens <= T; t += kTileTokens) {
                for (int i = 0; i < kTileTokens; ++i) ta[i] = view_acts(base + static_cast<size_t>(t + i) * stride);
                int64_t r = b0;
                for (; r + tr <= b1; r += tr)
                    k.tile(W + static_cast<size_t>(r) * row_bytes, row_bytes, pl, ta, Y + t * ldy + r, ldy);
                for (; r < b1; ++r)
                    for (int i = 0; i < kTileTokens; ++i) Y[(t + i) * ldy + r] = k.dot(W + static_cast<size_t>(r) * row_bytes, pl, ta[i]);
            }
        }
        for (; t < T; ++t) {
            const Acts a = view_acts(base + static_cast<size_t>(t) * stride);
            for (int64_t r = b0; r < b1; ++r) Y[t * ldy + r] = k.dot(W + static_cast<size_t>(r) * row_bytes, pl, a);
        }
    }
}

// The exact path of a coded layout has no matmul tile: its vec_dot decodes every weight block again
// for every token, which made an exact 512-token prefill 4-8x slower than the fast one. From this
// many tokens on, matmul instead decodes each row block once (quant::dequantize_row: the values the
// exact vec_dot multiplies by) into a per-thread float buffer and runs the F32 layout's exact tiles
// on it. The sums then run in the F32 kernels' order: the result equals T matvecs of the dequantized
// F32 rows bit for bit (test_kernels), and T matvecs of the coded rows only to float rounding.
constexpr int64_t kDecodeOnceTokens = 16;

const quant::TypeParams& f32_params() {
    static const quant::TypeParams p = [] {
        quant::TypeParams q;
        q.layout = quant::Layout::F32;
        quant::prepare_params(q);
        return q;
    }();
    return p;
}

void matmul_decoded(const quant::TypeParams& p, const uint8_t* W, size_t row_bytes, int64_t cols, const uint8_t* base,
                    size_t stride, int64_t T, float* Y, int64_t ldy, int64_t r0, int64_t r1) {
    const Kernels k{table_of(active_isa()).row(quant::Layout::F32).exact, kExactTileRows, true};
    const size_t fb = static_cast<size_t>(cols) * sizeof(float);
    const Plan pl = make_plan(f32_params(), cols);
    const int64_t block = row_block(k, fb);  // decoded rows that stay in L2 while every token group passes
    thread_local std::vector<float> buf;
    buf.resize(static_cast<size_t>(block * cols));
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
        const int64_t n = std::min(r1, b0 + block) - b0;
        // the weights were validated when the model was loaded: a bad block cannot occur here
        for (int64_t i = 0; i < n; ++i)
            quant::dequantize_row(p, W + static_cast<size_t>(b0 + i) * row_bytes, buf.data() + i * cols, cols);
        run_row_blocks(k, pl, reinterpret_cast<const uint8_t*>(buf.data()), fb, base, stride, T, Y + b0, ldy, 0, n);
    }
}

}  // namespace

void matvec(const quant::TypeParams& p, const uint8_t* W, size_t row_bytes, int64_t cols, const void* acts, float* y,
            int64_t r0, int64_t r1) {
    const Acts a = view_acts(acts);
    Plan pl = make_plan(p, cols);
    pl.prefetch = kPrefetchGroups * kGroupRows * static_cast<int64_t>(row_bytes);
    const Kernels k = pick(p, a);
    int64_t r = r0;
    if (k.rows)
        for (; r + kGroupRows <= r1; r += kGroupRows)
            k.rows(W + static_cast<size_t>(r) * row_bytes, row_bytes, pl, &a, y + (r - r0), 0);
    for (; r < r1; ++r) y[r - r0] = k.dot(W + static_cast<size_t>(r) * row_bytes, pl, a);
}

void matmul(const quant::TypeParams& p, const uint8_t* W, size_t row_bytes, int64_t cols, const void* acts, int64_t T,
            float* Y, int64_t ldy, int64_t r0, int64_t r1) {
    if (T <= 0 || r1 <= r0) return;
    const size_t stride = acts_bytes(p, cols);
    const auto* base = static_cast<const uint8_t*>(acts);
    const Plan pl = make_plan(p, cols);
    const Kernels k = pick(p, view_acts(base));
    if (k.exact && !k.tile && T >= kDecodeOnceTokens && p.layout != quant::Layout::F32) {
        matmul_decoded(p, W, row_bytes, cols, base, stride, T, Y, ldy, r0, r1);
        return;
    }
    run_row_blocks(k, pl, W, row_bytes, base, stride, T, Y, ldy, r0, r1);
}

}  // namespace quantconv::kernels
