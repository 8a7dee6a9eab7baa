"""Bit-plane packing of b-bit element codes (docs/layouts.md, "Bit planes").

A b-bit code is split into 8/4/2/1-bit planes, low bits first; each plane is strided across the
block so that a SIMD kernel unpacks it with one shift and one mask per lane group.
"""
from __future__ import annotations

import numpy as np

PLANES = {8: (8,), 7: (4, 2, 1), 6: (4, 2), 5: (4, 1), 4: (4,), 3: (2, 1), 2: (2,), 1: (1,)}


def plane_widths(bits: int) -> tuple[int, ...]:
    return PLANES[bits]


def packed_bytes(bits: int, block: int) -> int:
    """Bytes the codes of one block take."""
    return sum(block * w // 8 for w in PLANES[bits])


def check_block(bits: int, block: int) -> bool:
    """Whether every plane of a block of this size is a whole number of bytes."""
    return all((block * 8 // w) and block % (8 // w) == 0 for w in PLANES[bits])


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes: (n_blocks, G) unsigned ints < 2**bits -> (n_blocks, packed_bytes) uint8."""
    codes = codes.astype(np.uint8, copy=False)
    n, g = codes.shape
    out, shift = [], 0
    for w in PLANES[bits]:
        plane = (codes >> np.uint8(shift)) & np.uint8((1 << w) - 1)
        per_byte = 8 // w
        # element j + k*(G/per_byte) goes to bits k*w of byte j
        parts = plane.reshape(n, per_byte, g // per_byte)
        byte = np.zeros((n, g // per_byte), dtype=np.uint8)
        for k in range(per_byte):
            byte |= parts[:, k, :] << np.uint8(k * w)
        out.append(byte)
        shift += w
    return np.concatenate(out, axis=1) if len(out) > 1 else out[0]


def unpack(data: np.ndarray, bits: int, block: int) -> np.ndarray:
    """(n_blocks, packed_bytes) uint8 -> (n_blocks, G) uint8 codes."""
    n = data.shape[0]
    codes = np.zeros((n, block), dtype=np.uint8)
    pos, shift = 0, 0
    for w in PLANES[bits]:
        per_byte = 8 // w
        nbytes = block // per_byte
        byte = data[:, pos:pos + nbytes]
        mask = np.uint8((1 << w) - 1)
        parts = [(byte >> np.uint8(k * w)) & mask for k in range(per_byte)]
        codes |= np.concatenate(parts, axis=1) << np.uint8(shift)
        pos += nbytes
        shift += w
    return codes
