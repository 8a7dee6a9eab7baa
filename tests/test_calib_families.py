"""Calibration for every family (qwen3, gemma2, gemma3, phi3 with and without LongRoPE, llama3): the torch
decoder against transformers, GPTQ against RTN layer by layer, scale folding through (1 + w) norms,
post norms and fused tensors, and AWQ / SmoothQuant exports of a fused family (phi3) and a post-norm
family (gemma2) that the engine runs."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from quantconv.convert import smoothing  # noqa: E402
from quantconv.convert.algorithms import configs  # noqa: E402
from quantconv.convert.calib import calibration_ids  # noqa: E402
from quantconv.convert.calibrate import CalibOptions, calibrate  # noqa: E402
from quantconv.convert.export import export, plan_export  # noqa: E402
from quantconv.convert.sources import open_source  # noqa: E402
from quantconv.convert.torch_model import DecoderConfig, Head, Layer, Rope, embed_ids  # noqa: E402
from quantconv.formats.gguf_reader import GGUFFile  # noqa: E402
from tests.shared_data import data_file  # noqa: E402
from tests.tiny_models import NEW_FAMILIES, SLIDING_WINDOW, make_tiny_hf_model  # noqa: E402

CALIB = str(data_file("wikitext-2-valid.txt"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {fam: make_tiny_hf_model(root, fam) for fam in NEW_FAMILIES + ("gemma3-vlm",)}


def _ours(src, ids: torch.Tensor):
    cfg = DecoderConfig.from_source(src)
    head, rope = Head(src, cfg), Rope(cfg, ids.shape[1], "cpu")
    layers = [Layer(src, cfg, i) for i in range(cfg.n_layers)]
    x = head.embed_tokens(ids)
    for layer in layers:
        x = layer.forward(x, rope)
    return head, rope, layers, head.logits(x)


# phi3-longrope: 300 tokens is past its original context (256), where transformers switches to the long factors;
# gemma2 with caps small enough to bend the tiny model's logits (50 / 30 barely touch them); gemma3 with Gemma 3
# 4B's linear scaling on the global layers only; gemma2 with queries scaled by a scalar other than head_dim
@pytest.mark.parametrize("fam,n,over", [(f, 40, {}) for f in NEW_FAMILIES] + [("phi3-longrope", 300, {}),
                         ("gemma2", 40, {"attn_logit_softcapping": 0.5, "final_logit_softcapping": 0.5}),
                         ("gemma3", 40, {"rope_scaling": {"rope_type": "linear", "factor": 8.0}}),
                         ("gemma2", 40, {"query_pre_attn_scalar": 8}), ("gemma3-vlm", 40, {})])
def test_torch_decoder_matches_transformers(models, tmp_path, fam, n, over):
    assert n > SLIDING_WINDOW   # local layers attend to less than the whole prompt
    path = make_tiny_hf_model(tmp_path, fam, **over) if over else models[fam]
    src = open_source(str(path))
    # a vision-language checkpoint (Gemma 3 4B+) runs text through its decoder
    auto = transformers.AutoModelForImageTextToText if fam.endswith("-vlm") else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.randint(3, 300, (2, n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        head, rope, layers, logits = _ours(src, ids)
        assert (logits - ref).abs().max().item() < 1e-4
        # the KV-cache step (self-calibration text) gives the same hidden states, past the window too
        steps, caches = [], [dict() for _ in layers]
        k = 2 * SLIDING_WINDOW + 3
        for pos in range(k):
            h = head.embed_tokens(ids[:, pos:pos + 1])
            for layer, cache in zip(layers, caches):
                h = layer.step(h, rope, pos, cache)
            steps.append(h)
        x = head.embed_tokens(ids[:, :k])
        for layer in layers:
            x = layer.forward(x, rope)
        assert (torch.cat(steps, 1) - x).abs().max().item() < 1e-4


@pytest.mark.parametrize("fam", NEW_FAMILIES)
def test_gguf_source_gives_the_same_decoder(models, fam, tmp_path):
    """Re-quantizing a GGUF file calibrates the same model as its HF folder: norms back to the checkpoint's
    convention, fused tensors split, the file's own rope_freqs / LongRoPE factors, local RoPE base."""
    export(open_source(str(models[fam])), tmp_path / "m.gguf", "f32")
    ids = torch.randint(3, 300, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = _ours(open_source(str(models[fam])), ids)[-1]
        b = _ours(open_source(str(tmp_path / "m.gguf")), ids)[-1]
    assert (a - b).abs().max().item() < 1e-5


@pytest.mark.parametrize("fam", ["gemma2", "phi3"])
def test_calibration_embeds_in_row_chunks(models, fam, tmp_path):
    """calibrate's embedding read in row ranges (HF folder) or whole (GGUF file) equals the Head's, scale
    included; a token past the table is refused."""
    from quantconv.errors import QuantconvError

    export(open_source(str(models[fam])), tmp_path / "m.gguf", "f32")
    ids = torch.randint(0, 320, (3, 17), generator=torch.Generator().manual_seed(5))
    for path in (models[fam], tmp_path / "m.gguf"):
        src = open_source(str(path))
        cfg = DecoderConfig.from_source(src)
        want = Head(src, cfg).embed_tokens(ids)
        assert torch.equal(embed_ids(src, cfg, ids, "cpu", rows=7), want)
    with pytest.raises(QuantconvError, match="past the embedding"):
        embed_ids(src, cfg, ids + 320, "cpu")


def test_family_features_are_modelled(models):
    """The numbers that make each family what it is reach the decoder (a wrong one fails parity above;
    this says which)."""
    cfg = {f: DecoderConfig.from_source(open_source(str(models[f]))) for f in ("gemma2", "gemma3", "phi3-longrope")}
    g2, g3, phi = cfg["gemma2"], cfg["gemma3"], cfg["phi3-longrope"]
    assert g2.norm_offset == 1.0 and g2.ffn_act == "gelu_tanh" and g2.embed_scale == 8.0
    assert (g2.attn_softcap, g2.final_softcap, g2.swa_window) == (50.0, 30.0, SLIDING_WINDOW)
    assert g2.swa_layers == (True, False)
    assert g3.swa_layers == (True,) * 5 + (False,) and g3.attn_softcap == 0.0
    assert not torch.equal(g3.rope_swa.inv_freq, g3.rope.inv_freq)        # local base 1e4, global 1e6
    assert phi.rope.dim == 8 and phi.rope.attn_factor > 1.0
    assert phi.rope.for_length(256) is phi.rope.inv_freq and phi.rope.for_length(257) is phi.rope.inv_freq_long


@pytest.mark.parametrize("fam", NEW_FAMILIES)
def test_scale_folding_keeps_float_outputs(models, fam):
    """Every balance point folds exactly: through (1 + w) norms (the multiplier takes 1/s), never into a
    post norm, into the logical parts of a fused tensor."""
    src = open_source(str(models[fam]))
    cfg = DecoderConfig.from_source(src)
    layer = Layer(src, cfg, 0)
    points = smoothing.mappings(layer)
    assert points[0] == ("attn_norm", ("attn_q", "attn_k", "attn_v"))
    assert ("ffn_norm", ("ffn_gate", "ffn_up")) in points and ("ffn_up", ("ffn_down",)) in points
    assert all(prev not in ("attn_post_norm", "ffn_post_norm") for prev, _ in points)
    assert len(points) == (4 if cfg.n_kv == cfg.n_head else 3)   # v -> o only without GQA
    x = torch.randn(2, 24, cfg.hidden, generator=torch.Generator().manual_seed(2))
    rope = Rope(cfg, 24, "cpu")
    with torch.no_grad():
        ref = layer.forward(x, rope)
        g = torch.Generator().manual_seed(3)
        for prev, linears in points:
            smoothing.fold(layer, prev, linears, torch.rand(layer.w[linears[0]].shape[1], generator=g) * 4 + 0.25)
        assert (layer.forward(x, rope) - ref).abs().max().item() < 1e-4 * ref.abs().max().item()
    assert set(layer.changed_norms()) == {"attn_norm", "ffn_norm"}


@pytest.mark.parametrize("fam", NEW_FAMILIES + ("gemma3-vlm",))
def test_gptq_beats_rtn_layer_by_layer(models, fam):
    """calibrate's own loss, logged per layer: the output error of each quantized layer on the same input
    (layer_rel_err), and the quantized model's drift from the float one (model_rel_err)."""
    src = open_source(str(models[fam]))
    ids = calibration_ids(CALIB, src, 8, 48, seed=0)
    dtypes = {p.hf_name: p.dtype for p in plan_export(src, "int3:group=32", None, []) if p.role == "linear" and p.hf_name}
    errs = {}
    for algo in ("rtn", "gptq"):
        res = calibrate(src, dtypes, ids, CalibOptions(algos=configs(algo), calib="x", nsamples=8, seqlen=48,
                                                       error_samples=2))
        errs[algo] = np.array([(i["layer_rel_err"], i["model_rel_err"]) for i in res.layers])
        # the file gets every checkpoint linear (phi3: the fused tensors, joined), nothing else
        assert set(res.quantized) == set(dtypes)
    assert np.all(errs["gptq"][:, 0] < errs["rtn"][:, 0]), errs
    assert errs["gptq"][-1, 1] < 0.7 * errs["rtn"][-1, 1], errs


@pytest.mark.parametrize("fam", NEW_FAMILIES)
def test_gptq_export_beats_rtn_in_the_engine(models, fam, tmp_path):
    """End to end: the GPTQ file's logits (our engine, held-out text of the calibration text's kind) are
    closer to the float file's than the RTN file's."""
    from quantconv.runtime.engine import Engine

    src = open_source(str(models[fam]))
    ids = calibration_ids(CALIB, src, 1, 60, seed=99)[0].tolist()
    export(src, tmp_path / "f32.gguf", "f32")
    ref = Engine(tmp_path / "f32.gguf", n_ctx=64, exact=True).eval(ids, all_logits=True)
    errs = {}
    for algo in ("rtn", "gptq"):
        opts = CalibOptions(calib=CALIB, nsamples=8, seqlen=48, algos=configs(algo))
        export(src, tmp_path / f"{algo}.gguf", "int3:group=32", algo=algo, calib=None if algo == "rtn" else opts)
        got = Engine(tmp_path / f"{algo}.gguf", n_ctx=64, exact=True).eval(ids, all_logits=True)
        errs[algo] = float(((got - ref) ** 2).mean())
    assert errs["gptq"] < 0.8 * errs["rtn"], errs


@pytest.mark.parametrize("fam", ["phi3", "gemma2"])
def test_smoothquant_float_export_keeps_the_model(models, fam, tmp_path):
    """SmoothQuant folded into a float file: its norms (GGUF: the multiplier, 1 + w for gemma) and linears
    (phi3: fused rows) change, the model does not — the engine's logits still equal transformers'."""
    from quantconv.runtime.engine import Engine

    src = open_source(str(models[fam]))
    opts = CalibOptions(calib=CALIB, nsamples=4, seqlen=32, algos=configs("smoothquant"))
    export(src, tmp_path / "plain.gguf", "f32")
    export(src, tmp_path / "sq.gguf", "f32", algo="smoothquant", calib=opts)
    with GGUFFile(tmp_path / "plain.gguf") as a, GGUFFile(tmp_path / "sq.gguf") as b:
        for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "blk.1.ffn_down.weight",
                     "blk.0.attn_qkv.weight" if fam == "phi3" else "blk.0.attn_q.weight"):
            assert not np.allclose(a.dequantize(name), b.dequantize(name)), name
        if fam == "gemma2":   # post norms are no balance point: untouched
            assert np.array_equal(a.dequantize("blk.0.post_ffw_norm.weight"), b.dequantize("blk.0.post_ffw_norm.weight"))
    ids = list(range(3, 3 + 4 * SLIDING_WINDOW))
    model = transformers.AutoModelForCausalLM.from_pretrained(models[fam], dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    got = Engine(tmp_path / "sq.gguf", n_ctx=64, exact=True).eval(ids, all_logits=True)
    assert np.abs(got - ref).max() < 1e-3


@pytest.mark.parametrize("fam,algo,extra", [("phi3", "awq+gptq", {}), ("gemma2", "awq+gptq", {}),
                                            ("phi3", "smoothquant+gptq", {"norm_tweak": True}),
                                            ("gemma2", "smoothquant+gptq", {"norm_tweak": True})])
def test_calibrated_export_runs_in_the_engine(models, fam, algo, extra, tmp_path):
    from quantconv.runtime.engine import Engine

    src = open_source(str(models[fam]))
    opts = CalibOptions(calib=CALIB, nsamples=4, seqlen=32, algos=configs(algo, grid=5, **extra))
    layers = []
    out = tmp_path / "m.gguf"
    export(src, out, "sf4:group=32", algo=algo, calib=opts, on_layer=lambda i, n, info: layers.append(info))
    assert len(layers) == src.config["num_hidden_layers"] and all("gptq_loss" in info for info in layers)
    with GGUFFile(out) as f:
        assert f.kv["quantconv.recipe.algo"] == algo
        if fam == "phi3":   # fused as llama.cpp's converter writes it
            assert "blk.0.attn_qkv.weight" in f and "blk.0.attn_q.weight" not in f
            assert f.tensor("blk.0.attn_qkv.weight").dtype.spec == "sf4:group=32"
    logits = Engine(out, n_ctx=64).eval(list(range(3, 43)), all_logits=True)
    assert np.all(np.isfinite(logits))


def test_self_calibration_text_from_a_windowed_softcapped_model(models):
    """--calib self samples from the float model through the KV-cache step (gemma2: local layers,
    soft-capping): deterministic and in the vocabulary."""
    src = open_source(str(models["gemma2"]))
    a = calibration_ids("self", src, 2, 3 * SLIDING_WINDOW, seed=0)
    assert a.shape == (2, 3 * SLIDING_WINDOW) and torch.equal(a, calibration_ids("self", src, 2, 3 * SLIDING_WINDOW, seed=0))
    assert int(a.max()) < src.config["vocab_size"]
