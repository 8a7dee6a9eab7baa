"""Run a quantconv .onnx export with onnxruntime (CPU), behind the same small interface as
runtime.engine.Engine, so that generation, perplexity and the bench work on either file:

    with OnnxEngine("model.onnx", n_ctx=2048) as eng:
        logits = eng.eval(ids, all_logits=True)    # (T, n_vocab), appended to the KV cache
        tok = Tokenizer.from_gguf_metadata(eng.kv)

(runtime.perplexity and runtime.bench take either), plus a generation helper and a weight dump for tests.
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
    """An .onnx export in an onnxruntime session, with its KV cache kept here as numpy arrays.

    n_ctx only bounds the cache here: a LongRoPE (phi3) graph picks its long factors itself once a position
    reaches the original context (transformers' rule), where quantconv's Engine, like llama.cpp, picks them
    for the whole run when n_ctx exceeds it; the two agree while the context stays within the original."""

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
    from quantconv.formats.tokenizer import Tokenizer

    eng = OnnxEngine(path, n_ctx=n_ctx, n_threads=n_threads)
    return eng, Tokenizer.from_gguf_metadata(eng.kv)


def generate_text(path, prompt: str, max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                  seed: int | None = None, n_ctx: int = 2048, n_threads: int | None = None) -> str:
    from quantconv.runtime.generate import SamplingOptions, generate

    eng, tok = open_model(path, n_ctx=n_ctx, n_threads=n_threads)
    ids = tok.encode(prompt, add_bos=tok.add_bos)
    n = min(max_tokens, n_ctx - len(ids))
    return "".join(generate(eng, tok, ids, n, SamplingOptions(temperature, top_p, seed)))


def dequantized_weights(path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Each encoded weight as onnxruntime computes it from the file, in GGUF orientation (rows, cols) with
    HF q/k row order: for checking the encodings bit for bit. Each use of a weight is the scope of nodes
    named "<tensor>/..." (formats/onnx/encodings.py); it is cut out of the graph and run, with onnxruntime's
    default optimizations, on an identity matrix (linears: I @ W = W exactly, as every other product is
    0 * w) or on every token id (embedding rows). A tied output head comes back as "<tensor>#head".
    A tool for small models."""
    import json

    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(os.fspath(path))
    props = {p.key: p.value for p in model.metadata_props}
    encs = json.loads(props["quantconv.encodings"])
    scopes = list(encs) if names is None else list(names)
    scopes += [f"{n}#head" for n in list(scopes) if any(node.name.startswith(f"{n}#head/") for node in model.graph.node)]
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for scope in scopes:
        nodes = [nd for nd in model.graph.node if nd.name.startswith(f"{scope}/")]
        made = {o for nd in nodes for o in nd.output}
        used = {i for nd in nodes for i in nd.input if i}
        free = sorted(used - made - set(inits))
        final = [o for o in made if o not in used]
        if len(free) != 1 or len(final) != 1:
            raise QuantconvError(f"{path}: can't isolate the nodes of {scope} (inputs {free}, outputs {final})")
        info = encs[scope.split("#")[0]]
        (rows, cols), orient = info["shape"], info["orient"]   # the weight's shape in its orientation
        if orient == "nk" and not scope.endswith("#head"):   # every row: ids 0..rows-1
            x = np.arange(rows, dtype=np.int64)[None]
            itype = TensorProto.INT64
        else:   # identity over the input dimension
            k = cols if orient == "nk" else rows
            x = np.eye(k, dtype=np.float32)[None]
            itype = TensorProto.FLOAT
        g = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info(free[0], itype, list(x.shape))],
                              [helper.make_tensor_value_info(final[0], TensorProto.FLOAT, None)],
                              initializer=[inits[i] for i in sorted(used & set(inits))])
        m = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
        sess = _ort().InferenceSession(m.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
        w = sess.run(None, {free[0]: x})[0][0]
        out[scope] = w if orient == "nk" and not scope.endswith("#head") else np.ascontiguousarray(w.T)
    return out
