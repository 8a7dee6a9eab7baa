// Standalone timing of the matvec kernels (no Python), for machines without the extension built:
//
//   cpp/tests/run_native_tests.sh        # builds build/cpp-tests/libquantconv_quant.a
//   g++ -O2 -std=c++17 -Icpp bench/kernels_bench.cpp build/cpp-tests/libquantconv_quant.a -lpthread -o /tmp/kb
//   /tmp/kb [isa ...]                    # default: every ISA this CPU runs
//   KB_TYPES='q4_0;sf4:group=64' /tmp/kb avx2
//   KB_T=64 /tmp/kb avx2                 # matmul over 64 tokens (prefill) instead of matvec
//   KB_CLOCK=cpu /tmp/kb avx2            # time by this thread's CPU time (POSIX), not wall time: on a
//                                        # loaded machine the time the thread was preempted drops out
//
// Weights are random codes with realistic block scales (fp16 around 2^-6..2^0, E8M0 2^-9..2^3): tiny
// scales would make float products subnormal, which costs Intel cores a microcode assist per
// operation and measures nothing useful. Prints microseconds per matvec (or per matmul of KB_T tokens),
// best of 7 rounds, and the multiply-adds per nanosecond.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdlib>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/internal.h"
#include "quant/traits.h"

using namespace quantconv;
using quant::Layout;

