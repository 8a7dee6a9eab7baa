// quantconv._ext.Model: the C++ engine for Python (runtime/engine.py builds its arguments from a
// GGUF file).
//
//   Model(config: dict, tensors: dict[str, (descriptor: dict, data: uint8 array, shape: tuple[, name: str])],
//         n_ctx: int, n_threads: int)
//   .eval(tokens: int32 array, all_logits=False) -> float32 (T, n_vocab) | (n_vocab,)
//   .reset(), .set_threads(n), .n_past, .n_ctx, .n_threads, .n_vocab
//
// tensors are keyed by role (engine/model.h: "token_embd", "L0.attn_q", ...); name is the file's name
// for the tensor, used in messages (default: the key).
// config keys: n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, head_dim, rope_dim, rope_base,
// rope_style ("norm" | "neox": models.yaml's, per architecture), rope_scale (1.0), rms_eps, and optionally
// kv_type ("f32" | "f16", default f32), n_batch (256), validate (True), exact (False: force the kernels'
// exact float32 path during this model's evals; the process-wide switch is restored afterwards), and
// the family options of formats/model_config.py, each off when absent: embd_scale (1.0), ffn_act
// ("silu" | "gelu_tanh"), attn_scale (0.0: 1/sqrt(head_dim)), attn_softcap (0.0), final_softcap (0.0),
// swa_window (0), swa_layers (list of 0/1 per layer), rope_base_swa (rope_base), rope_attn_factor (1.0).
// The data arrays are views of the memory-mapped file: the Model keeps references to them.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstring>
#include <map>
#include <memory>
#include <string>

#include "engine/model.h"
#include "engine/ops.h"
#include "py_descriptor.h"
#include "quant/descriptor.h"

namespace nb = nanobind;
namespace q = quantconv::quant;
namespace e = quantconv::engine;

