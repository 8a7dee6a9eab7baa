"""The float decoder in torch, one layer at a time, for calibration (GPTQ, AWQ, SmoothQuant, Norm
Tweaking): weights come from a ModelSource in HF layout (split-halves RoPE, q/k not permuted), so only
the layer being processed is in memory.

Written directly from the architecture (RMSNorm, RoPE, grouped-query attention, SwiGLU) rather than
through transformers, so every intermediate a calibration method needs (the input of each linear) is
an explicit step. tests/test_calibration.py checks it against transformers' forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from quantconv.formats.models import Role, all_archs, head_dim, rope_params
from quantconv.errors import QuantconvError


def _linear_roles() -> dict[str, Role]:
    """HF module name (q_proj, ...) -> models.yaml role of the decoder's linears. This module runs one
    layer layout (the llama family's), so every architecture must name its linears alike."""
    archs = list(all_archs().values())
    if len({tuple(r.hf for r in a.of_kind("linear")) for a in archs}) != 1:
        raise QuantconvError("models.yaml: the architectures' linears differ; convert/torch_model.py runs one layout")
    return {r.hf_short: r for r in archs[0].of_kind("linear")}


_LINEAR_ROLES = _linear_roles()
LINEARS = tuple(_LINEAR_ROLES)   # ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def hf_linear_name(i: int, linear: str) -> str:
    """'model.layers.{i}.self_attn.q_proj' for linear 'q_proj' (add .weight / .bias)."""
    return _LINEAR_ROLES[linear].hf_name(i).rpartition(".")[0]


@dataclass
class DecoderConfig:
    hidden: int
    n_layers: int
    n_head: int
    n_kv: int
    head_dim: int
    eps: float
    inv_freq: torch.Tensor      # (head_dim/2,) float64, RoPE scaling folded in

    @classmethod
    def from_source(cls, source) -> "DecoderConfig":
        cfg = source.config
        hd = head_dim(cfg)
        params = rope_params(cfg)
        theta = float(params.get("rope_theta", 10000.0))
        inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
        kind, _ = source.arch.rope_scaling_kind(cfg)
        if kind == "rope_freqs":
            inv = inv / source.arch.extra_tensors(cfg)[source.arch.role("rope_freqs").gguf_name()].astype(np.float64)
        elif kind == "linear":
            inv = inv / float(params["factor"])
        elif kind != "none":
            raise QuantconvError(f"calibration does not model RoPE scaling '{kind}' yet; use --algo rtn for this model")
        return cls(int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"]),
                   int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]), hd,
                   float(cfg.get("rms_norm_eps", 1e-6)), torch.from_numpy(inv))


