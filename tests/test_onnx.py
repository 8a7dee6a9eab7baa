"""ONNX export (convert/onnx_export.py, formats/onnx/) and its onnxruntime runner: logits parity with
transformers and with quantconv's engine on tiny random models, KV-cache decode, every weight equal bit
for bit to the GGUF export of the same recipe, flavors, metadata, errors and atomic writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from quantconv.formats.models import unpermute_qk  # noqa: E402
from quantconv.convert.onnx_export import export_onnx, gguf_to_onnx  # noqa: E402
from quantconv.convert.sources import open_source  # noqa: E402
from quantconv.errors import QuantconvError  # noqa: E402
from quantconv.formats.gguf_reader import GGUFFile  # noqa: E402
from quantconv.runtime.engine import Engine  # noqa: E402
from quantconv.runtime.onnx_runner import OnnxEngine, dequantized_weights, generate_text  # noqa: E402
from quantconv.formats.tokenizer import Tokenizer  # noqa: E402
from tests.tiny_models import TINY, VOCAB_SIZE, make_tiny_hf_model  # noqa: E402

TOL = 1e-3
SEQ = 40
SHARP = {"initializer_range": 0.1}   # O(1) logits: a wrong RoPE/mask/head mapping shows (test_engine.py)


def tokens(n: int = SEQ, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB_SIZE, n)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-hf")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            pytest.importorskip("torch")
            arch, tied = {"llama": ("llama", False), "qwen2": ("qwen2", False), "llama-tied": ("llama", True)}[name]
            cache[name] = make_tiny_hf_model(root / name, arch=arch, tied=tied, **SHARP)
        return cache[name]

    return get


def hf_logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)[None]).logits[0].float().numpy()


def gguf_weight(f: GGUFFile, name: str) -> np.ndarray:
    """The GGUF's dequantized tensor in HF row order (llama-arch q/k rows are stored permuted)."""
    w = f.dequantize(name)
    if f.kv["general.architecture"] == "llama":
        heads = {".attn_q.": f.kv["llama.attention.head_count"], ".attn_k.": f.kv["llama.attention.head_count_kv"]}
        for part, n in heads.items():
            if part in name:
                w = unpermute_qk(w, n)
    return w


# ---- float export: the graph itself ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["llama", "qwen2", "llama-tied"])
def test_f32_logits_match_transformers_and_decode_matches_prefill(hf, tmp_path, name):
    out = tmp_path / "m.onnx"
    report = export_onnx(open_source(str(hf(name))), out, "f32")
    onnx.checker.check_model(str(out))
    assert report.file_bytes == out.stat().st_size
    ids = tokens()
    ref = hf_logits(hf(name), ids)
    with OnnxEngine(out, n_ctx=64, n_threads=2) as eng:
        full = eng.eval(ids, all_logits=True)
        assert full.shape == (SEQ, VOCAB_SIZE) and eng.n_past == SEQ
        eng.reset()
        split = 13
        mixed = np.concatenate([eng.eval(ids[:split], all_logits=True),
                                np.stack([eng.eval(ids[i:i + 1]) for i in range(split, SEQ)])])
    assert np.abs(full - ref).max() < TOL, np.abs(full - ref).max()
    np.testing.assert_allclose(mixed, full, rtol=0, atol=1e-4)


