#include "quant/descriptor.h"

#include <string>

#include "quant/traits.h"

namespace quantconv::quant {
namespace {

using Kind = DescriptorValue::Kind;

bool has_key(const Descriptor& d, const char* key) {
    auto it = d.find(key);
    return it != d.end() && it->second.kind != Kind::None;
}

std::string str_key(const Descriptor& d, const char* key, const std::string& fallback = "") {
    auto it = d.find(key);
    if (it == d.end()) return fallback;
    return it->second.text;
}

int64_t int_key(const Descriptor& d, const char* key, int64_t fallback) {
    if (!has_key(d, key)) return fallback;
    const DescriptorValue& v = d.at(key);
    if (v.kind != Kind::Int) throw FormatError(std::string("descriptor key '") + key + "' must be an integer");
    return v.i;
}

double float_key(const Descriptor& d, const char* key, double fallback) {
    if (!has_key(d, key)) return fallback;
    const DescriptorValue& v = d.at(key);
    if (v.kind == Kind::Int) return static_cast<double>(v.i);
    if (v.kind != Kind::Float) throw FormatError(std::string("descriptor key '") + key + "' must be a number");
    return v.f;
}

int small_int(int64_t v, const char* key) {
    if (v < -1024 || v > 1024) throw FormatError(std::string("descriptor key '") + key + "' is out of range");
    return static_cast<int>(v);
}

std::string base_name(const std::string& spec) { return spec.substr(0, spec.find(':')); }

}  // namespace

std::string descriptor_spec(const Descriptor& d, const std::string& fallback) {
    return str_key(d, "spec", str_key(d, "name", fallback));
}

TypeParams params_from_descriptor(const Descriptor& d) {
    const std::string family = str_key(d, "family");
    const std::string spec = str_key(d, "spec", str_key(d, "name"));
    const std::string name = str_key(d, "name", base_name(spec));
    if (family.empty()) throw FormatError("descriptor has no 'family'");

    TypeParams p;
    p.block_size = int_key(d, "block_size", 0);
    p.elem_bits = small_int(int_key(d, "elem_bits", 0), "elem_bits");
    auto elem_max = [&] { return static_cast<float>(float_key(d, "element_max", 0.0)); };

    if (family == "float") {
        if (name == "f32") p.layout = Layout::F32;
        else if (name == "f16") p.layout = Layout::F16;
        else if (name == "bf16") p.layout = Layout::BF16;
        else throw FormatError("unknown float type '" + name + "' (expected f32, f16 or bf16)");
        p.block_size = 0;  // one element per "block": the table fixes it
        p.elem_bits = 0;
    } else if (family == "ggml" || (family == "int" && (name == "q8_0" || name == "q4_1"))) {
        if (name == "q8_0") p.layout = Layout::Q8_0;
        else if (name == "q4_0") p.layout = Layout::Q4_0;
        else if (name == "q4_1") p.layout = Layout::Q4_1;
        else if (name == "nvfp4") p.layout = Layout::NVFP4;
        else if (name == "q5_0") p.layout = Layout::Q5_0;
        else if (name == "q5_1") p.layout = Layout::Q5_1;
        else
            throw FormatError("unknown ggml type '" + name + "' (expected q8_0, q4_0, q4_1, q5_0, q5_1 or nvfp4)");
    } else if (family == "int") {
        p.asym = int_key(d, "asym", 0) != 0;
        p.layout = p.asym ? Layout::IntAsym : Layout::IntSym;
    } else if (family == "codebook") {
        p.layout = Layout::Codebook4;
        if (!has_key(d, "codebook")) throw FormatError("codebook descriptor has no 'codebook'");
        const DescriptorValue& cb = d.at("codebook");
        if (cb.kind != Kind::List || cb.list.size() != 16) throw FormatError("'codebook' must hold 16 values");
        if (!cb.list_numeric) throw FormatError("'codebook' must hold 16 numbers");
        for (int i = 0; i < 16; ++i) p.codebook[i] = static_cast<float>(cb.list[static_cast<size_t>(i)]);
    } else if (family == "mx") {
        p.layout = Layout::Mx;
        const std::string el = str_key(d, "element");
        ElemKind kind;
        if (el == "e2m1") kind = ElemKind::E2M1;
        else if (el == "e2m3") kind = ElemKind::E2M3;
        else if (el == "e3m2") kind = ElemKind::E3M2;
        else if (el == "e4m3") kind = ElemKind::E4M3;
        else if (el == "e5m2") kind = ElemKind::E5M2;
        else if (el == "int8") kind = ElemKind::Int8;
        else throw FormatError("unknown mx element '" + el + "'");
        p.elem = standard_elem_format(kind);
        p.elem.max = elem_max();
        p.elem.neg_zero = false;  // every zero code decodes to +0 (formats/ and ggml agree)
    } else if (family == "bmf") {
        p.layout = Layout::Bmf;
        p.elem.kind = ElemKind::Bmf;
        p.elem.ebits = small_int(int_key(d, "ebits", 0), "ebits");
        p.elem.mbits = small_int(int_key(d, "mbits", -1), "mbits");
        if (p.elem.ebits < 1 || p.elem.mbits < 0) throw FormatError("bmf descriptor needs 'ebits' >= 1 and 'mbits' >= 0");
        p.elem.bias = small_int(int_key(d, "bias", (int64_t{1} << (p.elem.ebits - 1)) - 1), "bias");
        p.elem.max = elem_max();
    } else if (family == "bfp") {
        p.layout = Layout::Bfp;
        p.bfp_mant = small_int(int_key(d, "mant", p.elem_bits), "mant");
    } else if (family == "blog") {
        p.layout = Layout::Blog;
        p.blog_bits = small_int(int_key(d, "log_bits", int_key(d, "bits", p.elem_bits)), "log_bits");
    } else {
        throw FormatError("unknown datatype family '" + family + "'");
    }

    prepare_params(p);

    const int64_t bpb = int_key(d, "bytes_per_block", 0);
    if (bpb != 0 && p.layout != Layout::F32 && p.layout != Layout::F16 && p.layout != Layout::BF16) {
        const int64_t mine = block_bytes(p, block_elems(p, p.block_size ? p.block_size : 1));
        if (mine != bpb)
            throw FormatError("type '" + spec + "': descriptor says " + std::to_string(bpb) +
                              " bytes per block, the C++ layout has " + std::to_string(mine));
    }
    return p;
}

}  // namespace quantconv::quant
