"""4-bit codebook blocks: an fp16 scale per group and a nibble index into a 16-entry table."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantconv.errors import QuantconvError
from quantconv.formats import bitplanes
from quantconv.formats.codec import FittableCodec
from quantconv.formats.codebooks import NearestCode
from quantconv.formats.elements import fp16_bytes, fp16_from_bytes


@dataclass(frozen=True)
class CodebookCodec(FittableCodec):
    table: tuple[float, ...]
    flip: bool = False          # per-group scale sign puts the largest magnitude on the long side
    _nearest: NearestCode = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_nearest", NearestCode(self.table))

    @property
    def cmax(self) -> float:
        return float(np.max(np.abs(self.table)))

    @property
    def long_side(self) -> int:
        """+1 or -1: the side with more points (then the larger extreme) — fp4-sr's +8, fp4-sp's +5 —
        0 for a symmetric table."""
        t = np.asarray(self.table)
        pos, neg = (int((t > 0).sum()), t.max()), (int((t < 0).sum()), -t.min())
        return 0 if pos == neg else (1 if pos > neg else -1)

    def block_bytes(self, block: int) -> int:
        return 2 + block // 2

    def scales(self, x: np.ndarray) -> np.ndarray:
        """Per-group fp16-representable scale (float32, (n, 1)); exposed for calibrated algorithms."""
        amax_idx = np.abs(x).argmax(axis=1)[:, None]
        peak = np.take_along_axis(x, amax_idx, axis=1)
        d = np.abs(peak) / np.float32(self.cmax)
        if self.flip and self.long_side:
            # with d > 0 the peak lands on the side of its own sign: negate d when that is the short side
            wrong_side = np.sign(peak) == -self.long_side
            d = np.where(wrong_side, -d, d)
        d16 = d.astype(np.float16)
        if not np.all(np.isfinite(d16)):
            raise QuantconvError("a group's values exceed the fp16 scale range (|x| > 65504 * codebook max); "
                                 "use an mx type, whose E8M0 scale has a wider range")
        return d16.astype(np.float32)

    def codes(self, x: np.ndarray, d: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(d == 0, 0.0, x / np.where(d == 0, 1, d))
        return self._nearest(y)

    # --- the split API of FittableCodec (formats/codec.py)
    def fit(self, x: np.ndarray) -> tuple:
        return (self.scales(x.astype(np.float32, copy=False)),)

    def fit_search(self, x: np.ndarray, importance: np.ndarray | None = None,
                   ratios: tuple[float, ...] = tuple(np.linspace(0.7, 1.05, 15))) -> tuple:
        """The group scale that minimises the (weighted) squared rounding error among d_absmax * r —
        a smaller scale gives the many small values finer steps at the price of clipping the peak
        (llama.cpp's IQ4_NL search does the same). importance: per column (e.g. diag(H))."""
        x = x.astype(np.float32, copy=False)
        base = self.scales(x)
        w = np.ones_like(x) if importance is None else np.broadcast_to(importance.astype(np.float32), x.shape)
        table = np.asarray(self.table, dtype=np.float32)
        best_d, best_err = base, None
        for r in ratios:
            d = (base * np.float32(r)).astype(np.float16).astype(np.float32)
            err = (w * (x - d * table[self.codes(x, d)]) ** 2).sum(axis=1, keepdims=True)
            if best_err is None:
                best_d, best_err = d, err
            else:
                better = err < best_err
                best_d, best_err = np.where(better, d, best_d), np.where(better, err, best_err)
        return (best_d,)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        return self.codes(x.astype(np.float32, copy=False), params[0])

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return params[0] * np.asarray(self.table, dtype=np.float32)[codes]

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return np.concatenate([fp16_bytes(params[0]), bitplanes.pack(codes, 4)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        return bitplanes.unpack(data[:, 2:], 4, block), (fp16_from_bytes(data[:, 0:2]),)
