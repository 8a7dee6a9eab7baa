// Standalone tests of cpp/kernels (no Python): for every layout, on random packed rows, every ISA
// table this CPU runs gives
//   - exact path: the double-precision dot of quant::dequantize's row, within 1e-5 of sum|w*x|, and
//     the scalar table's exact path within the same tolerance;
//   - fast path (where the layout has one): the scalar fast path within 1e-5 of sum|w*x| (same
//     integers, other summation order), and the exact dot within the bound the two int8 roundings
//     allow. The fast path is dequant(W) . x^ with x^ = d * q the rounded activations (asymmetric
//     blocks too: their offset m multiplies the block sum of x^, not of x), except that table codes
//     stand in for their elements by int8 approximations. So the error is
//       sum w_i (x_i - x^_i)  +  sum (w~_i - (w_i - m)) x^_i
//     with |x_i - x^_i| <= d/2 (d = amax/127 of the element's group of kQ8Group = 4 values) and, for table codes only, the
//     int8 element off by at most 1/254 of the block's largest |w - m| (the element table maps the
//     largest |element| to an integer k >= 127 or to a smaller k with a smaller error); int8 and
//     unsigned codes are their integers exactly. Besides the worst case, the error must stay
//     within 6 sigma of the same roundings taken as independent uniform variables;
//   - matmul equal to T matvecs, bit for bit; matvec over a sub-range equal to the full one.
// Exit status 0 when everything passes. Built by -DQUANTCONV_BUILD_TESTS=ON; runs under qemu-aarch64
// and ASan/UBSan (cpp/tests/run_native_tests.sh, scripts/cross-test-neon.sh).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/internal.h"
#include "kernels/kernels.h"
#include "quant/bitplanes.h"
#include "quant/fpconv.h"
#include "quant/traits.h"

using namespace quantconv;
using quant::ElemKind;
using quant::Layout;
using quant::TypeParams;

