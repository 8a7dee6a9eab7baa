"""Model sources: one interface over an HF checkpoint folder, a GGUF file, a hub id or a reference model.

Every source yields float32 tensors under their HF names and in HF layout (q/k rows as HF orders them),
one at a time, so that the exporter never holds a whole model and treats all sources alike.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType as VT

from quantconv.errors import QuantconvError

from quantconv.formats.models import (ArchSpec, arch_for_config, arch_for_gguf, default_reference, reference_models,
                     reference_path)
from .safetensors_reader import SafetensorsFile
from .tokenizer_meta import tokenizer_metadata

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# what a conversion needs from a hub repo (weights, config, tokenizer, chat template)
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]
_HUB_SKIP = ["consolidated*", "original/*"]  # Mistral/Meta repos also carry the weights in their own format


class ModelSource(ABC):
    config: dict  # HF-style config (for GGUF sources, rebuilt from GGUF metadata)
    arch: ArchSpec
    tied_embeddings: bool  # True: no lm_head; the output layer reuses model.embed_tokens.weight
    description: str

    @abstractmethod
    def tensor_names(self) -> list[str]:
        """HF names of the tensors to convert (lm_head.weight absent when tied)."""

    @abstractmethod
    def shape(self, name: str) -> tuple[int, ...]: ...

    @abstractmethod
    def load(self, name: str) -> np.ndarray:
        """One tensor as float32, HF layout (q/k NOT permuted)."""

    def load_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start:stop (first axis) of one tensor as float32, HF layout. Sources that can read a slice
        without the whole tensor override this; the default loads it whole."""
        return np.ascontiguousarray(self.load(name)[start:stop])

    @abstractmethod
    def tokenizer_metadata(self) -> dict[str, Any]:
        """GGUF tokenizer.* keys -> values, plus "_types": {key: GGUFValueType} (element type for lists)."""

    def extra_gguf_tensors(self) -> dict[str, np.ndarray]:
        """GGUF-named tensors with no HF counterpart, to write as they are (e.g. rope_freqs.weight)."""
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


def _check_complete(names: set[str], arch: ArchSpec, config: dict, where: str) -> None:
    """Every required tensor (models.yaml) of every layer must be there: catches incomplete downloads early."""
    n_layers = int(config.get("num_hidden_layers") or 0)
    for role in arch.roles.values():
        if role.hf is None or not arch.required(role):
            continue
        wanted = [role.hf_name(i) for i in range(n_layers)] if role.per_layer else [role.hf_name()]
        for w in wanted:
            if w not in names:
                raise QuantconvError(f"{where} lacks tensor '{w}'; the checkpoint is incomplete: re-download it")


# --- Hugging Face checkpoint folder -------------------------------------------------------------------


