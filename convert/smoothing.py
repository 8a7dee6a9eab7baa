"""Per-channel scale migration shared by AWQ and SmoothQuant, folded into the model so the file needs
no extra op: y = W x with x = norm(h) * g becomes y = (W diag(s)) (norm(h) * g / s) — the norm weight g
absorbs 1/s — or, between two linears (up -> down), up's rows are divided by s and down's columns
multiplied. Exact in float; the tests check that the float model's outputs do not change.

Balance points of a llama-family layer (AWQ's and llm-compressor's mappings):
  attn_norm -> q, k, v       ffn_norm -> gate, up       up -> down
  v -> o only when v and o have the same width (no GQA), since o's inputs repeat v's heads otherwise.
"""
from __future__ import annotations

import torch

from quantconv.convert.torch_model import Layer


def mappings(layer: Layer) -> list[tuple[str, tuple[str, ...]]]:
    """(scaled-by, linears) pairs: scaled-by is a norm ('attn_norm'/'ffn_norm') or a linear whose rows
    take 1/s."""
    out = [("attn_norm", ("q_proj", "k_proj", "v_proj")), ("ffn_norm", ("gate_proj", "up_proj")),
           ("up_proj", ("down_proj",))]
    if layer.w["v_proj"].shape[0] == layer.w["o_proj"].shape[1]:
        out.insert(1, ("v_proj", ("o_proj",)))
    return out


@torch.no_grad()
def fold(layer: Layer, prev: str, linears: tuple[str, ...], s: torch.Tensor) -> None:
    """Apply channel scales s (one per input column of `linears`) in place."""
    s = s.to(layer.w[linears[0]].dtype)
    if prev in ("attn_norm", "ffn_norm"):
        setattr(layer, prev, getattr(layer, prev) / s)
    else:
        layer.w[prev] = layer.w[prev] / s[:, None]
        if prev in layer.b:
            layer.b[prev] = layer.b[prev] / s
    for name in linears:
        layer.w[name] = layer.w[name] * s[None, :]


def smoothquant_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant: s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha), over all linears sharing the input."""
    w_absmax = torch.stack([w.abs().amax(0) for w in weights]).amax(0)
    s = act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)
