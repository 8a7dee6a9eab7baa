"""The decoder (llama / mistral / qwen2: RMSNorm, RoPE, GQA attention with KV cache, SwiGLU) as an ONNX
graph written node by node with onnx.helper, from a quantconv GGUF file.

Inputs/outputs follow optimum / onnxruntime-genai: input_ids, attention_mask, position_ids,
past_key_values.{i}.key|value -> logits, present.{i}.key|value, caches [batch, n_kv_heads, seq, head_dim].
Norms, RoPE and attention are the standard opset-23/24 RMSNormalization, RotaryEmbedding (rotate_half
form, cos/sin from position_ids) and Attention (GQA, past/present, an additive causal + padding mask);
`fused=False` writes the same math in basic operators (Split/Concat RoPE, MatMul/Softmax attention) for
runtimes without those ops. Both are within 1e-3 of transformers' logits in float32 (tests/test_onnx.py).

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


def _rotate(g: GraphBuilder, x: str, cos: str, sin: str) -> str:
    """x * cos + rotate_half(x) * sin, rotate_half = concat(-x2, x1) of the head_dim halves."""
    x1, x2 = g.op("Split", [x], outputs=2, axis=-1, num_outputs=2)
    rot = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rot, sin])])


def _attention_basic(g: GraphBuilder, q, k, v, cos, sin, mask, past, present, nh, nkv, hd) -> str:
    """RoPE + GQA attention in basic operators (the graph before opset-23 Attention), q/k/v (B, S, heads*hd)."""
    def heads(y: str, n: int) -> str:   # (B, S, n*hd) -> (B, n, S, hd)
        return g.op("Transpose", [g.op("Reshape", [y, g.ints(0, 0, n, hd)])], perm=[0, 2, 1, 3])

    q, k, v = _rotate(g, heads(q, nh), cos, sin), _rotate(g, heads(k, nkv), cos, sin), heads(v, nkv)
    k_all = g.op("Concat", [past[0], k], [present[0]], axis=2)
    v_all = g.op("Concat", [past[1], v], [present[1]], axis=2)
    # GQA without copying the cache: q as (B, n_kv, rep, S, hd) against k/v as (B, n_kv, 1, T, hd)
    q5 = g.op("Reshape", [g.op("Mul", [q, g.const(np.float32(1.0 / np.sqrt(hd)))]), g.ints(0, nkv, nh // nkv, -1, hd)])
    k5 = g.op("Unsqueeze", [k_all, g.ints(2)])
    v5 = g.op("Unsqueeze", [v_all, g.ints(2)])
    scores = g.op("Add", [g.op("MatMul", [q5, g.op("Transpose", [k5], perm=[0, 1, 2, 4, 3])]), mask])
    ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v5])
    ctx = g.op("Reshape", [ctx, g.ints(0, nh, -1, hd)])
    return g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), g.ints(0, 0, nh * hd)])


def _inv_freq(cfg: dict, rope_freqs: np.ndarray | None) -> np.ndarray:
    dim, base = cfg["rope_dim"], cfg["rope_base"]
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if rope_freqs is not None:      # Llama 3 scaling: a divisor per frequency (rope_freqs.weight)
        inv = inv / rope_freqs.astype(np.float64)
    return (inv / cfg["rope_scale"]).astype(np.float32)   # linear scaling: positions / factor


class DecoderBuilder:
    """Builds the ONNX graph of one GGUF decoder. `f`: an open GGUFFile, `cfg`: formats.model_config.model_config(f)."""

    def __init__(self, f, cfg: dict, flavor: str, progress=None, fused: bool = True):
        self.f, self.cfg, self.flavor, self.progress, self.fused = f, cfg, flavor, progress, fused
        self.arch = arch_for_gguf(cfg["arch"])   # tensor names by role (models.yaml)
        self.g = GraphBuilder()
        self.encodings: dict[str, dict] = {}
        if cfg["rope_dim"] != cfg["head_dim"]:
            raise QuantconvError(f"{f.path}: partial RoPE (rope dim {cfg['rope_dim']} of head dim "
                                 f"{cfg['head_dim']}) is not supported by the ONNX export")

    # ---- weights -------------------------------------------------------------------------------
    def name(self, role: str, i: int | None = None) -> str:
        """The GGUF name of a role's tensor (of layer i)."""
        return self.arch.role(role).gguf_name(i)

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

    def linear(self, x: str, name: str, bias: str | None = None) -> str:
        y = linear_nodes(self.g, x, self.weight(name, "kn"))
        if bias and bias in self.f:
            y = self.g.op("Add", [y, self.vector(bias)])
        return y

    # ---- graph ---------------------------------------------------------------------------------
    def build(self, name: str = "quantconv_decoder"):
        c, g = self.cfg, self.g
        nh, nkv, hd, L = c["n_head"], c["n_head_kv"], c["head_dim"], c["n_layer"]
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

        # RoPE angles from position_ids: (B, S, hd/2) for RotaryEmbedding, (B, 1, S, hd) for the basic form
        rope_freqs = self.f.dequantize(self.name("rope_freqs")) if self.name("rope_freqs") in self.f else None
        pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], to=F), g.ints(-1)])
        freqs = g.op("Mul", [pos, g.const(_inv_freq(c, rope_freqs))])
        if self.fused:
            cos, sin = g.op("Cos", [freqs]), g.op("Sin", [freqs])
        else:
            angles = g.op("Unsqueeze", [g.op("Concat", [freqs, freqs], axis=-1), g.ints(1)])
            cos, sin = g.op("Cos", [angles]), g.op("Sin", [angles])

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
        mask = g.op("Where", [g.op("And", [causal, keep]), g.const(np.float32(0)), g.const(np.float32(NEG))])

        for i in range(L):
            n = lambda role: self.name(role, i)   # noqa: E731
            x = self.rmsnorm(h, n("attn_norm"))
            q, k, v = (self.linear(x, n(w), n(b)) for w, b in (("attn_q", "attn_q_bias"), ("attn_k", "attn_k_bias"),
                                                                 ("attn_v", "attn_v_bias")))
            past, present = [f"past_key_values.{i}.{t}" for t in ("key", "value")], [f"present.{i}.{t}" for t in ("key", "value")]
            if self.fused:   # (B, S, heads*hd) in and out; the caches (B, n_kv, T, hd)
                q = g.op("RotaryEmbedding", [q, cos, sin], num_heads=nh, interleaved=0)
                k = g.op("RotaryEmbedding", [k, cos, sin], num_heads=nkv, interleaved=0)
                ctx = g.op("Attention", [q, k, v, mask, *past], [g.fresh("Attention"), *present],
                           q_num_heads=nh, kv_num_heads=nkv, scale=float(1.0 / np.sqrt(hd)))[0]
            else:
                ctx = _attention_basic(g, q, k, v, cos, sin, mask, past, present, nh, nkv, hd)
            h = g.op("Add", [h, self.linear(ctx, n("attn_output"), n("attn_output_bias"))])

            x = self.rmsnorm(h, n("ffn_norm"))
            gate = self.linear(x, n("ffn_gate"))
            up = self.linear(x, n("ffn_up"))
            act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
            h = g.op("Add", [h, self.linear(act, n("ffn_down"))])

        x = self.rmsnorm(h, self.name("output_norm"))
        if self.name("output") in self.f:
            logits = self.linear(x, self.name("output"))
        else:   # tied embeddings: the token table's own initializers, as a (constant-folded) float head
            logits = tied_head_nodes(g, x, emb)
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
