#include "bitplanes.h"

#include <cstring>

namespace quantconv::quant {

int plane_widths(int bits, int widths[3]) {
    switch (bits) {
        case 8: widths[0] = 8; return 1;
        case 7: widths[0] = 4; widths[1] = 2; widths[2] = 1; return 3;
        case 6: widths[0] = 4; widths[1] = 2; return 2;
        case 5: widths[0] = 4; widths[1] = 1; return 2;
        case 4: widths[0] = 4; return 1;
        case 3: widths[0] = 2; widths[1] = 1; return 2;
        case 2: widths[0] = 2; return 1;
        case 1: widths[0] = 1; return 1;
        default: return 0;
    }
}

bool planes_fit_block(int bits, int64_t block) {
    int w[3];
    const int np = plane_widths(bits, w);
    if (np == 0 || block <= 0) return false;
    for (int i = 0; i < np; ++i)
        if (block % (8 / w[i]) != 0) return false;
    return true;
}

int64_t packed_bytes(int bits, int64_t block) {
    if (!planes_fit_block(bits, block)) return -1;
    int w[3];
    const int np = plane_widths(bits, w);
    int64_t total = 0;
    for (int i = 0; i < np; ++i) total += block * w[i] / 8;
    return total;
}

void unpack_codes(const uint8_t* planes, int64_t block, int bits, uint8_t* codes) {
    int w[3];
    const int np = plane_widths(bits, w);
    int shift = 0;
    for (int p = 0; p < np; ++p) {
        const int width = w[p];
        const int per_byte = 8 / width;
        const int64_t stride = block / per_byte;  // bytes of this plane
        const unsigned mask = (1u << width) - 1u;
        for (int k = 0; k < per_byte; ++k) {
            uint8_t* out = codes + k * stride;
            const int s = k * width;
            if (p == 0) {
                for (int64_t j = 0; j < stride; ++j)
                    out[j] = static_cast<uint8_t>((planes[j] >> s) & mask);
            } else {
                for (int64_t j = 0; j < stride; ++j)
                    out[j] = static_cast<uint8_t>(out[j] | (((planes[j] >> s) & mask) << shift));
            }
        }
        planes += stride;
        shift += width;
    }
}

void pack_codes(const uint8_t* codes, int64_t block, int bits, uint8_t* planes) {
    int w[3];
    const int np = plane_widths(bits, w);
    int shift = 0;
    for (int p = 0; p < np; ++p) {
        const int width = w[p];
        const int per_byte = 8 / width;
        const int64_t stride = block / per_byte;
        const unsigned mask = (1u << width) - 1u;
        std::memset(planes, 0, static_cast<size_t>(stride));
        for (int k = 0; k < per_byte; ++k) {
            const uint8_t* in = codes + k * stride;
            for (int64_t j = 0; j < stride; ++j)
                planes[j] = static_cast<uint8_t>(planes[j] | (((in[j] >> shift) & mask) << (k * width)));
        }
        planes += stride;
        shift += width;
    }
}

}  // namespace quantconv::quant
