"""Calibration-based quantization: the torch decoder, the codecs' split API, GPTQ, AWQ / SmoothQuant
folding, activation quantization, Norm Tweaking, the layer-by-layer export and its bad inputs."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quantconv.convert import awq, smoothing  # noqa: E402
from quantconv.convert.act_quant import ACT_DTYPES, get_act_dtype  # noqa: E402
from quantconv.convert.calib import calibration_ids  # noqa: E402
from quantconv.convert import algorithms  # noqa: E402
from quantconv.convert.algorithms import (AWQ, GPTQ, NormTweak, SmoothQuant, by_stage, configs,  # noqa: E402
                                          parse_algo, recipe, with_algo)
from quantconv.convert.calibrate import CalibOptions  # noqa: E402
from quantconv.convert.export import export  # noqa: E402
from quantconv.convert.gptq import gptq, inverse_cholesky, rtn  # noqa: E402
from quantconv.convert.norm_tweak import distribution_loss, tweak  # noqa: E402
from quantconv.convert.sources import open_source  # noqa: E402
from quantconv.convert.torch_model import DecoderConfig, Head, Layer, Rope  # noqa: E402
from quantconv.errors import QuantconvError  # noqa: E402
from quantconv.formats.gguf_reader import GGUFFile  # noqa: E402
from quantconv.formats.registry import get_dtype  # noqa: E402
from tests.dtype_cases import ONE_PER_FAMILY, PIPELINE_VARIANTS, registry_specs  # noqa: E402
from tests.shared_data import data_file  # noqa: E402
from tests.tiny_models import make_tiny_hf_model  # noqa: E402

QUANTIZED = [s for s in registry_specs(PIPELINE_VARIANTS) if get_dtype(s).family != "float"]
FAMILIES = ONE_PER_FAMILY   # the (slower) GPTQ-vs-RTN check


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny"), "llama")


def _correlated_layer(rows=64, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    mix = torch.eye(cols) + torch.randn(cols, cols, generator=g) / 16
    X = torch.randn(1024, cols, generator=g) @ mix
    X[:, :4] *= 8                              # a few outlier channels, as in real activations
    return W, X


# --- the torch decoder ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,over", [("llama", {}), ("qwen2", {}), ("mistral", {}),
                                       ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                   "original_max_position_embeddings": 16}})])
def test_torch_decoder_matches_transformers(tmp_path, arch, over):
    transformers = pytest.importorskip("transformers")
    d = make_tiny_hf_model(tmp_path, arch, **over)
    src = open_source(str(d))
    cfg = DecoderConfig.from_source(src)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = torch.randint(0, 200, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        head, rope = Head(src, cfg), Rope(cfg, 40, "cpu")
        x = head.embed_tokens(ids)
        layers = [Layer(src, cfg, i) for i in range(cfg.n_layers)]
        for layer in layers:
            x = layer.forward(x, rope)
        assert (head.logits(x) - ref).abs().max().item() < 1e-4
        # the KV-cache step used to sample self-calibration text gives the same hidden states
        y, caches = [], [dict() for _ in layers]
        for pos in range(8):
            h = head.embed_tokens(ids[:, pos:pos + 1])
            for layer, cache in zip(layers, caches):
                h = layer.step(h, rope, pos, cache)
            y.append(h)
        x8 = head.embed_tokens(ids[:, :8])
        for layer in layers:
            x8 = layer.forward(x8, rope)
        assert (torch.cat(y, 1) - x8).abs().max().item() < 1e-4


# --- codecs: fit / encode / decode / pack ---------------------------------------------------------------

@pytest.mark.parametrize("spec", QUANTIZED)
def test_split_api_equals_quantize(spec):
    dt = get_dtype(spec)
    rng = np.random.default_rng(0)
    cols = 256
    w = (rng.standard_normal((8, cols)) * rng.choice([1e-3, 1, 30], (8, 1))).astype(np.float32)
    w[0, :] = 0
    blocks = w.reshape(-1, dt.block_for(cols))
    params = dt.codec.fit(blocks)
    codes = dt.codec.encode(blocks, params)
    assert np.array_equal(dt.codec.pack(codes, params).reshape(8, -1), dt.quantize(w))
    assert np.array_equal(dt.codec.decode(codes, params).reshape(w.shape).astype(np.float32), dt.fake_quantize(w))


# --- GPTQ -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", FAMILIES)
def test_gptq_beats_rtn_on_layer_output(spec):
    dt = get_dtype(spec)
    W, X = _correlated_layer()
    H = X.T @ X
    err = lambda q: ((X @ (q.values - W).T) ** 2).mean().item()  # noqa: E731
    r, g = rtn(W, dt), gptq(W, H, dt)
    assert err(g) < 0.8 * err(r), (err(g), err(r))
    for q in (r, g, gptq(W, H, dt, act_order=True)):
        # the file's bytes decode to exactly the values GPTQ worked with
        assert np.array_equal(dt.dequantize(q.packed(), W.shape), q.values.numpy())
    assert np.array_equal(r.packed(), dt.quantize(W.numpy()))      # RTN through GPTQ's path = export's RTN


def test_gptq_row_order_permutes_rows():
    dt = get_dtype("sf4")
    W, X = _correlated_layer(rows=16)
    q = gptq(W, X.T @ X, dt)
    order = np.arange(16)[::-1].copy()
    assert np.array_equal(q.packed(order), q.packed()[order])


def test_gptq_of_a_fused_matrix_is_gptq_of_its_row_blocks():
    """Why fused tensors (phi3's qkv_proj) are calibrated as their parts: given one Hessian, GPTQ rounds each
    row on its own, so the parts joined are the fused matrix's GPTQ — and the packed bytes the file gets
    (compact(), join_rows) are the fused result's."""
    from quantconv.convert.gptq import join_rows, split_rows

    dt = get_dtype("sf4:group=32")
    W, X = _correlated_layer(rows=48)
    H = X.T @ X
    fused = gptq(W, H, dt)
    parts = [gptq(W[a:b], H, dt) for a, b in ((0, 32), (32, 40), (40, 48))]
    joined = join_rows(parts)
    assert np.array_equal(joined.codes, fused.codes) and torch.allclose(joined.values, fused.values)
    assert np.array_equal(join_rows([p.compact() for p in parts]).packed(), fused.packed())
    assert np.array_equal(join_rows([p.compact() for p in split_rows(fused, [32, 8, 8])]).packed(), fused.packed())
    assert joined.loss == pytest.approx(fused.loss, rel=1e-4)


def test_hessian_nan_and_dampening():
    with pytest.raises(QuantconvError, match="NaN"):
        inverse_cholesky(torch.full((4, 4), float("nan")), 0.01, "test")
    # slightly indefinite: 1% dampening fails, the retry at 10% succeeds
    H = torch.diag(torch.tensor([1.0, 1.0, -0.05]))
    U = inverse_cholesky(H, 0.01, "test")
    assert torch.isfinite(U).all()
    with pytest.raises(QuantconvError, match="singular"):
        inverse_cholesky(-torch.eye(3), 0.01, "test")


# --- AWQ / SmoothQuant folding ----------------------------------------------------------------------------

def _layer_and_input(tiny):
    src = open_source(str(tiny))
    cfg = DecoderConfig.from_source(src)
    x = torch.randn(2, 24, cfg.hidden, generator=torch.Generator().manual_seed(2))
    return src, cfg, Layer(src, cfg, 0), x, Rope(cfg, 24, "cpu")


def test_scale_folding_keeps_float_outputs(tiny):
    src, cfg, layer, x, rope = _layer_and_input(tiny)
    with torch.no_grad():
        ref = layer.forward(x, rope)
        g = torch.Generator().manual_seed(3)
        for prev, linears in smoothing.mappings(layer):
            s = torch.rand(layer.w[linears[0]].shape[1], generator=g) * 4 + 0.25
            smoothing.fold(layer, prev, linears, s)
        assert (layer.forward(x, rope) - ref).abs().max().item() < 1e-5


def test_smoothquant_migration_keeps_outputs_and_flattens_activations(tiny):
    src, cfg, layer, x, rope = _layer_and_input(tiny)
    with torch.no_grad():
        x[..., 3] *= 40                      # an outlier channel in the residual stream
        ref = layer.forward(x, rope)
        xn = layer.attn_input(x).reshape(-1, cfg.hidden)
        before = xn.abs().amax(0)
        s = smoothing.smoothquant_scales(before, [layer.w[n] for n in ("attn_q", "attn_k", "attn_v")], 0.5)
        smoothing.fold(layer, "attn_norm", ("attn_q", "attn_k", "attn_v"), s)
        after = layer.attn_input(x).reshape(-1, cfg.hidden).abs().amax(0)
        assert (layer.forward(x, rope) - ref).abs().max().item() < 1e-5
        assert (after.max() / after.median()) < (before.max() / before.median())


def test_awq_search_never_worse_than_plain_rtn(tiny):
    src, cfg, layer, x, rope = _layer_and_input(tiny)
    dt = get_dtype("int4:group=32")
    xs = layer.attn_input(x).reshape(-1, cfg.hidden)
    names = ("attn_q", "attn_k", "attn_v")
    with torch.no_grad():
        ref = torch.cat([xs @ layer.w[n].T for n in names], 1)
        plain = torch.cat([xs @ awq.fake_quant(layer.w[n], dt).T for n in names], 1)
        alpha, s = awq.search_scale(layer, "attn_norm", names, xs, {n: dt for n in names}, n_grid=10)
        scaled = torch.cat([xs @ (awq.fake_quant(layer.w[n] * s, dt) / s).T for n in names], 1)
    assert ((scaled - ref) ** 2).mean() <= ((plain - ref) ** 2).mean() + 1e-12
    w = layer.w["attn_v"]
    clipped = awq.search_clip(w, xs, dt, n_grid=10)
    assert clipped.abs().max() <= w.abs().max()


# --- activation quantization ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in ACT_DTYPES if n != "int8"])
def test_act_quant_matches_weight_codec(name):
    spec = {"mxint8": "mxint8", "mxfp8": "mxfp8", "mxfp6": "mxfp6", "mxfp4": "mxfp4"}[name]
    x = (torch.randn(4, 64) * torch.tensor([[1e-3], [1.0], [50.0], [0.0]])).float()
    got = ACT_DTYPES[name].fake_quantize(x).numpy()
    assert np.array_equal(got, get_dtype(spec).fake_quantize(x.numpy()))


def test_act_quant_int8_per_token():
    x = torch.tensor([[1.0, -2.0, 3.0, 127.0], [0.0, 0.0, 0.0, 0.0], [0.5, 1.5, -2.5, 127.0]])
    y = get_act_dtype("int8").fake_quantize(x)
    assert torch.equal(y[:2], x[:2])
    assert y[2].tolist() == [0.0, 2.0, -2.0, 127.0]          # ties to even, one scale per token
    with pytest.raises(QuantconvError, match="act-dtype"):
        get_act_dtype("fp3")


# --- Norm Tweaking -----------------------------------------------------------------------------------------

def test_norm_tweak_lowers_distribution_loss(tiny):
    src, cfg, layer, x, rope = _layer_and_input(tiny)
    with torch.no_grad():
        yf = layer.forward(x, rope)
        for n in layer.w:
            layer.w[n] = rtn(layer.w[n], get_dtype("int3:group=32")).values
    before, after = tweak(layer, x, yf, rope, lambda l, a, r: l.forward(a, r), lr=1e-3, chunk=1, epochs=20)
    assert after < before
    with torch.no_grad():
        per_chunk = sum(distribution_loss(layer.forward(x[i:i + 1], rope), yf[i:i + 1]).item() for i in range(2))
        assert per_chunk == pytest.approx(after, rel=1e-4)      # the layer keeps the tweaked norms


# --- the export pipeline ------------------------------------------------------------------------------------

def test_calibration_windows_and_errors(tiny, tmp_path):
    src = open_source(str(tiny))
    valid = data_file("wikitext-2-valid.txt")
    a = calibration_ids(str(valid), src, 4, 32, seed=1)
    assert a.shape == (4, 32) and torch.equal(a, calibration_ids(str(valid), src, 4, 32, seed=1))
    assert not torch.equal(a, calibration_ids(str(valid), src, 4, 32, seed=2))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(QuantconvError, match="empty"):
        calibration_ids(str(empty), src, 4, 32)
    short = tmp_path / "short.txt"
    short.write_text("a few words only")
    with pytest.raises(QuantconvError, match="fewer than --nsamples x --seqlen"):
        calibration_ids(str(short), src, 4, 32)
    with pytest.raises(QuantconvError, match="does not exist"):
        calibration_ids(str(tmp_path / "missing.txt"), src, 4, 32)
    ids = calibration_ids("self", src, 2, 12, seed=0)
    assert ids.shape == (2, 12) and torch.equal(ids, calibration_ids("self", src, 2, 12, seed=0))


def test_parse_algo():
    assert parse_algo("awq+gptq") == ("awq", "gptq")
    for bad in ("foo", "rtn+gptq", "", "norm_tweak"):
        with pytest.raises(QuantconvError):
            parse_algo(bad)
    with pytest.raises(QuantconvError, match="--norm-tweak"):   # a flag algorithm is not named in --algo
        parse_algo("gptq+norm_tweak")


def test_algorithm_configs_stages_and_recipe():
    # each option goes to the chosen algorithm that has it; a flag algorithm comes with its option
    chosen = configs("smoothquant+gptq", act_order=True, alpha=0.7, grid=3, norm_tweak=True)
    assert chosen == (SmoothQuant(alpha=0.7), GPTQ(act_order=True), NormTweak())
    with pytest.raises(TypeError):
        configs("gptq", act_ordr=True)
    # the file's recipe keys, in the order files have always had them (norm_tweak recorded when off)
    assert recipe(chosen) == {"act_order": 1, "scale_search": 0, "alpha": 0.7, "norm_tweak": 1}
    assert recipe(configs("awq")) == {"norm_tweak": 0}
    # smoothing before rounding, SmoothQuant before AWQ, RTN when nothing else rounds
    stages = by_stage(configs("gptq+awq+smoothquant"))
    assert [a.name for a, _ in stages["smooth"]] == ["smoothquant", "awq"] and stages["round"][0][0].name == "gptq"
    assert by_stage(configs("awq"))["round"][0][0].name == "rtn"
    # export(): --algo's algorithms without a config run with defaults; a config --algo does not name is refused
    assert with_algo((GPTQ(damp=0.1), NormTweak()), ("awq", "gptq")) == (AWQ(), GPTQ(damp=0.1), NormTweak())
    with pytest.raises(QuantconvError, match="does not name"):
        with_algo((GPTQ(),), ("awq",))


def test_registered_algorithm_runs_and_is_recorded(tiny, tmp_path, monkeypatch):
    """Adding an algorithm: a config, a step, one register call."""
    from dataclasses import dataclass

    monkeypatch.setattr(algorithms, "REGISTRY", dict(algorithms.REGISTRY))
    seen = []

    @dataclass
    class Probe:
        tag: int = 0

    @algorithms.register("probe", Probe, "smooth", recipe=lambda c: {"probe_tag": c.tag})
    def _probe(cfg, ctx):
        seen.append((ctx.layer.i, "gptq_loss" in ctx.info))   # runs before rounding

    src = open_source(str(tiny))
    out = tmp_path / "m.gguf"
    opts = CalibOptions(calib=str(data_file("wikitext-2-valid.txt")), nsamples=2, seqlen=32,
                        algos=configs("probe+gptq", tag=7))
    export(src, out, "sf4:group=32", algo="probe+gptq", calib=opts)
    assert seen == [(i, False) for i in range(src.config["num_hidden_layers"])]
    with GGUFFile(out) as f:
        assert f.kv["quantconv.recipe.algo"] == "probe+gptq" and f.kv["quantconv.recipe.probe_tag"] == 7


@pytest.mark.parametrize("algo,extra", [("gptq", {}), ("awq+gptq", {}), ("smoothquant+gptq", {"act_dtype": "int8"}),
                                        ("gptq", {"norm_tweak": True, "act_order": True}), ("awq", {})])
def test_calibrated_export_runs(tiny, tmp_path, algo, extra):
    from quantconv.runtime.engine import Engine

    src = open_source(str(tiny))
    act = get_act_dtype(extra.pop("act_dtype", None))
    opts = CalibOptions(calib=str(data_file("wikitext-2-valid.txt")), nsamples=4, seqlen=32, act_dtype=act,
                        algos=configs(algo, grid=5, **extra))
    out = tmp_path / "m.gguf"
    layers = []
    export(src, out, "sf4:group=32", algo=algo, calib=opts, on_layer=lambda i, n, info: layers.append(i))
    assert layers == list(range(src.config["num_hidden_layers"]))
    with GGUFFile(out) as f:
        assert f.kv["quantconv.recipe.algo"] == algo
        assert f.kv["quantconv.recipe.nsamples"] == 4
        if act:
            assert f.kv["quantconv.act_dtype"] == act.name
    logits = Engine(out, n_ctx=64).eval([1, 5, 9, 13], all_logits=True)
    assert np.all(np.isfinite(logits))


def test_gptq_export_lowers_output_error_vs_rtn(tiny, tmp_path):
    """The whole pipeline: a GPTQ file's logits are closer to the float model's than RTN's."""
    from quantconv.runtime.engine import Engine

    src = open_source(str(tiny))
    valid = str(data_file("wikitext-2-valid.txt"))
    ids = calibration_ids(valid, src, 1, 60, seed=99)[0].tolist()     # held-out text of the same kind
    export(src, tmp_path / "f32.gguf", "f32")
    ref = Engine(tmp_path / "f32.gguf", n_ctx=64, exact=True).eval(ids, all_logits=True)
    errs = {}
    for algo in ("rtn", "gptq"):
        opts = CalibOptions(calib=str(data_file("wikitext-2-valid.txt")), nsamples=16, seqlen=64)
        export(src, tmp_path / f"{algo}.gguf", "int3:group=32", algo=algo, calib=None if algo == "rtn" else opts)
        got = Engine(tmp_path / f"{algo}.gguf", n_ctx=64, exact=True).eval(ids, all_logits=True)
        errs[algo] = float(((got - ref) ** 2).mean())
    assert errs["gptq"] < errs["rtn"], errs


def test_layer_output_errors_logged(tiny):
    """Each layer logs its own and the accumulated output error; GPTQ's are below RTN's, and an 8-bit
    datatype's far below a 3-bit one's."""
    from quantconv.convert.calibrate import calibrate
    from quantconv.convert.export import plan_export

    src = open_source(str(tiny))
    ids = calibration_ids(str(data_file("wikitext-2-valid.txt")), src, 8, 64, seed=0)
    logs = {}
    for spec, algo in (("int3:group=32", "rtn"), ("int3:group=32", "gptq"), ("int8:group=32", "rtn")):
        dtypes = {p.hf_name: p.dtype for p in plan_export(src, spec, None, []) if p.role == "linear" and p.hf_name}
        res = calibrate(src, dtypes, ids, CalibOptions(algos=configs(algo), calib="x", nsamples=8, seqlen=64, error_samples=2))
        logs[spec, algo] = [(info["layer_rel_err"], info["model_rel_err"]) for info in res.layers]
    for log in logs.values():
        assert len(log) == src.config["num_hidden_layers"] and all(0 < e < 1 for pair in log for e in pair)
        assert log[0][0] == pytest.approx(log[0][1])        # layer 0: same input, so the same error
    rtn3, gptq3, rtn8 = (np.array(logs[k]) for k in logs)
    assert gptq3[:, 0].mean() < rtn3[:, 0].mean() and gptq3[-1, 1] < rtn3[-1, 1]
    assert rtn8[:, 0].max() < rtn3[:, 0].min() / 20


def test_calibrated_export_bad_inputs_leave_no_file(tiny, tmp_path):
    src = open_source(str(tiny))
    out = tmp_path / "m.gguf"
    with pytest.raises(QuantconvError, match="--calib"):
        export(src, out, "sf4", algo="gptq")
    with pytest.raises(QuantconvError, match="fewer than"):
        export(src, out, "sf4", algo="gptq", calib=CalibOptions(calib=str(data_file("wikitext-2-valid.txt")),
                                                                 nsamples=100000, seqlen=512))
    with pytest.raises(QuantconvError, match="cuda|CUDA"):
        if torch.cuda.is_available():
            raise QuantconvError("cuda present: nothing to check")
        export(src, out, "sf4", algo="gptq", calib=CalibOptions(calib="self", device="cuda"))
    assert list(tmp_path.iterdir()) == []


# --- sweep and analyze -------------------------------------------------------------------------------------

def test_sweep_writes_table_json_plot_and_resumes(tiny, tmp_path):
    import json

    from quantconv.sweep import SweepSpec, run_sweep

    spec = SweepSpec(["int4:group=32"], ["rtn", "gptq"], data_file("wikitext-2-raw-test.txt"), tmp_path / "sw",
                     calib=str(data_file("wikitext-2-valid.txt")), nsamples=4, seqlen=32, ctx=32, windows=2,
                     threads=1)
    rows = run_sweep(open_source(str(tiny)), spec, log=lambda m: None)
    assert [(r["dtype"], r["algo"]) for r in rows] == [("f16", "rtn"), ("int4:group=32", "rtn"),
                                                       ("int4:group=32", "gptq")]
    assert all(r["ppl"] > 1 and r["decode_tok_s"] > 0 for r in rows)
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert "| int4:group=32 | gptq |" in md and (tmp_path / "sw" / "sweep.png").stat().st_size > 1000
    assert not list((tmp_path / "sw" / "files").iterdir())          # exports deleted unless --keep-files
    before = json.loads((tmp_path / "sw" / "sweep.json").read_text())["rows"]
    spec.algos = ["rtn", "gptq", "awq"]
    spec.nsamples = 4
    rows = run_sweep(open_source(str(tiny)), spec, log=lambda m: None)     # resumes: only awq is new
    assert [r["ppl"] for r in rows[:3]] == [r["ppl"] for r in before] and rows[3]["algo"] == "awq"
    # rows resumed from a run without the benchmark get their decode speed filled in (per dtype)
    state = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    for r in state["rows"]:
        r["decode_tok_s"] = None
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps(state))
    rows = run_sweep(open_source(str(tiny)), spec, log=lambda m: None)
    assert all(r["decode_tok_s"] > 0 for r in rows) and len(rows) == 4
    assert len({r["decode_tok_s"] for r in rows if r["dtype"] == "int4:group=32"}) == 1