namespace {

int g_failures = 0;
int g_checks = 0;

void check(bool ok, const std::string& what) {
    ++g_checks;
    if (!ok) {
        if (++g_failures <= 40) std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    }
}

struct Case {
    std::string name;
    TypeParams p;
    int64_t cols;
};

// Packed random rows plus what the bounds need, per element: the decoded weight, |w - m| (the part
// the integer codes carry; m is the block offset of asymmetric layouts), |m| and the table error
// bound (the largest |w - m| of the element's (sub-)block / 254 for table codes, else 0).
struct Weights {
    int64_t rows = 0, cols = 0;
    size_t row_bytes = 0;
    std::vector<uint8_t> bytes;
    std::vector<float> w, code, off, tab;
};

uint16_t random_fp16(std::mt19937& rng, int emin, int emax, bool any_sign) {
    const uint32_t e = static_cast<uint32_t>(std::uniform_int_distribution<int>(emin, emax)(rng));
    const uint32_t man = rng() & 0x3FFu;
    const uint32_t sign = any_sign ? static_cast<uint32_t>(rng() & 1u) << 15 : 0u;
    return static_cast<uint16_t>(sign | (e << 10) | man);
}

void put16(uint8_t* p, uint16_t v) {
    p[0] = static_cast<uint8_t>(v & 0xFF);
    p[1] = static_cast<uint8_t>(v >> 8);
}

Weights make_weights(const Case& c, int64_t rows, std::mt19937& rng) {
    Weights W;
    W.rows = rows;
    W.cols = c.cols;
    W.row_bytes = static_cast<size_t>(quant::row_bytes(c.p, c.cols));
    W.bytes.assign(W.row_bytes * static_cast<size_t>(rows), 0);
    const size_t n = static_cast<size_t>(rows * c.cols);
    W.w.resize(n);
    W.code.resize(n);
    W.off.assign(n, 0.0f);
    W.tab.resize(n);
    const Layout L = c.p.layout;
    kernels::BlockFmt f;
    if (L == Layout::F32) {
        std::normal_distribution<float> nd;
        for (size_t i = 0; i < n; ++i) {
            const float v = nd(rng);
            std::memcpy(&W.bytes[4 * i], &v, 4);
        }
    } else if (L == Layout::F16 || L == Layout::BF16) {
        for (size_t i = 0; i < n; ++i) {
            uint16_t h = random_fp16(rng, 8, 20, true);  // |v| in about [2^-7, 2^6)
            if (L == Layout::BF16) h = static_cast<uint16_t>(((rng() & 1u) << 15) | ((120u + (rng() % 14u)) << 7) | (rng() & 0x7Fu));
            put16(&W.bytes[2 * i], h);
        }
    } else if (L == Layout::NVFP4) {
        for (uint8_t* blk = W.bytes.data(); blk < W.bytes.data() + W.bytes.size(); blk += 36) {
            for (int s = 0; s < 4; ++s) blk[s] = static_cast<uint8_t>(rng() & 0xFF);
            for (int s = 0; s < 4; ++s) {
                uint8_t codes[16];
                for (uint8_t& cd : codes) cd = static_cast<uint8_t>(rng() & 15u);
                codes[0] = 7;  // the largest magnitude (6) is present in every sub-block
                for (int j = 0; j < 8; ++j) blk[4 + 8 * s + j] = static_cast<uint8_t>(codes[j] | (codes[j + 8] << 4));
            }
        }
    } else {
        if (!kernels::block_fmt(c.p, c.cols, f)) throw std::runtime_error(c.name + ": no block format");
        int argmax = 0;  // the code of the largest finite |element|
        for (int k = 0; k < (1 << f.bits); ++k)
            if (std::isfinite(f.lut[k]) && std::fabs(f.lut[k]) > std::fabs(f.lut[argmax])) argmax = k;
        std::vector<uint8_t> codes(static_cast<size_t>(f.G));
        for (uint8_t* blk = W.bytes.data(); blk < W.bytes.data() + W.bytes.size(); blk += f.block_bytes) {
            if (f.hdr == kernels::Hdr::E8M0) {
                blk[0] = static_cast<uint8_t>(110 + rng() % 30);
            } else {
                put16(blk, random_fp16(rng, 10, 19, true));
                if (f.hdr == kernels::Hdr::F16Affine) put16(blk + 2, random_fp16(rng, 8, 19, true));
            }
            for (auto& cd : codes) {
                do cd = static_cast<uint8_t>(rng() & ((1u << f.bits) - 1u));
                while (!std::isfinite(f.lut[cd]));
            }
            codes[0] = static_cast<uint8_t>(argmax);
            quant::pack_codes(codes.data(), f.G, f.bits, blk + f.hdr_bytes);
        }
    }
    quant::dequantize(c.p, W.bytes.data(), W.bytes.size(), W.w.data(), rows, c.cols);

    // offsets and (sub-)block maxima for the fast-path bound; int8 codes (Q8_0, IntSym8, MXINT8) and
    // unsigned codes (asymmetric ints, Q4_1) reach the integer path exactly, the others via a table
    const int64_t sub = L == Layout::NVFP4 ? 16 : (f.G ? f.G : 1);
    const bool table = L == Layout::NVFP4 || (f.G && f.hdr != kernels::Hdr::F16Affine && f.bits != 8);
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t b = 0; b < c.cols / sub; ++b) {
            float m = 0.0f;
            if (f.G && f.hdr == kernels::Hdr::F16Affine) {
                const uint8_t* blk = W.bytes.data() + static_cast<size_t>(r) * W.row_bytes + static_cast<size_t>(b * f.block_bytes);
                m = quant::fp16_to_fp32(quant::load_u16le(blk + 2));
            }
            float mx = 0.0f;
            for (int64_t i = 0; i < sub; ++i) {
                const size_t k = static_cast<size_t>(r * c.cols + b * sub + i);
                W.code[k] = std::fabs(W.w[k] - m);
                W.off[k] = std::fabs(m);
                mx = std::max(mx, W.code[k]);
            }
            for (int64_t i = 0; i < sub; ++i) W.tab[static_cast<size_t>(r * c.cols + b * sub + i)] = table ? mx / 254.0f : 0.0f;
        }
    }
    return W;
}

std::vector<float> make_x(int64_t cols, std::mt19937& rng) {
    std::normal_distribution<float> nd;
    std::vector<float> x(static_cast<size_t>(cols));
    for (auto& v : x) v = nd(rng);
    for (size_t i = 0; i < x.size(); i += 37) x[i] *= 20.0f;  // outliers, as LLM activations have
    return x;
}

struct Refs {
    std::vector<double> dot, abs_dot, fast_bound, fast_sigma;
    // dequant(W) . x^ with x^ = d * q the q8-rounded activations, and the float slack around it:
    // where no table approximates the elements (W.tab == 0) the fast path is this dot itself
    std::vector<double> dot_hat, hat_tol;
    bool exact_ints = true;
};

