"""formats/tokenizer.py on the real vocabularies of the families quantconv converts (llama.cpp's
models/ggml-vocab-*.gguf): Llama 3 (llama-bpe), Qwen2/Qwen3 (qwen2), Phi-3 (phi-3), Gemma 4 (gemma-4,
262k entries), Gemma 2/3's SentencePiece form of that vocabulary, Phi-4-mini's gpt-4o pre-tokenizer,
plus llama-spm and gpt-2. Ids must equal stock llama.cpp's and HF's (transformers builds a tokenizer
from a GGUF's metadata) on the whole WikiText-2 test text, and llama.cpp's own .inp/.out pairs; chat
templates of the families must render as transformers renders them."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.peers import vocab_file
from tests.shared_data import data_file
from tests.test_tokenizer import VARIED, _fuzz_texts, _llama_cpp, _write_vocab_gguf

from quantconv.errors import QuantconvError
from quantconv.formats.gguf_reader import GGUFFile
from quantconv.formats.tokenizer import Tokenizer

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"

REAL = ["llama-bpe", "qwen2", "phi-3", "gemma-4", "llama-spm", "gpt-2"]
# derived vocabularies (built below): Gemma 2/3's SentencePiece form, and Phi-4-mini's pre-tokenizer
DERIVED = ["gemma3-spm", "gpt-4o"]


def _gemma3_spm(path: Path) -> Path:
    """Gemma 4's 262k vocabulary written the way llama.cpp's converter writes Gemma 2/3's (SentencePiece:
    tokenizer.ggml.model "llama", add_space_prefix false, bos 2, eos 1, unk 3, pad 0). The Gemma 4 file
    has flat scores, so each token scores -id: the order transformers' Gemma GGUF builder merges in."""
    from gguf import GGUFValueType as VT

    kv = GGUFFile(vocab_file("gemma-4")).kv
    types = kv["tokenizer.ggml.token_type"]
    scores = [-float(i) if t == 1 else 0.0 for i, t in enumerate(types)]
    over = {"general.architecture": ("gemma3", VT.STRING), "tokenizer.ggml.model": ("llama", VT.STRING),
            "tokenizer.ggml.pre": ("default", VT.STRING),
            "tokenizer.ggml.tokens": (kv["tokenizer.ggml.tokens"], VT.STRING),
            "tokenizer.ggml.scores": (scores, VT.FLOAT32), "tokenizer.ggml.token_type": (types, VT.INT32),
            "tokenizer.ggml.bos_token_id": (2, VT.UINT32), "tokenizer.ggml.eos_token_id": (1, VT.UINT32),
            "tokenizer.ggml.unknown_token_id": (3, VT.UINT32), "tokenizer.ggml.padding_token_id": (0, VT.UINT32),
            "tokenizer.ggml.add_bos_token": (True, VT.BOOL), "tokenizer.ggml.add_space_prefix": (False, VT.BOOL)}
    return _write_vocab_gguf(path, GGUFFile(vocab_file("llama-spm")), over, drop_tokenizer=True)


@pytest.fixture(scope="module")
def vocab_paths(tmp_path_factory):
    from gguf import GGUFValueType as VT

    root = tmp_path_factory.mktemp("vocab")
    paths = {name: vocab_file(name) for name in REAL}
    paths["gemma3-spm"] = _gemma3_spm(root / "gemma3-spm.gguf")
    paths["gpt-4o"] = _write_vocab_gguf(root / "gpt-4o.gguf", GGUFFile(vocab_file("llama-bpe")),
                                        {"tokenizer.ggml.pre": ("gpt-4o", VT.STRING)})
    return paths


_TOKENIZERS: dict[str, Tokenizer] = {}


def _tok(vocab_paths, name: str) -> Tokenizer:
    if name not in _TOKENIZERS:  # a 262k vocabulary takes seconds to load; build each once
        _TOKENIZERS[name] = Tokenizer.from_gguf(vocab_paths[name])
    return _TOKENIZERS[name]


def _wikitext() -> str:
    return data_file("wikitext-2-raw-test.txt").read_text(encoding="utf-8")