namespace {

const float kNF4[16] = {-1.0f, -0.696f, -0.525f, -0.395f, -0.284f, -0.185f, -0.091f, 0.0f,
                        0.080f, 0.161f, 0.246f, 0.338f, 0.441f, 0.563f, 0.723f, 1.0f};

std::vector<uint8_t> random_rows(const quant::TypeParams& p, int64_t rows, int64_t cols, std::mt19937& rng) {
    const size_t rb = static_cast<size_t>(quant::row_bytes(p, cols));
    std::vector<uint8_t> W(rb * static_cast<size_t>(rows));
    for (auto& b : W) b = static_cast<uint8_t>(rng());
    kernels::BlockFmt f;
    if (p.layout == Layout::F16) {
        for (size_t i = 1; i < W.size(); i += 2) W[i] = static_cast<uint8_t>(0x2C + rng() % 16);  // |v| ~ 2^-4..2^4
    } else if (p.layout == Layout::NVFP4) {
        for (size_t i = 0; i < W.size(); i += 36)
            for (size_t s = 0; s < 4; ++s) W[i + s] = static_cast<uint8_t>(0x30 + rng() % 16);
    } else if (kernels::block_fmt(p, cols, f)) {
        for (size_t i = 0; i < W.size(); i += static_cast<size_t>(f.block_bytes)) {
            if (f.hdr == kernels::Hdr::E8M0) {
                W[i] = static_cast<uint8_t>(118 + rng() % 12);
                // E4M3's NaN codes (rejected at load time) would make every sum NaN
                if (p.layout == Layout::Mx && p.elem.kind == quant::ElemKind::E4M3)
                    for (int64_t j = 1; j < f.block_bytes; ++j)
                        if ((W[i + j] & 0x7F) == 0x7F) W[i + j] = static_cast<uint8_t>(W[i + j] - 1);
                // no subnormal fp8 codes (exponent field 0, 1 in 16 random codes; the reference model's
                // mxfp8 file holds none): the x86 kernels take them as float32 subnormals, which AMD cores
                // multiply slowly. E5M2's exponent 31 (inf/NaN) is rejected at load time.
                if (p.layout == Layout::Mx && (p.elem.kind == quant::ElemKind::E4M3 || p.elem.kind == quant::ElemKind::E5M2)) {
                    const int sh = p.elem.kind == quant::ElemKind::E4M3 ? 3 : 2, top = (0x7F >> sh);
                    for (int64_t j = 1; j < f.block_bytes; ++j) {
                        const int e = (W[i + j] & 0x7F) >> sh;
                        if (e == 0 || (top == 31 && e == 31)) W[i + j] = static_cast<uint8_t>(W[i + j] ^ (8 << sh));
                    }
                }
            } else {
                W[i + 1] = static_cast<uint8_t>(0x24 + rng() % 16);  // fp16 exponent 9..12
                if (f.hdr == kernels::Hdr::F16Affine) W[i + 3] = static_cast<uint8_t>(0xA4 + rng() % 16);
            }
        }
    }
    return W;
}

// Microseconds on the clock KB_CLOCK names: wall (default) or this thread's CPU time.
double now_us() {
    static const bool cpu = std::getenv("KB_CLOCK") && std::string(std::getenv("KB_CLOCK")) == "cpu";
#if defined(CLOCK_THREAD_CPUTIME_ID)
    if (cpu) {
        timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) * 1e-3;
    }
#endif
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double time_us(const quant::TypeParams& p, int64_t rows, int64_t cols, bool exact, kernels::Isa isa, int64_t T) {
    std::mt19937 rng(1);
    const size_t rb = static_cast<size_t>(quant::row_bytes(p, cols));
    const std::vector<uint8_t> W = random_rows(p, rows, cols, rng);
    std::normal_distribution<float> nd;
    std::vector<float> x(static_cast<size_t>(cols));
    const size_t ab = kernels::acts_bytes(p, cols);
    std::vector<uint8_t> acts(ab * static_cast<size_t>(T) + 64);
    auto* a = acts.data() + (64 - reinterpret_cast<uintptr_t>(acts.data()) % 64) % 64;
    kernels::set_isa(isa);
    kernels::set_exact(exact);
    for (int64_t t = 0; t < T; ++t) {
        for (auto& v : x) v = nd(rng);
        kernels::prepare_acts(p, x.data(), cols, a + static_cast<size_t>(t) * ab);
    }
    std::vector<float> y(static_cast<size_t>(rows * T));
    // KB_ROUNDS short rounds, best kept: on a shared machine most long rounds get preempted.
    const int rounds = std::getenv("KB_ROUNDS") ? std::max(1, std::atoi(std::getenv("KB_ROUNDS"))) : 7;
    const int n = std::getenv("KB_ITERS") ? std::max(1, std::atoi(std::getenv("KB_ITERS"))) : (T > 1 ? 3 : 100);
    double best = 1e30;
    for (int round = 0; round < rounds; ++round) {
        const double t0 = now_us();
        for (int i = 0; i < n; ++i) {
            if (T > 1) kernels::matmul(p, W.data(), rb, cols, a, T, y.data(), rows, 0, rows);
            else kernels::matvec(p, W.data(), rb, cols, a, y.data(), 0, rows);
        }
        best = std::min(best, (now_us() - t0) / n);
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    const std::vector<std::pair<std::string, quant::TypeParams>> types = {
        {"sf4:group=64", quant::make_codebook_params(kNF4, 64)},
        {"sf4:group=128", quant::make_codebook_params(kNF4, 128)},
        {"q4_0", quant::make_ggml_params(Layout::Q4_0)},
        {"q4_1", quant::make_ggml_params(Layout::Q4_1)},
        {"q8_0", quant::make_ggml_params(Layout::Q8_0)},
        {"mxfp4", quant::make_mx_params(quant::ElemKind::E2M1, 32)},
        {"nvfp4", quant::make_ggml_params(Layout::NVFP4)},
        {"f16", quant::make_float_params(Layout::F16)},
        {"int4:asym", quant::make_int_params(4, true, 128)},
        {"int3", quant::make_int_params(3, false, 128)},
        {"mxfp6", quant::make_mx_params(quant::ElemKind::E2M3, 32)},
        {"mxint8", quant::make_mx_params(quant::ElemKind::Int8, 32)},
        {"mxfp6:e3m2", quant::make_mx_params(quant::ElemKind::E3M2, 32)},
        {"mxfp8", quant::make_mx_params(quant::ElemKind::E4M3, 32)},
        {"mxfp8:e5m2", quant::make_mx_params(quant::ElemKind::E5M2, 32)},
        {"int6", quant::make_int_params(6, false, 128)},
        {"bfp:mant=6,block=32", quant::make_bfp_params(6, 32)},
        {"bfp:mant=6,block=128", quant::make_bfp_params(6, 128)},
        {"int6:group=32", quant::make_int_params(6, false, 32)},
    };
    const char* only = std::getenv("KB_TYPES");  // a subset, names separated by ';'
    auto wanted_type = [&](const std::string& name) {
        return !only || (";" + std::string(only) + ";").find(";" + name + ";") != std::string::npos;
    };
    std::vector<kernels::Isa> isas;
    for (kernels::Isa isa : {kernels::Isa::Scalar, kernels::Isa::AVX2, kernels::Isa::AVX512, kernels::Isa::NEON}) {
        bool wanted = argc == 1;
        for (int i = 1; i < argc; ++i) wanted = wanted || std::string(argv[i]) == kernels::isa_name(isa);
        try {
            if (wanted) {
                kernels::set_isa(isa);
                isas.push_back(isa);
            }
        } catch (const std::exception&) {
        }
    }
    const int64_t T = std::getenv("KB_T") ? std::max(1L, std::atol(std::getenv("KB_T"))) : 1;
    std::printf("%-14s %10s %7s %10s %10s %9s\n", "type", "shape", "isa", "exact us", "fast us", "MAC/ns");
    for (const auto& [name, p] : types) {
        if (!wanted_type(name)) continue;
        // KB_ROWS: one shape of that many rows x 576 instead (more rows than the caches hold: streaming)
        std::vector<std::pair<int64_t, int64_t>> shapes = {{1536, 576}, {576, 1536}};
        if (std::getenv("KB_ROWS")) shapes = {{std::atol(std::getenv("KB_ROWS")), 576}};
        for (const auto& [rows, cols] : shapes) {
            if (p.block_size && cols % p.block_size) continue;
            for (kernels::Isa isa : isas) {
                const double e = time_us(p, rows, cols, true, isa, T);
                const bool fast = kernels::fast_supported(p, cols);
                const double f = fast ? time_us(p, rows, cols, false, isa, T) : 0.0;
                const double macs = static_cast<double>(rows * cols * T) / ((fast ? f : e) * 1e3);
                char shape[32];
                std::snprintf(shape, sizeof shape, "%ldx%ld", static_cast<long>(rows), static_cast<long>(cols));
                if (fast) std::printf("%-14s %10s %7s %10.1f %10.1f %9.1f\n", name.c_str(), shape, kernels::isa_name(isa), e, f, macs);
                else std::printf("%-14s %10s %7s %10.1f %10s %9.1f\n", name.c_str(), shape, kernels::isa_name(isa), e, "-", macs);
                std::fflush(stdout);
            }
        }
    }
    return 0;
}