Refs references(const Weights& W, const std::vector<float>& x) {
    Refs R;
    const int64_t nb = W.cols / kernels::kQ8Block;
    std::vector<float> xhat;
    if (W.cols % kernels::kQ8Block == 0) {
        std::vector<float> d(static_cast<size_t>(nb * kernels::kQ8Scales));
        std::vector<int8_t> q(x.size());
        kernels::q8_blocks_portable(x.data(), nb, d.data(), q.data());
        for (size_t i = 0; i < x.size(); ++i) xhat.push_back(d[i / kernels::kQ8Group] * static_cast<float>(q[i]));
    }
    for (float t : W.tab) R.exact_ints = R.exact_ints && t == 0.0f;
    for (int64_t r = 0; r < W.rows; ++r) {
        double dot = 0, ad = 0, bound = 0, var = 0, dh = 0, ht = 0;
        for (int64_t i = 0; i < static_cast<int64_t>(xhat.size()); ++i) {
            const size_t k = static_cast<size_t>(r * W.cols + i);
            dh += double(W.w[k]) * double(xhat[size_t(i)]);
            ht += 1e-5 * (W.code[k] + W.off[k]) * std::fabs(double(xhat[size_t(i)]));
        }
        R.dot_hat.push_back(dh);
        R.hat_tol.push_back(ht + 1e-30);
        for (int64_t b = 0; b < W.cols / kernels::kQ8Group; ++b) {  // one q8 scale per group
            const int64_t G = kernels::kQ8Group;
            double amax = 0;
            for (int64_t i = 0; i < G; ++i) amax = std::max(amax, std::fabs(double(x[size_t(b * G + i)])));
            const double half = amax / 127.0 / 2.0 * 1.0001;  // q8 rounding error bound
            for (int64_t i = 0; i < G; ++i) {
                const size_t k = static_cast<size_t>(r * W.cols + b * G + i);
                const double xi = x[size_t(b * G + i)];
                const double wi = std::fabs(double(W.w[k])), tab = W.tab[k];
                bound += wi * half + tab * (std::fabs(xi) + half);
                // the same errors as independent uniform variables: the typical size of the sum
                var += (wi * half) * (wi * half) / 3.0 + (tab * xi) * (tab * xi) / 3.0;
                // float summation of the (scale * int sum) terms and of the m * qsum terms, which
                // cancel where m and the codes' part have opposite signs
                bound += 2e-6 * (W.code[k] + W.off[k]) * std::fabs(xi);
            }
        }
        for (int64_t i = 0; i < W.cols; ++i) {
            const double p = double(W.w[size_t(r * W.cols + i)]) * double(x[size_t(i)]);
            dot += p;
            ad += std::fabs(p);
        }
        R.dot.push_back(dot);
        R.abs_dot.push_back(ad);
        R.fast_bound.push_back(bound);
        R.fast_sigma.push_back(std::sqrt(var));
    }
    return R;
}

std::vector<float> run_matvec(const Case& c, const Weights& W, const std::vector<float>& x, int64_t r0, int64_t r1) {
    std::vector<uint8_t> acts(kernels::acts_bytes(c.p, c.cols) + 64);
    void* aligned = acts.data() + (64 - reinterpret_cast<uintptr_t>(acts.data()) % 64) % 64;
    kernels::prepare_acts(c.p, x.data(), c.cols, aligned);
    std::vector<float> y(static_cast<size_t>(r1 - r0));
    kernels::matvec(c.p, W.bytes.data(), W.row_bytes, c.cols, aligned, y.data(), r0, r1);
    return y;
}

std::string fmt(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return buf;
}

std::vector<kernels::Isa> available_isas() {
    std::vector<kernels::Isa> out;
    for (kernels::Isa isa : {kernels::Isa::Scalar, kernels::Isa::AVX2, kernels::Isa::AVX512, kernels::Isa::NEON}) {
        try {
            kernels::set_isa(isa);
            out.push_back(isa);
        } catch (const std::runtime_error&) {
        }
    }
    return out;
}

