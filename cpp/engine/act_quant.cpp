#include "engine/act_quant.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace quantconv::engine {

ActQuant parse_act_quant(const std::string& name) {
    ActQuant a;
    a.name = name;
    auto mx = [&](int ebits, int mbits, int emax, float max_value) {
        a.kind = ActQuant::Kind::MxFloat;
        a.mbits = mbits;
        a.bias = (1 << (ebits - 1)) - 1;
        a.emax = emax;
        a.max_value = max_value;
    };
    if (name.empty() || name == "none") a.kind = ActQuant::Kind::None;
    else if (name == "int8") a.kind = ActQuant::Kind::Int8PerToken;
    else if (name == "mxint8") a.kind = ActQuant::Kind::MxInt8;
    else if (name == "mxfp8") mx(4, 3, 8, 448.0f);
    else if (name == "mxfp6") mx(2, 3, 2, 7.5f);
    else if (name == "mxfp4") mx(2, 1, 2, 6.0f);
    else
        throw std::invalid_argument("unknown activation type '" + name +
                                    "' in quantconv.act_dtype (known: int8, mxint8, mxfp8, mxfp6, mxfp4); "
                                    "re-export the file or upgrade quantconv");
    return a;
}

namespace {

// Round |y| to the element grid: the binade's quantum is 2^(floor(log2 |y|) - mbits), subnormals
// share the lowest binade; ties to even (nearbyint under the default rounding mode).
inline float round_element(float y, const ActQuant& a) {
    const float mag = std::fabs(y);
    int e = 0;
    std::frexp(mag, &e);
    e = std::max(e - 1, 1 - a.bias);
    const float quantum = std::ldexp(1.0f, e - a.mbits);
    const float r = std::min(std::nearbyint(mag / quantum) * quantum, a.max_value);
    return r > 0.0f ? std::copysign(r, y) : 0.0f;
}

void int8_per_token(float* x, int64_t dim) {
    float amax = 0.0f;
    for (int64_t i = 0; i < dim; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float scale = amax / 127.0f;
    const float div = scale == 0.0f ? 1.0f : scale;
    for (int64_t i = 0; i < dim; ++i) x[i] = std::clamp(std::nearbyint(x[i] / div), -127.0f, 127.0f) * scale;
}

void mx_block(float* x, const ActQuant& a) {
    constexpr int kBlock = 32;
    float amax = 0.0f;
    for (int i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
    if (amax == 0.0f) {
        for (int i = 0; i < kBlock; ++i) x[i] = 0.0f;
        return;
    }
    int e = 0;
    std::frexp(amax, &e);
    const int emax = a.kind == ActQuant::Kind::MxInt8 ? 0 : a.emax;
    const float scale = std::ldexp(1.0f, std::clamp(e - 1 - emax, -127, 127));
    for (int i = 0; i < kBlock; ++i) {
        const float y = x[i] / scale;
        const float q = a.kind == ActQuant::Kind::MxInt8 ? std::clamp(std::nearbyint(y * 64.0f), -127.0f, 127.0f) / 64.0f
                                                        : round_element(y, a);
        x[i] = q * scale;
    }
}

}  // namespace

void act_fake_quantize(const ActQuant& aq, float* x, int64_t T, int64_t dim) {
    if (!aq.active()) return;
    for (int64_t t = 0; t < T; ++t) {
        float* row = x + t * dim;
        if (aq.kind == ActQuant::Kind::Int8PerToken) int8_per_token(row, dim);
        else
            for (int64_t b = 0; b + 32 <= dim; b += 32) mx_block(row + b, aq);
    }
}

}  // namespace quantconv::engine
