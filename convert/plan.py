"""Which datatype each tensor of an export gets: the decoder's linear weights take the requested
dtype, the rest sensible defaults, and `--keep GLOB=DTYPE` overrides either."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from quantconv.errors import QuantconvError
from quantconv.formats.models import ArchSpec
from quantconv.formats.registry import GROUPS, DType, get_dtype
from quantconv.formats.spec import format_spec, parse_spec

EMBEDDING_DEFAULT = "q8_0"     # embeddings and output head: 8 bits keep them nearly lossless


@dataclass(frozen=True)
class TensorPlan:
    hf_name: str | None          # None for tensors derived in code (rope_freqs)
    gguf_name: str
    shape: tuple[int, ...]       # numpy order
    dtype: DType
    role: str                    # linear | embedding | output | vector
    note: str = ""               # e.g. why a smaller group was used


def parse_keep(items: list[str] | tuple[str, ...]) -> list[tuple[str, DType | str]]:
    """'GLOB=DTYPE' strings -> (glob, spec); the spec is resolved per tensor later."""
    out = []
    for item in items:
        glob, eq, spec = item.partition("=")
        if not eq or not glob.strip() or not spec.strip():
            raise QuantconvError(f"--keep '{item}' is not GLOB=DTYPE; e.g. --keep 'token_embd*=q8_0'")
        get_dtype(spec.strip())  # validate now, fail before any work
        out.append((glob.strip(), spec.strip()))
    return out


def with_group(spec: str, group: int) -> str:
    """The spec with its group (or block) size replaced."""
    dtype = get_dtype(spec)
    name, options = parse_spec(dtype.spec)
    key = "block" if dtype.family in ("bfp", "bmf", "blog") else "group"
    if dtype.family in ("float", "ggml", "mx") or dtype.standard:
        raise QuantconvError(f"{dtype.spec} has a fixed block of {dtype.block_size}; drop --group-size for it")
    options[key] = str(group)
    return format_spec(name, options)


def explicit_group(spec: str) -> bool:
    _, options = parse_spec(spec)
    return "group" in options or "block" in options


def fit_to_row(spec: str, cols: int, tensor: str, explicit: bool) -> tuple[DType, str]:
    """The dtype for a tensor with rows of `cols` values. A default group that does not divide the row
    falls back to the largest that does (noted); an explicitly requested one is an error."""
    dtype = get_dtype(spec)
    block = dtype.block_for(cols)
    if cols % block == 0:
        dtype.check_shape((1, cols), tensor)
        return dtype, ""
    choices = [g for g in GROUPS if g < block and cols % g == 0]
    if dtype.family in ("bfp", "bmf", "blog"):
        choices = [g for g in choices if g in (16, 32, 64, 128)]
    if explicit or not choices or dtype.family in ("float", "ggml", "mx"):
        hint = f"use --group-size {choices[-1]}" if choices else "keep this tensor in another type with --keep"
        raise QuantconvError(f"group size {block} of {dtype.spec} does not divide the rows of {tensor} "
                             f"({cols} values); {hint}")
    smaller = get_dtype(with_group(spec, choices[-1]))
    return smaller, f"group {block} does not divide {cols}: used {choices[-1]}"


def default_spec(role: str, dtype: DType) -> str:
    if role == "vector":
        return "f32"
    if role in ("embedding", "output"):
        return dtype.spec if dtype.family == "float" else EMBEDDING_DEFAULT
    return dtype.spec


def role_of(arch: ArchSpec, gguf_name: str, shape: tuple[int, ...]) -> str:
    """The plan's role: "vector" for every 1-D tensor, else the models.yaml kind (linear, embedding, output)."""
    if len(shape) == 1:
        return "vector"
    kind = arch.kind_of(gguf_name)
    if kind in ("linear", "embedding", "output"):
        return kind
    raise QuantconvError(f"don't know how to quantize 2-D tensor {gguf_name}; keep it with --keep '{gguf_name}=f16'")


def plan_tensor(arch: ArchSpec, hf_name, gguf_name, shape, dtype_spec: str, group_size: int | None,
                keep: list[tuple[str, str]]) -> TensorPlan:
    base = get_dtype(dtype_spec)
    role = role_of(arch, gguf_name, shape)
    spec, explicit = default_spec(role, base), False
    if role == "linear":
        explicit = explicit_group(dtype_spec) or group_size is not None
        if group_size is not None:
            spec = with_group(spec, group_size)
    for glob, kept in keep:   # the last matching --keep wins
        if fnmatch.fnmatchcase(gguf_name, glob) or (hf_name and fnmatch.fnmatchcase(hf_name, glob)):
            spec, explicit = kept, explicit_group(kept)
    if len(shape) == 1:
        if get_dtype(spec).family != "float":
            spec = "f32"   # norms and biases stay float: they are tiny and the runtime wants them exact
        return TensorPlan(hf_name, gguf_name, tuple(shape), get_dtype(spec), role)
    dtype, note = fit_to_row(spec, int(shape[-1]), gguf_name, explicit)
    return TensorPlan(hf_name, gguf_name, tuple(shape), dtype, role, note)