void test_case(const Case& c, const std::vector<kernels::Isa>& isas, std::mt19937& rng) {
    const int64_t rows = 5;
    const Weights W = make_weights(c, rows, rng);
    const std::vector<float> x = make_x(c.cols, rng);
    const Refs R = references(W, x);
    const bool fast = kernels::fast_supported(c.p, c.cols);

    std::vector<float> scalar_exact, scalar_fast;
    for (kernels::Isa isa : isas) {
        kernels::set_isa(isa);
        const std::string who = c.name + " cols=" + std::to_string(c.cols) + " [" + kernels::isa_name(isa) + "]";
        for (bool ex : {true, false}) {
            if (!ex && !fast) continue;
            kernels::set_exact(ex);
            const std::vector<float> y = run_matvec(c, W, x, 0, rows);
            if (isa == kernels::Isa::Scalar) (ex ? scalar_exact : scalar_fast) = y;
            const std::vector<float>& ref_isa = ex ? scalar_exact : scalar_fast;
            for (int64_t r = 0; r < rows; ++r) {
                const size_t i = static_cast<size_t>(r);
                const double tol = 1e-5 * R.abs_dot[i] + 1e-30;
                const std::string at = who + (ex ? " exact" : " fast") + " row " + std::to_string(r) + ": got " +
                                       fmt(y[i]);
                check(std::isfinite(y[i]), at + " is not finite");
                check(std::fabs(y[i] - ref_isa[i]) <= tol, at + " vs scalar " + fmt(ref_isa[i]) + " (tol " + fmt(tol) + ")");
                const double tol_ref = ex ? tol : R.fast_bound[i] + tol;
                check(std::fabs(y[i] - R.dot[i]) <= tol_ref,
                      at + " vs dequantized dot " + fmt(R.dot[i]) + " (bound " + fmt(tol_ref) + ")");
                if (!ex) {  // and not a systematic error that merely fits the worst case: 6 sigma
                    const double typical = 6.0 * R.fast_sigma[i] + tol;
                    check(std::fabs(y[i] - R.dot[i]) <= typical,
                          at + " vs dequantized dot " + fmt(R.dot[i]) + " (6 sigma " + fmt(typical) + ")");
                }
                if (!ex && R.exact_ints)  // int8 / unsigned codes: exactly dequant(W) . x^, up to float rounding
                    check(std::fabs(y[i] - R.dot_hat[i]) <= R.hat_tol[i],
                          at + " vs dequant(W) . x^ " + fmt(R.dot_hat[i]) + " (tol " + fmt(R.hat_tol[i]) + ")");
            }
            // a sub-range of rows gives the same values as the full matvec
            const std::vector<float> part = run_matvec(c, W, x, 2, 4);
            check(part[0] == y[2] && part[1] == y[3], who + " matvec sub-range differs");
        }
    }
    kernels::set_exact(false);
}

// matmul over T tokens equals T matvecs, bit for bit, on every ISA and both paths. T = 9 covers two
// full tiles of the tile kernels (kernels::kTileTokens = 4) and a token left over for the vec_dot.
void test_matmul(const Case& c, const std::vector<kernels::Isa>& isas, std::mt19937& rng) {
    const int64_t rows = 7, T = 9, r0 = 1, r1 = 6, ldy = rows + 3;
    const Weights W = make_weights(c, rows, rng);
    const size_t ab = kernels::acts_bytes(c.p, c.cols);
    check(ab % 64 == 0, c.name + ": acts_bytes is not a multiple of 64");
    std::vector<uint8_t> acts(ab * T + 64);
    uint8_t* base = acts.data() + (64 - reinterpret_cast<uintptr_t>(acts.data()) % 64) % 64;
    std::vector<std::vector<float>> xs;
    for (int64_t t = 0; t < T; ++t) {
        xs.push_back(make_x(c.cols, rng));
        kernels::prepare_acts(c.p, xs.back().data(), c.cols, base + static_cast<size_t>(t) * ab);
    }
    for (kernels::Isa isa : isas) {
        kernels::set_isa(isa);
        for (bool ex : {true, false}) {
            kernels::set_exact(ex);
            std::vector<float> Y(static_cast<size_t>(T * ldy), -1.0f);
            kernels::matmul(c.p, W.bytes.data(), W.row_bytes, c.cols, base, T, Y.data(), ldy, r0, r1);
            bool same = true;
            for (int64_t t = 0; t < T; ++t) {
                std::vector<float> y(static_cast<size_t>(r1 - r0));
                kernels::matvec(c.p, W.bytes.data(), W.row_bytes, c.cols, base + static_cast<size_t>(t) * ab, y.data(), r0, r1);
                for (int64_t r = r0; r < r1; ++r) same = same && Y[static_cast<size_t>(t * ldy + r)] == y[static_cast<size_t>(r - r0)];
                same = same && Y[static_cast<size_t>(t * ldy)] == -1.0f;  // rows outside [r0, r1) untouched
            }
            check(same, c.name + " [" + kernels::isa_name(isa) + (ex ? " exact" : " fast") + "]: matmul != matvecs");
        }
    }
    kernels::set_exact(false);
}

const float kNF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
const float kFP4[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -.5f, -1, -1.5f, -2, -3, -4, -6};
const float kFP4SR[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, 8, -.5f, -1, -1.5f, -2, -3, -4, -6};
const float kFP4Log[16] = {0, .25f, .5f, 1, 2, 4, 8, 16, -0.0f, -.25f, -.5f, -1, -2, -4, -8, -16};
const float kAPoT[16] = {0, .1f, .2f, .3f, .4f, .6f, .8f, 1, 0.5f, -.1f, -.2f, -.3f, -.4f, -.6f, -.8f, -1};

