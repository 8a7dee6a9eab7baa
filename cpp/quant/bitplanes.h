// Bit-plane packing of b-bit element codes (docs/layouts.md, "Bit planes"): a code is split into
// 8/4/2/1-bit planes, low bits first (8 -> [8], 7 -> [4,2,1], 6 -> [4,2], 5 -> [4,1], 4 -> [4],
// 3 -> [2,1], 2 -> [2], 1 -> [1]). A plane of width w over a block of G elements takes G*w/8 bytes;
// byte j holds element j + k*(G*w/8) in bits k*w .. k*w+w-1, for k = 0 .. 8/w-1.
#pragma once

#include <cstdint>

namespace quantconv::quant {

// Plane widths of a b-bit code, low plane first; returns how many (0 when bits is not 1..8).
int plane_widths(int bits, int widths[3]);

// Whether every plane of a G-element block is a whole number of bytes.
bool planes_fit_block(int bits, int64_t block);

// Bytes the planes of one block take; -1 when bits or block is unsupported.
int64_t packed_bytes(int bits, int64_t block);

// planes (packed_bytes(bits, block) bytes) -> block codes, each < 2^bits.
// Preconditions: planes_fit_block(bits, block).
void unpack_codes(const uint8_t* planes, int64_t block, int bits, uint8_t* codes);

// The inverse: block codes (each < 2^bits; higher bits are ignored) -> planes.
void pack_codes(const uint8_t* codes, int64_t block, int bits, uint8_t* planes);

}  // namespace quantconv::quant
