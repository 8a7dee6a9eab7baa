"""The interface every block codec of the registry implements (formats/quant_*.py).

A codec turns blocks of floats into a block format's bytes and back. Quantized codecs also expose
the split API calibrated rounding uses (GPTQ fits a group's parameters once, then rounds column
after column on that fixed grid): fit -> params, encode -> codes, decode -> values, pack -> bytes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

CHUNK_ELEMENTS = 1 << 20   # rows are quantized in chunks of about this many values


class Codec(ABC):
    """A block format: `block_bytes`, `quantize_blocks` and `dequantize_blocks`; rows are cut into
    blocks here, once for every format."""

    fittable: ClassVar[bool] = False   # True: fit / encode / decode / pack exist (GPTQ, AWQ can round)
    fit_unit: ClassVar[int] = 0        # columns sharing one fit when fewer than the block (0: the block)

    @abstractmethod
    def block_bytes(self, block: int) -> int:
        """Bytes of one block of `block` values."""

    @abstractmethod
    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        """(n, block) float32 -> (n, block_bytes) uint8."""

    @abstractmethod
    def dequantize_blocks(self, data: np.ndarray, block: int) -> np.ndarray:
        """(n, block_bytes) uint8 -> (n, block) float32."""

    def row_bytes(self, cols: int, block: int) -> int:
        return cols // block * self.block_bytes(block)

    def quantize_rows(self, w: np.ndarray, block: int) -> np.ndarray:
        """(rows, cols) float32 -> (rows, row_bytes) uint8, in chunks that bound the temporaries."""
        rows, cols = w.shape
        out = np.empty((rows, self.row_bytes(cols, block)), dtype=np.uint8)
        step = max(1, CHUNK_ELEMENTS // cols)
        for r in range(0, rows, step):
            out[r:r + step] = self.quantize_blocks(w[r:r + step].reshape(-1, block)).reshape(-1, out.shape[1])
        return out

    def dequantize_rows(self, data: np.ndarray, block: int) -> np.ndarray:
        """Whole blocks' bytes (any shape) -> (n_blocks, block) float32."""
        blocks = data.reshape(-1, self.block_bytes(block))
        return self.dequantize_blocks(blocks, block).astype(np.float32, copy=False)


class FittableCodec(Codec):
    """A quantized format with the split API; quantize_blocks and dequantize_blocks are written
    once from it (fit -> encode -> pack, unpack -> decode)."""

    fittable: ClassVar[bool] = True

    @abstractmethod
    def fit(self, x: np.ndarray) -> tuple:
        """(n, unit) floats -> the parameters of each of the n groups (a tuple of (n, k) arrays)."""

    def fit_search(self, x: np.ndarray, importance: np.ndarray | None = None) -> tuple:
        """Parameters minimising the importance-weighted rounding error; the plain fit where a format
        has nothing to search (its scale follows from the block)."""
        return self.fit(x)

    @abstractmethod
    def encode(self, x: np.ndarray, params: tuple) -> np.ndarray:
        """(n, k) floats -> uint8 codes on the grid `params` fix (k: any columns of the groups)."""

    @abstractmethod
    def decode(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        """Codes -> the values the file's bytes decode to."""

    @abstractmethod
    def pack(self, codes: np.ndarray, params: tuple) -> np.ndarray:
        """(n, block) codes and their blocks' params -> (n, block_bytes) uint8."""

    @abstractmethod
    def unpack(self, data: np.ndarray, block: int) -> tuple[np.ndarray, tuple]:
        """pack's inverse: (n, block_bytes) uint8 -> (codes, params as stored); a damaged scale raises."""

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        params = self.fit(x)
        return self.pack(self.encode(x, params), params)

    def dequantize_blocks(self, data: np.ndarray, block: int) -> np.ndarray:
        # one decode for the file's bytes and for calibrated rounding: GPTQ's values are the file's
        return self.decode(*self.unpack(data, block))
