"""Run a quantconv GGUF file with the C++ engine (quantconv._ext.Model): no torch at run time.

    with Engine("model.gguf", n_ctx=2048) as eng:
        logits = eng.eval(token_ids)              # (n_vocab,) float32 for the last token
        all_logits = eng.eval(more_ids, all_logits=True)   # (T, n_vocab), appended to the cache

The file stays memory-mapped: the engine reads the packed weight rows in place (the arrays handed to
the C++ model are zero-copy views of the map) and never dequantizes a weight matrix into memory.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from quantconv.errors import QuantconvError
from quantconv.formats.gguf_reader import GGUFFile
from quantconv.formats.model_config import FIX as _FIX, file_arch, model_config


def _ext():
    try:
        from quantconv import _ext
    except ImportError as e:  # pragma: no cover - a broken install
        raise QuantconvError(f"the quantconv C++ extension is not built ({e}); reinstall quantconv") from None
    return _ext


def _longrope_role(config: dict, n_ctx: int | None) -> str:
    """Which LongRoPE factor tensor a context of n_ctx runs with: the long one iff n_ctx exceeds the original
    training context (as llama.cpp chooses)."""
    orig = int(config.get("rope_orig_ctx") or 0)
    return "rope_factors_long" if n_ctx is not None and orig and int(n_ctx) > orig else "rope_factors_short"


def _part_rows_config(config: dict) -> dict:
    """The engine config in the config.json spelling that ArchSpec.parts sizes fused tensors' parts by."""
    return {"hidden_size": config["n_embd"], "num_attention_heads": config["n_head"],
            "num_key_value_heads": config["n_head_kv"], "head_dim": config["head_dim"],
            "intermediate_size": config["n_ff"]}


def model_tensors(f: GGUFFile, n_layer: int, n_ctx: int | None = None,
                  config: dict | None = None) -> dict[str, tuple[dict, np.ndarray, tuple[int, ...], str]]:
    """The file's tensors for the engine, keyed by their role in the architecture's models.yaml entry:
    "token_embd", "output_norm", ... for the model's own, "L{i}.attn_q", ... for layer i's. Each is
    (type descriptor, zero-copy 1-D uint8 view of the bytes, numpy shape, GGUF name); optional roles the
    file lacks are left out. A fused linear (Phi-3's attn_qkv, ffn_gate_up) is handed over as row-slice
    views under its parts' roles (attn_q, attn_k, attn_v; ffn_gate, ffn_up); LongRoPE's factor tensor for
    a context of n_ctx (None: the original context or less) goes under "rope_freqs". config: the file's
    model_config (read when None)."""
    arch = file_arch(f)
    roles = list(arch.roles.values())
    if any(r.split for r in roles) or any(r.name == "rope_factors_long" for r in roles):
        config = config if config is not None else model_config(f)
    longrope = _longrope_role(config, n_ctx) if config is not None else None
    wanted = []
    for r in roles:
        if r.per_layer:
            continue
        if r.name in ("rope_factors_long", "rope_factors_short"):
            if r.name == longrope:
                wanted.append(("rope_freqs", r.gguf_name(), r))
            continue
        wanted.append((r.name, r.gguf_name(), r))
    wanted += [(f"L{i}.{r.name}", r.gguf_name(i), r) for i in range(n_layer) for r in roles if r.per_layer]
    out = {}
    for key, name, role in wanted:
        if name not in f:
            if not arch.required(role):
                continue
            raise QuantconvError(f"{f.path} has no tensor '{name}'; {_FIX}")
        t = f.tensor(name)
        if t.dtype is None:
            raise QuantconvError(f"{f.path} holds tensor '{name}' as {t.type_name}, which the quantconv engine "
                                 f"can't run; {_FIX}")
        shape = tuple(int(d) for d in t.shape)
        if not role.split:
            out[key] = (t.dtype.descriptor(), f.raw(name).reshape(-1), shape, name)
            continue
        # whole rows of every layout are contiguous bytes: each part is a zero-copy slice of the rows
        parts = arch.parts(role.name, _part_rows_config(config))
        if len(shape) != 2 or parts[-1][2] != shape[0]:
            raise QuantconvError(f"{f.path} has tensor '{name}' of shape {shape}, expected "
                                 f"{parts[-1][2]} rows ({', '.join(p[0] for p in parts)}); {_FIX}")
        rows = f.raw(name).reshape(shape[0], -1)
        prefix = key[: key.index(".") + 1]
        for part, r0, r1 in parts:
            out[prefix + part] = (t.dtype.descriptor(), rows[r0:r1].reshape(-1), (r1 - r0, shape[1]),
                                  f"{name}[{part}]")
    return out


