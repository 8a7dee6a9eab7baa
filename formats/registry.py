"""The datatype registry: one row per datatype, the single source of truth for packing, the GGUF
writer/reader and the C++ kernels (which decode what `DType.descriptor()` describes).

A datatype is named by a spec string ``NAME[:key=value,flag,...]``; `get_dtype` turns it into a
`DType` (validating every option) and `list_dtypes` gives the default row of every name.
Layouts and rounding rules: docs/layouts.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from quantconv.errors import QuantconvError
from quantconv.formats import bitplanes
from quantconv.formats.codebooks import FIXED_CODEBOOKS, student_float4
from quantconv.formats.codec import Codec
from quantconv.formats.elements import E2M1, E2M3, E3M2, E4M3, E5M2, Minifloat, minifloat
from quantconv.formats.quant_block import BFPCodec, BlockLogCodec
from quantconv.formats.quant_codebook import CodebookCodec
from quantconv.formats.quant_ggml import IQ4NL_VALUES, IQ4NLCodec, FloatCodec, NVFP4Codec, Q4_0Codec, Q5_0Codec, Q5_1Codec
from quantconv.formats.quant_int import IntCodec
from quantconv.formats.quant_mx import GGMLMXFP4Codec, MinifloatBlockCodec, MXInt8Codec
from quantconv.formats.spec import format_spec, parse_spec

# ggml type ids of the standard types quantconv writes as they are.
GGML_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30,
            "mxfp4": 39, "nvfp4": 40}
# quantconv's own ids live in [1024, 4096), far above ggml's (43 types in Nov 2026).
OWN_ID_RANGE = (1024, 4096)
GROUPS = (16, 32, 64, 128, 256, 512, 1024)   # plus 0: one group per row ("per-channel")

# Own type ids, per family: base + variant index * 8 + group code (the group's place in GROUPS, 7 for
# one group per row); MX blocks are always 32, so an MX id is base + index. Files carry these ids:
# a base or an index never changes once written.
TYPE_ID_BASES = {"int": 1024, "codebook": 1280, "mx": 1536, "bfp": 1600, "bmf": 1700, "blog": 2100}
_GROUP_CODES = (*GROUPS, 0)
_UNGROUPED = {"mx"}


def encode_type_id(family: str, index: int, group: int | None = None) -> int:
    """The own type id of a family's variant `index` (see TYPE_ID_BASES) at a group size."""
    base = TYPE_ID_BASES[family]
    type_id = base + index if family in _UNGROUPED else base + index * 8 + _GROUP_CODES.index(group)
    top = min([b for b in TYPE_ID_BASES.values() if b > base] + [OWN_ID_RANGE[1]])
    if not (base <= type_id < top and index >= 0):
        raise ValueError(f"{family} variant {index} (group {group}) has no type id below {top}")
    return type_id


def decode_type_id(type_id: int) -> tuple[str, int, int | None]:
    """(family, index, group) of an own type id: encode_type_id's inverse (group None for MX)."""
    if not OWN_ID_RANGE[0] <= type_id < OWN_ID_RANGE[1]:
        raise ValueError(f"type id {type_id} is not one of quantconv's own ids {OWN_ID_RANGE}")
    family = max((f for f, b in TYPE_ID_BASES.items() if b <= type_id), key=TYPE_ID_BASES.__getitem__)
    offset = type_id - TYPE_ID_BASES[family]
    if family in _UNGROUPED:
        return family, offset, None
    index, code = divmod(offset, 8)
    return family, index, _GROUP_CODES[code]


