"""The C++ engine (quantconv._ext.Model through runtime/engine.py): logits parity with transformers on
tiny random models, prefill/decode consistency, threads, the KV cache limits, load-time validation,
and top-1 agreement with stock llama.cpp on the reference model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.shared_data import data_file, find

from quantconv.convert.export import export
from quantconv.convert.sources import open_source
from quantconv.errors import QuantconvError
from quantconv.formats.gguf_reader import GGUFFile
from quantconv.formats.model_config import model_config
from quantconv.runtime.engine import Engine, model_tensors

from .tiny_models import VOCAB_SIZE, make_tiny_hf_model

TOL = 1e-3  # max |logit difference| versus transformers in float32
SEQ = 48
TEXT = find("wikitext-2-raw-test.txt")
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}

# Weights 5x larger than transformers' default init: attention is then far from uniform and logits are
# O(1), so a wrong RoPE, mask or head mapping moves them by much more than TOL (at the default init a
# Llama-3 RoPE scaling changes the logits by only ~5e-3).
SHARP = {"initializer_range": 0.1}
# name -> (arch, tied, config overrides)
MODELS = {
    "llama": ("llama", False, {}),
    "llama-tied": ("llama", True, {}),
    "qwen2": ("qwen2", False, {}),
    "qwen2-tied": ("qwen2", True, {}),
    "mistral": ("mistral", False, {}),
    "llama3-rope": ("llama", False, {"rope_scaling": LLAMA3_ROPE}),
    "linear-rope": ("llama", False, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "head-dim-32": ("llama", False, {"head_dim": 32}),
    "qwen2-head-dim-32": ("qwen2", True, {"head_dim": 32}),
}


def tokens(n: int = SEQ, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB_SIZE, n).astype(np.int32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (HF folder, f32 GGUF), built on first use."""
    root = tmp_path_factory.mktemp("engine")
    cache: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in cache:
            pytest.importorskip("torch")
            pytest.importorskip("transformers")
            arch, tied, overrides = MODELS[name]
            hf = make_tiny_hf_model(root / name, arch=arch, dtype="float32", tied=tied, **{**SHARP, **overrides})
            out = root / f"{name}.gguf"
            export(open_source(str(hf)), out, "f32")
            cache[name] = (hf, out)
        return cache[name]

    return get


def hf_logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)[None]).logits[0].float().numpy()


