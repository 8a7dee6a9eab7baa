"""`quantconv export`: stream a model tensor by tensor from its source into a quantized GGUF file.

Only one tensor is in memory at a time (load -> llama.cpp row order -> quantize -> write), and a big
one (a 128k-vocabulary embedding) is read and quantized in row chunks into its packed bytes, so the
peak memory is about the largest tensor's quantized size plus one chunk, whatever the model size. The
output appears only when complete: the writer works under a temporary name and renames at the end.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import quantconv
from quantconv.convert.plan import TensorPlan, parse_keep, plan_tensor
from quantconv.convert.sources import ModelSource
from quantconv.errors import QuantconvError
from quantconv.formats.gguf_writer import GGUFWriter
from quantconv.formats.registry import get_dtype

# llama.cpp's LLAMA_FTYPE for files whose linear weights are all one standard type (informational)
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "int8:group=32": 7,
              "int4:asym,group=32": 3, "bf16": 32, "mxfp4": 38, "mxfp4:ggml": 38, "nvfp4": 39}
# float32 values read and quantized at once for a tensor read in row chunks (128 MB): the 3B-class
# embedding (394 M values) would otherwise sit in memory whole, 1.6 GB as float32
ROW_CHUNK_VALUES = 32 << 20


@dataclass
class ExportReport:
    path: Path
    tensors: list[TensorPlan]
    seconds: float
    file_bytes: int
    linear_bits_per_weight: float
    notes: list[str] = field(default_factory=list)


def plan_export(source, dtype: str, group_size: int | None, keep: list[str]) -> list[TensorPlan]:
    get_dtype(dtype)
    keeps = parse_keep(keep)
    plans = []
    names = [n for n in source.tensor_names() if not source.arch.is_ignored(n)]
    for hf in names:
        gguf_name = source.arch.gguf_name(hf)
        if source.arch.kind_of(gguf_name) == "output" and source.tied_embeddings:
            continue
        plans.append(plan_tensor(source.arch, hf, gguf_name, tuple(source.shape(hf)), dtype, group_size, keeps))
    for name, array in source.extra_gguf_tensors().items():
        plans.append(plan_tensor(source.arch, None, name, array.shape, dtype, group_size, keeps))
    if not any(p.role == "linear" for p in plans):
        raise QuantconvError(f"{source.description} has no decoder linear layers that quantconv recognises")
    return plans


def _metadata(source, recipe: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value, vtype) in the order they are written: general, hyper-parameters, tokenizer, recipe."""
    cfg = source.config
    items: list[tuple[str, Any, Any]] = [
        ("general.architecture", source.arch.gguf_arch, None),
        ("general.name", str(cfg.get("_name_or_path") or cfg.get("name") or source.description), None),
        ("general.quantization_version", 2, None),
    ]
    if recipe["dtype"] in FILE_TYPES:
        items.append(("general.file_type", FILE_TYPES[recipe["dtype"]], None))
    for block in (source.arch.gguf_metadata(cfg), source.tokenizer_metadata()):
        types = block.get("_types", {})
        items += [(k, v, types.get(k)) for k, v in block.items() if k != "_types"]
    items += [(f"quantconv.recipe.{k}", v, None) for k, v in recipe.items() if v is not None]
    return items