class HFDirSource(ModelSource):
    def __init__(self, path: str | os.PathLike, name_hint: str | None = None):
        self.path = Path(path)
        self.name_hint = name_hint or self.path.name
        cfg = self.path / "config.json"
        if not cfg.is_file():
            raise QuantconvError(
                f"no config.json in {self.path}; pass the folder of a Hugging Face model "
                "(config.json, *.safetensors, tokenizer files)"
            )
        try:
            self.config = json.loads(cfg.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise QuantconvError(f"{cfg} is not valid JSON; re-download it") from None
        self.arch = arch_for_config(self.config)  # by the checkpoint's own class, before text_config's model_type
        if isinstance(self.config.get("text_config"), dict):  # a vision-language model: convert its decoder
            self.config = {**self.config, **self.config["text_config"]}
        self.arch.check_config(self.config)  # refuse unsupported RoPE scaling / layer patterns before any work

        self._where: dict[str, SafetensorsFile] = {}
        files = [SafetensorsFile(f) for f in self._weight_files()]  # validates every header up front
        for f in files:
            for name in f.entries:
                if name in self._where:
                    raise QuantconvError(
                        f"tensor '{name}' is in both {self._where[name].path.name} and {f.path.name}; "
                        "remove the stray .safetensors file"
                    )
                self._where[name] = f
        self._check_index(files)

        # the roles' spelling -> the checkpoint's (they differ only for a vision-language model's decoder)
        self._stored = {self.arch.canonical_hf(n): n for n in self._where if not self.arch.is_ignored(n)}
        present = set(self._stored)
        for n in present:
            self.arch.gguf_name(n)  # unknown tensor -> clear error now, not mid-export
        tie_cfg = self.config.get("tie_word_embeddings")
        head = self.arch.role("output").hf_name()
        has_head = head in present
        if not has_head and tie_cfg is False:
            warnings.warn(f"{self.path}: config says tie_word_embeddings=false but there is no {head}; "
                          "treating the embeddings as tied", stacklevel=2)
        self.tied_embeddings = bool(tie_cfg) or not has_head
        if self.tied_embeddings:
            present.discard(head)
        _check_complete(present, self.arch, self.config, str(self.path))
        self.arch.check_shapes({n: self._where[self._stored[n]].entries[self._stored[n]].shape for n in present},
                               self.config)
        # keep checkpoint order (embeddings, layers in order, ...) as HF stores it, layers sorted numerically
        self._names = sorted(present, key=_natural_key)
        self.description = (f"{self.path} ({self.arch.name}, {len(files)} safetensors file"
                            f"{'s' if len(files) != 1 else ''})")

    def _weight_files(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                self._weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
                raise QuantconvError(f"{index} is not a valid safetensors index; re-download it") from None
            files = [self.path / f for f in dict.fromkeys(self._weight_map.values())]
            for f in files:
                if not f.is_file():
                    raise QuantconvError(
                        f"shard {f.name} listed in {index.name} is missing from {self.path}; re-download it"
                    )
            return files
        self._weight_map = None
        if (self.path / "model.safetensors").is_file():
            return [self.path / "model.safetensors"]
        # Mistral repos also carry consolidated.safetensors (original names): not an HF checkpoint
        files = sorted(p for p in self.path.glob("*.safetensors") if not p.name.startswith("consolidated"))
        if files:
            return files
        if any(self.path.glob("*.bin")) or any(self.path.glob("*.pt")) or any(self.path.glob("*.pth")):
            raise QuantconvError(
                f"{self.path} has PyTorch .bin/.pt weights only; quantconv reads safetensors: re-save with "
                "AutoModelForCausalLM.from_pretrained(d).save_pretrained(d, safe_serialization=True)"
            )
        raise QuantconvError(f"no *.safetensors weights in {self.path}; pass a folder that has them")

    def _check_index(self, files: list[SafetensorsFile]) -> None:
        if not self._weight_map:
            return
        for name, fname in self._weight_map.items():
            f = self._where.get(name)
            if f is None or f.path.name != fname:
                raise QuantconvError(
                    f"tensor '{name}' is listed in {fname} but not found there; the shard is incomplete: re-download it"
                )

    def tensor_names(self) -> list[str]:
        return list(self._names)

    def _entry(self, name: str) -> tuple[SafetensorsFile, str]:
        if name not in self._names:
            raise QuantconvError(f"no tensor '{name}' in {self.path}")
        stored = self._stored[name]
        return self._where[stored], stored

    def shape(self, name: str) -> tuple[int, ...]:
        f, stored = self._entry(name)
        return f.entries[stored].shape

    def load(self, name: str) -> np.ndarray:
        f, stored = self._entry(name)
        return f.read(stored)

    def load_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        f, stored = self._entry(name)
        return f.read(stored, start, stop)

    def tokenizer_metadata(self) -> dict[str, Any]:
        return tokenizer_metadata(self.path, self.config, self.name_hint)

    def extra_gguf_tensors(self) -> dict[str, np.ndarray]:
        return self.arch.extra_tensors(self.config)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# --- GGUF file ----------------------------------------------------------------------------------------


class _GGUFReaderAdapter:
    """What GGUFSource needs from a GGUF reader: kv with types, tensor shapes (numpy order), dequantize.

    Backed by our formats/gguf_reader.GGUFFile, which also decodes quantconv's own tensor types (and is
    much faster than gguf-py's GGUFReader on big vocabularies); swap the backend here if needed.
    """

    def __init__(self, path: Path):
        from quantconv.formats.gguf_reader import GGUFFile

        self._f = GGUFFile(path)  # raises QuantconvError naming the file on anything malformed
        # key -> (value, value type, element type for arrays)
        self.kv: dict[str, tuple[Any, VT, VT | None]] = {
            k: (v, *self._f.kv_types[k]) for k, v in self._f.kv.items()
        }
        self.shapes = {t.name: tuple(t.shape) for t in self._f.tensors}

    def value(self, key: str, default: Any = None) -> Any:
        return self.kv[key][0] if key in self.kv else default

    def dequantize(self, name: str) -> np.ndarray:
        return self._f.dequantize(name)


def _f32_round(v: float) -> float:
    """1e-05 rather than 9.999999747378752e-06: GGUF stores float32, configs read nicer at its precision."""
    return float(str(np.float32(v)))


class GGUFSource(ModelSource):
    def __init__(self, path: str | os.PathLike, description: str | None = None):
        self.path = Path(path)
        self._g = _GGUFReaderAdapter(self.path)
        self.arch = arch_for_gguf(self._g.value("general.architecture", "?"))
        self._gguf_names: dict[str, str] = {}  # HF name -> GGUF name
        self._extras: list[str] = []
        for gname in self._g.shapes:
            found = self.arch.role_of_gguf(gname)
            if found and found[0].hf is None:  # computed in code (rope_freqs): passed through as it is
                self._extras.append(gname)
            else:
                self._gguf_names[self.arch.hf_name(gname)] = gname
        self.tied_embeddings = self.arch.role("output").hf_name() not in self._gguf_names
        self.config = self._rebuild_config()
        _check_complete(set(self._gguf_names), self.arch, self.config, str(self.path))
        self._names = sorted(self._gguf_names, key=_natural_key)
        self.description = description or f"{self.path} (GGUF, {self.arch.gguf_arch})"

    def _rebuild_config(self) -> dict:
        a, v = self.arch.gguf_arch, self._g.value
        need = {}
        for key in ("embedding_length", "block_count", "feed_forward_length", "attention.head_count"):
            need[key] = v(f"{a}.{key}")
            if need[key] is None:
                raise QuantconvError(f"{self.path} lacks GGUF key {a}.{key}; it is not a complete llama.cpp model")
        n_embd, n_head = int(need["embedding_length"]), int(need["attention.head_count"])
        tokens = v("tokenizer.ggml.tokens") or []
        embd = self.arch.role("token_embd").gguf_name()
        vocab = v(f"{a}.vocab_size") or len(tokens) or self._g.shapes.get(embd, (0,))[0]
        cfg: dict[str, Any] = {
            "architectures": [self.arch.hf_architectures[0]],
            "model_type": self.arch.model_types[0],
            "hidden_size": n_embd,
            "num_hidden_layers": int(need["block_count"]),
            "intermediate_size": int(need["feed_forward_length"]),
            "num_attention_heads": n_head,
            "num_key_value_heads": int(v(f"{a}.attention.head_count_kv", n_head)),
            "head_dim": int(v(f"{a}.attention.key_length") or n_embd // n_head),
            "max_position_embeddings": int(v(f"{a}.context_length", 2048)),
            "rms_norm_eps": _f32_round(v(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": _f32_round(v(f"{a}.rope.freq_base", 10000.0)),
            "vocab_size": int(vocab),
            "tie_word_embeddings": self.tied_embeddings,
        }
        head_dim = cfg["head_dim"]
        rot = v(f"{a}.rope.dimension_count")
        if rot and int(rot) != head_dim:  # partial rotary (Phi-3.5 / Phi-4-mini)
            cfg["partial_rotary_factor"] = int(rot) / head_dim
        if v(f"{a}.attention.scale"):  # Gemma's query_pre_attn_scalar, written as its ** -0.5
            cfg["query_pre_attn_scalar"] = round(float(v(f"{a}.attention.scale")) ** -2, 3)
        for key, rule in self.arch.hparams.items():  # the architecture's own keys, back to their config key
            if v(f"{a}.{key}") is not None and "." not in rule["from"][0]:
                value = v(f"{a}.{key}")
                cfg[rule["from"][0]] = int(value) if rule["type"] == "uint32" else _f32_round(value)
        if self.arch.sliding_window_pattern:
            cfg["layer_types"] = ["sliding_attention" if s else "full_attention"
                                  for s in self.arch.swa_layers(cfg["num_hidden_layers"])]
        scaling = v(f"{a}.rope.scaling.type")
        long_name = self.arch.role("rope_factors_long").gguf_name() if self.arch.longrope else None
        if long_name and (scaling == "longrope" or long_name in self._g.shapes):
            # llama.cpp's converter writes no scaling type for LongRoPE: the factor tensors say it
            cfg["rope_scaling"] = {"rope_type": "longrope"}
            for role, key in (("rope_factors_long", "long_factor"), ("rope_factors_short", "short_factor")):
                name = self.arch.role(role).gguf_name()
                if name not in self._g.shapes:
                    raise QuantconvError(f"{self.path} uses LongRoPE but lacks tensor {name}; re-export it")
                cfg["rope_scaling"][key] = [_f32_round(x) for x in self._g.dequantize(name).reshape(-1)]
        elif scaling in ("linear", "yarn"):
            cfg["rope_scaling"] = {"rope_type": scaling, "factor": _f32_round(v(f"{a}.rope.scaling.factor", 1.0))}
            if v(f"{a}.rope.scaling.original_context_length"):
                cfg["rope_scaling"]["original_max_position_embeddings"] = int(
                    v(f"{a}.rope.scaling.original_context_length"))
        elif scaling not in (None, "none"):
            raise QuantconvError(f"{self.path} uses RoPE scaling '{scaling}', which quantconv cannot re-export")
        for kind, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
            if v(f"tokenizer.ggml.{key}") is not None:
                cfg[f"{kind}_token_id"] = int(v(f"tokenizer.ggml.{key}"))
        if v("general.name"):
            cfg["_name_or_path"] = v("general.name")
        return cfg

    def tensor_names(self) -> list[str]:
        return list(self._names)

    def _gname(self, name: str) -> str:
        if name not in self._gguf_names:
            raise QuantconvError(f"no tensor '{name}' in {self.path}")
        return self._gguf_names[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._g.shapes[self._gname(name)]

    def load(self, name: str) -> np.ndarray:
        w = self._g.dequantize(self._gname(name))
        return np.ascontiguousarray(self.arch.from_gguf_layout(name, w, self.config))

    def tokenizer_metadata(self) -> dict[str, Any]:
        """Every tokenizer.* key of the file, verbatim, with its GGUF type."""
        out: dict[str, Any] = {}
        types: dict[str, VT] = {}
        for key, (value, vtype, elem) in self._g.kv.items():
            if key.startswith("tokenizer."):
                out[key] = value
                types[key] = elem if vtype == VT.ARRAY else vtype
        out["_types"] = types
        return out

    def extra_gguf_tensors(self) -> dict[str, np.ndarray]:
        return {n: self._g.dequantize(n) for n in self._extras}


# --- resolving what the user typed --------------------------------------------------------------------


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        raise QuantconvError(
            f"cannot download '{repo_id}': huggingface_hub is not installed; pip install huggingface_hub, "
            "or pass a local directory"
        ) from None
    # checked here, not via huggingface_hub's constants: those are frozen when it is first imported
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, ignore_patterns=_HUB_SKIP,
                                      local_files_only=offline))
    except GatedRepoError:
        raise QuantconvError(
            f"'{repo_id}' is gated on the hub; accept its license on the model page and log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise QuantconvError(
            f"no model '{repo_id}' on the hub (or it is private: log in with hf auth login); check the id"
        ) from None
    except Exception as e:  # offline, no network, hub down: huggingface_hub raises several kinds
        why = "offline (HF_HUB_OFFLINE is set)" if offline else f"no network or hub unreachable ({type(e).__name__})"
        raise QuantconvError(
            f"cannot download '{repo_id}' from the hub: {why} and it is not in the local cache; "
            "pass a local directory (config.json + *.safetensors) instead"
        ) from None


def open_source(source: str | os.PathLike | None) -> ModelSource:
    """None -> the default reference model; a reference name; a folder; a .gguf file; a hub id (org/name)."""
    if source is None:
        ref = default_reference()
        return GGUFSource(reference_path(ref), description=ref.description)
    text = os.fspath(source)
    refs = reference_models()
    if text in refs:
        return GGUFSource(reference_path(refs[text]), description=refs[text].description)
    path = Path(text).expanduser()
    if path.is_dir():
        return HFDirSource(path)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return GGUFSource(path)
        raise QuantconvError(
            f"{path} is a file but not a .gguf; pass a Hugging Face model folder, a .gguf file or a hub id"
        )
    if _HUB_ID.match(text) and not text.lower().endswith(".gguf"):
        return HFDirSource(_from_hub(text), name_hint=text)
    raise QuantconvError(
        f"{text}: no such file or directory; pass a Hugging Face model folder, a .gguf file, a hub id "
        f"(org/name) or one of: {', '.join(refs)}"
    )
