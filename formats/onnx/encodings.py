"""Weight encodings: how one GGUF tensor's packed blocks become ONNX initializers, and the nodes that
turn them back into the float32 weight (or straight into a matmul).

Every encoding reproduces the registry's dequantization bit for bit: the codes and scales are the
file's own, only re-laid out, and the float arithmetic is the registry's (one float32 multiply, plus
one add for asymmetric ints). `encode` checks that invariant in numpy before it returns.

Encodings (one per registry family, docs/onnx.md):
  float       FLOAT / FLOAT16 / BFLOAT16 initializer (+ Cast)
  dq          INT4/UINT4/FLOAT8 matmul weights, INT8/UINT8 embeddings: blocked DequantizeLinear
              (asymmetric ints: + (block sums of x) @ mins for a matmul, + min for embedding rows)
  cast        INT8/UINT8 matmul weights: Cast + Mul by the block scale (+ min), constant-folded by ORT
  table       UINT4/UINT8 code indices + a float table, Gather + Mul by the block scale
  matmulnbits com.microsoft MatMulNBits (the `ort` flavor's 4-bit linear layers; asym ints add a min term)
Embeddings gather their rows' codes and scales first and dequantize only those rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto, helper

from quantconv.errors import QuantconvError
from quantconv.formats import bitplanes
from quantconv.formats.elements import E2M1, e8m0_value
from quantconv.formats.quant_ggml import ue4m3_half
from quantconv.formats.quant_mx import GGMLMXFP4Codec, MinifloatBlockCodec, MXInt8Codec

# ---- the one switch: element types ORT's CPU DequantizeLinear implements (checked with onnxruntime
# 1.32). A dtype whose natural ONNX element type is missing here (FLOAT4E2M1 for MXFP4, the FLOAT6
# types for MXFP6) is written as a `table` decomposition with standard ops instead.
ORT_CPU_DEQUANTIZE = {TensorProto.INT4, TensorProto.UINT4, TensorProto.INT8, TensorProto.UINT8,
                      TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2}
_MINIFLOAT_ONNX = {"e4m3": TensorProto.FLOAT8E4M3FN, "e5m2": TensorProto.FLOAT8E5M2,
                   "e2m1": TensorProto.FLOAT4E2M1, "e2m3": TensorProto.FLOAT6E2M3, "e3m2": TensorProto.FLOAT6E3M2}
# MatMulNBits (com.microsoft) takes these code widths, with a power-of-two block of at least 16
MATMULNBITS_BITS = (2, 4, 8)
FLAVORS = ("standard", "ort")
ORT_FLAVOR_DTYPES = "int2, int4, int8 (and their :asym forms), q4_0, q4_1, q8_0"


@dataclass
class Blocks:
    """A tensor's blocks unpacked, GGUF orientation: codes (rows, cols), per-block params (rows, nblk)."""
    codes: np.ndarray            # uint8 element codes
    block: int
    scale: np.ndarray            # float32 value of each block scale (exact)
    scale_store: tuple           # (onnx elem type, numpy array as stored) e.g. (FLOAT16, fp16 array)
    table: np.ndarray | None     # float32 value of each code (table encoding), None for dq
    mins: np.ndarray | None = None       # float32 per-block offsets (asymmetric ints)
    dq_type: int | None = None           # ONNX element type for DequantizeLinear, None if not expressible
    dq_values: np.ndarray | None = None  # codes as that element type's integer values (signed ints)
    zero_point: int | None = None        # DequantizeLinear zero point (q4_0: 8)
    scale_mul: float = 1.0               # extra exact factor on the scale (MXINT8: 1/64)
    natural: int | None = None           # the ONNX element type ORT CPU can't dequantize (-> a table instead)


def _fp16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).reshape(b.shape[0], -1)


