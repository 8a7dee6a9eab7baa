// The ISA-independent half of the kernels: block formats, the fast-path rule, the per-call plan and
// the prepared activation buffer (float copy + q8 blocks + the weight type's int8 element table).
// Activations are prepared by this one portable code for every ISA, so every table sees the same
// q8 values and the fast paths of two ISAs differ only in summation order.
#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

#include "kernels/common.h"
#include "kernels/internal.h"
#include "quant/bitplanes.h"
#include "quant/fpconv.h"
#include "quant/traits.h"

namespace quantconv::kernels {
namespace {

using quant::ElemKind;
using quant::Layout;
using quant::TypeParams;

constexpr uint32_t kActsMagic = 0x51384143u;  // "CA8Q"
constexpr int kTableSize = 64;                 // largest int8 element table (6-bit E2M3 codes)

// Header at the start of every acts buffer.
struct ActsHeader {
    uint32_t magic;
    int32_t has_q8;
    int32_t has_x96;  // Acts::x96: -1 no section (other types), 0 section left unfilled, 1 filled
    int64_t cols;
    float tscale;
    int8_t table[kTableSize];
};
constexpr size_t kHeaderBytes = 128;
static_assert(sizeof(ActsHeader) <= kHeaderBytes, "acts header");

constexpr size_t align_up(size_t n) { return (n + kActsAlign - 1) / kActsAlign * kActsAlign; }

struct ActsLayout {
    size_t x = 0, x96 = 0, d = 0, gsum = 0, qsum = 0, q = 0, total = 0;
};

// Whether p's exact kernels read Acts::x96.
bool wants_x96(const TypeParams& p) { return p.prepared && mx_fp8(p); }

ActsLayout acts_layout(int64_t cols, bool q8, bool x96) {
    ActsLayout l;
    const size_t n = static_cast<size_t>(cols), nb = q8 ? n / kQ8Block : 0;
    l.x = kHeaderBytes;
    size_t end = l.x + align_up(n * sizeof(float));
    if (x96) {
        l.x96 = end;
        end += align_up(n * sizeof(float));
    }
    if (q8) {
        l.d = end;
        l.gsum = l.d + align_up(nb * kQ8Scales * sizeof(float));
        l.qsum = l.gsum + align_up(nb * kQ8Scales * sizeof(float));
        l.q = l.qsum + align_up(nb * sizeof(float));
        end = l.q + align_up(n);
    }
    l.total = end;
    return l;
}

// Code -> element value tables the layouts leave implicit.
struct Luts {
    float int8[256];  // two's complement byte (Q8_0)
    float q4_0[16];   // c - 8
    float uint4[16];  // c (Q4_1)
    float ue4m3_half[256];
    float e8m0[256];  // 2^(e-127) (255 is rejected at load time)
    Luts() {
        for (int c = 0; c < 256; ++c) {
            e8m0[c] = quant::e8m0_to_fp32(static_cast<uint8_t>(c));
            int8[c] = static_cast<float>(static_cast<int8_t>(static_cast<uint8_t>(c)));
            ue4m3_half[c] = quant::ue4m3_to_fp32(static_cast<uint8_t>(c)) * 0.5f;  // as dequantize_row_nvfp4
        }
        for (int c = 0; c < 16; ++c) {
            q4_0[c] = static_cast<float>(c - 8);
            uint4[c] = static_cast<float>(c);
        }
    }
};
const Luts& luts() {
    static const Luts l;
    return l;
}

// The fast path's int8 stand-ins for n element values: table[c] * tscale ~ vals[c]. The max
// magnitude maps to an integer k in [64, 127]; among the k whose worst-case error stays within
// amax / 254 (the kernels' error bound), the one with the smallest mean squared error wins (ties: the
// larger k): with the activations' error down to per-4 scales this table error is what is left of the
// fast path's, and the mean is what perplexity feels. Integer-valued and dyadic tables (E2M1, fp4,
// E2M3, ints) come out exact.
void int8_table(const float* vals, int n, int8_t* table, float& tscale) {
    if (n <= 0 || n > kTableSize) return;
    float amax = 0.0f;
    for (int c = 0; c < n; ++c) amax = std::max(amax, std::fabs(vals[c]));
    std::memset(table, 0, static_cast<size_t>(n));
    tscale = 1.0f;
    if (!(amax > 0.0f) || !std::isfinite(amax)) return;
    double best_worst = 1e300, best_mse = 1e300;
    int best_k = 127, best_worst_k = 127;
    for (int k = 127; k >= 64; --k) {
        const double s = k / static_cast<double>(amax);
        double worst = 0.0, mse = 0.0;
        for (int c = 0; c < n; ++c) {
            const double e = std::fabs(vals[c] - std::nearbyint(vals[c] * s) / s);
            worst = std::max(worst, e);
            mse += e * e;
        }
        if (worst < best_worst) {
            best_worst = worst;
            best_worst_k = k;
        }
        if (worst <= amax / 254.0 && mse < best_mse) {
            best_mse = mse;
            best_k = k;
        }
    }
    if (best_mse == 1e300) best_k = best_worst_k;  // no k within the bound: the smallest worst case
    const double s = best_k / static_cast<double>(amax);
    for (int c = 0; c < n; ++c) {
        const double t = std::nearbyint(vals[c] * s);
        table[c] = static_cast<int8_t>(std::clamp(t, -127.0, 127.0));
    }
    tscale = static_cast<float>(1.0 / s);
}

// int8_table's search costs a few microseconds; prepare_acts runs once per input vector and weight
// matrix, so each thread remembers the last few tables it derived.
void cached_int8_table(const float* vals, int n, int8_t* table, float& tscale) {
    struct Entry {
        int n = 0;
        float vals[kTableSize];
        int8_t table[kTableSize];
        float tscale;
    };
    thread_local Entry cache[8];
    thread_local unsigned next = 0;
    const size_t vbytes = static_cast<size_t>(n) * sizeof(float);
    for (const Entry& e : cache) {
        if (e.n == n && std::memcmp(e.vals, vals, vbytes) == 0) {
            std::memcpy(table, e.table, static_cast<size_t>(n));
            tscale = e.tscale;
            return;
        }
    }
    int8_table(vals, n, table, tscale);
    Entry& e = cache[next++ % 8];
    e.n = n;
    std::memcpy(e.vals, vals, vbytes);
    std::memcpy(e.table, table, static_cast<size_t>(n));
    e.tscale = tscale;
}

// Fills the header's element table for p (fast path only).
void fill_table(const TypeParams& p, int64_t cols, ActsHeader& h) {
    h.tscale = 1.0f;
    std::memset(h.table, 0, sizeof h.table);
    if (p.layout == Layout::NVFP4) {
        cached_int8_table(kE2M1Doubled, 16, h.table, h.tscale);
        return;
    }
    if (p.layout == Layout::Mx && p.elem.kind == ElemKind::E2M1) {
        // the doubled values -12..12 (tscale 0.5): exact, and small enough for the AVX2 kernel's
        // unsigned codes (+12, up to 24: vpmaddubsw's pair sums stay far from saturation)
        for (int c = 0; c < 16; ++c) h.table[c] = static_cast<int8_t>(kE2M1Doubled[c]);
        h.tscale = 0.5f;
        return;
    }
    BlockFmt f;
    if (!block_fmt(p, cols, f)) return;
    if (f.hdr == Hdr::F16Affine) return;  // unsigned codes, no table
    if (f.bits == 8) {
        h.tscale = p.layout == Layout::Mx ? 1.0f / 64.0f : 1.0f;  // MXINT8: q / 64
        return;
    }
    cached_int8_table(f.lut, 1 << f.bits, h.table, h.tscale);
}

q8_blocks_fn pick_q8_blocks() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return q8_blocks_avx2;
#endif
    return q8_blocks_portable;
}

}  // namespace

