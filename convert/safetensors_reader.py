"""Minimal streaming safetensors reader: validates the whole file up front, then reads one tensor at a time.

Our own parser (rather than safetensors' numpy API) because numpy has no bfloat16 and because a truncated
download must be reported before any work starts, naming the file.

Layout: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [b, e]},
"__metadata__": {...}}, then the data buffer; offsets are relative to the buffer start.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantconv.errors import QuantconvError

# safetensors dtype -> (numpy dtype as stored, bytes per element); BF16 is read as uint16 bits
_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8)}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


@dataclass(frozen=True)
class StEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int


def _bad(path: Path, why: str) -> QuantconvError:
    return QuantconvError(f"{path} is not a valid safetensors file ({why}); re-download or re-save it")


class SafetensorsFile:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _bad(self.path, f"only {size} bytes, truncated")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise _bad(self.path, f"header claims {n} bytes but the file has {size}; truncated")
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _bad(self.path, "header is not JSON") from None
        if not isinstance(header, dict):
            raise _bad(self.path, "header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + n
        self.entries: dict[str, StEntry] = {}
        for name, info in header.items():
            try:
                dtype, shape, (b, e) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise _bad(self.path, f"entry '{name}' is malformed") from None
            want = math.prod(shape) * _ITEMSIZE.get(dtype, 0)
            if dtype in _ITEMSIZE and e - b != want:
                raise _bad(self.path, f"tensor '{name}' spans {e - b} bytes, its shape needs {want}")
            if not 0 <= b <= e or data_start + e > size:
                raise _bad(self.path, f"tensor '{name}' ends at byte {data_start + e} of {size}; truncated")
            self.entries[name] = StEntry(dtype, shape, data_start + b, data_start + e)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The tensor as float32 (bf16 and f16 widen exactly); start/stop: a range of its first axis, read
        without the rest (the exporter streams big tensors such as a 128k-row embedding in row chunks)."""
        ent = self.entries[name]
        if ent.dtype not in _DTYPES:
            raise QuantconvError(
                f"tensor '{name}' in {self.path.name} has dtype {ent.dtype}; quantconv reads F32/F16/BF16 "
                "checkpoints only: convert from the unquantized model"
            )
        np_dtype, itemsize = _DTYPES[ent.dtype]
        shape = ent.shape or (1,)  # a 0-d tensor has one "row"
        stop = shape[0] if stop is None else min(stop, shape[0])
        start = max(0, min(start, stop))
        row_bytes = math.prod(shape[1:]) * itemsize
        nbytes = (stop - start) * row_bytes
        with open(self.path, "rb") as f:
            f.seek(ent.begin + start * row_bytes)
            buf = f.read(nbytes)
        if len(buf) != nbytes:  # the file shrank after we validated it
            raise _bad(self.path, f"tensor '{name}' is cut short")
        arr = np.frombuffer(buf, dtype=np_dtype)
        if ent.dtype == "BF16":  # bf16 is the top half of a float32: shifting the bits back is exact
            wide = arr.astype(np.uint32)
            del buf, arr  # widen in place: one uint32 buffer alive, not two
            wide <<= 16
            arr = wide.view(np.float32)
        else:
            arr = arr.astype(np.float32)
        return arr.reshape((stop - start, *shape[1:]) if ent.shape else ent.shape)
