"""Text <-> token ids from a GGUF file's `tokenizer.*` metadata, the way stock llama.cpp does it.

    tok = Tokenizer.from_gguf_metadata(GGUFFile(path).kv)
    ids = tok.encode(text, add_bos=False, special=False)
    text = tok.decode(ids)

Three tokenizer families (tokenizer.ggml.model), as llama.cpp reads them:

- "gpt2": byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM). The text is first cut into words by the
  pre-tokenizer that tokenizer.ggml.pre names. llama.cpp implements its common pre-tokenizer regexes
  with hand-written scanners and Unicode tables of its own (Unicode 15.1 categories, a fixed
  whitespace set); here each one is a Python `re` pattern over explicit character classes built to
  the same tables, so that the words agree codepoint for codepoint. Words then go through the BPE
  merges of HF's `tokenizers` (Rust), which merge in the same order as llama.cpp (lowest merge rank
  first, leftmost first among equals).
- "llama": SentencePiece-style. llama.cpp's SPM tokenizer merges adjacent symbols greedily by the
  score of the token they form (highest first, leftmost first among equals), starting from UTF-8
  characters, with "<0xXX>" byte tokens for characters outside the vocabulary. `tokenizers` cannot
  express score-ordered merges, so that algorithm runs here in Python; text is cut where no token can
  span the cut, and the pieces are cached, which keeps it fast. Gemma 2/3 use this with
  add_space_prefix false.
- "gemma4": SentencePiece-style BPE (Gemma 4's 262k vocabulary): spaces become "▁", lines and runs of
  newlines are the words, merges go by rank over raw UTF-8 (HF's `tokenizers` again), and a symbol
  that is no token becomes "<0xXX>" byte tokens.

Special tokens are matched the llama.cpp way: control/unknown tokens only with special=True,
user-defined ones always, longest token text first.
"""
from __future__ import annotations

import functools
import heapq
import json
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from quantconv.errors import QuantconvError

# GGUF token types (sentencepiece piece types)
UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 0, 1, 2, 3, 4, 5, 6

_SPM_SPACE = "\u2581"  # "▁"
_C_SPACE = " \t\n\v\f\r"  # C isspace(): the whitespace llama.cpp strips after an "rstrip" token
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SURROGATE = re.compile("[\ud800-\udfff]")

# --- Unicode classes as llama.cpp sees them ----------------------------------------------------------

# llama.cpp's whitespace set (unicode-data.cpp): Unicode White_Space. Python's own \s differs
# (it includes \x1c-\x1f), so the patterns below never use \s.
_WHITESPACE = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
               0x2028, 0x2029, 0x202F, 0x205F, 0x3000)
# llama.cpp's category tables follow Unicode 15.1; Python 3.11's unicodedata is Unicode 14.0. These
# codepoints are letters (L), numbers (N) or punctuation (P) in 15.1 but unassigned in 14.0.
_UNICODE_15_1_ADDITIONS = {
    "L": ((0x1123F, 0x11240), (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33),
          (0x1342F, 0x1342F), (0x13441, 0x13446), (0x1B132, 0x1B132), (0x1B155, 0x1B155),
          (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D), (0x1E4D0, 0x1E4EB), (0x2B739, 0x2B739),
          (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF)),
    "N": ((0x11F50, 0x11F59), (0x1D2C0, 0x1D2D3), (0x1E4F0, 0x1E4F9)),
    "P": ((0x11B00, 0x11B09), (0x11F43, 0x11F4F)),
}
_LAST_LNP = 0x40000  # no letter, number or punctuation lies above plane 3


def _ranges_to_class(ranges: Iterable[tuple[int, int]]) -> str:
    """Body of a `re` character class (no brackets) holding the codepoint ranges."""
    parts = []
    for a, b in ranges:
        parts.append(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}")
    return "".join(parts)


@functools.lru_cache(maxsize=None)
def _char_classes() -> dict[str, str]:
    """`re` class bodies for letters (L), numbers (N), punctuation (P) and whitespace (W)."""
    member = {k: bytearray(_LAST_LNP) for k in "LNP"}
    category = unicodedata.category
    for cp in range(_LAST_LNP):
        major = category(chr(cp))[0]
        if major in "LNP":
            member[major][cp] = 1
    for major, ranges in _UNICODE_15_1_ADDITIONS.items():
        for a, b in ranges:
            for cp in range(a, b + 1):
                for other in "LNP":
                    member[other][cp] = 0
                member[major][cp] = 1
    out = {}
    for major, flags in member.items():
        ranges, start = [], None
        for cp, f in enumerate(flags):
            if f and start is None:
                start = cp
            elif not f and start is not None:
                ranges.append((start, cp - 1))
                start = None
        if start is not None:
            ranges.append((start, _LAST_LNP - 1))
        out[major] = _ranges_to_class(ranges)
    out["W"] = _ranges_to_class((c, c) for c in _WHITESPACE)
    return out


