"""AWQ (Lin et al., 2024): activation-aware per-channel scales (grid search over alpha in s = mean|x|^alpha)
and weight clipping (grid search over the clip ratio per output row and group), both judged by the
error of the quantized linears' outputs on calibration inputs. The scales are folded into the
preceding norm / linear (smoothing.fold), so the exported file needs no extra op; AWQ can run before
GPTQ (awq+gptq), which then quantizes the scaled and clipped weights.
"""
from __future__ import annotations

import numpy as np
import torch

from quantconv.convert.smoothing import fold
from quantconv.convert.torch_model import Layer
from quantconv.formats.registry import DType


def fake_quant(w: torch.Tensor, dtype: DType) -> torch.Tensor:
    return torch.from_numpy(dtype.fake_quantize(w.detach().float().cpu().numpy())).to(w.device)


@torch.no_grad()
def search_scale(layer: Layer, prev: str, linears: tuple[str, ...], x: torch.Tensor,
                 dtypes: dict[str, DType], n_grid: int = 20) -> tuple[float, torch.Tensor]:
    """Best (alpha, s) for the linears sharing input x (tokens, cols); alpha = 0 means no scaling."""
    ws = [layer.w[n] for n in linears]
    ref = torch.cat([x @ w.T for w in ws], dim=1)
    x_mean = x.abs().mean(0)
    best = (float("inf"), 0.0, torch.ones_like(x_mean))
    for k in range(n_grid):
        alpha = k / n_grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        out = torch.cat([x @ (fake_quant(w * s, dtypes[n]) / s).T for w, n in zip(ws, linears)], dim=1)
        err = (out - ref).pow(2).mean().item()
        if err < best[0]:
            best = (err, alpha, s)
    return best[1], best[2]


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, dtype: DType, n_grid: int = 20, max_shrink: float = 0.5,
                n_tokens: int = 512) -> torch.Tensor:
    """w clipped per (row, group) to the max |value| that minimises the group's output error."""
    rows, cols = w.shape
    g = min(dtype.block_for(cols), cols)
    x = subsample(x, n_tokens)
    xg = x.view(x.shape[0], cols // g, g)                       # (t, groups, g)
    wg = w.view(rows, cols // g, g)                              # (rows, groups, g)
    ref = torch.einsum("tkg,rkg->rtk", xg, wg)
    org_max = wg.abs().amax(-1, keepdim=True)
    best_max, best_err = org_max.clone(), torch.full_like(org_max[..., 0], float("inf"))
    for k in range(int(max_shrink * n_grid)):
        max_val = org_max * (1 - k / n_grid)
        cur = torch.maximum(torch.minimum(wg, max_val), -max_val)
        q = fake_quant(cur.reshape(rows, cols), dtype).view(rows, cols // g, g)
        err = (torch.einsum("tkg,rkg->rtk", xg, q) - ref).pow(2).mean(1)   # (rows, groups)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better[..., None], max_val, best_max)
    return torch.maximum(torch.minimum(wg, best_max), -best_max).reshape(rows, cols)


def apply_awq_scales(layer: Layer, inputs: dict[str, torch.Tensor], dtypes: dict[str, DType],
                     n_grid: int = 20) -> dict[str, float]:
    """Search and fold the scale of each balance point given its input (a sub-sample of calibration
    tokens, computed by the caller from the layer as already scaled). Returns alpha per point."""
    from quantconv.convert.smoothing import mappings

    chosen = {}
    for prev, linears in mappings(layer):
        if any(not dtypes[n].codec.fittable for n in linears):
            continue   # a float-kept linear: nothing to protect
        x = inputs[linears[0]]()
        alpha, s = search_scale(layer, prev, linears, x, dtypes, n_grid)
        if alpha > 0:
            fold(layer, prev, linears, s)
        chosen[prev] = alpha
    return chosen


def clip_weights(layer: Layer, inputs: dict[str, torch.Tensor], dtypes: dict[str, DType]) -> None:
    """AWQ's clipping for every linear but q/k (whose errors the softmax amplifies unevenly)."""
    for name in ("attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        if dtypes[name].codec.fittable:
            layer.w[name] = search_clip(layer.w[name], inputs[name](), dtypes[name])


def subsample(x: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n token rows of x (tokens, cols), evenly spread."""
    if x.shape[0] <= n:
        return x
    idx = np.linspace(0, x.shape[0] - 1, n).round().astype(np.int64)
    return x[torch.from_numpy(idx)]
