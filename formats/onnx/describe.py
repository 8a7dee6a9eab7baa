"""What `quantconv inspect model.onnx` reports: per weight its dtype, ONNX encoding, element types, the
initializers' bytes and any fallback to a decomposition; the file's opsets, flavor, graph ops, operator
counts and recipe — read from the file and its metadata_props (formats/onnx/io.py), no session."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from quantconv.errors import QuantconvError


def _nbytes(t) -> int:
    if t.raw_data:
        return len(t.raw_data)
    for e in t.external_data:   # weights in model.onnx.data: the recorded length
        if e.key == "length":
            return int(e.value)
    return 0


def fallbacks(encodings: dict[str, dict]) -> dict[str, str]:
    """dtype spec -> why its weights are a decomposition instead of their natural ONNX element type."""
    return {e["dtype"]: e["fallback"] for e in encodings.values() if e.get("fallback")}


def describe_onnx(path) -> dict[str, Any]:
    import onnx
    from onnx import TensorProto

    from quantconv.formats.models import tensor_kind
    from quantconv.formats.onnx.io import FORMAT

    path = os.fspath(path)
    if not Path(path).is_file():
        raise QuantconvError(f"{path} does not exist; check the path")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:   # not protobuf, truncated, ...
        raise QuantconvError(f"{path} is not a readable ONNX file ({str(e).splitlines()[0]})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("quantconv.format") != FORMAT:
        raise QuantconvError(f"{path} was not written by quantconv's ONNX export (no quantconv.format metadata); "
                             "inspect reads quantconv .onnx and .gguf files")
    encs = json.loads(props["quantconv.encodings"])
    cfg = json.loads(props["quantconv.config"])
    kv = json.loads(props["quantconv.gguf_kv"])
    inits = {t.name: t for t in model.graph.initializer}
    tensors = []
    for name, e in encs.items():
        own = {n: t for n, t in inits.items() if n == name or n.startswith(name + ".")}
        n_el = e["shape"][0] * e["shape"][1]
        size = sum(_nbytes(t) for t in own.values())
        tensors.append({
            "name": name, "type": e["dtype"], "encoding": e["encoding"],
            "element": e.get("element") or e.get("index") or (f"{e['bits']}-bit" if "bits" in e else ""),
            "block": e.get("block"), "shape": e["shape"], "orient": e["orient"], "bytes": size,
            "bits_per_weight": size * 8 / n_el, "elements": n_el, "fallback": e.get("fallback"),
            "initializers": {n: {"type": TensorProto.DataType.Name(t.data_type), "shape": list(t.dims), "bytes": _nbytes(t)}
                             for n, t in own.items()}})
    linear = [t for t in tensors if tensor_kind(t["name"]) == "linear"]
    rest = sum(_nbytes(t) for n, t in inits.items() if not any(n == w or n.startswith(w + ".") for w in encs))

    def bpw(ts):
        n = sum(t["elements"] for t in ts)
        return sum(t["bytes"] for t in ts) * 8 / n if n else 0.0

    data = Path(path + ".data")
    ops = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node)
    return {
        "file": path, "format": "onnx", "architecture": kv.get("general.architecture", "?"),
        "file_bytes": Path(path).stat().st_size + (data.stat().st_size if data.exists() else 0),
        "external_data": data.name if data.exists() else None,
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "flavor": props.get("quantconv.onnx_flavor"), "graph_ops": props.get("quantconv.graph_ops", "basic"),
        "config": cfg, "tensors": tensors, "operators": dict(ops.most_common()),
        "summary": {"parameters": sum(t["elements"] for t in tensors), "bytes": sum(t["bytes"] for t in tensors),
                    "other_bytes": rest, "bits_per_weight": bpw(tensors), "linear_bits_per_weight": bpw(linear),
                    "linear_types": sorted({t["type"] for t in linear}),
                    "encodings": dict(Counter(t["encoding"] for t in tensors))},
        "fallbacks": fallbacks(encs),
        "codebooks": json.loads(props.get("quantconv.codebooks", "{}")),
        "recipe": {k.removeprefix("quantconv.recipe."): v for k, v in props.items() if k.startswith("quantconv.recipe.")},
    }
