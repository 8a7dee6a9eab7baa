// quantconv._ext: the C++ kernels for Python.
//
// dequantize(descriptor, data, rows, cols) reads the dict formats/registry.py's DType.descriptor()
// returns. Keys used (others are ignored):
//   family       str, required: float | int | codebook | mx | bfp | bmf | blog | ggml
//   spec, name   str: picks f32/f16/bf16 (float), q8_0/q4_1 (int rows that are ggml types),
//                q4_0/nvfp4 (ggml); spec "mxfp4:ggml" (or a truthy "ggml" key) decodes E2M1's
//                -0 code as +0, as ggml's table does
//   block_size   int: elements per block, 0 = one block per row (per-channel)
//   elem_bits    int: code width (int b, codebook 4, mx/bmf element bits, bfp mant, blog bits)
//   bytes_per_block  int, optional: checked against the layout when nonzero
//   asym         int/bool (int family)
//   codebook     16 floats in code order (codebook family), rounded to float32
//   element      str (mx family): e2m1 | e2m3 | e3m2 | e4m3 | e5m2 | int8
//   ebits, mbits int (bmf family; bias = 2^(ebits-1)-1 unless a "bias" key is given)
//   element_max  float, optional (mx, bmf): checked against the decoded element table
//   mant         int (bfp family; else elem_bits)
//   log_bits     int (blog family; else "bits", else elem_bits)
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>

#include "py_descriptor.h"
#include "quant/descriptor.h"
#include "quant/traits.h"

namespace nb = nanobind;
namespace q = quantconv::quant;

namespace {

std::string str_key(const nb::dict& d, const char* key, const std::string& fallback = "") {
    if (!d.contains(key)) return fallback;
    return std::string(nb::str(d[key]).c_str());
}

// descriptor dict -> prepared TypeParams (quant/descriptor.h; throws FormatError -> ValueError)
q::TypeParams params_from_descriptor(const nb::dict& d) {
    return q::params_from_descriptor(quantconv::py::descriptor_from_dict(d));
}

using ByteArray = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using FloatMatrix = nb::ndarray<nb::numpy, float, nb::ndim<2>>;

FloatMatrix dequantize_py(const nb::dict& descriptor, const ByteArray& data, int64_t rows, int64_t cols) {
    const std::string spec = str_key(descriptor, "spec", str_key(descriptor, "name", "?"));
    q::TypeParams p;
    try {
        p = params_from_descriptor(descriptor);
    } catch (const q::FormatError& e) {
        throw nb::value_error(("type '" + spec + "': " + e.what()).c_str());
    }
    if (data.ndim() < 1 || data.ndim() > 2) throw nb::value_error("data must be a 1-D or 2-D uint8 array");
    if (rows < 0 || cols <= 0) throw nb::value_error("rows must be >= 0 and cols > 0");
    if (rows > 0 && cols > std::numeric_limits<int64_t>::max() / rows / 4) throw nb::value_error("tensor too large");
    const size_t nbytes = data.size();
    const uint8_t* src = data.data();

    const size_t count = static_cast<size_t>(rows) * static_cast<size_t>(cols);
    std::unique_ptr<float[]> out(new float[count ? count : 1]);
    std::string error;
    {
        nb::gil_scoped_release release;
        try {
            q::dequantize(p, src, nbytes, out.get(), rows, cols);
        } catch (const std::exception& e) {
            error = e.what();
        }
    }
    if (!error.empty()) throw nb::value_error(("type '" + spec + "': " + error).c_str());

    float* raw = out.release();
    nb::capsule owner(raw, [](void* ptr) noexcept { delete[] static_cast<float*>(ptr); });
    const size_t shape[2] = {static_cast<size_t>(rows), static_cast<size_t>(cols)};
    return FloatMatrix(raw, 2, shape, owner);
}

int64_t row_bytes_py(const nb::dict& descriptor, int64_t cols) {
    try {
        return q::row_bytes(params_from_descriptor(descriptor), cols);
    } catch (const q::FormatError& e) {
        throw nb::value_error(e.what());
    }
}

}  // namespace

// ---- dot-product kernels: defined in cpp/kernels/bind_kernels.cpp --------------------------------
void bind_kernels(nb::module_& m, q::TypeParams (*from_descriptor)(const nb::dict&));
// ---- the model engine: defined in cpp/engine/bind_engine.cpp (quantconv._ext.Model) ---------------
void bind_engine(nb::module_& m);

NB_MODULE(_ext, m) {
    m.def("version", []() { return "0.1.0"; });
    m.def("row_bytes", &row_bytes_py, nb::arg("descriptor"), nb::arg("cols"),
          "Bytes of one row of `cols` values of the type a registry descriptor describes.");
    m.def("dequantize", &dequantize_py, nb::arg("descriptor"), nb::arg("data").noconvert(), nb::arg("rows"), nb::arg("cols"),
          "Decode packed data (a C-contiguous uint8 array, 1-D or 2-D, rows * row_bytes bytes) of the type a registry "
          "descriptor (DType.descriptor()) describes into a float32 (rows, cols) array. Raises "
          "ValueError on a bad descriptor, a size mismatch or corrupt data (E8M0 255, inf/NaN fp16 scale).");

    // ---- dot-product kernels (cpp/kernels/bind_kernels.cpp): matvec, available_isas -------------
    bind_kernels(m, params_from_descriptor);
    bind_engine(m);
}