@dataclass(frozen=True)
class DType:
    spec: str                     # canonical spec string, e.g. "sf4:group=128,nu=5"
    name: str                     # base name, e.g. "sf4"
    family: str                   # float | int | codebook | mx | bfp | bmf | blog | ggml
    elem_bits: int
    block_size: int               # elements per block; 0 = one block per row (per-channel)
    scale_encoding: str
    gguf_type_id: int
    standard: bool                # stock ggml knows this type id
    description: str
    codec: Codec = field(repr=False, compare=False)
    params: dict = field(default_factory=dict, compare=False)
    codebook: tuple[float, ...] | None = None

    # --- sizes ---------------------------------------------------------------------------------
    def block_for(self, cols: int) -> int:
        return self.block_size or cols

    @property
    def bytes_per_block(self) -> int:
        """Bytes of one block (per-channel types: of one 16-element reference block is meaningless,
        so this reports 0 and `row_bytes` is the authority)."""
        return self.codec.block_bytes(self.block_size) if self.block_size else 0

    def row_bytes(self, cols: int) -> int:
        return self.codec.row_bytes(cols, self.block_for(cols))

    def tensor_bytes(self, shape: tuple[int, ...]) -> int:
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        return rows * self.row_bytes(int(shape[-1]))

    def bits_per_weight(self, cols: int | None = None) -> float:
        cols = cols or self.block_size or 4096
        return self.row_bytes(cols) * 8 / cols

    def check_shape(self, shape: tuple[int, ...], what: str = "tensor") -> None:
        cols = int(shape[-1])
        block = self.block_for(cols)
        if cols % block:
            raise QuantconvError(f"{what} has rows of {cols} values, not a multiple of {self.spec}'s block of "
                                 f"{block}; pick a group size that divides {cols} (e.g. --group-size 32)")
        if self.block_size == 0 and not bitplanes.check_block(self.elem_bits, cols):
            raise QuantconvError(f"{what}: per-channel {self.spec} needs rows that are a multiple of 8 values")

    # --- quantize / dequantize -----------------------------------------------------------------
    def quantize(self, w: np.ndarray) -> np.ndarray:
        """(rows, cols) or (cols,) float -> (rows, row_bytes) uint8 packed blocks."""
        w = np.asarray(w, dtype=np.float32)
        w2 = w.reshape(-1, w.shape[-1]) if w.ndim != 1 else w.reshape(1, -1)
        self.check_shape(w2.shape)
        if not np.all(np.isfinite(w2)):
            raise QuantconvError("values contain NaN or inf; fix the source weights (they cannot be quantized)")
        return self.codec.quantize_rows(w2, self.block_for(w2.shape[1]))

    def dequantize(self, data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        nbytes = self.tensor_bytes(shape)
        data = np.asarray(data, dtype=np.uint8).reshape(-1)
        if data.size != nbytes:
            raise QuantconvError(f"{self.spec} data of shape {shape} must be {nbytes} bytes, got {data.size}")
        return self.codec.dequantize_rows(data, self.block_for(shape[-1])).reshape(shape)

    def fake_quantize(self, w: np.ndarray) -> np.ndarray:
        """Round trip through the datatype (what the file will hold), in float32."""
        w = np.asarray(w, dtype=np.float32)
        return self.dequantize(self.quantize(w), w.shape)

    # --- self-description ----------------------------------------------------------------------
    def descriptor(self) -> dict[str, Any]:
        """What a GGUF file records about this type (quantconv.type.<id>.*) and the C++ kernels read."""
        d = {"spec": self.spec, "name": self.name, "family": self.family, "block_size": self.block_size,
             "bytes_per_block": self.bytes_per_block, "elem_bits": self.elem_bits,
             "scale_encoding": self.scale_encoding}
        if self.codebook is not None:
            d["codebook"] = [float(v) for v in self.codebook]
        d.update(self.params)
        return d

    def row(self) -> dict[str, Any]:
        """The `quantconv dtypes` row."""
        return {"name": self.spec, "family": self.family, "bits_per_weight": round(self.bits_per_weight(), 4),
                "block_size": self.block_size or "row", "elem_bits": self.elem_bits,
                "scale": self.scale_encoding, "codebook": list(self.codebook) if self.codebook else None,
                "gguf_type_id": self.gguf_type_id, "standard": self.standard, "description": self.description}


# ------------------------------------------------------------------------------------------------
# Option parsing helpers
# ------------------------------------------------------------------------------------------------
class _Options:
    """Consumes a spec's options; whatever is left unconsumed at the end is an error."""

    def __init__(self, spec: str, options: dict[str, str]):
        self.spec, self.left = spec, dict(options)

    def _bad(self, key: str, why: str) -> QuantconvError:
        return QuantconvError(f"datatype '{self.spec}': {key} {why}")

    def flag(self, key: str) -> bool:
        value = self.left.pop(key, "0")
        if value not in ("0", "1", "true", "false", "yes", "no"):
            raise self._bad(key, f"is a flag, give it bare (e.g. '{key}'), not '{key}={value}'")
        return value in ("1", "true", "yes")

    def integer(self, key: str, default: int, allowed) -> int:
        raw = self.left.pop(key, None)
        if raw is None:
            return default
        if raw in ("row", "channel", "per-channel"):
            raw = "0"
        try:
            value = int(raw)
        except ValueError:
            raise self._bad(key, f"must be an integer, got '{raw}'") from None
        if value not in allowed:
            raise self._bad(key, f"must be one of {sorted(allowed)}, got {value}")
        return value

    def number(self, key: str, default: float) -> float:
        raw = self.left.pop(key, None)
        if raw is None:
            return default
        try:
            return float(raw)
        except ValueError:
            raise self._bad(key, f"must be a number, got '{raw}'") from None

    def choice(self, choices: tuple[str, ...], default: str) -> str:
        """One of several mutually exclusive flags (e.g. mxfp6:e3m2), or elem=NAME."""
        picked = [c for c in choices if self.left.pop(c, None) is not None]
        elem = self.left.pop("elem", None)
        if elem is not None:
            picked.append(elem)
        if len(picked) > 1 or (picked and picked[0] not in choices):
            raise self._bad("element", f"must be one of {', '.join(choices)}")
        return picked[0] if picked else default

    def done(self) -> None:
        if self.left:
            key = next(iter(self.left))
            raise QuantconvError(f"datatype '{self.spec}' has no option '{key}'; see `quantconv dtypes --json {self.spec.split(':')[0]}`")


def _group_key(group: int, default: int) -> dict:
    return {} if group == default else {"group": group}


# ------------------------------------------------------------------------------------------------
# Row builders: one per family; each takes (name, options) and returns a DType
# ------------------------------------------------------------------------------------------------
def _float(name: str, opt: _Options) -> DType:
    opt.done()
    return DType(spec=name, name=name, family="float", elem_bits={"f32": 32, "f16": 16, "bf16": 16}[name],
                 block_size=1, scale_encoding="none", gguf_type_id=GGML_IDS[name], standard=True,
                 description={"f32": "IEEE binary32", "f16": "IEEE binary16",
                              "bf16": "bfloat16 (round to nearest even)"}[name],
                 codec=FloatCodec(name))


# ggml's 5-bit block types: (bits, scale encoding, description, codec)
_GGML_BLOCK32 = {
    "q5_0": (5, "fp16", "ggml Q5_0: fp16 scale = signed peak / -16, codes 0..31 minus 16", Q5_0Codec()),
    "q5_1": (5, "fp16 scale + fp16 min", "ggml Q5_1: fp16 scale = (max - min) / 31 and fp16 min, codes 0..31",
             Q5_1Codec()),
}


def _ggml(name: str, opt: _Options) -> DType:
    opt.done()
    if name == "q8_0":
        return _int_row("int8", 8, False, 32, "ggml Q8_0 (= int8:group=32)", spec="q8_0")
    if name == "q4_1":
        return _int_row("int4", 4, True, 32, "ggml Q4_1 (= int4:asym,group=32)", spec="q4_1")
    if name == "q4_0":
        return DType(spec="q4_0", name="q4_0", family="ggml", elem_bits=4, block_size=32, scale_encoding="fp16",
                     gguf_type_id=GGML_IDS["q4_0"], standard=True,
                     description="ggml Q4_0: fp16 scale = signed peak / -8, codes 0..15 minus 8", codec=Q4_0Codec())
    if name == "iq4_nl":
        # a 4-bit codebook block of 32 in our codebook family's exact layout (fp16 d, then the nibbles), so
        # it decodes, runs and converts to ONNX as one; only its rounding (ggml's scale search) is its own
        table = tuple(float(v) for v in IQ4NL_VALUES)
        return DType(spec=name, name=name, family="codebook", elem_bits=4, block_size=32, scale_encoding="fp16",
                     gguf_type_id=GGML_IDS[name], standard=True,
                     description="ggml IQ4_NL: fp16 scale (ggml's weighted search) x a 16-entry non-linear codebook",
                     codec=IQ4NLCodec(), params={"flip": 0}, codebook=table)
    if name in _GGML_BLOCK32:
        bits, scales, description, codec = _GGML_BLOCK32[name]
        return DType(spec=name, name=name, family="ggml", elem_bits=bits, block_size=32, scale_encoding=scales,
                     gguf_type_id=GGML_IDS[name], standard=True, description=description, codec=codec)
    return DType(spec="nvfp4", name="nvfp4", family="ggml", elem_bits=4, block_size=64, scale_encoding="4 x ue4m3",
                 gguf_type_id=GGML_IDS["nvfp4"], standard=True,
                 description="ggml NVFP4: E2M1 with a UE4M3 scale per 16 values", codec=NVFP4Codec())


def _int_row(name: str, bits: int, asym: bool, group: int, description: str, spec: str | None = None) -> DType:
    canonical = spec or format_spec(name, {"asym": asym, **_group_key(group, 128)})
    if not asym and bits == 8 and group == 32:
        type_id, standard = GGML_IDS["q8_0"], True
    elif asym and bits == 4 and group == 32:
        type_id, standard = GGML_IDS["q4_1"], True
    else:
        type_id, standard = encode_type_id("int", asym * 16 + bits - 2, group), False
    return DType(spec=canonical, name=name, family="int", elem_bits=bits, block_size=group,
                 scale_encoding="fp16 scale + fp16 min" if asym else "fp16 scale", gguf_type_id=type_id,
                 standard=standard, description=description, codec=IntCodec(bits, asym), params={"asym": int(asym)})


def _int(name: str, opt: _Options) -> DType:
    bits = int(name[3:])
    asym = opt.flag("asym")
    opt.flag("sym")
    group = opt.integer("group", 128, set(GROUPS) | {0})
    opt.done()
    kind = "asymmetric (scale + min)" if asym else "symmetric"
    where = "per row" if group == 0 else f"per {group}"
    return _int_row(name, bits, asym, group, f"{bits}-bit integer, {kind}, {where}")


# codebook type id indices; any sf4 nu but the default takes the next one (its table is in the file)
_CODEBOOK_INDEX = {"nf4": 0, "sf4": 1, "fp4": 2, "fp4-sr": 3, "fp4-sp": 4, "apot4": 5, "apot4-sp": 6, "fp4-log": 7}
DEFAULT_NU = 5.0


def _codebook(name: str, opt: _Options) -> DType:
    group = opt.integer("group", 128, set(GROUPS))
    flip = opt.flag("flip")
    options: dict[str, Any] = {"flip": flip, **_group_key(group, 128)}
    index = _CODEBOOK_INDEX[name]
    if name == "sf4":
        nu = opt.number("nu", DEFAULT_NU)
        table = student_float4(nu)
        if nu != DEFAULT_NU:
            options["nu"] = f"{nu:g}"
            index = len(_CODEBOOK_INDEX)   # any other nu: one id per group size, codebook in metadata
        description = f"Student Float 4 (t, nu={nu:g})"
    else:
        table, description = FIXED_CODEBOOKS[name]
    opt.done()
    return _codebook_row(name, table, group, flip, index, format_spec(name, options), description)


def _codebook_row(name, table, group, flip, index, spec, description) -> DType:
    table = tuple(float(np.float32(v)) for v in table)   # what the file stores and the kernels use
    return DType(spec=spec, name=name, family="codebook", elem_bits=4, block_size=group,
                 scale_encoding="fp16 absmax/max|codebook|" + (" signed" if flip else ""),
                 gguf_type_id=encode_type_id("codebook", index, group), standard=False,
                 description=description + (", signed scale" if flip else ""), codec=CodebookCodec(table, flip),
                 params={"flip": int(flip)}, codebook=table)


_MX_ELEMENTS: dict[str, tuple[tuple[str, ...], dict[str, Minifloat]]] = {
    "mxfp6": (("e2m3", "e3m2"), {"e2m3": E2M3, "e3m2": E3M2}),
    "mxfp8": (("e4m3", "e5m2"), {"e4m3": E4M3, "e5m2": E5M2}),
}
_MX_INDEX = {"e2m3": 1, "e3m2": 2, "e4m3": 3, "e5m2": 4, "int8": 5}   # type id indices (E2M1 is ggml's MXFP4)


def _element_params(e: Minifloat) -> dict:
    return {"element": e.name, "ebits": e.ebits, "mbits": e.mbits, "emax": e.emax, "element_max": e.max_value}


def _mx(name: str, opt: _Options) -> DType:
    if name == "mxint8":
        opt.done()
        return DType(spec="mxint8", name=name, family="mx", elem_bits=8, block_size=32, scale_encoding="e8m0",
                     gguf_type_id=encode_type_id("mx", _MX_INDEX["int8"]), standard=False,
                     description="OCP MXINT8: int8 elements (q/64), E8M0 scale per 32", codec=MXInt8Codec(),
                     params={"element": "int8"})
    if name == "mxfp4":
        ggml = opt.flag("ggml")
        opt.done()
        how = "ggml's reference rounding" if ggml else "round to nearest even"
        return DType(spec="mxfp4:ggml" if ggml else "mxfp4", name=name, family="mx", elem_bits=4, block_size=32,
                     scale_encoding="e8m0", gguf_type_id=GGML_IDS["mxfp4"], standard=True,
                     description=f"OCP MXFP4: E2M1 elements, E8M0 scale per 32 ({how}); = ggml MXFP4",
                     codec=GGMLMXFP4Codec() if ggml else MinifloatBlockCodec(E2M1), params=_element_params(E2M1))
    choices, elements = _MX_ELEMENTS[name]
    which = opt.choice(choices, choices[0])
    opt.done()
    element = elements[which]
    return DType(spec=name if which == choices[0] else f"{name}:{which}", name=name, family="mx",
                 elem_bits=element.bits, block_size=32, scale_encoding="e8m0",
                 gguf_type_id=encode_type_id("mx", _MX_INDEX[which]), standard=False,
                 description=f"OCP {name.upper()} ({which.upper()} elements, E8M0 scale per 32)",
                 codec=MinifloatBlockCodec(element), params=_element_params(element))


def _bfp(name: str, opt: _Options) -> DType:
    mant = opt.integer("mant", 6, set(range(2, 9)))
    block = opt.integer("block", 16, {16, 32, 64, 128})
    opt.done()
    return DType(spec=format_spec(name, {"mant": mant, "block": block} if (mant, block) != (6, 16) else {}),
                 name=name, family="bfp", elem_bits=mant, block_size=block, scale_encoding="shared 8-bit exponent",
                 gguf_type_id=encode_type_id("bfp", mant - 2, block), standard=False,
                 description=f"block floating point: {mant}-bit sign-magnitude mantissas, shared exponent per {block}",
                 codec=BFPCodec(mant), params={"mant": mant})


def _bmf(name: str, opt: _Options) -> DType:
    ebits = opt.integer("exp", 2, set(range(1, 7)))
    mbits = opt.integer("mant", 3, set(range(0, 7)))
    block = opt.integer("block", 16, {16, 32, 64, 128})
    opt.done()
    if 1 + ebits + mbits > 8:
        raise QuantconvError(f"datatype '{name}': 1 + exp + mant must be at most 8 bits (got {1 + ebits + mbits})")
    element = minifloat(ebits, mbits)
    default = (ebits, mbits, block) == (2, 3, 16)
    return DType(spec=format_spec(name, {} if default else {"exp": ebits, "mant": mbits, "block": block}),
                 name=name, family="bmf", elem_bits=element.bits, block_size=block, scale_encoding="e8m0 shared bias",
                 gguf_type_id=encode_type_id("bmf", (ebits - 1) * 8 + mbits, block), standard=False,
                 description=f"block minifloat: E{ebits}M{mbits} elements, shared exponent bias per {block}",
                 codec=MinifloatBlockCodec(element), params=_element_params(element))


def _blog(name: str, opt: _Options) -> DType:
    bits = opt.integer("bits", 4, set(range(2, 9)))
    block = opt.integer("block", 16, {16, 32, 64, 128})
    opt.done()
    return DType(spec=format_spec(name, {"bits": bits, "block": block} if (bits, block) != (4, 16) else {}),
                 name=name, family="blog", elem_bits=bits, block_size=block, scale_encoding="shared 8-bit exponent",
                 gguf_type_id=encode_type_id("blog", bits - 2, block), standard=False,
                 description=f"block logarithmic: sign + {bits - 1}-bit power of two, shared exponent per {block}",
                 codec=BlockLogCodec(bits), params={"log_bits": bits})


BUILDERS: dict[str, Callable[[str, _Options], DType]] = {
    **{n: _float for n in ("f32", "f16", "bf16")},
    **{n: _ggml for n in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "nvfp4")},
    **{f"int{b}": _int for b in range(2, 9)},
    **{n: _codebook for n in _CODEBOOK_INDEX},
    **{n: _mx for n in ("mxfp4", "mxfp6", "mxfp8", "mxint8")},
    "bfp": _bfp, "bmf": _bmf, "blog": _blog,
}
ALIASES = {"fp16": "f16", "fp32": "f32", "float16": "f16", "float32": "f32", "bfloat16": "bf16",
           "e2m1": "fp4", "sf4-5": "sf4", "int4-asym": "int4:asym"}

