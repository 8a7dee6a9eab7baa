// A datatype descriptor (formats/registry.py's DType.descriptor(), the quantconv.type.<id>.* keys of a
// GGUF file) as plain C++ values, and its translation into prepared TypeParams. Shared by every
// binding that receives descriptors (dequantize, the engine) so that they read them the same way.
//
// Keys used (others are ignored):
//   family       str, required: float | int | codebook | mx | bfp | bmf | blog | ggml
//   spec, name   str: picks f32/f16/bf16 (float), q8_0/q4_1 (int rows that are ggml types),
//                q4_0/q5_0/q5_1/nvfp4 (ggml; IQ4_NL's descriptor is a codebook one)
//   block_size   int: elements per block, 0 = one block per row (per-channel)
//   elem_bits    int: code width (int b, codebook 4, mx/bmf element bits, bfp mant, blog bits)
//   bytes_per_block  int, optional: checked against the layout when nonzero
//   asym         int/bool (int family)
//   codebook     16 numbers in code order (codebook family), rounded to float32
//   element      str (mx family): e2m1 | e2m3 | e3m2 | e4m3 | e5m2 | int8
//   ebits, mbits int (bmf family; bias = 2^(ebits-1)-1 unless a "bias" key is given)
//   element_max  float, optional (mx, bmf): checked against the decoded element table
//   mant         int (bfp family; else elem_bits)
//   log_bits     int (blog family; else "bits", else elem_bits)
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "quant/types.h"

namespace quantconv::quant {

struct DescriptorValue {
    enum class Kind : uint8_t { None, Int, Float, Str, List, Other };
    Kind kind = Kind::None;
    int64_t i = 0;              // Kind::Int (bools are ints)
    double f = 0.0;             // Kind::Float (and Int, converted)
    std::string text;           // str(value) for every kind
    std::vector<double> list;   // Kind::List: the elements as numbers
    bool list_numeric = true;   // false when some list element is not a number
};

using Descriptor = std::map<std::string, DescriptorValue>;

// descriptor -> prepared TypeParams. Throws FormatError (std::invalid_argument) naming the problem.
TypeParams params_from_descriptor(const Descriptor& d);

// The descriptor's "spec" (else "name", else `fallback`), for messages.
std::string descriptor_spec(const Descriptor& d, const std::string& fallback = "?");

}  // namespace quantconv::quant
