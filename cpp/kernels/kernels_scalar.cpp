// The portable reference table: an exact path for every layout and the integer fast paths. The SIMD
// tables are tested against these. Exact: each weight is decoded with dequant_scalar.cpp's
// arithmetic (d * lut[c], then + m; lut[c] * 2^(e-127)) and multiplied with the float activation;
// eight partial sums (as eight SIMD lanes would) keep the fp32 rounding error small on long rows.
#include <cstring>

#include "kernels/common.h"
#include "quant/fpconv.h"

namespace quantconv::kernels {
namespace {

using quant::Layout;

constexpr int64_t kChunk = 256;  // codes decoded at a time (per-channel blocks can be any length)

struct Sum8 {
    float s[8] = {};
    float total() const { return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])); }
};

float h2f(const uint8_t* p) { return quant::fp16_to_fp32(quant::load_u16le(p)); }

// ---- exact paths --------------------------------------------------------------------------------

float exact_f32(const uint8_t* row, const Plan& pl, const Acts& a) {
    Sum8 acc;
    for (int64_t i = 0; i < pl.cols; ++i) {
        float w;
        std::memcpy(&w, row + 4 * i, sizeof w);
        acc.s[i & 7] += a.x[i] * w;
    }
    return acc.total();
}

float exact_f16(const uint8_t* row, const Plan& pl, const Acts& a) {
    Sum8 acc;
    for (int64_t i = 0; i < pl.cols; ++i) acc.s[i & 7] += a.x[i] * h2f(row + 2 * i);
    return acc.total();
}

float exact_bf16(const uint8_t* row, const Plan& pl, const Acts& a) {
    Sum8 acc;
    for (int64_t i = 0; i < pl.cols; ++i) acc.s[i & 7] += a.x[i] * quant::bf16_to_fp32(quant::load_u16le(row + 2 * i));
    return acc.total();
}

// Every plane-coded layout (int, codebook, mx, bfp, bmf, blog, Q8_0, Q4_0, Q4_1).
float exact_planes(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    Sum8 acc;
    uint8_t codes[kChunk];
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes, x += f.G) {
        float d = 1.0f, m = 0.0f;
        if (f.hdr == Hdr::E8M0) d = e8m0_scale(row[0]);
        else d = h2f(row);
        if (f.hdr == Hdr::F16Affine) m = h2f(row + 2);
        for (int64_t i0 = 0; i0 < f.G; i0 += kChunk) {
            const int64_t n = f.G - i0 < kChunk ? f.G - i0 : kChunk;
            unpack_range(row + f.hdr_bytes, f.G, f.bits, i0, i0 + n, codes);
            for (int64_t t = 0; t < n; ++t) {
                float w;
                if (f.hdr == Hdr::E8M0) w = f.lut[codes[t]] * d;
                else if (f.hdr == Hdr::F16Affine) w = d * f.lut[codes[t]] + m;
                else w = d * f.lut[codes[t]];
                acc.s[t & 7] += x[i0 + t] * w;
            }
        }
    }
    return acc.total();
}

float exact_nvfp4(const uint8_t* row, const Plan& pl, const Acts& a) {
    Sum8 acc;
    const float* x = a.x;
    for (int64_t b = 0; b < pl.cols / 64; ++b, row += 36, x += 64) {
        for (int s = 0; s < 4; ++s) {
            const float d = pl.ue4m3_half[row[s]];
            const uint8_t* q = row + 4 + 8 * s;
            for (int j = 0; j < 8; ++j) {
                acc.s[j] += x[16 * s + j] * (d * kE2M1Doubled[q[j] & 0x0F]);
                acc.s[j] += x[16 * s + 8 + j] * (d * kE2M1Doubled[q[j] >> 4]);
            }
        }
    }
    return acc.total();
}

// ---- fast paths ---------------------------------------------------------------------------------

