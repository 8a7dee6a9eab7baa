"""`quantconv export --format onnx`: the GGUF export of the same recipe, re-encoded as an ONNX decoder.

Going through the GGUF file is what makes the two exports carry the same weights bit for bit: every
ONNX initializer is the GGUF's own codes and scales, re-laid out (formats/onnx/encodings.py), and
the encoder checks each tensor against the GGUF's dequantization before writing.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from quantconv.errors import QuantconvError


@dataclass
class OnnxExportReport:
    path: Path
    seconds: float
    file_bytes: int
    flavor: str
    encodings: dict
    gguf_report: object = None          # the ExportReport of the intermediate GGUF, when made here
    notes: list[str] = field(default_factory=list)
    linear_bits_per_weight: float = 0.0  # of the recipe (as the GGUF's); the ONNX file may differ: docs/onnx.md


def _need_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise QuantconvError("ONNX export needs the onnx package: pip install 'quantconv[onnx]'") from None


def _check_out(out: Path) -> None:
    if out.suffix.lower() != ".onnx":
        raise QuantconvError(f"output '{out}' must end in .onnx for --format onnx")
    if not out.parent.exists():
        raise QuantconvError(f"output folder '{out.parent}' does not exist; create it first")


def gguf_to_onnx(gguf_path, out, flavor: str = "standard",
                 progress: Callable[[str, dict], None] | None = None, fused_ops: bool = True,
                 genai: bool = True) -> OnnxExportReport:
    """Write the quantconv GGUF file `gguf_path` as an ONNX decoder at `out` (atomically). fused_ops=False
    writes norms/RoPE/attention in basic operators instead of opset-23/24 RMSNormalization/RotaryEmbedding/
    Attention (same numbers within float rounding; for runtimes that lack those ops). The ort flavor also
    writes onnxruntime-genai's genai_config.json (+ tokenizer.json where feasible) beside `out`, unless
    genai=False."""
    _need_onnx()
    from quantconv.formats.gguf_reader import GGUFFile
    from quantconv.formats.onnx import io
    from quantconv.formats.onnx.graph import DecoderBuilder, check_flavor
    from quantconv.formats.model_config import model_config

    out = Path(out)
    _check_out(out)
    start = time.perf_counter()
    with GGUFFile(gguf_path) as f:
        check_flavor(((t.name, t.shape, t.dtype) for t in f.tensors), flavor)
        cfg = model_config(f)
        builder = DecoderBuilder(f, cfg, flavor, progress, fused=fused_ops)
        model = builder.build()
        codebooks = {t.dtype.spec: list(t.dtype.codebook) for t in f.tensors
                     if t.dtype is not None and t.dtype.codebook is not None}
        props = io.metadata(f.kv, cfg, flavor, builder.encodings, codebooks, fused_ops)
        beside, notes = _genai(f.kv, cfg, out) if flavor == "ort" and genai else ({}, [])
    size = io.save(model, out, props, beside)
    if beside:
        notes.insert(0, f"wrote {', '.join(beside)} beside {out.name} for onnxruntime-genai")
    return OnnxExportReport(out, time.perf_counter() - start, size, flavor, builder.encodings, notes=notes)


def _genai(kv, cfg, out: Path) -> tuple[dict[str, bytes], list[str]]:
    """onnxruntime-genai's files (formats/onnx/genai.py), unless the folder's genai_config.json belongs to
    another model: genai reads one model per folder, and overwriting it would break that one."""
    import json

    from quantconv.formats.onnx.genai import genai_files

    existing = out.parent / "genai_config.json"
    if existing.exists():
        try:
            other = json.loads(existing.read_text())["model"]["decoder"]["filename"]
        except (ValueError, KeyError, TypeError, OSError):
            other = None
        if other != out.name:
            return {}, [f"kept the existing {existing} (it is not {out.name}'s); export into a folder of its own "
                        "for onnxruntime-genai"]
    return genai_files(kv, cfg, out.name)


def export_onnx(source, out, dtype: str, group_size: int | None = None, algo: str = "rtn", keep=(),
                flavor: str = "standard", progress=None, on_start=None, calib=None, on_layer=None,
                keep_gguf: str | Path | None = None) -> OnnxExportReport:
    """Quantize `source` exactly as `convert.export.export` would (same arguments), then write the
    result as ONNX. keep_gguf: also keep the intermediate GGUF at this path."""
    _need_onnx()
    from quantconv.convert.export import export, plan_export
    from quantconv.formats.onnx.graph import check_flavor

    out = Path(out)
    _check_out(out)
    # refuse before the (possibly long) quantization
    check_flavor(((p.gguf_name, p.shape, p.dtype) for p in plan_export(source, dtype, group_size, list(keep))), flavor)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        gguf = tmp / (out.stem + ".gguf")
        greport = export(source, gguf, dtype, group_size, algo, keep, progress=progress, on_start=on_start,
                         calib=calib, on_layer=on_layer)
        report = gguf_to_onnx(gguf, out, flavor)
        if keep_gguf:
            shutil.move(str(gguf), str(keep_gguf))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.gguf_report = greport
    report.notes = list(greport.notes) + report.notes
    report.linear_bits_per_weight = greport.linear_bits_per_weight
    return report
