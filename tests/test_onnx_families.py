"""ONNX export of every family beyond llama/qwen2 (qwen3, gemma2, gemma3, phi3 with and without LongRoPE,
llama3 RoPE scaling): onnxruntime's logits against transformers' forward on prompts longer than the sliding
window, KV-cache decoding against prefill, both graph flavors (opset-23 ops and basic ops), the fused
projections kept fused, weights bit for bit, perplexity against quantconv's engine (exact path) on a
quantized export, and onnxruntime-genai's config per family."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from quantconv.convert.export import export  # noqa: E402
from quantconv.convert.onnx_export import export_onnx, gguf_to_onnx  # noqa: E402
from quantconv.convert.sources import open_source  # noqa: E402
from quantconv.formats.gguf_reader import GGUFFile  # noqa: E402
from quantconv.formats.model_config import model_config  # noqa: E402
from quantconv.runtime.onnx_runner import OnnxEngine  # noqa: E402
from tests.test_onnx import assert_weights_bit_for_bit  # noqa: E402
from tests.tiny_models import SLIDING_WINDOW, VOCAB_SIZE, make_tiny_hf_model  # noqa: E402

TOL = 1e-3
SEQ = 64            # > SLIDING_WINDOW: local layers drop keys that global layers still see
SHARP = {"initializer_range": 0.1}   # O(1) logits: a wrong mask / RoPE / norm shows (test_engine.py)
# gemma2's default attention cap (50) barely touches O(1) scores; a small one makes a missing cap visible
OVERRIDES = {"gemma2": {"attn_logit_softcapping": 2.0}}
FAMILIES = ["qwen3", "gemma2", "gemma3", "phi3", "phi3-longrope", "llama3"]


def tokens(n: int = SEQ, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB_SIZE, n)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-families")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            pytest.importorskip("torch")
            cache[name] = make_tiny_hf_model(root / name, arch=name, **SHARP, **OVERRIDES.get(name, {}))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def f32_gguf(hf, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-families-gguf")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = root / f"{name}.gguf"
            export(open_source(str(hf(name))), cache[name], "f32")
        return cache[name]

    return get


def hf_model(folder: Path):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def hf_logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf_model(folder)(torch.tensor(ids, dtype=torch.long)[None]).logits[0].float().numpy()


def prefill_then_decode(eng: OnnxEngine, ids: np.ndarray, split: int) -> np.ndarray:
    eng.reset()
    return np.concatenate([eng.eval(ids[:split], all_logits=True),
                           np.stack([eng.eval(ids[i:i + 1]) for i in range(split, len(ids))])])


# ---- float export: the graph of each family --------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False], ids=["opset23-ops", "basic-ops"])
@pytest.mark.parametrize("name", FAMILIES)
def test_f32_logits_match_transformers_and_decode_matches_prefill(hf, f32_gguf, tmp_path, name, fused):
    out = tmp_path / "m.onnx"
    gguf_to_onnx(f32_gguf(name), out, fused_ops=fused)
    onnx.checker.check_model(str(out))
    ids = tokens()
    ref = hf_logits(hf(name), ids)
    with OnnxEngine(out, n_ctx=SEQ, n_threads=2) as eng:
        full = eng.eval(ids, all_logits=True)
        mixed = prefill_then_decode(eng, ids, 13)   # decode steps run past the window, over the cache
    assert np.abs(full - ref).max() < TOL, np.abs(full - ref).max()
    np.testing.assert_allclose(mixed, full, rtol=0, atol=1e-4)


def test_the_family_features_are_in_the_graph(f32_gguf, tmp_path):
    """What each family adds appears as the ops that carry it (so the parity above is not by accident):
    soft-capped Attention, partial RotaryEmbedding, per-head q/k RMSNormalization, GELU, one MatMul + Split
    per fused projection, and two masks (local and global layers) where layers differ."""
    def ops(name):
        out = tmp_path / f"{name}.onnx"
        gguf_to_onnx(f32_gguf(name), out)
        return onnx.load(str(out)).graph.node

    gemma2 = ops("gemma2")
    assert {a.f for n in gemma2 if n.op_type == "Attention" for a in n.attribute if a.name == "softcap"} == {2.0}
    assert sum(n.op_type == "Gelu" for n in gemma2) == 2 and sum(n.op_type == "Tanh" for n in gemma2) == 1
    masks = {n.input[3] for n in gemma2 if n.op_type == "Attention"}
    assert len(masks) == 2   # layer 0 local, layer 1 global
    gemma3 = ops("gemma3")
    assert sum(n.op_type == "RMSNormalization" for n in gemma3) == 6 * (4 + 2) + 1
    phi3 = ops("phi3")
    rot = [a.i for n in phi3 if n.op_type == "RotaryEmbedding" for a in n.attribute if a.name == "rotary_embedding_dim"]
    assert rot == [8] * 4
    names = {n.name.split("/")[0] for n in phi3 if n.op_type == "MatMul"}
    assert "blk.0.attn_qkv.weight" in names and "blk.0.ffn_up.weight" in names and "blk.0.attn_q.weight" not in names
    assert sum(n.op_type == "Split" and len(n.output) == 3 for n in phi3) == 2


def test_longrope_switches_factors_as_transformers_does(hf, f32_gguf, tmp_path):
    """LongRoPE: short factors while positions stay below the original context (256), long factors beyond;
    in a decode that crosses it, each step's choice follows its own largest position, as transformers'."""
    import torch

    name = "phi3-longrope"
    out = tmp_path / "m.onnx"
    gguf_to_onnx(f32_gguf(name), out)
    with GGUFFile(f32_gguf(name)) as f:
        orig = model_config(f)["rope_orig_ctx"]
    assert orig == 256
    ids = tokens(orig + 24, seed=1)
    model = hf_model(hf(name))
    with torch.no_grad():
        ref_long = model(torch.tensor(ids)[None]).logits[0].numpy()
        start = orig - 8
        res = model(torch.tensor(ids[:start])[None], use_cache=True)
        past, steps = res.past_key_values, [res.logits[0, -1].numpy()]
        for i in range(start, len(ids)):
            res = model(torch.tensor(ids[i:i + 1])[None], cache=past, use_cache=True)
            past = res.past_key_values
            steps.append(res.logits[0, -1].numpy())
    with OnnxEngine(out, n_ctx=len(ids), n_threads=2) as eng:
        full = eng.eval(ids, all_logits=True)
        dec = prefill_then_decode(eng, ids, start)[start - 1:]
    assert np.abs(full - ref_long).max() < TOL, np.abs(full - ref_long).max()
    assert np.abs(dec - np.stack(steps)).max() < TOL, np.abs(dec - np.stack(steps)).max()
    # the factors matter here: the long-context logits of the first positions differ from the short ones
    assert np.abs(full[:orig - 8] - hf_logits(hf(name), ids[:orig - 8])).max() > 10 * TOL


def test_longrope_factors_without_original_context_are_refused(f32_gguf):
    from quantconv.errors import QuantconvError
    from quantconv.formats.onnx.graph import DecoderBuilder

    with GGUFFile(f32_gguf("phi3-longrope")) as f:
        cfg = {**model_config(f), "rope_orig_ctx": 0}
        with pytest.raises(QuantconvError, match=r"LongRoPE factors but no original context length \(phi3\.rope"):
            DecoderBuilder(f, cfg, "standard").build()


def test_left_padded_batch_with_sliding_window(f32_gguf, tmp_path):
    """attention_mask padding and the window together: a left-padded row scores like the unpadded one."""
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    gguf_to_onnx(f32_gguf("gemma3"), out)
    with GGUFFile(f32_gguf("gemma3")) as f:
        cfg = model_config(f)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    n, pad = 3 * SLIDING_WINDOW, 5
    ids = tokens(n)
    batch = np.stack([np.concatenate([np.zeros(pad, np.int64), ids[:n - pad]]), ids])
    mask = np.stack([np.r_[np.zeros(pad), np.ones(n - pad)], np.ones(n)]).astype(np.int64)
    pos = np.stack([np.r_[np.zeros(pad), np.arange(n - pad)], np.arange(n)]).astype(np.int64)
    feed = {"input_ids": batch, "attention_mask": mask, "position_ids": pos}
    for i in range(cfg["n_layer"]):
        for k in ("key", "value"):
            feed[f"past_key_values.{i}.{k}"] = np.zeros((2, cfg["n_head_kv"], 0, cfg["head_dim"]), np.float32)
    logits = sess.run(["logits"], feed)[0]
    # the window counts cache slots; left padding shifts slots and positions alike
    np.testing.assert_allclose(logits[0, pad:], logits[1, :n - pad], rtol=0, atol=1e-4)


# ---- quantized exports: weights bit for bit, perplexity equal to the engine's exact path ------------------
PPL_CTX = 48        # > SLIDING_WINDOW
# (family, dtype, group, ctx); LongRoPE with ctx 300 > its original 256: the engine picks the long factors
# from n_ctx, the graph from the window's positions, and both land on the long ones
PPL_CASES = [("qwen3", "sf4", 32, PPL_CTX), ("gemma2", "q4_0", None, PPL_CTX), ("gemma3", "int4:asym", 32, PPL_CTX),
             ("phi3", "sf4", 32, PPL_CTX), ("phi3-longrope", "q4_0", None, PPL_CTX),
             ("phi3-longrope", "sf4", 32, 300)]
PPL_RTOL = 1e-5     # relative perplexity difference (measured: < 2e-7)


@pytest.mark.parametrize("name, dtype, group, ctx", PPL_CASES)
def test_quantized_weights_bit_for_bit_and_perplexity_matches_engine(hf, tmp_path, name, dtype, group, ctx):
    from quantconv.runtime.engine import Engine
    from quantconv.runtime.perplexity import perplexity

    out, gguf = tmp_path / "m.onnx", tmp_path / "m.gguf"
    export_onnx(open_source(str(hf(name))), out, dtype, group_size=group, keep_gguf=gguf)
    assert_weights_bit_for_bit(out, gguf)
    windows = max(2, 4 * PPL_CTX // ctx)
    ids = tokens(windows * ctx, seed=2)
    with Engine(gguf, n_ctx=ctx, n_threads=2, exact=True) as eng:
        ref = perplexity(eng, ids, ctx=ctx)
        eng.reset()
        ref_logits = eng.eval(ids[:ctx].astype(np.int32), all_logits=True)
    with OnnxEngine(out, n_ctx=ctx, n_threads=2) as eng:
        got = perplexity(eng, ids, ctx=ctx)
        eng.reset()
        logits = eng.eval(ids[:ctx], all_logits=True)
    assert got.tokens == ref.tokens == windows * (ctx - 1)
    assert np.abs(logits - ref_logits).max() < TOL, np.abs(logits - ref_logits).max()
    assert abs(got.ppl / ref.ppl - 1) < PPL_RTOL, (got.ppl, ref.ppl)


def test_ort_flavor_keeps_fused_projections_as_one_matmulnbits(hf, tmp_path):
    """phi3's fused qkv and gate_up weights stay one MatMulNBits each in the ort flavor (its fast path)."""
    out, gguf = tmp_path / "m.onnx", tmp_path / "m.gguf"
    export_onnx(open_source(str(hf("phi3"))), out, "int4", group_size=32, flavor="ort", keep_gguf=gguf)
    props = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    encs = json.loads(props["quantconv.encodings"])
    assert encs["blk.0.attn_qkv.weight"]["encoding"] == "matmulnbits" and "blk.0.attn_q.weight" not in encs
    assert encs["blk.0.ffn_up.weight"]["shape"] == [64, 2 * 128]   # (in, gate rows + up rows)
    assert_weights_bit_for_bit(out, gguf)