// Plane-coded layouts with an integer path: per q8 block, sum(int weight * q) in int32, then
// (block scale * table unit * q8 scale) * sum in float. Asymmetric blocks add m * qsum (the rounded
// activations' block sum, acts.cpp).
float fast_planes(const uint8_t* row, const Plan& pl, const Acts& a) {
    const BlockFmt& f = pl.f;
    const FastVal fv = fast_val(pl);
    float acc = 0.0f;
    uint8_t codes[kChunk];
    for (int64_t b = 0; b < pl.cols / f.G; ++b, row += f.block_bytes) {
        float d, m = 0.0f;
        if (f.hdr == Hdr::E8M0) d = e8m0_scale(row[0]);
        else d = h2f(row);
        if (f.hdr == Hdr::F16Affine) m = h2f(row + 2);
        const float dw = d * a.tscale;
        const int64_t kb = b * f.G / kQ8Block;  // first q8 block of this weight block
        for (int64_t k = 0; k < f.G / kQ8Block; ++k) {
            const int64_t i0 = k * kQ8Block;
            unpack_range(row + f.hdr_bytes, f.G, f.bits, i0, i0 + kQ8Block, codes);
            const int8_t* q = a.q + (kb + k) * kQ8Block;
            const float* dq = a.d + (kb + k) * kQ8Scales;
            for (int64_t g = 0; g < kQ8Scales; ++g) {  // one activation scale per kQ8Group values
                int32_t s = 0;
                for (int64_t t = g * kQ8Group; t < (g + 1) * kQ8Group; ++t) {
                    const int w = fv == FastVal::Table  ? a.table[codes[t]]
                                  : fv == FastVal::Int8 ? static_cast<int8_t>(codes[t])
                                                        : codes[t];
                    s += w * q[t];
                }
                acc += (dw * dq[g]) * static_cast<float>(s);
            }
            if (fv == FastVal::Unsigned) acc += m * a.qsum[kb + k];
        }
    }
    return acc;
}

float fast_nvfp4(const uint8_t* row, const Plan& pl, const Acts& a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < pl.cols / 64; ++b, row += 36) {
        for (int s = 0; s < 4; ++s) {
            const int64_t k = 2 * b + s / 2;               // q8 block of this 16-element sub-block
            const int8_t* q = a.q + 64 * b + 16 * s;
            const float* dq = a.d + k * kQ8Scales + (s % 2) * (16 / kQ8Group);
            const uint8_t* c = row + 4 + 8 * s;            // low nibbles: elements 0..7, high: 8..15
            for (int g = 0; g < 16 / kQ8Group; ++g) {
                int32_t sum = 0;
                for (int e = g * kQ8Group; e < (g + 1) * kQ8Group; ++e)
                    sum += a.table[e < 8 ? c[e] & 0x0F : c[e - 8] >> 4] * q[e];
                acc += (pl.ue4m3_half[row[s]] * a.tscale * dq[g]) * static_cast<float>(sum);
            }
        }
    }
    return acc;
}

constexpr KernelTable make_table() {
    KernelTable t{Isa::Scalar, {}};
    at(t, Layout::F32) = {{exact_f32}};
    at(t, Layout::F16) = {{exact_f16}};
    at(t, Layout::BF16) = {{exact_bf16}};
    for (Layout l : {Layout::Bfp, Layout::Bmf, Layout::Blog}) at(t, l) = {{exact_planes}};
    for (Layout l : {Layout::IntSym, Layout::IntAsym, Layout::Codebook4, Layout::Mx, Layout::Q8_0, Layout::Q4_0, Layout::Q4_1})
        at(t, l) = {{exact_planes}, {fast_planes}, ActsFmt::Q8};
    at(t, Layout::NVFP4) = {{exact_nvfp4}, {fast_nvfp4}, ActsFmt::Q8};
    at(t, Layout::Q5_0) = {{exact_q5<false>}};  // no integer path yet: exact only
    at(t, Layout::Q5_1) = {{exact_q5<true>}};
    return t;
}
constexpr KernelTable kScalar = make_table();

}  // namespace

const KernelTable& scalar_table() { return kScalar; }

}  // namespace quantconv::kernels
