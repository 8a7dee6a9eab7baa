"""Run a quantconv .onnx export with onnxruntime (CPU), behind the same small interface as
runtime.engine.Engine, so that generation, perplexity and the bench work on either file:

    with OnnxEngine("model.onnx", n_ctx=2048) as eng:
        logits = eng.eval(ids, all_logits=True)    # (T, n_vocab), appended to the KV cache
        tok = Tokenizer.from_gguf_metadata(eng.kv)

plus perplexity / generation / bench helpers on the same protocols as the native engine's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from quantconv.errors import QuantconvError


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise QuantconvError("running .onnx files needs onnxruntime: pip install 'quantconv[onnx]'") from None
    return onnxruntime


def session_options(n_threads: int | None = None, optimize: bool = True):
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(n_threads or os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # ORT fuses DequantizeLinear+MatMul into MatMulNBits; its default accuracy level 4 quantizes the
    # activations to int8. Level 0 keeps float32 activations, i.e. the weights' exact values.
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    # no busy-waiting worker threads: on a shared, oversubscribed CPU spinning costs more than it saves
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


class OnnxEngine:
    """An .onnx export in an onnxruntime session, with its KV cache kept here as numpy arrays."""

    def __init__(self, path, n_ctx: int = 2048, n_threads: int | None = None, exact: bool = True,
                 optimize: bool = True):
        from quantconv.formats.onnx.io import gguf_kv, read_props

        self.path = os.fspath(path)
        if not Path(self.path).is_file():
            raise QuantconvError(f"{self.path} does not exist; check the path")
        if int(n_ctx) <= 0:
            raise QuantconvError(f"n_ctx must be positive, got {n_ctx}")
        try:
            props = read_props(self.path)
        except Exception as e:   # not protobuf, truncated, ...
            raise QuantconvError(f"{self.path} is not a readable ONNX file ({str(e).splitlines()[0]})") from None
        self.kv: dict[str, Any] = gguf_kv(props)
        self.props = props
        import json
        self.config = json.loads(props["quantconv.config"])
        ort = _ort()
        self.session = ort.InferenceSession(self.path, session_options(n_threads, optimize),
                                            providers=["CPUExecutionProvider"])
        self.n_ctx = int(n_ctx)
        self._threads = int(n_threads or os.cpu_count() or 1)
        self._layers = self.config["n_layer"]
        self.reset()

    @property
    def n_vocab(self) -> int:
        return int(self.config["n_vocab"])

    @property
    def n_threads(self) -> int:
        return self._threads

    @property
    def n_past(self) -> int:
        return self._n_past

    def reset(self) -> None:
        c = self.config
        empty = np.zeros((1, c["n_head_kv"], 0, c["head_dim"]), np.float32)
        self._past = {f"past_key_values.{i}.{k}": empty for i in range(self._layers) for k in ("key", "value")}
        self._n_past = 0

    def eval(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Append tokens to the cache; float32 logits (T, n_vocab) if all_logits else (n_vocab,)."""
        ids = np.asarray(tokens).reshape(-1)
        if ids.size == 0:
            raise QuantconvError("eval needs at least one token")
        if not np.issubdtype(ids.dtype, np.integer):
            raise QuantconvError(f"token ids must be integers, got {ids.dtype}")
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            bad = int(ids[(ids < 0) | (ids >= self.n_vocab)][0])
            raise QuantconvError(f"token id {bad} is outside the vocabulary [0, {self.n_vocab})")
        n = ids.size
        if self._n_past + n > self.n_ctx:
            raise QuantconvError(f"context full: {self._n_past} + {n} tokens exceed n_ctx {self.n_ctx}")
        feed = {"input_ids": ids.astype(np.int64)[None],
                "attention_mask": np.ones((1, self._n_past + n), np.int64),
                "position_ids": np.arange(self._n_past, self._n_past + n, dtype=np.int64)[None], **self._past}
        outs = self.session.run(None, feed)
        names = [o.name for o in self.session.get_outputs()]
        result = dict(zip(names, outs))
        self._past = {f"past_key_values.{i}.{k}": result[f"present.{i}.{k}"]
                      for i in range(self._layers) for k in ("key", "value")}
        self._n_past += n
        logits = result["logits"][0]
        return logits if all_logits else logits[-1]

    def close(self) -> None:
        self.session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def open_model(path, n_ctx: int = 2048, n_threads: int | None = None):
    """(OnnxEngine, Tokenizer) — what the CLI's run/eval/bench need."""
    from quantconv.runtime.tokenizer import Tokenizer

    eng = OnnxEngine(path, n_ctx=n_ctx, n_threads=n_threads)
    return eng, Tokenizer.from_gguf_metadata(eng.kv)


