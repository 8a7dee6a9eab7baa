#include "traits.h"

#include <cmath>
#include <limits>
#include <string>

#include "bitplanes.h"
#include "dequant_scalar.h"
#include "fpconv.h"

namespace quantconv::quant {
namespace {

[[noreturn]] void bad(const TypeParams& p, const std::string& why) {
    throw FormatError(std::string("datatype layout '") + layout_name(p.layout) + "': " + why);
}

int default_bias(int ebits) { return ebits > 0 ? (1 << (ebits - 1)) - 1 : 0; }

// Largest finite positive value of a lut (its first 2^bits entries).
float lut_max(const float* lut, int bits) {
    float m = 0.0f;
    for (int c = 0; c < (1 << bits); ++c)
        if (std::isfinite(lut[c]) && lut[c] > m) m = lut[c];
    return m;
}

void fill_minifloat_lut(TypeParams& p) {
    const ElemFormat& f = p.elem;
    if (!minifloat_in_range(f.ebits, f.mbits, f.bias)) bad(p, "minifloat exponent/mantissa/bias out of range");
    const int bits = 1 + f.ebits + f.mbits;
    const uint32_t mag_mask = (1u << (bits - 1)) - 1u;
    for (uint32_t c = 0; c < (1u << bits); ++c) {
        float v = minifloat_to_fp32(c, f.ebits, f.mbits, f.bias, f.neg_zero);
        const uint32_t mag = c & mag_mask;
        if (f.kind == ElemKind::E4M3 && mag == mag_mask) v = std::numeric_limits<float>::quiet_NaN();
        if (f.kind == ElemKind::E5M2 && (mag >> f.mbits) == ((1u << f.ebits) - 1u))
            v = std::numeric_limits<float>::quiet_NaN();
        p.lut[c] = v;
    }
    p.has_invalid_codes = f.kind == ElemKind::E4M3 || f.kind == ElemKind::E5M2;
}

// ---- per-layout parameter preparation (validate, derive elem_bits, fill the element lut) ----

void prepare_fixed(TypeParams&) {}  // float and ggml layouts: geometry comes from the table

void prepare_int(TypeParams& p) {
    const bool asym = p.layout == Layout::IntAsym;
    if (p.asym != asym) bad(p, "asym flag does not match the layout");
    const int b = p.elem_bits;
    if (b < (asym ? 1 : 2) || b > 8)
        bad(p, "integer codes must be " + std::string(asym ? "1" : "2") + "..8 bits, got " + std::to_string(b));
    for (int c = 0; c < (1 << b); ++c)  // sym: b-bit two's complement; asym: unsigned
        p.lut[c] = static_cast<float>(asym || c < (1 << (b - 1)) ? c : c - (1 << b));
}

void prepare_codebook(TypeParams& p) {
    if (p.elem_bits != 0 && p.elem_bits != 4) bad(p, "codebook codes are 4 bits");
    p.elem_bits = 4;
    for (int c = 0; c < 16; ++c) {
        if (!std::isfinite(p.codebook[c])) bad(p, "codebook entry " + std::to_string(c) + " is not finite");
        p.lut[c] = p.codebook[c];
    }
}

void prepare_mx(TypeParams& p) {
    if (p.elem.kind == ElemKind::Int8) {  // MXINT8: two's complement q, value q / 64
        if (p.elem_bits != 0 && p.elem_bits != 8) bad(p, "MXINT8 elements are 8 bits");
        p.elem_bits = 8;
        for (int c = 0; c < 256; ++c) p.lut[c] = static_cast<float>(static_cast<int8_t>(c)) / 64.0f;
        return;
    }
    if (p.elem.kind == ElemKind::None || p.elem.kind == ElemKind::Bmf) bad(p, "mx needs an OCP element kind");
    const ElemFormat std_f = standard_elem_format(p.elem.kind);
    if ((p.elem.ebits && p.elem.ebits != std_f.ebits) || (p.elem.mbits && p.elem.mbits != std_f.mbits))
        bad(p, "element exponent/mantissa bits do not match the element kind");
    p.elem.ebits = std_f.ebits;
    p.elem.mbits = std_f.mbits;
    p.elem.bias = std_f.bias;
    const int bits = 1 + p.elem.ebits + p.elem.mbits;
    if (p.elem_bits != 0 && p.elem_bits != bits)
        bad(p, "element bits " + std::to_string(p.elem_bits) + " do not match the element (" + std::to_string(bits) + ")");
    p.elem_bits = bits;
    fill_minifloat_lut(p);
}

void prepare_bmf(TypeParams& p) {
    p.elem.kind = ElemKind::Bmf;
    const int bits = 1 + p.elem.ebits + p.elem.mbits;
    if (p.elem.ebits < 1 || p.elem.mbits < 0 || bits > 8) bad(p, "block minifloat needs exp >= 1 and 1+exp+mant <= 8");
    if (p.elem_bits != 0 && p.elem_bits != bits) bad(p, "element bits do not match 1+exp+mant");
    p.elem_bits = bits;
    fill_minifloat_lut(p);
}

void prepare_bfp(TypeParams& p) {
    if (p.bfp_mant == 0) p.bfp_mant = p.elem_bits;
    if (p.bfp_mant < 2 || p.bfp_mant > 8) bad(p, "bfp mant must be 2..8 bits, got " + std::to_string(p.bfp_mant));
    if (p.elem_bits != 0 && p.elem_bits != p.bfp_mant) bad(p, "element bits do not match bfp mant");
    p.elem_bits = p.bfp_mant;
    const int mag_bits = p.bfp_mant - 1;
    const float unit = std::ldexp(1.0f, -mag_bits);  // element = mag * 2^-(mant-1), times 2^(e-127)
    for (int c = 0; c < (1 << p.bfp_mant); ++c) {
        const float mag = static_cast<float>(c & ((1 << mag_bits) - 1)) * unit;
        p.lut[c] = (c >> mag_bits) ? -mag + 0.0f : mag;  // "-0" codes decode to +0, as formats/ does
    }
}

void prepare_blog(TypeParams& p) {
    if (p.blog_bits == 0) p.blog_bits = p.elem_bits;
    if (p.blog_bits < 2 || p.blog_bits > 8) bad(p, "blog bits must be 2..8, got " + std::to_string(p.blog_bits));
    if (p.elem_bits != 0 && p.elem_bits != p.blog_bits) bad(p, "element bits do not match blog bits");
    p.elem_bits = p.blog_bits;
    const int kbits = p.blog_bits - 1;
    const int kmax = (1 << kbits) - 1;  // K
    for (int c = 0; c < (1 << p.blog_bits); ++c) {
        const int k = c & kmax;
        const float mag = k == 0 ? 0.0f : std::ldexp(1.0f, k - kmax);
        p.lut[c] = (c >> kbits) ? -mag + 0.0f : mag;  // +0 for "-0" codes
    }
}

// The table, indexed by Layout (rows in Layout order: checked below). Columns: name, layout,
// block_size, bytes_per_block, header_bytes, elem_bits, prepare, dequantize_row.
constexpr TypeTraits kTraits[] = {
    {"f32", Layout::F32, 1, 4, 0, 32, prepare_fixed, scalar::dequantize_row_f32},
    {"f16", Layout::F16, 1, 2, 0, 16, prepare_fixed, scalar::dequantize_row_f16},
    {"bf16", Layout::BF16, 1, 2, 0, 16, prepare_fixed, scalar::dequantize_row_bf16},
    {"int_sym", Layout::IntSym, 0, 0, 2, 0, prepare_int, scalar::dequantize_row_fp16_scaled},
    {"int_asym", Layout::IntAsym, 0, 0, 4, 0, prepare_int, scalar::dequantize_row_fp16_affine},
    {"codebook4", Layout::Codebook4, 0, 0, 2, 4, prepare_codebook, scalar::dequantize_row_fp16_scaled},
    {"mx", Layout::Mx, 0, 0, 1, 0, prepare_mx, scalar::dequantize_row_e8m0_scaled},
    {"bfp", Layout::Bfp, 0, 0, 1, 0, prepare_bfp, scalar::dequantize_row_e8m0_scaled},
    {"bmf", Layout::Bmf, 0, 0, 1, 0, prepare_bmf, scalar::dequantize_row_e8m0_scaled},
    {"blog", Layout::Blog, 0, 0, 1, 0, prepare_blog, scalar::dequantize_row_e8m0_scaled},
    {"q8_0", Layout::Q8_0, 32, 34, 2, 8, prepare_fixed, scalar::dequantize_row_q8_0},
    {"q4_0", Layout::Q4_0, 32, 18, 2, 4, prepare_fixed, scalar::dequantize_row_q4_0},
    {"q4_1", Layout::Q4_1, 32, 20, 4, 4, prepare_fixed, scalar::dequantize_row_q4_1},
    {"nvfp4", Layout::NVFP4, 64, 36, 4, 4, prepare_fixed, scalar::dequantize_row_nvfp4},
    {"q5_0", Layout::Q5_0, 32, 22, 2, 5, prepare_fixed, scalar::dequantize_row_q5_0},
    {"q5_1", Layout::Q5_1, 32, 24, 4, 5, prepare_fixed, scalar::dequantize_row_q5_1},
};

constexpr size_t kLayoutCount = static_cast<size_t>(Layout::Count);
static_assert(sizeof kTraits / sizeof kTraits[0] == kLayoutCount, "one traits row per Layout");

constexpr bool table_in_layout_order() {
    for (size_t i = 0; i < kLayoutCount; ++i)
        if (static_cast<size_t>(kTraits[i].layout) != i) return false;
    return true;
}
static_assert(table_in_layout_order(), "traits rows must be in Layout order");

size_t index_of(Layout layout) {
    const size_t i = static_cast<size_t>(layout);
    if (i >= kLayoutCount) throw FormatError("unknown layout id " + std::to_string(i));
    return i;
}

// Fixed-geometry layouts take the table's block; the others need whole planes per block.
void check_block(TypeParams& p) {
    const TypeTraits& t = kTraits[index_of(p.layout)];
    if (t.block_size) {
        if (p.block_size != 0 && p.block_size != t.block_size)
            bad(p, "block size is fixed at " + std::to_string(t.block_size) + ", got " + std::to_string(p.block_size));
        p.block_size = t.block_size;
        if (p.elem_bits != 0 && p.elem_bits != t.elem_bits)
            bad(p, "element bits are fixed at " + std::to_string(t.elem_bits) + ", got " + std::to_string(p.elem_bits));
        p.elem_bits = t.elem_bits;
        return;
    }
    if (p.block_size < 0) bad(p, "negative block size");
    if (p.block_size > 0 && !planes_fit_block(p.elem_bits, p.block_size))
        bad(p, "a block of " + std::to_string(p.block_size) + " elements does not hold whole planes of " +
                   std::to_string(p.elem_bits) + "-bit codes");
}

}  // namespace

const TypeTraits& get_type_traits(Layout layout) { return kTraits[index_of(layout)]; }

const char* layout_name(Layout layout) {
    const size_t i = static_cast<size_t>(layout);
    return i < kLayoutCount ? kTraits[i].name : "unknown";
}

const char* status_message(StatusCode code) {
    switch (code) {
        case StatusCode::Ok: return "ok";
        case StatusCode::BadParams: return "datatype parameters do not fit this row (unprepared or wrong block)";
        case StatusCode::BadE8M0: return "E8M0 scale byte 255 (NaN)";
        case StatusCode::BadFp16Scale: return "fp16 scale or offset is inf or NaN";
        case StatusCode::BadElementCode: return "element code is NaN/inf in its format (E4M3 S.1111.111 or E5M2 exponent 31)";
    }
    return "unknown status";
}

ElemFormat standard_elem_format(ElemKind kind) {
    ElemFormat f;
    f.kind = kind;
    switch (kind) {
        case ElemKind::E2M1: f.ebits = 2; f.mbits = 1; f.max = 6.0f; break;
        case ElemKind::E2M3: f.ebits = 2; f.mbits = 3; f.max = 7.5f; break;
        case ElemKind::E3M2: f.ebits = 3; f.mbits = 2; f.max = 28.0f; break;
        case ElemKind::E4M3: f.ebits = 4; f.mbits = 3; f.max = 448.0f; break;
        case ElemKind::E5M2: f.ebits = 5; f.mbits = 2; f.max = 57344.0f; break;
        case ElemKind::Int8: f.max = 127.0f / 64.0f; return f;
        default: throw FormatError("no standard element format for this kind");
    }
    f.bias = default_bias(f.ebits);
    return f;
}

void prepare_params(TypeParams& p) {
    p.prepared = false;
    p.has_invalid_codes = false;
    const TypeTraits& t = kTraits[index_of(p.layout)];
    t.prepare(p);
    check_block(p);
    if ((p.layout == Layout::Mx || p.layout == Layout::Bmf) && p.elem.max > 0.0f) {
        const float m = lut_max(p.lut, p.elem_bits);
        if (m != p.elem.max)
            bad(p, "element max " + std::to_string(p.elem.max) + " does not match the decoded max " + std::to_string(m));
    }
    p.prepared = true;
}

TypeParams make_float_params(Layout layout) {
    if (layout != Layout::F32 && layout != Layout::F16 && layout != Layout::BF16)
        throw FormatError("make_float_params needs F32, F16 or BF16");
    TypeParams p;
    p.layout = layout;
    prepare_params(p);
    return p;
}

TypeParams make_ggml_params(Layout layout) {
    if (layout != Layout::Q8_0 && layout != Layout::Q4_0 && layout != Layout::Q4_1 && layout != Layout::NVFP4 &&
        layout != Layout::Q5_0 && layout != Layout::Q5_1)
        throw FormatError("make_ggml_params needs Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 or NVFP4");
    TypeParams p;
    p.layout = layout;
    prepare_params(p);
    return p;
}

TypeParams make_int_params(int bits, bool asym, int64_t block) {
    TypeParams p;
    p.layout = asym ? Layout::IntAsym : Layout::IntSym;
    p.asym = asym;
    p.elem_bits = bits;
    p.block_size = block;
    prepare_params(p);
    return p;
}

TypeParams make_codebook_params(const float codebook[16], int64_t block) {
    TypeParams p;
    p.layout = Layout::Codebook4;
    p.elem_bits = 4;
    p.block_size = block;
    for (int i = 0; i < 16; ++i) p.codebook[i] = codebook[i];
    prepare_params(p);
    return p;
}

TypeParams make_mx_params(ElemKind kind, int64_t block) {
    TypeParams p;
    p.layout = Layout::Mx;
    p.elem = standard_elem_format(kind);
    p.block_size = block;
    prepare_params(p);
    return p;
}

TypeParams make_bfp_params(int mant, int64_t block) {
    TypeParams p;
    p.layout = Layout::Bfp;
    p.bfp_mant = mant;
    p.block_size = block;
    prepare_params(p);
    return p;
}

TypeParams make_bmf_params(int ebits, int mbits, int64_t block) {
    TypeParams p;
    p.layout = Layout::Bmf;
    p.elem.kind = ElemKind::Bmf;
    p.elem.ebits = ebits;
    p.elem.mbits = mbits;
    p.elem.bias = default_bias(ebits);
    p.block_size = block;
    prepare_params(p);
    return p;
}

TypeParams make_blog_params(int bits, int64_t block) {
    TypeParams p;
    p.layout = Layout::Blog;
    p.blog_bits = bits;
    p.block_size = block;
    prepare_params(p);
    return p;
}

int64_t block_elems(const TypeParams& p, int64_t cols) {
    const TypeTraits& t = get_type_traits(p.layout);
    if (t.block_size) return t.block_size;
    return p.block_size ? p.block_size : cols;
}

int64_t block_bytes(const TypeParams& p, int64_t block) {
    const TypeTraits& t = get_type_traits(p.layout);
    if (t.bytes_per_block) return t.bytes_per_block;
    const int64_t planes = packed_bytes(p.elem_bits, block);
    return planes < 0 ? -1 : t.header_bytes + planes;
}

int64_t row_bytes(const TypeParams& p, int64_t cols) {
    if (!p.prepared) throw FormatError("datatype parameters were not prepared (call prepare_params)");
    if (cols <= 0) throw FormatError("rows must hold at least one value, got cols=" + std::to_string(cols));
    const int64_t block = block_elems(p, cols);
    if (cols % block != 0)
        throw FormatError(std::string(layout_name(p.layout)) + ": rows of " + std::to_string(cols) +
                          " values are not a multiple of the block of " + std::to_string(block));
    const int64_t bb = block_bytes(p, block);
    if (bb <= 0)
        throw FormatError(std::string(layout_name(p.layout)) + ": a block of " + std::to_string(block) +
                          " values does not hold whole planes of " + std::to_string(p.elem_bits) +
                          "-bit codes (per-channel rows must be a multiple of 8 values)");
    return cols / block * bb;
}

Status dequantize_row(const TypeParams& p, const uint8_t* src, float* dst, int64_t n) {
    if (!p.prepared || static_cast<size_t>(p.layout) >= kLayoutCount) return Status{StatusCode::BadParams, -1};
    return get_type_traits(p.layout).dequantize_row(src, dst, n, p);
}

void dequantize(const TypeParams& p, const uint8_t* src, size_t nbytes, float* dst, int64_t rows, int64_t cols) {
    if (rows < 0) throw FormatError("negative row count " + std::to_string(rows));
    const int64_t rb = row_bytes(p, cols);
    if (rows > 0 && rb > std::numeric_limits<int64_t>::max() / rows) throw FormatError("tensor size overflows");
    const uint64_t want = static_cast<uint64_t>(rows) * static_cast<uint64_t>(rb);
    if (static_cast<uint64_t>(nbytes) != want)
        throw FormatError(std::string(layout_name(p.layout)) + ": a " + std::to_string(rows) + " x " +
                          std::to_string(cols) + " tensor takes " + std::to_string(want) + " bytes (" +
                          std::to_string(rb) + " per row), got " + std::to_string(nbytes));
    const dequantize_row_fn kernel = get_type_traits(p.layout).dequantize_row;
    for (int64_t r = 0; r < rows; ++r) {
        const Status s = kernel(src + r * rb, dst + r * cols, cols, p);
        if (!s.ok()) {
            std::string where = "row " + std::to_string(r);
            if (s.block >= 0) where += ", block " + std::to_string(s.block);
            const std::string msg = std::string(layout_name(p.layout)) + ": corrupt data at " + where + ": " +
                                    status_message(s.code);
            if (s.code == StatusCode::BadParams) throw FormatError(msg);
            throw CorruptDataError(msg);
        }
    }
}

}  // namespace quantconv::quant