# --- pre-tokenizers ----------------------------------------------------------------------------------
# Python equivalents of llama.cpp's scanners (unicode.cpp). `\s` / `\S` of the original regexes become
# [{W}] / [^{W}]; "(?!\S)" becomes "(?![^{W}])" (true at the end of the piece, as in llama.cpp).

_GPT2 = r"'(?:s|t|re|ve|m|ll|d)| ?[{L}]+| ?[{N}]+| ?[^{W}{L}{N}]+|[{W}]+(?![^{W}])|[{W}]+"
_LLAMA3 = (r"'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])|[^\r\n{L}{N}]?[{L}]+|[{N}]{{1,3}}"
           r"| ?[^{W}{L}{N}]+[\r\n]*|[{W}]*[\r\n]+|[{W}]+(?![^{W}])|[{W}]+")
_QWEN2 = (r"'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])|[^\r\n{L}{N}]?[{L}]+|[{N}]"
          r"| ?[^{W}{L}{N}]+[\r\n]*|[{W}]*[\r\n]+|[{W}]+(?![^{W}])|[{W}]+")

# llama.cpp runs a regex it has no hand-written scanner for through std::regex on a "collapsed" copy of
# the text: every codepoint >= 128 becomes one byte naming its class (letter 0xD2, number 0xD1,
# punctuation 0xD3, whitespace 0x0B, anything else 0xD0 here) and \p{L}/\p{N} become those bytes plus
# their ASCII members; \s is ECMAScript's ASCII set. Its word cuts then apply to the original text.
# Non-ASCII letters thus count as both upper and lower case, which Phi-4-mini's regex relies on.
_ECMA_S = r"\t\n\x0b\x0c\r "
_COLLAPSED_L, _COLLAPSED_N = "\xd2A-Za-z", "\xd10-9"
_CONTRACTION = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
# OpenAI's o200k regex (tokenizer.ggml.pre "gpt-4o": Phi-4-mini, Llama 4), in the form llama.cpp runs
# it, where [\p{Lu}...] became "a letter that is not a-z" / "a letter that is not A-Z".
_GPT4O_COLLAPSED = (
    f"[^\\r\\n{_COLLAPSED_L}{_COLLAPSED_N}]?(?:(?=[{_COLLAPSED_L}])[^a-z])*(?:(?=[{_COLLAPSED_L}])[^A-Z])+{_CONTRACTION}"
    f"|[^\\r\\n{_COLLAPSED_L}{_COLLAPSED_N}]?(?:(?=[{_COLLAPSED_L}])[^a-z])+(?:(?=[{_COLLAPSED_L}])[^A-Z])*{_CONTRACTION}"
    f"|[{_COLLAPSED_N}]{{{{1,3}}}}| ?[^{_ECMA_S}{_COLLAPSED_L}{_COLLAPSED_N}]+[\\r\\n/]*|[{_ECMA_S}]*[\\r\\n]+"
    f"|[{_ECMA_S}]+(?![^{_ECMA_S}])|[{_ECMA_S}]+")

# Each family: a list of (pattern, covers[, collapsed]) stages applied in turn to every piece, as
# llama.cpp applies its regex list. covers=True: the pattern's matches tile any piece (llama.cpp's
# custom scanners); covers=False: text between matches becomes pieces of its own (llama.cpp's
# std::regex fallback). collapsed=True: the pattern runs on the collapsed text (see above).
PRETOKENIZER_FAMILIES: dict[str, list[tuple]] = {
    "gpt2": [(_GPT2, True)],
    "llama3": [(_LLAMA3, True)],
    "qwen2": [(_QWEN2, True)],
    # llama.cpp: each digit alone ([{N}], covers=False), then GPT-2's regex on the text between digits.
    # One pattern does both: digits never join another match, and "(?!\S)" sees a digit as the end.
    "smollm": [(r"[{N}]|'(?:s|t|re|ve|m|ll|d)| ?[{L}]+| ?[^{W}{L}{N}]+|[{W}]+(?![^{W}{N}])|[{W}]+", True)],
    "smollm-staged": [(r"[{N}]", False), (_GPT2, True)],  # the literal two stages, for tests
    "default": [(r"[{P}\$\+<=>\^~\|]+", False), (_GPT2, True), (r"[{N}]+", False), (r"[0-9][0-9][0-9]", False)],
    "gpt-4o": [(_GPT4O_COLLAPSED, False, True)],
    # SentencePiece-style BPE (Gemma 4): only runs of newlines are cut from the rest
    "lines": [(r"[^\n]+|\n+", True)],
}

