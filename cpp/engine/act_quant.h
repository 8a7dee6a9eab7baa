// Activation fake-quantization (a file's `quantconv.act_dtype`): the inputs of every decoder linear
// layer are rounded the way the exporter's calibration assumed (convert/act_quant.py states the rules;
// tests/test_act_quant_runtime.py checks that both give the same floats bit for bit).
//   int8:   per token, scale = max|x| / 127, q = round-half-even(x / scale) clamped to +-127
//   mxint8, mxfp8 (E4M3), mxfp6 (E2M3), mxfp4 (E2M1): OCP MX blocks of 32 values, E8M0 scale
//           2^(floor(log2 max|x|) - emax), elements rounded to nearest even, saturating.
#pragma once

#include <cstdint>
#include <string>

namespace quantconv::engine {

struct ActQuant {
    enum class Kind : uint8_t { None, Int8PerToken, MxInt8, MxFloat } kind = Kind::None;
    int mbits = 0, bias = 0, emax = 0;  // MxFloat element
    float max_value = 0.0f;             // MxFloat element
    std::string name;

    bool active() const { return kind != Kind::None; }
};

// "" / "none" -> inactive; unknown names throw std::invalid_argument naming the known ones.
ActQuant parse_act_quant(const std::string& name);

// x: T rows of `dim` floats, rounded in place. MX kinds need dim % 32 == 0 (checked at load).
void act_fake_quantize(const ActQuant& aq, float* x, int64_t T, int64_t dim);

}  // namespace quantconv::engine
