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

#include "quant/traits.h"

namespace nb = nanobind;
namespace q = quantconv::quant;

namespace {

std::string str_key(const nb::dict& d, const char* key, const std::string& fallback = "") {
    if (!d.contains(key)) return fallback;
    return std::string(nb::str(d[key]).c_str());
}

bool has_key(const nb::dict& d, const char* key) { return d.contains(key) && !d[key].is_none(); }

int64_t int_key(const nb::dict& d, const char* key, int64_t fallback) {
    if (!has_key(d, key)) return fallback;
    try {
        return nb::cast<int64_t>(d[key]);
    } catch (const std::exception&) {
        throw nb::value_error((std::string("descriptor key '") + key + "' must be an integer").c_str());
    }
}

double float_key(const nb::dict& d, const char* key, double fallback) {
    if (!has_key(d, key)) return fallback;
    try {
        return nb::cast<double>(d[key]);
    } catch (const std::exception&) {
        throw nb::value_error((std::string("descriptor key '") + key + "' must be a number").c_str());
    }
}

int small_int(int64_t v, const char* key) {
    if (v < -1024 || v > 1024) throw nb::value_error((std::string("descriptor key '") + key + "' is out of range").c_str());
    return static_cast<int>(v);
}

std::string base_name(const std::string& spec) { return spec.substr(0, spec.find(':')); }

// descriptor dict -> prepared TypeParams (throws ValueError naming the problem)
q::TypeParams params_from_descriptor(const nb::dict& d) {
    const std::string family = str_key(d, "family");
    const std::string spec = str_key(d, "spec", str_key(d, "name"));
    const std::string name = str_key(d, "name", base_name(spec));
    if (family.empty()) throw nb::value_error("descriptor has no 'family'");

    q::TypeParams p;
    p.block_size = int_key(d, "block_size", 0);
    p.elem_bits = small_int(int_key(d, "elem_bits", 0), "elem_bits");
    auto elem_max = [&] { return static_cast<float>(float_key(d, "element_max", 0.0)); };

    if (family == "float") {
        if (name == "f32") p.layout = q::Layout::F32;
        else if (name == "f16") p.layout = q::Layout::F16;
        else if (name == "bf16") p.layout = q::Layout::BF16;
        else throw nb::value_error(("unknown float type '" + name + "' (expected f32, f16 or bf16)").c_str());
        p.block_size = 0;  // one element per "block": the table fixes it
        p.elem_bits = 0;
    } else if (family == "ggml" || (family == "int" && (name == "q8_0" || name == "q4_1"))) {
        if (name == "q8_0") p.layout = q::Layout::Q8_0;
        else if (name == "q4_0") p.layout = q::Layout::Q4_0;
        else if (name == "q4_1") p.layout = q::Layout::Q4_1;
        else if (name == "nvfp4") p.layout = q::Layout::NVFP4;
        else throw nb::value_error(("unknown ggml type '" + name + "' (expected q8_0, q4_0, q4_1 or nvfp4)").c_str());
    } else if (family == "int") {
        p.asym = int_key(d, "asym", 0) != 0;
        p.layout = p.asym ? q::Layout::IntAsym : q::Layout::IntSym;
    } else if (family == "codebook") {
        p.layout = q::Layout::Codebook4;
        if (!has_key(d, "codebook")) throw nb::value_error("codebook descriptor has no 'codebook'");
        nb::object cb = d["codebook"];
        if (nb::len(cb) != 16) throw nb::value_error("'codebook' must hold 16 values");
        int i = 0;
        for (nb::handle h : cb) p.codebook[i++] = static_cast<float>(nb::cast<double>(h));
    } else if (family == "mx") {
        p.layout = q::Layout::Mx;
        const std::string el = str_key(d, "element");
        q::ElemKind kind;
        if (el == "e2m1") kind = q::ElemKind::E2M1;
        else if (el == "e2m3") kind = q::ElemKind::E2M3;
        else if (el == "e3m2") kind = q::ElemKind::E3M2;
        else if (el == "e4m3") kind = q::ElemKind::E4M3;
        else if (el == "e5m2") kind = q::ElemKind::E5M2;
        else if (el == "int8") kind = q::ElemKind::Int8;
        else throw nb::value_error(("unknown mx element '" + el + "'").c_str());
        p.elem = q::standard_elem_format(kind);
        p.elem.max = elem_max();
        const bool ggml_table = int_key(d, "ggml", 0) != 0 || spec == "mxfp4:ggml";
        p.elem.neg_zero = false;  // every zero code decodes to +0 (formats/ and ggml agree)
    } else if (family == "bmf") {
        p.layout = q::Layout::Bmf;
        p.elem.kind = q::ElemKind::Bmf;
        p.elem.ebits = small_int(int_key(d, "ebits", 0), "ebits");
        p.elem.mbits = small_int(int_key(d, "mbits", -1), "mbits");
        if (p.elem.ebits < 1 || p.elem.mbits < 0) throw nb::value_error("bmf descriptor needs 'ebits' >= 1 and 'mbits' >= 0");
        p.elem.bias = small_int(int_key(d, "bias", (int64_t{1} << (p.elem.ebits - 1)) - 1), "bias");
        p.elem.max = elem_max();
    } else if (family == "bfp") {
        p.layout = q::Layout::Bfp;
        p.bfp_mant = small_int(int_key(d, "mant", p.elem_bits), "mant");
    } else if (family == "blog") {
        p.layout = q::Layout::Blog;
        p.blog_bits = small_int(int_key(d, "log_bits", int_key(d, "bits", p.elem_bits)), "log_bits");
    } else {
        throw nb::value_error(("unknown datatype family '" + family + "'").c_str());
    }

    q::prepare_params(p);  // FormatError (std::invalid_argument) -> ValueError

    const int64_t bpb = int_key(d, "bytes_per_block", 0);
    if (bpb != 0 && p.layout != q::Layout::F32 && p.layout != q::Layout::F16 && p.layout != q::Layout::BF16) {
        const int64_t mine = q::block_bytes(p, q::block_elems(p, p.block_size ? p.block_size : 1));
        if (mine != bpb)
            throw nb::value_error(("type '" + spec + "': descriptor says " + std::to_string(bpb) +
                                   " bytes per block, the C++ layout has " + std::to_string(mine)).c_str());
    }
    return p;
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

NB_MODULE(_ext, m) {
    m.def("version", []() { return "0.1.0"; });
    m.def("active_isa", []() { return q::active_isa(); }, "Which kernel set dequantize uses (\"scalar\").");
    m.def("row_bytes", &row_bytes_py, nb::arg("descriptor"), nb::arg("cols"),
          "Bytes of one row of `cols` values of the type a registry descriptor describes.");
    m.def("dequantize", &dequantize_py, nb::arg("descriptor"), nb::arg("data").noconvert(), nb::arg("rows"), nb::arg("cols"),
          "Decode packed data (a C-contiguous uint8 array, 1-D or 2-D, rows * row_bytes bytes) of the type a registry "
          "descriptor (DType.descriptor()) describes into a float32 (rows, cols) array. Raises "
          "ValueError on a bad descriptor, a size mismatch or corrupt data (E8M0 255, inf/NaN fp16 scale).");
}
