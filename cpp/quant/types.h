// Runtime description of one quantconv tensor datatype (the C++ side of formats/registry.py's
// descriptor) and the status a row kernel reports. See docs/layouts.md for every layout.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace quantconv::quant {

// One row of the traits table per layout kind (traits.cpp). Order is the table's order.
enum class Layout : uint8_t {
    F32,
    F16,
    BF16,
    IntSym,     // fp16 d, planes of b-bit two's complement codes: d * q
    IntAsym,    // fp16 d, fp16 m, planes of b-bit unsigned codes: d * u + m
    Codebook4,  // fp16 d, 4-bit plane: d * codebook[code]
    Mx,         // E8M0 e, planes of the element width: 2^(e-127) * element(code)
    Bfp,        // E8M0 e, planes of mant bits: sign-magnitude integer * 2^(e-127-(mant-1))
    Bmf,        // E8M0 e, planes of 1+exp+mant bits: 2^(e-127) * minifloat(code)
    Blog,       // E8M0 e, planes of bits: (-1)^s * 2^(e-127) * 2^(k-K)
    Q8_0,       // ggml block_q8_0
    Q4_0,       // ggml block_q4_0
    Q4_1,       // ggml block_q4_1
    NVFP4,      // ggml block_nvfp4
    Q5_0,       // ggml block_q5_0: fp16 d, qh (bit 4 of each code), nibbles: d * (u - 16)
    Q5_1,       // ggml block_q5_1: fp16 d, fp16 m, qh, nibbles: d * u + m
    Count
};

// Element formats of the mx / bmf families (docs/layouts.md, "Element formats").
enum class ElemKind : uint8_t { None, E2M1, E2M3, E3M2, E4M3, E5M2, Int8, Bmf };

struct ElemFormat {
    ElemKind kind = ElemKind::None;
    int ebits = 0;           // exponent field width (minifloats)
    int mbits = 0;           // mantissa field width (minifloats)
    int bias = 0;            // exponent bias (minifloats)
    float max = 0.0f;        // largest finite value; 0 = not checked
    bool neg_zero = false;    // a sign-bit zero code decodes to -0.0f (formats/elements.py's decode);
                             // false for ggml's MXFP4 table, whose code 8 is +0
};

struct TypeParams {
    // ---- the descriptor ----
    Layout layout = Layout::F32;
    int64_t block_size = 0;  // elements per block; 0 = the whole row (per-channel)
    int elem_bits = 0;       // code width: int b, codebook 4, mx/bmf element bits, bfp mant, blog bits
    bool asym = false;       // int family: asymmetric (Layout::IntAsym)
    float codebook[16] = {}; // Layout::Codebook4 only, in code order
    ElemFormat elem;         // Layout::Mx / Layout::Bmf
    int bfp_mant = 0;        // Layout::Bfp: code bits (sign + mant-1 magnitude bits)
    int blog_bits = 0;       // Layout::Blog: code bits (sign + bits-1 exponent bits)

    // ---- derived by prepare_params(): do not set by hand ----
    bool prepared = false;
    bool has_invalid_codes = false;  // some code decodes to NaN (E4M3 / E5M2 specials): reject them
    float lut[256] = {};             // code -> element value before the block scale
};

enum class StatusCode : uint8_t {
    Ok = 0,
    BadParams,       // TypeParams not prepared / inconsistent with the row length
    BadE8M0,         // an E8M0 scale byte of 255 (NaN)
    BadFp16Scale,    // an fp16 scale or offset that is inf or NaN
    BadElementCode,  // an element code that is NaN / inf in its format (E4M3 S.1111.111, E5M2 exp 31)
};

struct Status {
    StatusCode code = StatusCode::Ok;
    int64_t block = -1;  // index of the offending block inside the row, when there is one
    bool ok() const { return code == StatusCode::Ok; }
};

const char* status_message(StatusCode code);

// The datatype description itself is wrong (bad parameters, sizes that do not match).
class FormatError : public std::invalid_argument {
   public:
    using std::invalid_argument::invalid_argument;
};

// The tensor bytes hold values the layout forbids (E8M0 NaN, non-finite fp16 scale, NaN codes).
class CorruptDataError : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

}  // namespace quantconv::quant
