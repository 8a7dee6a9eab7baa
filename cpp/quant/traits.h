// The per-layout traits table (in the style of ggml's type_traits): one row per Layout with its
// fixed block geometry, parameter preparation and portable row decoder. Code that decodes tensors
// looks the row up once and calls the function pointer; no function switches on the layout. (The
// per-ISA dot products have their own tables: kernels/internal.h.)
#pragma once

#include <cstddef>
#include <cstdint>

#include "types.h"

namespace quantconv::quant {

// Decodes one row of n elements (n a multiple of the block, or the block itself for per-channel
// types) from src (row_bytes(p, n) bytes) into dst. Never throws; reports corrupt data as a Status.
using dequantize_row_fn = Status (*)(const uint8_t* src, float* dst, int64_t n, const TypeParams& p);

// Validates a layout's parameters and fills derived fields; throws FormatError.
using prepare_params_fn = void (*)(TypeParams& p);

struct TypeTraits {
    const char* name;
    Layout layout;
    int64_t block_size;       // elements per block when fixed by the layout; 0 = TypeParams decides
    int64_t bytes_per_block;  // bytes per block when fixed; 0 = header_bytes + the code planes
    int header_bytes;         // scale / offset bytes ahead of each block's code planes
    int elem_bits;            // code width when fixed by the layout; 0 = TypeParams decides
    prepare_params_fn prepare;            // validates TypeParams, fills its element lut
    dequantize_row_fn dequantize_row;
};

// The row of a layout (FormatError for an id past the table).
const TypeTraits& get_type_traits(Layout layout);

const char* layout_name(Layout layout);

// ---- parameters ---------------------------------------------------------------------------------

// Validates p for its layout and fills the derived fields (element lookup table). Throws
// FormatError naming the problem. Idempotent.
void prepare_params(TypeParams& p);

// Standard element formats of the mx family (E2M1 ... E5M2, Int8) with their max.
ElemFormat standard_elem_format(ElemKind kind);

// Prepared parameters for each layout kind (block 0 = per-channel where the layout allows it).
TypeParams make_float_params(Layout layout);  // F32, F16, BF16
TypeParams make_ggml_params(Layout layout);   // Q8_0, Q4_0, Q4_1, NVFP4
TypeParams make_int_params(int bits, bool asym, int64_t block);
TypeParams make_codebook_params(const float codebook[16], int64_t block);
TypeParams make_mx_params(ElemKind kind, int64_t block = 32);
TypeParams make_bfp_params(int mant, int64_t block);
TypeParams make_bmf_params(int ebits, int mbits, int64_t block);
TypeParams make_blog_params(int bits, int64_t block);

// ---- geometry -----------------------------------------------------------------------------------

// Elements per block for rows of `cols` values (p.block_size, the layout's, or cols when per-channel).
int64_t block_elems(const TypeParams& p, int64_t cols);
// Bytes of one block of `block` elements.
int64_t block_bytes(const TypeParams& p, int64_t block);
// Bytes of one row of `cols` values. Throws FormatError when cols does not fit the layout.
int64_t row_bytes(const TypeParams& p, int64_t cols);

// ---- decoding -----------------------------------------------------------------------------------

// One row through the traits table; returns the kernel's status (BadParams when p is unprepared).
Status dequantize_row(const TypeParams& p, const uint8_t* src, float* dst, int64_t n);

// A whole rows x cols tensor. Throws FormatError when nbytes != rows * row_bytes(p, cols) or the
// parameters are wrong, CorruptDataError (naming row and block) when the data holds a forbidden value.
void dequantize(const TypeParams& p, const uint8_t* src, size_t nbytes, float* dst, int64_t rows, int64_t cols);

}  // namespace quantconv::quant
