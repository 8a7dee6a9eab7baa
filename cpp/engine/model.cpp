#include "engine/model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "engine/act_quant.h"
#include "engine/ops.h"
#include "engine/thread_pool.h"
#include "kernels/kernels.h"
#include "quant/fpconv.h"
#include "quant/traits.h"

namespace quantconv::engine {
namespace {

using quant::Layout;
using quant::TypeParams;

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + (s.size() == 1 ? ",)" : ")");
}

// Whether two prepared types describe the same layout (then prepared activations are interchangeable).
bool same_type(const TypeParams& a, const TypeParams& b) {
    if (a.layout != b.layout || a.block_size != b.block_size || a.elem_bits != b.elem_bits || a.asym != b.asym ||
        a.bfp_mant != b.bfp_mant || a.blog_bits != b.blog_bits || a.elem.kind != b.elem.kind ||
        a.elem.ebits != b.elem.ebits || a.elem.mbits != b.elem.mbits || a.elem.bias != b.elem.bias ||
        a.elem.neg_zero != b.elem.neg_zero)
        return false;
    return std::memcmp(a.codebook, b.codebook, sizeof a.codebook) == 0 && std::memcmp(a.lut, b.lut, sizeof a.lut) == 0;
}

bool is_float_layout(Layout l) { return l == Layout::F32 || l == Layout::F16 || l == Layout::BF16; }

// 64-byte aligned owned storage.
template <class T>
class Buffer {
   public:
    Buffer() = default;
    explicit Buffer(size_t n) { resize(n); }
    ~Buffer() { std::free(ptr_); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    void resize(size_t n) {
        std::free(ptr_);
        ptr_ = nullptr;
        n_ = n;
        const size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
        if (bytes) {
            ptr_ = static_cast<T*>(std::aligned_alloc(64, bytes));
            if (!ptr_) throw std::bad_alloc();
            std::memset(static_cast<void*>(ptr_), 0, bytes);
        }
    }
    T* data() { return ptr_; }
    const T* data() const { return ptr_; }
    size_t size() const { return n_; }

   private:
    T* ptr_ = nullptr;
    size_t n_ = 0;
};

}  // namespace

// A linear layer (or the embedding table): rows of packed weights.
struct Weight {
    std::string name;
    TypeParams p;
    const uint8_t* data = nullptr;
    size_t row_bytes = 0;
    int64_t rows = 0, cols = 0;
    bool fast = true;  // false: this weight always takes the kernels' exact path (QUANTCONV_EXACT_TENSORS)
};

struct LayerW {
    std::vector<float> attn_norm, ffn_norm;
    Weight q, k, v, o, gate, up, down;
    std::vector<float> bq, bk, bv, bo;  // empty: no bias
    std::vector<float> q_norm, k_norm;  // empty: none; else head_dim weights applied to every head
    std::vector<float> attn_post_norm, ffn_post_norm;  // empty: none
    bool swa = false;                   // attends to the last swa_window positions only
    bool k_shares_q = false, v_shares_q = false, v_shares_k = false, up_shares_gate = false;
};

// Prepared activations of up to n_batch vectors for one weight type.
struct ActsSlot {
    Buffer<uint8_t> buf;
    size_t stride = 0;  // acts_bytes of the type in use (set at prepare time)
};

struct Model::Impl {
    std::vector<LayerW> layers;
    Weight tok_embd, output;
    std::vector<float> output_norm;
    std::vector<float> rope_cos, rope_sin;  // [n_ctx][rope_dim / 2]
    std::vector<float> rope_cos_swa, rope_sin_swa;  // sliding-window layers' own tables (empty: the above)
    // KV cache: per layer [n_head_kv][n_ctx][head_dim], fp32 or fp16
    Buffer<float> k32, v32;
    Buffer<uint16_t> k16, v16;
    size_t kv_layer_stride = 0;
    // scratch for n_batch tokens
    Buffer<float> x, xn, q, k, v, att, proj, gate, up, scores;
    size_t scores_per_thread = 0;  // attention scratch floats per thread (scores, attend_block_floats)
    ActsSlot a_q, a_k, a_v, a_o, a_gate, a_up, a_down, a_out;
    ActQuant act;  // inactive unless the file asks for quantized activations
    std::unique_ptr<ThreadPool> pool;
};

namespace {

// ---- construction helpers -----------------------------------------------------------------------

using Tensors = std::map<std::string, TensorView>;

const TensorView& need(const Tensors& t, const std::string& role) {
    auto it = t.find(role);
    if (it == t.end()) fail("the model has no tensor for role '" + role + "'");
    return it->second;
}

// The key of layer i's tensor of a role: "L3.attn_q".
std::string layer_key(int64_t i, const char* role) { return "L" + std::to_string(i) + "." + role; }

void check_bytes(const std::string& name, const TensorView& tv, int64_t rows, int64_t cols) {
    int64_t rb = 0;
    try {
        rb = quant::row_bytes(tv.type, cols);
    } catch (const std::exception& e) {
        fail("tensor '" + name + "' (" + tv.spec + ", shape " + shape_str(tv.shape) + "): " + e.what());
    }
    const auto need_bytes = static_cast<size_t>(rows) * static_cast<size_t>(rb);
    if (tv.nbytes != need_bytes)
        fail("tensor '" + name + "' (" + tv.spec + ", shape " + shape_str(tv.shape) + ") holds " +
             std::to_string(tv.nbytes) + " bytes, expected " + std::to_string(need_bytes));
    if (!tv.data && need_bytes) fail("tensor '" + name + "' has no data");
}

Weight matrix(const Tensors& t, const std::string& role, int64_t rows, int64_t cols) {
    const TensorView& tv = need(t, role);
    const std::string& name = tv.name;
    if (tv.shape.size() != 2 || tv.shape[0] != rows || tv.shape[1] != cols)
        fail("tensor '" + name + "' has shape " + shape_str(tv.shape) + ", expected (" + std::to_string(rows) + ", " +
             std::to_string(cols) + ")");
    check_bytes(name, tv, rows, cols);
    Weight w;
    w.name = name;
    w.p = tv.type;
    w.data = tv.data;
    w.rows = rows;
    w.cols = cols;
    w.row_bytes = static_cast<size_t>(quant::row_bytes(tv.type, cols));
    // QUANTCONV_EXACT_TENSORS=a,b,...: weights whose names contain one of these substrings take the exact
    // path (float activations) while the rest stay fast: for measuring where the fast path's error comes from
    if (const char* ex = std::getenv("QUANTCONV_EXACT_TENSORS")) {
        std::string list = std::string(",") + ex + ",";
        for (size_t a = 1, b; (b = list.find(',', a)) != std::string::npos; a = b + 1)
            if (b > a && name.find(list.substr(a, b - a)) != std::string::npos) w.fast = false;
    }
    return w;
}

// A 1-D tensor decoded to floats (norm weights, biases, rope factors).
std::vector<float> vector_of(const Tensors& t, const std::string& role, int64_t n) {
    const TensorView& tv = need(t, role);
    const std::string& name = tv.name;
    if (!(tv.shape.size() == 1 && tv.shape[0] == n) && !(tv.shape.size() == 2 && tv.shape[0] == 1 && tv.shape[1] == n))
        fail("tensor '" + name + "' has shape " + shape_str(tv.shape) + ", expected (" + std::to_string(n) + ",)");
    check_bytes(name, tv, 1, n);
    std::vector<float> out(static_cast<size_t>(n));
    const quant::Status st = quant::dequantize_row(tv.type, tv.data, out.data(), n);
    if (!st.ok())
        fail("tensor '" + name + "' holds invalid data: " + quant::status_message(st.code) +
             (st.block >= 0 ? " (block " + std::to_string(st.block) + ")" : ""));
    for (float f : out)
        if (!std::isfinite(f)) fail("tensor '" + name + "' holds a non-finite value");
    return out;
}

std::vector<float> optional_vector(const Tensors& t, const std::string& role, int64_t n) {
    if (t.find(role) == t.end()) return {};
    return vector_of(t, role, n);
}

// ---- numerics -------------------------------------------------------------------------------------

void rms_norm(const float* x, const float* w, float* out, int64_t n, double eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    const auto scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
    for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * scale);
}

}  // namespace

