"""The float decoder in torch, one layer at a time, for calibration (GPTQ, AWQ, SmoothQuant, Norm
Tweaking): weights come from a ModelSource in HF layout (split-halves RoPE, q/k not permuted), so only
the layer being processed is in memory.

Written directly from the architecture rather than through transformers, so every intermediate a
calibration method needs (the input of each linear) is an explicit step. What a family adds to the
llama layout comes from its ArchSpec (models.yaml) and its config, never from its name: q/k RMSNorm
per head before RoPE, norms with a (1 + w) weight (norm_offset), norms after attention and MLP,
GeGLU (ffn_act), a scaled embedding, query_pre_attn_scalar, logit soft-capping, sliding-window layers
with their own RoPE base, partial rotary, LongRoPE. Fused HF tensors (phi3's qkv_proj, gate_up_proj)
are split into their logical linears here (ArchSpec.parts): calibration sees q, k, v, gate, up as
separate linears, and calibrate.py joins their results back into the file's tensors.
tests/test_calibration.py and tests/test_calib_families.py check it against transformers' forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from quantconv.errors import QuantconvError
from quantconv.formats.models import head_dim, rope_dim, rope_params

# The decoder's linears by role (the llama layout every family maps onto, fused or not)
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class LinearSource:
    """Where logical linear `name` lives in the checkpoint: rows [row0, row1) of the HF tensor of
    role `role` (the whole tensor when row0 is None)."""
    name: str
    role: object                 # formats.models.Role of the checkpoint tensor
    row0: int | None
    row1: int | None
    input: str | None            # the role producing its input (models.yaml `input`)

    def hf_name(self, i: int) -> str:
        return self.role.hf_name(i)


def linear_sources(arch, config: dict) -> dict[str, LinearSource]:
    """Logical linear role -> LinearSource, in LINEARS order: a role of its own, or a part of a fused one
    (models.yaml `split`, rows from ArchSpec.parts)."""
    out = {}
    for role in arch.of_kind("linear"):
        for part, r0, r1 in arch.parts(role.name, config) or [(role.name, None, None)]:
            out[part] = LinearSource(part, role, r0, r1, arch.logical(part).input)
    missing = [n for n in LINEARS if n not in out]
    if missing:
        raise QuantconvError(f"models.yaml: the {arch.name} architecture lacks the linear roles {', '.join(missing)}; "
                             "calibration runs the llama layout (q, k, v, o, gate, up, down), fused or not")
    return {n: out[n] for n in LINEARS}


def _embed_scale(arch, config: dict) -> float:
    """sqrt_hidden (models.yaml validates the choice): transformers casts sqrt(E) to the hidden dtype first."""
    return float(np.float32(math.sqrt(int(config["hidden_size"])))) if arch.embed_scale == "sqrt_hidden" else 1.0


def _inv_freq(dim: int, theta: float) -> np.ndarray:
    return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


@dataclass
class RopeSpec:
    """The RoPE of one kind of layer: rotated dims, inverse frequencies (scaling folded in) and a factor on
    cos/sin. LongRoPE keeps both factor sets: which one applies depends on the sequence length."""
    dim: int
    inv_freq: torch.Tensor                 # (dim/2,) float64
    attn_factor: float = 1.0
    inv_freq_long: torch.Tensor | None = None
    orig_ctx: int = 0                      # LongRoPE: long factors beyond this many positions

    def for_length(self, n: int) -> torch.Tensor:
        """As transformers: the long factors iff the sequence is longer than the original context."""
        return self.inv_freq_long if self.inv_freq_long is not None and n > self.orig_ctx else self.inv_freq


def _rope_spec(source, config: dict, dim: int, local_base: float | None = None) -> RopeSpec:
    """Global layers' RoPE (their scaling included), or with local_base the local layers' (that base, no
    scaling, as llama.cpp and transformers run them)."""
    if local_base is not None:
        return RopeSpec(dim, torch.from_numpy(_inv_freq(dim, local_base)))
    params = rope_params(config)
    inv = _inv_freq(dim, float(params.get("rope_theta", 10000.0)))
    # Llama 3 scaling as the source states it: computed from an HF config, the tensor of a GGUF file
    # (whose rebuilt config has no rope_scaling)
    freqs_role = source.arch.roles.get("rope_freqs")
    freqs = source.extra_gguf_tensors().get(freqs_role.gguf_name()) if freqs_role else None
    if freqs is not None:
        return RopeSpec(dim, torch.from_numpy(inv / freqs.astype(np.float64)))
    kind, _ = source.arch.rope_scaling_kind(config)
    if kind == "none":
        return RopeSpec(dim, torch.from_numpy(inv))
    if kind == "linear":
        return RopeSpec(dim, torch.from_numpy(inv / float(params["factor"])))
    if kind == "longrope":   # transformers' rule for the attention factor (llama.cpp's converter agrees by default)
        orig = int(params.get("original_max_position_embeddings") or config["original_max_position_embeddings"])
        factor = params.get("factor") or int(config["max_position_embeddings"]) / orig
        attn = params.get("attention_factor")
        if attn is None:
            attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
        short, long = (np.asarray(params[k], dtype=np.float64) for k in ("short_factor", "long_factor"))
        if short.shape != inv.shape or long.shape != inv.shape:
            raise QuantconvError(f"config.json's LongRoPE has {short.size}/{long.size} short/long factors; it needs "
                                 f"{inv.size} each (rotary dims / 2)")
        return RopeSpec(dim, torch.from_numpy(inv / short), float(attn), torch.from_numpy(inv / long), orig)
    raise QuantconvError(f"calibration does not model RoPE scaling '{kind}' yet; use --algo rtn for this model")


@dataclass
class DecoderConfig:
    hidden: int
    n_layers: int
    n_head: int
    n_kv: int
    head_dim: int
    eps: float
    rope: RopeSpec                          # global layers
    rope_swa: RopeSpec | None = None        # local (sliding-window) layers; None: as global
    swa_window: int = 0                     # 0: no sliding window
    swa_layers: tuple[bool, ...] = ()       # per layer: True = local
    norm_offset: float = 0.0                # RMSNorm multiplies by (w + norm_offset)
    embed_scale: float = 1.0
    ffn_act: str = "silu"                   # silu | gelu_tanh
    attn_scale: float = 0.0                 # 0: 1/sqrt(head_dim); else query_pre_attn_scalar ** -0.5
    attn_softcap: float = 0.0               # 0: none
    final_softcap: float = 0.0
    config: dict = field(default_factory=dict, repr=False)

    @property
    def inv_freq(self) -> torch.Tensor:
        return self.rope.inv_freq

    def is_local(self, i: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[i]

    @classmethod
    def from_source(cls, source) -> "DecoderConfig":
        cfg, arch = source.config, source.arch
        hd, dim = head_dim(cfg), rope_dim(cfg)
        n_layers = int(cfg["num_hidden_layers"])
        meta = arch.gguf_metadata(cfg)   # the hyper-parameters as the file states them (models.yaml keys)
        key = lambda k: meta.get(f"{arch.gguf_arch}.{k}")  # noqa: E731
        window = int(key("attention.sliding_window") or 0) if arch.sliding_window_pattern else 0
        swa = tuple(bool(s) for s in arch.swa_layers(n_layers)) if window else ()
        local_base = key("rope.freq_base_swa") or key("rope.freq_base")
        return cls(int(cfg["hidden_size"]), n_layers, int(cfg["num_attention_heads"]),
                   int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]), hd,
                   float(cfg.get("rms_norm_eps", 1e-6)), _rope_spec(source, cfg, dim),
                   _rope_spec(source, cfg, dim, float(local_base)) if swa else None, window, swa,
                   float(arch.norm_offset), _embed_scale(arch, cfg), arch.ffn_act,
                   float(key("attention.scale") or 0.0), float(key("attn_logit_softcapping") or 0.0),
                   float(key("final_logit_softcapping") or 0.0), cfg)


class Rope:
    """cos/sin tables for positions 0..n-1 (every calibration sequence starts at position 0), for global
    layers and, where the model has them, local ones."""

    def __init__(self, cfg: DecoderConfig, n: int, device):
        self.cos, self.sin = self._tables(cfg.rope, n, device)
        self.dim = cfg.rope.dim
        self.swa = self._tables(cfg.rope_swa, n, device) if cfg.rope_swa is not None else (self.cos, self.sin)

    @staticmethod
    def _tables(spec: RopeSpec, n: int, device):
        pos = torch.arange(n, dtype=torch.float64)
        ang = torch.outer(pos, spec.for_length(n))
        cos, sin = ang.cos(), ang.sin()
        if spec.attn_factor != 1.0:
            cos, sin = cos * spec.attn_factor, sin * spec.attn_factor
        return (torch.cat([cos, cos], dim=-1).float().to(device), torch.cat([sin, sin], dim=-1).float().to(device))

    def tables(self, local: bool):
        return self.swa if local else (self.cos, self.sin)

    def apply(self, x: torch.Tensor, local: bool = False, pos: int = 0) -> torch.Tensor:
        """x: (b, heads, t, hd) at positions pos..pos+t-1; only the first `dim` dims of each head rotate."""
        cos, sin = self.tables(local)
        t = x.shape[-2]
        cos, sin = cos[pos:pos + t], sin[pos:pos + t]
        if self.dim < x.shape[-1]:
            return torch.cat([_rotate(x[..., :self.dim], cos, sin), x[..., self.dim:]], dim=-1)
        return _rotate(x, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    # x * cos + rotate_half(x) * sin, without materialising rotate_half(x)
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin[:, :half], value=-1)
    out[..., half:].addcmul_(x[..., :half], sin[:, half:])
    return out


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """w: the multiplier (the HF weight plus the arch's norm_offset, added when loading)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class Layer:
    """Float weights of decoder layer i (torch, on `device`), with the forward split into the steps
    calibration needs: attention input, attention core, attention output, MLP input, MLP core, MLP
    output. Linears (`w`, `b`) and norms (`norm`, as multipliers) are keyed by role."""

    def __init__(self, source, cfg: DecoderConfig, i: int, device="cpu"):
        self.cfg, self.i, self.device, self.arch = cfg, i, device, source.arch
        names = set(source.tensor_names())
        t = lambda n: torch.from_numpy(source.load(n)).float().to(device)  # noqa: E731
        arch = source.arch
        # every norm of the layer the checkpoint has (attn/ffn norms, q/k norms, post norms)
        self.norm: dict[str, torch.Tensor] = {}
        for r in arch.of_kind("norm"):
            if r.per_layer and r.hf_name(i) in names:
                self.norm[r.name] = t(r.hf_name(i)) + cfg.norm_offset if cfg.norm_offset else t(r.hf_name(i))
        for need in ("attn_norm", "ffn_norm"):
            if need not in self.norm:
                raise QuantconvError(f"layer {i} lacks its {need} tensor; the checkpoint is incomplete: re-download it")
        self.loaded_norms = dict(self.norm)   # to tell which norms a step replaced
        self.sources = linear_sources(arch, cfg.config or source.config)
        self.w: dict[str, torch.Tensor] = {}
        fused: dict[str, torch.Tensor] = {}
        for name, ls in self.sources.items():
            hf = ls.hf_name(i)
            if hf not in fused:
                fused[hf] = t(hf)
            self.w[name] = fused[hf] if ls.row0 is None else fused[hf][ls.row0:ls.row1]
        del fused
        # biases only where the checkpoint has them, keyed by their linear's role
        self.b: dict[str, torch.Tensor] = {}
        self.b_hf: dict[str, str] = {}   # their checkpoint names
        for r in arch.of_kind("bias"):
            hf = r.hf_name(i)
            if hf in names:
                owner = arch.role_of_hf(hf.rpartition(".")[0] + ".weight")
                if owner is None or owner[0].name not in self.w:
                    raise QuantconvError(f"{hf}: a bias of a fused linear; calibration does not split biases yet")
                self.b[owner[0].name], self.b_hf[owner[0].name] = t(hf), hf
        self.local = cfg.is_local(i)
        self.act = None   # an ActDType: the linears' inputs are fake-quantized (--act-dtype)

    @staticmethod
    def norm_feeds(role: str) -> tuple[str, ...]:
        """The linears whose input this norm scales in the forward below (post norms: none)."""
        return {"attn_norm": ("attn_q", "attn_k", "attn_v"), "ffn_norm": ("ffn_gate", "ffn_up")}.get(role, ())

    def changed_norms(self) -> dict[str, torch.Tensor]:
        """Norms a step replaced (scale folding, tweaking), as multipliers."""
        return {r: w for r, w in self.norm.items() if w is not self.loaded_norms[r]}

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.linears((name,), x)[0]

    def linears(self, names: tuple[str, ...], x: torch.Tensor) -> list[torch.Tensor]:
        """Linears that share input x, as one matmul (one wider GEMM is faster than several on CPU, and the
        input is fake-quantized once)."""
        if self.act is not None:
            x = self.act.fake_quantize(x)
        w = self.w[names[0]] if len(names) == 1 else torch.cat([self.w[n] for n in names])
        y = F.linear(x, w)
        outs = list(y.split([self.w[n].shape[0] for n in names], dim=-1))
        return [o + self.b[n] if n in self.b else o for n, o in zip(names, outs)]

    def _normed(self, role: str, x: torch.Tensor) -> torch.Tensor:
        w = self.norm.get(role)
        return x if w is None else rms_norm(x, w, self.cfg.eps)

    # -- steps ------------------------------------------------------------------------------------
    def attn_input(self, x):
        return rms_norm(x, self.norm["attn_norm"], self.cfg.eps)

    def _qkv(self, xn, rope: Rope, pos: int = 0):
        c = self.cfg
        b, t, _ = xn.shape
        q, k, v = self.linears(("attn_q", "attn_k", "attn_v"), xn)
        # q/k norms (where the family has them) are per head, before RoPE
        q = self._normed("attn_q_norm", q.reshape(b, t, c.n_head, c.head_dim)).transpose(1, 2)
        k = self._normed("attn_k_norm", k.reshape(b, t, c.n_kv, c.head_dim)).transpose(1, 2)
        v = v.reshape(b, t, c.n_kv, c.head_dim).transpose(1, 2)
        return rope.apply(q, self.local, pos), rope.apply(k, self.local, pos), v

    def _scale(self) -> float:
        return self.cfg.attn_scale or 1.0 / math.sqrt(self.cfg.head_dim)

    def _attend(self, q, k, v, pos: int = 0):
        """Attention of queries at positions pos.. over keys at 0..: causal, within the sliding window on
        local layers, soft-capped where the family caps."""
        c = self.cfg
        tq, tk = q.shape[-2], k.shape[-2]
        window = c.swa_window if self.local else 0
        if not c.attn_softcap and not window:
            if tq == tk:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self._scale(),
                                                      enable_gqa=c.n_kv != c.n_head)
        qpos = torch.arange(pos, pos + tq, device=q.device)[:, None]
        kpos = torch.arange(tk, device=q.device)[None, :]
        allowed = kpos <= qpos
        if window:
            allowed &= qpos - kpos < window
        if not c.attn_softcap:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self._scale(),
                                                  enable_gqa=c.n_kv != c.n_head)
        if c.n_kv != c.n_head:
            k = k.repeat_interleave(c.n_head // c.n_kv, dim=1)
            v = v.repeat_interleave(c.n_head // c.n_kv, dim=1)
        s = torch.matmul(q, k.transpose(-1, -2)) * self._scale()
        s = torch.tanh(s / c.attn_softcap) * c.attn_softcap
        s = s.masked_fill(~allowed, float("-inf"))
        return torch.matmul(torch.softmax(s, dim=-1), v)

    def attention(self, xn, rope: Rope):
        """Attention core: normed input -> the input of the output projection (b, t, n_head * hd)."""
        c = self.cfg
        b, t, _ = xn.shape
        q, k, v = self._qkv(xn, rope)
        o = self._attend(q, k, v)
        return o.transpose(1, 2).reshape(b, t, c.n_head * c.head_dim)

    def attn_output(self, x, a):
        """Residual stream after attention: x + (post-norm of) the output projection of a."""
        return x + self._normed("attn_post_norm", self.linear("attn_output", a))

    def step(self, x, rope: Rope, pos: int, cache: dict):
        """One decode position for a batch (generation of self-calibration text), KV cache in `cache`."""
        c = self.cfg
        b = x.shape[0]
        xn = self.attn_input(x)
        # one matmul per linear and the explicit rotation: the self-calibration text of the llama family
        # stays exactly what it has been
        q = self._normed("attn_q_norm", self.linear("attn_q", xn).view(b, 1, c.n_head, c.head_dim)).transpose(1, 2)
        k = self._normed("attn_k_norm", self.linear("attn_k", xn).view(b, 1, c.n_kv, c.head_dim)).transpose(1, 2)
        v = self.linear("attn_v", xn).view(b, 1, c.n_kv, c.head_dim).transpose(1, 2)
        cos, sin = (t[pos:pos + 1] for t in rope.tables(self.local))
        d = rope.dim
        half = d // 2
        rot = lambda t: t * cos + torch.cat([-t[..., half:], t[..., :half]], dim=-1) * sin  # noqa: E731
        if d < c.head_dim:
            q, k = (torch.cat([rot(t[..., :d]), t[..., d:]], dim=-1) for t in (q, k))
        else:
            q, k = rot(q), rot(k)
        cache["k"] = k if "k" not in cache else torch.cat([cache["k"], k], dim=2)
        cache["v"] = v if "v" not in cache else torch.cat([cache["v"], v], dim=2)
        kk, vv = cache["k"], cache["v"]
        if c.attn_softcap or (self.local and c.swa_window):
            o = self._attend(q, kk, vv, pos)
        else:
            if c.n_kv != c.n_head:
                rep = c.n_head // c.n_kv
                kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
            o = F.scaled_dot_product_attention(q, kk, vv, scale=self._scale())
        h = self.attn_output(x, o.transpose(1, 2).reshape(b, 1, c.n_head * c.head_dim))
        return self.mlp_output(h, self.mlp_hidden(self.mlp_input(h)))

    def mlp_input(self, h):
        return rms_norm(h, self.norm["ffn_norm"], self.cfg.eps)

    def mlp_hidden(self, hn):
        """Gated MLP (SwiGLU or GeGLU): normed input -> the input of the down projection."""
        gate, up = self.linears(("ffn_gate", "ffn_up"), hn)
        g = F.silu(gate) if self.cfg.ffn_act == "silu" else F.gelu(gate, approximate="tanh")
        return g * up if torch.is_grad_enabled() else g.mul_(up)   # in place saves a copy, not under autograd

    def mlp_output(self, h, m):
        """Residual stream after the MLP: h + (post-norm of) the down projection of m."""
        return h + self._normed("ffn_post_norm", self.linear("ffn_down", m))

    def forward(self, x, rope: Rope):
        h = self.attn_output(x, self.attention(self.attn_input(x), rope))
        return self.mlp_output(h, self.mlp_hidden(self.mlp_input(h)))


class Head:
    """Embedding, final norm and output head (tied or not), for perplexity and self-generated text."""

    def __init__(self, source, cfg: DecoderConfig, device="cpu"):
        self.cfg, self._source, self._device = cfg, source, device
        role = source.arch.role
        self.embed = self._load(role("token_embd").hf_name())
        self.norm = self._load(role("output_norm").hf_name()) + cfg.norm_offset
        self._out = self.embed if source.tied_embeddings else None

    def _load(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self._source.load(name)).float().to(self._device)

    @property
    def out(self) -> torch.Tensor:
        """The output head, loaded on first use (calibration only embeds: an untied head, vocab x hidden,
        is never read then)."""
        if self._out is None:
            self._out = self._load(self._source.arch.role("output").hf_name())
        return self._out

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed[ids]
        return x * self.cfg.embed_scale if self.cfg.embed_scale != 1.0 else x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        y = rms_norm(x, self.norm, self.cfg.eps) @ self.out.T
        if self.cfg.final_softcap:
            y = torch.tanh(y / self.cfg.final_softcap) * self.cfg.final_softcap
        return y


@torch.no_grad()
def embed_ids(source, cfg: DecoderConfig, ids: torch.Tensor, device, rows: int = 16384) -> torch.Tensor:
    """The (scaled) embeddings of ids (samples, tokens) on `device`, as Head.embed_tokens gives them, with
    the table read `rows` rows at a time where the source reads row ranges: calibration never needs a
    128k x 3072 table (1.5 GB of float32) whole in host memory."""
    from quantconv.convert.sources import ModelSource

    name = source.arch.role("token_embd").hf_name()
    n = source.shape(name)[0]
    ids = ids.to(device)
    if int(ids.max()) >= n or int(ids.min()) < 0:
        raise QuantconvError(f"calibration token ids reach {int(ids.max())}, past the embedding's {n} rows; "
                             "the tokenizer does not belong to this model")
    chunked = type(source).load_rows is not ModelSource.load_rows   # else each range would read it all
    x = None
    for a in range(0, n, rows if chunked else n):
        b = min(n, a + (rows if chunked else n))
        sel = (ids >= a) & (ids < b)
        if not sel.any():
            continue
        t = torch.from_numpy(source.load_rows(name, a, b) if chunked else source.load(name)).float().to(device)
        if x is None:
            x = torch.empty(*ids.shape, t.shape[1], dtype=torch.float32, device=device)
        x[sel] = t[ids[sel] - a]
        del t
    return x * cfg.embed_scale if cfg.embed_scale != 1.0 else x

