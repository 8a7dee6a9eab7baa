"""The C++ engine on the families beyond llama (Qwen3, Gemma 2, Gemma 3, Phi-3): logits parity with
transformers on tiny random models (F32 exports, prompts longer than the sliding window), the fast path
on quantized exports, prefill/decode consistency, and the family options really being exercised."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantconv.convert.export import export
from quantconv.convert.sources import open_source
from quantconv.formats.gguf_reader import GGUFFile
from quantconv.formats.model_config import model_config
from quantconv.runtime.engine import Engine, model_tensors

from .tiny_models import SLIDING_WINDOW, VOCAB_SIZE, make_tiny_hf_model

TOL = 1e-3  # max |logit difference| versus transformers in float32
SEQ = 40    # > 4 sliding windows: local layers drop keys in prefill blocks and in decode
LONG = 300  # Phi-3 LongRoPE: longer than the original context (256), so the long factors apply
SHARP = {"initializer_range": 0.1}  # O(1) logits, attention far from uniform (see test_engine.py)
# name -> (tiny_models family, tied, config overrides, prompt length, n_ctx)
MODELS = {
    "qwen3": ("qwen3", False, {}, SEQ, 64),
    "qwen3-tied": ("qwen3", True, {}, SEQ, 64),
    "gemma2": ("gemma2", None, {}, SEQ, 64),
    # caps the scores of this model reach (tiny_models' 50 / 30 barely bend them): soft-capping matters
    "gemma2-softcap": ("gemma2", None, {"attn_logit_softcapping": 2.0, "final_logit_softcapping": 5.0}, SEQ, 64),
    "gemma3": ("gemma3", None, {}, SEQ, 64),
    # Gemma 3 4B's RoPE: linear scaling (factor 8) on the global layers only
    "gemma3-linear": ("gemma3", None, {"rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, SEQ, 64),
    "phi3": ("phi3", None, {}, SEQ, 64),
    "phi3-longrope-short": ("phi3-longrope", None, {}, SEQ, 256),
    "phi3-longrope-long": ("phi3-longrope", None, {}, LONG, 512),
}


def tokens(n: int = SEQ, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB_SIZE, n).astype(np.int32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """MODELS name -> (HF folder, f32 GGUF), built on first use (the Phi-3 LongRoPE ones share a model)."""
    root = tmp_path_factory.mktemp("engine-families")
    cache: dict[tuple, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        family, tied, overrides, _, _ = MODELS[name]
        key = (family, tied, repr(sorted(overrides.items())))
        if key not in cache:
            pytest.importorskip("torch")
            pytest.importorskip("transformers")
            tag = f"{len(cache)}-{family}"
            hf = make_tiny_hf_model(root / tag, arch=family, dtype="float32", tied=tied, **{**SHARP, **overrides})
            out = root / f"{tag}.gguf"
            export(open_source(str(hf)), out, "f32")
            cache[key] = (hf, out)
        return cache[key]

    return get


def hf_logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)[None]).logits[0].float().numpy()


def hf_logits_with_gguf_weights(folder: Path, gguf_path: Path, ids: np.ndarray) -> np.ndarray:
    """transformers' forward with every weight replaced by the GGUF file's dequantized tensor."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from quantconv.formats.models import arch_for_config

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
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


# ---- parity with transformers ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_transformers(built, name):
    folder, path = built(name)
    n, n_ctx = MODELS[name][3], MODELS[name][4]
    ids = tokens(n)
    ref = hf_logits(folder, ids)
    with Engine(path, n_ctx=n_ctx, n_threads=2, exact=True) as eng:
        prefill = eng.eval(ids, all_logits=True)
        eng.reset()
        decode = np.stack([eng.eval(ids[i:i + 1]) for i in range(n)])
        eng.reset()
        split = 19  # a prefill that ends inside a window, then decode
        mixed = np.concatenate([eng.eval(ids[:split], all_logits=True),
                                np.stack([eng.eval(ids[i:i + 1]) for i in range(split, n)])])
    with Engine(path, n_ctx=n_ctx, n_threads=2, exact=True, n_batch=5) as eng:
        small = eng.eval(ids, all_logits=True)
    err = np.abs(prefill - ref).max()
    assert err < TOL, f"{name}: prefill differs from transformers by {err}"
    assert np.abs(decode - ref).max() < TOL
    assert np.abs(mixed - ref).max() < TOL
    np.testing.assert_allclose(decode, prefill, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed, prefill, rtol=0, atol=1e-5)
    np.testing.assert_allclose(small, prefill, rtol=0, atol=1e-5)


