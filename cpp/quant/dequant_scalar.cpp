// Portable scalar dequantization kernels. Products are float32 multiplications of exact operands
// (one rounding, like numpy's float32 arithmetic in formats/); the build disables FMA contraction.
#include "dequant_scalar.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "bitplanes.h"
#include "fpconv.h"

namespace quantconv::quant::scalar {
namespace {

constexpr Status kOk{};

Status fail(StatusCode code, int64_t block = -1) { return Status{code, block}; }

// Scratch for one block's codes: on the stack for ordinary groups, on the heap for per-channel rows.
class CodeBuffer {
   public:
    explicit CodeBuffer(int64_t n) {
        if (n > static_cast<int64_t>(sizeof small_)) {
            big_.resize(static_cast<size_t>(n));
            ptr_ = big_.data();
        } else {
            ptr_ = small_;
        }
    }
    uint8_t* data() { return ptr_; }

   private:
    uint8_t small_[1024];
    std::vector<uint8_t> big_;
    uint8_t* ptr_;
};

// Block geometry of a row of n elements for a plane-coded layout; false when it does not fit.
struct Geometry {
    int64_t block = 0;   // elements per block
    int64_t blocks = 0;  // blocks in the row
    int64_t planes = 0;  // bytes of one block's code planes
};

bool plane_geometry(const TypeParams& p, int64_t n, Geometry& g) {
    if (!p.prepared || n <= 0) return false;
    g.block = p.block_size ? p.block_size : n;
    if (g.block <= 0 || n % g.block != 0) return false;
    g.blocks = n / g.block;
    g.planes = packed_bytes(p.elem_bits, g.block);
    return g.planes > 0;
}

bool has_nan_code(const uint8_t* codes, int64_t count, const float* lut) {
    for (int64_t i = 0; i < count; ++i)
        if (std::isnan(lut[codes[i]])) return true;
    return false;
}

bool fixed_geometry(const TypeParams& p, int64_t n, int64_t block) {
    return p.prepared && n > 0 && n % block == 0;
}

// E2M1 doubled, as ggml's kvalues_mxfp4 (NVFP4 scales carry the matching 0.5).
constexpr float kE2M1Doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

}  // namespace

Status dequantize_row_f32(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    if (!p.prepared || n < 0) return fail(StatusCode::BadParams);
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    return kOk;
}

Status dequantize_row_f16(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    if (!p.prepared || n < 0) return fail(StatusCode::BadParams);
    for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(load_u16le(src + 2 * i));
    return kOk;
}

Status dequantize_row_bf16(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    if (!p.prepared || n < 0) return fail(StatusCode::BadParams);
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_u16le(src + 2 * i));
    return kOk;
}

Status dequantize_row_fp16_scaled(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    Geometry g;
    if (!plane_geometry(p, n, g)) return fail(StatusCode::BadParams);
    CodeBuffer buf(g.block);
    uint8_t* codes = buf.data();
    for (int64_t b = 0; b < g.blocks; ++b) {
        const uint16_t dh = load_u16le(src);
        if (!fp16_is_finite(dh)) return fail(StatusCode::BadFp16Scale, b);
        const float d = fp16_to_fp32(dh);
        unpack_codes(src + 2, g.block, p.elem_bits, codes);
        for (int64_t i = 0; i < g.block; ++i) dst[i] = d * p.lut[codes[i]];
        src += 2 + g.planes;
        dst += g.block;
    }
    return kOk;
}

Status dequantize_row_fp16_affine(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    Geometry g;
    if (!plane_geometry(p, n, g)) return fail(StatusCode::BadParams);
    CodeBuffer buf(g.block);
    uint8_t* codes = buf.data();
    for (int64_t b = 0; b < g.blocks; ++b) {
        const uint16_t dh = load_u16le(src), mh = load_u16le(src + 2);
        if (!fp16_is_finite(dh) || !fp16_is_finite(mh)) return fail(StatusCode::BadFp16Scale, b);
        const float d = fp16_to_fp32(dh), m = fp16_to_fp32(mh);
        unpack_codes(src + 4, g.block, p.elem_bits, codes);
        for (int64_t i = 0; i < g.block; ++i) dst[i] = d * p.lut[codes[i]] + m;
        src += 4 + g.planes;
        dst += g.block;
    }
    return kOk;
}

Status dequantize_row_e8m0_scaled(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    Geometry g;
    if (!plane_geometry(p, n, g)) return fail(StatusCode::BadParams);
    CodeBuffer buf(g.block);
    uint8_t* codes = buf.data();
    for (int64_t b = 0; b < g.blocks; ++b) {
        if (!e8m0_is_valid(src[0])) return fail(StatusCode::BadE8M0, b);
        const float scale = e8m0_to_fp32(src[0]);
        unpack_codes(src + 1, g.block, p.elem_bits, codes);
        if (p.has_invalid_codes && has_nan_code(codes, g.block, p.lut)) return fail(StatusCode::BadElementCode, b);
        for (int64_t i = 0; i < g.block; ++i) dst[i] = p.lut[codes[i]] * scale;
        src += 1 + g.planes;
        dst += g.block;
    }
    return kOk;
}

