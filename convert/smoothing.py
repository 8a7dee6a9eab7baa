"""Per-channel scale migration shared by AWQ and SmoothQuant, folded into the model so the file needs
no extra op: y = W x with x = norm(h) * g becomes y = (W diag(s)) (norm(h) * g / s) — the norm weight g
absorbs 1/s — or, between two linears (up -> down), up's rows are divided by s and down's columns
multiplied. Exact in float; the tests check that the float model's outputs do not change.

Balance points of a layer: the linears grouped by the `input` models.yaml gives them (AWQ's and
llm-compressor's mappings for the llama family):
  attn_norm -> q, k, v       v -> o       ffn_norm -> gate, up       up -> down
A linear -> linear point is used only when the widths match (v -> o needs no GQA, since o's inputs
repeat v's heads otherwise).
"""
from __future__ import annotations

import torch

from quantconv.convert.torch_model import Layer


def mappings(layer: Layer) -> list[tuple[str, tuple[str, ...]]]:
    """(scaled-by, linears) pairs in models.yaml order: scaled-by is a norm ('attn_norm'/'ffn_norm', the
    Layer's attribute) or a linear (its HF name, 'v_proj') whose rows take 1/s."""
    arch = layer.arch
    groups: dict[str, list[str]] = {}
    for role in arch.of_kind("linear"):
        if role.input:
            groups.setdefault(role.input, []).append(role.hf_short)
    out = []
    for prev, linears in groups.items():
        src = arch.role(prev)
        if src.kind == "linear":
            prev = src.hf_short
            if any(layer.w[prev].shape[0] != layer.w[n].shape[1] for n in linears):
                continue
        out.append((prev, tuple(linears)))
    return out


@torch.no_grad()
def fold(layer: Layer, prev: str, linears: tuple[str, ...], s: torch.Tensor) -> None:
    """Apply channel scales s (one per input column of `linears`) in place."""
    s = s.to(layer.w[linears[0]].dtype)
    if prev not in layer.w:   # a norm: the Layer's attribute of that name
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