// ---- Model ----------------------------------------------------------------------------------------

Model::Model(const Config& config, const Tensors& tensors, int64_t n_ctx, int n_threads)
    : cfg_(config), n_ctx_(n_ctx), impl_(std::make_unique<Impl>()) {
    Config& c = cfg_;
    auto positive = [](const char* key, int64_t v) {
        if (v <= 0) fail(std::string("config '") + key + "' must be positive, got " + std::to_string(v));
    };
    positive("n_embd", c.n_embd);
    positive("n_layer", c.n_layer);
    try {
        impl_->act = parse_act_quant(c.act_dtype);
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
    if (impl_->act.active() && impl_->act.kind != ActQuant::Kind::Int8PerToken &&
        (c.n_embd % 32 || c.n_ff % 32 || (c.head_dim ? c.head_dim : c.n_embd / std::max<int64_t>(c.n_head, 1)) * c.n_head % 32))
        fail("activation type '" + c.act_dtype + "' needs layer widths that are multiples of 32");
    positive("n_head", c.n_head);
    positive("n_head_kv", c.n_head_kv);
    positive("n_ff", c.n_ff);
    positive("n_vocab", c.n_vocab);
    if (n_ctx <= 0) fail("n_ctx must be positive, got " + std::to_string(n_ctx));
    if (c.head_dim == 0) {
        if (c.n_embd % c.n_head)
            fail("n_embd " + std::to_string(c.n_embd) + " is not divisible by n_head " + std::to_string(c.n_head));
        c.head_dim = c.n_embd / c.n_head;
    }
    positive("head_dim", c.head_dim);
    if (c.n_head % c.n_head_kv)
        fail("n_head " + std::to_string(c.n_head) + " is not a multiple of n_head_kv " + std::to_string(c.n_head_kv));
    if (c.rope_dim == 0) c.rope_dim = c.head_dim;
    if (c.rope_dim < 0 || c.rope_dim > c.head_dim || c.rope_dim % 2)
        fail("rope_dim " + std::to_string(c.rope_dim) + " must be even and at most head_dim " + std::to_string(c.head_dim));
    if (!(c.rope_base > 0.0) || !std::isfinite(c.rope_base)) fail("rope_base must be a positive number");
    if (!(c.rope_scale > 0.0) || !std::isfinite(c.rope_scale)) fail("rope_scale must be a positive number");
    if (!(c.rms_eps >= 0.0) || !std::isfinite(c.rms_eps)) fail("rms_eps must be a non-negative number");
    if (c.rope_base_swa == 0.0) c.rope_base_swa = c.rope_base;
    auto finite_at_least = [](const char* key, double v, double lo, bool strict) {
        if (!std::isfinite(v) || (strict ? !(v > lo) : !(v >= lo)))
            fail(std::string("config '") + key + "' must be a finite number " + (strict ? "> " : ">= ") +
                 std::to_string(lo) + ", got " + std::to_string(v));
    };
    finite_at_least("rope_base_swa", c.rope_base_swa, 0.0, true);
    finite_at_least("rope_attn_factor", c.rope_attn_factor, 0.0, true);
    finite_at_least("embd_scale", c.embd_scale, 0.0, true);
    finite_at_least("attn_scale", c.attn_scale, 0.0, false);
    finite_at_least("attn_softcap", c.attn_softcap, 0.0, false);
    finite_at_least("final_softcap", c.final_softcap, 0.0, false);
    if (c.swa_window < 0) fail("config 'swa_window' must be >= 0, got " + std::to_string(c.swa_window));
    if (!c.swa_layers.empty() && static_cast<int64_t>(c.swa_layers.size()) != c.n_layer)
        fail("config 'swa_layers' has " + std::to_string(c.swa_layers.size()) + " entries for " +
             std::to_string(c.n_layer) + " layers");
    if (c.n_batch <= 0) c.n_batch = 256;
    c.n_batch = std::min(c.n_batch, n_ctx);

    Impl& m = *impl_;
    const int64_t E = c.n_embd, hd = c.head_dim, nq = c.n_head * hd, nkv = c.n_head_kv * hd, F = c.n_ff;

    // ---- weights
    m.tok_embd = matrix(tensors, "token_embd", c.n_vocab, E);
    m.output_norm = vector_of(tensors, "output_norm", E);
    m.output = tensors.count("output") ? matrix(tensors, "output", c.n_vocab, E) : m.tok_embd;
    m.layers.resize(static_cast<size_t>(c.n_layer));
    for (int64_t i = 0; i < c.n_layer; ++i) {
        LayerW& L = m.layers[static_cast<size_t>(i)];
        auto key = [i](const char* role) { return layer_key(i, role); };
        L.attn_norm = vector_of(tensors, key("attn_norm"), E);
        L.ffn_norm = vector_of(tensors, key("ffn_norm"), E);
        L.q = matrix(tensors, key("attn_q"), nq, E);
        L.k = matrix(tensors, key("attn_k"), nkv, E);
        L.v = matrix(tensors, key("attn_v"), nkv, E);
        L.o = matrix(tensors, key("attn_output"), E, nq);
        L.gate = matrix(tensors, key("ffn_gate"), F, E);
        L.up = matrix(tensors, key("ffn_up"), F, E);
        L.down = matrix(tensors, key("ffn_down"), E, F);
        L.bq = optional_vector(tensors, key("attn_q_bias"), nq);
        L.bk = optional_vector(tensors, key("attn_k_bias"), nkv);
        L.bv = optional_vector(tensors, key("attn_v_bias"), nkv);
        L.bo = optional_vector(tensors, key("attn_output_bias"), E);
        L.q_norm = optional_vector(tensors, key("attn_q_norm"), hd);
        L.k_norm = optional_vector(tensors, key("attn_k_norm"), hd);
        L.attn_post_norm = optional_vector(tensors, key("attn_post_norm"), E);
        L.ffn_post_norm = optional_vector(tensors, key("ffn_post_norm"), E);
        L.swa = c.swa_window > 0 && !c.swa_layers.empty() && c.swa_layers[static_cast<size_t>(i)] != 0;
        L.k_shares_q = same_type(L.k.p, L.q.p);
        L.v_shares_q = same_type(L.v.p, L.q.p);
        L.v_shares_k = same_type(L.v.p, L.k.p);
        L.up_shares_gate = same_type(L.up.p, L.gate.p);
    }

    // ---- RoPE tables: theta(pos, i) = pos * inv_freq[i], as transformers computes it in float32
    const int64_t half = c.rope_dim / 2;
    std::vector<float> factors;
    if (tensors.count("rope_freqs")) {
        factors = vector_of(tensors, "rope_freqs", half);
        for (float f : factors)
            if (!(f > 0.0f)) fail("tensor '" + tensors.at("rope_freqs").name + "' holds a factor that is not positive");
    }
    // sliding-window layers use their own base and no linear scaling (as llama.cpp's freq_base_swa and
    // freq_scale_swa = 1); per-frequency factors and the attention factor apply to every layer
    auto rope_table = [&](double base, double scale, std::vector<float>& cos_t, std::vector<float>& sin_t) {
        std::vector<float> inv_freq(static_cast<size_t>(half));
        for (int64_t i = 0; i < half; ++i) {
            const float expo = static_cast<float>(2 * i) / static_cast<float>(c.rope_dim);
            const auto pw = static_cast<float>(std::pow(base, static_cast<double>(expo)));
            float f = 1.0f / pw;
            if (!factors.empty()) f /= factors[static_cast<size_t>(i)];
            if (scale != 1.0) f /= static_cast<float>(scale);
            inv_freq[static_cast<size_t>(i)] = f;
        }
        const auto af = static_cast<float>(c.rope_attn_factor);
        cos_t.resize(static_cast<size_t>(n_ctx * half));
        sin_t.resize(static_cast<size_t>(n_ctx * half));
        for (int64_t pos = 0; pos < n_ctx; ++pos)
            for (int64_t i = 0; i < half; ++i) {
                const float theta = static_cast<float>(pos) * inv_freq[static_cast<size_t>(i)];
                float cv = static_cast<float>(std::cos(static_cast<double>(theta)));
                float sv = static_cast<float>(std::sin(static_cast<double>(theta)));
                if (c.rope_attn_factor != 1.0) {
                    cv *= af;
                    sv *= af;
                }
                cos_t[static_cast<size_t>(pos * half + i)] = cv;
                sin_t[static_cast<size_t>(pos * half + i)] = sv;
            }
    };
    rope_table(c.rope_base, c.rope_scale, m.rope_cos, m.rope_sin);
    const bool any_swa = std::any_of(m.layers.begin(), m.layers.end(), [](const LayerW& L) { return L.swa; });
    if (any_swa && (c.rope_base_swa != c.rope_base || c.rope_scale != 1.0))
        rope_table(c.rope_base_swa, 1.0, m.rope_cos_swa, m.rope_sin_swa);

    // ---- KV cache
    m.kv_layer_stride = static_cast<size_t>(c.n_head_kv) * static_cast<size_t>(n_ctx) * static_cast<size_t>(hd);
    const size_t kv_total = m.kv_layer_stride * static_cast<size_t>(c.n_layer);
    if (c.kv_type == KvType::F32) {
        m.k32.resize(kv_total);
        m.v32.resize(kv_total);
    } else {
        m.k16.resize(kv_total);
        m.v16.resize(kv_total);
    }

    // ---- scratch
    const auto B = static_cast<size_t>(c.n_batch);
    m.x.resize(B * static_cast<size_t>(E));
    m.xn.resize(B * static_cast<size_t>(E));
    m.q.resize(B * static_cast<size_t>(nq));
    m.k.resize(B * static_cast<size_t>(nkv));
    m.v.resize(B * static_cast<size_t>(nkv));
    m.att.resize(B * static_cast<size_t>(nq));
    m.proj.resize(B * static_cast<size_t>(E));
    m.gate.resize(B * static_cast<size_t>(F));
    m.up.resize(B * static_cast<size_t>(F));
    auto size_slot = [&](ActsSlot& s, auto member) {
        size_t mx = 0;
        for (const LayerW& L : m.layers) {
            const Weight& w = L.*member;
            mx = std::max(mx, kernels::acts_bytes(w.p, w.cols));
        }
        s.buf.resize(mx * B);
    };
    size_slot(m.a_q, &LayerW::q);
    size_slot(m.a_k, &LayerW::k);
    size_slot(m.a_v, &LayerW::v);
    size_slot(m.a_o, &LayerW::o);
    size_slot(m.a_gate, &LayerW::gate);
    size_slot(m.a_up, &LayerW::up);
    size_slot(m.a_down, &LayerW::down);
    m.a_out.buf.resize(kernels::acts_bytes(m.output.p, E) * B);

    set_threads(n_threads);
    if (c.validate) validate();
}

Model::~Model() = default;

int Model::n_threads() const { return impl_->pool ? impl_->pool->size() : 1; }

void Model::set_threads(int n) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (n < 1) n = 1;
    if (n > 1024) n = 1024;
    Impl& m = *impl_;
    if (m.pool && m.pool->size() == n) return;
    m.pool.reset();
    m.pool = std::make_unique<ThreadPool>(n);
    m.scores_per_thread = static_cast<size_t>(attend_block_floats(n_ctx_, cfg_.head_dim));
    m.scores.resize(static_cast<size_t>(n) * m.scores_per_thread);
}