Status dequantize_row_q8_0(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    constexpr int64_t QK = 32;
    if (!fixed_geometry(p, n, QK)) return fail(StatusCode::BadParams);
    for (int64_t b = 0; b < n / QK; ++b) {
        const uint16_t dh = load_u16le(src);
        if (!fp16_is_finite(dh)) return fail(StatusCode::BadFp16Scale, b);
        const float d = fp16_to_fp32(dh);
        for (int64_t i = 0; i < QK; ++i) dst[i] = d * static_cast<float>(static_cast<int8_t>(src[2 + i]));
        src += 2 + QK;
        dst += QK;
    }
    return kOk;
}

Status dequantize_row_q4_0(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    constexpr int64_t QK = 32;
    if (!fixed_geometry(p, n, QK)) return fail(StatusCode::BadParams);
    for (int64_t b = 0; b < n / QK; ++b) {
        const uint16_t dh = load_u16le(src);
        if (!fp16_is_finite(dh)) return fail(StatusCode::BadFp16Scale, b);
        const float d = fp16_to_fp32(dh);
        const uint8_t* qs = src + 2;
        for (int64_t j = 0; j < QK / 2; ++j) {
            dst[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
            dst[j + QK / 2] = d * static_cast<float>((qs[j] >> 4) - 8);
        }
        src += 2 + QK / 2;
        dst += QK;
    }
    return kOk;
}

Status dequantize_row_q4_1(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    constexpr int64_t QK = 32;
    if (!fixed_geometry(p, n, QK)) return fail(StatusCode::BadParams);
    for (int64_t b = 0; b < n / QK; ++b) {
        const uint16_t dh = load_u16le(src), mh = load_u16le(src + 2);
        if (!fp16_is_finite(dh) || !fp16_is_finite(mh)) return fail(StatusCode::BadFp16Scale, b);
        const float d = fp16_to_fp32(dh), m = fp16_to_fp32(mh);
        const uint8_t* qs = src + 4;
        for (int64_t j = 0; j < QK / 2; ++j) {
            dst[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
            dst[j + QK / 2] = d * static_cast<float>(qs[j] >> 4) + m;
        }
        src += 4 + QK / 2;
        dst += QK;
    }
    return kOk;
}

namespace {

// One Q5 block's 32 codes 0..31 from qh (4 bytes) and the 16 nibble bytes after it.
void q5_codes(const uint8_t* qh_qs, uint8_t* codes) {
    const uint32_t qh = static_cast<uint32_t>(qh_qs[0]) | (static_cast<uint32_t>(qh_qs[1]) << 8) |
                        (static_cast<uint32_t>(qh_qs[2]) << 16) | (static_cast<uint32_t>(qh_qs[3]) << 24);
    const uint8_t* qs = qh_qs + 4;
    for (int j = 0; j < 16; ++j) {
        codes[j] = static_cast<uint8_t>((qs[j] & 0x0F) | (((qh >> j) & 1u) << 4));
        codes[j + 16] = static_cast<uint8_t>((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
    }
}

}  // namespace

Status dequantize_row_q5_0(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    constexpr int64_t QK = 32;
    if (!fixed_geometry(p, n, QK)) return fail(StatusCode::BadParams);
    uint8_t codes[QK];
    for (int64_t b = 0; b < n / QK; ++b) {
        const uint16_t dh = load_u16le(src);
        if (!fp16_is_finite(dh)) return fail(StatusCode::BadFp16Scale, b);
        const float d = fp16_to_fp32(dh);
        q5_codes(src + 2, codes);
        for (int64_t j = 0; j < QK; ++j) dst[j] = d * static_cast<float>(codes[j] - 16);
        src += 2 + 4 + QK / 2;
        dst += QK;
    }
    return kOk;
}

Status dequantize_row_q5_1(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    constexpr int64_t QK = 32;
    if (!fixed_geometry(p, n, QK)) return fail(StatusCode::BadParams);
    uint8_t codes[QK];
    for (int64_t b = 0; b < n / QK; ++b) {
        const uint16_t dh = load_u16le(src), mh = load_u16le(src + 2);
        if (!fp16_is_finite(dh) || !fp16_is_finite(mh)) return fail(StatusCode::BadFp16Scale, b);
        const float d = fp16_to_fp32(dh), m = fp16_to_fp32(mh);
        q5_codes(src + 4, codes);
        for (int64_t j = 0; j < QK; ++j) dst[j] = d * static_cast<float>(codes[j]) + m;
        src += 4 + 4 + QK / 2;
        dst += QK;
    }
    return kOk;
}

Status dequantize_row_nvfp4(const uint8_t* src, float* dst, int64_t n, const TypeParams& p) {
    constexpr int64_t QK = 64, SUB = 16, NSUB = QK / SUB;
    if (!fixed_geometry(p, n, QK)) return fail(StatusCode::BadParams);
    for (int64_t b = 0; b < n / QK; ++b) {
        const uint8_t* qs = src + NSUB;
        for (int64_t s = 0; s < NSUB; ++s) {
            const float d = ue4m3_to_fp32(src[s]) * 0.5f;
            const uint8_t* q = qs + s * (SUB / 2);
            float* out = dst + s * SUB;
            for (int64_t j = 0; j < SUB / 2; ++j) {
                out[j] = d * kE2M1Doubled[q[j] & 0x0F];
                out[j + SUB / 2] = d * kE2M1Doubled[q[j] >> 4];
            }
        }
        src += NSUB + QK / 2;
        dst += QK;
    }
    return kOk;
}

}  // namespace quantconv::quant::scalar