def test_io_names_and_cache_layout(hf, tmp_path):
    out = tmp_path / "m.onnx"
    export_onnx(open_source(str(hf("llama"))), out, "f16")
    model = onnx.load(str(out))
    ins = [i.name for i in model.graph.input]
    outs = [o.name for o in model.graph.output]
    L = TINY["num_hidden_layers"]
    assert ins[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert ins[3:] == [f"past_key_values.{i}.{k}" for i in range(L) for k in ("key", "value")]
    assert outs == ["logits"] + [f"present.{i}.{k}" for i in range(L) for k in ("key", "value")]
    dims = [d.dim_value or d.dim_param for d in model.graph.input[3].type.tensor_type.shape.dim]
    hd = TINY["hidden_size"] // TINY["num_attention_heads"]
    assert dims == ["batch_size", TINY["num_key_value_heads"], "past_sequence_length", hd]


def test_batch_with_left_padding(hf, tmp_path):
    """attention_mask really masks: a left-padded row scores like the unpadded sequence."""
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    export_onnx(open_source(str(hf("qwen2"))), out, "f32")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ids, pad = tokens(12), 5
    batch = np.stack([np.concatenate([np.zeros(pad, np.int64), ids[:12 - pad]]), ids])
    mask = np.stack([np.r_[np.zeros(pad), np.ones(12 - pad)], np.ones(12)]).astype(np.int64)
    pos = np.stack([np.r_[np.zeros(pad), np.arange(12 - pad)], np.arange(12)]).astype(np.int64)
    feed = {"input_ids": batch, "attention_mask": mask, "position_ids": pos}
    for i in range(TINY["num_hidden_layers"]):
        for k in ("key", "value"):
            feed[f"past_key_values.{i}.{k}"] = np.zeros((2, TINY["num_key_value_heads"], 0, 16), np.float32)
    logits = sess.run(["logits"], feed)[0]
    np.testing.assert_allclose(logits[0, pad:], logits[1, :12 - pad], rtol=0, atol=1e-4)


# ---- one test per encoding: weights bit for bit, logits vs quantconv's engine ----------------------
ENCODINGS = [  # (model, dtype, group, flavor, expected encoding of the linear layers, ONNX element/index)
    ("llama", "int4:asym", 32, "standard", "dq", "UINT4"),
    ("qwen2", "int4:asym", 32, "ort", "matmulnbits", None),
    ("llama", "int4", 32, "ort", "matmulnbits", None),
    ("qwen2", "int8", 32, "standard", "cast", "INT8"),
    ("llama-tied", "int8:asym", 32, "ort", "cast", "UINT8"),
    ("qwen2", "mxfp8", None, "standard", "dq", "FLOAT8E4M3FN"),
    ("llama-tied", "mxfp4", None, "standard", "table", "UINT4"),
    ("llama", "sf4", 32, "standard", "table", "UINT4"),
]


def assert_weights_bit_for_bit(out: Path, gguf: Path) -> None:
    """Every weight onnxruntime computes from the .onnx equals the GGUF's dequantization, bit for bit
    (a tied head too, as "token_embd.weight#head")."""
    weights = dequantized_weights(out)
    with GGUFFile(gguf) as f:
        tied = {"token_embd.weight#head"} if "output.weight" not in f else set()
        assert set(weights) == {t.name for t in f.tensors if len(t.shape) == 2} | tied
        for name, w in weights.items():
            want = gguf_weight(f, name.removesuffix("#head"))
            assert w.shape == want.shape
            # bits, except the sign of zero: a matmul probe (I @ W) sums -0 with +0 products into +0
            same = (np.ascontiguousarray(w, np.float32).view(np.uint32) == want.view(np.uint32)) | ((w == 0) & (want == 0))
            assert same.all(), f"{name}: {int((~same).sum())} values differ"


def assert_logits_match_engine(out: Path, gguf: Path, ids: np.ndarray) -> np.ndarray:
    with Engine(gguf, n_ctx=64, n_threads=2, exact=True) as eng:
        ref = eng.eval(ids.astype(np.int32), all_logits=True)
    with OnnxEngine(out, n_ctx=64, n_threads=2) as eng:
        got = eng.eval(ids, all_logits=True)
    assert np.abs(got - ref).max() < TOL, np.abs(got - ref).max()
    return got


@pytest.mark.parametrize("model, dtype, group, flavor, encoding, element", ENCODINGS)
def test_weights_bit_for_bit_and_logits_match_engine(hf, tmp_path, model, dtype, group, flavor, encoding, element):
    out, gguf = tmp_path / "m.onnx", tmp_path / "m.gguf"
    export_onnx(open_source(str(hf(model))), out, dtype, group_size=group, flavor=flavor, keep_gguf=gguf)
    props = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    encs = json.loads(props["quantconv.encodings"])
    q = encs["blk.0.attn_q.weight"]
    assert q["encoding"] == encoding and q.get("element", q.get("index")) == element
    assert props["quantconv.onnx_flavor"] == flavor and props["quantconv.recipe.dtype"].startswith(dtype.split(":")[0])
    if dtype == "sf4":
        with GGUFFile(gguf) as f:
            assert json.loads(props["quantconv.codebooks"])[f.tensor("blk.0.attn_q.weight").dtype.spec] == \
                list(f.tensor("blk.0.attn_q.weight").dtype.codebook)
    assert_weights_bit_for_bit(out, gguf)
    ids = tokens()
    got = assert_logits_match_engine(out, gguf, ids)
    with OnnxEngine(out, n_ctx=64, n_threads=2) as eng:
        dec = np.concatenate([eng.eval(ids[:30], all_logits=True), np.stack([eng.eval(ids[i:i + 1]) for i in range(30, SEQ)])])
    np.testing.assert_allclose(dec, got, rtol=0, atol=1e-4)


EMBEDDINGS = [  # token_embd dtype (tied head: the same initializers) -> encoding, element/index
    ("q8_0", "dq", "INT8"),
    ("int8:asym,group=32", "dq", "UINT8"),
    ("sf4", "table", "UINT8 (two 4-bit codes a byte)"),
    ("int4:asym,group=32", "table", "UINT8 (two 4-bit codes a byte)"),
    ("q4_0", "table", "UINT8 (two 4-bit codes a byte)"),
    ("mxfp8", "table", "UINT8"),
    ("bf16", "float", "BFLOAT16"),
]


@pytest.mark.parametrize("emb, encoding, element", EMBEDDINGS)
def test_embedding_rows_and_tied_head_bit_for_bit(hf, tmp_path, emb, encoding, element):
    """The embedding gathers only its rows' codes and scales; the tied head reuses the same initializers."""
    out, gguf = tmp_path / "m.onnx", tmp_path / "m.gguf"
    export_onnx(open_source(str(hf("llama-tied"))), out, "int4", group_size=32, keep=[f"token_embd.weight={emb}"],
                keep_gguf=gguf)
    e = json.loads({p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
                   ["quantconv.encodings"])["token_embd.weight"]
    assert e["encoding"] == encoding and e.get("element", e.get("index")) == element
    assert_weights_bit_for_bit(out, gguf)
    assert_logits_match_engine(out, gguf, tokens(16))


def test_every_family_converts_from_gguf(hf, tmp_path):
    """The remaining families through gguf_to_onnx: each weight's encoding is exact (checked in
    numpy at export), and the model runs close to the engine."""
    from quantconv.convert.export import export

    ids = tokens(16)
    for dtype in ("q4_0", "nvfp4", "mxfp6", "mxint8", "bfp", "blog", "int3:asym,group=32", "bf16"):
        gguf, out = tmp_path / "x.gguf", tmp_path / "x.onnx"
        export(open_source(str(hf("qwen2"))), gguf, dtype)
        gguf_to_onnx(gguf, out)
        with Engine(gguf, n_ctx=32, n_threads=2, exact=True) as eng:
            ref = eng.eval(ids.astype(np.int32), all_logits=True)
        with OnnxEngine(out, n_ctx=32, n_threads=2) as eng:
            assert np.abs(eng.eval(ids, all_logits=True) - ref).max() < TOL, dtype


# ---- metadata, tokenizer, generation ---------------------------------------------------------------
def test_tokenizer_and_recipe_travel_in_metadata(hf, tmp_path):
    out, gguf = tmp_path / "m.onnx", tmp_path / "m.gguf"
    export_onnx(open_source(str(hf("llama"))), out, "int8", group_size=32, keep_gguf=gguf)
    with GGUFFile(gguf) as f, OnnxEngine(out, n_ctx=64) as eng:
        text = "Hello world! The quick brown fox."
        assert Tokenizer.from_gguf_metadata(eng.kv).encode(text) == Tokenizer.from_gguf_metadata(f.kv).encode(text)
        assert eng.kv["quantconv.recipe.dtype"] == f.kv["quantconv.recipe.dtype"]
    assert isinstance(generate_text(out, "Hello", max_tokens=5, n_ctx=64), str)


def test_large_models_use_external_data(hf, tmp_path, monkeypatch):
    from quantconv.formats.onnx import io

    monkeypatch.setattr(io, "EXTERNAL_OVER", 0)
    out = tmp_path / "m.onnx"
    export_onnx(open_source(str(hf("qwen2"))), out, "f32")
    assert (tmp_path / "m.onnx.data").is_file() and out.stat().st_size < 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    onnx.checker.check_model(str(out))
    with OnnxEngine(out, n_ctx=32) as eng:
        assert np.abs(eng.eval(tokens(8), all_logits=True) - hf_logits(hf("qwen2"), tokens(8))).max() < TOL


# ---- errors ------------------------------------------------------------------------------------------
def test_unsupported_dtype_for_flavor_names_the_alternatives(hf, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(QuantconvError, match=r"--onnx-flavor standard.*int4.*q4_0"):
        export_onnx(open_source(str(hf("llama"))), out, "sf4", group_size=32, flavor="ort")
    with pytest.raises(QuantconvError, match="int3.* not a 2/4/8-bit"):
        export_onnx(open_source(str(hf("llama"))), out, "int3", group_size=32, flavor="ort")
    with pytest.raises(QuantconvError, match="standard, ort"):
        export_onnx(open_source(str(hf("llama"))), out, "int4", flavor="tensorrt")
    with pytest.raises(QuantconvError, match=r"\.onnx"):
        export_onnx(open_source(str(hf("llama"))), tmp_path / "m.gguf", "int4")
    assert list(tmp_path.iterdir()) == []


def test_no_partial_file_on_error(hf, tmp_path, monkeypatch):
    from quantconv.formats.onnx import io

    def broken_save(model, path, **kw):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.onnx, "save_model", broken_save)
    with pytest.raises(OSError):
        export_onnx(open_source(str(hf("llama"))), tmp_path / "m.onnx", "int4", group_size=32)
    assert list(tmp_path.iterdir()) == []


def test_not_a_quantconv_onnx_file_is_refused(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(QuantconvError, match="not a readable ONNX file"):
        OnnxEngine(bad)
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    onnx.save_model(helper.make_model(g), tmp_path / "y.onnx")
    with pytest.raises(QuantconvError, match="not written by quantconv"):
        OnnxEngine(tmp_path / "y.onnx")


# ---- onnxruntime-genai files ---------------------------------------------------------------------------
def test_ort_flavor_writes_genai_config_and_tokenizer(hf, tmp_path):
    """genai_config.json names what the graph has; a loop driven only by it (growing past, as genai runs
    with past_present_share_buffer false) generates what quantconv's runner does; tokenizer.json encodes as
    the GGUF's tokenizer does."""
    import tokenizers

    out, gguf = tmp_path / "model.onnx", tmp_path / "m.gguf"
    report = export_onnx(open_source(str(hf("llama-tied"))), out, "int4", group_size=32, flavor="ort", keep_gguf=gguf)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["genai_config.json", "m.gguf", "model.onnx", "tokenizer.json",
                                                          "tokenizer_config.json"]
    assert any("genai_config.json" in n for n in report.notes)
    cfg = json.loads((tmp_path / "genai_config.json").read_text())
    dec, L = cfg["model"]["decoder"], TINY["num_hidden_layers"]
    model = onnx.load(str(out), load_external_data=False)
    ins, outs = {i.name for i in model.graph.input}, {o.name for o in model.graph.output}
    assert dec["filename"] == "model.onnx" and cfg["search"]["past_present_share_buffer"] is False
    assert {dec["inputs"][k] for k in ("input_ids", "attention_mask", "position_ids")} <= ins
    assert {dec["inputs"]["past_key_names"] % i for i in range(L)} <= ins and dec["outputs"]["logits"] in outs
    assert dec["num_hidden_layers"] == L and dec["num_key_value_heads"] == TINY["num_key_value_heads"]
    assert dec["head_size"] * dec["num_attention_heads"] == TINY["hidden_size"]
    with GGUFFile(gguf) as f:
        ours = Tokenizer.from_gguf_metadata(f.kv)
        assert cfg["model"]["eos_token_id"] == f.kv["tokenizer.ggml.eos_token_id"]
    text = "Hello world! The quick brown fox jumps over the lazy dog 12345."
    assert tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text).ids == ours.encode(text)

    import onnxruntime as ort
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])   # genai's default options
    ids, nkv, hd = list(ours.encode(text)), dec["num_key_value_heads"], dec["head_size"]
    past = {dec["inputs"][f"past_{t}_names"] % i: np.zeros((1, nkv, 0, hd), np.float32) for i in range(L) for t in ("key", "value")}
    step, n, got = np.array([ids], np.int64), 0, []
    for _ in range(6):
        feed = {dec["inputs"]["input_ids"]: step, dec["inputs"]["attention_mask"]: np.ones((1, n + step.shape[1]), np.int64),
                dec["inputs"]["position_ids"]: np.arange(n, n + step.shape[1])[None], **past}
        res = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        past = {dec["inputs"][f"past_{t}_names"] % i: res[dec["outputs"][f"present_{t}_names"] % i]
                for i in range(L) for t in ("key", "value")}
        n += step.shape[1]
        got.append(int(res[dec["outputs"]["logits"]][0, -1].argmax()))
        step = np.array([[got[-1]]], np.int64)
    assert ours.decode(got) == generate_text(out, text, max_tokens=6, n_ctx=64)