def _split(raw: np.ndarray, head: int, block: int, bits: int):
    """(rows*nblk, head) header bytes and (rows*nblk, block) codes of a (rows, row_bytes) tensor."""
    per = head + bitplanes.packed_bytes(bits, block)
    blocks = raw.reshape(-1, per)
    return blocks[:, :head], bitplanes.unpack(blocks[:, head:], bits, block)


def unpack_blocks(dtype, raw: np.ndarray, shape: tuple[int, int]) -> Blocks:
    """Split a quantized tensor's bytes into codes and per-block parameters, by registry family."""
    rows, cols = shape
    fam, codec = dtype.family, dtype.codec
    block = dtype.block_for(cols)
    nb = cols // block

    def grid(a):
        return np.ascontiguousarray(a).reshape(rows, -1)

    if fam == "int":
        bits, asym = codec.bits, codec.asym
        head, codes = _split(raw, 4 if asym else 2, block, bits)
        d16 = _fp16(head[:, 0:2])
        b = Blocks(grid(codes), block, grid(d16.astype(np.float32)), (TensorProto.FLOAT16, grid(d16)), None)
        if asym:
            b.mins = grid(_fp16(head[:, 2:4]).astype(np.float32))
            b.dq_type = TensorProto.UINT4 if bits == 4 else TensorProto.UINT8
            b.dq_values = b.codes
        else:   # b-bit two's complement -> its value; 2/3/5/6/7-bit ints travel as INT8
            q = np.where(b.codes >= (1 << (bits - 1)), b.codes.astype(np.int16) - (1 << bits), b.codes)
            b.dq_type = TensorProto.INT4 if bits == 4 else TensorProto.INT8
            b.dq_values = q.astype(np.int8)
        return b
    if fam == "codebook":
        head, codes = _split(raw, 2, block, 4)
        d16 = _fp16(head)
        return Blocks(grid(codes), block, grid(d16.astype(np.float32)), (TensorProto.FLOAT16, grid(d16)),
                      np.asarray(dtype.codebook, np.float32))
    if fam == "ggml" and dtype.name == "q4_0":
        head, codes = _split(raw, 2, block, 4)
        d16 = _fp16(head)
        return Blocks(grid(codes), block, grid(d16.astype(np.float32)), (TensorProto.FLOAT16, grid(d16)),
                      None, dq_type=TensorProto.UINT4,
                      dq_values=grid(codes), zero_point=8)
    if fam == "ggml" and dtype.name == "nvfp4":   # four UE4M3 scales per 64: a table with blocks of 16
        sub = codec.sub
        per = block // sub + block // 2
        blocks = raw.reshape(-1, per)
        scale = ue4m3_half(blocks[:, :block // sub]).reshape(-1, 1)
        codes = bitplanes.unpack(blocks[:, block // sub:].reshape(-1, sub // 2), 4, sub)
        s = grid(scale).astype(np.float32)
        return Blocks(grid(codes), sub, s, (TensorProto.FLOAT16, s.astype(np.float16)),
                      (2 * E2M1.values()).astype(np.float32), natural=TensorProto.FLOAT4E2M1)
    if fam in ("mx", "bmf", "blog", "bfp"):
        bits = dtype.elem_bits
        head, codes = _split(raw, 1, block, bits)
        e = grid(head)
        if np.any(e == 255):
            e8m0_value(e)   # raises the registry's "damaged file" error
        scale = np.ldexp(1.0, e.astype(np.int64) - 127).astype(np.float32)
        store = (TensorProto.FLOAT8E8M0, e)
        if isinstance(codec, MXInt8Codec):
            q = codes.view(np.int8)
            return Blocks(grid(codes), block, scale, store, None, dq_type=TensorProto.INT8,
                          dq_values=grid(q), scale_mul=1 / 64)
        natural = None
        if isinstance(codec, GGMLMXFP4Codec):   # 2^(e-128) * doubled E2M1 == 2^(e-127) * E2M1
            table, natural = E2M1.values(), TensorProto.FLOAT4E2M1
        elif isinstance(codec, MinifloatBlockCodec):
            table = codec.element.values()
            et = _MINIFLOAT_ONNX.get(codec.element.name) if fam == "mx" else None
            if et in ORT_CPU_DEQUANTIZE:
                return Blocks(grid(codes), block, scale, store, table.astype(np.float32), dq_type=et,
                              dq_values=grid(codes))
            natural = et
        elif fam == "bfp":   # sign-magnitude integers times 2^(e-127-(mant-1)); may leave E8M0's range
            mag_bits = codec.mant - 1
            c = np.arange(1 << bits)
            table = np.where(c >> mag_bits, -1.0, 1.0) * (c & ((1 << mag_bits) - 1)) + 0.0
            scale = np.ldexp(1.0, e.astype(np.int64) - 127 - mag_bits).astype(np.float32)
            store = (TensorProto.FLOAT, scale)
        else:   # blog: sign * 2^(k-K), k = 0 is zero
            c = np.arange(1 << bits)
            table = np.where(c >> (bits - 1), -1.0, 1.0) * codec.magnitudes()[c & codec.k_max] + 0.0
        return Blocks(grid(codes), block, scale, store, np.asarray(table, np.float32), natural=natural)
    raise QuantconvError(f"datatype {dtype.spec} (family {fam}) has no ONNX encoding yet")


def reference_values(b: Blocks) -> np.ndarray:
    """What the ONNX nodes compute, in numpy float32 (same operations, same rounding): each code's
    value (table entry, or integer minus zero point: the same number), times the block scale, plus
    the block min."""
    rows, cols = b.codes.shape
    x = b.table[b.codes] if b.table is not None else b.dq_values.astype(np.float32) - np.float32(b.zero_point or 0)
    scale = (b.scale * np.float32(b.scale_mul)).astype(np.float32)
    w = x.reshape(rows, -1, b.block) * scale[:, :, None]
    if b.mins is not None:
        w = w + b.mins[:, :, None]
    return w.reshape(rows, cols).astype(np.float32)


# ---- initializers ------------------------------------------------------------------------------
def _pack4(values: np.ndarray) -> bytes:
    """ONNX 4-bit packing: element 2i in the low nibble of byte i, 2i+1 in the high one."""
    v = (np.asarray(values).reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if v.size % 2:
        v = np.append(v, np.uint8(0))
    return (v[0::2] | (v[1::2] << 4)).tobytes()


_NP_RAW = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.FLOAT8E4M3FN: np.uint8,
           TensorProto.FLOAT8E5M2: np.uint8, TensorProto.FLOAT8E8M0: np.uint8, TensorProto.FLOAT: np.float32,
           TensorProto.FLOAT16: np.float16, TensorProto.BFLOAT16: np.uint16, TensorProto.INT32: np.int32,
           TensorProto.INT64: np.int64}


def make_initializer(name: str, elem_type: int, array: np.ndarray) -> TensorProto:
    array = np.ascontiguousarray(array)
    if elem_type in (TensorProto.INT4, TensorProto.UINT4):
        raw = _pack4(array)
    else:
        raw = array.astype(_NP_RAW[elem_type], copy=False).tobytes()
    return helper.make_tensor(name, elem_type, list(array.shape), raw, raw=True)


# ---- an encoded weight: initializers + how to emit its nodes ----------------------------------
@dataclass
class Encoded:
    """One weight ready for the graph. `orient` is "kn" (linear: (in, out), blocks along axis 0, feeds
    MatMul) or "nk" (embedding: GGUF orientation (rows, cols), blocks along axis 1, feeds Gather)."""
    name: str
    kind: str                     # float | dq | cast | table | matmulnbits
    orient: str
    shape: tuple[int, int]        # the float weight's shape in `orient`
    inits: list = field(default_factory=list)
    info: dict = field(default_factory=dict)   # for metadata_props / docs / inspect
    _p: dict = field(default_factory=dict)


def _orient(a: np.ndarray, orient: str) -> np.ndarray:
    return np.ascontiguousarray(a.T if orient == "kn" else a)


def encode(name: str, dtype, raw: np.ndarray, shape: tuple[int, ...], orient: str, flavor: str,
           row_perm: np.ndarray | None = None, expected: np.ndarray | None = None) -> Encoded:
    """Encode GGUF tensor `name` (registry `dtype`, bytes `raw`, numpy `shape` (rows, cols)).
    row_perm reorders rows (q/k un-permutation) — rows move with their blocks, so codes stay exact.
    expected: the GGUF's dequantized tensor (after row_perm); the encoding must reproduce it exactly."""
    rows, cols = int(np.prod(shape[:-1])) if len(shape) > 1 else 1, int(shape[-1])
    raw = np.asarray(raw, np.uint8).reshape(rows, -1)
    if row_perm is not None:
        raw = raw[row_perm]
    out_shape = (cols, rows) if orient == "kn" else (rows, cols)
    if dtype.family == "float":
        vals = dtype.dequantize(raw, (rows, cols))
        store = {"f32": (TensorProto.FLOAT, vals), "f16": (TensorProto.FLOAT16, raw.view(np.float16)),
                 "bf16": (TensorProto.BFLOAT16, raw.view(np.uint16))}[dtype.name]
        enc = Encoded(name, "float", orient, out_shape, info={"dtype": dtype.spec, "encoding": "float",
                                                             "element": TensorProto.DataType.Name(store[0])})
        enc.inits.append(make_initializer(f"{name}", store[0], _orient(store[1].reshape(rows, cols), orient)))
        enc._p = {"elem": store[0]}
        return enc
    b = unpack_blocks(dtype, raw, (rows, cols))
    ref = reference_values(b)
    want = None if expected is None else np.ascontiguousarray(expected, np.float32).reshape(rows, cols)
    if want is not None and not np.array_equal(ref.view(np.uint32), want.view(np.uint32)):
        bad = int(np.count_nonzero(ref.view(np.uint32) != want.view(np.uint32)))
        raise QuantconvError(f"internal error: the ONNX encoding of {name} ({dtype.spec}) differs from the GGUF "
                             f"dequantization in {bad} values; please report it")
    if orient == "nk":
        enc = _dq(name, dtype, b, orient, out_shape) if b.dq_type in _BYTE_INTS else _table(name, dtype, b, orient, out_shape)
    elif flavor == "ort":
        enc = _matmulnbits(name, dtype, b, rows, cols)
    elif b.dq_type in _NIBBLE_INTS or b.dq_type in _FLOAT8:
        enc = _dq(name, dtype, b, orient, out_shape)
    elif b.dq_type in _BYTE_INTS:
        enc = _cast(name, dtype, b, out_shape)
    else:
        enc = _table(name, dtype, b, orient, out_shape)
    if b.natural is not None:   # the `table` stands in for a DequantizeLinear that ORT CPU lacks
        enc.info["fallback"] = (f"{TensorProto.DataType.Name(b.natural)} DequantizeLinear is not implemented by "
                                f"onnxruntime's CPU provider: {enc.info.get('index', '')} codes + "
                                f"{len(b.table)}-entry table + block scales, standard ops")
    return enc


# Which form a block-quantized weight takes (measured with onnxruntime 1.32 CPU, docs/onnx.md):
#  4-bit ints feeding MatMul: DequantizeLinear -> MatMul, which ORT fuses into its 4-bit MatMulNBits.
#  8-bit containers (int8, q8_0, mxint8, the 2/3/5/6/7-bit ints stored a byte per code): ORT would fuse
#    DequantizeLinear -> MatMul into an 8-bit MatMulNBits whose float-activation kernel is ~50x slower than
#    the 4-bit one, so these are written as Cast + Mul (the same product), which ORT constant-folds at load.
#  FLOAT8 (mxfp8): DequantizeLinear (ORT neither fuses nor folds it: dequantized per run).
#  Embeddings ("nk"): rows are gathered first and only those are dequantized (8-bit ints: DequantizeLinear
#    on the gathered rows; everything else a table on the gathered codes, which Gather can index).
_NIBBLE_INTS = {TensorProto.INT4, TensorProto.UINT4}
_BYTE_INTS = {TensorProto.INT8, TensorProto.UINT8}
_FLOAT8 = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2}
MATMULNBITS_FAST_BITS = (4,)   # ORT's accuracy_level 0 MatMulNBits: 2 and 8 bits run ~40-50x slower than 4


def _scale_init(name: str, b: Blocks, orient: str, rank3: bool):
    """The stored scale initializer, shaped for DequantizeLinear (2-D) or for a broadcast Mul (3-D)."""
    et, arr = b.scale_store
    arr = _orient(arr, orient)
    if rank3:
        arr = arr[:, None, :] if orient == "kn" else arr[:, :, None]
    return make_initializer(f"{name}.scales", et, arr), et


def _mins_init(name: str, b: Blocks, orient: str, rank3: bool):
    m = _orient(b.mins, orient)
    if rank3:
        m = m[:, None, :] if orient == "kn" else m[:, :, None]
    return make_initializer(f"{name}.mins", TensorProto.FLOAT, m)


def _dq(name, dtype, b: Blocks, orient, out_shape) -> Encoded:
    """DequantizeLinear codes. kn: a matmul weight (asymmetric ints: + (block sums of x) @ mins, so that the
    DequantizeLinear still feeds the MatMul directly). nk: an embedding, dequantized after the Gather."""
    enc = Encoded(name, "dq", orient, out_shape,
                  info={"dtype": dtype.spec, "encoding": "dq", "element": TensorProto.DataType.Name(b.dq_type),
                        "block": b.block})
    enc.inits.append(make_initializer(f"{name}.codes", b.dq_type, _orient(b.dq_values, orient)))
    init, et = _scale_init(name, b, orient, rank3=False)
    enc.inits.append(init)
    if b.zero_point is not None:
        zp = np.full(init.dims, b.zero_point, np.uint8)
        enc.inits.append(make_initializer(f"{name}.zero_point", b.dq_type, zp))
    if b.mins is not None:
        enc.inits.append(_mins_init(name, b, orient, rank3=orient == "nk"))
    enc._p = {"scale_type": et, "block": b.block, "scale_mul": b.scale_mul, "zp": b.zero_point is not None,
              "mins": b.mins is not None}
    return enc


def _cast(name, dtype, b: Blocks, out_shape) -> Encoded:
    """8-bit integer codes (kn) as Cast(codes) x scale (+ min): DequantizeLinear's arithmetic in plain ops."""
    enc = Encoded(name, "cast", "kn", out_shape,
                  info={"dtype": dtype.spec, "encoding": "cast", "element": TensorProto.DataType.Name(b.dq_type),
                        "block": b.block})
    enc.inits.append(make_initializer(f"{name}.codes", b.dq_type, _orient(b.dq_values, "kn")))
    init, et = _scale_init(name, b, "kn", rank3=True)
    enc.inits.append(init)
    if b.mins is not None:
        enc.inits.append(_mins_init(name, b, "kn", rank3=True))
    enc._p = {"scale_type": et, "block": b.block, "scale_mul": b.scale_mul, "mins": b.mins is not None}
    return enc


def _int_values(b: Blocks) -> np.ndarray:
    """The value of each code 0..2^bits-1 of a DequantizeLinear element type (signed ints two's
    complement, minus the zero point), or the minifloat table: a `table` for gathered rows."""
    if b.table is not None:
        return b.table
    n = 16 if b.dq_type in _NIBBLE_INTS else 256
    c = np.arange(n, dtype=np.int64)
    if b.dq_type in (TensorProto.INT4, TensorProto.INT8):
        c = np.where(c >= n // 2, c - n, c)
    return (c - (b.zero_point or 0)).astype(np.float32)


def _table(name, dtype, b: Blocks, orient, out_shape) -> Encoded:
    """Code indices + a float table. kn: UINT4/UINT8 indices, Cast + Gather (ORT folds it at load). nk (an
    embedding): indices as UINT8 bytes, two 4-bit codes per byte in ONNX's nibble order (Gather can't
    index UINT4), unpacked after gathering the rows."""
    table = _int_values(b)
    codes = b.codes   # the raw codes: table[code] is each one's value for every family
    nibble = int(codes.max(initial=0)) < 16 and len(table) <= 16
    enc = Encoded(name, "table", orient, out_shape,
                  info={"dtype": dtype.spec, "encoding": "table", "block": b.block, "table_size": len(table),
                        "index": "UINT4" if nibble and orient == "kn" else "UINT8 (two 4-bit codes a byte)"
                        if nibble else "UINT8"})
    if orient == "kn":
        enc.inits.append(make_initializer(f"{name}.codes", TensorProto.UINT4 if nibble else TensorProto.UINT8,
                                          _orient(codes, orient)))
    else:
        packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8) if nibble else codes
        enc.inits.append(make_initializer(f"{name}.codes", TensorProto.UINT8, packed))
    enc.inits.append(make_initializer(f"{name}.table", TensorProto.FLOAT, np.asarray(table, np.float32)))
    init, et = _scale_init(name, b, orient, rank3=orient == "kn")
    enc.inits.append(init)
    if b.mins is not None:
        enc.inits.append(_mins_init(name, b, orient, rank3=True))
    enc._p = {"scale_type": et, "block": b.block, "scale_mul": b.scale_mul, "packed": nibble and orient == "nk",
              "mins": b.mins is not None}
    return enc


def matmulnbits_problem(dtype, cols: int) -> str | None:
    """Why a quantized linear weight can't be a MatMulNBits, or None if it can."""
    block = dtype.block_for(cols)
    ok_family = (dtype.family == "int" and dtype.elem_bits in MATMULNBITS_BITS) or dtype.name == "q4_0"
    if not ok_family:
        return f"{dtype.spec} is not a 2/4/8-bit uniform integer"
    if block < 16 or block & (block - 1):
        return f"{dtype.spec} has groups of {block}, not a power of two >= 16"
    return None


def ort_flavor_error(name: str, why: str) -> QuantconvError:
    return QuantconvError(f"--onnx-flavor ort takes uniform-integer linear weights (com.microsoft MatMulNBits), but "
                          f"tensor {name}: {why}. Use --onnx-flavor standard (standard operators, every quantconv "
                          f"dtype) or export with one of: {ORT_FLAVOR_DTYPES} (group a power of two >= 16)")


def _pack_nbits(u: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits blob order: within a block, element k at bit (k*bits) % 8 of byte k*bits // 8."""
    per = 8 // bits
    u = u.reshape(*u.shape[:-1], -1, per).astype(np.uint8)
    out = np.zeros(u.shape[:-1], np.uint8)
    for j in range(per):
        out |= u[..., j] << np.uint8(j * bits)
    return out


def _matmulnbits(name, dtype, b: Blocks, rows, cols) -> Encoded:
    why = matmulnbits_problem(dtype, cols)
    if why:
        raise ort_flavor_error(name, why)
    bits = dtype.elem_bits
    if bits not in MATMULNBITS_FAST_BITS:   # exact either way; this one runs at 4-bit speed (see above)
        return _cast(name, dtype, b, (cols, rows))
    nb = cols // b.block
    if b.mins is None and b.zero_point is None:   # signed q: stored as q + 2^(bits-1), the default zero point
        u = (b.dq_values.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    else:
        u = b.codes
    blob = _pack_nbits(u.reshape(rows, nb, b.block), bits)
    enc = Encoded(name, "matmulnbits", "kn", (cols, rows),
                  info={"dtype": dtype.spec, "encoding": "matmulnbits", "bits": bits, "block": b.block})
    enc.inits.append(make_initializer(f"{name}.codes", TensorProto.UINT8, blob))
    enc.inits.append(make_initializer(f"{name}.scales", TensorProto.FLOAT, b.scale.reshape(-1)))
    if b.mins is not None:   # codes are unsigned with zero point 0; the min term is a separate matmul
        zp_bytes = math.ceil(nb * bits / 8)
        enc.inits.append(make_initializer(f"{name}.zero_point", TensorProto.UINT8, np.zeros(rows * zp_bytes, np.uint8)))
        enc.inits.append(make_initializer(f"{name}.mins", TensorProto.FLOAT, np.ascontiguousarray(b.mins.T)))
    enc._p = {"K": cols, "N": rows, "bits": bits, "block": b.block, "mins": b.mins is not None}
    return enc


# ---- nodes ---------------------------------------------------------------------------------------
# Every node of one weight's use is emitted in a GraphBuilder scope named after it (node names
# "<tensor>/..."), so that runtime.onnx_runner.dequantized_weights can cut that use out of the graph and
# run it on an identity matrix (linears, tied head) or on every token id (embedding).
def _float_scale(g, enc: Encoded, scale: str) -> str:
    p = enc._p
    if p["scale_type"] != TensorProto.FLOAT:
        scale = g.op("Cast", [scale], to=TensorProto.FLOAT)
    if p["scale_mul"] != 1.0:
        scale = g.op("Mul", [scale, g.const(np.float32(p["scale_mul"]))])
    return scale


def _block_sums_times_mins(g, x: str, enc: Encoded, K: int) -> str:
    """sum_k x_k (d u_k + m_b) = sum_k x_k d u_k + sum_b (sum_{k in b} x_k) m_b: the second term."""
    nb = K // enc._p["block"]
    xb = g.op("Reshape", [x, g.ints(0, 0, nb, enc._p["block"])])
    xs = g.op("ReduceSum", [xb, g.ints(-1)], keepdims=0)
    return g.op("MatMul", [xs, f"{enc.name}.mins"])


def linear_nodes(g, x: str, enc: Encoded) -> str:
    """x (batch, seq, K) times the weight -> (batch, seq, N)."""
    n, p = enc.name, enc._p
    K, N = enc.shape
    with g.scope(n):
        if enc.kind == "matmulnbits":
            ins = [x, f"{n}.codes", f"{n}.scales"] + ([f"{n}.zero_point"] if p["mins"] else [])
            y = g.op("MatMulNBits", ins, domain="com.microsoft", K=K, N=N, bits=p["bits"], block_size=p["block"],
                     accuracy_level=0)
            return g.op("Add", [y, _block_sums_times_mins(g, x, enc, K)]) if p["mins"] else y
        if enc.kind == "float":
            w = n if p["elem"] == TensorProto.FLOAT else g.op("Cast", [n], to=TensorProto.FLOAT)
            return g.op("MatMul", [x, w])
        scale = _float_scale(g, enc, f"{n}.scales")
        if enc.kind == "dq":
            ins = [f"{n}.codes", scale] + ([f"{n}.zero_point"] if p["zp"] else [])
            w = g.op("DequantizeLinear", ins, axis=0, block_size=p["block"])
            y = g.op("MatMul", [x, w])
            return g.op("Add", [y, _block_sums_times_mins(g, x, enc, K)]) if p["mins"] else y
        if enc.kind == "cast":
            v = g.op("Cast", [f"{n}.codes"], to=TensorProto.FLOAT)
        else:
            v = g.op("Gather", [f"{n}.table", g.op("Cast", [f"{n}.codes"], to=TensorProto.INT32)])
        w = g.op("Mul", [g.op("Reshape", [v, g.ints(K // p["block"], p["block"], N)]), scale])
        if p["mins"]:
            w = g.op("Add", [w, f"{n}.mins"])
        return g.op("MatMul", [x, g.op("Reshape", [w, g.ints(K, N)])])


def _rows(g, enc: Encoded, codes: str, lead: list[int], ids: str | None) -> str:
    """Dequantize code rows: an embedding's rows gathered for `ids`, or (ids None) all of them. codes
    (*lead, cols or cols/2) -> float (*lead, cols); lead: the leading dims for Reshape (0 = copy)."""
    n, p = enc.name, enc._p
    cols, block = enc.shape[1], p.get("block", 1)
    if enc.kind == "float":
        return codes if p["elem"] == TensorProto.FLOAT else g.op("Cast", [codes], to=TensorProto.FLOAT)
    scale, mins = f"{n}.scales", f"{n}.mins" if p["mins"] else None
    gathered, idx = ids is not None, ids
    if gathered:   # FLOAT/FLOAT16 scales gather as they are; E8M0 can't be gathered: cast first (folded)
        if p["scale_type"] in (TensorProto.FLOAT, TensorProto.FLOAT16):
            scale = _float_scale(g, enc, g.op("Gather", [scale, idx]))
        else:
            scale = g.op("Gather", [_float_scale(g, enc, scale), idx])
        mins = g.op("Gather", [mins, idx]) if mins else None
    else:
        scale = _float_scale(g, enc, scale)
    blocked = g.ints(*lead, cols // block, block)
    flat = g.ints(*lead, cols)
    if enc.kind == "dq":
        if not gathered:   # the whole table (a tied head): Cast + Mul, which ORT constant-folds
            v = g.op("Reshape", [g.op("Cast", [codes], to=TensorProto.FLOAT), blocked])
            w = g.op("Mul", [v, g.op("Unsqueeze", [scale, g.ints(-1)])])
        else:
            w = g.op("DequantizeLinear", [codes, scale], axis=-1, block_size=block)
            if not mins:
                return w
            w = g.op("Reshape", [w, blocked])
    else:
        if p["packed"]:   # byte j holds codes 2j (low nibble) and 2j+1 (high nibble)
            lo = g.op("BitwiseAnd", [codes, g.const(np.uint8(15))])
            hi = g.op("BitShift", [codes, g.const(np.uint8(4))], direction="RIGHT")
            both = g.op("Concat", [g.op("Unsqueeze", [lo, g.ints(-1)]), g.op("Unsqueeze", [hi, g.ints(-1)])], axis=-1)
            codes = g.op("Reshape", [both, flat])
        v = g.op("Gather", [f"{n}.table", g.op("Cast", [codes], to=TensorProto.INT32)])
        w = g.op("Mul", [g.op("Reshape", [v, blocked]), g.op("Unsqueeze", [scale, g.ints(-1)])])
    if mins:
        w = g.op("Add", [w, mins])
    return g.op("Reshape", [w, flat])


def embedding_nodes(g, ids: str, enc: Encoded) -> str:
    """The rows of an "nk" weight for token ids (batch, seq) -> (batch, seq, cols): only the gathered rows
    are dequantized."""
    with g.scope(enc.name):
        rows = g.op("Gather", [enc.name if enc.kind == "float" else f"{enc.name}.codes", ids])
        return _rows(g, enc, rows, [0, 0], ids)


def tied_head_nodes(g, x: str, enc: Encoded) -> str:
    """x (batch, seq, cols) times the "nk" table transposed -> logits (batch, seq, rows). Every input of the
    weight's side is an initializer, so onnxruntime constant-folds it to one float32 matrix at load (no
    per-step dequantization, no extra bytes in the file)."""
    rows, cols = enc.shape
    with g.scope(f"{enc.name}#head"):
        w = _rows(g, enc, enc.name if enc.kind == "float" else f"{enc.name}.codes", [rows], None)
        return g.op("MatMul", [x, g.op("Transpose", [w], perm=[1, 0])])
