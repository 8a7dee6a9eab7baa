"""The layer-by-layer calibration pipeline behind `export --algo gptq|awq|smoothquant|awq+gptq|...`.

Decoder layer i is loaded (only its float weights are in memory), fed the outputs of the already
quantized layers 0..i-1, and processed by the chosen algorithms' steps (convert/algorithms.py) in
this order:

  1. smoothing (SmoothQuant, then AWQ): activation-aware scales folded into norms / linears, clipping;
  2. rounding, true-sequentially: q/k/v from the layer's input, then o from the attention output
     computed with the quantized q/k/v, gate/up from the result, down from theirs — each linear by
     GPTQ or round-to-nearest, on the inputs it really sees (--act-dtype included);
  3. tweaking (Norm Tweaking): the norms tuned towards the float layer's output;
then the quantized layer's output becomes layer i+1's input. Each step runs over the calibration
samples in chunks, so the activations of all samples are the largest thing in memory.

Linears are the logical ones of the torch model (roles attn_q ... ffn_down); a fused checkpoint tensor
(phi3's qkv_proj) is rounded as its parts — GPTQ treats rows independently given the shared Hessian,
so that is GPTQ on the fused matrix — and handed to the export joined again, under its HF name.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from quantconv.convert.act_quant import ActDType
from quantconv.convert.algorithms import Algorithm, algorithm_of, by_stage
from quantconv.convert.gptq import QuantizedLinear, join_rows
from quantconv.convert.torch_model import LINEARS, DecoderConfig, Layer, Rope, embed_ids
from quantconv.errors import QuantconvError
from quantconv.formats.registry import DType


@dataclass
class CalibOptions:
    """What every calibrated export shares; each algorithm's own options are in its config (algorithms.py)."""
    algos: tuple = ()                     # configs of the chosen algorithms, e.g. (AWQ(), GPTQ(act_order=True))
    calib: str | None = None
    nsamples: int = 128
    seqlen: int = 512
    seed: int = 0
    device: str = "cpu"
    act_dtype: ActDType | None = None     # what the runtime applies to the linears' inputs: every step sees it
    search_samples: int = 8               # calibration windows AWQ/SmoothQuant statistics look at
    error_samples: int = 4                # windows on which each layer's output error is logged (0: off)
    chunk: int = 8                        # samples per forward chunk

    def needs_calibration(self) -> bool:
        return any(algorithm_of(c).calibrates for c in self.algos) or self.act_dtype is not None


@dataclass
class CalibResult:
    quantized: dict[str, QuantizedLinear] = field(default_factory=dict)   # HF weight name (fused: joined) ->
    floats: dict[str, np.ndarray] = field(default_factory=dict)           # HF name -> changed float tensor (HF layout)
    layers: list[dict] = field(default_factory=list)                      # per-layer log
    seconds: float = 0.0


