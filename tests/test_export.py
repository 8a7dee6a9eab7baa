"""`quantconv export` / `dtypes` / `inspect` end to end on tiny local models, and every bad input the
foundation issue lists: one clear line, exit status 2, no output file left behind."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from quantconv.cli import app
from quantconv.convert.export import export
from quantconv.formats.models import permute_qk
from quantconv.convert.sources import open_source
from quantconv.formats.gguf_reader import GGUFFile
from quantconv.formats.registry import get_dtype
from tests.dtype_cases import PIPELINE_VARIANTS, registry_specs
from tests.tiny_models import make_tiny_hf_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny"), arch="llama")


def run_cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def expected_linear(model_dir: Path, hf_name: str, n_head: int | None) -> np.ndarray:
    from safetensors.numpy import load_file
    tensors = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(f))
    w = tensors[hf_name].astype(np.float32)
    return permute_qk(w, n_head) if n_head else w


@pytest.mark.parametrize("spec", registry_specs(PIPELINE_VARIANTS))
def test_export_every_dtype_writes_exactly_the_registry_bytes(tiny, tmp_path, spec):
    out = tmp_path / "m.gguf"
    fixed = get_dtype(spec).standard or get_dtype(spec).family in ("mx", "bfp", "bmf", "blog")
    group = None if fixed else 32
    report = export(open_source(str(tiny)), out, spec, group_size=group)
    with GGUFFile(out) as f:
        names = {t.name for t in f.tensors}
        assert "blk.0.attn_q.weight" in names and "output.weight" in names
        for gguf_name, hf_name, heads in [("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 4),
                                          ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", 2),
                                          ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight", None)]:
            info = f.tensor(gguf_name)
            want = expected_linear(tiny, hf_name, heads)
            dtype = info.dtype
            assert dtype.name == get_dtype(spec).name
            np.testing.assert_array_equal(f.dequantize(gguf_name), dtype.fake_quantize(want))
        assert f.tensor("blk.0.attn_norm.weight").dtype.spec == "f32"
        assert f.kv["quantconv.recipe.dtype"] == get_dtype(spec).spec
        assert f.kv["quantconv.recipe.algo"] == "rtn"
        assert f.kv["general.architecture"] == "llama"
        assert f.kv["llama.block_count"] == 2 and f.kv["llama.attention.head_count_kv"] == 2
        assert len(f.kv["tokenizer.ggml.tokens"]) == 320
    assert report.linear_bits_per_weight > 0


def test_gguf_source_round_trip_is_lossless_for_f32(tiny, tmp_path):
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    export(open_source(str(tiny)), first, "f32")
    export(open_source(str(first)), second, "f32")
    with GGUFFile(first) as a, GGUFFile(second) as b:
        assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
        for t in a.tensors:
            np.testing.assert_array_equal(a.dequantize(t.name), b.dequantize(t.name))
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "llama.rope.freq_base"):
            assert a.kv[key] == b.kv[key]


@pytest.mark.parametrize("arch,tied,dtype", [("qwen2", False, "bfloat16"), ("mistral", True, "float16")])
def test_other_architectures_and_storage_types(tmp_path, arch, tied, dtype):
    model = make_tiny_hf_model(tmp_path, arch=arch, dtype=dtype, tied=tied)
    out = tmp_path / "m.gguf"
    export(open_source(str(model)), out, "q8_0")
    with GGUFFile(out) as f:
        names = {t.name for t in f.tensors}
        assert ("output.weight" in names) == (not tied)
        if arch == "qwen2":
            assert f.kv["general.architecture"] == "qwen2" and "blk.0.attn_q.bias" in names
            assert f.tensor("blk.0.attn_q.bias").dtype.spec == "f32"


def test_keep_overrides_and_defaults(tiny, tmp_path):
    out = tmp_path / "m.gguf"
    export(open_source(str(tiny)), out, "nf4", group_size=32, keep=["token_embd*=f16", "blk.1.ffn_*=int8"])
    with GGUFFile(out) as f:
        assert f.tensor("token_embd.weight").dtype.spec == "f16"
        assert f.tensor("output.weight").dtype.spec == "q8_0"          # default for the head
        assert f.tensor("blk.1.ffn_up.weight").dtype.spec == "int8:group=64"   # 64-wide rows
        assert f.tensor("blk.0.ffn_up.weight").dtype.spec == "nf4:group=32"


def test_default_group_falls_back_and_explicit_group_is_an_error(tiny, tmp_path):
    report = export(open_source(str(tiny)), tmp_path / "a.gguf", "sf4")      # default g128, rows of 64
    assert any("used 64" in n for n in report.notes)
    code, _, err = run_cli("export", tiny, "-o", tmp_path / "b.gguf", "--dtype", "sf4", "--group-size", "128")
    assert code == 2 and "does not divide" in err and not (tmp_path / "b.gguf").exists()


def test_cli_export_inspect_and_dtypes(tiny, tmp_path):
    out = tmp_path / "m.gguf"
    code, stdout, err = run_cli("export", tiny, "-o", out, "--dtype", "mxfp4", "-q")
    assert code == 0, err
    assert "wrote" in stdout and out.exists()
    code, stdout, _ = run_cli("inspect", out, "--json")
    info = json.loads(stdout)
    assert info["summary"]["linear_types"] == ["mxfp4"]
    assert abs(info["summary"]["linear_bits_per_weight"] - 4.25) < 1e-9
    assert info["recipe"]["dtype"] == "mxfp4"
    code, stdout, _ = run_cli("dtypes", "--json", "sf4:nu=3", "int4:asym")
    rows = json.loads(stdout)
    assert [r["name"] for r in rows] == ["sf4:nu=3", "int4:asym"]
    assert rows[0]["codebook"][7] == 0 and rows[0]["standard"] is False
    code, stdout, _ = run_cli("dtypes", "--json")
    assert {r["name"] for r in json.loads(stdout)} >= {"nf4", "sf4", "mxfp4", "q8_0", "bfp", "bmf", "blog"}


# --- bad inputs -----------------------------------------------------------------------------------------
def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def bad_inputs(tiny: Path, tmp: Path):
    """(case name, CLI args, text the error must contain)."""
    import shutil

    no_config = tmp / "no-config"
    shutil.copytree(tiny, no_config)
    (no_config / "config.json").unlink()

    gpt2 = tmp / "gpt2"
    shutil.copytree(tiny, gpt2)
    cfg = json.loads((gpt2 / "config.json").read_text())
    cfg.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (gpt2 / "config.json").write_text(json.dumps(cfg))

    truncated = tmp / "truncated"
    shutil.copytree(tiny, truncated)
    st = next(truncated.glob("*.safetensors"))
    _truncate(st, st.stat().st_size // 2)

    nan = tmp / "nan"
    shutil.copytree(tiny, nan)
    st = next(nan.glob("*.safetensors"))
    from safetensors.numpy import load_file, save_file
    tensors = load_file(st)
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    save_file(tensors, st, metadata={"format": "pt"})

    good_gguf = tmp / "good.gguf"
    export(open_source(str(tiny)), good_gguf, "q8_0")
    bad_gguf = tmp / "bad.gguf"
    bad_gguf.write_bytes(good_gguf.read_bytes()[: good_gguf.stat().st_size - 1000])

    return [
        ("missing dir", [tmp / "nope"], "no such"),
        ("missing config", [no_config], "config.json"),
        ("unsupported architecture", [gpt2], "unsupported architecture"),
        ("truncated safetensors", [truncated], "truncated"),
        ("truncated gguf", [bad_gguf], "truncated"),
        ("unknown dtype", [tiny, "--dtype", "int17"], "unknown datatype"),
        ("group not dividing", [tiny, "--dtype", "int4", "--group-size", "256"], "does not divide"),
        ("nan weights", [nan], "NaN"),
        ("bad keep", [tiny, "--keep", "token_embd"], "GLOB=DTYPE"),
        ("bad algo", [tiny, "--algo", "magic"], "--algo"),
    ]


def test_bad_inputs_give_one_line_exit_2_and_no_output(tiny, tmp_path):
    for case, args, needle in bad_inputs(tiny, tmp_path):
        out = tmp_path / f"{case.replace(' ', '-')}.gguf"
        code, stdout, err = run_cli("export", *args, "-o", out, "-q")
        lines = [l for l in err.strip().splitlines() if l.strip()]
        assert code == 2, f"{case}: exit {code}: {err}"
        assert len(lines) == 1 and lines[0].startswith("error:"), f"{case}: {err!r}"
        assert needle.lower() in lines[0].lower(), f"{case}: {lines[0]}"
        assert not out.exists(), f"{case}: left {out}"
        assert not [p for p in os.listdir(tmp_path) if ".tmp" in p], f"{case}: left a temporary file"


def test_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli("export", "HuggingFaceTB/not-a-cached-model", "-o", tmp_path / "x.gguf", "-q")
    assert code == 2 and "offline" in err.lower()


def test_inspect_refuses_a_non_gguf_file(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    code, _, err = run_cli("inspect", junk)
    assert code == 2 and "junk.gguf" in err


# --- the model families ----------------------------------------------------------------------------------


def _family_case(tmp_path: Path, family: str, name: str, edit) -> Path:
    """A copy of a tiny `family` model whose config.json went through edit(cfg)."""
    import shutil

    base = tmp_path / "base" / family
    if not base.exists():
        make_tiny_hf_model(base, family)
    src = next(base.iterdir())
    folder = tmp_path / f"{family}-{name}"
    shutil.copytree(src, folder)
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


FAMILY_BAD_CONFIGS = [  # (family, what, edit of config.json, words the one error line must hold)
    ("qwen3", "unknown architecture",
     lambda c: c.update(architectures=["FooForCausalLM"], model_type="foo"),
     ["unsupported architecture 'FooForCausalLM'", "qwen3", "gemma2", "gemma3", "phi3", "llama"]),
    ("gemma3-vlm", "unknown vision-language model",  # its text_config's model_type must not decide
     lambda c: c.update(architectures=["LlavaForConditionalGeneration"], model_type="llava"),
     ["unsupported architecture 'LlavaForConditionalGeneration'"]),
    ("gemma2", "no hidden_size", lambda c: c.pop("hidden_size"), ["'hidden_size'"]),
    ("gemma2", "no sliding_window", lambda c: c.pop("sliding_window"), ["'sliding_window'"]),
    ("gemma3", "no num_hidden_layers", lambda c: c.pop("num_hidden_layers"), ["'num_hidden_layers'"]),
    ("gemma3", "no head_dim", lambda c: c.pop("head_dim"), ["rows", "head_dim"]),
    ("qwen3", "no num_key_value_heads", lambda c: c.pop("num_key_value_heads"), ["rows", "num_key_value_heads"]),
    ("phi3", "no original context", lambda c: c.pop("original_max_position_embeddings"),
     ["'original_max_position_embeddings'"]),
    ("phi3", "no vocab_size", lambda c: c.pop("vocab_size"), ["'vocab_size'"]),
    ("gemma3", "layer pattern", lambda c: c.update(layer_types=["full_attention"] * 6), ["layer_types"]),
    ("phi3-longrope", "short LongRoPE factors", lambda c: c["rope_parameters"].update(long_factor=[1.0, 2.0]),
     ["long_factor", "4 values"]),
]


@pytest.mark.parametrize("family,what,edit,words", FAMILY_BAD_CONFIGS, ids=[c[1] for c in FAMILY_BAD_CONFIGS])
def test_bad_family_configs_name_the_problem(tmp_path, family, what, edit, words):
    folder = _family_case(tmp_path, family, what.replace(" ", "-"), edit)
    out = tmp_path / "out.gguf"
    code, _, err = run_cli("export", folder, "-o", out, "--dtype", "q8_0", "-q")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), f"{what}: exit {code}: {err!r}"
    for word in words:
        assert word in lines[0], f"{what}: {lines[0]}"
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_export_help_lists_the_families_of_models_yaml():
    from quantconv.formats.models import all_archs

    code, stdout, _ = run_cli("export", "--help")
    text = " ".join(stdout.split())  # rich wraps the help text
    assert code == 0
    for name, arch in all_archs().items():
        assert f"{name} ({arch.hf_architectures[0]})" in text, name


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3", "phi3", "llama3"])
def test_cli_exports_every_family(tmp_path, family):
    model = make_tiny_hf_model(tmp_path, family)
    out = tmp_path / f"{family}.gguf"
    code, stdout, err = run_cli("export", model, "-o", out, "--dtype", "q4_0", "-q")
    assert code == 0, err
    with GGUFFile(out) as f:
        assert f.kv["general.architecture"] == {"llama3": "llama"}.get(family, family)
        assert {t.dtype.spec for t in f.tensors if t.name.startswith("blk.0.") and len(t.shape) == 2} == {"q4_0"}