def _first_diff(a: list[int], b: list[int]) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"lengths {len(a)} vs {len(b)}, first difference at token {i}: {a[i:i + 5]} vs {b[i:i + 5]}"


# --- llama.cpp's own test pairs ---------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL)
def test_llama_cpp_vocab_test_pairs(vocab_paths, name):
    path = vocab_paths[name]
    inputs = Path(f"{path}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = Path(f"{path}.out").read_text(encoding="utf-8").split("\n")
    tok = _tok(vocab_paths, name)
    assert len(inputs) > 30
    for text, ids in zip(inputs, expected):
        # llama.cpp's test-tokenizer-0 tokenizes without BOS, parsing special tokens
        assert tok.encode(text, add_bos=False, special=True) == [int(x) for x in ids.split()], repr(text)


# --- the whole WikiText-2 test text ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", REAL + DERIVED)
def test_wikitext_equals_llama_cpp_and_is_fast(vocab_paths, name):
    if _llama_cpp() is None:
        pytest.skip("llama-cpp-python is not installed")
    text = _wikitext()
    tok = Tokenizer.from_gguf(vocab_paths[name])  # fresh: no cached words
    t0 = time.perf_counter()
    ids = tok.encode(text)
    seconds = time.perf_counter() - t0
    llm = _llama_cpp().Llama(model_path=str(vocab_paths[name]), vocab_only=True, verbose=False)
    ref = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    assert ids == ref, _first_diff(ids, ref)
    assert seconds < 5.0, f"encoding {len(text)} characters took {seconds:.2f} s"
    assert tok.decode(ids) == text


def _hf_tokenizer(path: Path):
    """transformers' tokenizer for a GGUF's metadata (what AutoTokenizer.from_pretrained(..., gguf_file=)
    builds; called directly because AutoTokenizer also parses the model config, which fails for the
    Gemma 4 file's per-layer head counts)."""
    pytest.importorskip("transformers")
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    arch, tokenizer_dict, _ = get_gguf_tokenizer(str(path))
    return convert_gguf_tokenizer(arch, tokenizer_dict)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-bpe", "qwen2", "phi-3", "gemma-4"] + DERIVED)
def test_wikitext_equals_hf(vocab_paths, name):
    text = _wikitext()
    hf = _hf_tokenizer(vocab_paths[name])
    ids = _tok(vocab_paths, name).encode(text)
    ref = hf.encode(text, add_special_tokens=False).ids
    assert ids == ref, _first_diff(ids, ref)


# --- varied and random text against llama.cpp --------------------------------------------------------


@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", ["gemma-4", "gemma3-spm", "gpt-4o", "phi-3", "qwen2", "llama-bpe"])
def test_varied_text_equals_llama_cpp(vocab_paths, name):
    if _llama_cpp() is None:
        pytest.skip("llama-cpp-python is not installed")
    llm = _llama_cpp().Llama(model_path=str(vocab_paths[name]), vocab_only=True, verbose=False)
    tok = _tok(vocab_paths, name)
    specials = ["<start_of_turn>", "<end_of_turn>", "<bos>", "<|im_start|>", "<|endoftext|>", "<|user|>",
                "<|end|>", "<|begin_of_text|>", "<|eot_id|>", "<|turn>", "<|\"|>", "▁", "<0x41>"]
    texts = VARIED + [
        "ÄPFEL Äpfel äPFEL HELLOworld helloWORLD I'M O'NEIL's ΑΒΓ αβγ ǅungla ǲ", "a\u0301b\u0301 ड़ नमस्ते",
        "x/\n/\ny 1234567 ½ ٣٤٥ \u00a0\u2028\u0085 end", "\n\n\n\n", " \n \n\n", "\t\t\n", "🦙🦙 🦙",
    ] + _fuzz_texts(400, seed=len(name), extra=specials)
    bad = []
    for t in texts:
        for special in (False, True):
            for add_bos in (False, True):
                ours = tok.encode(t, add_bos=add_bos, special=special)
                theirs = llm.tokenize(t.encode("utf-8"), add_bos=add_bos, special=special)
                if ours != theirs:
                    bad.append((t, special, add_bos, ours, theirs))
    assert not bad, f"{len(bad)} of {4 * len(texts)} differ, first: {bad[0]}"


@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", ["gemma-4", "gemma3-spm", "phi-3", "qwen2", "llama-bpe"])
def test_end_of_generation_ids_equal_llama_cpp(vocab_paths, name):
    llama_cpp = _llama_cpp()
    if llama_cpp is None:
        pytest.skip("llama-cpp-python is not installed")
    llm = llama_cpp.Llama(model_path=str(vocab_paths[name]), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    tok = _tok(vocab_paths, name)
    assert {i for i in range(tok.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, i)} == set(tok.eog_ids)
    assert (tok.bos_id, tok.add_bos) == (llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_get_add_bos(vocab))


def test_gemma_round_trip_and_byte_fallback(vocab_paths):
    for name in ("gemma-4", "gemma3-spm"):
        tok = _tok(vocab_paths, name)
        assert tok.add_space_prefix is False
        for t in VARIED + _fuzz_texts(200, seed=9, extra=["🦙", "\U0001F9D1\u200d\U0001F680"]):
            ids = tok.encode(t)
            assert tok.decode(ids) == t, (name, t)
            assert b"".join(tok.token_to_piece(i) for i in ids).decode("utf-8") == t
        ids = tok.encode("🦙")  # not in the vocabulary: its four UTF-8 bytes as <0xXX> tokens
        assert [tok.tokens[i] for i in ids] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]


# --- chat templates ------------------------------------------------------------------------------------


CHATS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
     {"role": "user", "content": "and 3+3?"}],
    [{"role": "system", "content": "Use tools.", "tools": '[{"name": "add"}]'}, {"role": "user", "content": "1+1"}],
]