def check_device(name: str) -> str:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise QuantconvError("--device cuda: no CUDA GPU is visible to torch here; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise QuantconvError(f"unknown --device '{name}'; use cpu or cuda")
    return name


class _Hessian:
    def __init__(self, n: int, device):
        self.H = torch.zeros(n, n, device=device, dtype=torch.float32)
        self.count = 0
        self.blocks = 1 if n < 256 else 2 if n < 1024 else 4   # more, smaller GEMMs stop paying off

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.count += x.shape[0]
        # H is symmetric: only the column blocks on and above the diagonal are multiplied (mirrored in
        # value()): 3/4 of the full product's multiply-adds with 2 blocks, 5/8 with 4
        n = x.shape[1]
        b = (n + self.blocks - 1) // self.blocks
        for i in range(0, n, b):
            self.H[i:i + b, i:].addmm_(x[:, i:i + b].T, x[:, i:])

    def value(self) -> torch.Tensor:
        H = self.H
        if self.blocks > 1:
            H = torch.triu(H) + torch.triu(H, diagonal=1).T
        return H * (2.0 / max(1, self.count))


def calibrate(source, dtypes: dict[str, DType], ids: torch.Tensor, opts: CalibOptions,
              progress: Callable[[int, int, dict], None] | None = None) -> CalibResult:
    """dtypes: HF weight name of each decoder linear (a fused tensor's name for its parts) -> its planned
    datatype."""
    start = time.perf_counter()
    device = check_device(opts.device)
    cfg = DecoderConfig.from_source(source)
    rope = Rope(cfg, ids.shape[1], device)
    X = embed_ids(source, cfg, ids, device)
    result = CalibResult()
    # the float model's own hidden states on the first few windows, to log how far the quantized ones drift
    float_states = X[: min(X.shape[0], opts.error_samples)].clone()
    for i in range(cfg.n_layers):
        t0 = time.perf_counter()
        layer = Layer(source, cfg, i, device)
        layer_dtypes = {n: dtypes[layer.sources[n].hf_name(i)] for n in LINEARS}
        errors = _OutputErrors(layer, X, float_states, rope)
        X, info = _process_layer(layer, layer_dtypes, X, rope, opts, result, cfg.n_layers)
        float_states = errors.log(X, info)
        info.update(layer=i, seconds=round(time.perf_counter() - t0, 2))
        result.layers.append(info)
        if progress:
            progress(i, cfg.n_layers, info)
    result.seconds = time.perf_counter() - start
    return result


class _OutputErrors:
    """Relative squared output error of a decoder layer, on the first windows:
    `layer_rel_err` — quantized vs float weights on the same (quantized-model) input: this layer's own
    error; `model_rel_err` — the quantized model's hidden state vs the float model's after this layer:
    everything accumulated so far. Both sum over tokens and channels: ||Y_q - Y_f||^2 / ||Y_f||^2."""

    @torch.no_grad()
    def __init__(self, layer: Layer, X: torch.Tensor, float_states: torch.Tensor, rope: Rope):
        k = float_states.shape[0]
        # the float weights, before anything (AWQ clipping, quantization, norm tweaking) changes them
        self.own_float = layer.forward(X[:k], rope) if k else None
        self.model_float = layer.forward(float_states, rope) if k else float_states

    def log(self, out: torch.Tensor, info: dict) -> torch.Tensor:
        if self.own_float is not None:
            q = out[: self.own_float.shape[0]]
            rel = lambda ref: float(((q - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30)).item())  # noqa: E731
            info["layer_rel_err"], info["model_rel_err"] = rel(self.own_float), rel(self.model_float)
        return self.model_float


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield slice(a, min(n, a + size))


def _map_chunks(n: int, size: int, f: Callable[[slice], torch.Tensor], into: torch.Tensor | None = None) -> torch.Tensor:
    """f over the samples chunk by chunk, written into one tensor — `into` (reused when f reads each chunk of
    it before that chunk is written, and the shape fits) or a new one; torch.cat would copy everything twice."""
    out = None
    for c in _chunks(n, size):
        y = f(c)
        if out is None:
            fits = into is not None and into.shape[1:] == y.shape[1:] and into.dtype == y.dtype
            out = into if fits else torch.empty((n,) + tuple(y.shape[1:]), dtype=y.dtype, device=y.device)
        out[c] = y
    return out


def _linear_inputs(layer: Layer, xs: torch.Tensor, rope: Rope) -> dict[str, Callable[[], torch.Tensor]]:
    """Lazy float inputs of each linear (by role) for sample windows xs, from the layer's current weights."""
    def attn_in():
        return layer.attn_input(xs)

    def o_in():
        return layer.attention(attn_in(), rope)

    def mlp_in():
        return layer.mlp_input(layer.attn_output(xs, o_in()))

    def down_in():
        return layer.mlp_hidden(mlp_in())

    def flat(f):
        return lambda: _flat(f())

    return {"attn_q": flat(attn_in), "attn_k": flat(attn_in), "attn_v": flat(attn_in), "attn_output": flat(o_in),
            "ffn_gate": flat(mlp_in), "ffn_up": flat(mlp_in), "ffn_down": flat(down_in)}


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


@dataclass
class LayerContext:
    """What the smoothing and tweaking steps see of the layer being calibrated."""
    layer: Layer
    dtypes: dict[str, DType]          # linear (q_proj, ...) -> its planned datatype
    X: torch.Tensor                   # the layer's input on every calibration window
    rope: Rope
    opts: CalibOptions
    n_layers: int
    info: dict                        # the layer's log entry
    float_out: torch.Tensor | None = None   # the float layer's output on X (for an algorithm with float_output)

    def inputs(self) -> dict[str, Callable[[], torch.Tensor]]:
        """Lazy inputs of each linear on the first search_samples windows, from the current weights."""
        return _linear_inputs(self.layer, self.X[: max(1, min(self.X.shape[0], self.opts.search_samples))], self.rope)

    def forward(self) -> torch.Tensor:
        """The layer's output on X with its current weights."""
        return torch.cat([self.layer.forward(self.X[c], self.rope) for c in _chunks(self.X.shape[0], self.opts.chunk)])


def _quantize(layer: Layer, names: tuple[str, ...], hessian: Callable[[], torch.Tensor], dtypes: dict[str, DType],
              rounding: tuple[Algorithm, object], done: dict[str, QuantizedLinear], info: dict) -> None:
    """Round the linears `names` (same input) into `done` (role -> QuantizedLinear); the layer runs on
    with the rounded values."""
    # linears with the same input and datatype are rounded together (GPTQ: one pass, rows concatenated)
    groups: dict = {}
    for name in names:
        if dtypes[name].codec.fittable:   # a float type stays as it is (maybe rescaled)
            groups.setdefault(dtypes[name].spec, []).append(name)
    if not groups:
        return
    alg, cfg = rounding
    for members, parts in zip(groups.values(), alg.step(cfg, layer, list(groups.values()), hessian, dtypes)):
        for name, ql in zip(members, parts):
            layer.w[name] = ql.values
            ql.values = None          # the file's bytes need codes and params only
            done[name] = ql.compact()
            info.setdefault("gptq_loss", {})[name] = round(ql.loss, 4)


def _store(layer: Layer, dtypes: dict[str, DType], done: dict[str, QuantizedLinear], result: CalibResult) -> None:
    """The layer's tensors as the file takes them, under their HF names: each checkpoint tensor's rounded
    parts joined (fused ones in row order), float-kept linears, replaced norms (HF layout), biases."""
    by_tensor: dict[str, list[str]] = {}
    for name, ls in layer.sources.items():
        by_tensor.setdefault(ls.hf_name(layer.i), []).append(name)
    for hf, parts in by_tensor.items():
        parts.sort(key=lambda n: layer.sources[n].row0 or 0)
        if all(n in done for n in parts):
            result.quantized[hf] = done[parts[0]] if len(parts) == 1 else join_rows([done[n] for n in parts])
        elif not any(dtypes[n].codec.fittable for n in parts):
            w = layer.w[parts[0]] if len(parts) == 1 else torch.cat([layer.w[n] for n in parts])
            result.floats[hf] = w.detach().cpu().numpy()
        else:
            raise QuantconvError(f"{hf}: its parts were planned in different datatypes; give the fused tensor one")
    offset = layer.cfg.norm_offset
    for role, w in layer.changed_norms().items():   # back to the checkpoint's convention: the file adds it again
        w = w.detach().cpu()
        result.floats[layer.arch.role(role).hf_name(layer.i)] = (w - offset if offset else w).numpy()
    for name, b in layer.b.items():
        result.floats[layer.b_hf[name]] = b.detach().cpu().numpy()


@torch.no_grad()
def _process_layer(layer: Layer, dtypes, X: torch.Tensor, rope: Rope, opts: CalibOptions,
                   result: CalibResult, n_layers: int):
    steps = by_stage(opts.algos)
    ctx = LayerContext(layer, dtypes, X, rope, opts, n_layers, info={})
    info, N = ctx.info, X.shape[0]
    if any(alg.float_output for alg, _ in steps["tweak"]):   # taken before any step changes the weights
        ctx.float_out = ctx.forward()
    for alg, cfg in steps["smooth"]:
        alg.step(cfg, ctx)

    layer.act = opts.act_dtype
    act = (lambda t: opts.act_dtype.fake_quantize(t)) if opts.act_dtype else (lambda t: t)
    rounding = steps["round"][0]
    dev = X.device
    done: dict[str, QuantizedLinear] = {}

    def hessian_of(inputs: torch.Tensor) -> Callable[[], torch.Tensor]:
        def hessian() -> torch.Tensor:   # computed only if the rounding step asks (GPTQ, not RTN)
            h = _Hessian(inputs.shape[-1], dev)
            for c in _chunks(N, opts.chunk):
                h.add(act(inputs[c]))
            return h.value()
        return hessian

    def each_chunk(f, into: torch.Tensor | None = None) -> torch.Tensor:
        return _map_chunks(N, opts.chunk, f, into)

    # q, k, v: from the layer's (normed) input
    Xn = each_chunk(lambda c: layer.attn_input(X[c]))
    _quantize(layer, ("attn_q", "attn_k", "attn_v"), hessian_of(Xn), dtypes, rounding, done, info)
    # o: from the attention output of the quantized q/k/v
    A = each_chunk(lambda c: layer.attention(Xn[c], rope), into=Xn)
    _quantize(layer, ("attn_output",), hessian_of(A), dtypes, rounding, done, info)
    Hh = each_chunk(lambda c: layer.attn_output(X[c], A[c]), into=A)   # A's chunk is read before written
    del A, Xn
    Hn = each_chunk(lambda c: layer.mlp_input(Hh[c]))
    _quantize(layer, ("ffn_gate", "ffn_up"), hessian_of(Hn), dtypes, rounding, done, info)
    M = each_chunk(lambda c: layer.mlp_hidden(Hn[c]))
    del Hn
    _quantize(layer, ("ffn_down",), hessian_of(M), dtypes, rounding, done, info)
    out = each_chunk(lambda c: layer.mlp_output(Hh[c], M[c]), into=Hh)
    del M, Hh

    for alg, cfg in steps["tweak"]:
        out = alg.step(cfg, ctx, out)
    if not torch.isfinite(out).all():
        raise QuantconvError(f"decoder layer {layer.i} produced NaN/inf activations after quantization; "
                             "try --algo rtn or a wider --dtype to find the culprit")
    _store(layer, dtypes, done, result)
    return out, info
