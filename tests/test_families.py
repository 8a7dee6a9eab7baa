"""The new model families against llama.cpp, on tiny random models of each (tests/tiny_models.py):

- llama.cpp's own HF -> GGUF converter writes the same tensors (names, shapes, values: norms with Gemma's
  +1 already in, Phi-3's fused tensors fused) and the same architecture hyper-parameters as our F32 export;
- stock llama.cpp loads our F16 and Q8_0 exports and agrees with our engine: top-1 >= 99% and perplexity
  within 0.5% on random tokens, over a prompt longer than the sliding window.

The converter runs in a subprocess (its gguf-py must not replace the installed one here) with its tokenizer
step switched off: the tokenizer metadata is compared by the tokenizer tests, and llama.cpp's converter
needs sentencepiece (not a dependency) for Gemma's and a known pre-tokenizer hash for BPE vocabularies.
"""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest

from quantconv.convert.export import export
from quantconv.convert.sources import open_source
from quantconv.formats.gguf_reader import GGUFFile
from tests.peers import llama_cpp_src
from tests.shared_data import require
from tests.tiny_models import (FAMILY_ARCH, NEW_FAMILIES, TOKENIZER_VOCAB, VOCAB_SIZE, make_tiny_hf_model,
                               train_tiny_model)

pytest.importorskip("torch")

# every new family, and Gemma 3 4B's vision-language checkpoint layout (its decoder is converted)
PARITY = (*NEW_FAMILIES, "gemma3-vlm")

# llama.cpp's converter, with set_vocab of the chosen model class a no-op (see the module docstring)
_CONVERT = """
import sys
src = sys.argv.pop(1)
sys.path[:0] = [src + "/gguf-py", src]
import convert_hf_to_gguf as conv
_get = conv.get_model_class
def get_model_class(*args, **kwargs):
    cls = _get(*args, **kwargs)
    cls.set_vocab = lambda self: None
    return cls
conv.get_model_class = get_model_class
conv.main()
"""

# {arch}.* keys written on one side only, each with the value the other side's loader assumes without it:
# llama.cpp then runs both files alike. `None`: the key is not a model hyper-parameter.
OURS_ONLY = {
    "vocab_size": None,  # written by llama.cpp's tokenizer step, which is off here
    "rope.dimension_count": "head",  # we always write it; llama.cpp's default is the head size
    "rope.freq_base": 10000.0,  # llama.cpp's Gemma 2 converter leaves it out; its loader assumes 10000
}
THEIRS_ONLY = {
    # llama.cpp's converter writes these whenever config.json has head_dim; we only when head_dim differs
    # from hidden / heads, which is what llama.cpp's loader assumes without them
    "attention.key_length": "embd/head", "attention.value_length": "embd/head",
}