std::vector<Case> all_cases() {
    std::vector<Case> cs;
    auto add = [&](const std::string& name, const TypeParams& p, const std::vector<int64_t>& cols) {
        for (int64_t c : cols) cs.push_back({name, p, c});
    };
    const auto groups = {16, 32, 64, 128, 0};
    add("f32", quant::make_float_params(Layout::F32), {256, 40});
    add("f16", quant::make_float_params(Layout::F16), {256, 40});
    add("bf16", quant::make_float_params(Layout::BF16), {256, 40});
    add("q8_0", quant::make_ggml_params(Layout::Q8_0), {256});
    add("q4_0", quant::make_ggml_params(Layout::Q4_0), {256, 96});
    add("q4_1", quant::make_ggml_params(Layout::Q4_1), {256});
    add("nvfp4", quant::make_ggml_params(Layout::NVFP4), {256, 64});
    for (int bits = 1; bits <= 8; ++bits) {
        for (int g : groups) {
            const std::string gs = ":group=" + std::to_string(g);
            // per-channel rows: a multiple of 64, a block that straddles q8 blocks (96), a long row
            const std::vector<int64_t> cols = g == 0 ? std::vector<int64_t>{256, 96, 4160} : std::vector<int64_t>{256};
            if (bits >= 2) add("int" + std::to_string(bits) + gs, quant::make_int_params(bits, false, g), cols);
            add("int" + std::to_string(bits) + ":asym" + gs, quant::make_int_params(bits, true, g), cols);
        }
    }
    const std::pair<const char*, const float*> books[] = {
        {"nf4", kNF4}, {"fp4", kFP4}, {"fp4-sr", kFP4SR}, {"fp4-log", kFP4Log}, {"apot4-sp", kAPoT}};
    for (const auto& [name, cb] : books)
        for (int g : groups)
            add(std::string(name) + ":group=" + std::to_string(g), quant::make_codebook_params(cb, g),
                g == 0 ? std::vector<int64_t>{256, 96} : std::vector<int64_t>{256});
    const std::pair<const char*, ElemKind> mx[] = {{"mxfp4", ElemKind::E2M1}, {"mxfp6:e2m3", ElemKind::E2M3},
                                                   {"mxfp6:e3m2", ElemKind::E3M2}, {"mxfp8", ElemKind::E4M3},
                                                   {"mxfp8:e5m2", ElemKind::E5M2}, {"mxint8", ElemKind::Int8}};
    for (const auto& [name, kind] : mx) {
        add(name, quant::make_mx_params(kind, 32), {256});
        add(std::string(name) + ":block=64", quant::make_mx_params(kind, 64), {256});
    }
    for (int mant = 2; mant <= 8; ++mant)
        for (int b : {16, 32, 128}) add("bfp:mant=" + std::to_string(mant) + ",block=" + std::to_string(b), quant::make_bfp_params(mant, b), {256});
    for (int e = 1; e <= 6; ++e)
        for (int m = 0; 1 + e + m <= 8; ++m)
            add("bmf:exp=" + std::to_string(e) + ",mant=" + std::to_string(m), quant::make_bmf_params(e, m, 16), {256});
    add("bmf:exp=3,mant=2,block=64", quant::make_bmf_params(3, 2, 64), {256});
    for (int bits = 2; bits <= 8; ++bits) {
        add("blog:bits=" + std::to_string(bits), quant::make_blog_params(bits, 16), {256});
        add("blog:bits=" + std::to_string(bits) + ",block=64", quant::make_blog_params(bits, 64), {256});
    }
    return cs;
}

void test_dispatch() {
    check(kernels::isa_name(kernels::Isa::AVX2) == std::string("avx2"), "isa_name(avx2)");
    const kernels::Isa best = kernels::active_isa();
    check(best == kernels::Isa::Scalar || best == kernels::Isa::AVX2 || best == kernels::Isa::AVX512 ||
              best == kernels::Isa::NEON,
          "active_isa");
#if defined(__x86_64__)
    bool threw = false;
    try {
        kernels::set_isa(kernels::Isa::NEON);
    } catch (const std::runtime_error&) {
        threw = true;
    }
    check(threw, "set_isa(NEON) on x86 must throw");
#endif
    kernels::set_exact(true);
    check(kernels::exact(), "set_exact(true)");
    kernels::set_exact(false);
    check(!kernels::exact(), "set_exact(false)");
    // fast-path rule
    check(kernels::fast_supported(quant::make_ggml_params(Layout::Q4_0), 64), "q4_0 has a fast path");
    check(!kernels::fast_supported(quant::make_int_params(4, false, 16), 64), "group 16 uses the exact path");
    check(!kernels::fast_supported(quant::make_int_params(3, false, 32), 64), "int3 uses the exact path");
    check(!kernels::fast_supported(quant::make_float_params(Layout::F16), 64), "f16 uses the exact path");
    check(kernels::fast_supported(quant::make_mx_params(ElemKind::E2M3, 32), 64), "mxfp6 e2m3 has a fast path");
    check(!kernels::fast_supported(quant::make_mx_params(ElemKind::E3M2, 32), 64), "mxfp6 e3m2 is exact only");
    check(!kernels::fast_supported(quant::make_mx_params(ElemKind::E4M3, 32), 64), "mxfp8 is exact only");
}

