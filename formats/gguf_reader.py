"""Read-only GGUF reader over a memory map: metadata as Python values, tensors as zero-copy views.

Every field is bounds-checked before it is read, and every count is checked against the bytes left
before anything is allocated for it, so a truncated, corrupt or hostile file ends in a one-line
QuantconvError naming the file and the problem, never in a crash or a huge allocation.
The layout is described in gguf_writer.py.
"""
from __future__ import annotations

import difflib
import math
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType as VT
from gguf import quants as gguf_quants

from quantconv.errors import QuantconvError

from .gguf_writer import (ALIGNMENT_KEY, DESCRIPTOR_PREFIX, GGUF_MAGIC, MAX_DIMS, SCALAR_CODE,
                          align_up, tensor_nbytes)

_MIN_SIZE = {**{vt: struct.calcsize("<" + c) for vt, c in SCALAR_CODE.items()},
             VT.STRING: 8, VT.ARRAY: 12}  # smallest encoding of a value: bounds hostile counts
_MIN_KV = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_MAX_NESTING = 8  # arrays of arrays: deeper is hostile, not a model
_FIX = "re-export or re-download it"
# plain ggml element types gguf-py's dequantize doesn't cover
_PLAIN_NUMPY = {GGMLQuantizationType.I8: "<i1", GGMLQuantizationType.I16: "<i2",
                GGMLQuantizationType.I32: "<i4", GGMLQuantizationType.I64: "<i8",
                GGMLQuantizationType.F64: "<f8"}


def _registry():
    """The dtype registry, or None while it doesn't exist (tests substitute a fake here)."""
    try:
        from quantconv.formats import registry
    except ModuleNotFoundError as e:
        if e.name != "quantconv.formats.registry":
            raise
        return None
    return registry


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, cols) or (n,)
    type_id: int
    type_name: str  # ggml's name for ggml ids (Q8_0, F16 ...), the registry spec for ours
    offset: int  # absolute file offset of the first byte
    nbytes: int
    dtype: Any = None  # registry DType, None for ggml types only gguf-py knows


class _Cursor:
    """Bounds-checked sequential reads from the mapped file."""

    def __init__(self, buf, size: int, fail):
        self.buf, self.size, self.pos, self._fail = buf, size, 0, fail

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            self._fail(f"is truncated: {what} needs bytes {self.pos}..{self.pos + n} but the file has "
                       f"{self.size}; {_FIX}")

    def unpack(self, code: str, what: str):
        n = struct.calcsize("<" + code)
        self.need(n, what)
        (v,) = struct.unpack_from("<" + code, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str, strict: bool = True) -> str:
        n = self.unpack("Q", f"the length of {what}")
        self.need(n, what)
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:  # names must be real UTF-8; values may carry odd bytes and round-trip via surrogateescape
            return b.decode("utf-8", "strict" if strict else "surrogateescape")
        except UnicodeDecodeError:
            self._fail(f"is corrupt: {what} is not valid UTF-8; {_FIX}")