_cache: dict[str, DType] = {}


def get_dtype(spec: str) -> DType:
    """Resolve a spec string to its registry row (raises QuantconvError naming the fix)."""
    if isinstance(spec, DType):
        return spec
    key = spec.strip().lower() if isinstance(spec, str) else spec
    if key in _cache:
        return _cache[key]
    name, options = parse_spec(ALIASES.get(key, key) if isinstance(key, str) else key)
    if name in ALIASES and ":" not in ALIASES[name]:
        name = ALIASES[name]
    builder = BUILDERS.get(name)
    if builder is None:
        raise QuantconvError(f"unknown datatype '{spec}'; known: {', '.join(BUILDERS)} (run `quantconv dtypes`)")
    dtype = builder(name, _Options(spec, options))
    _cache[key] = dtype
    return dtype


def list_dtypes() -> list[DType]:
    """The default row of every datatype name (plus the asymmetric ints), registry order."""
    specs = list(BUILDERS)
    specs[specs.index("int8") + 1:specs.index("int8") + 1] = [f"int{b}:asym" for b in range(2, 9)]
    return [get_dtype(s) for s in specs]


def dtype_from_gguf_type_id(type_id: int) -> DType | None:
    """The registry row of a standard ggml type id, or None (quantconv ids need the file's descriptor)."""
    for name, gid in GGML_IDS.items():
        if gid == type_id:
            return get_dtype(name)
    return None