// Every table this CPU runs is its own ISA's and has every row make_table() must fill (kernels/internal.h):
// an exact vec_dot, a fast one exactly where the row reads Q8 acts, shapes only beside their vec_dot,
// and the vec_dot_type of the scalar table's row, which fast_supported decides by for every ISA.
// (A compile-time check would need GCC to fold function addresses, which it refuses under -fsanitize=null.)
void test_tables(const std::vector<kernels::Isa>& isas) {
    const kernels::KernelTable& ref = kernels::scalar_table();
    for (kernels::Isa isa : isas) {
        const kernels::KernelTable& t = kernels::table_of(isa);
        check(t.isa == isa, std::string(kernels::isa_name(isa)) + " table: isa");
        for (size_t l = 0; l < static_cast<size_t>(Layout::Count); ++l) {
            const kernels::KernelRow& r = t.rows[l];
            const bool q8 = r.vec_dot_type == kernels::ActsFmt::Q8;
            check(r.exact.dot && (r.fast.dot != nullptr) == q8 && (r.fast.dot || (!r.fast.tile && !r.fast.rows)) &&
                      r.vec_dot_type == ref.rows[l].vec_dot_type,
                  std::string(kernels::isa_name(isa)) + " table, row " + quant::layout_name(static_cast<Layout>(l)));
        }
    }
}

}  // namespace

// The AVX2 activation quantizer writes the same bytes as the portable one, specials included.
void test_q8_blocks(std::mt19937& rng) {
#if defined(__x86_64__) || defined(_M_X64)
    bool avx2 = true;
    try {
        kernels::set_isa(kernels::Isa::AVX2);
    } catch (const std::exception&) {
        avx2 = false;
    }
    if (!avx2) return;
    const int64_t nb = 64;
    std::vector<float> x(static_cast<size_t>(nb * kernels::kQ8Block));
    std::normal_distribution<float> nd;
    for (auto& v : x) v = nd(rng) * std::exp2(static_cast<float>(static_cast<int>(rng() % 40) - 20));
    const float specials[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1e-40f, 3e38f, 0.5f, -0.5f};
    for (size_t i = 0; i < x.size(); i += 7) x[i] = specials[(i / 7) % 9];
    for (int64_t i = 0; i < kernels::kQ8Block; ++i) x[static_cast<size_t>(32 + i)] = 0.0f;  // an all-zero block
    std::vector<float> d0(static_cast<size_t>(nb * kernels::kQ8Scales)), d1(d0.size());
    std::vector<int8_t> q0(x.size()), q1(x.size());
    kernels::q8_blocks_portable(x.data(), nb, d0.data(), q0.data());
    kernels::q8_blocks_avx2(x.data(), nb, d1.data(), q1.data());
    check(std::memcmp(d0.data(), d1.data(), d0.size() * sizeof(float)) == 0, "q8_blocks_avx2 scales differ");
    check(q0 == q1, "q8_blocks_avx2 values differ");
#else
    (void)rng;
#endif
}