# tokenizer.ggml.pre -> (family, ignore_merges, add_bos default); llama.cpp's names for these regexes
PRE_TOKENIZERS: dict[str, tuple[str, bool, bool]] = {
    "default": ("default", False, False),
    **{p: ("llama3", True, True) for p in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                                           "midm-2.0", "lfm2", "jina-v5-nano")},
    **{p: ("llama3", False, False) for p in ("dbrx", "smaug-bpe", "chatglm-bpe")},
    **{p: ("llama3", True, False) for p in ("glm4", "glm5")},
    **{p: ("gpt2", False, False) for p in ("gpt-2", "gpt2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es",
                                           "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "mpt", "olmo",
                                           "jais", "trillion", "granite-docling", "exaone4")},
    **{p: ("qwen2", False, False) for p in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez",
                                            "stablelm2", "hunyuan", "solar-open", "grok-2")},
    **{p: ("smollm", False, False) for p in ("smollm", "starcoder", "refact", "command-r", "codeshell",
                                             "exaone", "minerva-7b", "mellum2")},
    **{p: ("gpt-4o", False, False) for p in ("gpt-4o", "llama4", "kanana2", "talkie")},
}


@functools.lru_cache(maxsize=None)
def _compiled_family(family: str) -> tuple[tuple[re.Pattern, bool, bool], ...]:
    classes = _char_classes()
    return tuple((re.compile(st[0].format(**classes)), st[1], st[2] if len(st) > 2 else False)
                 for st in PRETOKENIZER_FAMILIES[family])


class _CollapseTable(dict):
    """str.translate table: codepoint -> its collapsed character (see _GPT4O_COLLAPSED), filled lazily."""

    def __missing__(self, cp: int) -> str:
        if cp < 128:
            c = chr(cp)
        else:
            classes, ch = _collapse_classes(), chr(cp)
            c = next((v for rx, v in classes if rx.match(ch)), "\xd0")
        self[cp] = c
        return c


@functools.lru_cache(maxsize=None)
def _collapse_classes() -> tuple[tuple[re.Pattern, str], ...]:
    cls = _char_classes()
    return tuple((re.compile(f"[{cls[k]}]"), v) for k, v in (("W", "\x0b"), ("L", "\xd2"), ("N", "\xd1"),
                                                            ("P", "\xd3")))


_COLLAPSE = _CollapseTable()


def _split_words(text: str, stages: tuple[tuple[re.Pattern, bool, bool], ...]) -> list[str]:
    pieces = [text]
    for rx, covers, collapsed in stages:
        out: list[str] = []
        if covers and not collapsed:
            findall = rx.findall
            for piece in pieces:
                out.extend(findall(piece))
        else:
            for piece in pieces:
                pos = 0
                # collapsed: matched on a same-length stand-in of the piece, whose spans cut the original
                for m in rx.finditer(piece.translate(_COLLAPSE) if collapsed else piece):
                    s, e = m.span()
                    if s > pos:
                        out.append(piece[pos:s])
                    out.append(piece[s:e])
                    pos = e
                if pos < len(piece):
                    out.append(piece[pos:] if pos else piece)
        pieces = out
    return pieces


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (byte-level BPE token text is written in these)."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    table, extra = [], 0
    for b in range(256):
        if b in printable:
            table.append(chr(b))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return table


# end-of-generation tokens llama.cpp recognizes by their text (llama-vocab.cpp)
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOG_TEXTS = frozenset(("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
                        "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>",
                        "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
                        "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~["))
_FIM_EOG_TEXTS = frozenset(("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>",
                            "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>"))


_MODELS = ("gpt2", "llama", "gemma4")
_MODELS_MSG = ("unsupported tokenizer.ggml.model '{}': quantconv reads 'gpt2' (byte-level BPE), 'llama' "
               "(SentencePiece) and 'gemma4' (SentencePiece-style BPE) tokenizers")


def _fail(msg: str) -> QuantconvError:
    return QuantconvError(msg.replace("\n", " "))


