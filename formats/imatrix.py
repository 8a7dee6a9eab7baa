"""Importance matrices in llama.cpp's two file formats, read and written.

An importance matrix holds, per weight tensor (by GGUF name), the sum over calibration tokens of each input
column's squared activation and the number of tokens summed: llama-quantize divides one by the other and
weights each column's rounding error by the result. Formats:

- GGUF (what current llama-imatrix writes): `general.type = imatrix`, `imatrix.datasets` (strings),
  `imatrix.chunk_count`, `imatrix.chunk_size` (uint32), and per tensor two F32 tensors,
  `<name>.in_sum2` (columns x n_mat) and `<name>.counts` (n_mat; n_mat > 1 only for expert stacks).
- legacy .dat: int32 n_entries; per entry int32 name length, the name, int32 ncall, int32 n_values and
  n_values float32 holding (sum / count) * ncall; then int32 chunk count and the dataset's name.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantconv.errors import QuantconvError

GGUF_MAGIC = b"GGUF"


@dataclass
class ImatrixEntry:
    """One weight tensor's statistics: sums (n_mat, columns) of squared activations, counts (n_mat,)."""

    sums: np.ndarray
    counts: np.ndarray

    def importance(self) -> np.ndarray:
        """Mean squared activation per column (n_mat, columns), as llama-quantize computes it: 1 where
        nothing was counted."""
        out = np.ones_like(self.sums, dtype=np.float32)
        seen = self.counts > 0
        out[seen] = self.sums[seen] / self.counts[seen, None]
        return out


@dataclass
class Imatrix:
    entries: dict[str, ImatrixEntry] = field(default_factory=dict)  # GGUF weight name -> statistics
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False  # read from a .dat file (its counts are the number of chunks, not of tokens)

    def importance(self, name: str) -> np.ndarray | None:
        """A dense tensor's column weights (columns,) float32, or None if the file has no entry for it."""
        e = self.entries.get(name)
        if e is None:
            return None
        return e.importance()[0] if e.sums.shape[0] == 1 else e.importance()


def _bad(path, what: str) -> QuantconvError:
    return QuantconvError(f"{path} is not a readable importance matrix: {what}; "
                          "pass a file written by llama-imatrix (GGUF or legacy .dat) or `quantconv imatrix`")


def read_imatrix(path) -> Imatrix:
    """Read either format (told apart by the GGUF magic)."""
    path = Path(path)
    try:
        head = path.open("rb").read(4)
    except OSError as e:
        raise QuantconvError(f"cannot read importance matrix {path}: {e.strerror}; check the path") from None
    return _read_gguf(path) if head == GGUF_MAGIC else _read_legacy(path)


def _read_gguf(path: Path) -> Imatrix:
    from gguf import GGUFReader

    try:
        r = GGUFReader(path)
    except Exception as e:  # gguf-py raises assorted errors on a damaged file
        raise _bad(path, f"GGUF parse error ({e})") from None

    def value(key, default=None):
        f = r.fields.get(key)
        return f.contents() if f is not None else default

    if value("general.type") not in (None, "imatrix"):
        raise _bad(path, f"general.type is {value('general.type')!r}, not 'imatrix' (is this a model file?)")
    sums, counts = {}, {}
    for t in r.tensors:
        if t.tensor_type.name != "F32":
            raise _bad(path, f"tensor {t.name} is {t.tensor_type.name}, not F32")
        if t.name.endswith(".in_sum2"):
            sums[t.name[:-len(".in_sum2")]] = np.array(t.data, dtype=np.float32)
        elif t.name.endswith(".counts"):
            counts[t.name[:-len(".counts")]] = np.array(t.data, dtype=np.float32).reshape(-1)
    if not sums or set(sums) != set(counts):
        raise _bad(path, "its .in_sum2 and .counts tensors do not pair up")
    entries = {}
    for name, s in sums.items():
        c = counts[name]
        if s.size % c.size:
            raise _bad(path, f"{name} has {s.size} sums for {c.size} counts")
        entries[name] = ImatrixEntry(s.reshape(c.size, -1), c)
    ds = value("imatrix.datasets") or []
    return Imatrix(entries, [str(d) for d in (ds if isinstance(ds, list) else [ds])],
                   int(value("imatrix.chunk_count", 0)), int(value("imatrix.chunk_size", 0)))


def _read_legacy(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise _bad(path, "it ends early")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n,) = take("<i")
    if n < 1 or n > 1_000_000:
        raise _bad(path, f"it claims {n} entries")
    entries = {}
    for _ in range(n):
        (length,) = take("<i")
        if length <= 0 or pos + length > len(data):
            raise _bad(path, "an entry name runs past the end")
        name = data[pos:pos + length].decode("utf-8", errors="replace")
        pos += length
        ncall, nval = take("<ii")
        if nval < 0 or pos + 4 * nval > len(data):
            raise _bad(path, f"entry {name} runs past the end")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        # (sum / count) * ncall, counted in chunks: keep that as sums over ncall "tokens"
        entries[name] = ImatrixEntry(values.reshape(1, -1), np.array([max(ncall, 0)], dtype=np.float32))
    chunks, datasets = 0, []
    if pos + 4 <= len(data):
        (chunks,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if 0 < length <= len(data) - pos:
                datasets.append(data[pos:pos + length].decode("utf-8", errors="replace"))
    return Imatrix(entries, datasets, int(chunks), 0, legacy=True)


def write_imatrix(path, imatrix: Imatrix) -> None:
    """Write the GGUF format that llama-quantize --imatrix reads; a temporary name until complete."""
    from gguf import GGUFWriter

    path = Path(path)
    if not imatrix.entries:
        raise QuantconvError("the importance matrix has no entries; calibrate on some text first")
    tmp = path.with_name(path.name + ".part")
    try:
        w = GGUFWriter(tmp, arch="imatrix")
        # GGUFWriter names general.architecture after `arch`; llama.cpp's files carry general.type instead,
        # and its loader reads only the keys below and the tensors
        w.add_string("general.type", "imatrix")
        w.add_array("imatrix.datasets", list(imatrix.datasets))
        w.add_uint32("imatrix.chunk_count", int(imatrix.chunk_count))
        w.add_uint32("imatrix.chunk_size", int(imatrix.chunk_size))
        for name in sorted(imatrix.entries):
            e = imatrix.entries[name]
            sums = np.ascontiguousarray(e.sums, dtype=np.float32)
            counts = np.ascontiguousarray(e.counts.reshape(-1, 1), dtype=np.float32)
            w.add_tensor(f"{name}.in_sum2", sums)
            w.add_tensor(f"{name}.counts", counts)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
