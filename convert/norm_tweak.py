"""Norm Tweaking (Li et al., 2023): after a decoder layer is quantized, tune only its RMSNorm weights so
that the quantized layer's output matches the float layer's in per-channel mean and variance — the
paper's channel-wise distribution loss

    L = 1/C * sum_c ( (mu_f,c - mu_q,c)^2 + (var_f,c - var_q,c)^2 )

over the calibration tokens — with Adam for one pass over the calibration samples.

Learning rate: the paper grid-searches a base rate and scales it per layer; we use
lr_l = lr * (1 + l / L) (later layers, whose errors have accumulated, move further). A tweak is kept
only if it lowers the layer's loss on the calibration data (measured before and after).
"""
from __future__ import annotations

import torch

from quantconv.convert.torch_model import Layer, Rope


def distribution_loss(yq: torch.Tensor, yf: torch.Tensor) -> torch.Tensor:
    yq, yf = yq.reshape(-1, yq.shape[-1]), yf.reshape(-1, yf.shape[-1])
    return ((yq.mean(0) - yf.mean(0)).pow(2) + (yq.var(0) - yf.var(0)).pow(2)).mean()


def _loss_over(layer: Layer, X: torch.Tensor, Yf: torch.Tensor, rope: Rope, chunk: int, forward) -> float:
    with torch.no_grad():
        return sum(distribution_loss(forward(layer, X[i:i + chunk], rope), Yf[i:i + chunk]).item()
                   for i in range(0, X.shape[0], chunk))


def tweak(layer: Layer, X: torch.Tensor, Yf: torch.Tensor, rope: Rope, forward, lr: float = 1e-5,
          n_layers: int = 1, chunk: int = 4, epochs: int = 1) -> tuple[float, float]:
    """Tune the layer's norms in place (every norm it has: before and, where the family has them, after
    attention and MLP, q/k norms; as multipliers, so a (1 + w) norm moves like any other);
    `forward(layer, x, rope)` is the quantized layer's forward (activation quantization included).
    Returns (loss before, loss after)."""
    before = _loss_over(layer, X, Yf, rope, chunk, forward)
    saved = dict(layer.norm)
    params = [layer.norm[r].clone().requires_grad_(True) for r in saved]
    layer.norm.update(zip(saved, params))
    opt = torch.optim.Adam(params, lr=lr * (1 + layer.i / max(1, n_layers)))
    for _ in range(epochs):
        for i in range(0, X.shape[0], chunk):
            opt.zero_grad()
            loss = distribution_loss(forward(layer, X[i:i + chunk], rope), Yf[i:i + chunk])
            loss.backward()
            opt.step()
    layer.norm.update({r: p.detach() for r, p in zip(saved, params)})
    after = _loss_over(layer, X, Yf, rope, chunk, forward)
    if not after < before:
        layer.norm.update(saved)
        after = before
    return before, after