def _engine_logits(path: Path, ids: np.ndarray, n_ctx: int, **change) -> np.ndarray:
    """Logits of the file with config keys changed (None: removed), through the C++ model directly."""
    from quantconv import _ext

    with GGUFFile(path) as f:
        cfg = model_config(f)
        tensors = model_tensors(f, cfg["n_layer"], n_ctx, cfg)
        for key, value in change.items():
            if key in tensors:
                del tensors[key]
            elif value is None:
                cfg.pop(key)
            else:
                cfg[key] = value
        cfg["exact"] = True
        return _ext.Model(cfg, tensors, n_ctx, 2).eval(ids, all_logits=True)


@pytest.mark.parametrize("name, changes", [
    ("gemma2-softcap", [{"swa_window": 0}, {"attn_softcap": None}, {"final_softcap": None}, {"ffn_act": "silu"},
                {"embd_scale": None}, {"L0.attn_post_norm": None}, {"L1.ffn_post_norm": None}]),
    ("gemma3", [{"swa_window": 0}, {"rope_base_swa": None}, {"L0.attn_q_norm": None}, {"L5.attn_k_norm": None},
                {"attn_scale": 0.3}]),
    ("gemma3-linear", [{"rope_scale": None}]),
    ("qwen3", [{"L1.attn_q_norm": None}, {"L0.attn_k_norm": None}]),
    ("phi3", [{"rope_dim": None}]),
    ("phi3-longrope-long", [{"rope_freqs": None}, {"rope_attn_factor": None}]),
])
def test_family_options_are_exercised(built, name, changes):
    """Each option the family's parity test covers changes the logits by far more than TOL on that test's
    prompt (so a test passing with the option broken is impossible); the file's own config matches
    transformers there."""
    folder, path = built(name)
    n, n_ctx = MODELS[name][3], MODELS[name][4]
    ids = tokens(n)
    ref = hf_logits(folder, ids)
    assert np.abs(_engine_logits(path, ids, n_ctx) - ref).max() < TOL
    for change in changes:
        err = np.abs(_engine_logits(path, ids, n_ctx, **change) - ref).max()
        assert err > 30 * TOL, f"{name}: changing {change} moves the logits by only {err}"


def test_family_config_reaches_the_engine(built):
    """What the parity tests rely on is in the files (values of tests/tiny_models.py's configs)."""
    with GGUFFile(built("gemma2")[1]) as f:
        cfg = model_config(f)
    assert cfg["swa_window"] == SLIDING_WINDOW and cfg["swa_layers"] == [1, 0]
    assert cfg["attn_softcap"] == 50.0 and cfg["final_softcap"] == 30.0 and cfg["ffn_act"] == "gelu_tanh"
    with GGUFFile(built("gemma3")[1]) as f:
        cfg = model_config(f)
    assert cfg["swa_layers"] == [1, 1, 1, 1, 1, 0] and cfg["rope_base_swa"] != cfg["rope_base"]
    with GGUFFile(built("phi3")[1]) as f:
        cfg = model_config(f)
    assert cfg["rope_dim"] * 2 == cfg["head_dim"]


