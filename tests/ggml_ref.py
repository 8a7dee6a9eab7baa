"""Stock ggml's own quantizer and dequantizer, through ctypes on the libggml-base that llama-cpp-python
installs: the byte-exact reference for every ggml type (no build needed).

`quantize(type_id, w)` is ggml_quantize_chunk without an importance matrix (ggml's RTN rules, the
same bytes llama-quantize writes without --imatrix); `dequantize(type_id, data, cols)` is the type's
to_float. Type ids are gguf.GGMLQuantizationType's. Tests call `lib()` first: it skips (or fails
under CI) when llama_cpp is not installed, like the other peer tests.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import os

import numpy as np

from tests.shared_data import require


class _TypeTraits(ctypes.Structure):
    # ggml.h's struct ggml_type_traits, up to the members read here
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


@functools.lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "lib", "libggml-base.so")
    if not os.path.exists(path):
        return None
    so = ctypes.CDLL(path)
    so.ggml_quantize_chunk.restype = ctypes.c_size_t
    so.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p,
                                       ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    so.ggml_row_size.restype = ctypes.c_size_t
    so.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    so.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    so.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    so.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    so.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return so


def lib() -> ctypes.CDLL:
    """libggml-base, or a skip (a failure under QUANTCONV_CI) when llama_cpp is missing."""
    so = _load()
    require(so is not None, "llama_cpp (llama-cpp-python) with lib/libggml-base.so is not installed")
    return so


def row_size(type_id: int, cols: int) -> int:
    return int(lib().ggml_row_size(int(type_id), int(cols)))


def block_size(type_id: int) -> int:
    return int(lib().ggml_get_type_traits(int(type_id)).contents.blck_size)


def quantize(type_id: int, w: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """(rows, cols) floats -> (rows, row_size) uint8 as ggml_quantize_chunk writes them (RTN when
    imatrix is None; else one importance per column)."""
    so = lib()
    w = np.ascontiguousarray(np.atleast_2d(w), dtype=np.float32)
    rows, cols = w.shape
    if cols % block_size(type_id):
        raise ValueError(f"ggml type {type_id} needs rows that are a multiple of {block_size(type_id)} values")
    if imatrix is None and so.ggml_quantize_requires_imatrix(int(type_id)):
        raise ValueError(f"ggml type {type_id} requires an importance matrix")
    out = np.zeros((rows, row_size(type_id, cols)), dtype=np.uint8)
    imat = None
    if imatrix is not None:
        imat = np.ascontiguousarray(imatrix, dtype=np.float32)
        assert imat.shape == (cols,)
    written = so.ggml_quantize_chunk(int(type_id), w.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                     out.ctypes.data, 0, rows, cols,
                                     None if imat is None else imat.ctypes.data)
    assert written == out.size, (written, out.size)
    return out


def dequantize(type_id: int, data: np.ndarray, cols: int) -> np.ndarray:
    """(rows, row_size) uint8 -> (rows, cols) float32 through the type's to_float."""
    traits = lib().ggml_get_type_traits(int(type_id)).contents
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, row_size(type_id, cols))
    out = np.empty((data.shape[0], cols), dtype=np.float32)
    to_float = _TO_FLOAT(traits.to_float)
    to_float(data.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
    return out
