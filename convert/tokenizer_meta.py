"""HF tokenizer files -> the GGUF `tokenizer.*` metadata llama.cpp expects.

Two families, as llama.cpp's own converter distinguishes them:
- byte-level BPE (GPT-2, Llama 3, Qwen2/Qwen3, SmolLM, Phi-4-mini): tokenizer.ggml.model "gpt2", tokens
  + merges, and tokenizer.ggml.pre naming the pre-tokenizer regex (from the table in models.yaml:
  llama-bpe, qwen2, gpt-4o, ...);
- SentencePiece (Llama 2, TinyLlama, Mistral v0.1, Phi-3/3.5-mini, Gemma 2/3): model "llama", tokens +
  scores, read from tokenizer.model when present, else from a tokenizer.json BPE with byte_fallback.
  add_space_prefix comes from the model (sentencepiece's add_dummy_prefix, or the tokenizer.json
  normalizer): false for Gemma, as llama.cpp's converter writes it.
add_bos_token / add_eos_token follow llama.cpp's converter (gguf-py SpecialVocab): the tokenizer.json
post-processor first, then tokenizer_config.json.

The result maps key -> value, plus "_types": {key: GGUFValueType} giving each scalar's type and, for
list values, the element type (how formats/gguf_writer.py's add_kv takes a vtype).
"""

from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path
from typing import Any

from gguf import GGUFValueType as VT

from quantconv.errors import QuantconvError

from quantconv.formats.models import load_models_yaml

# GGUF token types (= sentencepiece's piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SPM_SPACE = "\u2581"  # "▁"

_TYPES = {
    "tokenizer.ggml.model": VT.STRING, "tokenizer.ggml.pre": VT.STRING,
    "tokenizer.ggml.tokens": VT.STRING, "tokenizer.ggml.merges": VT.STRING,
    "tokenizer.ggml.token_type": VT.INT32, "tokenizer.ggml.scores": VT.FLOAT32,
    "tokenizer.ggml.bos_token_id": VT.UINT32, "tokenizer.ggml.eos_token_id": VT.UINT32,
    "tokenizer.ggml.unknown_token_id": VT.UINT32, "tokenizer.ggml.padding_token_id": VT.UINT32,
    "tokenizer.ggml.add_bos_token": VT.BOOL, "tokenizer.ggml.add_eos_token": VT.BOOL,
    "tokenizer.ggml.add_space_prefix": VT.BOOL, "tokenizer.chat_template": VT.STRING,
}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise QuantconvError(f"{path} is not valid JSON; re-download it") from None