void Model::reset() {
    std::lock_guard<std::mutex> lock(mutex_);
    n_past_ = 0;
}

// Decodes every row of every block-typed weight once, so that forbidden values (E8M0 255, inf/NaN
// fp16 scales, NaN element codes) are reported here instead of turning into NaN logits later.
void Model::validate() {
    Impl& m = *impl_;
    std::vector<const Weight*> ws = {&m.tok_embd};
    if (m.output.data != m.tok_embd.data) ws.push_back(&m.output);
    for (const LayerW& L : m.layers)
        for (const Weight* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) ws.push_back(w);
    int64_t max_cols = 0;
    for (const Weight* w : ws) max_cols = std::max(max_cols, w->cols);
    const int n = m.pool->size();
    std::vector<float> scratch(static_cast<size_t>(n) * static_cast<size_t>(max_cols));
    std::mutex err_mutex;
    std::string error;
    for (const Weight* w : ws) {
        if (is_float_layout(w->p.layout)) continue;
        m.pool->run(std::min<int64_t>(w->rows, 8 * n), [&](int64_t ch, int64_t nch, int thread) {
            int64_t r0, r1;
            split_range(w->rows, ch, nch, 1, r0, r1);
            float* buf = scratch.data() + static_cast<size_t>(thread) * static_cast<size_t>(max_cols);
            for (int64_t r = r0; r < r1; ++r) {
                const quant::Status st = quant::dequantize_row(w->p, w->data + static_cast<size_t>(r) * w->row_bytes, buf, w->cols);
                if (!st.ok()) {
                    std::lock_guard<std::mutex> lock(err_mutex);
                    if (error.empty())
                        error = "tensor '" + w->name + "' holds invalid data in row " + std::to_string(r) +
                                (st.block >= 0 ? ", block " + std::to_string(st.block) : "") + ": " +
                                quant::status_message(st.code) + "; re-export the file";
                    return;
                }
            }
        });
        if (!error.empty()) fail(error);
    }
}

