"""Does choosing each group's scale sign ("flip") help the codebooks with one extra point on one side?
Measures the weight reconstruction error of every decoder linear layer of the reference model (RTN),
with and without flip, and prints the relative MSE and the share of groups that flip.

    python bench/flip_gain.py [--group 64]
"""
from __future__ import annotations

import argparse

import numpy as np

from quantconv.formats.models import LINEAR
from quantconv.convert.sources import open_source
from quantconv.formats.registry import get_dtype


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--names", nargs="+", default=["fp4-sr", "fp4-sp", "apot4-sp"])
    args = ap.parse_args()
    src = open_source(None)
    names = [n for n in src.tensor_names() if LINEAR.match(src.arch.gguf_name(n))]
    err = {(n, f): 0.0 for n in args.names for f in (False, True)}
    flipped = {n: [0, 0] for n in args.names}
    energy = 0.0
    for hf in names:
        w = src.load(hf)
        energy += float(np.sum(w.astype(np.float64) ** 2))
        for name in args.names:
            for flip in (False, True):
                dt = get_dtype(f"{name}:group={args.group}" + (",flip" if flip else ""))
                err[(name, flip)] += float(np.sum((dt.fake_quantize(w) - w).astype(np.float64) ** 2))
            d = get_dtype(f"{name}:group={args.group},flip").codec.scales(w.reshape(-1, args.group))
            flipped[name][0] += int((d < 0).sum())
            flipped[name][1] += d.size
    print(f"| dtype (g{args.group}) | rel. MSE plain | rel. MSE flip | change | groups flipped |\n|---|---|---|---|---|")
    for name in args.names:
        a, b = err[(name, False)] / energy, err[(name, True)] / energy
        print(f"| {name} | {a:.5f} | {b:.5f} | {100 * (b - a) / a:+.2f}% | {100 * flipped[name][0] / flipped[name][1]:.1f}% |")


if __name__ == "__main__":
    main()
