// Portable scalar row kernels, one per layout kind (referenced by the traits table in traits.cpp).
#pragma once

#include "types.h"

namespace quantconv::quant::scalar {

Status dequantize_row_f32(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);
Status dequantize_row_f16(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);
Status dequantize_row_bf16(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);
// fp16 d, planes: d * lut[code] (int sym: two's complement q; codebook: its table)
Status dequantize_row_fp16_scaled(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);
// fp16 d, fp16 m, planes: d * lut[code] + m
Status dequantize_row_fp16_affine(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);
// E8M0 e, planes: lut[code] * 2^(e-127) (mx, bfp, bmf, blog: the lut carries each family's element)
Status dequantize_row_e8m0_scaled(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);
Status dequantize_row_q8_0(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);
Status dequantize_row_q4_0(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);
Status dequantize_row_q4_1(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);
// ggml Q5_0 / Q5_1: the fifth bit of code j is bit j of the little-endian 32-bit qh
Status dequantize_row_q5_0(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);
Status dequantize_row_q5_1(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);
Status dequantize_row_nvfp4(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);

}  // namespace quantconv::quant::scalar
