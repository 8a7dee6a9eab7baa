"""Shared-exponent blocks of minifloat / int8 elements: OCP Microscaling (MXFP4/6/8, MXINT8) and the
block minifloat of "Revisiting Block-based Quantisation" (a shared E8M0 exponent per block of any
minifloat). Block layout: one E8M0 byte, then the element codes in bit planes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantconv.formats import bitplanes
from quantconv.formats.codec import FittableCodec
from quantconv.formats.elements import Minifloat, e8m0_exponent, e8m0_value


@dataclass(frozen=True)
class MinifloatBlockCodec(FittableCodec):
    element: Minifloat

    def block_bytes(self, block: int) -> int:
        return 1 + bitplanes.packed_bytes(self.element.bits, block)

    # fit / encode / decode / pack: see FittableCodec. Params: (E8M0 byte,).
    def fit(self, x: np.ndarray) -> tuple:
        return (e8m0_exponent(np.abs(x).max(axis=1, keepdims=True), self.element.emax),)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        return self.element.quantize(x.astype(np.float64) / e8m0_value(params[0]))

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return (self.element.decode(codes) * e8m0_value(params[0])).astype(np.float32)

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return np.concatenate([params[0], bitplanes.pack(codes, self.element.bits)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        return bitplanes.unpack(data[:, 1:], self.element.bits, block), (data[:, :1],)


@dataclass(frozen=True)
class MXInt8Codec(FittableCodec):
    """MXINT8: int8 two's complement elements worth q/64, saturating symmetrically at +-127."""

    def block_bytes(self, block: int) -> int:
        return 1 + block

    def fit(self, x: np.ndarray) -> tuple:
        return (e8m0_exponent(np.abs(x).max(axis=1, keepdims=True), 0),)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        q = np.clip(np.rint(x.astype(np.float64) / e8m0_value(params[0]) * 64), -127, 127).astype(np.int8)
        return q.view(np.uint8)

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return (codes.view(np.int8).astype(np.float64) / 64 * e8m0_value(params[0])).astype(np.float32)

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return np.concatenate([params[0], codes], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        return np.ascontiguousarray(data[:, 1:]), (data[:, :1],)


# ggml's MXFP4 stores E2M1 doubled and scales by 2^(e-128); the product is the same value.
_GGML_E2M1_DOUBLED = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)


def ggml_e8m0_half(e: np.ndarray) -> np.ndarray:
    """2^(e-128) as float32 (ggml's ggml_e8m0_to_fp32_half), exact for every byte incl. subnormals."""
    return np.ldexp(np.float32(1), e.astype(np.int32) - 128).astype(np.float32)


@dataclass(frozen=True)
class GGMLMXFP4Codec(FittableCodec):
    """ggml's reference MXFP4 quantizer, reproduced byte for byte: float32 log2 for the exponent and
    the first (smallest-magnitude) table entry on ties. Decoding is the same as OCP MXFP4."""

    def block_bytes(self, block: int) -> int:
        return 1 + block // 2

    def fit(self, x: np.ndarray) -> tuple:
        amax = np.abs(x.astype(np.float32, copy=False)).max(axis=1, keepdims=True)
        with np.errstate(divide="ignore"):
            return (np.clip(np.where(amax > 0, np.floor(np.log2(amax)) - 2 + 127, 0), 0, 254).astype(np.uint8),)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        d = ggml_e8m0_half(params[0])
        errs = np.abs(d[:, :, None] * _GGML_E2M1_DOUBLED[None, None, :] - x.astype(np.float32)[:, :, None])
        return np.argmin(errs, axis=-1).astype(np.uint8)

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return ggml_e8m0_half(params[0]) * _GGML_E2M1_DOUBLED[codes]

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return np.concatenate([params[0], bitplanes.pack(codes, 4)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        return bitplanes.unpack(data[:, 1:], 4, block), (data[:, :1],)
