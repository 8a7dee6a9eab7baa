"""ggml's K-quants Q2_K..Q6_K: super-blocks of 256 values with fp16 super scales over 16 or 32-value
sub-blocks with 4/6/8-bit sub-scales, written byte for byte as stock ggml's quantizer without an
importance matrix (quantize_row_qN_K_ref) and decoded as its to_float.

Byte-exactness needs ggml's float32 arithmetic in its order: every sum over a sub-block is taken
left to right (`_seq`), never numpy's pairwise sum, and rounding is nearest_int (half to even =
np.rint). Arrays inside the searches are (values per sub-block, sub-blocks) so each step is one
contiguous numpy op over all sub-blocks of a tensor.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantconv.errors import QuantconvError
from quantconv.formats.codec import FittableCodec
from quantconv.formats.elements import fp16_bytes, fp16_from_bytes

QK_K = 256
F32 = np.float32
_EPS = F32(1e-15)   # ggml's GROUP_MAX_EPS: a sub-block below it is all zero


def _seq(terms: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over axis 0 of (k, M): the order of ggml's scalar loops."""
    acc = terms[0].astype(F32, copy=True)
    for t in terms[1:]:
        acc += t
    return acc


def _fp16(v: np.ndarray) -> np.ndarray:
    """ggml's GGML_FP32_TO_FP16 then back: round to nearest even binary16 (overflow -> inf, refused in pack)."""
    with np.errstate(over="ignore"):
        return np.asarray(v, dtype=F32).astype(np.float16).astype(F32)


def _rint_int(v: np.ndarray) -> np.ndarray:
    """nearest_int: float32 rounded half to even, as an integer."""
    return np.rint(v).astype(np.int64)


def _check_block(block: int) -> None:
    if block != QK_K:
        raise QuantconvError(f"K-quants have super-blocks of {QK_K} values, not {block}; use group {QK_K}")


