"""Streaming GGUF v3 writer: the header goes out first, then each tensor as it arrives, so a model
never has to sit in memory whole.

File layout (all little-endian): magic "GGUF", u32 version, u64 tensor count, u64 kv count; the
key/value pairs (string key, u32 value type, value); the tensor infos (string name, u32 n_dims,
u64 dims with ne0 = cols first, u32 type id, u64 offset from the data start); zero padding to the
alignment; then each tensor's bytes, each padded to the alignment. A string is a u64 byte length
plus UTF-8 bytes; an array is a u32 element type, a u64 count and the elements.

The output is written to a hidden temporary file beside `path` and renamed onto `path` only by a
successful close(), so an interrupted export never leaves a plausible-looking partial file.
"""
from __future__ import annotations

import itertools
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGUFValueType as VT

from quantconv.errors import QuantconvError

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT_KEY = "general.alignment"
DESCRIPTOR_PREFIX = "quantconv.type."  # quantconv.type.<id>.<field>: how to decode our own type ids
MAX_DIMS = 4  # GGML_MAX_DIMS

# struct codes and integer ranges of the fixed-size value types (shared with the reader)
SCALAR_CODE = {VT.UINT8: "B", VT.INT8: "b", VT.UINT16: "H", VT.INT16: "h", VT.UINT32: "I",
               VT.INT32: "i", VT.FLOAT32: "f", VT.BOOL: "?", VT.UINT64: "Q", VT.INT64: "q",
               VT.FLOAT64: "d"}
INT_RANGE = {VT.UINT8: (0, 2**8), VT.INT8: (-2**7, 2**7), VT.UINT16: (0, 2**16),
             VT.INT16: (-2**15, 2**15), VT.UINT32: (0, 2**32), VT.INT32: (-2**31, 2**31),
             VT.UINT64: (0, 2**64), VT.INT64: (-2**63, 2**63)}

# numpy dtypes accepted instead of packed uint8 bytes for the plain element types, by ggml type id
_PLAIN_NUMPY = {0: ("float32",), 1: ("float16",), 30: ("uint16", "int16", "bfloat16"),
                24: ("int8",), 25: ("int16",), 26: ("int32",), 27: ("int64",), 28: ("float64",)}

_tmp_seq = itertools.count()  # two writers in one process never share a temp name


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def tensor_nbytes(dtype, shape: tuple[int, ...], what: str = "tensor") -> int:
    """Bytes of a tensor of `shape` (numpy order): rows of `cols` elements, blocks along cols.
    Refuses a shape whose rows aren't whole blocks (nothing is padded)."""
    cols, block = shape[-1], dtype.block_size or shape[-1]
    if block and cols % block:
        raise QuantconvError(f"{what} has rows of {cols} values, not a multiple of {dtype.spec}'s block "
                             f"of {block}")
    dtype.check_shape(shape, what)   # the registry knows further limits (per-channel bit planes)
    if len(shape) <= 2:
        return int(dtype.tensor_bytes(tuple(shape)))
    # leading dims (e.g. experts) are just more rows; the registry only needs to size one row
    return math.prod(shape[:-1]) * int(dtype.row_bytes(shape[-1]))


def encode_string(s: str | bytes) -> bytes:
    # surrogateescape so that strings read back from an odd file re-encode to the same bytes
    b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _int_vtype(lo: int, hi: int, key: str) -> VT:
    if lo >= 0 and hi < 2**32:
        return VT.UINT32
    if lo >= -2**63 and hi < 2**63:
        return VT.INT64
    if lo >= 0 and hi < 2**64:
        return VT.UINT64
    raise QuantconvError(f"metadata '{key}': integer {hi if hi >= 2**63 else lo} does not fit in 64 bits; "
                         "store it as a string")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_num(v) -> bool:
    return _is_int(v) or isinstance(v, (float, np.floating))