def _content(tok: Any) -> str | None:
    """tokenizer_config stores special tokens as strings or as serialized AddedToken dicts."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def _looks_special(text: str) -> bool:
    # llama.cpp marks these control even when tokenizer.json forgot `special: true`
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<pad>", "<mask>")


# --- pieces of tokenizer.json -----------------------------------------------------------------------


def _walk(node: Any):
    """A tokenizer.json component and, for a Sequence, everything inside it."""
    if not isinstance(node, dict):
        return
    yield node
    for child in node.get("pretokenizers") or node.get("normalizers") or node.get("processors") or []:
        yield from _walk(child)


def pre_signature(tj: dict) -> dict:
    sig = {"split_regex": None, "digits": False, "byte_level": False}
    for p in _walk(tj.get("pre_tokenizer")):
        t = p.get("type")
        if t == "Split" and sig["split_regex"] is None:
            pat = p.get("pattern") or {}
            sig["split_regex"] = pat.get("Regex", pat.get("String"))
        elif t == "Digits" and p.get("individual_digits"):
            sig["digits"] = True
        elif t == "ByteLevel" and p.get("use_regex", True):
            sig["byte_level"] = True
    return sig


def choose_pre(tj: dict, name_hint: str) -> str:
    sig, name = pre_signature(tj), name_hint.lower()
    rules = load_models_yaml()["tokenizer_pre"]
    for rule in rules:  # structural rules first: they are exact
        conds = {k: v for k, v in rule.items() if k in sig}
        if conds and "name" not in rule and all(sig[k] == v for k, v in conds.items()):
            return rule["pre"]
    for rule in rules:
        if "name" in rule and rule["name"] in name:
            return rule["pre"]
    warnings.warn(
        f"unrecognized BPE pre-tokenizer for '{name_hint or 'this model'}'; writing tokenizer.ggml.pre "
        "'default' (llama.cpp may split text differently): add a rule to tokenizer_pre in models.yaml",
        stacklevel=3,
    )
    return "default"


def _add_special(tj: dict, tc: dict) -> dict[str, bool]:
    """{"bos"/"eos": add it} as llama.cpp's converter (gguf-py SpecialVocab) decides: from the
    tokenizer.json post-processor first (ByteLevel: neither unless said otherwise; RobertaProcessing:
    both; TemplateProcessing: a special token first / last in `single`), then tokenizer_config's
    add_bos_token / add_eos_token for what the post-processor left open. Absent = not said."""
    adds: dict[str, bool] = {}
    bos, eos = _content(tc.get("bos_token")), _content(tc.get("eos_token"))
    cls = _content(tc.get("cls_token"))
    bos, eos = bos or cls, eos or _content(tc.get("sep_token"))
    pp = tj.get("post_processor") if tj else None
    for p in (pp.get("processors") or [pp]) if isinstance(pp, dict) else []:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "ByteLevel":
            adds.setdefault("bos", False)
            adds.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            adds["bos"] = adds["eos"] = True
        elif kind == "TemplateProcessing":
            single = p.get("single") or []
            if len(single) > 1:
                first = (single[0].get("SpecialToken") or {}).get("id")
                if first:
                    if not tc or (first not in (bos, cls) and not bos):
                        bos = first
                    adds["bos"] = first in (bos, cls)
                if (single[-1].get("SpecialToken") or {}).get("id"):
                    adds["eos"] = True  # llama.cpp makes a different trailing token the EOS
    for kind in ("bos", "eos"):
        if isinstance(tc.get(f"add_{kind}_token"), bool):
            adds.setdefault(kind, tc[f"add_{kind}_token"])
    return adds


def _merges(model: dict) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]


def _json_vocab(tj: dict) -> tuple[dict[int, str], dict[int, bool]]:
    """id -> token text over base vocab and added tokens; id -> special for the added ones."""
    id_to_tok = {int(i): t for t, i in (tj["model"].get("vocab") or {}).items()}
    added = {}
    for a in tj.get("added_tokens") or []:
        id_to_tok[int(a["id"])] = a["content"]
        added[int(a["id"])] = bool(a.get("special"))
    return id_to_tok, added


def _fit_vocab(n_tokens_max_id: int, vocab_size: int, model_dir: Path) -> None:
    if n_tokens_max_id >= vocab_size:
        raise QuantconvError(
            f"tokenizer in {model_dir} has token id {n_tokens_max_id} but config.json vocab_size is "
            f"{vocab_size}; the tokenizer does not belong to this model"
        )


# --- byte-level BPE ----------------------------------------------------------------------------------


def _gpt2_vocab(tj: dict, vocab_size: int, model_dir: Path, name_hint: str) -> dict[str, Any]:
    id_to_tok, added = _json_vocab(tj)
    _fit_vocab(max(id_to_tok), vocab_size, model_dir)
    tokens, types = [], []
    for i in range(vocab_size):
        tok = id_to_tok.get(i)
        if tok is None:  # config vocab larger than the tokenizer (padded embeddings)
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        tokens.append(tok)
        if i in added:
            types.append(CONTROL if added[i] or _looks_special(tok) else USER_DEFINED)
        else:
            types.append(NORMAL)
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": choose_pre(tj, name_hint),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": _merges(tj["model"]),
    }


# --- SentencePiece ----------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7


def _proto_fields(buf: bytes):
    """(field number, value) of one protobuf message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, val


