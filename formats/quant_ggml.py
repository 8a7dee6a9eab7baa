"""ggml's own block types that quantconv writes as they are (Q4_0, Q5_0, Q5_1, IQ4_NL, NVFP4) and the
plain float types.
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
class _SignedPeakCodec(FittableCodec):
    """ggml's Q4_0 / Q5_0 rule for codes of `bits`: d = (signed peak) / -half, u = trunc(x/d + half + 0.5)
    capped at 2*half - 1, value d * (u - half), half = 2^(bits-1). Params: (d, 1/d) in float32 (ggml rounds
    with the unrounded d), d stored as fp16."""

    bits: ClassVar[int]

    def fit(self, x: np.ndarray) -> tuple:
        x = x.astype(np.float32, copy=False)
        peak = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)
        d = peak / np.float32(-(1 << (self.bits - 1)))
        with np.errstate(divide="ignore"):
            return d, np.where(d == 0, np.float32(0), np.float32(1) / d)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        half = 1 << (self.bits - 1)
        return np.clip(np.trunc(x.astype(np.float32) * params[1] + np.float32(half + 0.5)), 0,
                       2 * half - 1).astype(np.uint8)

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return params[0].astype(np.float16).astype(np.float32) * (codes.astype(np.float32) - (1 << (self.bits - 1)))


@dataclass(frozen=True)
class Q4_0Codec(_SignedPeakCodec):
    """ggml Q4_0: d = (signed peak) / -8, u = trunc(x/d + 8.5) clamped to 15, value d * (u - 8)."""

    bits: ClassVar[int] = 4

    def block_bytes(self, block: int) -> int:
        return 2 + block // 2

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return np.concatenate([fp16_bytes(params[0]), bitplanes.pack(codes, 4)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        return bitplanes.unpack(data[:, 2:], 4, block), (fp16_from_bytes(data[:, :2]),)


def _pack_q5(codes: np.ndarray) -> np.ndarray:
    """ggml's Q5 body: qh (bit i = bit 4 of value i, little-endian 32 bits), then Q4_0's nibbles."""
    qh = np.packbits((codes >> 4) & 1, axis=1, bitorder="little")
    return np.concatenate([qh, bitplanes.pack(codes & 15, 4)], axis=1)


def _unpack_q5(body: np.ndarray, block: int) -> np.ndarray:
    high = np.unpackbits(body[:, :block // 8], axis=1, bitorder="little")[:, :block]
    return bitplanes.unpack(body[:, block // 8:], 4, block) | (high << 4)


@dataclass(frozen=True)
class Q5_0Codec(_SignedPeakCodec):
    """ggml Q5_0: d = (signed peak) / -16, u = trunc(x/d + 16.5) capped at 31, value d * (u - 16)."""

    bits: ClassVar[int] = 5

    def block_bytes(self, block: int) -> int:
        return 2 + block // 8 + block // 2

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return np.concatenate([fp16_bytes(params[0]), _pack_q5(codes)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        return _unpack_q5(data[:, 2:], block), (fp16_from_bytes(data[:, :2]),)


@dataclass(frozen=True)
class Q5_1Codec(FittableCodec):
    """ggml Q5_1: d = (max - min) / 31, m = min, u = trunc((x - m)/d + 0.5), value d * u + m."""

    def block_bytes(self, block: int) -> int:
        return 4 + block // 8 + block // 2

    # Params: (d, min, 1/d) in float32; d and min stored as fp16 (rounding uses the unrounded ones).
    def fit(self, x: np.ndarray) -> tuple:
        x = x.astype(np.float32, copy=False)
        lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
        d = (hi - lo) / np.float32(31)
        with np.errstate(divide="ignore"):
            return d, lo, np.where(d == 0, np.float32(0), np.float32(1) / d)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        u = (x.astype(np.float32) - params[1]) * params[2] + np.float32(0.5)
        return np.clip(np.trunc(u), 0, 31).astype(np.uint8)

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        d = params[0].astype(np.float16).astype(np.float32)
        return codes.astype(np.float32) * d + params[1].astype(np.float16).astype(np.float32)

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return np.concatenate([fp16_bytes(params[0]), fp16_bytes(params[1]), _pack_q5(codes)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        return _unpack_q5(data[:, 4:], block), (fp16_from_bytes(data[:, :2]), fp16_from_bytes(data[:, 2:4]))


# ggml's kvalues_iq4nl: the IQ4_NL / IQ4_XS codebook, in units of the block scale
IQ4NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


def iq4nl_index(x: np.ndarray) -> np.ndarray:
    """ggml's best_index_int8 on IQ4NL_VALUES: the nearer neighbour, the upper one on float32 ties."""
    x = x.astype(np.float32, copy=False)
    mu = np.clip(np.searchsorted(IQ4NL_VALUES, x, side="right"), 1, 15)
    lower = (x - IQ4NL_VALUES[mu - 1]) < (IQ4NL_VALUES[mu] - x)
    idx = np.where(lower, mu - 1, mu)
    return np.where(x <= IQ4NL_VALUES[0], 0, np.where(x >= IQ4NL_VALUES[15], 15, idx)).astype(np.uint8)


def _weighted_sums(x: np.ndarray, w: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # column after column in float32, the order ggml's loop adds in (bytes depend on it)
    sqx = np.zeros(x.shape[0], np.float32)
    sq2 = np.zeros(x.shape[0], np.float32)
    for j in range(x.shape[1]):
        wq = w[:, j] * q[:, j]
        sqx += wq * x[:, j]
        sq2 += wq * q[:, j]
    return sqx, sq2


@dataclass(frozen=True)
class IQ4NLCodec(FittableCodec):
    """ggml IQ4_NL: fp16 d per 32 values, each value d * IQ4NL_VALUES[code]. ggml's RTN fits d by a
    small search: the x^2-weighted least-squares scale of the peak/-127 grid and of 15 grids around it."""
    ntry: ClassVar[int] = 7

    def block_bytes(self, block: int) -> int:
        return 2 + block // 2

    # Params: (d, 1/d) in float32, d stored as fp16; codes are rounded with the unrounded d as ggml does.
    def fit(self, x: np.ndarray) -> tuple:
        x = x.astype(np.float32, copy=False)
        w = x * x
        peak = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)[:, 0]
        live = np.abs(peak) >= np.float32(1e-15)
        safe = np.where(live, peak, np.float32(1))
        with np.errstate(divide="ignore", invalid="ignore"):
            d0 = -safe / IQ4NL_VALUES[0]
            sqx, sq2 = _weighted_sums(x, w, IQ4NL_VALUES[iq4nl_index((np.float32(1) / d0)[:, None] * x)])
            d = np.where(sq2 > 0, sqx / sq2, np.float32(0)).astype(np.float32)
            best = d * sqx
            for itry in range(-self.ntry, self.ntry + 1):
                inv = np.float32(itry + IQ4NL_VALUES[0]) / safe
                sqx, sq2 = _weighted_sums(x, w, IQ4NL_VALUES[iq4nl_index(inv[:, None] * x)])
                better = (sq2 > 0) & (sqx * sqx > best * sq2)
                d = np.where(better, sqx / sq2, d).astype(np.float32)
                best = np.where(better, d * sqx, best).astype(np.float32)
            d = np.where(live, d, np.float32(0))[:, None]
            return d, np.where(d == 0, np.float32(0), np.float32(1) / d)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        return iq4nl_index(params[1] * x.astype(np.float32))

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return params[0].astype(np.float16).astype(np.float32) * IQ4NL_VALUES[codes]

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