void q8_blocks_portable(const float* x, int64_t nb, float* d, int8_t* q) {
    for (int64_t g = 0; g < nb * kQ8Scales; ++g, x += kQ8Group, q += kQ8Group) {
        float amax = 0.0f;
        for (int64_t i = 0; i < kQ8Group; ++i) amax = std::max(amax, std::fabs(x[i]));
        const float db = amax / 127.0f;
        const float id = db > 0.0f ? 127.0f / amax : 0.0f;
        for (int64_t i = 0; i < kQ8Group; ++i) {
            float v = x[i] * id;
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            if (v != v) v = 0.0f;  // NaN activations: keep the conversion defined
            q[i] = static_cast<int8_t>(std::lrint(v));
        }
        d[g] = db;
    }
}

const float kE2M1Doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

bool block_fmt(const TypeParams& p, int64_t cols, BlockFmt& f) {
    if (!p.prepared || cols <= 0) return false;
    const Luts& l = luts();
    f = BlockFmt{};
    switch (p.layout) {
        case Layout::Q8_0: f.hdr = Hdr::F16; f.bits = 8; f.G = 32; f.lut = l.int8; break;
        case Layout::Q4_0: f.hdr = Hdr::F16; f.bits = 4; f.G = 32; f.lut = l.q4_0; break;
        case Layout::Q4_1: f.hdr = Hdr::F16Affine; f.bits = 4; f.G = 32; f.lut = l.uint4; break;
        case Layout::IntSym:
        case Layout::Codebook4: f.hdr = Hdr::F16; break;
        case Layout::IntAsym: f.hdr = Hdr::F16Affine; break;
        case Layout::Mx:
        case Layout::Bfp:
        case Layout::Bmf:
        case Layout::Blog: f.hdr = Hdr::E8M0; break;
        default: return false;
    }
    if (!f.lut) {
        f.bits = p.elem_bits;
        f.G = p.block_size ? p.block_size : cols;
        f.lut = p.lut;
    }
    f.hdr_bytes = f.hdr == Hdr::F16 ? 2 : f.hdr == Hdr::F16Affine ? 4 : 1;
    const int64_t planes = quant::packed_bytes(f.bits, f.G);
    if (planes <= 0 || cols % f.G != 0) return false;
    f.block_bytes = f.hdr_bytes + planes;
    return true;
}