def _infer_elem(key: str, values: list) -> VT:
    """Element type of a list: str -> STRING, bool -> BOOL, ints by range, any float -> FLOAT32."""
    if not values:
        raise QuantconvError(f"metadata '{key}' is an empty array; pass vtype= to say its element type")
    if all(isinstance(v, (str, bytes)) for v in values):
        return VT.STRING
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return VT.BOOL
    if all(_is_int(v) for v in values):
        return _int_vtype(int(min(values)), int(max(values)), key)
    if all(_is_num(v) for v in values):
        return VT.FLOAT32
    kinds = sorted({type(v).__name__ for v in values})
    raise QuantconvError(f"metadata '{key}' mixes element types {kinds}; GGUF arrays hold one type "
                         "(nested arrays are not supported)")


def _check(key: str, vt: VT, v):
    """Validate one value against its type and return it as the plain Python value struct packs."""
    if vt == VT.STRING:
        if not isinstance(v, (str, bytes)):
            raise QuantconvError(f"metadata '{key}': {v!r} is not a string")
        return v
    if vt == VT.BOOL:
        if isinstance(v, (bool, np.bool_)) or (_is_int(v) and v in (0, 1)):
            return bool(v)
        raise QuantconvError(f"metadata '{key}': {v!r} is not a bool")
    if vt in INT_RANGE:
        lo, hi = INT_RANGE[vt]
        if not _is_int(v) or not lo <= v < hi:
            raise QuantconvError(f"metadata '{key}': {v!r} is not an integer in [{lo}, {hi - 1}] "
                                 f"as {vt.name} requires")
        return int(v)
    if vt in (VT.FLOAT32, VT.FLOAT64):
        if not _is_num(v):
            raise QuantconvError(f"metadata '{key}': {v!r} is not a number")
        return float(v)
    raise QuantconvError(f"metadata '{key}': value type {vt!r} cannot be written here")


