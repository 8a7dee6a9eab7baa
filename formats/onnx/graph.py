"""The decoder (RMSNorm, RoPE, GQA attention with KV cache, gated MLP) as an ONNX graph written node by node
with onnx.helper, from a quantconv GGUF file and its runtime config (formats/model_config.py). Besides the
llama / mistral / qwen2 decoder it covers what the other families of models.yaml add: per-head q/k RMSNorm
(qwen3, gemma3), norms after attention and MLP and a scaled embedding (gemma), GeGLU (tanh GELU),
sliding-window layers with their own RoPE base, attention and final-logit soft-capping, a query scale,
partial rotary and LongRoPE factors (phi3), fused qkv / gate_up projections (one MatMul, then Split).

Inputs/outputs follow optimum / onnxruntime-genai: input_ids, attention_mask, position_ids,
past_key_values.{i}.key|value -> logits, present.{i}.key|value, caches [batch, n_kv_heads, seq, head_dim].
Norms, RoPE and attention are the standard opset-23/24 RMSNormalization, RotaryEmbedding (rotate_half
form, cos/sin from position_ids; `rotary_embedding_dim` for partial rotary) and Attention (GQA,
past/present, an additive causal + padding [+ sliding window] mask, `softcap`), all implemented by
onnxruntime 1.32's CPU provider (its Attention caps the scores before adding the mask, as transformers
does); `fused=False` writes the same math in basic operators (Split/Concat RoPE, MatMul/Softmax attention)
for runtimes without those ops. Both are within 1e-3 of transformers' logits in float32 (tests/test_onnx.py,
tests/test_onnx_families.py).

Sliding-window layers keep the whole cache (present = past + new, like every layer) and mask the keys
more than `swa_window - 1` positions back. LongRoPE picks its long factors when the largest position id
reaches the original context (transformers' and onnxruntime-genai's rule, decided per run from
position_ids); quantconv's engine, like llama.cpp, decides once from n_ctx: the two agree whenever the
context stays within the original one.

RoPE is HF's rotate_half form: llama-arch GGUFs store q/k rows permuted for llama.cpp's interleaved
RoPE, so those rows are put back in HF order here (rows move with their blocks: codes stay exact).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from onnx import TensorProto, helper

from quantconv.formats.models import arch_for_gguf, tensor_kind, unpermute_qk
from quantconv.errors import QuantconvError
from quantconv.formats.onnx.encodings import (Encoded, embedding_nodes, encode, linear_nodes, matmulnbits_problem,
                                               tied_head_nodes)

OPSET = 24          # Cast from FLOAT8E8M0 (MX scales) needs 24; blocked DequantizeLinear needs 21
MS_OPSET = 1
IR_VERSION = 11     # what onnxruntime 1.32 reads
NEG = float(np.finfo(np.float32).min)   # additive mask: exp() of it underflows to exactly 0


class GraphBuilder:
    """Collects nodes and initializers; op() returns the (fresh) output name."""

    def __init__(self):
        self.nodes, self.inits, self._n, self._scope = [], [], 0, ""

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"/{self._scope}{hint}_{self._n}"

    @contextmanager
    def scope(self, name: str):
        """Names of nodes (and constants) made inside start with `name/`: one weight's use, cut out again by
        runtime.onnx_runner.dequantized_weights."""
        outer, self._scope = self._scope, f"{name}/"
        try:
            yield
        finally:
            self._scope = outer

    def op(self, op_type: str, inputs, outputs: int | list[str] = 1, domain: str = "", **attrs):
        outs = [self.fresh(op_type) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0].lstrip("/"),
                                           domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, value: np.ndarray) -> str:
        arr = np.asarray(value)
        name = self.fresh("const")
        self.inits.append(helper.make_tensor(name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape),
                                             arr.tobytes(), raw=True))
        return name

    def ints(self, *v) -> str:
        return self.const(np.array(v, np.int64))


def _rmsnorm(g: GraphBuilder, x: str, weight: str, eps: float) -> str:
    ms = g.op("ReduceMean", [g.op("Mul", [x, x]), g.ints(-1)], keepdims=1)
    inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [ms, g.const(np.float32(eps))])])])
    return g.op("Mul", [g.op("Mul", [x, inv]), weight])


def _rotate(g: GraphBuilder, x: str, cos: str, sin: str, hd: int, rot_dim: int) -> str:
    """x * cos + rotate_half(x) * sin, rotate_half = concat(-x2, x1) of the head_dim halves. Partial rotary
    (rot_dim < hd): the first rot_dim dims of each head turn (pairs i, i + rot_dim/2), the rest pass."""
    if rot_dim < hd:
        turn, rest = g.op("Split", [x, g.ints(rot_dim, hd - rot_dim)], outputs=2, axis=-1)
        return g.op("Concat", [_rotate(g, turn, cos, sin, rot_dim, rot_dim), rest], axis=-1)
    x1, x2 = g.op("Split", [x], outputs=2, axis=-1, num_outputs=2)
    rot = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rot, sin])])


def _softcap(g: GraphBuilder, x: str, cap: float) -> str:
    """cap * tanh(x / cap), in transformers' order of operations."""
    c = g.const(np.float32(cap))
    return g.op("Mul", [g.op("Tanh", [g.op("Div", [x, c])]), c])