def read_sentencepiece_model(path: Path) -> tuple[list[tuple[str, float, int]], bool]:
    """Pieces (text, score, type) and add_dummy_prefix from a sentencepiece ModelProto.

    A small protobuf walk instead of the sentencepiece package: ModelProto.pieces = field 1
    (SentencePiece: piece = 1, score = 2 (float), type = 3, default NORMAL), normalizer_spec = 3
    (add_dummy_prefix = 3, default true).
    """
    buf = path.read_bytes()
    pieces, add_prefix = [], True
    try:
        for field, val in _proto_fields(buf):
            if field == 1 and isinstance(val, bytes):
                text, score, typ = "", 0.0, NORMAL
                for f2, v2 in _proto_fields(val):
                    if f2 == 1:
                        text = v2.decode("utf-8")
                    elif f2 == 2:
                        (score,) = struct.unpack("<f", v2)
                    elif f2 == 3:
                        typ = v2
                pieces.append((text, score, typ))
            elif field == 3 and isinstance(val, bytes):
                for f2, v2 in _proto_fields(val):
                    if f2 == 3:
                        add_prefix = bool(v2)
    except (IndexError, ValueError, UnicodeDecodeError, struct.error):
        raise QuantconvError(f"{path} is not a sentencepiece model (or is damaged); re-download it") from None
    if not pieces:
        raise QuantconvError(f"{path} holds no sentencepiece pieces; re-download it")
    return pieces, add_prefix


def _spm_scores_from_json(tj: dict, id_to_tok: dict[int, str]) -> dict[int, float]:
    """Scores for llama.cpp's SPM tokenizer, which merges the adjacent pair of highest score.

    llama.cpp's own converter writes a flat -1000 here; we give each token -(rank of the merge that
    produces it) instead, so that llama.cpp applies merges in the same order as the HF BPE. Tokens no
    merge produces (single characters) rank after every merge, in id order, as in sentencepiece files.
    """
    merges = _merges(tj["model"])
    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        a, _, b = m.partition(" ")
        rank.setdefault(a + b, r)
    return {i: float(-rank[t]) if t in rank else float(-(len(merges) + i)) for i, t in id_to_tok.items()}


def _spm_vocab(model_dir: Path, tj: dict, tc: dict, vocab_size: int) -> dict[str, Any]:
    """vocab_size 0: as many tokens as the tokenizer has."""
    sp_path = model_dir / "tokenizer.model"
    added_special: dict[int, tuple[str, bool]] = {}  # id -> (text, special) from tokenizer_config
    for i, d in (tc.get("added_tokens_decoder") or {}).items():
        added_special[int(i)] = (d["content"], bool(d.get("special")))

    if sp_path.is_file():
        pieces, add_prefix = read_sentencepiece_model(sp_path)
        entries = {i: p for i, p in enumerate(pieces)}
    else:
        id_to_tok, added = _json_vocab(tj)
        scores = _spm_scores_from_json(tj, id_to_tok)
        unk = tj["model"].get("unk_token")
        entries = {}
        for i, t in id_to_tok.items():
            if t == unk:
                typ = UNKNOWN
            elif _BYTE_TOKEN.fullmatch(t):
                typ = BYTE
            elif i in added:
                typ = CONTROL if added[i] or _looks_special(t) else USER_DEFINED
            else:
                typ = NORMAL
            entries[i] = (t, 0.0 if typ in (CONTROL, UNKNOWN, BYTE) else scores[i], typ)
        add_prefix = _json_adds_space_prefix(tj)
    vocab_size = vocab_size or max(entries) + 1

    for i, (text, special) in added_special.items():  # tokenizer_config's view of added tokens wins
        if i >= vocab_size or (i in entries and entries[i][2] in (UNKNOWN, BYTE)):
            continue
        typ = CONTROL if special or _looks_special(text) else USER_DEFINED
        if typ == USER_DEFINED:
            text = text.replace(_SPM_SPACE, " ")  # llama.cpp matches user-defined tokens as raw text
        entries[i] = (text, 0.0 if typ == CONTROL else -1000.0, typ)
    _fit_vocab(max(entries), vocab_size, model_dir)

    tokens, scores_out, types = [], [], []
    for i in range(vocab_size):
        text, score, typ = entries.get(i, (f"[PAD{i}]", -1000.0, UNUSED))
        tokens.append(text)
        scores_out.append(float(score))
        types.append(int(typ))
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores_out,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.add_space_prefix": add_prefix,
    }