def _qkx2(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
          use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants over (k, M) sub-blocks: the scale/min search of an asymmetric sub-block.
    Returns (scale (M,), min as a positive offset (M,), codes (k, M) uint8)."""
    nmax_f = F32(nmax)
    lo = np.minimum(x.min(axis=0), F32(0))
    hi = x.max(axis=0)
    flat = hi == lo
    sum_w = _seq(w)
    sum_x = _seq(w * x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        span = hi - lo
        shifted = x - lo
        iscale = nmax_f / span
        scale = F32(1) / iscale
        L = np.clip(np.rint(iscale * shifted), 0, nmax).astype(F32)

        def err(s, m, codes):
            diff = s * codes + m - x
            diff = np.abs(diff) if use_mad else diff * diff
            return _seq(w * diff)

        best = err(scale, lo, L)
        mn = lo.copy()
        for step in range(nstep + 1):
            # ggml's later steps measure from the min (and span) of the best step so far
            it = (F32(rmin) + F32(rdelta) * F32(step) + nmax_f) / (hi - mn)
            la = np.clip(np.rint(it * (x - mn)), 0, nmax).astype(F32)
            wl = w * la
            sum_l, sum_l2, sum_xl = _seq(wl), _seq(wl * la), _seq(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            s = (sum_w * sum_xl - sum_x * sum_l) / D
            m = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = m > 0
            m = np.where(pos, F32(0), m)
            s = np.where(pos, sum_xl / sum_l2, s)
            cur = err(s, m, la)
            take = (D > 0) & (cur < best)
            L = np.where(take, la, L)
            best = np.where(take, cur, best)
            scale = np.where(take, s, scale)
            mn = np.where(take, m, mn)
    L = np.where(flat, F32(0), L)
    scale = np.where(flat, F32(0), scale).astype(F32)
    mn = np.where(flat, lo, mn)
    return scale, (-mn).astype(F32), L.astype(np.uint8)


def _qp(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qp_quants over (k, M): the weighted search of a super-block's unsigned sub-scales (ggml's
    importance path). Returns (scale (M,), levels (k, M) as ggml's uint8 array holds them)."""
    top = np.maximum(x.max(axis=0), F32(0))
    zero = top < _EPS
    nm = F32(nmax)

    def u8(v):   # the levels live in a uint8 array in ggml
        return (np.rint(v).astype(np.int64) & 0xFF).astype(F32)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = nm / top
        L = u8(iscale * x)
        sc = F32(1) / iscale
        diff = x - sc * L
        best = _seq(w * diff * diff)
        for step in (-4, -3, -2, -1, 1, 2, 3, 4):
            it = (F32(0.1) * F32(step) + nm) / top
            l = np.minimum(nm, np.rint(it * x)).astype(F32)
            diff = x - (F32(1) / it) * l
            mse = _seq(w * diff * diff)
            take = mse < best
            best = np.where(take, mse, best)
            iscale = np.where(take, it, iscale)
        L = u8(np.minimum(nm, np.rint(iscale * x)))
        wx = w * x
        sumlx, suml2 = _seq(wx * L), _seq(w * L * L)
        for _ in range(5):   # as in _q3: an unchanged pass repeats itself
            for i in range(x.shape[0]):
                li = L[i]
                slx = sumlx - wx[i] * li
                sl2 = suml2 - w[i] * li * li
                nl = u8(np.minimum(nm, np.rint(x[i] * sl2 / slx)))
                slx2 = slx + wx[i] * nl
                sl22 = sl2 + w[i] * nl * nl
                take = (slx > 0) & (sl2 > 0) & (nl != li) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                L[i] = np.where(take, nl, li)
                sumlx = np.where(take, slx2, sumlx)
                suml2 = np.where(take, sl22, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(zero, F32(0), scale).astype(F32), np.where(zero, F32(0), L).astype(np.uint8)


def _qx(x: np.ndarray, nmax: int, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants with rmse_type 1 over (k, M): a symmetric sub-block's scale search, weighted by
    w (ggml's quant weights) or else x^2. Returns (scale (M,), codes (k, M) uint8 offset by nmax)."""
    M = x.shape[1]
    cols = np.arange(M)
    peak = x[np.abs(x).argmax(axis=0), cols]   # first of the largest |x|, signed
    zero = np.abs(peak) < _EPS
    w = x * x if w is None else w
    wx = w * x
    nm = F32(nmax)

    def grid(iscale):
        l = np.clip(np.rint(iscale * x), -nmax, nmax - 1).astype(F32)
        return l, _seq(wx * l), _seq(w * l * l)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        l, sumlx, suml2 = grid(-nm / peak)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in [s for s in range(-9, 10) if s]:
            la, slx, sl2 = grid(-(nm + F32(0.1) * F32(step)) / peak)
            take = (sl2 > 0) & (slx * slx > best * sl2)
            l = np.where(take, la, l)
            scale = np.where(take, slx / sl2, scale)
            best = np.where(take, scale * slx, best)
    L = np.where(zero, F32(0), l + nm)
    return np.where(zero, F32(0), scale).astype(F32), L.astype(np.uint8)


def _q3(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants with its rmse refinement over (k, M): returns (scale (M,), codes (k, M) + nmax)."""
    k, M = x.shape
    peak = x[np.abs(x).argmax(axis=0), np.arange(M)]
    zero = np.abs(peak) < _EPS
    w = x * x
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        L = np.clip(np.rint((-F32(nmax) / peak) * x), -nmax, nmax - 1).astype(F32)
        sumlx, suml2 = _seq(wx * L), _seq(w * L * L)
        # ggml stops a sub-block once a pass changes nothing; an unchanged pass repeats itself,
        # so running all five passes everywhere gives the same codes
        for _ in range(5):
            for i in range(k):
                li = L[i]
                slx = sumlx - wx[i] * li
                sl2 = suml2 - w[i] * li * li
                nl = np.clip(np.rint(x[i] * sl2 / slx), -nmax, nmax - 1).astype(F32)
                slx2 = slx + wx[i] * nl
                sl22 = sl2 + w[i] * nl * nl
                take = (slx > 0) & (nl != li) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                L[i] = np.where(take, nl, li)
                sumlx = np.where(take, slx2, sumlx)
                suml2 = np.where(take, sl22, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    L = np.where(zero, F32(0), L + F32(nmax))
    return np.where(zero, F32(0), scale).astype(F32), L.astype(np.uint8)


def _quant_weights(x: np.ndarray, importance: np.ndarray, sub: int, sigma_factor: int) -> tuple:
    """ggml's importance weights qw * sqrt(sigma2 + x^2), sigma2 = factor * mean(x^2) of the super-block:
    -> (x as (sub, M) sub-blocks, their weights (sub, M))."""
    x = x.astype(F32, copy=False)
    qw = np.broadcast_to(np.asarray(importance, dtype=F32), x.shape)
    xt = np.ascontiguousarray(x.T)
    sigma2 = F32(sigma_factor) * _seq(xt * xt) / F32(QK_K)
    xs = _subblocks(x, sub)
    return xs, _subblocks(qw, sub) * np.sqrt(np.repeat(sigma2, QK_K // sub)[None, :] + xs * xs)


def _subblocks(x: np.ndarray, sub: int) -> np.ndarray:
    """(n, 256) -> (sub, n*256/sub): one column per sub-block, contiguous rows."""
    return np.ascontiguousarray(x.astype(F32, copy=False).reshape(-1, sub).T)


def _crumbs(L: np.ndarray) -> np.ndarray:
    """(n, 256) 2-bit codes -> (n, 64): byte 32c+l holds codes 128c+l+32s at bits 2s."""
    n = L.shape[0]
    q = L.reshape(n, 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(n, 64)


def _uncrumbs(qs: np.ndarray) -> np.ndarray:
    n = qs.shape[0]
    q = qs.reshape(n, 2, 1, 32)
    return ((q >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3).reshape(n, QK_K)


def _nibbles(L: np.ndarray) -> np.ndarray:
    """(n, 256) codes' low nibbles -> (n, 128): byte 32c+l holds codes 64c+l (low) and 64c+32+l (high)."""
    n = L.shape[0]
    q = (L.reshape(n, 4, 2, 32) & 0xF).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)


def _unnibbles(qs: np.ndarray) -> np.ndarray:
    n = qs.shape[0]
    q = qs.reshape(n, 4, 1, 32)
    return ((q >> np.array([0, 4], dtype=np.uint8)[None, None, :, None]) & 0xF).reshape(n, QK_K)


def _pack_scale_min_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins -> ggml's 12 bytes (get_scale_min_k4's inverse)."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    return out


def _unpack_scale_min_k4(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sc = np.concatenate([b[:, 0:4] & 63, (b[:, 8:12] & 0xF) | ((b[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([b[:, 4:8] & 63, (b[:, 8:12] >> 4) | ((b[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


class _KQuant(FittableCodec):
    """Shared shape of the K-quants: fit gives the super scales and sub-block scales, encode the
    codes on them; sub-blocks whose scale works out to zero keep the codes of ggml's first search
    (they decode alike whatever they are; ggml writes them, so we do too)."""

    sub: ClassVar[int]
    chunk_blocks: ClassVar[int] = 256   # cache-sized pieces: the searches pass ~20 times over their temporaries

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        parts = [super(_KQuant, self).quantize_blocks(x[i:i + self.chunk_blocks])
                 for i in range(0, x.shape[0], self.chunk_blocks)]
        return np.concatenate(parts) if parts else np.empty((0, self.block_bytes(x.shape[1])), np.uint8)

    def fit_search(self, x: np.ndarray, importance: np.ndarray | None = None) -> tuple:
        """ggml's importance-weighted fit (llama-quantize --imatrix); `importance` per column (256,)
        or per value (n, 256). Without it, the plain fit."""
        if importance is None:
            return self.fit(x)
        _check_block(x.shape[1])
        return self._weighted(x, importance)[0]

    def quantize_blocks_weighted(self, x: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """Bytes as ggml_quantize_chunk writes them with an importance matrix: fit_search, encode,
        and the weighted search's codes in sub-blocks whose scale is zero."""
        _check_block(x.shape[1])
        imp = np.broadcast_to(np.asarray(importance, dtype=F32), x.shape)
        if x.shape[0] > self.chunk_blocks:
            step = self.chunk_blocks
            return np.concatenate([self.quantize_blocks_weighted(x[i:i + step], imp[i:i + step])
                                   for i in range(0, x.shape[0], step)])
        params, search = self._weighted(x, imp)
        codes = self.encode(x, params).reshape(search.shape)
        dead = self._sub_scale(params) == 0
        codes[dead] = search[dead]
        return self.pack(self._finish(codes.reshape(x.shape[0], QK_K), params), params)

    @abstractmethod
    def _weighted(self, x: np.ndarray, importance: np.ndarray) -> tuple[tuple, np.ndarray]:
        """ggml's importance path (quantize_row_qN_K_impl) -> (params, the search's codes (n, S, sub))."""

    @abstractmethod
    def _sub_scale(self, params: tuple) -> np.ndarray:
        """(n, 256/sub) float32 effective step of each sub-block (ggml's d * scale)."""

    @abstractmethod
    def _search_codes(self, xs: np.ndarray) -> np.ndarray:
        """ggml's first-search codes of (sub, M) sub-blocks -> (sub, M)."""

    @abstractmethod
    def _requant(self, x: np.ndarray, step: np.ndarray, params: tuple) -> np.ndarray:
        """(n, S, sub) values on their sub-blocks' steps (n, S, 1) -> codes, as ggml's final rounding pass."""

    def column_params(self, params: tuple, col: int) -> tuple:
        """The params of the sub-block holding column `col` of the super-block, for rounding one column
        at a time (GPTQ): encode and decode take any columns of that one sub-block with them."""
        s = col // self.sub
        return tuple(p[:, s:s + 1] if p.shape[1] == QK_K // self.sub else p for p in params)

    def _sub_blocks_of(self, a: np.ndarray, params: tuple) -> np.ndarray:
        """(n, k) -> (n, S, k/S) with S the sub-blocks params cover: all of a super-block (k = 256) or
        one (column_params, any k)."""
        n, k = a.shape
        S = self._sub_scale(params).shape[1]
        if k != S * self.sub and S != 1:
            raise QuantconvError(f"K-quant params of {S} sub-blocks cover {S * self.sub} columns, got {k}; "
                                 "pass a whole super-block of 256, or one sub-block's column_params")
        return a.reshape(n, S, k // S)

    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        n, k = x.shape
        xs = self._sub_blocks_of(x.astype(F32, copy=False), params)
        step = self._sub_scale(params)
        with np.errstate(divide="ignore", invalid="ignore"):
            codes = self._requant(xs, step[:, :, None], params)
        dead = step == 0
        if dead.any():
            rows, cols = np.nonzero(dead)
            # ggml keeps its first search's codes there; a part of a sub-block has none (any code
            # decodes alike there), so it gets zeros
            codes[rows, cols] = self._search_codes(np.ascontiguousarray(xs[rows, cols].T)).T \
                if xs.shape[2] == self.sub else 0
        return self._finish(codes.reshape(n, k).astype(np.uint8), params)

    def _finish(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        """Codes as ggml finally writes them (Q6_K clears whole zeroed blocks)."""
        return codes


class _AsymK(_KQuant):
    """Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins under fp16 d and dmin.
    Params: (d (n,1), dmin (n,1), scales (n,8) uint8, mins (n,8) uint8)."""

    sub: ClassVar[int] = 32
    nmax: ClassVar[int]
    rmin: ClassVar[float]
    nstep: ClassVar[int]

    def _search(self, xs: np.ndarray):
        av = np.sqrt(_seq(xs * xs) / F32(32))
        return _qkx2(xs, av + np.abs(xs), self.nmax, self.rmin, 0.1, self.nstep, False)

    def _search_codes(self, xs):
        return self._search(xs)[2]

    def _weighted(self, x: np.ndarray, importance: np.ndarray):
        """ggml's importance path (quantize_row_qN_K_impl): weights importance * sqrt(sigma2 + x^2),
        a longer scale/min search, then the sub-scales fitted by make_qp_quants. -> (params, codes)."""
        n = x.shape[0]
        xs, w = _quant_weights(x, importance, 32, 2)
        scale, mn, L = _qkx2(xs, w, self.nmax, -0.9, 0.05, 36, False)
        sw = _seq(w).reshape(n, 8).T.copy()
        d, ls = _qp(np.ascontiguousarray(scale.reshape(n, 8).T), sw, 63)
        dmin, lm = _qp(np.ascontiguousarray(mn.reshape(n, 8).T), sw, 63)
        params = (_fp16(d)[:, None], _fp16(dmin)[:, None], np.minimum(ls.T, 63), np.minimum(lm.T, 63))
        return params, L.T.reshape(n, 8, 32)

    def fit(self, x: np.ndarray) -> tuple:
        n = x.shape[0]
        _check_block(x.shape[1])
        scale, mn, _ = self._search(_subblocks(x, 32))
        scale, mn = scale.reshape(n, 8), mn.reshape(n, 8)
        max_scale = np.maximum(scale.max(axis=1, keepdims=True), F32(0))
        max_min = np.maximum(mn.max(axis=1, keepdims=True), F32(0))
        with np.errstate(divide="ignore"):
            inv_s = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
            inv_m = np.where(max_min > 0, F32(63) / max_min, F32(0))
        ls = np.minimum(_rint_int(inv_s * scale) & 0xFF, 63).astype(np.uint8)
        lm = np.minimum(_rint_int(inv_m * mn) & 0xFF, 63).astype(np.uint8)
        return _fp16(max_scale / F32(63)), _fp16(max_min / F32(63)), ls, lm

    def _sub_scale(self, params):
        return params[0] * params[2].astype(F32)

    def _requant(self, x, step, params):
        dm = (params[1] * params[3].astype(F32))[:, :, None]
        return np.clip(np.rint((x + dm) / step), 0, self.nmax).astype(np.uint8)

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        n = codes.shape[0]
        d = (params[0] * params[2].astype(F32))[:, :, None]
        m = (params[1] * params[3].astype(F32))[:, :, None]
        return (d * self._sub_blocks_of(codes, params).astype(F32) - m).reshape(n, -1)

    def _head(self, params):
        return [fp16_bytes(params[0]), fp16_bytes(params[1]), _pack_scale_min_k4(params[2], params[3])]

    def _unhead(self, data):
        sc, m = _unpack_scale_min_k4(data[:, 4:16])
        return fp16_from_bytes(data[:, 0:2]), fp16_from_bytes(data[:, 2:4]), sc, m


@dataclass(frozen=True)
class Q4_KCodec(_AsymK):
    """ggml Q4_K: 144 bytes = d, dmin, 12 bytes of 6-bit scales/mins, 128 bytes of 4-bit codes."""
    nmax: ClassVar[int] = 15
    rmin: ClassVar[float] = -1.0
    nstep: ClassVar[int] = 20

    def block_bytes(self, block: int) -> int:
        _check_block(block)
        return 144

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        return np.concatenate(self._head(params) + [_nibbles(codes)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        _check_block(block)
        return _unnibbles(data[:, 16:]), self._unhead(data)


@dataclass(frozen=True)
class Q5_KCodec(_AsymK):
    """ggml Q5_K: 176 bytes = d, dmin, 12 bytes of scales/mins, 32 bytes of fifth bits, 128 of nibbles."""
    nmax: ClassVar[int] = 31
    rmin: ClassVar[float] = -0.5
    nstep: ClassVar[int] = 15

    def block_bytes(self, block: int) -> int:
        _check_block(block)
        return 176

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        n = codes.shape[0]
        # bit 2c (2c+1) of qh[l] is the fifth bit of code 64c+l (64c+32+l)
        hi = (codes.reshape(n, 8, 32) >> 4).astype(np.uint8)
        qh = np.zeros((n, 32), dtype=np.uint8)
        for s in range(8):
            qh |= hi[:, s] << s
        return np.concatenate(self._head(params) + [qh, _nibbles(codes)], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        _check_block(block)
        n = data.shape[0]
        qh = data[:, 16:48]
        hi = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
        return _unnibbles(data[:, 48:]) | (hi.reshape(n, QK_K) << 4), self._unhead(data)


@dataclass(frozen=True)
class Q2_KCodec(_KQuant):
    """ggml Q2_K: 84 bytes = 16 bytes of 4-bit scale|min<<4, 64 bytes of 2-bit codes, d, dmin.
    Params: (d (n,1), dmin (n,1), scales (n,16) uint8 0..15, mins (n,16) uint8 0..15)."""

    sub: ClassVar[int] = 16

    def block_bytes(self, block: int) -> int:
        _check_block(block)
        return 84

    def _search(self, xs):
        return _qkx2(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)

    def _search_codes(self, xs):
        return self._search(xs)[2]

    def _weighted(self, x, importance):
        n = x.shape[0]
        xs, w = _quant_weights(x, importance, 16, 1)
        scale, mn, L = _qkx2(xs, w, 3, -0.9, 0.05, 36, False)
        sw = np.ascontiguousarray(_seq(w).reshape(n, 16).T)
        d, ls = _qp(np.ascontiguousarray(scale.reshape(n, 16).T), sw, 15)
        dmin, lm = _qp(np.ascontiguousarray(mn.reshape(n, 16).T), sw, 15)
        byte = ls.T.astype(np.int64) | ((lm.T.astype(np.int64) << 4) & 0xFF)
        params = (_fp16(d)[:, None], _fp16(dmin)[:, None], (byte & 0xF).astype(np.uint8), (byte >> 4).astype(np.uint8))
        return params, L.T.reshape(n, 16, 16)

    def fit(self, x: np.ndarray) -> tuple:
        n = x.shape[0]
        _check_block(x.shape[1])
        scale, mn, _ = self._search(_subblocks(x, 16))
        scale, mn = scale.reshape(n, 16), mn.reshape(n, 16)
        max_scale = np.maximum(scale.max(axis=1, keepdims=True), F32(0))
        max_min = np.maximum(mn.max(axis=1, keepdims=True), F32(0))
        with np.errstate(divide="ignore", invalid="ignore"):
            ls = np.where(max_scale > 0, _rint_int((F32(15) / max_scale) * scale), 0)
            lm = np.where(max_min > 0, _rint_int((F32(15) / max_min) * mn), 0)
        # ggml ORs the min into the byte's high nibble; the byte then holds exactly these bits
        byte = (ls & 0xFF) | ((lm << 4) & 0xFF)
        d = np.where(max_scale > 0, _fp16(max_scale / F32(15)), F32(0))
        dmin = np.where(max_min > 0, _fp16(max_min / F32(15)), F32(0))
        return d, dmin, (byte & 0xF).astype(np.uint8), (byte >> 4).astype(np.uint8)

    def _sub_scale(self, params):
        return params[0] * params[2].astype(F32)

    def _requant(self, x, step, params):
        dm = (params[1] * params[3].astype(F32))[:, :, None]
        return np.clip(np.rint((x + dm) / step), 0, 3).astype(np.uint8)

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        n = codes.shape[0]
        d = (params[0] * params[2].astype(F32))[:, :, None]
        m = (params[1] * params[3].astype(F32))[:, :, None]
        return (d * self._sub_blocks_of(codes, params).astype(F32) - m).reshape(n, -1)

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        scales = (params[2] & 0xF) | (params[3] << 4)
        return np.concatenate([scales.astype(np.uint8), _crumbs(codes), fp16_bytes(params[0]),
                               fp16_bytes(params[1])], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        _check_block(block)
        sc = data[:, :16]
        return _uncrumbs(data[:, 16:80]), (fp16_from_bytes(data[:, 80:82]), fp16_from_bytes(data[:, 82:84]),
                                           sc & 0xF, sc >> 4)


@dataclass(frozen=True)
class Q3_KCodec(_KQuant):
    """ggml Q3_K: 110 bytes = 32 bytes of third bits, 64 of 2-bit codes, 12 of 6-bit signed scales, d.
    Codes 0..7 stand for -4..3. Params: (d (n,1), scales (n,16) int8 in -32..31)."""

    sub: ClassVar[int] = 16

    def block_bytes(self, block: int) -> int:
        _check_block(block)
        return 110

    def _search_codes(self, xs):
        return _q3(xs, 4)[1]

    def _weighted(self, x, importance):
        n = x.shape[0]
        xs, w = _quant_weights(x, importance, 16, 2)
        scale, L = _qx(xs, 4, w)
        d, ls = _qx(np.ascontiguousarray(scale.reshape(n, 16).T), 32, np.ascontiguousarray(_seq(w).reshape(n, 16).T))
        return (_fp16(d)[:, None], (ls.T.astype(np.int16) - 32).astype(np.int8)), L.T.reshape(n, 16, 16)

    def fit(self, x: np.ndarray) -> tuple:
        n = x.shape[0]
        _check_block(x.shape[1])
        scale = _q3(_subblocks(x, 16), 4)[0].reshape(n, 16)
        peak = np.take_along_axis(scale, np.abs(scale).argmax(axis=1)[:, None], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = F32(-32) / peak
            ls = np.clip(_rint_int(iscale * scale), -32, 31)
            d = _fp16(F32(1) / iscale)
        live = peak != 0
        # a block whose scales are all zero stores zero bytes: scale -32 under d = 0
        return np.where(live, d, F32(0)), np.where(live, ls, -32).astype(np.int8)

    def _sub_scale(self, params):
        return params[0] * params[1].astype(F32)

    def _requant(self, x, step, params):
        return (np.clip(np.rint(x / step), -4, 3) + 4).astype(np.uint8)

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        n = codes.shape[0]
        d = (params[0] * params[1].astype(F32))[:, :, None]
        return (d * (self._sub_blocks_of(codes, params).astype(F32) - F32(4))).reshape(n, -1)

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        n = codes.shape[0]
        codes = codes.astype(np.uint8)
        # hmask[l] bit b is the third bit of code 32b+l
        hi = (codes.reshape(n, 8, 32) >> 2) & 1
        hmask = np.zeros((n, 32), dtype=np.uint8)
        for b in range(8):
            hmask |= hi[:, b] << b
        l = (params[1].astype(np.int16) + 32).astype(np.uint8)
        sc = np.empty((n, 12), dtype=np.uint8)
        sc[:, :8] = (l[:, :8] & 0xF) | ((l[:, 8:] & 0xF) << 4)
        top = l >> 4
        sc[:, 8:] = top[:, 0:4] | (top[:, 4:8] << 2) | (top[:, 8:12] << 4) | (top[:, 12:16] << 6)
        return np.concatenate([hmask, _crumbs(codes & 3), sc, fp16_bytes(params[0])], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        _check_block(block)
        n = data.shape[0]
        hmask, b = data[:, :32], data[:, 96:108]
        hi = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
        codes = _uncrumbs(data[:, 32:96]) | (hi.reshape(n, QK_K) << 2)
        low = np.concatenate([b[:, :8] & 0xF, b[:, :8] >> 4], axis=1)
        top = (b[:, 8:12][:, None, :] >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3
        sc = (low | (top.reshape(n, 16) << 4)).astype(np.int16) - 32
        return codes, (fp16_from_bytes(data[:, 108:110]), sc.astype(np.int8))


@dataclass(frozen=True)
class Q6_KCodec(_KQuant):
    """ggml Q6_K: 210 bytes = 128 bytes of low nibbles, 64 of high 2 bits, 16 int8 scales, d.
    Codes 0..63 stand for -32..31. Params: (d (n,1), scales (n,16) int8)."""

    sub: ClassVar[int] = 16

    def block_bytes(self, block: int) -> int:
        _check_block(block)
        return 210

    def _search_codes(self, xs):
        return _qx(xs, 32)[1]

    def fit(self, x: np.ndarray) -> tuple:
        _check_block(x.shape[1])
        return self._block_params(_qx(_subblocks(x, 16), 32)[0].reshape(x.shape[0], 16))

    def _weighted(self, x, importance):
        # ggml's Q6_K path weights by the importance alone
        n = x.shape[0]
        qw = np.broadcast_to(np.asarray(importance, dtype=F32), x.shape)
        scale, L = _qx(_subblocks(x, 16), 32, _subblocks(qw, 16))
        return self._block_params(scale.reshape(n, 16)), L.T.reshape(n, 16, 16)

    def _block_params(self, scale: np.ndarray) -> tuple:
        peak = np.take_along_axis(scale, np.abs(scale).argmax(axis=1)[:, None], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = F32(-128) / peak
            ls = np.minimum(_rint_int(iscale * scale), 127)
            d = _fp16(F32(1) / iscale)
        live = np.abs(peak) >= _EPS
        # ggml zeroes a whole block whose scales are all below GROUP_MAX_EPS
        return np.where(live, d, F32(0)), np.where(live, ls, 0).astype(np.int8)

    def _sub_scale(self, params):
        return params[0] * params[1].astype(F32)

    def _requant(self, x, step, params):
        return (np.clip(np.rint(x / step), -32, 31) + 32).astype(np.uint8)

    def _finish(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        # a zeroed block keeps zero codes (ggml memsets it) rather than the search's
        return np.where((params[1] == 0).all(axis=1, keepdims=True) & (params[0] == 0), np.uint8(0), codes)

    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        n = codes.shape[0]
        d = (params[0] * params[1].astype(F32))[:, :, None]
        return (d * (self._sub_blocks_of(codes, params).astype(F32) - F32(32))).reshape(n, -1)

    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        n = codes.shape[0]
        q = codes.astype(np.uint8).reshape(n, 2, 4, 32)   # half h, quarter s, lane l: code 128h+32s+l
        lo, hi = q & 0xF, q >> 4
        ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
        qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
        return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), params[1].astype(np.int8).view(np.uint8),
                               fp16_bytes(params[0])], axis=1)

    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        _check_block(block)
        n = data.shape[0]
        ql = data[:, :128].reshape(n, 2, 2, 32)           # half h, byte-row r, lane l
        qh = data[:, 128:192].reshape(n, 2, 1, 32)
        lo = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        hi = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
        codes = (lo | (hi << 4)).reshape(n, QK_K)
        return codes, (fp16_from_bytes(data[:, 208:210]), np.ascontiguousarray(data[:, 192:208]).view(np.int8))
