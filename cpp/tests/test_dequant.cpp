// Standalone tests of cpp/quant (no Python): conversions, bit planes, the traits table and every
// row kernel against hand-computed values. Exit status 0 when everything passes.
// Built by -DQUANTCONV_BUILD_TESTS=ON (cpp/tests/run_native_tests.sh); portable to aarch64/qemu and
// clean under ASan/UBSan.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "quant/bitplanes.h"
#include "quant/fpconv.h"
#include "quant/traits.h"

using namespace quantconv::quant;

namespace {

int g_failures = 0;
int g_checks = 0;

void report(bool ok, const char* file, int line, const std::string& what) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
    }
}

std::string hexbits(float f) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g (0x%08x)", static_cast<double>(f), static_cast<unsigned>(f32_to_bits(f)));
    return buf;
}

// exact float comparison: same bit pattern (so -0 != +0, and NaN checks go through CHECK_NAN)
#define CHECK(cond) report((cond), __FILE__, __LINE__, #cond)
#define CHECK_BITS(got, want)                                                                    \
    do {                                                                                         \
        const float g_ = (got), w_ = (want);                                                     \
        report(f32_to_bits(g_) == f32_to_bits(w_), __FILE__, __LINE__,                           \
               std::string(#got) + " = " + hexbits(g_) + ", want " + hexbits(w_));               \
    } while (0)
#define CHECK_NAN(got) report(std::isnan(got), __FILE__, __LINE__, std::string(#got) + " is not NaN")
#define CHECK_EQ(got, want)                                                                      \
    report((got) == (want), __FILE__, __LINE__,                                                  \
           std::string(#got) + " = " + std::to_string(got) + ", want " + std::to_string(want))

template <class E, class F>
bool throws(F&& f) {
    try {
        f();
    } catch (const E&) {
        return true;
    } catch (...) {
        return false;
    }
    return false;
}

float p2(int e) { return std::ldexp(1.0f, e); }

// ---- conversions -------------------------------------------------------------------------------

void test_fp16() {
    CHECK_BITS(fp16_to_fp32(0x0000), 0.0f);
    CHECK_BITS(fp16_to_fp32(0x8000), -0.0f);
    CHECK_BITS(fp16_to_fp32(0x3C00), 1.0f);
    CHECK_BITS(fp16_to_fp32(0xBC00), -1.0f);
    CHECK_BITS(fp16_to_fp32(0xC000), -2.0f);
    CHECK_BITS(fp16_to_fp32(0x3800), 0.5f);
    CHECK_BITS(fp16_to_fp32(0x3555), 0.333251953125f);
    CHECK_BITS(fp16_to_fp32(0x3E00), 1.5f);
    CHECK_BITS(fp16_to_fp32(0x7BFF), 65504.0f);
    CHECK_BITS(fp16_to_fp32(0xFBFF), -65504.0f);
    CHECK_BITS(fp16_to_fp32(0x0400), 6.103515625e-05f);        // smallest normal 2^-14
    CHECK_BITS(fp16_to_fp32(0x0001), 5.9604644775390625e-08f); // smallest subnormal 2^-24
    CHECK_BITS(fp16_to_fp32(0x8001), -5.9604644775390625e-08f);
    CHECK_BITS(fp16_to_fp32(0x03FF), 6.097555160522461e-05f);  // 1023 * 2^-24
    CHECK_BITS(fp16_to_fp32(0x0200), 3.0517578125e-05f);       // 2^-15
    CHECK_BITS(fp16_to_fp32(0x7C00), std::numeric_limits<float>::infinity());
    CHECK_BITS(fp16_to_fp32(0xFC00), -std::numeric_limits<float>::infinity());
    CHECK_EQ(f32_to_bits(fp16_to_fp32(0x7E00)), 0x7FC00000u);   // quiet NaN, payload kept
    CHECK_EQ(f32_to_bits(fp16_to_fp32(0xFD01)), 0xFFA02000u);   // signalling NaN payload kept
    CHECK(fp16_is_finite(0x7BFF));
    CHECK(fp16_is_finite(0x8001));
    CHECK(!fp16_is_finite(0x7C00));
    CHECK(!fp16_is_finite(0xFC00));
    CHECK(!fp16_is_finite(0x7E00));
    CHECK(!fp16_is_finite(0xFFFF));
    // every finite binary16 value against its definition (-1)^s * 2^(e-15) * (1 + m/1024) in double
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000u; ++h) {
        const uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FF;
        if (e == 0x1F) continue;
        double v = e ? std::ldexp(1.0 + m / 1024.0, static_cast<int>(e) - 15) : std::ldexp(static_cast<double>(m), -24);
        if (h & 0x8000) v = -v;
        if (f32_to_bits(fp16_to_fp32(static_cast<uint16_t>(h))) != f32_to_bits(static_cast<float>(v))) ++bad;
    }
    CHECK_EQ(bad, 0);
}

void test_bf16() {
    CHECK_BITS(bf16_to_fp32(0x0000), 0.0f);
    CHECK_BITS(bf16_to_fp32(0x8000), -0.0f);
    CHECK_BITS(bf16_to_fp32(0x3F80), 1.0f);
    CHECK_BITS(bf16_to_fp32(0xC040), -3.0f);
    CHECK_BITS(bf16_to_fp32(0x3EAB), 0.333984375f);
    CHECK_BITS(bf16_to_fp32(0x7F7F), 3.3895313892515355e38f);  // largest finite bf16
    CHECK_EQ(f32_to_bits(bf16_to_fp32(0x0001)), 0x00010000u);   // subnormal
    CHECK_BITS(bf16_to_fp32(0xFF80), -std::numeric_limits<float>::infinity());
    CHECK_EQ(f32_to_bits(bf16_to_fp32(0x7FC1)), 0x7FC10000u);
}

void test_e8m0() {
    CHECK_BITS(e8m0_to_fp32(127), 1.0f);
    CHECK_BITS(e8m0_to_fp32(128), 2.0f);
    CHECK_BITS(e8m0_to_fp32(126), 0.5f);
    CHECK_BITS(e8m0_to_fp32(130), 8.0f);
    CHECK_BITS(e8m0_to_fp32(1), 1.1754943508222875e-38f);  // 2^-126
    CHECK_EQ(f32_to_bits(e8m0_to_fp32(0)), 0x00400000u);   // 2^-127, subnormal
    CHECK_BITS(e8m0_to_fp32(254), 1.7014118346046923e38f); // 2^127
    CHECK_NAN(e8m0_to_fp32(255));
    CHECK(e8m0_is_valid(0));
    CHECK(e8m0_is_valid(254));
    CHECK(!e8m0_is_valid(255));
    for (int e = 0; e < 255; ++e) CHECK_BITS(e8m0_to_fp32(static_cast<uint8_t>(e)), p2(e - 127));
}

void test_ue4m3() {
    CHECK_BITS(ue4m3_to_fp32(0x00), 0.0f);
    CHECK_BITS(ue4m3_to_fp32(0x7F), 0.0f);           // the NaN code: 0, as ggml
    CHECK_BITS(ue4m3_to_fp32(0x38), 1.0f);           // exp 7, man 0
    CHECK_BITS(ue4m3_to_fp32(0x3C), 1.5f);           // exp 7, man 4
    CHECK_BITS(ue4m3_to_fp32(0x40), 2.0f);
    CHECK_BITS(ue4m3_to_fp32(0x30), 0.5f);
    CHECK_BITS(ue4m3_to_fp32(0x01), 0.001953125f);   // 2^-9
    CHECK_BITS(ue4m3_to_fp32(0x07), 0.013671875f);   // 7 * 2^-9
    CHECK_BITS(ue4m3_to_fp32(0x08), 0.015625f);      // 2^-6, smallest normal
    CHECK_BITS(ue4m3_to_fp32(0x0F), 0.029296875f);   // 1.875 * 2^-6
    CHECK_BITS(ue4m3_to_fp32(0x7E), 448.0f);         // largest
    CHECK_BITS(ue4m3_to_fp32(0x78), 256.0f);
    CHECK_BITS(ue4m3_to_fp32(0xB8), 1.0f);           // bit 7 is ignored
    CHECK_BITS(ue4m3_to_fp32(0xFF), 480.0f);         // only 0x7F itself is treated as NaN -> 0
}

void test_minifloat() {
    const float e2m1[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -.5f, -1, -1.5f, -2, -3, -4, -6};
    for (uint32_t c = 0; c < 16; ++c) CHECK_BITS(minifloat_to_fp32(c, 2, 1, 1, true), e2m1[c]);
    CHECK_BITS(minifloat_to_fp32(8, 2, 1, 1, false), 0.0f);
    CHECK_BITS(minifloat_to_fp32(0x1F, 2, 3, 1, true), 7.5f);     // E2M3 max
    CHECK_BITS(minifloat_to_fp32(0x01, 2, 3, 1, true), 0.125f);   // E2M3 smallest subnormal
    CHECK_BITS(minifloat_to_fp32(0x08, 2, 3, 1, true), 1.0f);
    CHECK_BITS(minifloat_to_fp32(0x3F, 2, 3, 1, true), -7.5f);
    CHECK_BITS(minifloat_to_fp32(0x1F, 3, 2, 3, true), 28.0f);    // E3M2 max
    CHECK_BITS(minifloat_to_fp32(0x01, 3, 2, 3, true), 0.0625f);  // 2^-4
    CHECK_BITS(minifloat_to_fp32(0x7E, 4, 3, 7, true), 448.0f);   // E4M3 max
    CHECK_BITS(minifloat_to_fp32(0x01, 4, 3, 7, true), 0.001953125f);
    CHECK_BITS(minifloat_to_fp32(0x38, 4, 3, 7, true), 1.0f);
    CHECK_BITS(minifloat_to_fp32(0xB8, 4, 3, 7, true), -1.0f);
    CHECK_BITS(minifloat_to_fp32(0x7B, 5, 2, 15, true), 57344.0f); // E5M2 max
    CHECK_BITS(minifloat_to_fp32(0x01, 5, 2, 15, true), 1.52587890625e-05f);  // 2^-16
    CHECK_BITS(minifloat_to_fp32(0x3C, 5, 2, 15, true), 1.0f);
    CHECK_BITS(minifloat_to_fp32(0x03, 1, 1, 0, true), 3.0f);     // E1M1: (2+1) * 2^(1-0-1)
    CHECK_BITS(minifloat_to_fp32(0x01, 1, 1, 0, true), 1.0f);     // subnormal 1 * 2^(1-0-1)
    CHECK_BITS(minifloat_to_fp32(0x7F, 6, 1, 31, true), 6442450944.0f);  // 1.5 * 2^32
    CHECK_BITS(minifloat_to_fp32(0x01, 6, 1, 31, true), p2(-31));
    CHECK_BITS(minifloat_to_fp32(0x00, 3, 0, 3, true), 0.0f);      // E3M0: exponent field 0 is zero
    CHECK_BITS(minifloat_to_fp32(0x01, 3, 0, 3, true), 0.25f);     // 2^(1-3)
    CHECK_BITS(minifloat_to_fp32(0x03, 3, 0, 3, true), 1.0f);      // 2^(3-3)
    CHECK_BITS(minifloat_to_fp32(0x0F, 3, 0, 3, true), -16.0f);    // sign, 2^(7-3)
    CHECK(minifloat_in_range(4, 3, 7));
    CHECK(minifloat_in_range(6, 1, 31));
    CHECK(minifloat_in_range(8, 0, 128));
    CHECK(!minifloat_in_range(8, 0, 127));  // 2^128 overflows float32
    CHECK(!minifloat_in_range(8, 23, 0));  // top exponent 255 > 127
    CHECK(!minifloat_in_range(9, 0, 0));
}

// ---- bit planes --------------------------------------------------------------------------------

void test_plane_widths() {
    const int expected[9][4] = {{0}, {1, 1}, {1, 2}, {2, 2, 1}, {1, 4}, {2, 4, 1}, {2, 4, 2}, {3, 4, 2, 1}, {1, 8}};
    for (int b = 1; b <= 8; ++b) {
        int w[3] = {0, 0, 0};
        const int n = plane_widths(b, w);
        CHECK_EQ(n, expected[b][0]);
        int sum = 0;
        for (int i = 0; i < n; ++i) {
            CHECK_EQ(w[i], expected[b][i + 1]);
            sum += w[i];
        }
        CHECK_EQ(sum, b);
    }
    int w[3];
    CHECK_EQ(plane_widths(0, w), 0);
    CHECK_EQ(plane_widths(9, w), 0);
    CHECK_EQ(packed_bytes(4, 32), int64_t{16});
    CHECK_EQ(packed_bytes(3, 32), int64_t{12});
    CHECK_EQ(packed_bytes(6, 32), int64_t{24});
    CHECK_EQ(packed_bytes(7, 16), int64_t{14});
    CHECK_EQ(packed_bytes(8, 5), int64_t{5});
    CHECK_EQ(packed_bytes(4, 6), int64_t{3});
    CHECK_EQ(packed_bytes(2, 6), int64_t{-1});   // 2-bit plane needs a multiple of 4
    CHECK_EQ(packed_bytes(3, 12), int64_t{-1});  // 1-bit plane needs a multiple of 8
    CHECK_EQ(packed_bytes(5, 0), int64_t{-1});
    CHECK(planes_fit_block(1, 8));
    CHECK(!planes_fit_block(1, 4));
    CHECK(planes_fit_block(4, 2));
}

void test_unpack_hand() {
    {  // 4-bit: byte j = element j (low) | element j + G/2 (high)
        const uint8_t planes[2] = {0x21, 0x43};
        uint8_t c[4];
        unpack_codes(planes, 4, 4, c);
        const uint8_t want[4] = {1, 3, 2, 4};
        CHECK(std::memcmp(c, want, 4) == 0);
    }
    {  // 2-bit, G = 8: byte j holds elements j, j+2, j+4, j+6 at bits 0,2,4,6
        const uint8_t planes[2] = {0xE4, 0x1B};
        uint8_t c[8];
        unpack_codes(planes, 8, 2, c);
        const uint8_t want[8] = {0, 3, 1, 2, 2, 1, 3, 0};
        CHECK(std::memcmp(c, want, 8) == 0);
    }
    {  // 1-bit, G = 8: element k is bit k
        const uint8_t planes[1] = {0xA5};
        uint8_t c[8];
        unpack_codes(planes, 8, 1, c);
        const uint8_t want[8] = {1, 0, 1, 0, 0, 1, 0, 1};
        CHECK(std::memcmp(c, want, 8) == 0);
    }
    {  // 3-bit = 2-bit plane + 1-bit plane (x4), G = 8: codes 0..7 in order
        // 2-bit plane of codes {0,1,2,3,4,5,6,7} & 3 = {0,1,2,3,0,1,2,3}:
        //   byte0: el0=0, el2=2, el4=0, el6=2 -> 0b10001000 = 0x88; byte1: 1,3,1,3 -> 0b11011101 = 0xDD
        // 1-bit plane of code >> 2 = {0,0,0,0,1,1,1,1} -> 0xF0
        const uint8_t planes[3] = {0x88, 0xDD, 0xF0};
        uint8_t c[8];
        unpack_codes(planes, 8, 3, c);
        const uint8_t want[8] = {0, 1, 2, 3, 4, 5, 6, 7};
        CHECK(std::memcmp(c, want, 8) == 0);
    }
    {  // 6-bit = 4-bit plane + 2-bit plane * 16, G = 4: codes {45, 0, 63, 17}
        // nibbles {13, 0, 15, 1}: byte0 = 13 | 15<<4 = 0xFD, byte1 = 0 | 1<<4 = 0x10
        // 2-bit {2, 0, 3, 1}: one byte, element k at bits 2k -> 2 | 0<<2 | 3<<4 | 1<<6 = 0x72
        const uint8_t planes[3] = {0xFD, 0x10, 0x72};
        uint8_t c[4];
        unpack_codes(planes, 4, 6, c);
        const uint8_t want[4] = {45, 0, 63, 17};
        CHECK(std::memcmp(c, want, 4) == 0);
    }
    {  // 5-bit = 4-bit + 1-bit * 16, G = 8: codes {31, 16, 15, 0, 1, 2, 17, 30}
        // nibbles {15,0,15,0,1,2,1,14}: bytes {15|1<<4, 0|2<<4, 15|1<<4, 0|14<<4} = {0x1F, 0x20, 0x1F, 0xE0}
        // high bits {1,1,0,0,0,0,1,1} -> bit k: 0b11000011 = 0xC3
        const uint8_t planes[5] = {0x1F, 0x20, 0x1F, 0xE0, 0xC3};
        uint8_t c[8];
        unpack_codes(planes, 8, 5, c);
        const uint8_t want[8] = {31, 16, 15, 0, 1, 2, 17, 30};
        CHECK(std::memcmp(c, want, 8) == 0);
    }
    {  // 7-bit = 4 + 2 (*16) + 1 (*64), G = 8: codes {127, 0, 64, 63, 1, 100, 32, 85}
        const uint8_t codes[8] = {127, 0, 64, 63, 1, 100, 32, 85};
        uint8_t planes[7] = {};
        // nibbles {15,0,0,15,1,4,0,5}: bytes {15|1<<4, 0|4<<4, 0|0<<4, 15|5<<4} = {0x1F,0x40,0x00,0x5F}
        // 2-bit (c>>4)&3 = {3,0,0,3,0,2,2,1}: byte0 el{0,2,4,6} = 3|0<<2|0<<4|2<<6 = 0x83,
        //   byte1 el{1,3,5,7} = 0|3<<2|2<<4|1<<6 = 0x6C
        // 1-bit c>>6 = {1,0,1,0,0,1,0,1} -> 0b10100101 = 0xA5
        const uint8_t want_planes[7] = {0x1F, 0x40, 0x00, 0x5F, 0x83, 0x6C, 0xA5};
        pack_codes(codes, 8, 7, planes);
        CHECK(std::memcmp(planes, want_planes, 7) == 0);
        uint8_t c[8];
        unpack_codes(want_planes, 8, 7, c);
        CHECK(std::memcmp(c, codes, 8) == 0);
    }
    {  // 8-bit: bytes as they are
        const uint8_t planes[4] = {9, 200, 0, 255};
        uint8_t c[4];
        unpack_codes(planes, 4, 8, c);
        CHECK(std::memcmp(c, planes, 4) == 0);
    }
}

void test_pack_roundtrip() {
    uint32_t state = 12345u;
    auto next = [&state]() {
        state = state * 1664525u + 1013904223u;
        return static_cast<uint8_t>(state >> 24);
    };
    const int64_t blocks[] = {8, 16, 32, 64, 128, 136, 1024};
    for (int bits = 1; bits <= 8; ++bits) {
        for (int64_t g : blocks) {
            std::vector<uint8_t> codes(static_cast<size_t>(g)), back(static_cast<size_t>(g));
            for (auto& c : codes) c = static_cast<uint8_t>(next() & ((1u << bits) - 1u));
            std::vector<uint8_t> planes(static_cast<size_t>(packed_bytes(bits, g)));
            pack_codes(codes.data(), g, bits, planes.data());
            unpack_codes(planes.data(), g, bits, back.data());
            report(codes == back, __FILE__, __LINE__, "pack/unpack round trip bits=" + std::to_string(bits) + " G=" + std::to_string(g));
        }
    }
}

// ---- traits table ------------------------------------------------------------------------------

void test_traits_table() {
    for (int i = 0; i < static_cast<int>(Layout::Count); ++i) {
        const Layout l = static_cast<Layout>(i);
        const TypeTraits& t = get_type_traits(l);
        CHECK(t.layout == l);
        CHECK(t.name != nullptr && std::strlen(t.name) > 0);
        CHECK(t.dequantize_row != nullptr);
        CHECK(t.prepare != nullptr);
    }
    CHECK_EQ(get_type_traits(Layout::Q8_0).bytes_per_block, int64_t{34});
    CHECK_EQ(get_type_traits(Layout::Q4_0).bytes_per_block, int64_t{18});
    CHECK_EQ(get_type_traits(Layout::Q4_1).bytes_per_block, int64_t{20});
    CHECK_EQ(get_type_traits(Layout::NVFP4).bytes_per_block, int64_t{36});
    CHECK_EQ(get_type_traits(Layout::NVFP4).block_size, int64_t{64});
    CHECK(std::string(layout_name(Layout::Blog)) == "blog");

    CHECK_EQ(row_bytes(make_int_params(4, false, 32), 64), int64_t{2 * (2 + 16)});
    CHECK_EQ(row_bytes(make_int_params(3, true, 0), 24), int64_t{4 + 9});  // per-channel
    CHECK_EQ(row_bytes(make_int_params(6, false, 128), 256), int64_t{2 * (2 + 96)});
    CHECK_EQ(row_bytes(make_mx_params(ElemKind::E2M1), 64), int64_t{2 * 17});
    CHECK_EQ(row_bytes(make_mx_params(ElemKind::E3M2), 32), int64_t{1 + 24});
    CHECK_EQ(row_bytes(make_mx_params(ElemKind::Int8), 32), int64_t{33});
    CHECK_EQ(row_bytes(make_bfp_params(6, 16), 32), int64_t{2 * (1 + 12)});
    CHECK_EQ(row_bytes(make_bmf_params(2, 3, 16), 16), int64_t{1 + 12});
    CHECK_EQ(row_bytes(make_blog_params(4, 16), 16), int64_t{1 + 8});
    CHECK_EQ(row_bytes(make_float_params(Layout::BF16), 10), int64_t{20});
    CHECK_EQ(row_bytes(make_ggml_params(Layout::NVFP4), 128), int64_t{72});
    CHECK(throws<FormatError>([] { row_bytes(make_int_params(4, false, 32), 48); }));   // not a multiple
    CHECK(throws<FormatError>([] { row_bytes(make_int_params(3, false, 0), 12); }));    // 1-bit plane of 12
    CHECK(throws<FormatError>([] { row_bytes(make_ggml_params(Layout::Q8_0), 16); }));
    CHECK(throws<FormatError>([] { make_int_params(9, false, 32); }));
    CHECK(throws<FormatError>([] { make_int_params(1, false, 32); }));
    CHECK(throws<FormatError>([] { make_int_params(3, false, 12); }));
    CHECK(throws<FormatError>([] { make_bfp_params(9, 16); }));
    CHECK(throws<FormatError>([] { make_blog_params(1, 16); }));
    CHECK(throws<FormatError>([] { make_bmf_params(4, 4, 16); }));  // 9 bits
    CHECK(throws<FormatError>([] {
        TypeParams p;
        p.layout = Layout::Q8_0;
        p.block_size = 16;
        prepare_params(p);
    }));
    CHECK(throws<FormatError>([] {
        float cb[16] = {};
        cb[3] = std::numeric_limits<float>::infinity();
        make_codebook_params(cb, 32);
    }));
    CHECK(throws<FormatError>([] {
        TypeParams p = make_mx_params(ElemKind::E2M1);
        p.elem.max = 7.0f;  // does not match E2M1's 6
        prepare_params(p);
    }));
    {  // an unprepared TypeParams is refused by the row entry point
        TypeParams p;
        p.layout = Layout::F32;
        float out[1];
        const uint8_t in[4] = {0, 0, 0, 0};
        CHECK(dequantize_row(p, in, out, 1).code == StatusCode::BadParams);
        CHECK(throws<FormatError>([&] { dequantize(p, in, 4, out, 1, 1); }));
    }
}

// ---- kernels -----------------------------------------------------------------------------------

std::vector<float> run(const TypeParams& p, const std::vector<uint8_t>& data, int64_t rows, int64_t cols) {
    std::vector<float> out(static_cast<size_t>(rows * cols), -12345.0f);
    dequantize(p, data.data(), data.size(), out.data(), rows, cols);
    return out;
}

void check_row(const std::vector<float>& got, const std::vector<float>& want, int line) {
    report(got.size() == want.size(), __FILE__, line, "output size");
    for (size_t i = 0; i < got.size() && i < want.size(); ++i)
        if (f32_to_bits(got[i]) != f32_to_bits(want[i]))
            report(false, __FILE__, line, "element " + std::to_string(i) + " = " + hexbits(got[i]) + ", want " + hexbits(want[i]));
        else
            ++g_checks;
}

void append(std::vector<uint8_t>& v, std::initializer_list<int> bytes) {
    for (int b : bytes) v.push_back(static_cast<uint8_t>(b));
}

void append_planes(std::vector<uint8_t>& v, const std::vector<uint8_t>& codes, int bits) {
    std::vector<uint8_t> planes(static_cast<size_t>(packed_bytes(bits, static_cast<int64_t>(codes.size()))));
    pack_codes(codes.data(), static_cast<int64_t>(codes.size()), bits, planes.data());
    v.insert(v.end(), planes.begin(), planes.end());
}

void test_float_kernels() {
    {
        const std::vector<uint8_t> d = {0x00, 0x3C, 0x00, 0xC0, 0x01, 0x00, 0x00, 0x80};
        check_row(run(make_float_params(Layout::F16), d, 1, 4), {1.0f, -2.0f, p2(-24), -0.0f}, __LINE__);
        check_row(run(make_float_params(Layout::BF16), d, 2, 2),
                  {bf16_to_fp32(0x3C00), bf16_to_fp32(0xC000), bf16_to_fp32(0x0001), -0.0f}, __LINE__);
        check_row(run(make_float_params(Layout::F32), d, 1, 2), {f32_from_bits(0xC0003C00u), f32_from_bits(0x80000001u)}, __LINE__);
    }
}

void test_q8_0() {
    std::vector<uint8_t> d;
    append(d, {0x00, 0x38});  // d = 0.5
    std::vector<float> want;
    for (int i = 0; i < 32; ++i) {
        const int q = i == 0 ? -128 : i == 1 ? 127 : i - 16;
        d.push_back(static_cast<uint8_t>(static_cast<int8_t>(q)));
        want.push_back(0.5f * static_cast<float>(q));
    }
    check_row(run(make_ggml_params(Layout::Q8_0), d, 1, 32), want, __LINE__);
    // the same bytes as int8 sym group 32 give the same values
    check_row(run(make_int_params(8, false, 32), d, 1, 32), want, __LINE__);
    d[1] = 0x7C;  // d = +inf
    CHECK(throws<CorruptDataError>([&] { run(make_ggml_params(Layout::Q8_0), d, 1, 32); }));
}

void test_q4_0_q4_1() {
    std::vector<uint8_t> d0, d1;
    append(d0, {0x00, 0x40});          // d = 2
    append(d1, {0x00, 0x3C, 0x00, 0xBC});  // d = 1, m = -1
    std::vector<float> w0(32), w1(32);
    for (int j = 0; j < 16; ++j) {
        const int lo = j, hi = 15 - j;
        d0.push_back(static_cast<uint8_t>(lo | (hi << 4)));
        d1.push_back(static_cast<uint8_t>(lo | (hi << 4)));
        w0[static_cast<size_t>(j)] = 2.0f * static_cast<float>(lo - 8);
        w0[static_cast<size_t>(j + 16)] = 2.0f * static_cast<float>(hi - 8);
        w1[static_cast<size_t>(j)] = static_cast<float>(lo) - 1.0f;
        w1[static_cast<size_t>(j + 16)] = static_cast<float>(hi) - 1.0f;
    }
    check_row(run(make_ggml_params(Layout::Q4_0), d0, 1, 32), w0, __LINE__);
    check_row(run(make_ggml_params(Layout::Q4_1), d1, 1, 32), w1, __LINE__);
    check_row(run(make_int_params(4, true, 32), d1, 1, 32), w1, __LINE__);  // = int4:asym g32
    d1[3] = 0xFE;  // m = NaN
    CHECK(throws<CorruptDataError>([&] { run(make_ggml_params(Layout::Q4_1), d1, 1, 32); }));
}

void test_nvfp4() {
    std::vector<uint8_t> d;
    append(d, {0x38, 0x40, 0x00, 0x01});  // scales 1, 2, 0, 2^-9 (each times 0.5)
    const float kv[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    const float scale[4] = {0.5f, 1.0f, 0.0f, p2(-10)};
    std::vector<float> want(64);
    for (int s = 0; s < 4; ++s)
        for (int j = 0; j < 8; ++j) {
            const int lo = (j + s) & 15, hi = (15 - j) & 15;
            d.push_back(static_cast<uint8_t>(lo | (hi << 4)));
            want[static_cast<size_t>(s * 16 + j)] = scale[s] * kv[lo];
            want[static_cast<size_t>(s * 16 + j + 8)] = scale[s] * kv[hi];
        }
    check_row(run(make_ggml_params(Layout::NVFP4), d, 1, 64), want, __LINE__);
    CHECK_BITS(want[8], 0.5f * -12.0f);
}

void test_int_kernels() {
    {  // int3 sym, block 8: codes 0..7 are q = 0,1,2,3,-4,-3,-2,-1
        std::vector<uint8_t> d;
        append(d, {0x00, 0x3C});  // d = 1
        append_planes(d, {0, 1, 2, 3, 4, 5, 6, 7}, 3);
        append(d, {0x00, 0xB8});  // d = -0.5
        append_planes(d, {7, 6, 5, 4, 3, 2, 1, 0}, 3);
        check_row(run(make_int_params(3, false, 8), d, 1, 16),
                  {0, 1, 2, 3, -4, -3, -2, -1, 0.5f, 1.0f, 1.5f, 2.0f, -1.5f, -1.0f, -0.5f, -0.0f}, __LINE__);
    }
    {  // int2 asym per-channel, 8 values: d * u + m with d = 0.25, m = -0.375
        std::vector<uint8_t> d;
        append(d, {0x00, 0x34, 0x00, 0xB6});
        append_planes(d, {0, 1, 2, 3, 3, 2, 1, 0}, 2);
        const float dd = 0.25f, m = -0.375f;
        std::vector<float> want;
        for (int u : {0, 1, 2, 3, 3, 2, 1, 0}) want.push_back(dd * static_cast<float>(u) + m);
        check_row(run(make_int_params(2, true, 0), d, 1, 8), want, __LINE__);
    }
    {  // int7 sym, block 8, two rows; code 64 is q = -64
        std::vector<uint8_t> d;
        for (int r = 0; r < 2; ++r) {
            append(d, {0x00, 0x3C});
            append_planes(d, {0, 1, 63, 64, 65, 127, 100, 27}, 7);
        }
        const std::vector<float> row = {0, 1, 63, -64, -63, -1, -28, 27};
        std::vector<float> want(row);
        want.insert(want.end(), row.begin(), row.end());
        check_row(run(make_int_params(7, false, 8), d, 2, 8), want, __LINE__);
    }
    {  // a NaN fp16 scale is refused with its row and block
        std::vector<uint8_t> d;
        append(d, {0x00, 0x3C});
        append_planes(d, {0, 0, 0, 0, 0, 0, 0, 0}, 5);
        append(d, {0x00, 0x7E});
        append_planes(d, {0, 0, 0, 0, 0, 0, 0, 0}, 5);
        bool named = false;
        try {
            run(make_int_params(5, false, 8), d, 1, 16);
        } catch (const CorruptDataError& e) {
            named = std::string(e.what()).find("block 1") != std::string::npos;
        }
        CHECK(named);
    }
}

void test_codebook_kernel() {
    float cb[16];
    for (int i = 0; i < 16; ++i) cb[i] = static_cast<float>(i - 7) / 8.0f;
    cb[8] = 0.0f;
    std::vector<uint8_t> d;
    append(d, {0x00, 0xC0});  // d = -2
    std::vector<uint8_t> codes(16);
    for (int i = 0; i < 16; ++i) codes[static_cast<size_t>(i)] = static_cast<uint8_t>(15 - i);
    append_planes(d, codes, 4);
    std::vector<float> want;
    for (int i = 0; i < 16; ++i) want.push_back(-2.0f * cb[15 - i]);
    check_row(run(make_codebook_params(cb, 16), d, 1, 16), want, __LINE__);
    CHECK_BITS(want[7], -0.0f);  // d < 0 times +0: -0
}

void test_mx_kernels() {
    {  // MXFP4 (E2M1), e = 126 (scale 0.5); code 8 is +0 (as ggml and formats/), -0 only with neg_zero
        std::vector<uint8_t> d;
        append(d, {126});
        std::vector<uint8_t> codes(32);
        for (int i = 0; i < 32; ++i) codes[static_cast<size_t>(i)] = static_cast<uint8_t>(i & 15);
        append_planes(d, codes, 4);
        const float e2m1[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, 0.0f, -.5f, -1, -1.5f, -2, -3, -4, -6};
        std::vector<float> want;
        for (int i = 0; i < 32; ++i) want.push_back(0.5f * e2m1[i & 15]);
        TypeParams p = make_mx_params(ElemKind::E2M1);
        check_row(run(p, d, 1, 32), want, __LINE__);
        p.elem.neg_zero = true;
        prepare_params(p);
        want[8] = want[24] = -0.0f;
        check_row(run(p, d, 1, 32), want, __LINE__);
        p.elem.neg_zero = false;
        prepare_params(p);
        d[0] = 255;
        CHECK(throws<CorruptDataError>([&] { run(p, d, 1, 32); }));
    }
    {  // MXFP6 E3M2 with e = 0: 2^-127 times the element, products down in float32's subnormals
        std::vector<uint8_t> d;
        append(d, {0});
        std::vector<uint8_t> codes(32);
        for (int i = 0; i < 32; ++i) codes[static_cast<size_t>(i)] = static_cast<uint8_t>(i * 2 + 1);
        append_planes(d, codes, 6);
        std::vector<float> want;
        for (int i = 0; i < 32; ++i)
            want.push_back(static_cast<float>(std::ldexp(static_cast<double>(minifloat_to_fp32(static_cast<uint32_t>(i * 2 + 1), 3, 2, 3, true)), -127)));
        check_row(run(make_mx_params(ElemKind::E3M2), d, 1, 32), want, __LINE__);
        CHECK_BITS(want[0], p2(-131));  // code 1 = 2^-4
    }
    {  // MXFP8 E4M3: codes 0x7F / 0xFF are NaN and refused; E5M2 exponent 31 likewise
        std::vector<uint8_t> d;
        append(d, {130});  // 8
        std::vector<uint8_t> codes(32, 0x38);  // 1.0
        codes[1] = 0x7E;                       // 448
        codes[2] = 0xB8;                       // -1
        append_planes(d, codes, 8);
        std::vector<float> want(32, 8.0f);
        want[1] = 3584.0f;
        want[2] = -8.0f;
        check_row(run(make_mx_params(ElemKind::E4M3), d, 1, 32), want, __LINE__);
        d[1 + 5] = 0xFF;
        CHECK(throws<CorruptDataError>([&] { run(make_mx_params(ElemKind::E4M3), d, 1, 32); }));
    }
    {  // MXFP8 E5M2: 0x3C = 1, 0x7B = 57344 (max), 0x01 = 2^-16; exponent 31 (inf/NaN) is refused
        std::vector<uint8_t> d;
        append(d, {124});  // 2^-3
        std::vector<uint8_t> codes(32, 0x3C);
        codes[3] = 0x7B;
        codes[4] = 0x81;
        append_planes(d, codes, 8);
        std::vector<float> want(32, 0.125f);
        want[3] = 7168.0f;
        want[4] = -p2(-19);
        check_row(run(make_mx_params(ElemKind::E5M2), d, 1, 32), want, __LINE__);
        d[1 + 7] = 0x7C;
        CHECK(throws<CorruptDataError>([&] { run(make_mx_params(ElemKind::E5M2), d, 1, 32); }));
        d[1 + 7] = 0xFE;
        CHECK(throws<CorruptDataError>([&] { run(make_mx_params(ElemKind::E5M2), d, 1, 32); }));
    }
    {  // MXINT8: q / 64 * 2^(e-127)
        std::vector<uint8_t> d;
        append(d, {128});  // 2
        std::vector<float> want;
        for (int i = 0; i < 32; ++i) {
            const int q = i == 0 ? -128 : i == 1 ? 127 : (i - 16) * 3;
            d.push_back(static_cast<uint8_t>(static_cast<int8_t>(q)));
            want.push_back(static_cast<float>(q) / 32.0f);
        }
        check_row(run(make_mx_params(ElemKind::Int8), d, 1, 32), want, __LINE__);
    }
}

void test_bfp_bmf_blog_kernels() {
    {  // bfp mant 4 (sign + 3 magnitude bits), block 16: (-1)^s * mag * 2^(e-127-3)
        std::vector<uint8_t> d;
        append(d, {129});  // e-127 = 2 -> step 2^-1
        std::vector<uint8_t> codes(16);
        std::vector<float> want;
        for (int i = 0; i < 16; ++i) {
            codes[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
            const float mag = static_cast<float>(i & 7) * 0.5f;
            want.push_back((i & 8) ? -mag + 0.0f : mag);
        }
        append_planes(d, codes, 4);
        check_row(run(make_bfp_params(4, 16), d, 1, 16), want, __LINE__);
        CHECK_BITS(want[8], 0.0f);  // the "-0" code decodes to +0
        d[0] = 255;
        CHECK(throws<CorruptDataError>([&] { run(make_bfp_params(4, 16), d, 1, 16); }));
    }
    {  // bfp mant 8 at e = 0: mag * 2^-134, exact subnormals
        std::vector<uint8_t> d;
        append(d, {0});
        std::vector<uint8_t> codes(16);
        std::vector<float> want;
        for (int i = 0; i < 16; ++i) {
            codes[static_cast<size_t>(i)] = static_cast<uint8_t>(i * 16 + 15);
            const int c = i * 16 + 15;
            const float mag = static_cast<float>(std::ldexp(static_cast<double>(c & 127), -134));
            want.push_back((c & 128) ? -mag : mag);
        }
        append_planes(d, codes, 8);
        check_row(run(make_bfp_params(8, 16), d, 1, 16), want, __LINE__);
        CHECK_BITS(want[0], 15.0f * p2(-134));
    }
    {  // bmf E2M3 (the default): 2^(e-127) * minifloat
        std::vector<uint8_t> d;
        append(d, {125});  // 0.25
        std::vector<uint8_t> codes(16);
        std::vector<float> want;
        for (int i = 0; i < 16; ++i) {
            codes[static_cast<size_t>(i)] = static_cast<uint8_t>(i * 4 + 3);
            want.push_back(0.25f * minifloat_to_fp32(static_cast<uint32_t>(i * 4 + 3), 2, 3, 1, true));
        }
        append_planes(d, codes, 6);
        check_row(run(make_bmf_params(2, 3, 16), d, 1, 16), want, __LINE__);
        CHECK_BITS(want[15], 0.25f * -7.5f);  // code 63
        CHECK_BITS(want[0], 0.25f * 0.375f);  // code 3: subnormal 3/8
    }
    {  // bmf E6M1 at e = 0: values under float32's smallest subnormal round to nearest (even)
        std::vector<uint8_t> d;
        append(d, {0});
        std::vector<uint8_t> codes(16);
        std::vector<float> want;
        for (int i = 0; i < 16; ++i) {
            const int c = (i * 37) & 0xFF;
            codes[static_cast<size_t>(i)] = static_cast<uint8_t>(c);
            const double v = std::ldexp(static_cast<double>(minifloat_to_fp32(static_cast<uint32_t>(c), 6, 1, 31, true)), -127);
            want.push_back(static_cast<float>(v));
        }
        append_planes(d, codes, 8);
        check_row(run(make_bmf_params(6, 1, 16), d, 1, 16), want, __LINE__);
    }
    {  // blog 4 bits: K = 7, value (-1)^s 2^(e-127) 2^(k-7), k = 0 is zero
        std::vector<uint8_t> d;
        append(d, {127});
        std::vector<uint8_t> codes(16);
        std::vector<float> want;
        for (int i = 0; i < 16; ++i) {
            codes[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
            const int k = i & 7;
            const float mag = k ? p2(k - 7) : 0.0f;
            want.push_back((i & 8) ? -mag + 0.0f : mag);
        }
        append_planes(d, codes, 4);
        check_row(run(make_blog_params(4, 16), d, 1, 16), want, __LINE__);
        CHECK_BITS(want[15], -1.0f);
        CHECK_BITS(want[9], -p2(-6));
    }
    {  // blog 8 bits at e = 0: 2^(k-127-127) underflows to 0 / subnormals
        std::vector<uint8_t> d;
        append(d, {0});
        std::vector<uint8_t> codes(16);
        std::vector<float> want;
        for (int i = 0; i < 16; ++i) {
            const int c = i * 17;
            codes[static_cast<size_t>(i)] = static_cast<uint8_t>(c);
            const int k = c & 127;
            const double mag = k ? std::ldexp(1.0, k - 127 - 127) : 0.0;
            want.push_back(static_cast<float>((c & 128) ? -mag : mag));
        }
        append_planes(d, codes, 8);
        check_row(run(make_blog_params(8, 16), d, 1, 16), want, __LINE__);
    }
}

void test_sizes_refused() {
    const TypeParams p = make_int_params(4, false, 32);
    std::vector<uint8_t> d(18 * 2);
    std::vector<float> out(64);
    CHECK(throws<FormatError>([&] { dequantize(p, d.data(), d.size() - 1, out.data(), 1, 64); }));
    CHECK(throws<FormatError>([&] { dequantize(p, d.data(), d.size(), out.data(), 2, 64); }));
    CHECK(throws<FormatError>([&] { dequantize(p, d.data(), d.size(), out.data(), 1, 0); }));
    CHECK(throws<FormatError>([&] { dequantize(p, d.data(), d.size(), out.data(), -1, 64); }));
    dequantize(p, d.data(), 0, out.data(), 0, 64);  // an empty tensor is fine
    dequantize(p, d.data(), d.size(), out.data(), 1, 64);
    CHECK_BITS(out[0], 0.0f);
}

}  // namespace

int main() {
    try {
        test_fp16();
        test_bf16();
        test_e8m0();
        test_ue4m3();
        test_minifloat();
        test_plane_widths();
        test_unpack_hand();
        test_pack_roundtrip();
        test_traits_table();
        test_float_kernels();
        test_q8_0();
        test_q4_0_q4_1();
        test_nvfp4();
        test_int_kernels();
        test_codebook_kernel();
        test_mx_kernels();
        test_bfp_bmf_blog_kernels();
        test_sizes_refused();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "test_dequant: unexpected exception: %s\n", e.what());
        return 1;
    }
    if (g_failures) {
        std::fprintf(stderr, "test_dequant: %d of %d checks FAILED\n", g_failures, g_checks);
        return 1;
    }
    std::printf("test_dequant: all %d checks passed\n", g_checks);
    return 0;
}