def _json_adds_space_prefix(tj: dict) -> bool:
    """Llama-2-style tokenizer.json prepends "▁" in its normalizer, or via a Metaspace pre-tokenizer."""
    for n in _walk(tj.get("normalizer")):
        if n.get("type") == "Prepend" and n.get("prepend") == _SPM_SPACE:
            return True
    for p in _walk(tj.get("pre_tokenizer")):
        if p.get("type") == "Metaspace":
            return p.get("prepend_scheme", "always") != "never" and p.get("add_prefix_space", True)
    return False


# --- special tokens, flags, chat template -----------------------------------------------------------


def _special_ids(meta: dict, tc: dict, stm: dict, tj: dict, config: dict) -> dict[str, Any]:
    tok_to_id = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    out: dict[str, Any] = {}
    for kind, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        text = _content(tc.get(f"{kind}_token")) or _content(stm.get(f"{kind}_token"))
        if kind == "unk" and text is None and tj:
            text = tj["model"].get("unk_token")
        tid = tok_to_id.get(text) if text is not None else None
        if tid is None:  # fall back to config.json's ids (eos may be a list: the first is the main one)
            cid = config.get(f"{kind}_token_id")
            tid = cid[0] if isinstance(cid, list) and cid else cid
        if isinstance(tid, int) and 0 <= tid < len(tok_to_id):
            out[f"tokenizer.ggml.{key}"] = tid
    return out


def _chat_template(model_dir: Path, tc: dict) -> str | None:
    t = tc.get("chat_template")
    if isinstance(t, list):  # named templates: llama.cpp's main key takes the default one
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    if isinstance(t, str):
        return t
    jinja = model_dir / "chat_template.jinja"  # transformers >= 4.43 may save it on its own
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    t = _read_json(model_dir / "chat_template.json").get("chat_template")
    return t if isinstance(t, str) else None


def tokenizer_metadata(model_dir: str | Path, config: dict, name_hint: str = "") -> dict[str, Any]:
    """GGUF tokenizer.* metadata for the HF model in model_dir (config = its config.json)."""
    model_dir = Path(model_dir)
    tj = _read_json(model_dir / "tokenizer.json")
    tc = _read_json(model_dir / "tokenizer_config.json")
    stm = _read_json(model_dir / "special_tokens_map.json")
    vocab_size = int(config.get("vocab_size") or 0)
    has_sp = (model_dir / "tokenizer.model").is_file()
    if not tj and not has_sp:
        raise QuantconvError(
            f"no tokenizer.json or tokenizer.model in {model_dir}; copy the model's tokenizer files there"
        )
    if tj and not vocab_size:
        vocab_size = max(_json_vocab(tj)[0]) + 1
    model = (tj.get("model") or {}) if tj else {}
    if tj and model.get("type") not in ("BPE", None):
        raise QuantconvError(
            f"tokenizer in {model_dir} is a {model.get('type')} model; quantconv converts BPE tokenizers "
            "(GPT-2/Llama 3/Qwen2 byte-level, or SentencePiece BPE) only"
        )
    if has_sp or model.get("byte_fallback"):
        meta = _spm_vocab(model_dir, tj, tc, vocab_size)
        default_bos = True  # SentencePiece models prepend BOS unless told otherwise
    else:
        meta = _gpt2_vocab(tj, vocab_size, model_dir, name_hint or str(config.get("_name_or_path", "")))
        default_bos = False

    meta.update(_special_ids(meta, tc, stm, tj, config))
    adds = _add_special(tj, tc)
    # always written (llama.cpp's converter leaves it out when nothing says, and its loader then
    # defaults to the same value)
    meta["tokenizer.ggml.add_bos_token"] = adds.get("bos", default_bos)
    if "eos" in adds:
        meta["tokenizer.ggml.add_eos_token"] = adds["eos"]
    if "tokenizer.ggml.add_space_prefix" not in meta and isinstance(tc.get("add_prefix_space"), bool):
        meta["tokenizer.ggml.add_space_prefix"] = tc["add_prefix_space"]
    template = _chat_template(model_dir, tc)
    if template:
        meta["tokenizer.chat_template"] = template
    meta["_types"] = {k: _TYPES[k] for k in meta}
    return meta
