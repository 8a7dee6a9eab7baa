"""What `quantconv inspect` reports about a GGUF file: tensors, types, sizes, recipe (no torch); .onnx files
are described by formats/onnx/describe.py."""
from __future__ import annotations

from typing import Any

import numpy as np

from quantconv.formats.models import tensor_kind
from quantconv.formats.gguf_reader import GGUFFile


def describe_file(path: str) -> dict[str, Any]:
    if str(path).lower().endswith(".onnx"):   # a quantconv ONNX export: its metadata and initializers
        from quantconv.formats.onnx.describe import describe_onnx

        return describe_onnx(path)
    with GGUFFile(path) as f:
        tensors = []
        for t in f.tensors:
            n = int(np.prod(t.shape)) if t.shape else 1
            tensors.append({"name": t.name, "type": t.dtype.spec if t.dtype else t.type_name,
                            "type_id": t.type_id, "shape": list(t.shape), "bytes": int(t.nbytes),
                            "bits_per_weight": t.nbytes * 8 / n, "elements": n})
        kv = f.kv
    linear = [t for t in tensors if tensor_kind(t["name"]) == "linear"]

    def bpw(ts):
        n = sum(t["elements"] for t in ts)
        return sum(t["bytes"] for t in ts) * 8 / n if n else 0.0

    return {
        "file": str(path),
        "architecture": kv.get("general.architecture", "?"),
        "tensors": tensors,
        "summary": {"parameters": sum(t["elements"] for t in tensors), "bytes": sum(t["bytes"] for t in tensors),
                    "bits_per_weight": bpw(tensors), "linear_bits_per_weight": bpw(linear),
                    "linear_types": sorted({t["type"] for t in linear})},
        "recipe": {k.removeprefix("quantconv.recipe."): v for k, v in kv.items() if k.startswith("quantconv.recipe.")},
    }