def test_analyze_fits_student_t(tiny, tmp_path):
    from scipy import stats

    from quantconv.convert import analyze

    heavy = stats.t.rvs(4.0, scale=0.02, size=50_000, random_state=np.random.default_rng(0))
    fit = analyze.fit_t("x", "weight", heavy)
    assert 3.0 < fit.nu < 5.5 and fit.t_loglik > fit.normal_loglik
    fits = analyze.weight_fits(open_source(str(tiny)))
    assert len(fits) == 7 * 2 and all(f.kind == "weight" for f in fits)
    acts = analyze.activation_fits(open_source(str(tiny)), str(data_file("wikitext-2-valid.txt")), 2, 32)
    assert {f.name.split(".")[-1] for f in acts} == {"attn_in", "mlp_in", "down_in"}
    analyze.plot_fits(fits + acts, tmp_path / "fits.png")
    assert (tmp_path / "fits.png").stat().st_size > 1000


# --- CLI --------------------------------------------------------------------------------------------------

def test_cli_calibrated_export_and_errors(tiny, tmp_path):
    from typer.testing import CliRunner

    from quantconv.cli import app

    runner = CliRunner()
    valid = str(data_file("wikitext-2-valid.txt"))
    out = tmp_path / "m.gguf"
    r = runner.invoke(app, ["export", str(tiny), "-o", str(out), "--dtype", "sf4:group=32", "--algo", "gptq",
                            "--calib", valid, "--nsamples", "2", "--seqlen", "32", "--act-order", "--scale-search", "-q"])
    assert r.exit_code == 0, r.output
    with GGUFFile(out) as f:
        assert f.kv["quantconv.recipe.act_order"] == 1 and f.kv["quantconv.recipe.scale_search"] == 1
    out.unlink()
    for args, msg in ((["--algo", "gptq"], "--calib"), (["--algo", "gptq", "--calib", valid, "--nsamples", "99999"],
                                                         "fewer than"),
                      (["--dtype", "nf4", "--nu", "3"], "--nu applies to sf4"),
                      (["--algo", "gptq", "--calib", valid, "--act-dtype", "fp3"], "act-dtype")):
        r = runner.invoke(app, ["export", str(tiny), "-o", str(out), *args])
        assert r.exit_code == 2 and msg in r.output, r.output
        assert not out.exists()
