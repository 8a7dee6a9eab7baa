"""GPTQ (Frantar et al., 2023) onto any registry datatype, and the RTN baseline with the same output.

The datatype's codec does the rounding through its split API (formats/*: fit -> params of one group,
encode -> codes on that fixed grid, decode -> values, pack -> the file's bytes), so GPTQ rounds to
the nearest code point at the group's scale for codebooks, to the block's E8M0 scale for MX, to the
scale and zero point for integers — and the bytes written are exactly the values GPTQ chose.

Groups: a group's parameters are fitted when GPTQ reaches its first column, from the weights as
updated so far (the reference implementation's behaviour); with act-order they are fitted up front
from the original weights ("static groups"), since the file keeps groups in column order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from quantconv.errors import QuantconvError
from quantconv.formats.registry import DType


@dataclass
class QuantizedLinear:
    """A linear layer on its datatype's grid: codes and group parameters (HF row order) and the
    dequantized values the rest of the calibration runs with."""
    dtype: DType
    codes: np.ndarray            # (rows, cols)
    params: tuple                # each (rows, cols // unit): one entry per fitted group
    values: torch.Tensor         # (rows, cols) float32, = dtype.dequantize(packed bytes)
    loss: float = 0.0            # GPTQ's weighted squared error (0 for RTN)
    packed_rows: np.ndarray | None = None   # compact(): the file's bytes (HF row order) instead of codes

    def compact(self) -> "QuantizedLinear":
        """Only the file's bytes kept: a 4-bit code takes half a byte there, one byte in `codes`; a
        calibrated model's linears all wait in memory until the file is written."""
        return QuantizedLinear(self.dtype, None, (), None, self.loss, self.packed())

    def packed(self, row_order: np.ndarray | None = None) -> np.ndarray:
        """The file's bytes (rows, row_bytes); `row_order` reorders rows (llama.cpp's Q/K permutation)."""
        if self.packed_rows is not None:   # the bytes of a row depend on that row alone
            return self.packed_rows if row_order is None else self.packed_rows[row_order]
        codes, params = self.codes, self.params
        if row_order is not None:
            codes, params = codes[row_order], tuple(p[row_order] for p in params)
        rows, cols = codes.shape
        block = self.dtype.block_for(cols)
        nblocks = rows * cols // block
        blocks = codes.reshape(nblocks, block)
        per_block = tuple(p.reshape(nblocks, -1) for p in params)
        return self.dtype.codec.pack(blocks, per_block).reshape(rows, -1)


def split_rows(ql: QuantizedLinear, sizes: list[int]) -> list[QuantizedLinear]:
    """Undo a row-wise concatenation (linears that share an input are quantized in one GPTQ pass: GPTQ
    treats rows independently given the shared Hessian, so the result is the same as one pass each)."""
    out, r0 = [], 0
    for n in sizes:
        rows = slice(r0, r0 + n)
        out.append(QuantizedLinear(ql.dtype, ql.codes[rows], tuple(p[rows] for p in ql.params),
                                   ql.values[rows] if ql.values is not None else None, ql.loss * n / ql.codes.shape[0]))
        r0 += n
    return out


def join_rows(parts: list[QuantizedLinear]) -> QuantizedLinear:
    """Rows of several linears stacked into one (the parts of a fused tensor, in row order)."""
    loss = sum(p.loss for p in parts)
    if all(p.packed_rows is not None for p in parts):
        return QuantizedLinear(parts[0].dtype, None, (), None, loss, np.concatenate([p.packed_rows for p in parts]))
    values = None if any(p.values is None for p in parts) else torch.cat([p.values for p in parts])
    return QuantizedLinear(parts[0].dtype, np.concatenate([p.codes for p in parts]),
                           tuple(np.concatenate(ps) for ps in zip(*(p.params for p in parts))), values, loss)


def fit_unit(dtype: DType, cols: int) -> int:
    """Columns that share one set of fitted parameters: the block, or a codec's smaller unit (NVFP4's 16)."""
    if not dtype.codec.fittable:
        raise QuantconvError(f"{dtype.spec} is a float type: there is nothing for GPTQ/RTN to round "
                             "(pick a quantized --dtype, or --keep such tensors in float)")
    return min(dtype.codec.fit_unit or cols, dtype.block_for(cols))