bool fast_supported(const TypeParams& p, int64_t cols) {
    if (!p.prepared || cols <= 0 || cols % kQ8Block != 0) return false;
    if (scalar_table().row(p.layout).vec_dot_type != ActsFmt::Q8) return false;
    if (p.layout == Layout::NVFP4) return cols % 64 == 0;
    BlockFmt f;
    if (!block_fmt(p, cols, f)) return false;
    const bool g4 = f.G == 32 || f.G % 64 == 0;  // nibble halves line up with q8 blocks
    switch (p.layout) {  // the parameters of a layout its integer products cover
        case Layout::IntSym: return (f.bits == 4 && g4) || (f.bits == 8 && f.G % 32 == 0);
        case Layout::IntAsym: return f.bits == 4 && g4;
        case Layout::Codebook4: return g4;
        case Layout::Mx:
            if (p.elem.kind == ElemKind::E2M1) return g4;
            if (p.elem.kind == ElemKind::Int8) return f.G % 32 == 0;
            // E2M3 x8 is an exact int8 (max 60). E3M2, E4M3 and E5M2 span too many binades for one
            // int8 grid: measured +1.6% (E3M2) and +0.7% (E4M3) perplexity, over the 0.3% limit.
            return p.elem.kind == ElemKind::E2M3 && f.G == 32;
        default: return true;  // Q8_0, Q4_0, Q4_1: blocks of 32
    }
}

Plan make_plan(const TypeParams& p, int64_t cols) {
    Plan pl;
    pl.p = &p;
    pl.cols = cols;
    pl.planes = block_fmt(p, cols, pl.f);
    pl.ue4m3_half = luts().ue4m3_half;
    pl.e8m0 = luts().e8m0;
    return pl;
}

Acts view_acts(const void* acts) {
    const auto* base = static_cast<const uint8_t*>(acts);
    ActsHeader h;
    std::memcpy(&h, base, sizeof h);
    assert(h.magic == kActsMagic && "acts buffer not filled by prepare_acts");
    Acts a;
    a.cols = h.cols;
    a.has_q8 = h.has_q8 != 0;
    const ActsLayout l = acts_layout(h.cols, a.has_q8, h.has_x96 >= 0);
    a.x = reinterpret_cast<const float*>(base + l.x);
    if (h.has_x96 > 0) a.x96 = reinterpret_cast<const float*>(base + l.x96);
    if (a.has_q8) {
        a.d = reinterpret_cast<const float*>(base + l.d);
        a.gsum = reinterpret_cast<const float*>(base + l.gsum);
        a.qsum = reinterpret_cast<const float*>(base + l.qsum);
        a.q = reinterpret_cast<const int8_t*>(base + l.q);
    }
    a.table = reinterpret_cast<const int8_t*>(base + offsetof(ActsHeader, table));
    a.tscale = h.tscale;
    return a;
}

