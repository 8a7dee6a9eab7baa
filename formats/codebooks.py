"""The 16-entry tables of the 4-bit codebook datatypes, in code order (docs/layouts.md)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from quantconv.errors import QuantconvError

# QLoRA's NormalFloat4 table (Dettmers et al. 2023), ascending; code 7 is 0.
NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

# The offset NF4's construction uses: the outermost quantile level, (1 - 1/(2*15) + 1 - 1/(2*16)) / 2.
NF4_OFFSET = 0.9677083


@lru_cache(maxsize=None)
def student_float4(nu: float) -> tuple[float, ...]:
    """SF4 (Dotzel et al., ICML'24): NF4's construction with the Student-t(nu) quantile function.

    8 positive quantiles at levels linspace(offset, 0.5, 9)[:-1], 7 negative ones at
    linspace(offset, 0.5, 8)[:-1], and 0; normalised so that the largest is 1.
    """
    if not np.isfinite(nu) or nu <= 0:
        raise QuantconvError(f"sf4 needs a positive, finite degrees-of-freedom nu (got {nu}); try sf4:nu=5")
    from scipy.stats import t  # only needed when a codebook is built, never when a file runs

    positive = t.ppf(np.linspace(NF4_OFFSET, 0.5, 9)[:-1], df=nu)
    negative = -t.ppf(np.linspace(NF4_OFFSET, 0.5, 8)[:-1], df=nu)
    values = np.sort(np.concatenate([positive, negative, [0.0]]))
    return tuple(float(v) for v in values / values.max())


def _e2m1_like(positive: tuple[float, ...], minus_zero: float | None = None) -> tuple[float, ...]:
    """Sign-magnitude code order (bit 3 = sign); the -0 code (8) optionally becomes another value."""
    table = list(positive) + [-v for v in positive]
    table[8] = 0.0 if minus_zero is None else minus_zero
    return tuple(float(v) for v in table)


E2M1_POS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
APOT4_POS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
FP4_LOG_POS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

# name -> (table builder taking the options, description)
FIXED_CODEBOOKS = {
    "nf4": (NF4, "NormalFloat4 (QLoRA)"),
    "fp4": (_e2m1_like(E2M1_POS), "E2M1 minifloat"),
    "fp4-sr": (_e2m1_like(E2M1_POS, 8.0), "E2M1 super-range: the -0 code is +8"),
    "fp4-sp": (_e2m1_like(E2M1_POS, 5.0), "E2M1 super-precision: the -0 code is +5"),
    "apot4": (_e2m1_like(APOT4_POS), "additive powers-of-two 4-bit"),
    "apot4-sp": (_e2m1_like(APOT4_POS, 0.5), "APOT4 with +0.5 in place of -0"),
    "fp4-log": (_e2m1_like(FP4_LOG_POS), "4-bit logarithmic (powers of two)"),
}


class NearestCode:
    """Nearest-value lookup for a table with possible duplicates; a tie goes to the smaller value."""

    def __init__(self, table: tuple[float, ...]):
        values = np.asarray(table, dtype=np.float64)
        order = np.argsort(values, kind="stable")
        sorted_values = values[order]
        keep = np.concatenate([[True], np.diff(sorted_values) > 0])  # first code of equal values
        self.values = sorted_values[keep]
        self.codes = order[keep].astype(np.uint8)
        self.midpoints = (self.values[1:] + self.values[:-1]) / 2

    def __call__(self, y: np.ndarray) -> np.ndarray:
        # side="left": a value equal to a midpoint maps to the lower neighbour
        return self.codes[np.searchsorted(self.midpoints, y, side="left")]