namespace {

struct PyModel {
    std::unique_ptr<e::Model> model;
    nb::list keep;  // the weight arrays (views of the mmap) the model reads
};

using ByteArray = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using TokenArray = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

nb::object cfg_get(const nb::dict& cfg, const char* key) {
    if (!cfg.contains(key) || cfg[key].is_none()) return nb::none();
    return cfg[key];
}

int64_t cfg_int(const nb::dict& cfg, const char* key, int64_t fallback, bool required) {
    nb::object v = cfg_get(cfg, key);
    if (v.is_none()) {
        if (required) throw nb::value_error((std::string("config has no '") + key + "'").c_str());
        return fallback;
    }
    int64_t out;
    if (!nb::try_cast<int64_t>(v, out) || PyFloat_Check(v.ptr()))
        throw nb::value_error((std::string("config '") + key + "' must be an integer").c_str());
    return out;
}

double cfg_float(const nb::dict& cfg, const char* key, double fallback) {
    nb::object v = cfg_get(cfg, key);
    if (v.is_none()) return fallback;
    double out;
    if (!nb::try_cast<double>(v, out)) throw nb::value_error((std::string("config '") + key + "' must be a number").c_str());
    return out;
}

std::string cfg_str(const nb::dict& cfg, const char* key, const std::string& fallback) {
    nb::object v = cfg_get(cfg, key);
    return v.is_none() ? fallback : std::string(nb::str(v).c_str());
}

e::Config config_from_dict(const nb::dict& d) {
    e::Config c;
    c.n_embd = cfg_int(d, "n_embd", 0, true);
    c.n_layer = cfg_int(d, "n_layer", 0, true);
    c.n_head = cfg_int(d, "n_head", 0, true);
    c.n_head_kv = cfg_int(d, "n_head_kv", c.n_head, false);
    c.n_ff = cfg_int(d, "n_ff", 0, true);
    c.n_vocab = cfg_int(d, "n_vocab", 0, true);
    c.head_dim = cfg_int(d, "head_dim", 0, false);
    c.rope_dim = cfg_int(d, "rope_dim", 0, false);
    c.rope_base = cfg_float(d, "rope_base", 10000.0);
    c.rope_scale = cfg_float(d, "rope_scale", 1.0);
    c.rms_eps = cfg_float(d, "rms_eps", 1e-6);
    c.rope_attn_factor = cfg_float(d, "rope_attn_factor", 1.0);
    c.rope_base_swa = cfg_float(d, "rope_base_swa", 0.0);
    c.embd_scale = cfg_float(d, "embd_scale", 1.0);
    c.attn_scale = cfg_float(d, "attn_scale", 0.0);
    c.attn_softcap = cfg_float(d, "attn_softcap", 0.0);
    c.final_softcap = cfg_float(d, "final_softcap", 0.0);
    c.swa_window = cfg_int(d, "swa_window", 0, false);
    nb::object swa = cfg_get(d, "swa_layers");
    if (!swa.is_none()) {
        for (nb::handle h : swa) {
            int64_t flag;
            if (!nb::try_cast<int64_t>(h, flag) || (flag != 0 && flag != 1))
                throw nb::value_error("config 'swa_layers' must be a list of 0 or 1 per layer");
            c.swa_layers.push_back(static_cast<uint8_t>(flag));
        }
    }
    const std::string act = cfg_str(d, "ffn_act", "silu");
    if (act == "silu") c.ffn_act = e::FfnAct::Silu;
    else if (act == "gelu_tanh") c.ffn_act = e::FfnAct::GeluTanh;
    else throw nb::value_error(("config 'ffn_act' must be 'silu' or 'gelu_tanh', got '" + act + "'").c_str());
    const std::string style = cfg_str(d, "rope_style", "");
    if (style == "norm") c.rope_style = e::RopeStyle::Norm;
    else if (style == "neox") c.rope_style = e::RopeStyle::Neox;
    else throw nb::value_error(("config 'rope_style' must be 'norm' or 'neox', got '" + style + "'").c_str());
    const std::string kv = cfg_str(d, "kv_type", "f32");
    if (kv == "f32") c.kv_type = e::KvType::F32;
    else if (kv == "f16") c.kv_type = e::KvType::F16;
    else throw nb::value_error(("config 'kv_type' must be 'f32' or 'f16', got '" + kv + "'").c_str());
    c.n_batch = cfg_int(d, "n_batch", 256, false);
    nb::object val = cfg_get(d, "validate");
    c.validate = val.is_none() ? true : nb::cast<bool>(val);
    c.act_dtype = cfg_str(d, "act_dtype", "");
    nb::object ex = cfg_get(d, "exact");
    c.exact = ex.is_none() ? false : nb::cast<bool>(ex);
    return c;
}

void model_init(PyModel* self, const nb::dict& config, const nb::dict& tensors, int64_t n_ctx, int n_threads) {
    nb::list keep;
    std::unique_ptr<e::Model> model;
    e::Config cfg = config_from_dict(config);
    std::map<std::string, e::TensorView> views;
    for (auto [key, item] : tensors) {
        const std::string name = nb::str(key).c_str();
        nb::tuple tup;
        if (!nb::try_cast<nb::tuple>(item, tup) || nb::len(tup) < 3 || nb::len(tup) > 4)
            throw nb::type_error(("tensor '" + name + "': expected a (descriptor, data, shape[, name]) tuple").c_str());
        nb::dict desc;
        if (!nb::try_cast<nb::dict>(tup[0], desc))
            throw nb::type_error(("tensor '" + name + "': the descriptor must be a dict").c_str());
        ByteArray data;
        if (!nb::try_cast<ByteArray>(tup[1], data, false))
            throw nb::type_error(("tensor '" + name + "': the data must be a C-contiguous uint8 numpy array").c_str());
        e::TensorView tv;
        tv.name = nb::len(tup) == 4 ? std::string(nb::str(tup[3]).c_str()) : name;
        const q::Descriptor d = quantconv::py::descriptor_from_dict(desc);
        tv.spec = q::descriptor_spec(d);
        try {
            tv.type = q::params_from_descriptor(d);
        } catch (const std::exception& ex) {
            throw nb::value_error(("tensor '" + tv.name + "' (type '" + tv.spec + "'): " + ex.what()).c_str());
        }
        tv.data = data.data();
        tv.nbytes = data.size();
        for (nb::handle h : tup[2]) {
            int64_t dim;
            if (!nb::try_cast<int64_t>(h, dim) || dim < 0)
                throw nb::value_error(("tensor '" + tv.name + "': the shape must hold non-negative integers").c_str());
            tv.shape.push_back(dim);
        }
        views.emplace(name, std::move(tv));
        keep.append(tup[1]);
    }
    std::string error;
    {
        nb::gil_scoped_release release;
        try {
            model = std::make_unique<e::Model>(cfg, views, n_ctx, n_threads);
        } catch (const std::exception& ex) {
            error = ex.what();
        }
    }
    if (!error.empty()) throw nb::value_error(error.c_str());
    new (self) PyModel{std::move(model), std::move(keep)};
}

nb::object model_eval(PyModel& self, const TokenArray& tokens, bool all_logits) {
    e::Model& m = *self.model;
    const auto T = static_cast<int64_t>(tokens.shape(0));
    const int64_t V = m.config().n_vocab;
    if (T == 0) throw nb::value_error("eval needs at least one token");
    const size_t count = static_cast<size_t>(all_logits ? T : 1) * static_cast<size_t>(V);
    std::unique_ptr<float[]> out(new float[count]);
    std::string error;
    {
        nb::gil_scoped_release release;
        try {
            m.eval(tokens.data(), T, all_logits, out.get());
        } catch (const std::exception& ex) {
            error = ex.what();
        }
    }
    if (!error.empty()) throw nb::value_error(error.c_str());
    float* raw = out.release();
    nb::capsule owner(raw, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    if (all_logits) {
        const size_t shape[2] = {static_cast<size_t>(T), static_cast<size_t>(V)};
        return nb::cast(nb::ndarray<nb::numpy, float, nb::ndim<2>>(raw, 2, shape, owner));
    }
    const size_t shape[1] = {static_cast<size_t>(V)};
    return nb::cast(nb::ndarray<nb::numpy, float, nb::ndim<1>>(raw, 1, shape, owner));
}

}  // namespace

void bind_engine(nb::module_& m) {
    nb::class_<PyModel>(m, "Model",
                        "A llama-family decoder over packed GGUF weights (see runtime/engine.py for the usual way in).")
        .def("__init__", &model_init, nb::arg("config"), nb::arg("tensors"), nb::arg("n_ctx"), nb::arg("n_threads"))
        .def("eval", &model_eval, nb::arg("tokens"), nb::arg("all_logits") = false,
             "Append tokens (int32 1-D array) to the KV cache and return float32 logits: (T, n_vocab) when "
             "all_logits, else (n_vocab,) for the last token. ValueError when n_past + T > n_ctx.")
        .def("reset", [](PyModel& self) { self.model->reset(); }, "Empty the KV cache.")
        .def("set_threads", [](PyModel& self, int n) {
                 nb::gil_scoped_release release;
                 self.model->set_threads(n);
             }, nb::arg("n"))
        .def_prop_ro("n_past", [](const PyModel& self) { return self.model->n_past(); })
        .def_prop_ro("n_ctx", [](const PyModel& self) { return self.model->n_ctx(); })
        .def_prop_ro("n_vocab", [](const PyModel& self) { return self.model->config().n_vocab; })
        .def_prop_ro("n_threads", [](const PyModel& self) { return self.model->n_threads(); });
    m.def("engine_ops_isa", []() { return std::string(e::ops_isa()); },
          "Which implementation of the engine's attention / fp16 routines is in use (\"avx2\" or \"scalar\").");
}
