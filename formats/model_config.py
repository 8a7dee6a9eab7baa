"""A decoder's hyper-parameters read from a GGUF file's metadata: what the C++ engine is configured with
and what the ONNX graph builder sizes its graph by (both build on this; neither owns it)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from quantconv.errors import QuantconvError
from quantconv.formats.gguf_reader import GGUFFile
from quantconv.formats.models import ArchSpec, all_archs, arch_for_gguf

FIX = "re-export it with quantconv"


def _uint(f: GGUFFile, key: str, default: Any = None, required: bool = True) -> Any:
    if key not in f.kv:
        if required and default is None:
            raise QuantconvError(f"{f.path} lacks metadata '{key}'; {FIX}")
        return default
    v = f.kv[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise QuantconvError(f"{f.path} has metadata '{key}' = {v!r}, expected an integer "
                             "(per-layer values are not supported); " + FIX)
    return v


def _float(f: GGUFFile, key: str, default: float) -> float:
    v = f.kv.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise QuantconvError(f"{f.path} has metadata '{key}' = {v!r}, expected a number; {FIX}")
    return float(v)


def _swa_layers(f: GGUFFile, spec: ArchSpec, n_layer: int, window: int) -> list[int]:
    """Which layers are local: none without a window; else the file's sliding_window_pattern (a period, or
    one flag per layer, as llama.cpp reads it) or the architecture's (models.yaml)."""
    if window <= 0 or not spec.sliding_window_pattern:
        return [0] * n_layer
    key = f"{spec.gguf_arch}.attention.sliding_window_pattern"
    v = f.kv.get(key)
    if isinstance(v, list):
        if len(v) != n_layer:
            raise QuantconvError(f"{f.path} has {len(v)} values in '{key}' for {n_layer} layers; {FIX}")
        return [int(bool(x)) for x in v]
    if v is not None:
        n = _uint(f, key)
        return [int(n > 0 and (i + 1) % n != 0) for i in range(n_layer)]
    return spec.swa_layers(n_layer)


def file_arch(f: GGUFFile) -> ArchSpec:
    """The models.yaml architecture of a GGUF file (QuantconvError naming the supported ones)."""
    arch = f.kv.get("general.architecture")
    known = list(dict.fromkeys(a.gguf_arch for a in all_archs().values()))
    if arch not in known:
        raise QuantconvError(f"{f.path} is a '{arch}' model; the quantconv engine runs {', '.join(known)} GGUF files")
    return arch_for_gguf(arch)


def model_config(f: GGUFFile) -> dict[str, Any]:
    """The _ext.Model config dict for a GGUF file (QuantconvError for what the engine can't run)."""
    spec = file_arch(f)
    a = arch = spec.gguf_arch
    n_embd = _uint(f, f"{a}.embedding_length")
    n_head = _uint(f, f"{a}.attention.head_count")
    embd = spec.role("token_embd").gguf_name()
    if embd not in f:
        raise QuantconvError(f"{f.path} has no tensor '{embd}'; {FIX}")
    if n_head <= 0:
        raise QuantconvError(f"{f.path} has {a}.attention.head_count = {n_head}; {FIX}")
    head_dim = _uint(f, f"{a}.attention.key_length", n_embd // n_head)
    value_dim = _uint(f, f"{a}.attention.value_length", head_dim)
    if value_dim != head_dim:
        raise QuantconvError(f"{f.path} has attention key length {head_dim} != value length {value_dim}, "
                             "which the quantconv engine doesn't run")
    rope_scale = 1.0
    scaling = f.kv.get(f"{a}.rope.scaling.type", "none")
    if scaling == "linear":
        rope_scale = _float(f, f"{a}.rope.scaling.factor", 1.0)
        if not rope_scale > 0:
            raise QuantconvError(f"{f.path} has rope scaling factor {rope_scale}; {FIX}")
    elif scaling == "longrope" and spec.longrope:
        pass  # the rope_factors_long / short tensors carry it (runtime picks one by context length)
    elif scaling not in ("none", None, ""):
        raise QuantconvError(f"{f.path} uses RoPE scaling '{scaling}', which the quantconv engine doesn't run "
                             "(supported: none, linear, Llama 3 rope_freqs"
                             f"{', longrope' if spec.longrope else ''})")
    # LongRoPE: llama.cpp's converter writes no scaling type, only the factor tensors
    longrope = spec.longrope and spec.role("rope_factors_long").gguf_name() in f
    n_layer = _uint(f, f"{a}.block_count")
    rope_dim = _uint(f, f"{a}.rope.dimension_count", head_dim)
    if not 0 < rope_dim <= head_dim or rope_dim % 2:
        raise QuantconvError(f"{f.path} has {a}.rope.dimension_count = {rope_dim} for heads of {head_dim}; {FIX}")
    rope_base = _float(f, f"{a}.rope.freq_base", 10000.0)
    window = _uint(f, f"{a}.attention.sliding_window", 0) if spec.sliding_window_pattern else 0
    # Gemma multiplies embeddings by sqrt(hidden) cast to the hidden dtype first: float32 here
    embd_scale = float(np.float32(math.sqrt(n_embd))) if spec.embed_scale == "sqrt_hidden" else 1.0
    return {
        "arch": arch,
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_head_kv": _uint(f, f"{a}.attention.head_count_kv", n_head),
        "n_ff": _uint(f, f"{a}.feed_forward_length"),
        "n_vocab": int(f.tensor(embd).shape[0]),
        "head_dim": head_dim,
        "rope_dim": rope_dim,
        "rope_base": rope_base,
        "rope_style": spec.rope_style,
        "rope_scale": rope_scale,
        "rms_eps": _float(f, f"{a}.attention.layer_norm_rms_epsilon", 1e-5),
        "embd_scale": embd_scale,
        "ffn_act": spec.ffn_act,
        "attn_scale": _float(f, f"{a}.attention.scale", 0.0),
        "attn_softcap": _float(f, f"{a}.attn_logit_softcapping", 0.0),
        "final_softcap": _float(f, f"{a}.final_logit_softcapping", 0.0),
        "swa_window": window,
        "swa_layers": _swa_layers(f, spec, n_layer, window),
        "rope_base_swa": _float(f, f"{a}.rope.freq_base_swa", rope_base),
        "rope_attn_factor": _float(f, f"{a}.rope.scaling.attn_factor", 1.0),
        "rope_orig_ctx": _uint(f, f"{a}.rope.scaling.original_context_length", 0) if longrope else 0,
    }


