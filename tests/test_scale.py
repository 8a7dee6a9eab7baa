"""The scale run's pieces on small shapes: the synthetic Llama-3.2 checkpoint is what transformers
would save, and the exporter's row-chunked read gives the same bytes as a whole read while never
loading a big tensor whole."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from quantconv.convert import export as export_mod
from quantconv.convert.sources import open_source

from tests.tiny_models import make_tiny_hf_model

REPO = Path(__file__).resolve().parent.parent


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """The 'tiny' scale (2 layers, 128256 vocab: a 49 M-value embedding), in two shards."""
    out = tmp_path_factory.mktemp("synthetic") / "llama32-tiny"
    return _bench("synthetic_model").generate(out, "tiny", shard_gb=0.05, log=lambda *a, **k: None)


@pytest.mark.slow
def test_synthetic_model_is_a_transformers_checkpoint(synthetic):
    import torch
    import transformers

    cfg = json.loads((synthetic / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_type"] == "llama3" and cfg["rope_parameters"]["factor"] == 32.0
    assert cfg["vocab_size"] == 128256 and cfg["tie_word_embeddings"] is True
    index = json.loads((synthetic / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2
    model = transformers.AutoModelForCausalLM.from_pretrained(synthetic)
    assert model.dtype == torch.bfloat16
    assert set(index["weight_map"]) == {n for n in model.state_dict() if n != "lm_head.weight"}
    emb = model.model.embed_tokens.weight.float()
    assert abs(emb.std().item() - 0.02) < 1e-3 and abs(emb.mean().item()) < 1e-4
    assert torch.all(model.model.norm.weight == 1)
    tok = transformers.AutoTokenizer.from_pretrained(synthetic)
    ids = tok("Quantization of 12345 weights")["input_ids"]
    assert ids[0] == 128000 and tok.decode(ids[1:]) == "Quantization of 12345 weights"
    assert torch.isfinite(model(torch.tensor([ids])).logits).all()


class _RowSpy:
    """A source that refuses to load `big` whole and records the row ranges read of it."""

    def __init__(self, source, big: str):   # big="": any tensor may be read whole
        self._s, self.big, self.ranges = source, big, []

    def __getattr__(self, name):
        return getattr(self._s, name)

    def load(self, name):
        assert name != self.big, f"{name} was loaded whole"
        return self._s.load(name)

    def load_rows(self, name, start, stop):
        if name == self.big:
            self.ranges.append((start, stop))
        return np.ascontiguousarray(self._s.load(name)[start:stop])


@pytest.mark.slow
def test_big_tensor_is_quantized_in_row_chunks_with_the_same_bytes(synthetic, tmp_path, monkeypatch):
    whole, chunked = tmp_path / "whole.gguf", tmp_path / "chunked.gguf"
    monkeypatch.setattr(export_mod, "ROW_CHUNK_VALUES", 1 << 40)
    export_mod.export(open_source(synthetic), whole, "sf4")
    monkeypatch.setattr(export_mod, "ROW_CHUNK_VALUES", 3_000_000)   # embedding: 7812 rows a chunk
    spy = _RowSpy(open_source(synthetic), "model.embed_tokens.weight")
    export_mod.export(spy, chunked, "sf4")
    assert len(spy.ranges) == -(-128256 // 7812) and spy.ranges[0] == (0, 7812) and spy.ranges[-1][1] == 128256
    assert whole.read_bytes() == chunked.read_bytes()


@pytest.mark.slow
def test_sources_chunk_only_where_they_read_row_ranges(synthetic, tmp_path):
    """HF folders read a row range alone; a GGUF source's load_rows would read the whole tensor per
    chunk, so its tensors go whole."""
    hf = open_source(synthetic)
    plans = {p.gguf_name: p for p in export_mod.plan_export(hf, "sf4", None, [])}
    assert export_mod._row_chunks(hf, plans["token_embd.weight"]) > 0
    gguf = tmp_path / "f16.gguf"
    export_mod.export(hf, gguf, "f16")
    src = open_source(gguf)
    embd = next(p for p in export_mod.plan_export(src, "sf4", None, []) if p.gguf_name == "token_embd.weight")
    assert export_mod._row_chunks(src, embd) == 0


def test_permuted_qk_rows_are_never_chunked(tmp_path, monkeypatch):
    """q/k rows move within a head when permuted for llama.cpp: those tensors are read whole, and the
    export is byte-identical to the unchunked one."""
    model = make_tiny_hf_model(tmp_path, arch="llama")
    src = _RowSpy(open_source(model), big="")
    monkeypatch.setattr(export_mod, "ROW_CHUNK_VALUES", 64 * 8)   # 8 rows of 64: every 2-D tensor is "big"
    plans = {p.hf_name: p for p in export_mod.plan_export(src, "sf4", None, [])}
    assert export_mod._row_chunks(src, plans["model.layers.0.self_attn.q_proj.weight"]) == 0
    assert export_mod._row_chunks(src, plans["model.layers.0.self_attn.k_proj.weight"]) == 0
    assert export_mod._row_chunks(src, plans["model.layers.0.mlp.up_proj.weight"]) == 8
    chunked = tmp_path / "chunked.gguf"
    export_mod.export(src, chunked, "sf4")
    monkeypatch.setattr(export_mod, "ROW_CHUNK_VALUES", 1 << 40)
    whole = tmp_path / "whole.gguf"
    export_mod.export(open_source(model), whole, "sf4")
    assert whole.read_bytes() == chunked.read_bytes()