class Tokenizer:
    """Encode/decode with a GGUF model's own vocabulary, matching stock llama.cpp token for token."""

    def __init__(self, *, model: str, tokens: list[str], token_types: list[int], scores: list[float] | None = None,
                 merges: list[str] | None = None, pre: str = "default", bos_id: int | None = None,
                 eos_id: int | None = None, unk_id: int | None = None, pad_id: int | None = None,
                 eot_id: int | None = None, eom_id: int | None = None, add_bos: bool | None = None,
                 add_eos: bool | None = None, add_space_prefix: bool | None = None,
                 chat_template: str | None = None, name: str | None = None):
        if model not in _MODELS:
            raise _fail(_MODELS_MSG.format(model))
        n = len(tokens)
        if n == 0:
            raise _fail("tokenizer.ggml.tokens is empty; the GGUF has no vocabulary")
        if len(token_types) < n:
            raise _fail(f"tokenizer.ggml.token_type has {len(token_types)} entries for {n} tokens; re-export the file")
        if scores is not None and len(scores) < n:
            raise _fail(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens; re-export the file")
        self.model = model
        self.vocab_size = n
        # llama.cpp reads token texts as C strings (cut at a NUL) and renames empty ones
        self.tokens = [t.partition("\x00")[0] or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.token_types = [int(t) for t in token_types[:n]]
        self.scores = [float(s) for s in scores[:n]] if scores is not None else [0.0] * n
        self.chat_template = chat_template
        self._token_to_id = {t: i for i, t in enumerate(self.tokens)}

        def _valid(i):
            return i if isinstance(i, int) and 0 <= i < n else None

        if model == "gpt2":
            if pre not in PRE_TOKENIZERS:
                raise _fail(f"unsupported tokenizer.ggml.pre '{pre}': quantconv's tokenizer implements "
                            f"{', '.join(sorted(PRE_TOKENIZERS))}")
            family, ignore_merges, pre_bos = PRE_TOKENIZERS[pre]
            self.pre = pre
            default_bos = default_eos = 11  # llama.cpp's defaults for BPE vocabularies
            self.add_bos = bool(pre_bos if add_bos is None else add_bos)
            self.add_eos = bool(add_eos) if add_eos is not None else False
            if pre in ("chatglm-bpe", "glm4", "glm5"):
                default_bos = None
        elif model == "gemma4":
            # SentencePiece-style BPE: merges over raw UTF-8 with "▁" for spaces, "<0xXX>" byte tokens.
            # llama.cpp has no default special ids for it and always adds BOS (its Gemma 4 workaround).
            self.pre, family, ignore_merges = "gemma4", "lines", False
            default_bos = default_eos = None
            self.add_bos = True
            self.add_eos = bool(add_eos) if add_eos is not None else False
        else:
            self.pre = "default"
            default_bos, default_eos = 1, 2
            self.add_bos = True if add_bos is None else bool(add_bos)
            self.add_eos = bool(add_eos) if add_eos is not None else False
        self.add_space_prefix = (model == "llama") if add_space_prefix is None else bool(add_space_prefix)
        self.bos_id = _valid(bos_id) if bos_id is not None else _valid(default_bos)
        self.eos_id = _valid(eos_id) if eos_id is not None else _valid(default_eos)
        self.unk_id = _valid(unk_id) if unk_id is not None else (_valid(0) if model == "llama" else None)
        self.pad_id = _valid(pad_id)

        # token attributes, with llama.cpp's promotion of control-looking end tokens to control
        attrs = list(self.token_types)
        self.eot_id = _valid(eot_id)
        if self.eot_id is None:
            self.eot_id = next((self._token_to_id[t] for t in _EOT_TEXTS if t in self._token_to_id), None)
        eog = set()
        for i, t in enumerate(self.tokens):
            if t in _EOG_TEXTS or t in _FIM_EOG_TEXTS:
                eog.add(i)
        for i in (self.eos_id, self.eot_id, _valid(eom_id)):
            if i is not None:
                eog.add(i)
        for i in eog | ({self.eot_id} if self.eot_id is not None else set()):
            if attrs[i] != CONTROL and self.tokens[i] in (_EOG_TEXTS | _FIM_EOG_TEXTS | set(_EOT_TEXTS)):
                attrs[i] = CONTROL
        # llama.cpp's corrections: "<|end|>" ends no generation where "<|return|>"/"<|call|>" (or
        # "<|calls|>"/"<|flush|>") exist, and "</s>" is a normal token in Gemma 4's vocabulary
        by_text = {self.tokens[i]: i for i in eog}
        if "<|end|>" in by_text and (("<|return|>" in by_text and "<|call|>" in by_text)
                                     or ("<|calls|>" in by_text and "<|flush|>" in by_text)):
            eog.discard(by_text["<|end|>"])
            attrs[by_text["<|end|>"]] = USER_DEFINED
        if "</s>" in by_text and ("<|tool_response>" in by_text or "<|plamo:eos|>" in by_text):
            eog.discard(by_text["</s>"])
            attrs[by_text["</s>"]] = NORMAL
        self.eot_ids = frozenset(eog)
        self._attrs = attrs

        # special tokens, longest text (in bytes) first, as llama.cpp partitions the text with them
        specials = [(len(self.tokens[i].encode("utf-8")), i) for i, a in enumerate(attrs)
                    if a in (CONTROL, USER_DEFINED, UNKNOWN)]
        specials.sort(key=lambda x: (-x[0], x[1]))
        self._specials_all = [(self.tokens[i], i) for _, i in specials]
        self._specials_user = [(self.tokens[i], i) for _, i in specials if attrs[i] == USER_DEFINED]
        # llama.cpp drops the whitespace after Phi-3's special tokens (their HF "rstrip"), keyed on the
        # model's general.name
        self._rstrip: frozenset[int] = frozenset()
        if name and any(k in name.lower() for k in ("phi-3", "phi3")):
            keep = {"<unk>", "<s>", "<|endoftext|>"}
            self._rstrip = frozenset(i for _, i in specials if self.tokens[i] not in keep) | frozenset(
                i for i, t in enumerate(self.tokens) if t == "</s>")

        self._pieces: list[bytes] | None = None
        if model in ("gpt2", "gemma4"):
            if merges is None:
                raise _fail(f"tokenizer.ggml.merges is missing; a '{model}' tokenizer needs its BPE merges")
            self._stages = _compiled_family(family)
            self._bpe = self._build_bpe(merges, ignore_merges)
            self._word_cache: dict[str, list[int]] = {}
            self._byte_trans = {b: c for b, c in enumerate(_gpt2_byte_chars())}
            self._byte_ids = [self._token_to_id.get(f"<0x{b:02X}>") for b in range(256)]
        else:
            self._spm_cache: dict[str, list[int]] = {}
            self._spm_pairs = {t[k:k + 2] for t in self.tokens if len(t) > 1 for k in range(len(t) - 1)}
            self._byte_ids = [self._spm_byte_token(b) for b in range(256)]

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, kv: dict[str, Any]) -> "Tokenizer":
        """Build from GGUFFile(path).kv (the `tokenizer.*` keys, and general.name for a model quirk)."""
        model = kv.get("tokenizer.ggml.model")
        if model is None:
            raise _fail("the GGUF has no tokenizer.ggml.model; it carries no tokenizer (re-export it with one)")
        if not isinstance(model, str) or model not in _MODELS:
            raise _fail(_MODELS_MSG.format(model))
        tokens = kv.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens[:16]):
            raise _fail("tokenizer.ggml.tokens is missing or not a list of strings; re-export the file")
        types = kv.get("tokenizer.ggml.token_type")
        if types is None:
            types = [NORMAL] * len(tokens)

        def opt_int(key):
            v = kv.get(key)
            return int(v) if isinstance(v, (int,)) and not isinstance(v, bool) else None

        def opt_bool(key):
            v = kv.get(key)
            return bool(v) if isinstance(v, (bool, int)) else None

        pre = kv.get("tokenizer.ggml.pre") or "default"
        return cls(model=model, tokens=tokens, token_types=list(types), scores=kv.get("tokenizer.ggml.scores"),
                   merges=kv.get("tokenizer.ggml.merges"), pre=str(pre),
                   bos_id=opt_int("tokenizer.ggml.bos_token_id"), eos_id=opt_int("tokenizer.ggml.eos_token_id"),
                   unk_id=opt_int("tokenizer.ggml.unknown_token_id"),
                   pad_id=opt_int("tokenizer.ggml.padding_token_id"),
                   eot_id=opt_int("tokenizer.ggml.eot_token_id"), eom_id=opt_int("tokenizer.ggml.eom_token_id"),
                   add_bos=opt_bool("tokenizer.ggml.add_bos_token"),
                   add_eos=opt_bool("tokenizer.ggml.add_eos_token"),
                   add_space_prefix=opt_bool("tokenizer.ggml.add_space_prefix"),
                   chat_template=kv.get("tokenizer.chat_template"),
                   name=kv.get("general.name") if isinstance(kv.get("general.name"), str) else None)

    @classmethod
    def from_gguf(cls, path) -> "Tokenizer":
        from quantconv.formats.gguf_reader import GGUFFile

        with GGUFFile(path) as f:
            return cls.from_gguf_metadata(f.kv)

    def _build_bpe(self, merges: list[str], ignore_merges: bool):
        from tokenizers import models

        vocab = self._token_to_id
        pairs, seen = [], set()
        for m in merges:
            if not isinstance(m, str):
                raise _fail("tokenizer.ggml.merges is not a list of strings; re-export the file")
            cut = m.find(" ", 1)  # as llama.cpp splits a merge line
            if cut < 0:
                continue
            a, b = m[:cut], m[cut + 1:]
            # llama.cpp keeps the first rank of a repeated pair; a merge whose parts or result are not
            # tokens cannot be expressed in `tokenizers` (and yields nothing usable in llama.cpp either)
            if (a, b) in seen or a not in vocab or b not in vocab or a + b not in vocab:
                continue
            seen.add((a, b))
            pairs.append((a, b))
        # A character outside the vocabulary must stay in the word as a symbol that merges with
        # nothing, and then yield no id, as in llama.cpp; `tokenizers` would drop it and let its
        # neighbours merge. So it becomes a sentinel "unknown" token, filtered out after.
        sentinel = "<quantconv:no-token>"
        while sentinel in vocab:
            sentinel += "!"
        self._bpe_sentinel = len(self.tokens)
        try:
            return models.BPE(vocab={**vocab, sentinel: self._bpe_sentinel}, merges=pairs, unk_token=sentinel,
                              fuse_unk=False, ignore_merges=ignore_merges)
        except Exception as e:  # tokenizers raises its own exception types
            raise _fail(f"the GGUF's BPE vocabulary is inconsistent ({e}); re-export the file") from None

    def _spm_bpe_encode(self, words: list[str], out: list[int]) -> None:
        """Gemma 4's BPE: words are lines (spaces already "▁") or runs of newlines, merged as written;
        a symbol that is no token becomes its UTF-8 bytes' "<0xXX>" tokens, as in llama.cpp."""
        cache, tokenize, nothing, vocab = self._word_cache, self._bpe.tokenize, self._bpe_sentinel, self._token_to_id
        if len(cache) > 200_000:
            cache.clear()
        for w in words:
            ids = cache.get(w)
            if ids is None:
                if w[0] == "\n" and w in vocab:  # a run of newlines that is one token stays whole
                    ids = [vocab[w]]
                else:
                    ids = []
                    for t in tokenize(w):
                        if t.id != nothing:
                            ids.append(t.id)
                        else:
                            a, b = t.offsets  # in UTF-8 bytes
                            ids.extend(i for i in (self._byte_ids[c] for c in w.encode("utf-8")[a:b])
                                       if i is not None)
                cache[w] = ids
            out.extend(ids)

    def _bpe_encode(self, words: list[str], out: list[int]) -> None:
        """BPE ids of pre-tokenized words, cached per word (natural text repeats its words a lot)."""
        cache, trans, tokenize, nothing = self._word_cache, self._byte_trans, self._bpe.tokenize, self._bpe_sentinel
        if len(cache) > 500_000:
            cache.clear()
        for w in words:
            ids = cache.get(w)
            if ids is None:
                # UTF-8 bytes -> GPT-2's byte characters, the alphabet of byte-level BPE tokens
                ids = cache[w] = [t.id for t in tokenize(w.encode("utf-8").decode("latin-1").translate(trans))
                                  if t.id != nothing]
            out.extend(ids)

    # --- encoding -----------------------------------------------------------------------------------

    def _partition(self, text: str, special: bool) -> list[str | int]:
        """Cut special tokens out of the text: llama.cpp's tokenizer_st_partition."""
        frags: list[str | int] = [text]
        for tok_text, tid in (self._specials_all if special else self._specials_user):
            if not any(isinstance(f, str) and tok_text in f for f in frags):
                continue
            new: list[str | int] = []
            for f in frags:
                if isinstance(f, str) and tok_text in f:
                    strip = tid in self._rstrip
                    for k, part in enumerate(f.split(tok_text)):
                        if k:
                            new.append(tid)
                            if strip:
                                part = part.lstrip(_C_SPACE)
                        if part:
                            new.append(part)
                else:
                    new.append(f)
            frags = new
        return frags

    def encode(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of `text`.

        add_bos: add the model's own special tokens, as llama.cpp's `add_special` (llama-cpp-python's
        tokenize(add_bos=True)) does: BOS when tokenizer.ggml.add_bos_token is true (SentencePiece
        models and Llama 3 by default), EOS when add_eos_token is. special: parse control tokens such
        as <|im_start|> in the text; when False they are tokenized as plain text. User-defined added
        tokens are always parsed, as in llama.cpp and HF tokenizers.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, not {type(text).__name__}")
        if _SURROGATE.search(text):  # from undecodable bytes: llama.cpp reads each as U+FFFD
            text = _SURROGATE.sub("\ufffd", text)
        out: list[int] = []
        if add_bos and self.add_bos:
            if self.bos_id is None:
                raise _fail("the tokenizer asks for a BOS token but has no tokenizer.ggml.bos_token_id")
            out.append(self.bos_id)
        frags = self._partition(text, special) if text else []
        if self.model == "gpt2":
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                else:
                    self._bpe_encode(_split_words(f, self._stages), out)
        elif self.model == "gemma4":
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                else:
                    self._spm_bpe_encode(_split_words(f.replace(" ", _SPM_SPACE), self._stages), out)
        else:
            prev_special = True  # a space goes in front of the text, and of text after a special token
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                    prev_special = True
                else:
                    if self.add_space_prefix and prev_special:
                        f = " " + f
                    self._spm_encode(f.replace(" ", _SPM_SPACE), out)
                    prev_special = False
        if add_bos and self.add_eos:
            if self.eos_id is None:
                raise _fail("the tokenizer asks for an EOS token but has no tokenizer.ggml.eos_token_id")
            out.append(self.eos_id)
        return out

    def _spm_byte_token(self, b: int) -> int | None:
        i = self._token_to_id.get(f"<0x{b:02X}>")
        if i is None and b < 0x80:
            i = self._token_to_id.get(chr(b))
        return i if i is not None else self.unk_id

    def _spm_encode(self, text: str, out: list[int]) -> None:
        """llama.cpp's SPM tokenization of one text fragment (spaces already escaped to ▁).

        A merged symbol is always a token, so no merge can cross a place where the two characters
        on either side appear together in no token: the text is cut at such places before '▁', and
        the pieces are tokenized on their own (and cached)."""
        pairs, cache = self._spm_pairs, self._spm_cache
        words = text.split(_SPM_SPACE)
        chunk, chunks = [words[0]], []
        last = words[0][-1:]  # the character before the next '▁' ("" at the start of the text)
        for w in words[1:]:
            if last and last + _SPM_SPACE not in pairs:
                chunks.append("".join(chunk))
                chunk = [_SPM_SPACE, w]
            else:
                chunk += (_SPM_SPACE, w)
            last = w[-1:] or _SPM_SPACE
        chunks.append("".join(chunk))
        if len(cache) > 200_000:
            cache.clear()
        for c in chunks:
            if not c:
                continue
            ids = cache.get(c)
            if ids is None:
                ids = cache[c] = self._spm_merge(c)
            out.extend(ids)

    def _spm_merge(self, text: str) -> list[int]:
        sym = list(text)
        n = len(sym)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        vocab, scores = self._token_to_id, self.scores
        heap = []
        for i in range(n - 1):
            t = sym[i] + sym[i + 1]
            tid = vocab.get(t)
            if tid is not None:
                heap.append((-scores[tid], i, i + 1, len(t)))
        heapq.heapify(heap)
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            _, left, right, size = pop(heap)
            sl, sr = sym[left], sym[right]
            if not sl or not sr or len(sl) + len(sr) != size:
                continue  # one side was merged into something else meanwhile
            merged = sym[left] = sl + sr
            sym[right] = ""
            r2 = nxt[left] = nxt[right]
            if r2 >= 0:
                prv[r2] = left
            l0 = prv[left]
            if l0 >= 0:
                t = sym[l0] + merged
                tid = vocab.get(t)
                if tid is not None:
                    push(heap, (-scores[tid], l0, left, len(t)))
            if r2 >= 0:
                t = merged + sym[r2]
                tid = vocab.get(t)
                if tid is not None:
                    push(heap, (-scores[tid], left, r2, len(t)))
        ids = []
        i = 0
        while i != -1:
            s = sym[i]
            tid = vocab.get(s)
            if tid is not None:
                ids.append(tid)
            else:  # a character outside the vocabulary: its UTF-8 bytes as byte tokens
                for b in s.encode("utf-8"):
                    bid = self._byte_ids[b]
                    if bid is not None:
                        ids.append(bid)
            i = nxt[i]
        return ids

    # --- decoding -----------------------------------------------------------------------------------

    def _piece_table(self) -> list[bytes]:
        if self._pieces is None:
            pieces = []
            if self.model == "gpt2":
                byte_of = {c: b for b, c in enumerate(_gpt2_byte_chars())}
                for t, a in zip(self.tokens, self._attrs):
                    if a == NORMAL:
                        pieces.append(b"".join(bytes((byte_of[c],)) if c in byte_of else c.encode("utf-8")
                                               for c in t))
                    elif a in (CONTROL, UNKNOWN, USER_DEFINED):
                        pieces.append(t.encode("utf-8"))
                    else:
                        pieces.append(b"")
            else:  # SentencePiece and SentencePiece-style BPE
                for t, a in zip(self.tokens, self._attrs):
                    if a == NORMAL:
                        pieces.append(t.replace(_SPM_SPACE, " ").encode("utf-8"))
                    elif a == BYTE:
                        m = _BYTE_TOKEN.fullmatch(t)
                        pieces.append(bytes((int(m.group(1), 16),)) if m else b"")
                    elif a in (CONTROL, UNKNOWN, USER_DEFINED):
                        pieces.append(t.encode("utf-8"))
                    else:
                        pieces.append(b"")
            self._pieces = pieces
        return self._pieces

    def _check_ids(self, ids) -> None:
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise _fail(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")

    def token_to_piece(self, id: int, special: bool = True, lstrip: bool = False) -> bytes:
        """The bytes one token stands for (byte-level tokens can be part of a UTF-8 character).

        special=False renders control/unknown tokens as b"" (llama.cpp's default for output).
        lstrip=True drops one leading space: pass it for the first token of a SentencePiece
        (add_space_prefix) output, as decode() does, so that streamed pieces join to decode()'s text.
        """
        self._check_ids([id])
        if not special and self._attrs[id] in (CONTROL, UNKNOWN):
            return b""
        piece = self._piece_table()[id]
        if lstrip and piece[:1] == b" ":
            piece = piece[1:]
        return piece

    def decode(self, ids: list[int], special: bool = True) -> str:
        """Text of the ids (invalid UTF-8 becomes U+FFFD). For SentencePiece vocabularies with
        add_space_prefix, the space that encode() put in front of the text is dropped again."""
        ids = list(ids)
        self._check_ids(ids)
        table = self._piece_table()
        if special:
            pieces = [table[i] for i in ids]
        else:
            attrs = self._attrs
            pieces = [b"" if attrs[i] in (CONTROL, UNKNOWN) else table[i] for i in ids]
        if pieces and self.model == "llama" and self.add_space_prefix and pieces[0][:1] == b" ":
            pieces[0] = pieces[0][1:]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def is_eog(self, id: int) -> bool:
        return id in self.eot_ids

    @property
    def eog_ids(self) -> frozenset[int]:
        return self.eot_ids

    # --- chat ---------------------------------------------------------------------------------------

    def _token_text(self, i: int | None) -> str:
        return self.tokens[i] if i is not None else ""

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            strip_bos: bool | None = None, **extra) -> str:
        """The prompt text for `messages` ([{"role": ..., "content": ...}]), rendered with the model's
        tokenizer.chat_template (jinja2, as HF transformers renders it: same globals, filters and
        variables, so extra template variables such as enable_thinking=False pass through `extra`),
        or ChatML when it has none. Encode the result with special=True.

        strip_bos: drop a leading BOS text the template wrote itself (Gemma, Llama 3, Phi-3 templates
        do); by default when the tokenizer adds BOS on encode(add_bos=True), as llama.cpp does, so that
        the prompt starts with one BOS token, not two. Pass False for the template's exact text.
        """
        template = self.chat_template if isinstance(self.chat_template, str) and self.chat_template else None
        if template is None:  # ChatML, the format of the fallback llama.cpp and HF use most
            parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
            if add_generation_prompt:
                parts.append("<|im_start|>assistant\n")
            return "".join(parts)
        try:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise _fail("rendering the model's chat template needs jinja2; run `pip install jinja2`") from None

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        def strftime_now(fmt):
            import datetime

            return datetime.datetime.now().strftime(fmt)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = strftime_now
        bos = self._token_text(self.bos_id)
        # the variables transformers' apply_chat_template passes: tools/documents (None when absent)
        # and the special tokens it knows
        context = {"messages": messages, "tools": None, "documents": None,
                   "add_generation_prompt": add_generation_prompt, "bos_token": bos,
                   "eos_token": self._token_text(self.eos_id)}
        for name, i in (("unk_token", self.unk_id), ("pad_token", self.pad_id)):
            if i is not None:
                context[name] = self.tokens[i]
        context.update(extra)
        try:
            text = env.from_string(template).render(**context)
        except (jinja2.exceptions.TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
            raise _fail(f"the model's chat template failed: {type(e).__name__}: {e}") from None
        if (self.add_bos if strip_bos is None else strip_bos) and bos and text.startswith(bos):
            text = text[len(bos):]
        return text