def test_genai_config_only_for_the_ort_flavor_and_never_over_another_models(hf, tmp_path):
    export_onnx(open_source(str(hf("llama"))), tmp_path / "std.onnx", "int4", group_size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["std.onnx"]
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "other.onnx"}}}))
    report = export_onnx(open_source(str(hf("llama"))), tmp_path / "m.onnx", "int4", group_size=32, flavor="ort")
    assert json.loads((tmp_path / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "other.onnx"
    assert any("kept the existing" in n for n in report.notes) and not (tmp_path / "tokenizer.json").exists()


# ---- quantconv inspect model.onnx ----------------------------------------------------------------------
def test_inspect_onnx_lists_encodings_opsets_and_fallbacks(hf, tmp_path):
    from typer.testing import CliRunner

    from quantconv.cli import app

    runner = CliRunner()
    mx = tmp_path / "mx.onnx"
    r = runner.invoke(app, ["export", str(hf("qwen2")), "-o", str(mx), "--dtype", "mxfp4", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["inspect", str(mx), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["format"] == "onnx" and info["flavor"] == "standard" and info["opsets"] == {"ai.onnx": 24}
    assert info["graph_ops"] == "fused" and info["operators"]["Attention"] == TINY["num_hidden_layers"]
    assert "FLOAT4E2M1" in info["fallbacks"]["mxfp4"] and info["recipe"]["dtype"] == "mxfp4"
    q = next(t for t in info["tensors"] if t["name"] == "blk.0.attn_q.weight")
    assert q["encoding"] == "table" and q["element"] == "UINT4" and q["fallback"]
    assert set(q["initializers"]) == {"blk.0.attn_q.weight.codes", "blk.0.attn_q.weight.table", "blk.0.attn_q.weight.scales"}
    assert q["initializers"]["blk.0.attn_q.weight.scales"]["type"] == "FLOAT8E8M0"
    emb = next(t for t in info["tensors"] if t["name"] == "token_embd.weight")
    assert emb["encoding"] == "dq" and emb["element"] == "INT8" and not emb["fallback"]
    assert info["summary"]["bytes"] + info["summary"]["other_bytes"] <= info["file_bytes"]
    r = runner.invoke(app, ["inspect", str(mx)])
    assert r.exit_code == 0 and "fallbacks: mxfp4: FLOAT4E2M1" in " ".join(r.output.split())

    ort_file = tmp_path / "i4.onnx"
    r = runner.invoke(app, ["export", str(hf("llama")), "-o", str(ort_file), "--dtype", "int4:asym", "-g", "32",
                            "--onnx-flavor", "ort", "-q"])
    assert r.exit_code == 0, r.output
    info = json.loads(runner.invoke(app, ["inspect", str(ort_file), "--json"]).output)
    assert info["opsets"] == {"ai.onnx": 24, "com.microsoft": 1} and info["fallbacks"] == {}
    assert info["summary"]["encodings"]["matmulnbits"] == 7 * TINY["num_hidden_layers"]

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    r = runner.invoke(app, ["inspect", str(bad)])
    assert r.exit_code == 2 and "not a readable ONNX file" in r.output
