// Dot-product kernels over packed weight rows, for every layout of quant/traits (the contract between
// the engine and the per-ISA kernel files). Weights are never dequantized into memory: each kernel
// decodes a block in registers and multiplies it with the activations.
//
// Two paths per layout:
//  - exact: the weight block is decoded to float32 exactly as quant/dequantize_row does and multiplied
//    with float32 activations (fp32 accumulation);
//  - fast (default where a layout has one): activations are quantized once per input vector to
//    int8 blocks of 32 ("q8 acts": fp32 scale per 32 values, as ggml's Q8_0 with a float scale), and
//    each weight block is decoded to int8 (codebooks through a 16-entry int8 table, the IQ4_NL way)
//    for integer dot products. The fast path's perplexity must stay within 0.3% of the exact path.
// set_exact(true) (or QUANTCONV_EXACT=1) forces the exact path everywhere.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/types.h"

namespace quantconv::kernels {

enum class Isa : uint8_t { Scalar, AVX2, AVX512, NEON };
const char* isa_name(Isa isa);
// The ISA in use: the best one the CPU supports, or QUANTCONV_ISA=scalar|avx2|avx512|neon (an ISA the
// CPU lacks is an error: std::runtime_error naming it).
Isa active_isa();
void set_isa(Isa isa);          // for tests; throws if the CPU lacks it
bool exact();
void set_exact(bool on);

// Activations prepared for one weight type: holds the float copy (exact path) and/or the q8 blocks.
// Prepare once per input vector and share it across all rows (and threads).
size_t acts_bytes(const quant::TypeParams& p, int64_t cols);
// fast = false leaves the q8 section out: the kernels then take the exact path for these acts
// (per weight, while the process-wide switch stays as it is).
void prepare_acts(const quant::TypeParams& p, const float* x, int64_t cols, void* acts, bool fast = true);

// y[r - r0] = dot(row r of W, x) for r in [r0, r1). W: rows of `row_bytes` bytes (quant::row_bytes).
// `acts` comes from prepare_acts with the same p and cols. Thread-safe; no allocation.
void matvec(const quant::TypeParams& p, const uint8_t* W, size_t row_bytes, int64_t cols,
            const void* acts, float* y, int64_t r0, int64_t r1);

// Batched (prefill): for T input vectors, Y[t * ldy + r] = dot(row r of W, X_t) for r in [r0, r1).
// acts: T consecutive prepare_acts buffers of acts_bytes(p, cols) each. Where the ISA has tile
// kernels (AVX2: F32/F16/BF16 exact; 4-bit, 8-bit and MXFP4 fast paths) each decoded weight block
// serves several tokens; the results still equal T matvecs bit for bit.
void matmul(const quant::TypeParams& p, const uint8_t* W, size_t row_bytes, int64_t cols,
            const void* acts, int64_t T, float* Y, int64_t ldy, int64_t r0, int64_t r1);

}  // namespace quantconv::kernels