# template file -> the vocabulary of its family
TEMPLATE_VOCAB = {"google-gemma-2-2b-it": "gemma3-spm", "google-gemma-3-4b-it": "gemma3-spm",
                  "Qwen-Qwen3-0.6B": "qwen2", "meta-llama-Llama-3.2-3B-Instruct": "llama-bpe",
                  "microsoft-Phi-3.5-mini-instruct": "phi-3",
                  "microsoft-Phi-4-mini-instruct": "gpt-4o"}  # (Phi-4-mini's o200k vocabulary is not at hand)


@pytest.mark.parametrize("template_name", sorted(TEMPLATE_VOCAB) + ["file:gemma-4", "file:qwen2", "file:phi-3"])
def test_chat_templates_render_as_transformers(vocab_paths, template_name):
    """Each template file, and the templates inside the vocabulary files, with that family's vocabulary."""
    pytest.importorskip("transformers")
    from transformers.utils.chat_template_utils import render_jinja_template

    if template_name.startswith("file:"):
        kv = GGUFFile(vocab_paths[template_name[5:]]).kv
        template = kv["tokenizer.chat_template"]
    else:
        template = (TEMPLATES / f"{template_name}.jinja").read_text(encoding="utf-8")
        kv = {**GGUFFile(vocab_paths[TEMPLATE_VOCAB[template_name]]).kv, "tokenizer.chat_template": template}
    tok = Tokenizer.from_gguf_metadata(kv)
    bos, eos = tok.tokens[tok.bos_id], tok.tokens[tok.eos_id]
    rendered = 0
    for chat in CHATS:
        for gen in (True, False):
            for extra in ({}, {"enable_thinking": False}):
                try:
                    theirs = render_jinja_template([chat], chat_template=template, add_generation_prompt=gen,
                                                   bos_token=bos, eos_token=eos, **extra)[0][0]
                except Exception as e:  # the template refuses this chat (Gemma 2: no system role)
                    with pytest.raises(QuantconvError, match=re.escape(str(e))):
                        tok.apply_chat_template(chat, add_generation_prompt=gen, strip_bos=False, **extra)
                    continue
                assert tok.apply_chat_template(chat, add_generation_prompt=gen, strip_bos=False, **extra) == theirs
                rendered += 1
                # as llama.cpp: a template-written BOS is dropped when encoding adds one, so one BOS leads
                prompt = tok.apply_chat_template(chat, add_generation_prompt=gen, **extra)
                ids = tok.encode(prompt, add_bos=tok.add_bos, special=True)
                if tok.add_bos:
                    assert ids[0] == tok.bos_id and ids[1] != tok.bos_id
                else:
                    assert prompt == theirs
    assert rendered >= 6