def perplexity(path, text_path, ctx: int = 512, windows: int | None = None, n_threads: int | None = None,
               progress=None):
    """runtime.perplexity's protocol (no BOS, consecutive windows, every position after the first)."""
    from quantconv.runtime.perplexity import perplexity as ppl

    eng, tok = open_model(path, n_ctx=ctx, n_threads=n_threads)
    ids = tok.encode(Path(text_path).read_text(encoding="utf-8", errors="replace"), add_bos=False)

    def score(window):
        eng.reset()
        return eng.eval(np.asarray(window, dtype=np.int64), all_logits=True)

    return ppl(score, ids, ctx, windows, progress)


def generate_text(path, prompt: str, max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                  seed: int | None = None, n_ctx: int = 2048, n_threads: int | None = None) -> str:
    from quantconv.runtime.generate import SamplingOptions, generate

    eng, tok = open_model(path, n_ctx=n_ctx, n_threads=n_threads)
    ids = tok.encode(prompt, add_bos=tok.add_bos)
    n = min(max_tokens, n_ctx - len(ids))
    return "".join(generate(eng, tok, ids, n, SamplingOptions(temperature, top_p, seed)))


def bench(path, n_threads: int | None = None, prompt: int = 512, gen: int = 64, reps: int = 3, progress=None):
    """Prefill / decode tok/s (batch 1) with runtime.bench's protocol; returns a runtime.bench.Speed."""
    from quantconv.runtime import bench as b

    eng = OnnxEngine(path, n_ctx=prompt + gen + 32, n_threads=n_threads)
    return b.measure({"onnxruntime": b.engine_runner(eng)}, eng.n_vocab, prompt, gen, reps, progress)["onnxruntime"]


def dequantized_weights(path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Each encoded weight as onnxruntime computes it from the file's initializers, in GGUF orientation
    (rows, cols) with HF q/k row order: for checking the encodings bit for bit. A tool for small
    models: it runs the graph once (optimizations off) with the weights as extra outputs, and each
    MatMulNBits weight as MatMulNBits(identity) (1*w + 0*... is exact in float32)."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from quantconv.formats.onnx.graph import IR_VERSION, MS_OPSET, OPSET

    model = onnx.load(os.fspath(path))
    props = {p.key: p.value for p in model.metadata_props}
    encs = json.loads(props["quantconv.encodings"])
    names = list(encs) if names is None else names
    inits = {t.name: t for t in model.graph.initializer}
    produced = {o for node in model.graph.node for o in node.output}
    out: dict[str, np.ndarray] = {}
    plain, nbits = [], []
    for name in names:
        if encs[name]["encoding"] == "matmulnbits":
            nbits.append(name)
        else:
            plain.append(f"{name}.dequantized" if f"{name}.dequantized" in produced else name)
    if plain:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for v in plain:
            m.graph.output.append(helper.make_tensor_value_info(v, TensorProto.FLOAT, None))
        sess = _ort().InferenceSession(m.SerializeToString(), session_options(1, optimize=False),
                                       providers=["CPUExecutionProvider"])
        c = json.loads(props["quantconv.config"])
        feed = {"input_ids": np.zeros((1, 1), np.int64), "attention_mask": np.ones((1, 1), np.int64),
                "position_ids": np.zeros((1, 1), np.int64)}
        for i in range(c["n_layer"]):
            for k in ("key", "value"):
                feed[f"past_key_values.{i}.{k}"] = np.zeros((1, c["n_head_kv"], 0, c["head_dim"]), np.float32)
        res = sess.run(plain, feed)
        for name, v, w in zip([n for n in names if n not in nbits], plain, res):
            out[name] = w.T if encs[name]["orient"] == "kn" else w
    for name in nbits:
        node = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[1] == f"{name}.codes")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        K, bs = attrs["K"], attrs["block_size"]
        eye = f"{name}.eye"
        mins = f"{name}.mins" in inits
        nodes = [helper.make_node("MatMulNBits", [eye, *node.input[1:]], ["wq" if mins else "w"],
                                  domain="com.microsoft", **attrs)]
        used = [inits[i] for i in node.input[1:] if i]
        if mins:   # identity rows: block sums are one-hot, so that product is the min itself
            shape = helper.make_tensor("shape", TensorProto.INT64, [3], [K, K // bs, bs])
            axes = helper.make_tensor("axes", TensorProto.INT64, [1], [-1])
            nodes += [helper.make_node("Reshape", [eye, "shape"], ["xb"]),
                      helper.make_node("ReduceSum", ["xb", "axes"], ["xs"], keepdims=0),
                      helper.make_node("MatMul", ["xs", f"{name}.mins"], ["wm"]),
                      helper.make_node("Add", ["wq", "wm"], ["w"])]
            used += [inits[f"{name}.mins"], shape, axes]
        g = helper.make_graph(nodes, "w", [helper.make_tensor_value_info(eye, TensorProto.FLOAT, [K, K])],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)], initializer=used)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET),
                                                helper.make_opsetid("com.microsoft", MS_OPSET)], ir_version=IR_VERSION)
        sess = _ort().InferenceSession(m.SerializeToString(), session_options(1, optimize=False),
                                       providers=["CPUExecutionProvider"])
        out[name] = sess.run(None, {eye: np.eye(K, dtype=np.float32)})[0].T
    return out