def prepare_hessian(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(H with dead columns' diagonal set to 1, the dead-column mask): a column no calibration input
    ever touched has no curvature; its weight is zeroed and H stays invertible."""
    H = H.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    return H, dead


def fit_group(codec, x: np.ndarray, importance: np.ndarray | None, search: bool) -> tuple:
    """A group's parameters: the codec's own rule, or — with `search` — the scale minimising the
    importance-weighted rounding error where the codec has one to search (importance: diag(H))."""
    return codec.fit_search(x, importance) if search else codec.fit(x)


def _stack(params_per_group: list[tuple]) -> tuple:
    return tuple(np.concatenate([p[k] for p in params_per_group], axis=1) for k in range(len(params_per_group[0])))


def rtn(w: torch.Tensor, dtype: DType) -> QuantizedLinear:
    """Round to nearest, group by group (what `export --algo rtn` writes, through the same path)."""
    W = w.detach().float().cpu().numpy()
    rows, cols = W.shape
    dtype.check_shape(W.shape)
    unit = fit_unit(dtype, cols)
    g = W.reshape(rows * cols // unit, unit)
    params = dtype.codec.fit(g)
    codes = dtype.codec.encode(g, params)
    values = dtype.codec.decode(codes, params).reshape(rows, cols)
    params = tuple(p.reshape(rows, -1) for p in params)
    return QuantizedLinear(dtype, codes.reshape(rows, cols), params,
                           torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(w.device))


def inverse_cholesky(H: torch.Tensor, percdamp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 after dampening; raises the dampening tenfold (up to 4 times)
    when H is not positive definite."""
    if not torch.isfinite(H).all():
        raise QuantconvError(f"the Hessian of {name} has NaN/inf entries: the calibration activations overflowed; "
                             "check the source weights or use fewer/shorter --calib samples")
    diag_mean = torch.mean(torch.diag(H)).item()
    damp = percdamp
    for _ in range(5):
        Hd = H.clone()
        Hd.diagonal().add_(damp * diag_mean)
        L, info = torch.linalg.cholesky_ex(Hd)
        if info.item() == 0:
            eye = torch.eye(H.shape[0], device=H.device, dtype=H.dtype)
            Hinv = torch.cholesky_solve(eye, L)   # much faster than cholesky_inverse on CPU
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info.item() == 0 and torch.isfinite(U).all():
                return U
        damp *= 10
    raise QuantconvError(f"the Hessian of {name} stays singular even with dampening {damp / 10:g}; the calibration "
                         "data is degenerate (too few distinct tokens?): use more --nsamples or another --calib")


@torch.no_grad()
def gptq(w: torch.Tensor, H: torch.Tensor, dtype: DType, percdamp: float = 0.01, blocksize: int = 128,
         act_order: bool = False, name: str = "a layer", hinv_factor: torch.Tensor | None = None,
         scale_search: bool = False) -> QuantizedLinear:
    """Quantize w (rows, cols) given H = sum of x x^T over calibration inputs (cols, cols).
    `hinv_factor`: inverse_cholesky(H) already computed for another linear with the same input
    (q/k/v, gate/up), without act-order."""
    W = w.detach().float().clone()
    rows, cols = W.shape
    dtype.check_shape(W.shape)
    unit = fit_unit(dtype, cols)
    n_groups = cols // unit
    hdiag = torch.diag(H).float().cpu().numpy()      # column importance for the scale search
    H, dead = prepare_hessian(H)
    W[:, dead] = 0
    codec = dtype.codec
    params: list = [None] * n_groups
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        for gi in range(n_groups):   # static groups: fitted from the original weights, in column order
            params[gi] = fit_group(codec, W[:, gi * unit:(gi + 1) * unit].cpu().numpy(),
                                   hdiag[gi * unit:(gi + 1) * unit], scale_search)
        W, H = W[:, perm], H[perm][:, perm]
    U = inverse_cholesky(H, percdamp, name) if hinv_factor is None else hinv_factor
    if unit > blocksize:
        blocksize = next(b for b in (128, 64, 32, 16) if unit % b == 0) if unit % 16 == 0 else unit
    codes = np.zeros((rows, cols), dtype=np.uint8)
    Q = torch.zeros_like(W)
    loss = 0.0
    cols_order = perm.cpu().numpy() if perm is not None else np.arange(cols)
    U_np = U.cpu().numpy()
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        # the column-by-column part runs in numpy on the block transposed, so that each weight column
        # (and each row of the rank-1 updates) is contiguous: small per-column ops cost a few us there
        W1 = np.ascontiguousarray(W[:, i1:i2].T.cpu().numpy())     # (block columns, rows)
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        U1 = U_np[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(cols_order[i1 + i])
            gi = col // unit
            if not act_order and col % unit == 0:
                # fit on the group's columns as updated so far (in-block ones carry this block's updates)
                span = W1[i:i + unit].T if i + unit <= i2 - i1 else \
                    np.concatenate([W1[i:].T, W[:, i2:col + unit].cpu().numpy()], axis=1)
                params[gi] = fit_group(codec, np.ascontiguousarray(span), hdiag[col:col + unit], scale_search)
            p = params[gi]
            wcol = W1[i]
            c = codec.encode(wcol[:, None], p)
            q = np.asarray(codec.decode(c, p), dtype=np.float32)[:, 0]
            codes[:, col] = c[:, 0]
            Q1[i] = q
            err = (wcol - q) / U1[i, i]
            loss += float(err @ err) / 2
            W1[i:] -= np.outer(U1[i, i:], err)
            Err1[i] = err
        Q[:, i1:i2] = torch.from_numpy(Q1).T.to(W.device)
        W[:, i2:] -= torch.from_numpy(Err1).T.to(W.device) @ U[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    values = Q.contiguous()
    return QuantizedLinear(dtype, codes, _stack(params), values, loss)
