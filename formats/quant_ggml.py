"""ggml's own block types that quantconv writes as they are (Q4_0, NVFP4) and the plain float types.
Q8_0 and Q4_1 are the int family's int8 g32 and int4:asym g32 (quant_int.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantconv.errors import QuantconvError
from quantconv.formats import bitplanes
from quantconv.formats.codec import Codec, FittableCodec
from quantconv.formats.elements import fp16_bytes, fp16_from_bytes
from quantconv.formats.quant_mx import _GGML_E2M1_DOUBLED


@dataclass(frozen=True)
class Q4_0Codec(FittableCodec):
    """ggml Q4_0: d = (signed peak) / -8, u = trunc(x/d + 8.5) clamped to 15, value d * (u - 8)."""

    def block_bytes(self, block: int) -> int:
        return 2 + block // 2

    # fit / encode / decode / pack: see FittableCodec. Params: (d, 1/d) in float32, d stored as fp16.
    def fit(self, x: np.ndarray) -> tuple:
        x = x.astype(np.float32, copy=False)
        peak = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)
        d = peak / np.float32(-8)
        with np.errstate(divide="ignore"):
            return d, np.where(d == 0, np.float32(0), np.float32(1) / d)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        return np.clip(np.trunc(x.astype(np.float32) * params[1] + np.float32(8.5)), 0, 15).astype(np.uint8)

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return params[0].astype(np.float16).astype(np.float32) * (codes.astype(np.float32) - 8)

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return np.concatenate([fp16_bytes(params[0]), bitplanes.pack(codes, 4)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        return bitplanes.unpack(data[:, 2:], 4, block), (fp16_from_bytes(data[:, :2]),)


def ue4m3_half(b: np.ndarray) -> np.ndarray:
    """ggml_ue4m3_to_fp32: unsigned E4M3 (bias 7) times 0.5, with 0 and 0x7F meaning zero."""
    b = b.astype(np.int32)
    exp, man = (b >> 3) & 0xF, (b & 7).astype(np.float32)
    raw = np.where(exp == 0, man * np.float32(2.0 ** -9),
                   (np.float32(1) + man / np.float32(8)) * np.ldexp(np.float32(1), exp - 7))
    return np.where((b == 0) | (b == 0x7F), np.float32(0), raw.astype(np.float32) * np.float32(0.5))


def fp32_to_ue4m3(x: np.ndarray) -> np.ndarray:
    """ggml_fp32_to_ue4m3: clamp to [0, 448]; normals round the 3-bit mantissa half up (0x7E caps
    overflow), values below the smallest normal become subnormal codes round(x * 512)."""
    x = np.clip(x.astype(np.float32), 0, 448).astype(np.float32)
    bits = x.view(np.uint32).astype(np.int64)
    exp = ((bits >> 23) & 0xFF) - 127 + 7
    man = ((bits >> 20) & 7) + ((bits >> 19) & 1)
    carried_exp = np.where(man > 7, exp + 1, exp)
    normal = np.where(carried_exp >= 15, 0x7E, (carried_exp << 3) | np.where(man > 7, 0, man))
    sub = np.clip((x * np.float32(512) + np.float32(0.5)).astype(np.int64), 0, 7)
    out = np.where(exp <= 0, sub, np.where(exp >= 15, 0x7E, normal))
    return np.where(x <= 0, 0, out).astype(np.uint8)


@dataclass(frozen=True)
class NVFP4Codec(FittableCodec):
    """ggml NVFP4: 64-element blocks of four 16-element sub-blocks, each with a UE4M3 scale of amax/6;
    codes are the nearest doubled-E2M1 value (first table entry on ties), as ggml's reference."""
    sub: int = 16

    def block_bytes(self, block: int) -> int:
        return block // self.sub + block // 2

    # fit / encode / decode / pack: see FittableCodec. Params: (UE4M3 byte per 16 values,), so x may be
    # any whole number of 16-value sub-blocks (GPTQ fits one sub-block at a time: fit_unit).
    fit_unit: ClassVar[int] = 16

    def fit(self, x: np.ndarray) -> tuple:
        n, g = x.shape
        xs = x.astype(np.float32).reshape(n, g // self.sub, self.sub)
        return (fp32_to_ue4m3(np.abs(xs).max(axis=2) / np.float32(6)),)

    def _scale_per_value(self, params: tuple, cols: int) -> np.ndarray:
        d = ue4m3_half(params[0])
        return np.repeat(d, max(1, cols // d.shape[1]), axis=1) if d.shape[1] != cols else d

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        d = self._scale_per_value(params, x.shape[1])
        errs = np.abs(d[:, :, None] * _GGML_E2M1_DOUBLED[None, None, :] - x.astype(np.float32)[:, :, None])
        return np.argmin(errs, axis=-1).astype(np.uint8)

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return self._scale_per_value(params, codes.shape[1]) * _GGML_E2M1_DOUBLED[codes]

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        n, g = codes.shape
        packed = bitplanes.pack(codes.reshape(n * g // self.sub, self.sub), 4).reshape(n, -1)
        return np.concatenate([params[0].reshape(n, -1), packed], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        n, nsub = data.shape[0], block // self.sub
        codes = bitplanes.unpack(data[:, nsub:].reshape(n * nsub, self.sub // 2), 4, self.sub)
        return codes.reshape(n, block), (data[:, :nsub],)


@dataclass(frozen=True)
class FloatCodec(Codec):
    """f32, f16 or bf16 elements, one per "block"; bf16 rounds to nearest even like ggml."""
    kind: str

    def block_bytes(self, block: int) -> int:
        return {"f32": 4, "f16": 2, "bf16": 2}[self.kind] * block

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.kind == "f32":
            return x.view(np.uint8)
        if self.kind == "f16":
            if x.size and np.abs(x).max() > 65504:
                raise QuantconvError("values exceed the f16 range (|x| > 65504); use bf16 or f32 for this tensor")
            return x.astype(np.float16).view(np.uint8)
        n = x.view(np.uint32).astype(np.uint64)
        nan = (n & 0x7FFFFFFF) > 0x7F800000
        n = np.where(nan, (n & 0xFFFF0000) | (64 << 16), n + (0x7FFF + ((n >> 16) & 1)))
        return (n >> 16).astype(np.uint16).view(np.uint8)

    def dequantize_blocks(self, data: np.ndarray, block: int) -> np.ndarray:
        data = np.ascontiguousarray(data)
        if self.kind == "f32":
            return data.view(np.float32)
        if self.kind == "f16":
            return data.view(np.float16).astype(np.float32)
        return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