class Rope:
    """cos/sin tables for positions 0..n-1 (every calibration sequence starts at position 0)."""

    def __init__(self, cfg: DecoderConfig, n: int, device):
        pos = torch.arange(n, dtype=torch.float64)
        ang = torch.outer(pos, cfg.inv_freq)
        self.cos = torch.cat([ang.cos(), ang.cos()], dim=-1).float().to(device)
        self.sin = torch.cat([ang.sin(), ang.sin()], dim=-1).float().to(device)

    def apply(self, x: torch.Tensor) -> torch.Tensor:   # x: (b, heads, t, hd)
        t = x.shape[-2]
        half = x.shape[-1] // 2
        sin = self.sin[:t]
        # x * cos + rotate_half(x) * sin, without materialising rotate_half(x)
        out = x * self.cos[:t]
        out[..., :half].addcmul_(x[..., half:], sin[:, :half], value=-1)
        out[..., half:].addcmul_(x[..., :half], sin[:, half:])
        return out


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class Layer:
    """Float weights of decoder layer i (torch, on `device`), with the forward split into the steps
    calibration needs: attention input, attention core, MLP input, MLP core."""

    def __init__(self, source, cfg: DecoderConfig, i: int, device="cpu"):
        self.cfg, self.i, self.device, self.arch = cfg, i, device, source.arch
        names = set(source.tensor_names())
        t = lambda n: torch.from_numpy(source.load(n)).float().to(device)  # noqa: E731
        arch = source.arch
        self.attn_norm = t(arch.role("attn_norm").hf_name(i))
        self.ffn_norm = t(arch.role("ffn_norm").hf_name(i))
        # keyed by HF module name (q_proj, ...: LINEARS), biases only where the checkpoint has them
        self.w = {r.hf_short: t(r.hf_name(i)) for r in arch.of_kind("linear")}
        self.b = {r.hf_short: t(r.hf_name(i)) for r in arch.of_kind("bias") if r.hf_name(i) in names}
        self.act = None   # an ActDType: the linears' inputs are fake-quantized (--act-dtype)

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

    # -- steps ------------------------------------------------------------------------------------
    def attn_input(self, x):
        return rms_norm(x, self.attn_norm, self.cfg.eps)

    def attention(self, xn, rope: Rope):
        """Attention core: normed input -> the input of o_proj (b, t, n_head * hd)."""
        c = self.cfg
        b, t, _ = xn.shape
        q, k, v = self.linears(("q_proj", "k_proj", "v_proj"), xn)
        q = q.reshape(b, t, c.n_head, c.head_dim).transpose(1, 2)
        k = k.reshape(b, t, c.n_kv, c.head_dim).transpose(1, 2)
        v = v.reshape(b, t, c.n_kv, c.head_dim).transpose(1, 2)
        q, k = rope.apply(q), rope.apply(k)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(c.head_dim),
                                           enable_gqa=c.n_kv != c.n_head)
        return o.transpose(1, 2).reshape(b, t, c.n_head * c.head_dim)

    def step(self, x, rope: Rope, pos: int, cache: dict):
        """One decode position for a batch (generation of self-calibration text), KV cache in `cache`."""
        c = self.cfg
        b = x.shape[0]
        xn = self.attn_input(x)
        q = self.linear("q_proj", xn).view(b, 1, c.n_head, c.head_dim).transpose(1, 2)
        k = self.linear("k_proj", xn).view(b, 1, c.n_kv, c.head_dim).transpose(1, 2)
        v = self.linear("v_proj", xn).view(b, 1, c.n_kv, c.head_dim).transpose(1, 2)
        cos, sin = rope.cos[pos:pos + 1], rope.sin[pos:pos + 1]
        half = c.head_dim // 2
        rot = lambda t: t * cos + torch.cat([-t[..., half:], t[..., :half]], dim=-1) * sin  # noqa: E731
        q, k = rot(q), rot(k)
        cache["k"] = k if "k" not in cache else torch.cat([cache["k"], k], dim=2)
        cache["v"] = v if "v" not in cache else torch.cat([cache["v"], v], dim=2)
        kk, vv = cache["k"], cache["v"]
        if c.n_kv != c.n_head:
            rep = c.n_head // c.n_kv
            kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, kk, vv, scale=1.0 / math.sqrt(c.head_dim))
        h = x + self.linear("o_proj", o.transpose(1, 2).reshape(b, 1, c.n_head * c.head_dim))
        return h + self.linear("down_proj", self.mlp_hidden(self.mlp_input(h)))

    def mlp_input(self, h):
        return rms_norm(h, self.ffn_norm, self.cfg.eps)

    def mlp_hidden(self, hn):
        """SwiGLU: normed input -> the input of down_proj."""
        gate, up = self.linears(("gate_proj", "up_proj"), hn)
        g = F.silu(gate)
        return g * up if torch.is_grad_enabled() else g.mul_(up)   # in place saves a copy, not under autograd

    def forward(self, x, rope: Rope):
        h = x + self.linear("o_proj", self.attention(self.attn_input(x), rope))
        return h + self.linear("down_proj", self.mlp_hidden(self.mlp_input(h)))


class Head:
    """Embedding, final norm and output head (tied or not), for perplexity and self-generated text."""

    def __init__(self, source, cfg: DecoderConfig, device="cpu"):
        self.cfg = cfg
        t = lambda n: torch.from_numpy(source.load(n)).float().to(device)  # noqa: E731
        role = source.arch.role
        self.embed = t(role("token_embd").hf_name())
        self.norm = t(role("output_norm").hf_name())
        self.out = self.embed if source.tied_embeddings else t(role("output").hf_name())

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed[ids]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.norm, self.cfg.eps) @ self.out.T
