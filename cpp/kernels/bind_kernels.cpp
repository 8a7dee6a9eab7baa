// Python access to the dot-product kernels, for tests and benchmarks (compiled into quantconv._ext
// only; see the bind_*.cpp rule in cpp/CMakeLists.txt):
//   _ext.matvec(descriptor, W, x, exact, isa=None, repeat=1) -> float32[rows]
//   _ext.available_isas() -> list[str], _ext.active_kernel_isa() -> str
//   _ext.fast_path(descriptor, cols) -> bool
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/internal.h"
#include "kernels/kernels.h"
#include "quant/traits.h"

namespace nb = nanobind;

namespace {

using namespace quantconv;
using ParamsFromDescriptor = quant::TypeParams (*)(const nb::dict&);

ParamsFromDescriptor g_from_descriptor = nullptr;

kernels::Isa isa_from_name(const std::string& name) {
    for (kernels::Isa isa : {kernels::Isa::Scalar, kernels::Isa::AVX2, kernels::Isa::AVX512, kernels::Isa::NEON})
        if (name == kernels::isa_name(isa)) return isa;
    throw nb::value_error(("unknown ISA '" + name + "' (scalar, avx2, avx512, neon)").c_str());
}

// Sets the process-wide ISA / exact switches for one call and puts them back afterwards.
class ScopedKernelConfig {
   public:
    ScopedKernelConfig(std::optional<kernels::Isa> isa, bool exact)
        : isa_(kernels::active_isa()), exact_(kernels::exact()) {
        if (isa) kernels::set_isa(*isa);
        kernels::set_exact(exact);
    }
    ~ScopedKernelConfig() {
        kernels::set_isa(isa_);
        kernels::set_exact(exact_);
    }
    ScopedKernelConfig(const ScopedKernelConfig&) = delete;
    ScopedKernelConfig& operator=(const ScopedKernelConfig&) = delete;

   private:
    kernels::Isa isa_;
    bool exact_;
};

using ByteMatrix = nb::ndarray<const uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using FloatVector = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using FloatOut = nb::ndarray<nb::numpy, float, nb::ndim<1>>;

FloatOut matvec_py(const nb::dict& descriptor, const ByteMatrix& W, const FloatVector& x, bool exact,
                   std::optional<std::string> isa, int64_t repeat) {
    const quant::TypeParams p = g_from_descriptor(descriptor);
    const int64_t rows = static_cast<int64_t>(W.shape(0)), cols = static_cast<int64_t>(x.shape(0));
    const int64_t rb = quant::row_bytes(p, cols);  // FormatError (ValueError) when cols does not fit
    if (static_cast<int64_t>(W.shape(1)) != rb)
        throw nb::value_error(("W has rows of " + std::to_string(W.shape(1)) + " bytes; " + std::to_string(cols) +
                               " values of this type take " + std::to_string(rb))
                                  .c_str());
    if (repeat < 1) throw nb::value_error("repeat must be >= 1");
    std::optional<kernels::Isa> want;
    if (isa) want = isa_from_name(*isa);

    // 64-byte aligned acts, as the engine allocates them
    const size_t ab = kernels::acts_bytes(p, cols);
    std::vector<uint8_t> acts(ab + 64);
    void* aligned = acts.data() + (64 - reinterpret_cast<uintptr_t>(acts.data()) % 64) % 64;
    std::unique_ptr<float[]> y(new float[rows ? rows : 1]);
    {
        ScopedKernelConfig cfg(want, exact);  // throws RuntimeError for an ISA this CPU lacks
        nb::gil_scoped_release release;
        kernels::prepare_acts(p, x.data(), cols, aligned);
        for (int64_t i = 0; i < repeat; ++i)
            kernels::matvec(p, W.data(), static_cast<size_t>(rb), cols, aligned, y.get(), 0, rows);
    }
    float* raw = y.release();
    nb::capsule owner(raw, [](void* ptr) noexcept { delete[] static_cast<float*>(ptr); });
    const size_t shape[1] = {static_cast<size_t>(rows)};
    return FloatOut(raw, 1, shape, owner);
}

bool fast_path_py(const nb::dict& descriptor, int64_t cols) {
    return kernels::fast_supported(g_from_descriptor(descriptor), cols);
}

std::vector<std::string> available_isas_py() {
    std::vector<std::string> out;
    const kernels::Isa keep = kernels::active_isa();
    for (kernels::Isa isa : {kernels::Isa::Scalar, kernels::Isa::AVX2, kernels::Isa::AVX512, kernels::Isa::NEON}) {
        try {
            kernels::set_isa(isa);
            out.emplace_back(kernels::isa_name(isa));
        } catch (const std::runtime_error&) {
        }
    }
    kernels::set_isa(keep);
    return out;
}

}  // namespace

// Called at the end of bindings.cpp's NB_MODULE body, with its descriptor parser (one parser for
// every binding).
void bind_kernels(nb::module_& m, ParamsFromDescriptor from_descriptor) {
    g_from_descriptor = from_descriptor;
    m.def("matvec", &matvec_py, nb::arg("descriptor"), nb::arg("W").noconvert(), nb::arg("x").noconvert(),
          nb::arg("exact") = false, nb::arg("isa") = nb::none(), nb::arg("repeat") = 1,
          "y = W @ x through the C++ dot-product kernels. W: (rows, row_bytes) uint8 packed rows of the type a "
          "registry descriptor describes; x: float32 (cols,). exact=True forces the float path; isa picks a "
          "kernel table ('scalar', 'avx2', 'avx512', 'neon'; None = the active one). repeat runs the matvec "
          "that many times (benchmarks; the result is the same).");
    m.def("available_isas", &available_isas_py, "Kernel tables this CPU can run, e.g. ['scalar', 'avx2'].");
    m.def("fast_path", &fast_path_py, nb::arg("descriptor"), nb::arg("cols"),
          "Whether matvec has an integer fast path for this type and row length (else it always runs exact).");
    m.def("active_kernel_isa", []() { return std::string(kernels::isa_name(kernels::active_isa())); },
          "The kernel table matvec uses by default (QUANTCONV_ISA or the best the CPU has).");
}