# ---- onnxruntime-genai -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, genai_type", [("qwen3", "qwen3"), ("gemma2", "gemma2"), ("gemma3", "gemma3_text"),
                                              ("phi3", "phi3")])
def test_genai_config_names_each_family_and_drives_the_graph(hf, tmp_path, name, genai_type):
    """genai_config.json: genai's LLM type for the family, its real hidden size and head size (decoupled
    from hidden / heads in qwen3 and gemma), no sliding_window section (our caches stay whole); a greedy loop
    driven only by it generates what quantconv's runner does."""
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    export_onnx(open_source(str(hf(name))), out, "int4", group_size=32, flavor="ort")
    cfg = json.loads((tmp_path / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    props = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    mc = json.loads(props["quantconv.config"])
    assert cfg["model"]["type"] == genai_type and "sliding_window" not in dec
    assert (dec["hidden_size"], dec["head_size"], dec["num_hidden_layers"]) == \
        (mc["n_embd"], mc["head_dim"], mc["n_layer"])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    L, nkv, hd = dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]
    past = {dec["inputs"][f"past_{t}_names"] % i: np.zeros((1, nkv, 0, hd), np.float32)
            for i in range(L) for t in ("key", "value")}
    prompt = tokens(2 * SLIDING_WINDOW)
    step, n, got = prompt[None].astype(np.int64), 0, []
    for _ in range(SLIDING_WINDOW + 2):
        feed = {dec["inputs"]["input_ids"]: step,
                dec["inputs"]["attention_mask"]: np.ones((1, n + step.shape[1]), np.int64),
                dec["inputs"]["position_ids"]: np.arange(n, n + step.shape[1])[None], **past}
        res = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        past = {dec["inputs"][f"past_{t}_names"] % i: res[dec["outputs"][f"present_{t}_names"] % i]
                for i in range(L) for t in ("key", "value")}
        n += step.shape[1]
        got.append(int(res[dec["outputs"]["logits"]][0, -1].argmax()))
        step = np.array([[got[-1]]], np.int64)
    with OnnxEngine(out, n_ctx=64, n_threads=2) as eng:
        want = [int(eng.eval(prompt).argmax())]
        for _ in range(SLIDING_WINDOW + 1):
            want.append(int(eng.eval([want[-1]]).argmax()))
    assert got == want


def test_genai_knows_every_models_yaml_architecture_and_refuses_others():
    from quantconv.formats.models import all_archs
    from quantconv.formats.onnx.genai import GENAI_TYPES, genai_files

    assert {a.gguf_arch for a in all_archs().values()} <= set(GENAI_TYPES)
    cfg = {"n_vocab": 8, "head_dim": 4, "n_embd": 8, "n_head": 2, "n_head_kv": 2, "n_layer": 1}
    files, notes = genai_files({"general.architecture": "mamba"}, cfg, "m.onnx")
    assert files == {} and "no genai_config.json written" in notes[0] and "'mamba'" in notes[0]