def _convert_with_llama_cpp(hf_dir, out) -> None:
    src = llama_cpp_src()
    proc = subprocess.run([sys.executable, "-c", _CONVERT, str(src), str(hf_dir), "--outfile", str(out),
                           "--outtype", "f32"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"llama.cpp's converter failed on {hf_dir.name}:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """family -> (our F32 export, llama.cpp's F32 conversion), made on first use."""
    root = tmp_path_factory.mktemp("families")
    cache = {}

    def get(family):
        if family not in cache:
            hf = make_tiny_hf_model(root / "hf", family)
            ours, theirs = root / f"{family}-ours.gguf", root / f"{family}-llama-cpp.gguf"
            export(open_source(str(hf)), ours, "f32")
            _convert_with_llama_cpp(hf, theirs)
            cache[family] = (GGUFFile(ours), GGUFFile(theirs))
        return cache[family]
    return get


@pytest.mark.parametrize("family", PARITY)
def test_tensors_match_llama_cpp_converter(pairs, family):
    ours, theirs = pairs(family)
    assert sorted(t.name for t in ours.tensors) == sorted(t.name for t in theirs.tensors)
    for t in theirs.tensors:
        a, b = ours.dequantize(t.name), theirs.dequantize(t.name)
        assert a.shape == b.shape, t.name
        # both F32 from the same float32 checkpoint: bit-exact, norms with Gemma's +1 included
        np.testing.assert_array_equal(a, b, err_msg=f"{family}: {t.name}")


@pytest.mark.parametrize("family", PARITY)
def test_hparams_match_llama_cpp_converter(pairs, family):
    ours, theirs = pairs(family)
    arch = theirs.kv["general.architecture"]
    assert ours.kv["general.architecture"] == arch
    mine = {k[len(arch) + 1:]: v for k, v in ours.kv.items() if k.startswith(arch + ".")}
    ref = {k[len(arch) + 1:]: v for k, v in theirs.kv.items() if k.startswith(arch + ".")}
    n_embd, n_head = ref["embedding_length"], ref["attention.head_count"]
    implied = {"head": ref.get("attention.key_length", n_embd // n_head), "embd/head": n_embd // n_head}
    for key in sorted(set(mine) | set(ref)):
        if key in mine and key in ref:
            assert mine[key] == pytest.approx(ref[key], rel=1e-7), f"{family}: {arch}.{key}"
        elif key in mine:
            assert key in OURS_ONLY, f"{family}: we write {arch}.{key} = {mine[key]}, llama.cpp's converter doesn't"
            want = implied.get(OURS_ONLY[key], OURS_ONLY[key])
            assert want is None or mine[key] == want, f"{family}: {arch}.{key} = {mine[key]}, llama.cpp assumes {want}"
        else:
            assert key in THEIRS_ONLY, f"{family}: llama.cpp writes {arch}.{key} = {ref[key]}, we don't"
            assert ref[key] == implied[THEIRS_ONLY[key]], f"{family}: {arch}.{key}"


def test_every_family_is_compared():
    """The parity tests cover every architecture models.yaml adds beyond llama / mistral / qwen2."""
    from quantconv.formats.models import all_archs

    assert {FAMILY_ARCH[f] for f in PARITY} == set(all_archs()) - {"mistral", "qwen2"}


# --- stock llama.cpp runs our exports as our engine does ------------------------------------------------

N_TOKENS = 200  # > the sliding window (8): local and global layers differ
# phi3-longrope: a context above the original 256 runs the long factors in both, below it the short ones
RUNS = [(f, d, 256) for f in PARITY for d in ("f16", "q8_0")] + [("phi3-longrope", "f16", 512)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """family -> {dtype: export of the family's briefly trained tiny model}, made on first use."""
    root = tmp_path_factory.mktemp("trained")
    cache = {}

    def get(family):
        if family not in cache:
            hf = train_tiny_model(make_tiny_hf_model(root / "hf", family))
            source = open_source(str(hf))
            cache[family] = {}
            for dtype in ("f16", "q8_0"):
                cache[family][dtype] = root / f"{family}-{dtype}.gguf"
                export(source, cache[family][dtype], dtype)
        return cache[family]
    return get


def _llama_cpp_logits(path, ids, ctx):
    from quantconv.runtime import peer_llama_cpp

    model = peer_llama_cpp.load(str(path), ctx=ctx, logits_all=True)
    try:
        return peer_llama_cpp.Scorer(model).eval(ids)
    finally:
        model.close()


def _engine_logits(path, ids, ctx):
    from quantconv.runtime.engine import Engine

    with Engine(path, n_ctx=ctx, n_threads=2) as engine:
        return engine.eval(np.asarray(ids, dtype=np.int32), all_logits=True)


def _ppl(logits, ids) -> float:
    z = logits[:-1].astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return math.exp(-float(np.mean(logp[np.arange(len(ids) - 1), ids[1:]])))


@pytest.mark.llama_cpp
@pytest.mark.parametrize("family,dtype,ctx", RUNS)
def test_stock_llama_cpp_agrees_with_our_engine(trained, family, dtype, ctx):
    require(importlib.util.find_spec("llama_cpp") is not None,
            "llama-cpp-python is not installed (bash scripts/install-peers.sh)")
    path = trained(family)[dtype]
    ids = np.random.default_rng(7).integers(3, TOKENIZER_VOCAB, size=N_TOKENS).astype(np.int32)
    theirs, ours = _llama_cpp_logits(path, ids, ctx), _engine_logits(path, ids, ctx)
    assert theirs.shape == ours.shape == (N_TOKENS, VOCAB_SIZE)
    agree = float(np.mean(theirs.argmax(-1) == ours.argmax(-1)))
    p_theirs, p_ours = _ppl(theirs, ids), _ppl(ours, ids)
    assert agree >= 0.99, f"{family} {dtype}: top-1 agreement {agree:.3f}"
    assert abs(p_ours / p_theirs - 1) < 0.005, f"{family} {dtype}: perplexity ours {p_ours:.3f}, llama.cpp {p_theirs:.3f}"


@pytest.mark.parametrize("family", PARITY)
def test_llama_cpp_conversion_is_a_source(pairs, family, tmp_path):
    """A GGUF that llama.cpp's converter wrote reads back as the checkpoint (HF layout, Gemma's norms
    without the +1) with a config that exports to the same hyper-parameters as the HF folder does."""
    ours, theirs = pairs(family)
    hf = open_source(str(make_tiny_hf_model(tmp_path, family)))
    g = open_source(theirs.path)
    assert g.arch is hf.arch and g.tensor_names() == hf.tensor_names()
    for name in hf.tensor_names():
        np.testing.assert_allclose(g.load(name), hf.load(name), rtol=0, atol=1e-7, err_msg=name)
    out = tmp_path / "again.gguf"
    export(g, out, "f32")
    arch = ours.kv["general.architecture"]
    with GGUFFile(out) as again:
        assert ({k: v for k, v in again.kv.items() if k.startswith(arch + ".")}
                == {k: v for k, v in ours.kv.items() if k.startswith(arch + ".")})
        for t in ours.tensors:
            assert bytes(again.raw(t.name)) == bytes(ours.raw(t.name)), t.name