// The exact path decodes every code to the value quant::dequantize_row gives: with a one-hot x the
// exact matvec returns the weight itself (1 * w + zeros), so every decoder (luts, shuffles, the
// arithmetic minifloat decode) is checked code by code, on every ISA.
// One-hot x against `rows` rows on every ISA's exact path: matvec must return ref (the rows'
// dequantize_row values) for each column, bit for bit.
// One-hot activations (value `hot`, a power of two) against every weight: y == ref * hot wherever that
// product is a normal float (elsewhere two roundings of a subnormal may differ from one).
void check_one_hot(const std::string& name, const TypeParams& p, const uint8_t* W, size_t rb, int64_t rows,
                   int64_t cols, const std::vector<float>& ref, const std::vector<kernels::Isa>& isas,
                   float hot = 1.0f) {
    std::vector<uint8_t> acts(kernels::acts_bytes(p, cols) + 64);
    uint8_t* base = acts.data() + (64 - reinterpret_cast<uintptr_t>(acts.data()) % 64) % 64;
    std::vector<float> x(static_cast<size_t>(cols), 0.0f), y(static_cast<size_t>(rows));
    kernels::set_exact(true);
    for (kernels::Isa isa : isas) {
        kernels::set_isa(isa);
        int bad = 0;
        for (int64_t i = 0; i < cols; ++i) {
            x[static_cast<size_t>(i)] = hot;
            kernels::prepare_acts(p, x.data(), cols, base);
            kernels::matvec(p, W, rb, cols, base, y.data(), 0, rows);
            for (int64_t r = 0; r < rows; ++r) {
                const float want = ref[static_cast<size_t>(r * cols + i)] * hot;
                if (hot == 1.0f || std::fpclassify(want) == FP_NORMAL) bad += y[static_cast<size_t>(r)] != want;
            }
            x[static_cast<size_t>(i)] = 0.0f;
        }
        check(bad == 0, name + " [" + kernels::isa_name(isa) + "]: " + std::to_string(bad) +
                            " weights decoded by the exact path differ from dequantize_row");
    }
    kernels::set_exact(false);
}

void test_exact_decode(const Case& c, const std::vector<kernels::Isa>& isas, std::mt19937& rng) {
    const int64_t rows = 7;
    const Weights W = make_weights(c, rows, rng);
    std::vector<float> ref(static_cast<size_t>(rows * c.cols));
    for (int64_t r = 0; r < rows; ++r)
        quant::dequantize_row(c.p, W.bytes.data() + r * W.row_bytes, ref.data() + r * c.cols, c.cols);
    check_one_hot(c.name, c.p, W.bytes.data(), W.row_bytes, rows, c.cols, ref, isas);
}

// Exact matmul over enough tokens to decode each row block once (dispatch.cpp, kDecodeOnceTokens)
// equals the exact matmul of the same rows dequantized to F32, bit for bit, on every ISA: the coded
// rows are decoded to the values quant::dequantize_row gives and then run through the F32 kernels.
void test_matmul_decoded(const Case& c, const std::vector<kernels::Isa>& isas, std::mt19937& rng) {
    const int64_t rows = 7, T = 19, r0 = 1, r1 = 6, ldy = rows + 3;
    const Weights W = make_weights(c, rows, rng);
    TypeParams f32;
    f32.layout = Layout::F32;
    quant::prepare_params(f32);
    const size_t fb = static_cast<size_t>(c.cols) * sizeof(float);
    std::vector<float> Wf(static_cast<size_t>(rows * c.cols));
    for (int64_t r = 0; r < rows; ++r)
        check(quant::dequantize_row(c.p, W.bytes.data() + r * W.row_bytes, Wf.data() + r * c.cols, c.cols).ok(),
              c.name + ": dequantize_row failed");
    const size_t ab = kernels::acts_bytes(c.p, c.cols), fab = kernels::acts_bytes(f32, c.cols);
    std::vector<uint8_t> acts(ab * T + 64), facts(fab * T + 64);
    uint8_t* base = acts.data() + (64 - reinterpret_cast<uintptr_t>(acts.data()) % 64) % 64;
    uint8_t* fbase = facts.data() + (64 - reinterpret_cast<uintptr_t>(facts.data()) % 64) % 64;
    kernels::set_exact(true);
    for (int64_t t = 0; t < T; ++t) {
        const std::vector<float> x = make_x(c.cols, rng);
        kernels::prepare_acts(c.p, x.data(), c.cols, base + static_cast<size_t>(t) * ab);
        kernels::prepare_acts(f32, x.data(), c.cols, fbase + static_cast<size_t>(t) * fab);
    }
    for (kernels::Isa isa : isas) {
        kernels::set_isa(isa);
        std::vector<float> Y(static_cast<size_t>(T * ldy), -1.0f), F(static_cast<size_t>(T * ldy), -1.0f);
        kernels::matmul(c.p, W.bytes.data(), W.row_bytes, c.cols, base, T, Y.data(), ldy, r0, r1);
        kernels::matmul(f32, reinterpret_cast<const uint8_t*>(Wf.data()), fb, c.cols, fbase, T, F.data(), ldy, r0, r1);
        check(std::memcmp(Y.data(), F.data(), Y.size() * sizeof(float)) == 0,
              c.name + " [" + kernels::isa_name(isa) + "]: exact matmul of " + std::to_string(T) +
                  " tokens != the F32 matmul of the dequantized rows");
    }
    kernels::set_exact(false);
}