def dtype_from_descriptor(desc: dict[str, Any]) -> DType:
    """Rebuild a type from a file's descriptor. Codebooks come from the file itself, so a file runs
    without recomputing them (no scipy needed to read an SF4 file of any nu)."""
    try:
        spec = str(desc["spec"])
    except KeyError:
        raise QuantconvError("a quantconv type descriptor has no 'spec'; the file is damaged, re-export it") from None
    name, _ = parse_spec(spec)
    if desc.get("family") == "codebook" and "codebook" in desc and name in _CODEBOOK_INDEX:   # not IQ4_NL
        table = tuple(float(v) for v in desc["codebook"])
        if len(table) != 16 or not all(np.isfinite(table)):
            raise QuantconvError(f"type '{spec}' has a damaged codebook (need 16 finite values); re-export the file")
        base = get_dtype(spec) if name != "sf4" else None
        group = int(desc.get("block_size", 128))
        flip = bool(int(desc.get("flip", 0)))
        index = _CODEBOOK_INDEX.get(name, 0) if name != "sf4" or ":nu=" not in spec and ",nu=" not in spec \
            else len(_CODEBOOK_INDEX)
        table = tuple(float(np.float32(v)) for v in table)
        if base is not None and base.codebook != table:
            raise QuantconvError(f"type '{spec}' in the file has a codebook that differs from quantconv's; re-export it")
        return _codebook_row(name, table, group, flip, index, spec,
                             base.description if base else f"Student Float 4 ({spec})")
    dtype = get_dtype(spec)
    for key in ("block_size", "bytes_per_block", "elem_bits"):
        if key in desc and int(desc[key]) != getattr(dtype, key):
            raise QuantconvError(f"type '{spec}' in the file has {key}={desc[key]} but quantconv's is "
                                 f"{getattr(dtype, key)}; the file comes from an incompatible version")
    return dtype
