"""Element formats shared by the MX, block-minifloat and codebook families.

A minifloat is ``s | exp | mant`` with bias ``2^(exp-1) - 1`` and subnormals; the OCP MX element
types are minifloats with a few special codes. Values are computed in float64, where every
power-of-two scaling and every rounding below is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantconv.errors import QuantconvError


@dataclass(frozen=True)
class Minifloat:
    name: str
    ebits: int
    mbits: int
    emax: int          # exponent of the largest binade (unbiased)
    max_value: float

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def bias(self) -> int:
        return (1 << (self.ebits - 1)) - 1

    def quantize(self, y: np.ndarray) -> np.ndarray:
        """Round to nearest even, saturating at +-max; returns codes (uint8). Zero is always +0."""
        y = np.asarray(y, dtype=np.float64)
        mag = np.abs(y)
        min_normal_exp = 1 - self.bias
        _, exp = np.frexp(mag)                      # mag = m * 2^exp, m in [0.5, 1)
        exp = np.maximum(exp - 1, min_normal_exp)   # binade of mag, subnormals share the lowest
        quantum = np.ldexp(1.0, exp - self.mbits)
        r = np.minimum(np.rint(mag / quantum) * quantum, self.max_value)
        return self.encode(r, (y < 0) & (r > 0))

    def encode(self, r: np.ndarray, negative: np.ndarray) -> np.ndarray:
        """Exact magnitudes on the grid -> codes."""
        min_normal_exp = 1 - self.bias
        _, exp = np.frexp(r)
        exp = exp - 1
        normal = r >= np.ldexp(1.0, min_normal_exp)
        e_field = np.where(normal, exp + self.bias, 0)
        m_unit = np.ldexp(1.0, np.where(normal, exp, min_normal_exp) - self.mbits)
        m_field = np.rint(r / m_unit).astype(np.int64) - np.where(normal, 1 << self.mbits, 0)
        code = (e_field.astype(np.int64) << self.mbits) | m_field
        code |= negative.astype(np.int64) << (self.ebits + self.mbits)
        return code.astype(np.uint8)

    def decode(self, code: np.ndarray) -> np.ndarray:
        code = code.astype(np.int64)
        sign = np.where((code >> (self.ebits + self.mbits)) & 1, -1.0, 1.0)
        e_field = (code >> self.mbits) & ((1 << self.ebits) - 1)
        m_field = code & ((1 << self.mbits) - 1)
        mant = np.where(e_field > 0, (1 << self.mbits) + m_field, m_field).astype(np.float64)
        exp = np.where(e_field > 0, e_field - self.bias, 1 - self.bias) - self.mbits
        return sign * np.ldexp(mant, exp) + 0.0   # "+ 0.0" turns the -0 code into +0, as ggml decodes it

    def values(self) -> np.ndarray:
        return self.decode(np.arange(1 << self.bits))


def minifloat(ebits: int, mbits: int, name: str | None = None) -> Minifloat:
    """A minifloat whose every code is finite (E2M1, E2M3, E3M2 and the block-minifloat family)."""
    bias = (1 << (ebits - 1)) - 1
    emax = (1 << ebits) - 1 - bias
    max_value = (2.0 - 2.0 ** -mbits) * 2.0 ** emax
    return Minifloat(name or f"e{ebits}m{mbits}", ebits, mbits, emax, max_value)


E2M1 = minifloat(2, 1, "e2m1")
E2M3 = minifloat(2, 3, "e2m3")
E3M2 = minifloat(3, 2, "e3m2")
# E4M3 "FN": exponent field 15 is a normal binade except its all-ones mantissa (NaN) -> max 448.
E4M3 = Minifloat("e4m3", 4, 3, 8, 448.0)
# E5M2: IEEE-like, exponent field 31 is inf/NaN -> max 57344.
E5M2 = Minifloat("e5m2", 5, 2, 15, 57344.0)


# --- scale encodings ---------------------------------------------------------------------------

def e8m0_exponent(amax: np.ndarray, emax_elem: int) -> np.ndarray:
    """OCP MX shared scale byte: floor(log2 amax) - emax_elem + 127, clamped; 0 for all-zero blocks."""
    _, exp = np.frexp(np.asarray(amax, dtype=np.float64))
    e = np.where(amax > 0, exp - 1 - emax_elem + 127, 0)
    return np.clip(e, 0, 254).astype(np.uint8)


def e8m0_value(e: np.ndarray) -> np.ndarray:
    """2^(e-127); the NaN byte 255 means a damaged file."""
    if np.any(e == 255):
        raise QuantconvError("a block's E8M0 scale is 255 (NaN): the tensor data is damaged; re-export the file")
    return np.ldexp(1.0, e.astype(np.int64) - 127)


def fp16_bytes(x: np.ndarray) -> np.ndarray:
    """(n,) or (n,1) float -> (n, 2) uint8 little-endian binary16; a scale beyond fp16's range is refused."""
    with np.errstate(over="ignore"):
        h = np.asarray(x, dtype=np.float16)
    if not np.all(np.isfinite(h)):
        raise QuantconvError("a block's scale exceeds the fp16 range (values beyond ~65504 x the format's "
                             "largest code); keep this tensor in bf16/f32 or use an mx type (E8M0 scales)")
    return np.ascontiguousarray(h.reshape(-1, 1)).view(np.uint8)


def fp16_from_bytes(b: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 -> (n, 1) float32; an inf/NaN scale means a damaged file."""
    d = np.ascontiguousarray(b).view(np.float16).astype(np.float32).reshape(-1, 1)
    if not np.all(np.isfinite(d)):
        raise QuantconvError("a block's fp16 scale is inf or NaN: the tensor data is damaged; re-export the file")
    return d