def test_chat_prompt_tokens(vocab_paths):
    """The rendered prompts hold each family's turn markers as single special tokens."""
    cases = [(None, "gemma-4", ["<|turn>", "<turn|>"]),  # the template inside the Gemma 4 file
             ("Qwen-Qwen3-0.6B", "qwen2", ["<|im_start|>", "<|im_end|>"]),
             ("meta-llama-Llama-3.2-3B-Instruct", "llama-bpe", ["<|start_header_id|>", "<|eot_id|>"]),
             ("microsoft-Phi-3.5-mini-instruct", "phi-3", ["<|user|>", "<|end|>", "<|assistant|>"])]
    for template_name, vocab, markers in cases:
        kv = dict(GGUFFile(vocab_paths[vocab]).kv)
        if template_name is not None:
            kv["tokenizer.chat_template"] = (TEMPLATES / f"{template_name}.jinja").read_text(encoding="utf-8")
        tok = Tokenizer.from_gguf_metadata(kv)
        prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
        ids = tok.encode(prompt, add_bos=tok.add_bos, special=True)
        for m in markers:
            assert tok._token_to_id[m] in ids, (template_name, m)
        assert not any(m in tok.decode(ids, special=False) for m in markers)
    # Qwen3 without thinking: the empty think block that the template writes
    qwen = Tokenizer.from_gguf_metadata({**GGUFFile(vocab_paths["qwen2"]).kv, "tokenizer.chat_template":
                                         (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")})
    assert qwen.apply_chat_template([{"role": "user", "content": "hi"}], enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_gemma_2_system_role_is_one_clear_error(vocab_paths):
    tok = Tokenizer.from_gguf_metadata({**GGUFFile(vocab_paths["gemma3-spm"]).kv, "tokenizer.chat_template":
                                        (TEMPLATES / "google-gemma-2-2b-it.jinja").read_text(encoding="utf-8")})
    with pytest.raises(QuantconvError, match="System role not supported") as e:
        tok.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])
    assert "\n" not in str(e.value)


# --- the converter (convert/tokenizer_meta.py) against llama.cpp's convert_hf_to_gguf.py ------------------

# (tokenizers' Split regex, llama.cpp's pre-tokenizer name) of the byte-level BPE families
_SPLITS = {
    "qwen3": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+", "qwen2"),
    "llama3": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+", "llama-bpe"),
    "phi4-mini": (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
                  r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+", "gpt-4o"),
}
_CORPUS = ["Hello world, the quick brown fox jumps over the lazy dog. Don't stop: 12345 and 678!",
           "Ünïcödé naïve café — “quotes” 日本語 text\n\n  indented\tcode(x) == y / z"]


def _tiny_bpe_model(folder: Path, family: str) -> Path:
    """A tiny HF tokenizer of a byte-level BPE family (its split regex, special tokens, config) and a
    config.json naming the family's HF architecture: what both converters read."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    specials = {"qwen3": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>"],
                "phi4-mini": ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]}[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_SPLITS[family][0]), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 20, trainer)
    tok.add_tokens(["<think>", "</think>"])  # user-defined (not special) added tokens
    if family == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[
            ("<|begin_of_text|>", bos)])
    tok.save(str(folder / "tokenizer.json"))
    n = tok.get_vocab_size()
    tc = {"qwen3": {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
                    "pad_token": "<|endoftext|>", "add_bos_token": False},
          "llama3": {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                     "eos_token": "<|eot_id|>"},
          "phi4-mini": {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                        "pad_token": "<|endoftext|>", "add_bos_token": False, "add_eos_token": False}}[family]
    tc["chat_template"] = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    arch = {"qwen3": "Qwen3ForCausalLM", "llama3": "LlamaForCausalLM", "phi4-mini": "Phi3ForCausalLM"}[family]
    cfg = {"architectures": [arch], "model_type": {"qwen3": "qwen3", "llama3": "llama", "phi4-mini": "phi3"}[family],
           "vocab_size": n + 8, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
           "rope_theta": 10000.0, "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": True,
           "_name_or_path": f"tiny-{family}"}
    if family == "phi4-mini":
        cfg["rope_scaling"] = None
        cfg["original_max_position_embeddings"] = 256
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


# llama.cpp's converter names a BPE pre-tokenizer by hashing a real vocabulary's output, which a tiny
# one cannot reproduce: that one lookup is replaced by the family's name; the rest is its own code.
_RUN_CONVERTER = """
import importlib.machinery, runpy, sys, types
src, pre = sys.argv[1], sys.argv[2]
sys.argv = [src + "/convert_hf_to_gguf.py"] + sys.argv[3:]
sys.path[:0] = [src, src + "/gguf-py"]
try:
    import sentencepiece  # noqa: F401
except ImportError:  # BPE models only reach its import (then find no tokenizer.model)
    stub = types.ModuleType("sentencepiece")
    stub.SentencePieceProcessor = None
    stub.__spec__ = importlib.machinery.ModuleSpec("sentencepiece", None)
    sys.modules["sentencepiece"] = stub
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""


@pytest.mark.parametrize("family", sorted(_SPLITS))
def test_converter_metadata_equals_llama_cpp(tmp_path, family):
    import json
    import subprocess
    import sys

    pytest.importorskip("tokenizers")
    from tests.peers import llama_cpp_src

    from quantconv.convert.tokenizer_meta import tokenizer_metadata

    src = llama_cpp_src()
    folder = _tiny_bpe_model(tmp_path / family, family)
    out = tmp_path / "llama-cpp.gguf"
    script = tmp_path / "run_converter.py"
    script.write_text(_RUN_CONVERTER)
    r = subprocess.run([sys.executable, str(script), str(src), _SPLITS[family][1], str(folder), "--vocab-only",
                        "--outfile", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = {k: v for k, v in GGUFFile(out).kv.items() if k.startswith("tokenizer.")}
    ours = {k: v for k, v in tokenizer_metadata(folder, json.loads((folder / "config.json").read_text())).items()
            if k != "_types"}
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert ours[k] == theirs[k], k
    # and the written vocabulary tokenizes as the HF tokenizer it came from
    import tokenizers

    hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok = Tokenizer.from_gguf_metadata(ours)
    for t in _CORPUS + VARIED[:16] + ["<think>x</think> <|im_end|>"]:
        assert tok.encode(t, special=True) == hf.encode(t, add_special_tokens=False).ids, repr(t)


# --- exports of the tiny new-family models ------------------------------------------------------------


@pytest.mark.llama_cpp
@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3", "phi3"])
def test_tiny_family_exports_tokenize_as_llama_cpp_and_hf(tmp_path, family):
    """The tokenizer an F32 export of each tiny family carries: our ids equal stock llama.cpp's on that
    file (which sees the family's architecture and name, e.g. Phi-3's whitespace rule) and HF's."""
    import json
    import warnings

    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if _llama_cpp() is None:
        pytest.skip("llama-cpp-python is not installed")
    import tokenizers

    from quantconv.convert.export import export
    from quantconv.convert.sources import open_source
    from tests.test_tokenizer import TINY_TEXTS
    from tests.tiny_models import make_tiny_hf_model

    folder = make_tiny_hf_model(tmp_path, arch=family)
    gguf = tmp_path / f"{family}.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(open_source(str(folder)), gguf, "f32")
    tok = Tokenizer.from_gguf(gguf)
    llm = _llama_cpp().Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if family == "phi3":  # Phi-3's real tokenizer.json drops the whitespace after these (llama.cpp: by name)
        for added in tj["added_tokens"]:
            added["rstrip"] = added["content"] not in ("<unk>", "<s>", "<|endoftext|>")
    hf = tokenizers.Tokenizer.from_str(json.dumps(tj))
    assert bool(tok._rstrip) == (family == "phi3")
    texts = TINY_TEXTS + ["<|end|>hello<|endoftext|> world", "<|end|> \n x</s>  y", "<|im_start|>user\nhi<|im_end|>"]
    for t in texts + _fuzz_texts(200, seed=3, extra=["<s>", "</s>", "<|end|>", "<|im_end|>"]):
        for special in (False, True):
            for add_bos in (False, True):
                assert tok.encode(t, add_bos=add_bos, special=special) == \
                    llm.tokenize(t.encode("utf-8"), add_bos=add_bos, special=special), (t, special, add_bos)
    for t in texts + _fuzz_texts(200, seed=4, extra=["<s>", "</s>", "<|end|>", "<|im_end|>"]):
        assert tok.encode(t, special=True) == hf.encode(t, add_special_tokens=False).ids, repr(t)


def _sentencepiece_model(pieces: list[tuple[str, float, int]], add_dummy_prefix: bool) -> bytes:
    """A sentencepiece ModelProto: pieces (field 1: piece 1, score 2, type 3) and normalizer_spec
    (field 3: name 1, add_dummy_prefix 3), built in one pass (262k pieces)."""
    import struct

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def field(num: int, wire: int, payload: bytes) -> bytes:
        return varint(num << 3 | wire) + (varint(len(payload)) + payload if wire == 2 else payload)

    parts = []
    for text, score, typ in pieces:
        body = field(1, 2, text.encode("utf-8")) + field(2, 5, struct.pack("<f", score))
        parts.append(field(1, 2, body + (field(3, 0, varint(typ)) if typ != 1 else b"")))
    parts.append(field(3, 2, field(1, 2, b"identity") + field(3, 0, varint(int(add_dummy_prefix)))))
    return b"".join(parts)


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_gemma_sentencepiece_model_converts_at_full_size(tmp_path):
    """convert/tokenizer_meta.py on a 262k-piece tokenizer.model (Gemma 2/3's format; the pieces of the
    Gemma 4 vocabulary, hand-encoded): fast, add_space_prefix from the model (false), and the written
    vocabulary tokenizes WikiText-2 as stock llama.cpp does."""
    import json

    from gguf import GGUFValueType as VT

    from quantconv.convert.tokenizer_meta import tokenizer_metadata

    if _llama_cpp() is None:
        pytest.skip("llama-cpp-python is not installed")
    kv = GGUFFile(vocab_file("gemma-4")).kv
    pieces = [(t, -float(i) if ty == 1 else 0.0, ty)
              for i, (t, ty) in enumerate(zip(kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]))]
    pieces[3] = ("<unk>", 0.0, 2)  # sentencepiece's UNKNOWN piece
    folder = tmp_path / "gemma"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(_sentencepiece_model(pieces, add_dummy_prefix=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True}))
    t0 = time.perf_counter()
    meta = tokenizer_metadata(folder, {"vocab_size": len(pieces), "model_type": "gemma3_text"})
    tok = Tokenizer.from_gguf_metadata(meta)
    text = _wikitext()
    ids = tok.encode(text)
    seconds = time.perf_counter() - t0
    assert seconds < 10.0, f"converting and encoding took {seconds:.1f} s"
    assert meta["tokenizer.ggml.add_space_prefix"] is False and meta["tokenizer.ggml.model"] == "llama"
    assert [meta[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "unknown", "padding")] == [2, 1, 3, 0]
    over = {"general.architecture": ("gemma3", VT.STRING), **{k: (v, meta["_types"][k]) for k, v in meta.items()
                                                              if k != "_types"}}
    path = _write_vocab_gguf(tmp_path / "gemma.gguf", GGUFFile(vocab_file("llama-spm")), over, drop_tokenizer=True)
    llm = _llama_cpp().Llama(model_path=str(path), vocab_only=True, verbose=False)
    ref = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    assert ids == ref, _first_diff(ids, ref)
    assert tok.decode(ids) == text
