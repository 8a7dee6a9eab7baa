"""Uniform integer blocks, symmetric (scale) or asymmetric (scale + min), 2 to 8 bits.

Rounding follows ggml's reference quantizers so that int8 g32 is Q8_0 and int4:asym g32 is Q4_1
byte for byte: symmetric codes use C roundf (ties away from zero), asymmetric ones trunc(v + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantconv.formats import bitplanes
from quantconv.formats.codec import FittableCodec
from quantconv.formats.elements import fp16_bytes, fp16_from_bytes


def roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: halves away from zero."""
    return np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))


@dataclass(frozen=True)
class IntCodec(FittableCodec):
    bits: int
    asym: bool

    def block_bytes(self, block: int) -> int:
        return (4 if self.asym else 2) + bitplanes.packed_bytes(self.bits, block)

    # fit / encode / decode / pack: see FittableCodec. Params: (d, 1/d) or (d, min, 1/d), float32 as
    # ggml computes them; the file (and so decode) holds them rounded to fp16.
    def fit(self, x: np.ndarray) -> tuple:
        x = x.astype(np.float32, copy=False)
        if self.asym:
            lo = x.min(axis=1, keepdims=True)
            d = (x.max(axis=1, keepdims=True) - lo) / np.float32((1 << self.bits) - 1)
        else:
            d = np.abs(x).max(axis=1, keepdims=True) / np.float32((1 << (self.bits - 1)) - 1)
        with np.errstate(divide="ignore"):
            inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
        return (d, lo, inv) if self.asym else (d, inv)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        x = x.astype(np.float32, copy=False)
        if self.asym:
            _, lo, inv = params
            return np.clip(np.trunc((x - lo) * inv + np.float32(0.5)), 0, (1 << self.bits) - 1).astype(np.uint8)
        qmax = (1 << (self.bits - 1)) - 1
        q = np.clip(roundf(x * params[1]), -qmax - 1, qmax).astype(np.int16)
        return (q & ((1 << self.bits) - 1)).astype(np.uint8)  # b-bit two's complement

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        d = params[0].astype(np.float16).astype(np.float32)
        if self.asym:
            return d * codes.astype(np.float32) + params[1].astype(np.float16).astype(np.float32)
        q = np.where(codes >= (1 << (self.bits - 1)), codes.astype(np.int16) - (1 << self.bits), codes)
        return d * q.astype(np.float32)

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        head = [fp16_bytes(params[0]), fp16_bytes(params[1])] if self.asym else [fp16_bytes(params[0])]
        return np.concatenate([*head, bitplanes.pack(codes, self.bits)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        head = 4 if self.asym else 2
        params = tuple(fp16_from_bytes(data[:, k:k + 2]) for k in range(0, head, 2))   # d (, min)
        return bitplanes.unpack(data[:, head:], self.bits, block), params