void Model::eval(const int32_t* tokens, int64_t T, bool all_logits, float* out) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (T <= 0) throw std::invalid_argument("eval needs at least one token");
    if (n_past_ + T > n_ctx_)
        throw std::out_of_range("context overflow: " + std::to_string(n_past_) + " tokens in the cache + " +
                                std::to_string(T) + " new ones > n_ctx " + std::to_string(n_ctx_) +
                                "; reset() or open the model with a larger n_ctx");
    for (int64_t t = 0; t < T; ++t)
        if (tokens[t] < 0 || tokens[t] >= cfg_.n_vocab)
            throw std::invalid_argument("token id " + std::to_string(tokens[t]) + " at position " + std::to_string(t) +
                                        " is outside the vocabulary [0, " + std::to_string(cfg_.n_vocab) + ")");
    // exact: the kernels' switch is process-wide; force it for this call and put it back after
    struct ExactGuard {
        bool on, prev;
        explicit ExactGuard(bool want) : on(want), prev(want && kernels::exact()) {
            if (on) kernels::set_exact(true);
        }
        ~ExactGuard() {
            if (on) kernels::set_exact(prev);
        }
    } exact_guard(cfg_.exact);
    for (int64_t t0 = 0; t0 < T; t0 += cfg_.n_batch) {
        const int64_t nt = std::min(cfg_.n_batch, T - t0);
        const bool last = t0 + nt == T;
        float* logits = all_logits ? out + t0 * cfg_.n_vocab : (last ? out : nullptr);
        forward(tokens + t0, nt, logits, all_logits);
    }
}

