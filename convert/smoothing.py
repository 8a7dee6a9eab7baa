"""Per-channel scale migration shared by AWQ and SmoothQuant, folded into the model so the file needs
no extra op: y = W x with x = norm(h) * g becomes y = (W diag(s)) (norm(h) * g / s) — the norm weight g
absorbs 1/s — or, between two linears (up -> down), up's rows are divided by s and down's columns
multiplied. Exact in float; the tests check that the float model's outputs do not change.

Balance points of a layer: the linears grouped by the `input` models.yaml gives them (AWQ's and
llm-compressor's mappings for the llama family):
  attn_norm -> q, k, v       v -> o       ffn_norm -> gate, up       up -> down
The norm of a point is the one right before those linears: gemma's post norms (after attention and
MLP) feed the residual stream, not a linear, so they are never one; its ffn_norm is the norm before
the MLP. A norm with a (1 + w) weight is folded as its multiplier (the Layer holds norms as
multipliers). A linear -> linear point is used only when the widths match (v -> o needs no GQA, since
o's inputs repeat v's heads otherwise). The parts of a fused tensor (phi3's q/k/v, gate/up) are
balanced as the logical linears they are.
"""
from __future__ import annotations

import torch

from quantconv.convert.torch_model import Layer
from quantconv.errors import QuantconvError


def mappings(layer: Layer) -> list[tuple[str, tuple[str, ...]]]:
    """(scaled-by, linears) pairs in the roles' order: scaled-by is a norm role ('attn_norm'/'ffn_norm')
    or a linear role ('attn_v') whose rows take 1/s."""
    groups: dict[str, list[str]] = {}
    for name, ls in layer.sources.items():
        if ls.input:
            groups.setdefault(ls.input, []).append(name)
    out = []
    for prev, linears in groups.items():
        if prev in layer.w:
            if any(layer.w[prev].shape[0] != layer.w[n].shape[1] for n in linears):
                continue
        elif layer.norm_feeds(prev) != tuple(linears):
            raise QuantconvError(f"models.yaml: {layer.arch.name}'s linears {', '.join(linears)} take input '{prev}', "
                                 f"but the decoder applies that norm before {', '.join(layer.norm_feeds(prev)) or 'no linear'}")
        out.append((prev, tuple(linears)))
    return out


@torch.no_grad()
def fold(layer: Layer, prev: str, linears: tuple[str, ...], s: torch.Tensor) -> None:
    """Apply channel scales s (one per input column of `linears`) in place."""
    s = s.to(layer.w[linears[0]].dtype)
    if prev not in layer.w:   # a norm (its multiplier)
        layer.norm[prev] = layer.norm[prev] / s
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
