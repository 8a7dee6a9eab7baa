"""Writing the ONNX file: metadata_props, onnx.checker, external data over 2 GB, atomic rename.

metadata_props (all strings):
  quantconv.format       "quantconv-onnx/1"
  quantconv.onnx_flavor  standard | ort
  quantconv.graph_ops    fused (RMSNormalization/RotaryEmbedding/Attention) | basic (their basic-op form)
  quantconv.recipe.*     the GGUF's recipe keys (dtype, group_size, algo, ...)
  quantconv.config       JSON: the decoder hyper-parameters
  quantconv.encodings    JSON: GGUF tensor -> {dtype, encoding, element/index, block, orient, shape, fallback}
  quantconv.codebooks    JSON: dtype spec -> its 16-entry codebook (codebook dtypes)
  quantconv.gguf_kv      JSON: the GGUF metadata minus quantconv.type.* (the tokenizer lives here)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from quantconv.errors import QuantconvError

FORMAT = "quantconv-onnx/1"
EXTERNAL_OVER = 1_800_000_000     # protobuf's hard limit is 2 GiB; leave room for the graph itself


def metadata(kv: dict[str, Any], cfg: dict, flavor: str, encodings: dict[str, dict], codebooks: dict,
             fused_ops: bool = True) -> dict[str, str]:
    props = {"quantconv.format": FORMAT, "quantconv.onnx_flavor": flavor,
             "quantconv.graph_ops": "fused" if fused_ops else "basic",
             "quantconv.config": json.dumps(cfg), "quantconv.encodings": json.dumps(encodings),
             "quantconv.codebooks": json.dumps(codebooks)}
    props.update({k: str(v) for k, v in kv.items() if k.startswith("quantconv.recipe.")})
    # ensure_ascii: protobuf strings must be UTF-8, and GGUF strings may carry surrogate-escaped bytes
    props["quantconv.gguf_kv"] = json.dumps({k: v for k, v in kv.items() if not k.startswith("quantconv.type.")},
                                            ensure_ascii=True)
    return props


def save(model: onnx.ModelProto, out: Path, props: dict[str, str], beside: dict[str, bytes] | None = None) -> int:
    """Check and write `model` to `out` (plus `out.data` when large, plus the `beside` files, e.g.
    genai_config.json, next to it); nothing appears at `out` unless everything succeeded (the model is
    renamed into place last). Returns the bytes of the model and its data."""
    helper.set_model_props(model, props)
    out = Path(out)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staged = tmp / out.name
        if weights > EXTERNAL_OVER:
            data = out.name + ".data"
            onnx.save_model(model, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=1024)
        else:
            data = None
            onnx.save_model(model, staged)
        try:
            onnx.checker.check_model(str(staged))
        except onnx.checker.ValidationError as e:
            raise QuantconvError(f"internal error: the ONNX graph fails onnx.checker ({str(e).splitlines()[0]}); "
                                 "please report it") from None
        total = staged.stat().st_size
        for name, blob in (beside or {}).items():
            (tmp / name).write_bytes(blob)
        for name in beside or {}:
            os.replace(tmp / name, out.parent / name)
        if data:
            total += (tmp / data).stat().st_size
            os.replace(tmp / data, out.parent / data)
        os.replace(staged, out)
        return total
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_props(path) -> dict[str, str]:
    """metadata_props of an .onnx file, without loading its weights."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def gguf_kv(props: dict[str, str]) -> dict[str, Any]:
    if props.get("quantconv.format") != FORMAT:
        raise QuantconvError("this .onnx file was not written by quantconv's ONNX export (no "
                             "quantconv.format metadata); re-export it with `quantconv export --format onnx`")
    return json.loads(props["quantconv.gguf_kv"])
