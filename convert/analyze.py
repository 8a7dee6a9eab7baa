"""`quantconv analyze`: how Student-t are a model's weights (and activations)? The SF4 paper's analysis:
fit a Student's t (location 0, degrees of freedom nu, scale) to every decoder linear weight — and, given
calibration text, to the inputs of those linears — and compare with a normal fit. Gives a table, a PNG
of histograms with the fitted t and normal densities, and the median nu that `--dtype sf4:nu=auto` uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_FIT_VALUES = 100_000      # a fixed-seed sample of each tensor: t.fit is O(n) per iteration


@dataclass
class Fit:
    name: str
    kind: str            # weight | activation
    nu: float
    scale: float
    std: float
    t_loglik: float      # mean log-likelihood per value under the t fit
    normal_loglik: float
    sample: np.ndarray


def fit_t(name: str, kind: str, values: np.ndarray, seed: int = 0) -> Fit:
    from scipy import stats

    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size > MAX_FIT_VALUES:
        x = np.random.default_rng(seed).choice(x, MAX_FIT_VALUES, replace=False)
    nu, _, scale = stats.t.fit(x, floc=0.0)
    std = float(x.std())
    return Fit(name, kind, float(nu), float(scale), std,
               float(stats.t.logpdf(x, nu, 0.0, scale).mean()), float(stats.norm.logpdf(x, 0.0, std).mean()), x)


def weight_fits(source, progress=None) -> list[Fit]:
    fits = []
    names = [n for n in source.tensor_names() if source.arch.is_linear(source.arch.gguf_name(n))]
    for i, name in enumerate(names):
        fits.append(fit_t(source.arch.gguf_name(name), "weight", source.load(name)))
        if progress:
            progress(i + 1, len(names))
    return fits


def activation_fits(source, calib: str, nsamples: int = 4, seqlen: int = 512, layers: list[int] | None = None) -> list[Fit]:
    """t fits of the inputs of each layer's attention (q/k/v) and MLP (gate/up) and down_proj."""
    import torch

    from quantconv.convert.calib import calibration_ids
    from quantconv.convert.torch_model import DecoderConfig, Head, Layer, Rope

    cfg = DecoderConfig.from_source(source)
    ids = calibration_ids(calib, source, nsamples, seqlen)
    rope = Rope(cfg, seqlen, "cpu")
    fits = []
    with torch.no_grad():
        x = Head(source, cfg).embed_tokens(ids)
        for i in range(cfg.n_layers):
            layer = Layer(source, cfg, i)
            if layers is None or i in layers:
                xn = layer.attn_input(x)
                h = layer.attn_output(x, layer.attention(xn, rope))
                hn = layer.mlp_input(h)
                for what, a in (("attn_in", xn), ("mlp_in", hn), ("down_in", layer.mlp_hidden(hn))):
                    fits.append(fit_t(f"blk.{i}.{what}", "activation", a.numpy()))
            x = layer.forward(x, rope)
    return fits


def median_nu(fits: list[Fit]) -> float:
    return float(np.median([f.nu for f in fits if f.kind == "weight"]))


def plot_fits(fits: list[Fit], path: Path, max_panels: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    chosen = fits if len(fits) <= max_panels else [fits[int(i)] for i in np.linspace(0, len(fits) - 1, max_panels)]
    cols = 4
    rows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, f in zip(axes.flat, chosen):
        lim = np.quantile(np.abs(f.sample), 0.999)
        grid = np.linspace(-lim, lim, 400)
        ax.hist(f.sample, bins=200, range=(-lim, lim), density=True, color="0.75")
        ax.plot(grid, stats.t.pdf(grid, f.nu, 0, f.scale), label=f"t, nu={f.nu:.1f}")
        ax.plot(grid, stats.norm.pdf(grid, 0, f.std), ls="--", label="normal")
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-3 / max(lim, 1e-12))
        ax.set_title(f"{f.name} ({f.kind})", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
