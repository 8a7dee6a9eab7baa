// The llama-family decoder (Llama 2/3, Mistral, SmolLM, Qwen2/3, Gemma 2/3, Phi-3) over packed GGUF
// weight rows.
//
// Token embeddings (times embd_scale) -> per layer: RMSNorm -> Q, K, V projections (+ optional biases)
// -> optional per-head RMSNorm of q and k -> RoPE -> grouped-query attention over a KV cache (optionally
// soft-capped scores, and a sliding window on the layers swa_layers marks) -> output projection (+
// optional bias) -> optional RMSNorm (post-attention) -> residual -> RMSNorm -> gated MLP (gate, up,
// down; SiLU or tanh-GELU) -> optional RMSNorm (post-FFN) -> residual; then the final RMSNorm, the
// output head (the `output` role, or the token embedding when tied) and optional logit soft-capping.
// Every option is off by default, and off costs nothing. Weights are never dequantized into memory: every projection goes through
// kernels::matvec (one token) or kernels::matmul (a batch of tokens), split over a thread pool by
// output rows. The weight bytes belong to the caller (a memory-mapped file) and must outlive the Model.
//
// Tensors are handed in by role, the names models.yaml gives them (the file's tensor names are the
// caller's business, kept only for messages): "token_embd", "output_norm", "output" (absent: tied),
// "rope_freqs" (optional), and per layer i "L<i>.attn_norm", "L<i>.attn_q", "L<i>.attn_k", "L<i>.attn_v",
// "L<i>.attn_output", "L<i>.ffn_norm", "L<i>.ffn_gate", "L<i>.ffn_up", "L<i>.ffn_down" and the optional
// "L<i>.attn_q_bias", "L<i>.attn_k_bias", "L<i>.attn_v_bias", "L<i>.attn_output_bias", "L<i>.attn_q_norm",
// "L<i>.attn_k_norm" (head_dim weights, shared by the heads), "L<i>.attn_post_norm", "L<i>.ffn_post_norm".
// A fused tensor (Phi-3's qkv, gate_up) arrives as row-slice views under the logical roles.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "quant/types.h"

namespace quantconv::engine {

enum class RopeStyle : uint8_t {
    Norm,  // rotates adjacent pairs (2i, 2i+1): llama.cpp's "llama" graph (q/k rows permuted on export)
    Neox,  // rotates pairs (i, i + rope_dim/2): HF's rotate_half, llama.cpp's "qwen2" graph
};

enum class KvType : uint8_t { F32, F16 };

enum class FfnAct : uint8_t {
    Silu,      // SwiGLU: silu(gate) * up
    GeluTanh,  // GeGLU: gelu(gate, tanh approximation) * up (Gemma)
};

struct Config {
    int64_t n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, n_ff = 0, n_vocab = 0;
    int64_t head_dim = 0;  // 0: n_embd / n_head
    int64_t rope_dim = 0;  // 0: head_dim
    double rope_base = 10000.0;
    RopeStyle rope_style = RopeStyle::Norm;
    double rope_scale = 1.0;  // linear scaling: positions are divided by it
    double rope_attn_factor = 1.0;  // LongRoPE: the cos and sin tables are multiplied by it
    double rope_base_swa = 0.0;     // RoPE base of sliding-window layers (0: rope_base); they use no linear scaling
    double rms_eps = 1e-6;
    double embd_scale = 1.0;   // token embeddings are multiplied by float32(embd_scale) (Gemma: sqrt(n_embd))
    FfnAct ffn_act = FfnAct::Silu;
    double attn_scale = 0.0;     // scores = attn_scale * q.k (0: 1 / sqrt(head_dim))
    double attn_softcap = 0.0;   // > 0: scores -> cap * tanh(scores / cap) before the softmax
    double final_softcap = 0.0;  // > 0: logits -> cap * tanh(logits / cap)
    int64_t swa_window = 0;           // > 0: on a sliding-window layer, position p sees keys at positions > p - window
    std::vector<uint8_t> swa_layers;  // per layer, 1 = sliding window (empty: none)
    KvType kv_type = KvType::F32;
    int64_t n_batch = 256;  // tokens per prefill step (scratch is sized for it)
    bool validate = true;   // decode every block-typed weight row once at load to reject corrupt data
    bool exact = false;     // force the kernels' exact float32 path while this model computes
    std::string act_dtype;  // the file's quantconv.act_dtype: linears' inputs fake-quantized (act_quant.h)
};

// One tensor of the file: its type, its bytes and its shape in numpy order ((rows, cols) or (n,)).
struct TensorView {
    std::string name;        // the file's name for it (messages, QUANTCONV_EXACT_TENSORS)
    quant::TypeParams type;  // prepared
    std::string spec;        // for messages
    const uint8_t* data = nullptr;
    size_t nbytes = 0;
    std::vector<int64_t> shape;
};

class Model {
   public:
    // tensors: role key -> view (see the top of this file). Validates the config and every tensor the
    // model needs (presence, shape, size, and the data of block types: E8M0 255, non-finite fp16
    // scales); throws std::runtime_error naming the tensor.
    Model(const Config& config, const std::map<std::string, TensorView>& tensors, int64_t n_ctx, int n_threads);
    ~Model();
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    const Config& config() const { return cfg_; }
    int64_t n_ctx() const { return n_ctx_; }
    int64_t n_past() const { return n_past_.load(std::memory_order_relaxed); }
    int n_threads() const;

    void reset();
    void set_threads(int n);

    // Appends T tokens to the cache and writes the logits of every token (out: T * n_vocab floats)
    // or of the last one (n_vocab floats). Throws std::out_of_range when n_past + T > n_ctx and
    // std::invalid_argument for a token id outside [0, n_vocab); the cache is unchanged then.
    void eval(const int32_t* tokens, int64_t T, bool all_logits, float* out);

   private:
    struct Impl;
    void validate();
    void forward(const int32_t* tokens, int64_t T, float* logits, bool all_logits);
    Config cfg_;
    int64_t n_ctx_ = 0;
    std::atomic<int64_t> n_past_{0};
    std::unique_ptr<Impl> impl_;
    std::mutex mutex_;  // one eval at a time
};

}  // namespace quantconv::engine