// MX E4M3 / E5M2 exact decode at the edges the random cases never reach: block scales 2^-127
// (E8M0 0, a float subnormal), 2^-126, 1, and the largest ones, where the kernels' fp16 route must
// fold its 2^8 into the scale another way (E4M3 from E8M0 247 up); every finite code, subnormals
// included. One-hot x against 5 rows (a matvec row group and a single row) equals dequantize_row
// bit for bit, on every ISA. Codes whose weight would overflow are replaced by the smallest one.
void test_fp8_edges(const std::vector<kernels::Isa>& isas) {
    const uint8_t scales[] = {0, 1, 127, 200, 246, 247, 248, 254};
    const int64_t rows = 5, G = 32, nb = 8, cols = nb * G;
    for (ElemKind kind : {ElemKind::E4M3, ElemKind::E5M2}) {
        const TypeParams p = quant::make_mx_params(kind, G);
        kernels::BlockFmt f;
        check(kernels::block_fmt(p, cols, f), "mx fp8 block format");
        const size_t rb = static_cast<size_t>(quant::row_bytes(p, cols));
        std::vector<uint8_t> W(rb * rows);
        int next = 0;
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t b = 0; b < nb; ++b) {
                uint8_t* blk = W.data() + r * rb + b * f.block_bytes;
                blk[0] = scales[(b + r) % 8];
                const float d = std::ldexp(1.0f, blk[0] ? blk[0] - 127 : -127);
                for (int64_t i = 0; i < G; ++i) {
                    uint8_t c;
                    do c = static_cast<uint8_t>(next++ & 0xFF);
                    while (!std::isfinite(f.lut[c]));
                    blk[1 + i] = std::isfinite(f.lut[c] * d) ? c : 1;
                }
            }
        std::vector<float> ref(static_cast<size_t>(rows * cols));
        for (int64_t r = 0; r < rows; ++r)
            check(quant::dequantize_row(p, W.data() + r * rb, ref.data() + r * cols, cols).ok(), "fp8 edges dequantize");
        const std::string name = kind == ElemKind::E4M3 ? "mxfp8 edges" : "mxfp8:e5m2 edges";
        check_one_hot(name, p, W.data(), rb, rows, cols, ref, isas);
        // the x86 kernels multiply x * 2^96 (Acts::x96) with codes decoded as value * 2^-120: tiny
        // activations must not underflow there, and from 2^31 on (no x96: x * 2^96 would overflow)
        // fp16's route takes over
        check_one_hot(name + " x=2^-40", p, W.data(), rb, rows, cols, ref, isas, 0x1p-40f);
        check_one_hot(name + " x=2^40", p, W.data(), rb, rows, cols, ref, isas, 0x1p40f);
        // a NaN activation makes every row NaN, as in the dequantized dot product (0 * NaN included)
        std::vector<uint8_t> acts(kernels::acts_bytes(p, cols) + 64);
        uint8_t* base = acts.data() + (64 - reinterpret_cast<uintptr_t>(acts.data()) % 64) % 64;
        std::vector<float> x(static_cast<size_t>(cols), 0.5f), y(static_cast<size_t>(rows));
        x[3] = NAN;
        kernels::set_exact(true);
        for (kernels::Isa isa : isas) {
            kernels::set_isa(isa);
            kernels::prepare_acts(p, x.data(), cols, base);
            kernels::matvec(p, W.data(), rb, cols, base, y.data(), 0, rows);
            int finite = 0;
            for (float v : y) finite += !std::isnan(v);
            check(finite == 0, name + " [" + kernels::isa_name(isa) + "]: NaN activation gave a number");
        }
        kernels::set_exact(false);
    }
}

int main() {
    try {
        test_dispatch();
        const std::vector<kernels::Isa> isas = available_isas();
        std::printf("test_kernels: ISAs:");
        for (kernels::Isa isa : isas) std::printf(" %s", kernels::isa_name(isa));
        std::printf("\n");
        test_tables(isas);
        std::mt19937 rng(12345);
        test_q8_blocks(rng);
        test_fp8_edges(isas);
        int n = 0;
        for (const Case& c : all_cases()) {
            test_case(c, isas, rng);
            ++n;
        }
        for (const Case& c : all_cases())
            if (c.cols == 256) {
                test_matmul(c, isas, rng);
                test_matmul_decoded(c, isas, rng);
                test_exact_decode(c, isas, rng);
            }
        std::printf("test_kernels: %d cases\n", n);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "test_kernels: unexpected exception: %s\n", e.what());
        return 1;
    }
    if (g_failures) {
        std::fprintf(stderr, "test_kernels: %d of %d checks FAILED\n", g_failures, g_checks);
        return 1;
    }
    std::printf("test_kernels: all %d checks passed\n", g_checks);
    return 0;
}