def _gelu_tanh(g: GraphBuilder, x: str) -> str:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): GELU's tanh approximation in basic operators."""
    cube = g.op("Mul", [x, g.op("Mul", [x, x])])
    inner = g.op("Mul", [g.const(np.float32(np.sqrt(2.0 / np.pi))),
                         g.op("Add", [x, g.op("Mul", [g.const(np.float32(0.044715)), cube])])])
    return g.op("Mul", [g.op("Mul", [g.const(np.float32(0.5)), x]),
                        g.op("Add", [g.const(np.float32(1.0)), g.op("Tanh", [inner])])])


def _attention_basic(g: GraphBuilder, q, k, v, cos, sin, mask, past, present, nh, nkv, hd, rot_dim: int,
                     scale: float, softcap: float = 0.0, qk_norm=None) -> str:
    """RoPE + GQA attention in basic operators (the graph before opset-23 Attention), q/k/v (B, S, heads*hd).
    qk_norm: None, or a function RMS-normalizing (B, heads, S, hd) per head with the q or k weight."""
    def heads(y: str, n: int) -> str:   # (B, S, n*hd) -> (B, n, S, hd)
        return g.op("Transpose", [g.op("Reshape", [y, g.ints(0, 0, n, hd)])], perm=[0, 2, 1, 3])

    def normed(y: str, n: int, which: str) -> str:
        y = heads(y, n)
        return qk_norm(y, which) if qk_norm else y

    q = _rotate(g, normed(q, nh, "q"), cos, sin, hd, rot_dim)
    k = _rotate(g, normed(k, nkv, "k"), cos, sin, hd, rot_dim)
    v = heads(v, nkv)
    k_all = g.op("Concat", [past[0], k], [present[0]], axis=2)
    v_all = g.op("Concat", [past[1], v], [present[1]], axis=2)
    # GQA without copying the cache: q as (B, n_kv, rep, S, hd) against k/v as (B, n_kv, 1, T, hd)
    q5 = g.op("Reshape", [g.op("Mul", [q, g.const(np.float32(scale))]), g.ints(0, nkv, nh // nkv, -1, hd)])
    k5 = g.op("Unsqueeze", [k_all, g.ints(2)])
    v5 = g.op("Unsqueeze", [v_all, g.ints(2)])
    scores = g.op("MatMul", [q5, g.op("Transpose", [k5], perm=[0, 1, 2, 4, 3])])
    if softcap:   # before the mask, as transformers' gemma2 (a capped -inf would no longer mask)
        scores = _softcap(g, scores, softcap)
    scores = g.op("Add", [scores, mask])
    ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v5])
    ctx = g.op("Reshape", [ctx, g.ints(0, nh, -1, hd)])
    return g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), g.ints(0, 0, nh * hd)])