def encode_value(key: str, value: Any, vtype: VT | None = None) -> bytes:
    """u32 value type + value. For a list/tuple/1-D array, vtype is the element type (or ARRAY)."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise QuantconvError(f"metadata '{key}' is a {value.ndim}-D array; GGUF arrays are 1-D, "
                                 "flatten it first")
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        values = list(value)
        elem = _infer_elem(key, values) if vtype in (None, VT.ARRAY) else VT(vtype)
        if elem == VT.ARRAY:
            raise QuantconvError(f"metadata '{key}': nested arrays are not supported")
        values = [_check(key, elem, v) for v in values]
        head = struct.pack("<IIQ", VT.ARRAY, elem, len(values))
        if elem == VT.STRING:
            return head + b"".join(encode_string(s) for s in values)
        return head + _pack(key, f"<{len(values)}{SCALAR_CODE[elem]}", values)

    if vtype is None:
        if isinstance(value, (bool, np.bool_)):
            vtype = VT.BOOL
        elif _is_int(value):
            vtype = _int_vtype(int(value), int(value), key)
        elif isinstance(value, (float, np.floating)):
            vtype = VT.FLOAT32
        elif isinstance(value, (str, bytes)):
            vtype = VT.STRING
        else:
            raise QuantconvError(f"metadata '{key}': cannot store a {type(value).__name__} in GGUF")
    vtype = VT(vtype)
    if vtype == VT.ARRAY:
        raise QuantconvError(f"metadata '{key}': vtype ARRAY needs a list value, got {value!r}")
    v = _check(key, vtype, value)
    if vtype == VT.STRING:
        return struct.pack("<I", vtype) + encode_string(v)
    return struct.pack("<I", vtype) + _pack(key, "<" + SCALAR_CODE[vtype], [v])


def _pack(key: str, fmt: str, values: list) -> bytes:
    try:
        return struct.pack(fmt, *values)
    except OverflowError as e:  # only a float too large for FLOAT32 gets here
        raise QuantconvError(f"metadata '{key}': value too large for FLOAT32; pass vtype=FLOAT64") from e


@dataclass
class _Decl:
    name: str
    shape: tuple[int, ...]
    dtype: Any
    nbytes: int
    offset: int = 0  # from the start of the data section, set by write_header


class GGUFWriter:
    """Declare metadata and tensors, write_header(), then write_tensor() each in order, close()."""

    def __init__(self, path, alignment: int = 32):
        self.path = os.fspath(path)
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
            raise QuantconvError(f"GGUF alignment must be a power of two, got {alignment!r}")
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise QuantconvError(f"cannot write {self.path}: folder {folder} does not exist; create it first")
        self.alignment = alignment
        name = os.path.basename(self.path)
        self._tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{next(_tmp_seq)}")
        self._kv: dict[str, bytes] = {}  # key -> encoded type + value, in insertion order
        self._tensors: list[_Decl] = []
        self._names: set[str] = set()
        self._variants: dict[int, tuple[str, dict, str]] = {}  # type id -> (spec, encoded kvs, tensor)
        self._file = None
        self._state = "declaring"  # -> "writing" -> "closed"
        self._next = 0  # index of the next tensor write_tensor expects

    # ---- declarations -------------------------------------------------------------------------
    def add_kv(self, key: str, value, vtype: VT | None = None) -> None:
        self._need_state("declaring", f"add metadata '{key}'")
        if not isinstance(key, str) or not key:
            raise QuantconvError(f"metadata key must be a non-empty string, got {key!r}")
        if key.startswith(DESCRIPTOR_PREFIX):
            raise QuantconvError(f"metadata '{key}' is written by the GGUF writer from the tensor types; "
                                 "don't add it yourself")
        if key in self._kv:
            raise QuantconvError(f"metadata key '{key}' added twice; each key may appear once")
        if key == ALIGNMENT_KEY:  # the writer owns it; a copied-over value is fine if it agrees
            if value != self.alignment:
                raise QuantconvError(f"'{ALIGNMENT_KEY}' = {value!r} disagrees with the writer's "
                                     f"alignment {self.alignment}; pass alignment= to GGUFWriter instead")
            return
        self._kv[key] = encode_value(key, value, vtype)

    def add_tensor(self, name: str, shape: tuple[int, ...], dtype) -> None:
        self._need_state("declaring", f"declare tensor '{name}'")
        if isinstance(dtype, str):
            from quantconv.formats.registry import get_dtype  # lazy: the registry is optional here
            dtype = get_dtype(dtype)
        if not isinstance(name, str) or not name:
            raise QuantconvError(f"tensor name must be a non-empty string, got {name!r}")
        if name in self._names:
            raise QuantconvError(f"tensor '{name}' declared twice; tensor names must be unique")
        shape = tuple(shape)
        if not 1 <= len(shape) <= MAX_DIMS or not all(_is_int(d) and d >= 1 for d in shape):
            raise QuantconvError(f"tensor '{name}' has shape {shape}; GGUF needs 1 to {MAX_DIMS} "
                                 "positive integer dims")
        shape = tuple(int(d) for d in shape)
        nbytes = tensor_nbytes(dtype, shape, f"tensor '{name}'")
        self._check_variant(name, dtype)
        self._names.add(name)
        self._tensors.append(_Decl(name, shape, dtype, nbytes))

    def _check_variant(self, name: str, dtype) -> None:
        # a file describes each of our type ids once, so two variants can't share an id
        if dtype.standard:
            return
        tid = int(dtype.gguf_type_id)
        # compare what the file would hold (e.g. codebooks as FLOAT32), not the Python values
        desc = {f"{DESCRIPTOR_PREFIX}{tid}.{field}": value for field, value in dtype.descriptor().items()}
        desc = {key: encode_value(key, value) for key, value in desc.items()}
        seen = self._variants.setdefault(tid, (dtype.spec, desc, name))
        if seen[1] != desc:
            raise QuantconvError(
                f"tensors '{seen[2]}' ({seen[0]}) and '{name}' ({dtype.spec}) both use GGUF type id {tid} "
                "with different layouts; one file can hold only one variant per type id, so quantize "
                "them with the same variant")

    # ---- writing ------------------------------------------------------------------------------
    def write_header(self) -> None:
        self._need_state("declaring", "write the header")
        kvs = dict(self._kv)
        kvs[ALIGNMENT_KEY] = encode_value(ALIGNMENT_KEY, self.alignment, VT.UINT32)
        for _tid, (_spec, desc, _name) in sorted(self._variants.items()):
            kvs.update(desc)

        offset = 0
        for t in self._tensors:
            t.offset = offset
            offset += align_up(t.nbytes, self.alignment)

        out = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self._tensors), len(kvs))]
        out += [encode_string(k) + v for k, v in kvs.items()]
        for t in self._tensors:
            dims = t.shape[::-1]  # GGUF lists ne0 (cols) first
            out.append(encode_string(t.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims,
                                                           int(t.dtype.gguf_type_id), t.offset))
        header = b"".join(out)
        header += bytes(align_up(len(header), self.alignment) - len(header))

        try:
            self._file = open(self._tmp, "wb")
        except OSError as e:
            raise QuantconvError(f"cannot write {self.path}: {e.strerror or e}; check the folder's "
                                 "permissions and free space") from e
        self._state = "writing"
        self._write(header)

    def write_tensor(self, name: str, data: np.ndarray) -> None:
        if self._state == "declaring":
            self.write_header()
        self._need_state("writing", f"write tensor '{name}'")
        if self._next >= len(self._tensors):
            raise QuantconvError(f"tensor '{name}': all {len(self._tensors)} declared tensors are "
                                 "already written")
        t = self._tensors[self._next]
        if name != t.name:
            why = "was never declared" if name not in self._names else "is out of order"
            raise QuantconvError(f"tensor '{name}' {why}: expected '{t.name}' next; write tensors in the "
                                 "order they were declared")
        data = self._as_bytes(t, data)
        self._write(data)
        self._write(bytes(align_up(t.nbytes, self.alignment) - t.nbytes))
        self._next += 1

    def _as_bytes(self, t: _Decl, data) -> np.ndarray:
        """Flat little-endian uint8 view of `data`, after checking it matches the declaration."""
        if not isinstance(data, np.ndarray):
            raise QuantconvError(f"tensor '{t.name}': data must be a numpy array, got {type(data).__name__}")
        if data.dtype != np.uint8:
            ok = _PLAIN_NUMPY.get(int(t.dtype.gguf_type_id), ())
            if data.dtype.name not in ok:
                raise QuantconvError(f"tensor '{t.name}' ({t.dtype.spec}): got a {data.dtype} array; pass "
                                     f"the packed bytes as uint8{' or ' + ok[0] if ok else ''}")
            if data.dtype.byteorder == ">":
                data = data.astype(data.dtype.newbyteorder("<"))
        if data.nbytes != t.nbytes:
            raise QuantconvError(f"tensor '{t.name}' ({t.dtype.spec}, shape {t.shape}) needs {t.nbytes} "
                                 f"bytes but got {data.nbytes}; quantize it with the declared type and shape")
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)

    def _write(self, b) -> None:
        try:
            self._file.write(b)
        except OSError as e:
            self.abort()
            raise QuantconvError(f"cannot write {self.path}: {e.strerror or e}; check free disk space") from e

    def close(self) -> None:
        """Finish the file and move it into place; an incomplete file is deleted instead."""
        if self._state == "closed":
            return
        if self._state == "declaring":
            self.write_header()
        if self._next < len(self._tensors):
            missing = [t.name for t in self._tensors[self._next:]]
            self.abort()
            raise QuantconvError(f"{self.path} not written: {len(missing)} declared tensor(s) never "
                                 f"written, first '{missing[0]}'; write every tensor before close()")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise QuantconvError(f"cannot write {self.path}: {e.strerror or e}; check free disk space "
                                 "and permissions") from e
        self._file = None
        self._state = "closed"

    def abort(self) -> None:
        """Give up: close and delete the temporary file; `path` is left untouched."""
        self._state = "closed"
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def _need_state(self, state: str, doing: str) -> None:
        if self._state != state:
            now = {"declaring": "before write_header()", "writing": "after write_header()",
                   "closed": "after close()/abort()"}[self._state]
            raise QuantconvError(f"cannot {doing} {now} ({self.path})")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        else:
            self.close()
        return False

    def __del__(self):  # dropped without close(): never leave the temp file behind
        if getattr(self, "_file", None) is not None:
            self.abort()