// ---- the forward pass of one batch of T <= n_batch tokens at positions n_past_ ... ----------------

namespace {

struct LinearJob {
    const Weight* w;
    const uint8_t* acts;
    float* y;     // T x ldy
    int64_t ldy;  // = w->rows for the scratch buffers
};

constexpr int64_t kRowAlign = 16;  // chunk boundaries fall on multiples of this many rows

// How many chunks to cut `rows` output rows into for n threads: several per thread (dynamic
// balancing, robust to a thread the OS doesn't run), none smaller than kRowAlign rows.
int64_t row_chunks(int64_t rows, int n) {
    const int64_t most = (rows + kRowAlign - 1) / kRowAlign;
    return std::max<int64_t>(1, std::min<int64_t>(most, n == 1 ? 1 : 8 * n));
}

int64_t total_rows(const LinearJob* jobs, int n_jobs) {
    int64_t total = 0;
    for (int j = 0; j < n_jobs; ++j) total += jobs[j].w->rows;
    return total;
}

// Chunk i of n of the rows of up to 4 linear layers sharing one parallel region (rows of all the jobs
// concatenated and split evenly).
void linear_part(const LinearJob* jobs, int n_jobs, int64_t T, int64_t i, int64_t n) {
    const int64_t total = total_rows(jobs, n_jobs);
    int64_t b, e;
    split_range(total, i, n, kRowAlign, b, e);
    int64_t base = 0;
    for (int j = 0; j < n_jobs; ++j) {
        const Weight& w = *jobs[j].w;
        const int64_t r0 = std::max<int64_t>(b - base, 0), r1 = std::min<int64_t>(e - base, w.rows);
        if (r0 < r1) {
            if (T == 1)
                kernels::matvec(w.p, w.data, w.row_bytes, w.cols, jobs[j].acts, jobs[j].y + r0, r0, r1);
            else
                kernels::matmul(w.p, w.data, w.row_bytes, w.cols, jobs[j].acts, T, jobs[j].y, jobs[j].ldy, r0, r1);
        }
        base += w.rows;
    }
}

}  // namespace