class Engine:
    """A GGUF model loaded into the C++ engine, with its KV cache.

    n_threads defaults to os.cpu_count(). exact=True runs this model's matmuls on the kernels' exact
    float32 path (no int8 activations); exact=False uses the process setting (the fast path unless
    QUANTCONV_EXACT=1).
    kv_type is the cache precision ("f32" or "f16"); n_batch the most tokens one prefill step takes
    (longer inputs are split); validate=True decodes every quantized weight row once at load to refuse
    corrupt scales (E8M0 255, inf/NaN fp16) with a message naming the tensor.
    """

    def __init__(self, path, n_ctx: int = 2048, n_threads: int | None = None, exact: bool = False,
                 kv_type: str = "f32", n_batch: int = 256, validate: bool = True):
        ext = _ext()
        self.path = os.fspath(path)
        if int(n_ctx) <= 0:
            raise QuantconvError(f"n_ctx must be positive, got {n_ctx}")
        self._file = GGUFFile(self.path)
        try:
            self.config = model_config(self._file)
            self.config.update(kv_type=kv_type, n_batch=int(n_batch), exact=bool(exact),
                               validate=bool(validate),
                               # quantized activations the file was calibrated for (export --act-dtype)
                               act_dtype=str(self._file.kv.get("quantconv.act_dtype", "")))
            tensors = model_tensors(self._file, self.config["n_layer"], int(n_ctx), self.config)
            n_threads = int(n_threads or os.cpu_count() or 1)
            try:
                self._model = ext.Model(self.config, tensors, int(n_ctx), n_threads)
            except ValueError as e:
                raise QuantconvError(f"{self.path}: {e}; {_FIX}") from None
            del tensors
        except BaseException:
            self._model = None
            self._file.close()
            raise
        self.n_ctx = int(n_ctx)

    # ---- state ------------------------------------------------------------------------------------
    def _live(self):
        if self._model is None:
            raise QuantconvError(f"the engine for {self.path} is closed")
        return self._model

    @property
    def n_past(self) -> int:
        return self._live().n_past

    @property
    def kv(self) -> dict[str, Any]:
        """The file's metadata (tokenizer, recipe, ...), as read once at load."""
        return self._file.kv

    @property
    def n_vocab(self) -> int:
        return self.config["n_vocab"]

    @property
    def n_threads(self) -> int:
        return self._live().n_threads

    def set_threads(self, n: int) -> None:
        self._live().set_threads(int(n))

    def reset(self) -> None:
        self._live().reset()

    # ---- compute ----------------------------------------------------------------------------------
    def eval(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Append tokens to the cache; float32 logits (T, n_vocab) if all_logits else (n_vocab,)."""
        model = self._live()
        ids = np.ascontiguousarray(np.asarray(tokens).reshape(-1))
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise QuantconvError(f"token ids must be integers, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
            bad = int(ids[(ids < 0) | (ids >= self.n_vocab)][0])
            raise QuantconvError(f"token id {bad} is outside the vocabulary [0, {self.n_vocab})")
        return model.eval(ids.astype(np.int32, copy=False), bool(all_logits))

    def close(self) -> None:
        self._model = None  # drops the views into the map first
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