def _inv_freq(dim: int, base: float, scale: float = 1.0, divisor: np.ndarray | None = None) -> np.ndarray:
    """RoPE inverse frequencies of `dim` rotated dims; divisor: one factor per frequency (Llama 3's
    rope_freqs, LongRoPE's long/short factors); scale: linear scaling (positions / factor)."""
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if divisor is not None:
        inv = inv / divisor.astype(np.float64)
    return (inv / scale).astype(np.float32)


class DecoderBuilder:
    """Builds the ONNX graph of one GGUF decoder. `f`: an open GGUFFile, `cfg`: formats.model_config.model_config(f)."""

    def __init__(self, f, cfg: dict, flavor: str, progress=None, fused: bool = True):
        self.f, self.cfg, self.flavor, self.progress, self.fused = f, cfg, flavor, progress, fused
        self.arch = arch_for_gguf(cfg["arch"])   # tensor names by role (models.yaml)
        self.g = GraphBuilder()
        self.encodings: dict[str, dict] = {}
        # the sliding-window (local) layers; formats/model_config.py has checked the flags and rope_dim
        self.swa_local = {i for i, local in enumerate(cfg["swa_layers"]) if local} if cfg["swa_window"] else set()

    # ---- weights -------------------------------------------------------------------------------
    def name(self, role: str, i: int | None = None) -> str:
        """The GGUF name of a role's tensor (of layer i)."""
        return self.arch.role(role).gguf_name(i)

    def has(self, role: str, i: int | None = None) -> bool:
        """Whether this architecture has the role and the file has its tensor (optional roles)."""
        return role in self.arch.roles and self.name(role, i) in self.f

    def opt(self, role: str, i: int | None = None) -> str | None:
        return self.name(role, i) if self.has(role, i) else None

    def _row_perm(self, name: str):
        """GGUF -> HF row order of the q/k heads roles (norm-style RoPE only), as an index array over rows."""
        if self.cfg["rope_style"] != "norm":
            return None
        found = self.arch.role_of_gguf(name)
        heads = {"q": self.cfg["n_head"], "kv": self.cfg["n_head_kv"]}.get(found[0].heads) if found else None
        if heads is None:
            return None
        return unpermute_qk(np.arange(self.f.tensor(name).shape[0]), heads)

    def weight(self, name: str, orient: str) -> Encoded:
        t = self.f.tensor(name)
        perm = self._row_perm(name)
        expected = self.f.dequantize(name)
        if perm is not None:
            expected = expected[perm]
        flavor = self.flavor if t.dtype.family != "float" else "standard"
        enc = encode(name, t.dtype, self.f.raw(name), t.shape, orient, flavor, perm, expected)
        self.g.inits.extend(enc.inits)
        self.encodings[name] = {**enc.info, "orient": enc.orient, "shape": list(enc.shape)}
        if self.progress:
            self.progress(name, enc.info)
        return enc

    def vector(self, name: str) -> str:
        """A 1-D float tensor (norm weight, bias) as a FLOAT initializer named after the GGUF tensor."""
        v = self.f.dequantize(name).astype(np.float32)
        perm = self._row_perm(name)
        if perm is not None:
            v = v[perm]
        self.g.inits.append(helper.make_tensor(name, TensorProto.FLOAT, list(v.shape), v.tobytes(), raw=True))
        return name

    def rmsnorm(self, x: str, weight: str) -> str:
        if self.fused:
            return self.g.op("RMSNormalization", [x, self.vector(weight)], axis=-1, epsilon=float(self.cfg["rms_eps"]))
        return _rmsnorm(self.g, x, self.vector(weight), self.cfg["rms_eps"])

    def head_norm(self, x: str, weight: str, heads: int) -> str:
        """RMSNorm over each head of x (B, S, heads*hd): q/k norms (fused graph)."""
        g, hd = self.g, self.cfg["head_dim"]
        y = self.rmsnorm(g.op("Reshape", [x, g.ints(0, 0, heads, hd)]), weight)
        return g.op("Reshape", [y, g.ints(0, 0, heads * hd)])

    def linear(self, x: str, name: str, bias: str | None = None) -> str:
        y = linear_nodes(self.g, x, self.weight(name, "kn"))
        if bias and bias in self.f:
            y = self.g.op("Add", [y, self.vector(bias)])
        return y

    def split(self, y: str, sizes: list[int]) -> list[str]:
        """A fused projection's output (B, S, sum(sizes)) cut into its parts, in row order."""
        return self.g.op("Split", [y, self.g.ints(*sizes)], outputs=len(sizes), axis=-1)

    def fused_sizes(self, role: str) -> list[int]:
        """Row counts of a fused linear's parts, in order (models.yaml `split`, via ArchSpec.parts)."""
        c = self.cfg
        sizes_of = {"num_attention_heads": c["n_head"], "num_key_value_heads": c["n_head_kv"],
                    "head_dim": c["head_dim"], "hidden_size": c["n_embd"], "intermediate_size": c["n_ff"]}
        sizes = [end - start for _, start, end in self.arch.parts(role, sizes_of)]
        have = self.f.tensor(self.name(role, 0)).shape[0]
        if not sizes or sum(sizes) != have:
            raise QuantconvError(f"{self.f.path}: {self.name(role, 0)} has {have} rows, but the parts of {role} need "
                                 f"{sum(sizes)}; re-export it with quantconv")
        return sizes

    # ---- RoPE ------------------------------------------------------------------------------------
    def rope_angles(self, pos: str, inv: str) -> tuple[str, str]:
        """cos, sin of position * inverse frequency: (B, S, rd/2) for RotaryEmbedding, (B, 1, S, rd) for the
        basic form; times LongRoPE's attention factor where the file has one."""
        g = self.g
        freqs = g.op("Mul", [pos, inv])
        if self.fused:
            cos, sin = g.op("Cos", [freqs]), g.op("Sin", [freqs])
        else:
            angles = g.op("Unsqueeze", [g.op("Concat", [freqs, freqs], axis=-1), g.ints(1)])
            cos, sin = g.op("Cos", [angles]), g.op("Sin", [angles])
        factor = float(self.cfg["rope_attn_factor"])
        if factor != 1.0:
            f = g.const(np.float32(factor))
            cos, sin = g.op("Mul", [cos, f]), g.op("Mul", [sin, f])
        return cos, sin

    def global_inv_freq(self) -> str:
        """The inverse frequencies of the full-attention layers: rope_base, linear scaling, Llama 3's
        rope_freqs, or LongRoPE's long/short factors chosen in the graph from position_ids."""
        c, g = self.cfg, self.g
        dim = c["rope_dim"]
        if self.has("rope_factors_long") and self.has("rope_factors_short"):
            orig = int(c["rope_orig_ctx"])
            if orig <= 0:
                raise QuantconvError(f"{self.f.path} has LongRoPE factors but no original context length "
                                     f"({c['arch']}.rope.scaling.original_context_length); re-export it with quantconv")
            long_, short = (g.const(_inv_freq(dim, c["rope_base"], c["rope_scale"],
                                              self.f.dequantize(self.name(r)).reshape(-1)))
                            for r in ("rope_factors_long", "rope_factors_short"))
            longest = g.op("ReduceMax", ["position_ids"], keepdims=0)
            use_long = g.op("GreaterOrEqual", [longest, g.const(np.int64(orig))])
            return g.op("Where", [use_long, long_, short])
        rope_freqs = self.f.dequantize(self.name("rope_freqs")) if self.has("rope_freqs") else None
        return g.const(_inv_freq(dim, c["rope_base"], c["rope_scale"], rope_freqs))

    # ---- graph ---------------------------------------------------------------------------------
    def build(self, name: str = "quantconv_decoder"):
        c, g = self.cfg, self.g
        nh, nkv, hd, L, rd = c["n_head"], c["n_head_kv"], c["head_dim"], c["n_layer"], c["rope_dim"]
        F = TensorProto.FLOAT
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
                  helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
        outputs = [helper.make_tensor_value_info("logits", F, ["batch_size", "sequence_length", c["n_vocab"]])]
        for i in range(L):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", F,
                                                            ["batch_size", nkv, "past_sequence_length", hd]))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", F,
                                                             ["batch_size", nkv, "total_sequence_length", hd]))

        # token embedding: the codes and scales of the ids' rows, dequantized (not the whole table)
        emb = self.weight(self.name("token_embd"), "nk")
        h = embedding_nodes(g, "input_ids", emb)
        embd_scale = float(c["embd_scale"])
        if embd_scale != 1.0:   # gemma: x sqrt(n_embd), rounded to float32 first as transformers does
            h = g.op("Mul", [h, g.const(np.float32(embd_scale))])

        # RoPE angles from position_ids; sliding-window layers may have their own base (and no scaling)
        pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], to=F), g.ints(-1)])
        rope_global = self.rope_angles(pos, self.global_inv_freq())
        rope_local = rope_global
        base_swa = float(c["rope_base_swa"])
        if self.swa_local and (base_swa != c["rope_base"] or c["rope_scale"] != 1.0 or self.has("rope_freqs")
                               or self.has("rope_factors_long")):
            rope_local = self.rope_angles(pos, g.const(_inv_freq(rd, base_swa)))

        # additive mask (B, 1, S, T) [basic form: (B, 1, 1, S, T)]: causal over absolute positions (the past
        # length is the cache's), and attention_mask padding
        past_len = g.op("Gather", [g.op("Shape", ["past_key_values.0.key"]), g.const(np.int64(2))])
        seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(np.int64(1))])
        total = g.op("Add", [past_len, seq_len])
        kpos = g.op("Range", [g.const(np.int64(0)), total, g.const(np.int64(1))])
        qpos = g.op("Range", [past_len, total, g.const(np.int64(1))])
        causal = g.op("LessOrEqual", [g.op("Unsqueeze", [kpos, g.ints(0)]), g.op("Unsqueeze", [qpos, g.ints(1)])])
        keep = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.BOOL),
                                  g.ints(1, 2) if self.fused else g.ints(1, 2, 3)])
        visible = g.op("And", [causal, keep])
        zero, neg = g.const(np.float32(0)), g.const(np.float32(NEG))
        mask = g.op("Where", [visible, zero, neg])
        mask_local = mask
        if self.swa_local:   # a local layer sees the keys less than swa_window positions back
            back = g.op("Sub", [g.op("Unsqueeze", [qpos, g.ints(1)]), g.op("Unsqueeze", [kpos, g.ints(0)])])
            near = g.op("Less", [back, g.const(np.int64(c["swa_window"]))])
            mask_local = g.op("Where", [g.op("And", [g.op("And", [causal, near]), keep]), zero, neg])

        scale = float(c["attn_scale"]) or float(1.0 / np.sqrt(hd))
        softcap = float(c["attn_softcap"])
        for i in range(L):
            n = lambda role: self.name(role, i)   # noqa: E731
            opt = lambda role: self.opt(role, i)   # noqa: E731
            cos, sin = rope_local if i in self.swa_local else rope_global
            layer_mask = mask_local if i in self.swa_local else mask
            x = self.rmsnorm(h, n("attn_norm"))
            if self.has("attn_qkv", i):   # phi3: one MatMul, then its q, k, v rows
                q, k, v = self.split(self.linear(x, n("attn_qkv"), opt("attn_qkv_bias")), self.fused_sizes("attn_qkv"))
            else:
                q, k, v = (self.linear(x, n(w), opt(b)) for w, b in (("attn_q", "attn_q_bias"),
                                                                     ("attn_k", "attn_k_bias"),
                                                                     ("attn_v", "attn_v_bias")))
            q_norm, k_norm = opt("attn_q_norm"), opt("attn_k_norm")
            past, present = [f"past_key_values.{i}.{t}" for t in ("key", "value")], [f"present.{i}.{t}" for t in ("key", "value")]
            if self.fused:   # (B, S, heads*hd) in and out; the caches (B, n_kv, T, hd)
                if q_norm:
                    q = self.head_norm(q, q_norm, nh)
                if k_norm:
                    k = self.head_norm(k, k_norm, nkv)
                partial = {"rotary_embedding_dim": rd} if rd != hd else {}
                q = g.op("RotaryEmbedding", [q, cos, sin], num_heads=nh, interleaved=0, **partial)
                k = g.op("RotaryEmbedding", [k, cos, sin], num_heads=nkv, interleaved=0, **partial)
                capped = {"softcap": softcap} if softcap else {}
                ctx = g.op("Attention", [q, k, v, layer_mask, *past], [g.fresh("Attention"), *present],
                           q_num_heads=nh, kv_num_heads=nkv, scale=scale, **capped)[0]
            else:
                norms = {"q": q_norm, "k": k_norm}

                def qk_norm(y: str, which: str, norms=norms) -> str:
                    return _rmsnorm(g, y, self.vector(norms[which]), c["rms_eps"]) if norms[which] else y

                ctx = _attention_basic(g, q, k, v, cos, sin, layer_mask, past, present, nh, nkv, hd, rd, scale,
                                       softcap, qk_norm if q_norm or k_norm else None)
            out = self.linear(ctx, n("attn_output"), opt("attn_output_bias"))
            if self.has("attn_post_norm", i):
                out = self.rmsnorm(out, n("attn_post_norm"))
            h = g.op("Add", [h, out])

            x = self.rmsnorm(h, n("ffn_norm"))
            if self.has("ffn_gate_up", i):   # phi3: gate rows first, then up
                gate, up = self.split(self.linear(x, n("ffn_gate_up")), self.fused_sizes("ffn_gate_up"))
            else:
                gate = self.linear(x, n("ffn_gate"))
                up = self.linear(x, n("ffn_up"))
            if c["ffn_act"] == "gelu_tanh":
                act = g.op("Gelu", [gate], approximate="tanh") if self.fused else _gelu_tanh(g, gate)
                act = g.op("Mul", [act, up])
            else:
                act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
            out = self.linear(act, n("ffn_down"))
            if self.has("ffn_post_norm", i):
                out = self.rmsnorm(out, n("ffn_post_norm"))
            h = g.op("Add", [h, out])

        x = self.rmsnorm(h, self.name("output_norm"))
        if self.name("output") in self.f:
            logits = self.linear(x, self.name("output"))
        else:   # tied embeddings: the token table's own initializers, as a (constant-folded) float head
            logits = tied_head_nodes(g, x, emb)
        if c["final_softcap"]:
            logits = _softcap(g, logits, float(c["final_softcap"]))
        g.op("Identity", [logits], ["logits"])
        graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
        opsets = [helper.make_opsetid("", OPSET)]
        if any(n.domain == "com.microsoft" for n in g.nodes):
            opsets.append(helper.make_opsetid("com.microsoft", MS_OPSET))
        return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION,
                                 producer_name="quantconv")


def check_flavor(tensors, flavor: str) -> None:
    """Refuse, before any work, weights the flavor can't encode. tensors: (name, shape, dtype) triples —
    a GGUF file's tensors, or an export plan's (checked before quantizing)."""
    from quantconv.formats.onnx.encodings import FLAVORS, ort_flavor_error
    if flavor not in FLAVORS:
        raise QuantconvError(f"--onnx-flavor must be one of {', '.join(FLAVORS)} (got '{flavor}')")
    if flavor != "ort":
        return
    for name, shape, dtype in tensors:
        if len(shape) == 2 and tensor_kind(name) != "embedding" and dtype is not None and dtype.family != "float":
            why = matmulnbits_problem(dtype, shape[1])
            if why:
                raise ort_flavor_error(name, why)