void Model::forward(const int32_t* tokens, int64_t T, float* logits, bool all_logits) {
    Impl& m = *impl_;
    const Config& c = cfg_;
    ThreadPool& pool = *m.pool;
    const int64_t E = c.n_embd, hd = c.head_dim, nq = c.n_head * hd, nkv = c.n_head_kv * hd, F = c.n_ff;
    const int64_t half = c.rope_dim / 2, group = c.n_head / c.n_head_kv;
    const bool gelu = c.ffn_act == FfnAct::GeluTanh;
    const int64_t n_past = n_past_.load(std::memory_order_relaxed);
    const bool kv16 = c.kv_type == KvType::F16;
    const float scale = c.attn_scale > 0.0 ? static_cast<float>(c.attn_scale)
                                           : static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    const auto cap = static_cast<float>(c.attn_softcap);

    // Runs fn(t) for every token t, on the pool when the batch is large enough to be worth it.
    auto for_tokens = [&](auto&& fn) {
        if (T < 4 || pool.size() == 1) {
            for (int64_t t = 0; t < T; ++t) fn(t);
        } else {
            pool.run(T, [&](int64_t t, int64_t, int) { fn(t); });
        }
    };
    auto run_linear = [&](const LinearJob* jobs, int n_jobs, int64_t n_tok) {
        pool.run(row_chunks(total_rows(jobs, n_jobs), pool.size()),
                 [&](int64_t ch, int64_t nch, int) { linear_part(jobs, n_jobs, n_tok, ch, nch); });
    };
    // Rounds T vectors X (stride = dim) as the file's activation type says (no-op without one).
    auto act_quant = [&](float* X, int64_t dim) {
        if (m.act.active()) for_tokens([&](int64_t t) { act_fake_quantize(m.act, X + t * dim, 1, dim); });
    };
    // Prepares activations of T vectors X (stride ldx) for w into slot.
    auto prepare = [&](const Weight& w, const float* X, int64_t ldx, ActsSlot& slot) {
        slot.stride = kernels::acts_bytes(w.p, w.cols);
        uint8_t* base = slot.buf.data();
        const size_t stride = slot.stride;
        for_tokens([&](int64_t t) { kernels::prepare_acts(w.p, X + t * ldx, w.cols, base + static_cast<size_t>(t) * stride, w.fast); });
    };

    // ---- embeddings
    for_tokens([&](int64_t t) {
        const Weight& w = m.tok_embd;
        const quant::Status st = quant::dequantize_row(w.p, w.data + static_cast<size_t>(tokens[t]) * w.row_bytes,
                                                       m.x.data() + t * E, E);
        (void)st;  // validated at load time
        if (c.embd_scale != 1.0) {
            const auto s = static_cast<float>(c.embd_scale);
            float* x = m.x.data() + t * E;
            for (int64_t i = 0; i < E; ++i) x[i] *= s;
        }
    });

    for (int64_t l = 0; l < c.n_layer; ++l) {
        const LayerW& L = m.layers[static_cast<size_t>(l)];
        const size_t kv_off = static_cast<size_t>(l) * m.kv_layer_stride;
        const bool local_rope = L.swa && !m.rope_cos_swa.empty();
        const float* rope_cos = local_rope ? m.rope_cos_swa.data() : m.rope_cos.data();
        const float* rope_sin = local_rope ? m.rope_sin_swa.data() : m.rope_sin.data();
        const int64_t window = L.swa ? c.swa_window : 0;

        // ---- attention block
        for_tokens([&](int64_t t) { rms_norm(m.x.data() + t * E, L.attn_norm.data(), m.xn.data() + t * E, E, c.rms_eps); });
        act_quant(m.xn.data(), E);
        prepare(L.q, m.xn.data(), E, m.a_q);
        const uint8_t* ak = m.a_q.buf.data();
        if (!L.k_shares_q) {
            prepare(L.k, m.xn.data(), E, m.a_k);
            ak = m.a_k.buf.data();
        }
        const uint8_t* av = L.v_shares_q ? m.a_q.buf.data() : L.v_shares_k ? ak : nullptr;
        if (!av) {
            prepare(L.v, m.xn.data(), E, m.a_v);
            av = m.a_v.buf.data();
        }
        {
            const LinearJob jobs[3] = {{&L.q, m.a_q.buf.data(), m.q.data(), nq},
                                       {&L.k, ak, m.k.data(), nkv},
                                       {&L.v, av, m.v.data(), nkv}};
            run_linear(jobs, 3, T);
        }
        // biases, RoPE, cache store
        for_tokens([&](int64_t t) {
            float* q = m.q.data() + t * nq;
            float* k = m.k.data() + t * nkv;
            float* v = m.v.data() + t * nkv;
            if (!L.bq.empty()) add_inplace(q, L.bq.data(), nq);
            if (!L.bk.empty()) add_inplace(k, L.bk.data(), nkv);
            if (!L.bv.empty()) add_inplace(v, L.bv.data(), nkv);
            if (!L.q_norm.empty())
                for (int64_t h = 0; h < c.n_head; ++h) rms_norm(q + h * hd, L.q_norm.data(), q + h * hd, hd, c.rms_eps);
            if (!L.k_norm.empty())
                for (int64_t h = 0; h < c.n_head_kv; ++h) rms_norm(k + h * hd, L.k_norm.data(), k + h * hd, hd, c.rms_eps);
            const int64_t pos = n_past + t;
            const float* cs = rope_cos + pos * half;
            const float* sn = rope_sin + pos * half;
            const bool neox = c.rope_style == RopeStyle::Neox;
            for (int64_t h = 0; h < c.n_head; ++h) rope(q + h * hd, cs, sn, half, neox);
            for (int64_t h = 0; h < c.n_head_kv; ++h) {
                rope(k + h * hd, cs, sn, half, neox);
                const size_t off = kv_off + (static_cast<size_t>(h) * static_cast<size_t>(n_ctx_) + static_cast<size_t>(pos)) *
                                                static_cast<size_t>(hd);
                if (kv16) {
                    to_fp16(k + h * hd, m.k16.data() + off, hd);
                    to_fp16(v + h * hd, m.v16.data() + off, hd);
                } else {
                    std::memcpy(m.k32.data() + off, k + h * hd, static_cast<size_t>(hd) * sizeof(float));
                    std::memcpy(m.v32.data() + off, v + h * hd, static_cast<size_t>(hd) * sizeof(float));
                }
            }
        });
        // attention: one task per (block of up to kAttendBlock consecutive tokens, head), handed out
        // dynamically (later tokens see more keys); a block reads each key and value row once for all
        // its tokens. The heads of one KV group are neighbouring tasks (their rows stay in L2).
        const int64_t n_blocks = (T + kAttendBlock - 1) / kAttendBlock, n_tasks = n_blocks * c.n_head;
        pool.run(std::min(n_tasks, ThreadPool::kMaxChunks), [&](int64_t ch, int64_t nch, int thread) {
            float* sc = m.scores.data() + static_cast<size_t>(thread) * m.scores_per_thread;
            int64_t k0, k1;
            split_range(n_tasks, ch, nch, 1, k0, k1);
            for (int64_t task = k0; task < k1; ++task) {
                const int64_t b = task / c.n_head, h = task % c.n_head, g = h / group;
                const int64_t t0 = b * kAttendBlock, nb = std::min<int64_t>(kAttendBlock, T - t0);
                const float* q = m.q.data() + t0 * nq + h * hd;
                float* o = m.att.data() + t0 * nq + h * hd;
                const size_t off = kv_off + static_cast<size_t>(g) * static_cast<size_t>(n_ctx_) * static_cast<size_t>(hd);
                const int64_t n_keys = n_past + t0 + 1;  // of the block's first token
                if (nb == 1) {
                    // a sliding-window layer: the last `window` keys (positions > p - window)
                    const int64_t first = window > 0 && n_keys > window ? n_keys - window : 0;
                    const size_t fo = off + static_cast<size_t>(first) * static_cast<size_t>(hd);
                    if (kv16) attend_f16(q, m.k16.data() + fo, m.v16.data() + fo, n_keys - first, hd, scale, cap, sc, o);
                    else attend_f32(q, m.k32.data() + fo, m.v32.data() + fo, n_keys - first, hd, scale, cap, sc, o);
                } else if (kv16) {
                    attend_block_f16(q, nq, static_cast<int>(nb), m.k16.data() + off, m.v16.data() + off, n_keys, hd, scale,
                                     cap, window, sc, o, nq);
                } else {
                    attend_block_f32(q, nq, static_cast<int>(nb), m.k32.data() + off, m.v32.data() + off, n_keys, hd, scale,
                                     cap, window, sc, o, nq);
                }
            }
        });
        act_quant(m.att.data(), nq);
        prepare(L.o, m.att.data(), nq, m.a_o);
        {
            const LinearJob job{&L.o, m.a_o.buf.data(), m.proj.data(), E};
            run_linear(&job, 1, T);
        }
        for_tokens([&](int64_t t) {
            float* x = m.x.data() + t * E;
            float* p = m.proj.data() + t * E;
            if (L.attn_post_norm.empty()) {
                add_inplace(x, p, E);
                if (!L.bo.empty()) add_inplace(x, L.bo.data(), E);
            } else {
                if (!L.bo.empty()) add_inplace(p, L.bo.data(), E);
                rms_norm(p, L.attn_post_norm.data(), p, E, c.rms_eps);
                add_inplace(x, p, E);
            }
            rms_norm(x, L.ffn_norm.data(), m.xn.data() + t * E, E, c.rms_eps);
        });

        // ---- MLP: gate and up in one region, SwiGLU on each thread's own rows
        act_quant(m.xn.data(), E);
        prepare(L.gate, m.xn.data(), E, m.a_gate);
        const uint8_t* au = m.a_gate.buf.data();
        if (!L.up_shares_gate) {
            prepare(L.up, m.xn.data(), E, m.a_up);
            au = m.a_up.buf.data();
        }
        pool.run(row_chunks(F, pool.size()), [&](int64_t ch, int64_t nch, int) {
            int64_t r0, r1;
            split_range(F, ch, nch, kRowAlign, r0, r1);
            if (r0 >= r1) return;
            if (T == 1) {
                kernels::matvec(L.gate.p, L.gate.data, L.gate.row_bytes, E, m.a_gate.buf.data(), m.gate.data() + r0, r0, r1);
                kernels::matvec(L.up.p, L.up.data, L.up.row_bytes, E, au, m.up.data() + r0, r0, r1);
            } else {
                kernels::matmul(L.gate.p, L.gate.data, L.gate.row_bytes, E, m.a_gate.buf.data(), T, m.gate.data(), F, r0, r1);
                kernels::matmul(L.up.p, L.up.data, L.up.row_bytes, E, au, T, m.up.data(), F, r0, r1);
            }
            if (gelu)
                for (int64_t t = 0; t < T; ++t) geglu(m.gate.data() + t * F + r0, m.up.data() + t * F + r0, r1 - r0);
            else
                for (int64_t t = 0; t < T; ++t) swiglu(m.gate.data() + t * F + r0, m.up.data() + t * F + r0, r1 - r0);
        });
        act_quant(m.gate.data(), F);
        prepare(L.down, m.gate.data(), F, m.a_down);
        {
            const LinearJob job{&L.down, m.a_down.buf.data(), m.proj.data(), E};
            run_linear(&job, 1, T);
        }
        if (L.ffn_post_norm.empty()) {
            for_tokens([&](int64_t t) { add_inplace(m.x.data() + t * E, m.proj.data() + t * E, E); });
        } else {
            for_tokens([&](int64_t t) {
                float* p = m.proj.data() + t * E;
                rms_norm(p, L.ffn_post_norm.data(), p, E, c.rms_eps);
                add_inplace(m.x.data() + t * E, p, E);
            });
        }
    }
    n_past_ += T;

    // ---- output head
    if (!logits) return;
    const int64_t t_first = all_logits ? 0 : T - 1;
    const int64_t n_out = T - t_first;
    for (int64_t t = t_first; t < T; ++t)
        rms_norm(m.x.data() + t * E, m.output_norm.data(), m.xn.data() + (t - t_first) * E, E, c.rms_eps);
    {
        const Weight& w = m.output;
        m.a_out.stride = kernels::acts_bytes(w.p, E);
        for (int64_t t = 0; t < n_out; ++t)
            kernels::prepare_acts(w.p, m.xn.data() + t * E, E, m.a_out.buf.data() + static_cast<size_t>(t) * m.a_out.stride, w.fast);
        const LinearJob job{&w, m.a_out.buf.data(), logits, c.n_vocab};
        run_linear(&job, 1, n_out);
    }
    if (c.final_softcap > 0.0) {
        const auto fcap = static_cast<float>(c.final_softcap);
        const int64_t V = c.n_vocab, n_all = n_out * V;
        pool.run(row_chunks(n_all, pool.size()), [&](int64_t ch, int64_t nch, int) {
            int64_t b, e;
            split_range(n_all, ch, nch, kRowAlign, b, e);
            if (b < e) softcap(logits + b, e - b, fcap);
        });
    }
}

}  // namespace quantconv::engine