# ---- parity with transformers ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_transformers(built, name):
    folder, path = built(name)
    ids = tokens()
    ref = hf_logits(folder, ids)
    with Engine(path, n_ctx=64, n_threads=2, exact=True) as eng:
        # (a) one batched prefill
        prefill = eng.eval(ids, all_logits=True)
        assert prefill.shape == (SEQ, VOCAB_SIZE) and prefill.dtype == np.float32
        assert eng.n_past == SEQ
        # (b) token by token
        eng.reset()
        assert eng.n_past == 0
        decode = np.stack([eng.eval(ids[i:i + 1]) for i in range(SEQ)])
        # (c) a prefill, then decode
        eng.reset()
        split = 19
        mixed = np.concatenate([eng.eval(ids[:split], all_logits=True),
                                np.stack([eng.eval(ids[i:i + 1]) for i in range(split, SEQ)])])
        # the default (last token only)
        eng.reset()
        last = eng.eval(ids)
    assert np.abs(prefill - ref).max() < TOL, f"{name}: prefill differs from transformers by {np.abs(prefill - ref).max()}"
    assert np.abs(decode - ref).max() < TOL
    assert np.abs(mixed - ref).max() < TOL
    np.testing.assert_allclose(decode, prefill, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed, prefill, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(last, prefill[-1])


def test_rope_settings_reach_the_engine(built):
    """The RoPE variants really are different models (so the parity tests above test something)."""
    ids = tokens()
    out = {}
    for name in ("llama", "llama3-rope", "linear-rope"):
        with Engine(built(name)[1], n_ctx=64, n_threads=1) as eng:
            out[name] = eng.eval(ids, all_logits=True)
            cfg = eng.config
        if name == "linear-rope":
            assert cfg["rope_scale"] == 2.0
    assert np.abs(out["llama"] - out["llama3-rope"]).max() > 100 * TOL
    assert np.abs(out["llama"] - out["linear-rope"]).max() > 100 * TOL
    with Engine(built("qwen2")[1], n_ctx=8) as eng:
        assert eng.config["rope_style"] == "neox"
    with Engine(built("head-dim-32")[1], n_ctx=8) as eng:
        assert eng.config["head_dim"] == 32 and eng.config["n_embd"] // eng.config["n_head"] == 16


def test_threads_give_identical_logits(built):
    path = built("qwen2")[1]
    ids = tokens(40, seed=3)
    runs = []
    for n in (1, 2, 3):
        with Engine(path, n_ctx=64, n_threads=n) as eng:
            assert eng.n_threads == n
            a = eng.eval(ids, all_logits=True)
            eng.reset()
            b = np.stack([eng.eval(ids[i:i + 1]) for i in range(8)])
            runs.append((a, b))
    for a, b in runs[1:]:
        np.testing.assert_array_equal(a, runs[0][0])
        np.testing.assert_array_equal(b, runs[0][1])
    with Engine(path, n_ctx=64, n_threads=1) as eng:
        eng.set_threads(2)
        assert eng.n_threads == 2
        np.testing.assert_array_equal(eng.eval(ids, all_logits=True), runs[0][0])


def test_small_batches_and_fp16_cache(built):
    folder, path = built("llama")
    ids = tokens()
    with Engine(path, n_ctx=64, n_threads=2) as eng:
        full = eng.eval(ids, all_logits=True)
    with Engine(path, n_ctx=64, n_threads=2, n_batch=5) as eng:  # prefill in chunks of 5 tokens
        # each token's arithmetic does not depend on its batch (matmul tiles == matvecs, attention
        # blocks == one query at a time): the same logits bit for bit
        np.testing.assert_array_equal(eng.eval(ids, all_logits=True), full)
    with Engine(path, n_ctx=64, n_threads=2, kv_type="f16") as eng:
        half = eng.eval(ids, all_logits=True)
        eng.reset()
        np.testing.assert_array_equal(np.stack([eng.eval(ids[i:i + 1]) for i in range(SEQ)]), half)
    assert 0 < np.abs(half - full).max() < 1e-2
    assert np.abs(half - hf_logits(folder, ids)).max() < 1e-2


def hf_logits_with_gguf_weights(folder: Path, gguf_path: Path, ids: np.ndarray) -> np.ndarray:
    """transformers' forward with every weight replaced by the GGUF file's dequantized tensor."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from quantconv.formats.models import arch_for_config

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    config = model.config.to_dict()
    arch = arch_for_config(config)
    with GGUFFile(gguf_path) as f, torch.no_grad():
        for hf_name, param in model.named_parameters():
            gguf_name = arch.gguf_name(hf_name)
            if gguf_name not in f:  # tied lm_head
                continue
            w = arch.from_gguf_layout(hf_name, f.dequantize(gguf_name), config)
            param.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        return model(torch.tensor(ids, dtype=torch.long)[None]).logits[0].float().numpy()


@pytest.mark.parametrize("name, dtype", [("qwen2", "q8_0"), ("llama", "q4_0"), ("qwen2", "mxfp4"),
                                         ("llama-tied", "nf4"), ("qwen2", "int4:asym"), ("llama", "bf16"),
                                         ("llama", "int3"), ("qwen2", "bfp")])
def test_quantized_exports_match_their_dequantized_weights(built, tmp_path, name, dtype):
    """A quantized file runs as the float model of its dequantized weights (exact kernels), and the
    default fast kernels stay close to that."""
    folder = built(name)[0]
    out = tmp_path / "m.gguf"
    export(open_source(str(folder)), out, dtype)
    ids = tokens()
    ref = hf_logits_with_gguf_weights(folder, out, ids)
    with Engine(out, n_ctx=64, n_threads=2, exact=True) as eng:
        exact = eng.eval(ids, all_logits=True)
    with Engine(out, n_ctx=64, n_threads=2) as eng:
        fast = eng.eval(ids, all_logits=True)
        eng.reset()
        dec = np.stack([eng.eval(ids[i:i + 1]) for i in range(SEQ)])
    assert np.abs(exact - ref).max() < TOL, f"{dtype}: {np.abs(exact - ref).max()}"
    from quantconv import _ext
    from quantconv.formats.registry import get_dtype

    if _ext.fast_path(get_dtype(dtype).descriptor(), 64) or dtype == "bf16":
        # integer tiles and float tiles do each token's arithmetic as its matvec does: bit for bit
        np.testing.assert_array_equal(dec, fast)
    else:
        # exact-only codes: a prefill of >= 16 tokens decodes each row block once and runs the F32
        # tiles, token-by-token decode runs the code's own vec_dot; the sums differ in float order only
        np.testing.assert_allclose(dec, fast, rtol=0, atol=1e-5 * np.abs(fast).max())
    rel = np.sqrt(np.mean((fast - exact) ** 2) / np.mean(exact ** 2))
    # int8 activations on a 2-layer random model with sharp weights: 0.5-4% (a wrong activation buffer
    # or row mapping gives ~100%); the kernels' own tests bound the fast path precisely
    assert rel < 0.08, f"{dtype}: fast path relative RMS error {rel:.4f}"


def test_portable_routines_match_the_simd_ones(built):
    """QUANTCONV_ISA=scalar runs the portable kernels and attention/fp16 routines: same logits."""
    import subprocess
    import sys

    from quantconv import _ext

    path = built("qwen2")[1]
    ids = tokens()
    with Engine(path, n_ctx=64, n_threads=2, kv_type="f16") as eng:
        here = eng.eval(ids, all_logits=True)
    code = ("import sys, numpy as np; from quantconv import _ext; from quantconv.runtime.engine import Engine; "
            "e = Engine(sys.argv[1], n_ctx=64, n_threads=2, kv_type='f16'); "
            "np.save(sys.argv[2], e.eval(np.load(sys.argv[3]), all_logits=True)); print(_ext.engine_ops_isa())")
    tmp = path.parent
    np.save(tmp / "ids.npy", ids)
    env = {**__import__("os").environ, "QUANTCONV_ISA": "scalar"}
    res = subprocess.run([sys.executable, "-c", code, str(path), str(tmp / "scalar.npy"), str(tmp / "ids.npy")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "scalar"
    np.testing.assert_allclose(np.load(tmp / "scalar.npy"), here, rtol=0, atol=1e-4)
    assert _ext.engine_ops_isa() in ("avx2", "scalar")


# ---- cache limits and inputs -----------------------------------------------------------------------
def test_context_overflow_raises_and_keeps_the_cache(built):
    path = built("llama")[1]
    ids = tokens(20)
    with Engine(path, n_ctx=16, n_threads=2) as eng:
        first = eng.eval(ids[:10], all_logits=True)
        with pytest.raises(ValueError, match="n_ctx"):
            eng.eval(ids[10:17])
        assert eng.n_past == 10
        eng.eval(ids[10:16])
        assert eng.n_past == 16
        with pytest.raises(ValueError, match="n_ctx"):
            eng.eval(ids[16:17])
        eng.reset()
        np.testing.assert_array_equal(eng.eval(ids[:10], all_logits=True), first)
        with pytest.raises(QuantconvError, match="outside the vocabulary"):
            eng.eval([VOCAB_SIZE])
        with pytest.raises(ValueError):
            eng.eval(np.zeros(0, np.int32))
    with pytest.raises(QuantconvError, match="closed"):
        eng.eval(ids[:1])


def test_model_keeps_the_mapped_file_alive(built):
    from quantconv import _ext

    path = built("llama")[1]
    f = GGUFFile(path)
    cfg = model_config(f)
    model = _ext.Model(cfg, model_tensors(f, cfg["n_layer"]), 32, 2)
    f.close()  # the map stays valid while the model holds its views
    ids = tokens(8)
    with Engine(path, n_ctx=32, n_threads=2) as eng:
        ref = eng.eval(ids, all_logits=True)
    np.testing.assert_array_equal(model.eval(ids, all_logits=True), ref)
    assert model.n_past == 8 and model.n_vocab == VOCAB_SIZE and model.n_ctx == 32


# ---- validation at construction --------------------------------------------------------------------
@pytest.fixture()
def parts(built):
    f = GGUFFile(built("llama")[1])
    cfg = model_config(f)
    yield cfg, model_tensors(f, cfg["n_layer"])
    f.close()


def test_tensors_reach_the_engine_by_role(parts):
    """The engine is handed tensors by models.yaml role, each with the file's name for messages."""
    cfg, tensors = parts
    assert {"token_embd", "output_norm", "L0.attn_q", "L1.ffn_down"} <= set(tensors)
    assert tensors["L1.ffn_down"][3] == "blk.1.ffn_down.weight" and tensors["token_embd"][3] == "token_embd.weight"
    assert not any(k.endswith("_bias") for k in tensors)   # optional roles the file lacks are left out
    assert len(tensors) == 2 + 9 * cfg["n_layer"] + ("output" in tensors)


def test_missing_tensor_is_named(parts):
    from quantconv import _ext

    cfg, tensors = parts
    del tensors["L1.ffn_up"]
    with pytest.raises(ValueError, match=r"no tensor for role 'L1\.ffn_up'"):
        _ext.Model(cfg, tensors, 16, 1)


def test_missing_tensor_in_the_file_is_named(built, tmp_path):
    """A file without a required tensor is refused naming it (the tensor's GGUF name, from models.yaml)."""
    import gguf

    with GGUFFile(built("llama")[1]) as f:
        w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
        for key in ("embedding_length", "block_count", "feed_forward_length", "attention.head_count"):
            w.add_uint32(f"llama.{key}", f.kv[f"llama.{key}"])
        for t in f.tensors:
            if t.name != "blk.1.ffn_up.weight":
                w.add_tensor(t.name, f.dequantize(t.name))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(QuantconvError, match=r"has no tensor 'blk\.1\.ffn_up\.weight'; re-export it with quantconv"):
        Engine(tmp_path / "m.gguf")


def test_wrong_shape_is_named(parts):
    from quantconv import _ext

    cfg, tensors = parts
    desc, data, shape, name = tensors["L0.attn_k"]
    tensors["L0.attn_k"] = (desc, data, (shape[0] // 2, shape[1] * 2), name)
    with pytest.raises(ValueError, match=r"blk\.0\.attn_k\.weight.*shape"):
        _ext.Model(cfg, tensors, 16, 1)
    tensors["L0.attn_k"] = (desc, data[:-4], shape)   # without a name: messages use the key
    with pytest.raises(ValueError, match=r"'L0\.attn_k'.*bytes"):
        _ext.Model(cfg, tensors, 16, 1)


@pytest.mark.parametrize("change, match", [
    ({"rope_style": None}, "rope_style"),
    ({"n_head_kv": 3}, "n_head_kv"),
    ({"n_head": 3, "head_dim": None}, "divisible"),
    ({"rope_dim": 7}, "rope_dim"),
    ({"rope_style": "spiral"}, "rope_style"),
    ({"n_ff": 100}, r"blk\.0\.ffn_gate\.weight"),
])
def test_bad_config_is_refused(parts, change, match):
    from quantconv import _ext

    cfg, tensors = parts
    with pytest.raises(ValueError, match=match):
        _ext.Model({**cfg, **change}, tensors, 16, 1)


def test_corrupt_block_scale_is_refused(built, tmp_path):
    from quantconv import _ext

    out = tmp_path / "mx.gguf"
    export(open_source(str(built("llama")[0])), out, "mxfp4")
    with GGUFFile(out) as f:
        cfg = model_config(f)
        tensors = model_tensors(f, cfg["n_layer"])
        desc, data, shape, name = tensors["L1.ffn_down"]
        bad = data.copy()
        bad[17 * 3] = 255  # the E8M0 scale of block 3 of row 0: NaN
        tensors["L1.ffn_down"] = (desc, bad, shape, name)
        with pytest.raises(ValueError, match=r"blk\.1\.ffn_down\.weight.*E8M0"):
            _ext.Model(cfg, tensors, 16, 1)


def _foreign_gguf(path: Path, arch: str = "llama", down_type: str = "Q4_K") -> Path:
    """A llama-shaped GGUF written by gguf-py (not quantconv), with blk.0.ffn_down.weight in down_type."""
    import gguf

    rng = np.random.default_rng(0)
    E, F, V = 64, 256, 32
    w = gguf.GGUFWriter(path, arch)
    for key, val in [("embedding_length", E), ("block_count", 1), ("feed_forward_length", F),
                     ("attention.head_count", 4), ("attention.head_count_kv", 4), ("context_length", 64)]:
        w.add_uint32(f"{arch}.{key}", val)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    mats = {"token_embd.weight": (V, E), "blk.0.attn_q.weight": (E, E), "blk.0.attn_k.weight": (E, E),
            "blk.0.attn_v.weight": (E, E), "blk.0.attn_output.weight": (E, E), "blk.0.ffn_gate.weight": (F, E),
            "blk.0.ffn_up.weight": (F, E)}
    for name, shape in mats.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    for name in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"):
        w.add_tensor(name, np.ones(E, np.float32))
    q4k = rng.integers(0, 256, (E, 144), dtype=np.uint8)
    q4k[:, :4] = np.array([0.01, 0.02], np.float16).view(np.uint8)
    w.add_tensor("blk.0.ffn_down.weight", q4k, raw_dtype=getattr(gguf.GGMLQuantizationType, down_type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_foreign_tensor_type_is_refused(tmp_path):
    with pytest.raises(QuantconvError, match=r"blk\.0\.ffn_down\.weight.*Q4_K.*re-export it with quantconv"):
        Engine(_foreign_gguf(tmp_path / "k.gguf"))


def test_unsupported_architecture_is_refused(tmp_path):
    with pytest.raises(QuantconvError, match="'gpt2'.*runs llama, qwen2"):
        Engine(_foreign_gguf(tmp_path / "g.gguf", arch="gpt2"))


# ---- the reference model against stock llama.cpp --------------------------------------------------
@pytest.mark.slow
@pytest.mark.llama_cpp
def test_reference_model_top1_agrees_with_llama_cpp(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from quantconv.formats.models import default_reference, reference_path

    try:  # the package's own import needs `llm`; only its GGUF file is used
        reference_path(default_reference())
    except QuantconvError as e:
        pytest.skip(str(e))
    if not TEXT.exists():
        data_file(TEXT.name)  # skips, or fails under CI
    out = tmp_path / "smollm2-f16.gguf"
    export(open_source(None), out, "f16")
    ref_model = llama_cpp.Llama(model_path=str(out), n_ctx=512, n_batch=512, logits_all=True, verbose=False)
    ids = ref_model.tokenize(TEXT.read_text(encoding="utf-8").encode("utf-8"), add_bos=False)[:512]
    assert len(ids) == 512
    ref_model.eval(ids)
    ref = np.asarray(ref_model.scores[:512], dtype=np.float32)
    del ref_model
    with Engine(out, n_ctx=512) as eng:
        got = eng.eval(np.asarray(ids), all_logits=True)
    agree = float((got.argmax(axis=1) == ref.argmax(axis=1)).mean())
    assert agree >= 0.99, f"top-1 agreement with llama.cpp {agree:.4f}"


def test_exact_tensors_env(built, tmp_path, monkeypatch):
    """QUANTCONV_EXACT_TENSORS moves the named weights to the exact path: all of them gives the exact
    engine's logits bit for bit, some of them lands between fast and exact."""
    folder = built("llama")[0]
    out = tmp_path / "m.gguf"
    export(open_source(str(folder)), out, "q4_0")
    ids = tokens()
    with Engine(out, n_ctx=64, n_threads=2, exact=True) as eng:
        exact = eng.eval(ids, all_logits=True)
    with Engine(out, n_ctx=64, n_threads=2) as eng:
        fast = eng.eval(ids, all_logits=True)
    monkeypatch.setenv("QUANTCONV_EXACT_TENSORS", "blk.,output,token_embd")
    with Engine(out, n_ctx=64, n_threads=2) as eng:
        np.testing.assert_array_equal(eng.eval(ids, all_logits=True), exact)
    monkeypatch.setenv("QUANTCONV_EXACT_TENSORS", "ffn_down")
    with Engine(out, n_ctx=64, n_threads=2) as eng:
        some = eng.eval(ids, all_logits=True)
    assert not np.array_equal(some, fast) and not np.array_equal(some, exact)
