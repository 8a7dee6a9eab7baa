// Internals shared by the kernel files (not part of the engine-facing contract in kernels.h):
// the view of a prepared activation buffer, the per-ISA kernel tables and the block geometry every
// table agrees on. Only plain declarations live here: helpers with code are in common.h, which
// gives them internal linkage so that each ISA file compiles its own copy with its own flags.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"
#include "quant/types.h"

namespace quantconv::kernels {

// q8 activations: blocks of kQ8Block int8 values (the integer kernels' unit: one 32-byte register),
// with one float scale per kQ8Group consecutive values. vpmaddubsw + vpmaddwd (and SDOT, VNNI) leave
// the products of elements 4i..4i+3 in int32 lane i, so a vector of kQ8Scales scales per block costs
// the kernels nothing over one broadcast scale, while an outlier only coarsens its 3 neighbours
// instead of the other 31 values of its block: with one scale per 32, the fast path's perplexity was
// up to +0.5 % over the exact path's (fp4-sp on the reference model), with one per 4 it is +0.06 %.
constexpr int64_t kQ8Block = 32;
constexpr int64_t kQ8Group = 4;
constexpr int64_t kQ8Scales = kQ8Block / kQ8Group;
constexpr size_t kActsAlign = 64;

// The x86 exact kernels decode MX E4M3 / E5M2 codes straight into float32's fields as value * 2^-120
// (E5M2: 2^-112), whose products with ordinary activations would be subnormal (microcode assists,
// and imprecise); the acts carry x * 2^kX96Exp for them, so the products are x * value * 2^-24.
constexpr int kX96Exp = 96;

// A prepared activation buffer (prepare_acts), as pointers. Sections are 64-byte aligned relative
// to the buffer start, so a 64-byte aligned buffer keeps every section aligned.
struct Acts {
    int64_t cols = 0;
    const float* x = nullptr;    // cols floats: the exact path's activations
    bool has_q8 = false;         // the q8 section exists (fast_supported for this type and cols)
    const float* d = nullptr;    // cols/kQ8Group q8 scales (amax/127 of each group of kQ8Group values)
    const float* gsum = nullptr; // cols/kQ8Group sums of the rounded activations, d * sum(q), per group
                                 // (asymmetric types and MX E2M1; 0 for the others)
    const float* qsum = nullptr; // cols/32 sums of the rounded activations, sum(d * q), per q8 block
                                 // (what an asymmetric block's offset m multiplies; 0 for other types)
    const int8_t* q = nullptr;   // cols int8 values, q = round(x / d)
    const float* x96 = nullptr;  // MX E4M3 / E5M2 only: cols floats x * 2^kX96Exp (common.h's Fp8Fields)
                                 // (null where some |x| >= 2^31, inf or NaN: the kernels then use x)
    const int8_t* table = nullptr;  // weight code -> int8 element (16 entries; MX E2M3: 64)
    float tscale = 0.0f;            // element value = table[code] * tscale
};

Acts view_acts(const void* acts);

// The q8 blocks of x (nb blocks of kQ8Block, nb * kQ8Scales scales): per group g of kQ8Group values,
// d[g] = amax / 127, q = round-to-even(x * 127 / amax)
// clamped to +-127, NaN -> 0. The AVX2 version gives the same bytes as the portable one.
using q8_blocks_fn = void (*)(const float* x, int64_t nb, float* d, int8_t* q);
void q8_blocks_portable(const float* x, int64_t nb, float* d, int8_t* q);
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
void q8_blocks_avx2(const float* x, int64_t nb, float* d, int8_t* q);
#endif

// Whether (p, cols) has an integer fast path, decided once for every ISA so that acts prepared once
// serve every table: the scalar table's row must say ActsFmt::Q8 (test_kernels checks that every
// table agrees with it), and p must be one its integer product covers (IntSym 4/8 bits, IntAsym 4
// bits, Mx E2M1 / Int8 / E2M3) with blocks that line up with the q8 blocks: G == 32 or G a multiple
// of 64 for 4-bit codes, a multiple of 32 for 8-bit codes, exactly 32 for 6-bit codes.
bool fast_supported(const quant::TypeParams& p, int64_t cols);

// ---- block formats ------------------------------------------------------------------------------

// How a block's header scales its codes.
enum class Hdr : uint8_t {
    F16,        // fp16 d:            w = d * lut[c]
    F16Affine,  // fp16 d, fp16 m:    w = d * lut[c] + m
    E8M0,       // E8M0 e:            w = lut[c] * 2^(e-127)
};

// A plane-coded block layout (every layout but F32/F16/BF16/NVFP4): Q8_0, Q4_0 and Q4_1 are the
// int layouts with G = 32 (Q4_0 with the lut c - 8).
struct BlockFmt {
    Hdr hdr = Hdr::F16;
    int hdr_bytes = 0;
    int bits = 0;             // code width
    int64_t G = 0;            // elements per block
    int64_t block_bytes = 0;  // header + planes
    const float* lut = nullptr;  // code -> element value before the block scale (2^bits entries)
};

// Fills f for a plane-coded layout; false for F32/F16/BF16/NVFP4 or when cols does not fit.
bool block_fmt(const quant::TypeParams& p, int64_t cols, BlockFmt& f);

// NVFP4's E2M1 values doubled (ggml's kvalues_mxfp4); the sub-block scale carries the 0.5.
extern const float kE2M1Doubled[16];

// Everything one matvec call needs to know about the weight type, derived once per call
// (make_plan) and handed to every row's vec_dot.
struct Plan {
    const quant::TypeParams* p = nullptr;
    int64_t cols = 0;
    bool planes = false;                // f is valid (a plane-coded layout)
    BlockFmt f;
    const float* ue4m3_half = nullptr;  // NVFP4: UE4M3 byte -> its float value * 0.5 (256 entries)
    const float* e8m0 = nullptr;        // E8M0 byte -> 2^(e-127) (256 entries; the fast paths broadcast
                                        // a block's scale straight from here)
    // Matvec row groups (the kGroupRows x 1 shape only): prefetch the weight bytes this far ahead of
    // the group, a few lines per step of the group's own reading (0: none). See dispatch.cpp.
    int64_t prefetch = 0;
};

Plan make_plan(const quant::TypeParams& p, int64_t cols);

// The dot product of one packed weight row with prepared activations.
using vec_dot_fn = float (*)(const uint8_t* row, const Plan& pl, const Acts& a);

// RM weight rows (row_bytes apart from W) against RN prepared activations at once: out[t * ldo + r] =
// dot(row r, a[t]) for r < RM, t < RN (the tokens' acts share p and cols). Two shapes: matmul tiles
// (kTileRows x kTileTokens for the integer fast paths, kExactTileRows x kTileTokens for the exact
// paths: each decoded weight block serves several tokens, each activation block several rows) and
// matvec row groups (kGroupRows x 1). Per (row, token) a shape must do the same arithmetic in the same
// order as the row's vec_dot, so that matmul equals T matvecs bit for bit (kernels.h; test_kernels
// checks it). The exact tiles are float FMA chains: 3 x 4 keeps 12 of them in flight, enough to hide
// the FMA latency (F16 2x4 -> 3x4: -21% per matmul in kernels_bench); the integer tiles gain nothing
// from a third row.
constexpr int kTileRows = 2, kExactTileRows = 3, kTileTokens = 4, kGroupRows = 4;
using tile_dot_fn = void (*)(const uint8_t* W, size_t row_bytes, const Plan& pl, const Acts* a, float* out, int64_t ldo);

// The activations a product reads (ggml's vec_dot_type): the float copy (Acts::x; MX E4M3 / E5M2
// also x96) or the q8 blocks (Acts::q and d, with the element table and the block sums).
enum class ActsFmt : uint8_t { F32, Q8 };

// One product in its shapes: the vec_dot, and the matmul tile and matvec row group where the ISA has
// them (null: the vec_dot per row and token). The shapes are only used together with their own vec_dot.
struct Product {
    vec_dot_fn dot = nullptr;
    tile_dot_fn tile = nullptr;
    tile_dot_fn rows = nullptr;
};

// A layout's row (ggml's type_traits_cpu). `exact` reads ActsFmt::F32 and always has a vec_dot;
// `fast`, the integer product, reads vec_dot_type and has one exactly where that is Q8. It is only
// called when fast_supported(p, cols) holds (the acts then carry the q8 section).
struct KernelRow {
    Product exact = {};
    Product fast = {};
    ActsFmt vec_dot_type = ActsFmt::F32;
};

// Rows indexed by Layout, filled by key (common.h's at()) in each ISA file's make_table(); test_kernels
// checks every row of every table the CPU runs.
struct KernelTable {
    Isa isa;
    KernelRow rows[static_cast<size_t>(quant::Layout::Count)];
    const KernelRow& row(quant::Layout l) const { return rows[static_cast<size_t>(l)]; }
};

const KernelTable& table_of(Isa isa);  // for an ISA the CPU has (the AVX-512 table is built by AVX-512 code)
const KernelTable& scalar_table();
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
const KernelTable& avx2_table();
const KernelTable& avx512_table();
#endif
#if defined(__aarch64__)
const KernelTable& neon_table();
#endif

}  // namespace quantconv::kernels
