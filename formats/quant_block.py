"""Block floating point and block logarithmic formats ("Revisiting Block-based Quantisation",
Zhang et al., EMNLP'23): one shared 8-bit exponent per block, then sign-magnitude element codes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantconv.formats import bitplanes
from quantconv.formats.codec import FittableCodec
from quantconv.formats.codebooks import NearestCode
from quantconv.formats.elements import e8m0_value


def _floor_log2(amax: np.ndarray) -> np.ndarray:
    _, exp = np.frexp(amax.astype(np.float64))
    return exp - 1


@dataclass(frozen=True)
class BFPCodec(FittableCodec):
    """Elements of `mant` bits: a sign and (mant-1) magnitude bits scaled by 2^(E-(mant-1)), amax < 2^E."""
    mant: int

    def block_bytes(self, block: int) -> int:
        return 1 + bitplanes.packed_bytes(self.mant, block)

    # fit / encode / decode / pack: see FittableCodec. Params: (shared exponent byte,).
    def fit(self, x: np.ndarray) -> tuple:
        amax = np.abs(x.astype(np.float64)).max(axis=1, keepdims=True)
        big_e = np.clip(_floor_log2(amax) + 1, -127, 127)
        return (np.where(amax > 0, big_e + 127, 0).astype(np.uint8),)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        x = x.astype(np.float64)
        mag_bits = self.mant - 1
        step = np.ldexp(1.0, params[0].astype(np.int64) - 127 - mag_bits)
        mag = np.minimum(np.rint(np.abs(x) / step), (1 << mag_bits) - 1).astype(np.uint8)
        return mag | (((x < 0) & (mag > 0)).astype(np.uint8) << np.uint8(mag_bits))

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        mag_bits = self.mant - 1
        mag = (codes & ((1 << mag_bits) - 1)).astype(np.float64)
        sign = np.where(codes >> mag_bits, -1.0, 1.0)
        return (sign * mag * e8m0_value(params[0]) * 2.0 ** -mag_bits + 0.0).astype(np.float32)  # +0 for "-0"

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return np.concatenate([params[0], bitplanes.pack(codes, self.mant)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        return bitplanes.unpack(data[:, 1:], self.mant, block), (data[:, :1],)


@dataclass(frozen=True)
class BlockLogCodec(FittableCodec):
    """Elements of `bits` bits: a sign and k in [0, K], value 2^(k-K) (k = 0 is zero), K = 2^(bits-1)-1."""
    bits: int

    @property
    def k_max(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def block_bytes(self, block: int) -> int:
        return 1 + bitplanes.packed_bytes(self.bits, block)

    def magnitudes(self) -> np.ndarray:
        k = np.arange(self.k_max + 1)
        return np.where(k == 0, 0.0, np.ldexp(1.0, k - self.k_max))

    def fit(self, x: np.ndarray) -> tuple:
        amax = np.abs(x.astype(np.float64)).max(axis=1, keepdims=True)
        big_e = _floor_log2(amax)
        big_e = big_e + (amax >= 1.5 * np.ldexp(1.0, big_e))  # round the top up when closer to 2^(E+1)
        return (np.where(amax > 0, np.clip(big_e + 127, 0, 254), 0).astype(np.uint8),)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        x = x.astype(np.float64)
        y = np.abs(x) / np.ldexp(1.0, params[0].astype(np.int64) - 127)
        k = NearestCode(tuple(self.magnitudes()))(y)
        return k | (((x < 0) & (k > 0)).astype(np.uint8) << np.uint8(self.bits - 1))

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        k = codes & self.k_max
        sign = np.where(codes >> (self.bits - 1), -1.0, 1.0)
        return (sign * self.magnitudes()[k] * e8m0_value(params[0]) + 0.0).astype(np.float32)

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return np.concatenate([params[0], bitplanes.pack(codes, self.bits)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        return bitplanes.unpack(data[:, 1:], self.bits, block), (data[:, :1],)