def _load_for_gguf(source, plan: TensorPlan, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The tensor (or its rows start:stop) as float32 in llama.cpp's layout, checked."""
    want = plan.shape
    if plan.hf_name is None:
        w = source.extra_gguf_tensors()[plan.gguf_name]
    elif rows is None:
        w = source.load(plan.hf_name)
        w = source.arch.to_gguf_layout(plan.hf_name, w, source.config)
    else:
        w = source.load_rows(plan.hf_name, *rows)
        w = source.arch.to_gguf_layout(plan.hf_name, w, source.config)   # row-local: see _row_chunks
        want = (min(rows[1], plan.shape[0]) - rows[0], *plan.shape[1:])
    if tuple(w.shape) != want:
        raise QuantconvError(f"tensor {plan.hf_name} has shape {tuple(w.shape)} but its header says {plan.shape}; "
                             "the checkpoint is inconsistent, re-download it")
    if not np.all(np.isfinite(w)):
        bad = int(np.size(w) - np.count_nonzero(np.isfinite(w)))
        raise QuantconvError(f"tensor {plan.hf_name or plan.gguf_name} has {bad} NaN/inf values; "
                             "the checkpoint is damaged (re-download it) or was saved after a diverged step")
    return np.ascontiguousarray(w, dtype=np.float32)


def _row_chunks(source, plan: TensorPlan) -> int:
    """Rows per chunk when `plan`'s tensor is read and quantized in pieces, 0 when it goes whole: only
    big 2-D tensors whose llama.cpp layout moves no row across a chunk (q/k head permutations do), from
    sources whose load_rows reads a row range without the whole tensor (the default loads it whole)."""
    slices = getattr(type(source), "load_rows", ModelSource.load_rows) is not ModelSource.load_rows
    if plan.hf_name is None or len(plan.shape) != 2 or not slices:
        return 0
    step = max(1, ROW_CHUNK_VALUES // plan.shape[1])
    found = source.arch.role_of_hf(plan.hf_name)
    if plan.shape[0] <= step or found is None or found[0].heads is not None:
        return 0
    return step


def _quantized(source, plan: TensorPlan) -> np.ndarray:
    """The file's bytes for a source tensor by RTN; rows are quantized independently, so a chunked
    read gives the same bytes as a whole one."""
    step = _row_chunks(source, plan)
    if not step:
        return plan.dtype.quantize(_load_for_gguf(source, plan))
    rows = plan.shape[0]
    out = np.empty((rows, plan.dtype.row_bytes(plan.shape[1])), dtype=np.uint8)
    for r in range(0, rows, step):
        out[r:r + step] = plan.dtype.quantize(_load_for_gguf(source, plan, (r, min(r + step, rows))))
    return out


def _calibrated(source, plans: list[TensorPlan], calib, on_layer):
    """Run the calibration pipeline; returns (CalibResult, recipe entries)."""
    from quantconv.convert.algorithms import algorithm_of, recipe
    from quantconv.convert.calib import calibration_ids
    from quantconv.convert.calibrate import calibrate, check_device

    calib.device = check_device(calib.device)
    if calib.calib is None:
        names = "+".join(algorithm_of(c).name for c in calib.algos) or "rtn"
        raise QuantconvError(f"--algo {names} calibrates on text: pass --calib PATH (a text file), "
                             "a dataset name, or --calib self")
    ids = calibration_ids(calib.calib, source, calib.nsamples, calib.seqlen, calib.seed, calib.device)
    dtypes = {p.hf_name: p.dtype for p in plans if p.role == "linear" and p.hf_name}
    result = calibrate(source, dtypes, ids, calib, on_layer)
    entries = {"calibration": calib.calib if calib.calib == "self" else Path(calib.calib).name,
               "nsamples": calib.nsamples, "seqlen": calib.seqlen, "seed": calib.seed, **recipe(calib.algos)}
    return result, entries


def _tensor_bytes(source, plan: TensorPlan, result) -> np.ndarray:
    """The file's bytes for one tensor: calibrated codes, a calibrated float tensor, or the source's."""
    if result is not None and plan.hf_name in result.quantized:
        ql = result.quantized[plan.hf_name]
        rows = plan.shape[0]
        order = source.arch.to_gguf_layout(plan.hf_name, np.arange(rows).reshape(rows, 1), source.config)[:, 0]
        return ql.packed(order)
    if result is not None and plan.hf_name in result.floats:
        w = source.arch.to_gguf_layout(plan.hf_name, result.floats[plan.hf_name], source.config)
        return plan.dtype.quantize(np.ascontiguousarray(w, dtype=np.float32))
    return _quantized(source, plan)


def export(source, out: str | Path, dtype: str, group_size: int | None = None, algo: str = "rtn",
           keep: list[str] | tuple[str, ...] = (), progress: Callable[[TensorPlan], None] | None = None,
           on_start: Callable[[list[TensorPlan]], None] | None = None, calib=None,
           on_layer: Callable[[int, int, dict], None] | None = None) -> ExportReport:
    """Quantize `source` (a convert.sources.ModelSource) into the GGUF file `out`. `calib`: a
    convert.calibrate.CalibOptions for the calibrated algorithms (GPTQ, AWQ, SmoothQuant, Norm
    Tweaking, activation quantization); `algo`'s algorithms missing from its `algos` run with defaults."""
    from quantconv.convert.algorithms import parse_algo, with_algo

    algos = parse_algo(algo)
    if calib is None and algos != ("rtn",):
        raise QuantconvError(f"--algo {algo} calibrates on text: pass --calib PATH (a text file), a dataset name, "
                             "or --calib self")
    if calib is not None:
        calib.algos = with_algo(calib.algos, algos)
    out = Path(out)
    if out.suffix.lower() != ".gguf":
        raise QuantconvError(f"output '{out}' must end in .gguf (for ONNX use --format onnx, or "
                             "quantconv.convert.onnx_export.export_onnx)")
    if not out.parent.exists():
        raise QuantconvError(f"output folder '{out.parent}' does not exist; create it first")
    start = time.perf_counter()
    plans = plan_export(source, dtype, group_size, list(keep))
    if on_start:
        on_start(plans)
    recipe = {"dtype": get_dtype(dtype).spec, "group_size": group_size, "algo": "+".join(algos),
              "calibration": "none", "keep": ",".join(keep) or None, "source": source.description,
              "version": quantconv.__version__}
    result = None
    if calib is not None and calib.needs_calibration():
        result, entries = _calibrated(source, plans, calib, on_layer)
        recipe.update(entries)
    act_dtype = calib.act_dtype.name if calib is not None and calib.act_dtype is not None else None
    with GGUFWriter(out) as writer:
        for key, value, vtype in _metadata(source, recipe):
            writer.add_kv(key, value, vtype)
        if act_dtype:   # read by the runtime: it quantizes the linears' inputs the same way
            writer.add_kv("quantconv.act_dtype", act_dtype)
        for p in plans:
            writer.add_tensor(p.gguf_name, p.shape, p.dtype)
        writer.write_header()
        for p in plans:
            writer.write_tensor(p.gguf_name, _tensor_bytes(source, p, result))
            if progress:
                progress(p)
    linear = [p for p in plans if p.role == "linear"]
    bits = sum(p.dtype.tensor_bytes(p.shape) * 8 for p in linear) / sum(int(np.prod(p.shape)) for p in linear)
    notes = sorted({p.note for p in plans if p.note})
    return ExportReport(out, plans, time.perf_counter() - start, out.stat().st_size, bits, notes)