class GGUFFile:
    """A GGUF file mapped read-only. Use as a context manager or call close()."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._fh = self._mm = self._u8 = None
        self.kv: dict[str, Any] = {}
        self.kv_types: dict[str, tuple[VT, VT | None]] = {}  # key -> (type, element type of an array)
        self.tensors: list[TensorInfo] = []
        self._by_name: dict[str, TensorInfo] = {}
        self._type_cache: dict[int, tuple[Any, str]] = {}
        self._open()
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    def _fail(self, problem: str):
        # names and strings come from the file: escape control characters to keep the message one line
        msg = f"{self.path} {problem}"
        raise QuantconvError("".join(c if c.isprintable() else repr(c)[1:-1] for c in msg))

    def _open(self) -> None:
        if not os.path.exists(self.path):
            self._fail("does not exist; check the path")
        if os.path.isdir(self.path):
            self._fail("is a folder, not a GGUF file; pass the .gguf file inside it")
        try:
            self._fh = open(self.path, "rb")
            size = os.fstat(self._fh.fileno()).st_size
            if size == 0:
                self._fail(f"is empty, not a GGUF file; {_FIX}")
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            self.close()
            self._fail(f"cannot be read: {e.strerror or e}; check its permissions")
        except QuantconvError:
            self.close()
            raise
        self.size = size

    # ---- header ----------------------------------------------------------------------------------
    def _parse(self) -> None:
        cur = _Cursor(self._mm, self.size, self._fail)
        head = self._mm[:4]
        if head != GGUF_MAGIC[:len(head)]:
            self._fail(f"is not a GGUF file (it starts with {head!r}, not b'GGUF'); pass a .gguf file")
        cur.need(4, "the magic")
        cur.pos = 4
        self.version = cur.unpack("I", "the version")
        if self.version not in (2, 3):
            if self.version & 0xFFFF == 0 and (self.version >> 24) in (2, 3):
                self._fail("is a big-endian GGUF file, which quantconv can't read; convert it to "
                           "little-endian")
            hint = "it is too old" if self.version == 1 else "unknown version"
            self._fail(f"is GGUF version {self.version} ({hint}); quantconv reads versions 2 and 3, "
                       f"{_FIX}")
        n_tensors = cur.unpack("Q", "the tensor count")
        n_kv = cur.unpack("Q", "the metadata count")
        # hostile counts: each entry takes some bytes, so the remaining size bounds the counts
        if n_kv * _MIN_KV + n_tensors * _MIN_TENSOR_INFO > cur.left():
            self._fail(f"is corrupt or truncated: its header claims {n_tensors} tensors and {n_kv} "
                       f"metadata entries but only {cur.left()} bytes follow; {_FIX}")

        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if key in self.kv:
                self._fail(f"is corrupt: metadata key '{key}' appears twice; {_FIX}")
            vt = self._vtype(cur.unpack("I", f"the type of metadata '{key}'"), key)
            self.kv[key], elem = self._value(cur, vt, key, 0)
            self.kv_types[key] = (vt, elem)

        infos = [self._tensor_info(cur, i) for i in range(n_tensors)]
        self.alignment = self._alignment()
        self.data_offset = align_up(cur.pos, self.alignment)
        self._u8 = np.frombuffer(self._mm, dtype=np.uint8)
        descriptors = self._descriptors()
        for name, shape, type_id, offset in infos:
            self._add_tensor(name, shape, type_id, offset, descriptors)
        self._check_overlap()

    def _vtype(self, raw: int, key: str) -> VT:
        try:
            return VT(raw)
        except ValueError:
            self._fail(f"is corrupt: metadata '{key}' has unknown value type {raw}; {_FIX}")

    def _value(self, cur: _Cursor, vt: VT, key: str, depth: int):
        """(value, element type if an array else None)."""
        if vt == VT.STRING:
            return cur.string(f"metadata '{key}'", strict=False), None
        if vt != VT.ARRAY:
            v = cur.unpack(SCALAR_CODE[vt], f"metadata '{key}'")
            return (bool(v) if vt == VT.BOOL else v), None
        if depth >= _MAX_NESTING:
            self._fail(f"is corrupt: metadata '{key}' nests arrays more than {_MAX_NESTING} deep; {_FIX}")
        elem = self._vtype(cur.unpack("I", f"the element type of metadata '{key}'"), key)
        n = cur.unpack("Q", f"the length of metadata '{key}'")
        if n * _MIN_SIZE[elem] > cur.left():
            self._fail(f"is corrupt or truncated: metadata '{key}' claims {n} {elem.name} elements but "
                       f"only {cur.left()} bytes follow; {_FIX}")
        if elem in SCALAR_CODE:  # fixed-size elements: one numpy read instead of n struct calls
            dt = "u1" if elem == VT.BOOL else "<" + SCALAR_CODE[elem]
            arr = np.frombuffer(self._mm, dtype=dt, count=n, offset=cur.pos)
            cur.pos += arr.nbytes
            out = (arr != 0).tolist() if elem == VT.BOOL else arr.tolist()
            del arr  # release the buffer export so close() can unmap
        elif elem == VT.STRING:
            out = [cur.string(f"element {j} of metadata '{key}'", strict=False) for j in range(n)]
        else:
            out = [self._value(cur, VT.ARRAY, key, depth + 1)[0] for _ in range(n)]
        return out, elem

    def _tensor_info(self, cur: _Cursor, i: int):
        name = cur.string(f"the name of tensor #{i}")
        n_dims = cur.unpack("I", f"the dims of tensor '{name}'")
        if not 1 <= n_dims <= MAX_DIMS:
            self._fail(f"is corrupt: tensor '{name}' has {n_dims} dims (GGUF allows 1 to {MAX_DIMS}); {_FIX}")
        cur.need(8 * n_dims, f"the shape of tensor '{name}'")
        dims = struct.unpack_from(f"<{n_dims}Q", self._mm, cur.pos)
        cur.pos += 8 * n_dims
        if any(d >= 2**63 for d in dims):
            self._fail(f"is corrupt: tensor '{name}' has impossible dims {list(dims)}; {_FIX}")
        type_id = cur.unpack("I", f"the type of tensor '{name}'")
        offset = cur.unpack("Q", f"the data offset of tensor '{name}'")
        return name, tuple(reversed(dims)), type_id, offset

    def _alignment(self) -> int:
        if ALIGNMENT_KEY not in self.kv:
            return 32  # GGUF's default
        a, vt = self.kv[ALIGNMENT_KEY], self.kv_types[ALIGNMENT_KEY][0]
        if vt != VT.UINT32:
            self._fail(f"is corrupt: {ALIGNMENT_KEY} is stored as {vt.name}, not UINT32; {_FIX}")
        if a < 1 or a & (a - 1):
            self._fail(f"is corrupt: {ALIGNMENT_KEY} = {a} is not a power of two; {_FIX}")
        return a

    # ---- tensors ---------------------------------------------------------------------------------
    def _descriptors(self) -> dict[int, dict[str, Any]]:
        """quantconv.type.<id>.<field> keys grouped into one descriptor dict per type id."""
        out: dict[int, dict[str, Any]] = {}
        for key, value in self.kv.items():
            if key.startswith(DESCRIPTOR_PREFIX):
                tid, _, field = key[len(DESCRIPTOR_PREFIX):].partition(".")
                if tid.isdigit() and field:
                    out.setdefault(int(tid), {})[field] = value
        return out

    def _resolve(self, name: str, type_id: int, descriptors):
        """(registry DType or None, type name) for a type id, or a QuantconvError naming the tensor."""
        cache = self._type_cache
        if type_id in cache:
            return cache[type_id]
        reg = _registry()
        try:
            ggml_name = GGMLQuantizationType(type_id).name
        except ValueError:
            ggml_name = None
        dtype = None
        try:
            if type_id in descriptors and reg is not None:
                dtype = reg.dtype_from_descriptor(descriptors[type_id])
            elif reg is not None:
                dtype = reg.dtype_from_gguf_type_id(type_id)
        except Exception as e:  # a descriptor from the file is data: a bad one is the file's fault
            self._fail(f"describes type id {type_id} (tensor '{name}') in a way this quantconv can't "
                       f"build ({e}); upgrade quantconv or re-export the file")
        if dtype is None and (ggml_name is None or GGMLQuantizationType(type_id) not in GGML_QUANT_SIZES):
            if type_id in descriptors:
                self._fail(f"uses quantconv type id {type_id} (tensor '{name}') but the dtype registry "
                           "is unavailable; reinstall quantconv")
            self._fail(f"uses unknown type id {type_id} (tensor '{name}') and doesn't describe it with "
                       f"{DESCRIPTOR_PREFIX}{type_id}.* metadata; upgrade quantconv or re-export with a "
                       "supported type")
        cache[type_id] = (dtype, ggml_name or dtype.spec)
        return cache[type_id]

    def _nbytes(self, name: str, shape, type_id: int, dtype) -> int:
        try:
            if dtype is not None:
                return tensor_nbytes(dtype, shape, f"tensor '{name}'")
        except QuantconvError as e:  # already names the tensor and the problem
            self._fail(f"is corrupt: {e}; {_FIX}")
        except Exception as e:
            self._fail(f"is corrupt: tensor '{name}' has shape {shape}, invalid for {dtype.spec} ({e}); {_FIX}")
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
        if shape[-1] % block:
            self._fail(f"is corrupt: tensor '{name}' has {shape[-1]} columns, not a multiple of the "
                       f"{GGMLQuantizationType(type_id).name} block size {block}; {_FIX}")
        return math.prod(shape[:-1]) * (shape[-1] // block) * type_size

    def _add_tensor(self, name, shape, type_id, offset, descriptors) -> None:
        if name in self._by_name:
            self._fail(f"is corrupt: tensor '{name}' appears twice; {_FIX}")
        dtype, type_name = self._resolve(name, type_id, descriptors)
        nbytes = self._nbytes(name, shape, type_id, dtype)
        if offset % self.alignment:
            self._fail(f"is corrupt: tensor '{name}' starts at data offset {offset}, not a multiple of the "
                       f"alignment {self.alignment}; {_FIX}")
        start = self.data_offset + offset
        if start + nbytes > self.size:
            self._fail(f"is truncated: tensor '{name}' needs bytes {start}..{start + nbytes} but the file "
                       f"has {self.size}; {_FIX}")
        info = TensorInfo(name, shape, type_id, type_name, start, nbytes, dtype)
        self.tensors.append(info)
        self._by_name[name] = info

    def _check_overlap(self) -> None:
        # sizes aren't stored, so a tensor whose type/shape claims more bytes than its slot shows as overlap
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors if t.nbytes)
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if end > start:
                self._fail(f"is corrupt: tensors '{a}' and '{b}' overlap (bytes {start}..{end}); {_FIX}")

    # ---- access ----------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._by_name), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "list them with .tensors"
            self._fail(f"has no tensor '{name}'; {hint}")

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view, shaped (*shape[:-1], row_bytes)."""
        t = self.tensor(name)
        if self._u8 is None:
            raise QuantconvError(f"{self.path} is closed; open it again to read tensor '{name}'")
        rows = math.prod(t.shape[:-1])
        return self._u8[t.offset:t.offset + t.nbytes].reshape(*t.shape[:-1], t.nbytes // rows if rows else 0)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as a new float32 array in numpy shape."""
        t, raw = self.tensor(name), self.raw(name)
        rows, cols = math.prod(t.shape[:-1]), t.shape[-1]
        if rows * cols == 0:
            return np.zeros(t.shape, np.float32)
        if t.dtype is not None:  # the registry decodes rows of blocks; leading dims are more rows
            out = t.dtype.dequantize(raw.reshape(rows, -1), (rows, cols))
        elif GGMLQuantizationType(t.type_id) in _PLAIN_NUMPY:
            out = raw.view(_PLAIN_NUMPY[GGMLQuantizationType(t.type_id)])
        else:
            try:
                out = gguf_quants.dequantize(raw, GGMLQuantizationType(t.type_id))
            except NotImplementedError:
                self._fail(f"holds tensor '{name}' as {t.type_name}, which quantconv can't dequantize; "
                           "re-export it with a supported type")
        out = np.asarray(out, dtype=np.float32).reshape(t.shape)
        # never hand out memory of the map: it must stay valid (and writable) after close()
        return out.copy() if np.may_share_memory(out, self._u8) else out

    def close(self) -> None:
        self._u8 = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # raw() views still use the map; it is unmapped when the last one goes
            self._mm = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