def test_threads_batches_and_fp16_cache_on_local_layers(built):
    """Sliding-window layers give the same logits for any thread count and prefill batch size, and with an
    fp16 cache decode equals prefill (each query's arithmetic does not depend on its batch)."""
    path = built("gemma3")[1]
    ids = tokens(SEQ, seed=3)
    runs = []
    for n_threads, n_batch in ((1, 256), (3, 256), (2, 3), (2, 16)):
        with Engine(path, n_ctx=64, n_threads=n_threads, n_batch=n_batch) as eng:
            runs.append(eng.eval(ids, all_logits=True))
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    with Engine(path, n_ctx=64, n_threads=2, kv_type="f16") as eng:
        half = eng.eval(ids, all_logits=True)
        eng.reset()
        np.testing.assert_array_equal(np.stack([eng.eval(ids[i:i + 1]) for i in range(SEQ)]), half)
    assert 0 < np.abs(half - runs[0]).max() < 1e-2


def test_portable_routines_match_the_simd_ones(built):
    """QUANTCONV_ISA=scalar runs the portable GeGLU, soft-capping and windowed attention: same logits as
    the AVX2 routines (whose tanh goes through e^-2|x|) within float rounding."""
    import os
    import subprocess
    import sys

    path = built("gemma2-softcap")[1]
    ids = tokens()
    with Engine(path, n_ctx=64, n_threads=2) as eng:
        here = eng.eval(ids, all_logits=True)
    code = ("import sys, numpy as np; from quantconv import _ext; from quantconv.runtime.engine import Engine; "
            "e = Engine(sys.argv[1], n_ctx=64, n_threads=2); "
            "np.save(sys.argv[2], e.eval(np.load(sys.argv[3]), all_logits=True)); print(_ext.engine_ops_isa())")
    tmp = path.parent
    np.save(tmp / "ids.npy", ids)
    res = subprocess.run([sys.executable, "-c", code, str(path), str(tmp / "scalar.npy"), str(tmp / "ids.npy")],
                         env={**os.environ, "QUANTCONV_ISA": "scalar"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "scalar"
    np.testing.assert_allclose(np.load(tmp / "scalar.npy"), here, rtol=0, atol=1e-4)


# ---- Phi-3: fused tensors and LongRoPE -------------------------------------------------------------
def test_fused_tensors_reach_the_engine_as_row_views(built):
    path = built("phi3")[1]
    with GGUFFile(path) as f:
        cfg = model_config(f)
        tensors = model_tensors(f, cfg["n_layer"], 64, cfg)
        qkv = f.raw("blk.1.attn_qkv.weight")
        gate_up = f.raw("blk.0.ffn_up.weight")
        nq, nkv, F, E = cfg["n_head"] * cfg["head_dim"], cfg["n_head_kv"] * cfg["head_dim"], cfg["n_ff"], cfg["n_embd"]
        assert tensors["L1.attn_q"][2] == (nq, E) and tensors["L1.attn_k"][2] == (nkv, E)
        assert tensors["L1.attn_v"][2] == (nkv, E) and tensors["L0.ffn_gate"][2] == (F, E)
        assert tensors["L1.attn_q"][3] == "blk.1.attn_qkv.weight[attn_q]"
        # zero-copy: the views are the fused tensor's rows, in order q, k, v and gate, up
        np.testing.assert_array_equal(tensors["L1.attn_k"][1], qkv[nq:nq + nkv].reshape(-1))
        np.testing.assert_array_equal(tensors["L1.attn_v"][1], qkv[nq + nkv:].reshape(-1))
        np.testing.assert_array_equal(tensors["L0.ffn_up"][1], gate_up[F:].reshape(-1))
        assert np.shares_memory(tensors["L1.attn_v"][1], qkv)
        assert not any(k.endswith(("attn_qkv", "ffn_gate_up")) for k in tensors)


def test_longrope_factors_follow_the_context(built):
    """The long factors iff n_ctx exceeds the original context (256 in the tiny config), as llama.cpp."""
    path = built("phi3-longrope-long")[1]
    with GGUFFile(path) as f:
        cfg = model_config(f)
        assert cfg["rope_orig_ctx"] == 256 and cfg["rope_attn_factor"] > 1.0
        assert model_tensors(f, cfg["n_layer"], 256, cfg)["rope_freqs"][3] == "rope_factors_short.weight"
        assert model_tensors(f, cfg["n_layer"], 257, cfg)["rope_freqs"][3] == "rope_factors_long.weight"
    with Engine(path, n_ctx=512) as eng:
        long = eng.eval(tokens(16), all_logits=True)
    with Engine(path, n_ctx=256) as eng:
        short = eng.eval(tokens(16), all_logits=True)
    assert np.abs(long - short).max() > 30 * TOL


# ---- quantized exports: exact path = dequantized weights, fast path close ------------------------
@pytest.mark.parametrize("name, dtype", [("qwen3", "q8_0"), ("gemma2", "q8_0"), ("gemma3", "q4_0"),
                                         ("phi3", "q8_0"), ("phi3-longrope-short", "sf4"),
                                         ("gemma3", "mxfp4")])
def test_quantized_exports_fast_and_exact(built, tmp_path, name, dtype):
    """A quantized file runs as the float model of its dequantized weights on the exact path; the fast
    path (int8 activations) stays within a relative RMS error of 4% of it (measured 0.7-1.6% on these
    six; a wrong activation buffer or row mapping gives ~100%), and its decode equals its prefill."""
    folder = built(name)[0]
    n, n_ctx = MODELS[name][3], MODELS[name][4]
    out = tmp_path / "m.gguf"
    export(open_source(str(folder)), out, dtype)
    ids = tokens(n)
    ref = hf_logits_with_gguf_weights(folder, out, ids)
    with Engine(out, n_ctx=n_ctx, n_threads=2, exact=True) as eng:
        exact = eng.eval(ids, all_logits=True)
    with Engine(out, n_ctx=n_ctx, n_threads=2) as eng:
        fast = eng.eval(ids, all_logits=True)
        eng.reset()
        dec = np.stack([eng.eval(ids[i:i + 1]) for i in range(n)])
    assert np.abs(exact - ref).max() < TOL, f"{name} {dtype}: {np.abs(exact - ref).max()}"
    np.testing.assert_allclose(dec, fast, rtol=0, atol=1e-5 * np.abs(fast).max())
    rel = np.sqrt(np.mean((fast - exact) ** 2) / np.mean(exact ** 2))
    assert rel < 0.04, f"{name} {dtype}: fast path relative RMS error {rel:.4f}"


# ---- bad config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, match", [
    ({"ffn_act": "relu"}, r"'ffn_act' must be 'silu' or 'gelu_tanh'"),
    ({"swa_layers": [1, 0, 1]}, r"'swa_layers' has 3 entries for 2 layers"),
    ({"swa_layers": [2, 0]}, r"'swa_layers' must be a list of 0 or 1"),
    ({"attn_softcap": -1.0}, r"'attn_softcap' must be a finite number >= 0"),
    ({"embd_scale": 0.0}, r"'embd_scale' must be a finite number > 0"),
    ({"swa_window": -4}, r"'swa_window' must be >= 0"),
])
def test_bad_family_config_is_refused(built, change, match):
    from quantconv import _ext

    with GGUFFile(built("gemma2")[1]) as f:
        cfg = model_config(f)
        tensors = model_tensors(f, cfg["n_layer"], 16, cfg)
        with pytest.raises(ValueError, match=match):
            _ext.Model({**cfg, **change}, tensors, 16, 1)


def test_wrong_norm_size_is_named(built):
    from quantconv import _ext

    with GGUFFile(built("qwen3")[1]) as f:
        cfg = model_config(f)
        tensors = model_tensors(f, cfg["n_layer"], 16, cfg)
        tensors["L1.attn_k_norm"] = tensors["L1.attn_norm"]  # n_embd weights where head_dim belong
        with pytest.raises(ValueError, match=r"blk\.1\.attn_norm\.weight' has shape \(64,\), expected \(32,\)"):
            _ext.Model(cfg, tensors, 16, 1)