size_t acts_bytes(const TypeParams& p, int64_t cols) {
    return acts_layout(cols < 0 ? 0 : cols, fast_supported(p, cols), wants_x96(p)).total;
}

void prepare_acts(const TypeParams& p, const float* x, int64_t cols, void* acts, bool fast) {
    auto* base = static_cast<uint8_t*>(acts);
    const bool q8 = fast && fast_supported(p, cols);
    const bool x96 = wants_x96(p);
    const ActsLayout l = acts_layout(cols, q8, x96);
    ActsHeader h{};
    h.magic = kActsMagic;
    h.has_q8 = q8 ? 1 : 0;
    h.has_x96 = x96 ? 0 : -1;
    h.cols = cols;
    if (q8) fill_table(p, cols, h);
    std::memcpy(base + l.x, x, static_cast<size_t>(cols) * sizeof(float));
    if (x96) {
        // exact scaling by a power of two, as long as x * 2^96 stays far from float's range end
        const float k = std::ldexp(1.0f, kX96Exp);
        auto* xs = reinterpret_cast<float*>(base + l.x96);
        bool fits = true;
        for (int64_t i = 0; i < cols; ++i) {
            xs[i] = x[i] * k;
            fits &= std::fabs(x[i]) < 0x1p31f;  // false for inf and NaN
        }
        if (fits) h.has_x96 = 1;
    }
    std::memcpy(base, &h, sizeof h);
    if (!q8) return;
    auto* d = reinterpret_cast<float*>(base + l.d);
    auto* gsum = reinterpret_cast<float*>(base + l.gsum);
    auto* qsum = reinterpret_cast<float*>(base + l.qsum);
    auto* q = reinterpret_cast<int8_t*>(base + l.q);
    static const q8_blocks_fn q8_blocks = pick_q8_blocks();
    q8_blocks(x, cols / kQ8Block, d, q);
    // Asymmetric weights (F16Affine: w = d * c + m) need, per q8 block, the sum of the activations
    // that m multiplies. It is the sum of the *rounded* activations, sum(qd * q) (ggml's q8_1 way), not
    // of x itself: then codes and offset both multiply the same x^ = qd * q, the fast path is
    // dequant(W) . x^ up to float rounding, and its error is sum(w * (x - x^)), as for symmetric
    // weights. With sum(x) the offset's part came out exact while the codes' part carried
    // sum((w - m) * (x - x^)), whose m * sum(x - x^) share is the same for every row of a matrix:
    // +2.5 % perplexity on int4:asym. MX E2M1's AVX2 kernel offsets its codes by the same kind of
    // sums, per group of kQ8Group (gsum). The other layouts leave the sums 0.
    BlockFmt f;
    const bool affine = block_fmt(p, cols, f) && f.hdr == Hdr::F16Affine;
    if (!affine && !(p.layout == Layout::Mx && p.elem.kind == ElemKind::E2M1)) {
        std::memset(gsum, 0, static_cast<size_t>(cols / kQ8Group) * sizeof(float));
        std::memset(qsum, 0, static_cast<size_t>(cols / kQ8Block) * sizeof(float));
        return;
    }
    for (int64_t g = 0; g < cols / kQ8Group; ++g) {
        int32_t s = 0;
        for (int64_t i = 0; i < kQ8Group; ++i) s += q[g * kQ8Group + i];
        gsum[g] = d[g] * static_cast<float>(s);
    }
    for (int64_t b = 0; b < cols / kQ8Block; ++b) {
        float sum = 0.0f;
        if (affine)
            for (int64_t g = 0; g < kQ8Scales; ++g) sum += gsum[b * kQ8Scales + g];
        qsum[b] = sum;
    }
}

}  // namespace quantconv::kernels
