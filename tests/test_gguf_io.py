"""GGUF writer/reader: round trips, compatibility with gguf-py both ways, atomic output, and
truncated/corrupt/hostile files failing with a one-line QuantconvError instead of a crash."""
from __future__ import annotations

import math
import os
import struct
import time
import tracemalloc
import weakref

import gguf
import gguf.quants as gq
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf import GGUFValueType as VT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantconv.errors import QuantconvError
from quantconv.formats.gguf_reader import GGUFFile
from quantconv.formats.gguf_writer import GGUFWriter
from quantconv.formats.registry import dtype_from_gguf_type_id, get_dtype

RNG = np.random.default_rng(0)


def weights(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def pack(spec, w):
    return get_dtype(spec).quantize(w)


def write_file(path, tensors=(), kv=(), alignment=32):
    """tensors: (name, spec, float weights); returns {name: packed bytes}."""
    packed = {}
    with GGUFWriter(path, alignment=alignment) as w:
        for k, v, *vt in kv:
            w.add_kv(k, v, *vt)
        for name, spec, arr in tensors:
            w.add_tensor(name, arr.shape, get_dtype(spec))
        w.write_header()
        for name, spec, arr in tensors:
            packed[name] = pack(spec, arr)
            w.write_tensor(name, packed[name])
    return packed


def sample_file(path):
    """A small file with metadata, a quantconv type (with descriptor), ggml types and a 1-D tensor."""
    tensors = [("blk.0.attn_q.weight", "q8_0", weights((4, 64), 1)),
               ("blk.0.ffn_up.weight", "fp4-sr:flip", weights((2, 256), 2)),
               ("blk.0.attn_norm.weight", "f32", weights((64,), 3))]
    write_file(path, tensors, kv=[("general.architecture", "llama"), ("llama.block_count", 1),
                                  ("tokenizer.ggml.tokens", ["<s>", "a", "b"])])
    return path


# ---- metadata ------------------------------------------------------------------------------------
EXPLICIT = [  # (key, value, vtype, expected value read back)
    ("t.u8", 255, VT.UINT8), ("t.i8", -128, VT.INT8), ("t.u16", 65535, VT.UINT16),
    ("t.i16", -32768, VT.INT16), ("t.u32", 2**32 - 1, VT.UINT32), ("t.i32", -2**31, VT.INT32),
    ("t.u64", 2**64 - 1, VT.UINT64), ("t.i64", -2**63, VT.INT64), ("t.f32", 0.15625, VT.FLOAT32),
    ("t.f64", 1 / 3, VT.FLOAT64), ("t.bool", True, VT.BOOL), ("t.str", "héllo ✓ \x00 end", VT.STRING),
]
INFERRED = [  # (key, value, (type, element type), expected)
    ("i.small", 7, (VT.UINT32, None), 7), ("i.neg", -1, (VT.INT64, None), -1),
    ("i.big", 2**40, (VT.INT64, None), 2**40), ("i.huge", 2**63 + 1, (VT.UINT64, None), 2**63 + 1),
    ("i.float", 1.25, (VT.FLOAT32, None), 1.25), ("i.bool", False, (VT.BOOL, None), False),
    ("i.str", "llama", (VT.STRING, None), "llama"), ("i.npint", np.int16(5), (VT.UINT32, None), 5),
    ("a.u32", [1, 2, 3], (VT.ARRAY, VT.UINT32), [1, 2, 3]),
    ("a.i64", (1, -2), (VT.ARRAY, VT.INT64), [1, -2]),
    ("a.mixed", [1, 2.5], (VT.ARRAY, VT.FLOAT32), [1.0, 2.5]),
    ("a.bool", [True, False], (VT.ARRAY, VT.BOOL), [True, False]),
    ("a.str", ["a", "", "ü"], (VT.ARRAY, VT.STRING), ["a", "", "ü"]),
    ("a.np", np.array([0.5, -2.0], np.float64), (VT.ARRAY, VT.FLOAT32), [0.5, -2.0]),
]


def test_kv_round_trip_every_type(tmp_path):
    p = tmp_path / "kv.gguf"
    kv = [(k, v, vt) for k, v, vt in EXPLICIT]
    kv += [(f"arr.{vt.name}", [v, v], vt) for k, v, vt in EXPLICIT]  # arrays of every element type
    kv += [("arr.empty", [], VT.INT32), ("arr.ttype", np.array([1, 3, 6]), VT.INT32)]
    kv += [(k, v) for k, v, _, _ in INFERRED]
    write_file(p, kv=kv)
    with GGUFFile(p) as f:
        for k, v, vt in EXPLICIT:
            assert f.kv[k] == v and f.kv_types[k] == (vt, None), k
            assert f.kv[f"arr.{vt.name}"] == [v, v]
            assert f.kv_types[f"arr.{vt.name}"] == (VT.ARRAY, vt)
        assert f.kv["arr.empty"] == [] and f.kv_types["arr.empty"] == (VT.ARRAY, VT.INT32)
        assert f.kv["arr.ttype"] == [1, 3, 6] and f.kv_types["arr.ttype"] == (VT.ARRAY, VT.INT32)
        for k, _, types, expected in INFERRED:
            assert f.kv[k] == expected and f.kv_types[k] == types, k
        assert f.kv["general.alignment"] == 32 and f.kv_types["general.alignment"] == (VT.UINT32, None)
        assert f.tensors == []


@pytest.mark.parametrize("key,value,vtype", [
    ("k", 256, VT.UINT8), ("k", -1, VT.UINT32), ("k", 1.5, VT.INT32), ("k", 2, VT.BOOL),
    ("k", "x", VT.FLOAT32), ("k", 1, VT.STRING), ("k", [], None), ("k", [1, "a"], None),
    ("k", [[1], [2]], None), ("k", {"a": 1}, None), ("k", 2**64, None), ("k", [300], VT.UINT8),
    ("k", np.zeros((2, 2)), None), ("k", 1e39, VT.FLOAT32), ("k", 5, VT.ARRAY),
    ("quantconv.type.1291.spec", "sf4", None), ("general.alignment", 64, None), ("", 1, None),
])
def test_kv_rejects_bad_values(tmp_path, key, value, vtype):
    w = GGUFWriter(tmp_path / "x.gguf")
    with pytest.raises(QuantconvError):
        w.add_kv(key, value, vtype)
    w.abort()
    assert os.listdir(tmp_path) == []


def test_duplicate_key_and_matching_alignment(tmp_path):
    with GGUFWriter(tmp_path / "x.gguf", alignment=64) as w:
        w.add_kv("general.alignment", 64)  # the writer's own value: accepted, written once
        w.add_kv("a", 1)
        with pytest.raises(QuantconvError, match="twice"):
            w.add_kv("a", 2)
    with GGUFFile(tmp_path / "x.gguf") as f:
        assert f.kv["a"] == 1 and f.kv["general.alignment"] == 64 and f.alignment == 64


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(
    st.text("abcdefghijklmnopqrstuvwxyz._", min_size=1, max_size=12).filter(
        lambda k: not k.startswith("quantconv.type.") and k != "general.alignment"),
    st.one_of(st.booleans(), st.integers(-2**63, 2**64 - 1), st.text(max_size=20),
              st.floats(width=32, allow_nan=False),
              st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5),
              st.lists(st.text(max_size=5), min_size=1, max_size=5)),
    max_size=6))
def test_kv_round_trip_property(tmp_path, kv):
    p = tmp_path / "h.gguf"
    write_file(p, kv=list(kv.items()))
    with GGUFFile(p) as f:
        assert {k: v for k, v in f.kv.items() if k != "general.alignment"} == kv


# ---- tensors -------------------------------------------------------------------------------------
SPECS = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "mxfp4", "nvfp4", "int4:asym", "int3:group=0",
         "nf4", "sf4:nu=3", "fp4-sr:flip", "mxfp6", "bfp", "bmf", "blog:bits=5"]


@pytest.mark.parametrize("spec", SPECS)
def test_tensor_round_trip(tmp_path, spec):
    p = tmp_path / "t.gguf"
    dt = get_dtype(spec)
    tensors = [("w", spec, weights((3, 256), 4)), ("norm", "f32", weights((256,), 5)),
               ("experts", spec, weights((2, 2, 256), 6))]
    packed = write_file(p, tensors)
    with GGUFFile(p) as f:
        assert [t.name for t in f.tensors] == ["w", "norm", "experts"]
        for name, s, arr in tensors:
            t, d = f.tensor(name), get_dtype(s)
            assert t.shape == arr.shape and t.type_id == d.gguf_type_id and t.dtype.spec == d.spec
            assert t.nbytes == packed[name].nbytes and t.offset % 32 == 0
            assert f.raw(name).tobytes() == packed[name].tobytes()
            want = d.dequantize(packed[name], (math.prod(arr.shape[:-1]), arr.shape[-1])).reshape(arr.shape)
            np.testing.assert_array_equal(f.dequantize(name), want)
        if not dt.standard:  # the file describes our type exactly as the registry does
            desc = {k.rsplit(".", 1)[1]: v for k, v in f.kv.items()
                    if k.startswith(f"quantconv.type.{dt.gguf_type_id}.")}
            want = dt.descriptor()
            if "codebook" in want:  # stored as FLOAT32, the precision the kernels use
                want["codebook"] = np.float32(want["codebook"]).tolist()
            assert desc == want
        else:
            assert not any(k.startswith("quantconv.type.") for k in f.kv)


def test_float_arrays_accepted_for_float_types(tmp_path):
    p = tmp_path / "f.gguf"
    a32, a16 = weights((2, 8)), weights((8,)).astype(np.float16)
    with GGUFWriter(p) as w:
        w.add_tensor("a", a32.shape, get_dtype("f32"))
        w.add_tensor("b", a16.shape, "f16")  # a spec string is resolved through the registry
        w.add_tensor("c", (4,), get_dtype("f32"))
        with pytest.raises(QuantconvError, match="float16"):
            w.write_tensor("a", a32.astype(np.float16).reshape(4, 4).repeat(2, axis=0).reshape(4, 8))
        w.write_tensor("a", a32)
        w.write_tensor("b", a16.astype(">f2"))  # big-endian input is stored little-endian
        w.write_tensor("c", np.arange(4, dtype=np.float32).view(np.uint8))  # packed bytes too
    with GGUFFile(p) as f:
        np.testing.assert_array_equal(f.dequantize("a"), a32)
        np.testing.assert_array_equal(f.dequantize("b"), a16.astype(np.float32))
        np.testing.assert_array_equal(f.dequantize("c"), [0, 1, 2, 3])


@pytest.mark.parametrize("alignment", [1, 8, 64, 256])
def test_alignment(tmp_path, alignment):
    p = tmp_path / "a.gguf"
    tensors = [("a", "f32", weights((3,))), ("b", "q8_0", weights((1, 32))), ("c", "f16", weights((5,)))]
    packed = write_file(p, tensors, alignment=alignment)
    with GGUFFile(p) as f:
        assert f.alignment == alignment and f.data_offset % alignment == 0
        assert all(t.offset % alignment == 0 for t in f.tensors)
        assert all(f.raw(n).tobytes() == packed[n].tobytes() for n in packed)
    r = gguf.GGUFReader(p)  # gguf-py agrees on where each tensor starts
    assert [t.data.tobytes() for t in r.tensors] == [packed[n].tobytes() for n in "abc"]


@pytest.mark.parametrize("alignment", [0, 3, 48, -32, 2.0])
def test_bad_alignment(tmp_path, alignment):
    with pytest.raises(QuantconvError, match="power of two"):
        GGUFWriter(tmp_path / "a.gguf", alignment=alignment)


# ---- compatibility with gguf-py ------------------------------------------------------------------
def test_gguf_py_reads_our_file(tmp_path):
    p = tmp_path / "std.gguf"
    specs = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "mxfp4", "nvfp4"]
    tensors = [(f"t.{s}", s, weights((2, 128), i)) for i, s in enumerate(specs)]
    tensors.append(("norm", "f32", weights((16,), 9)))
    kv = [(k, v, vt) for k, v, vt in EXPLICIT] + [("tok", ["a", "bc"]), ("scores", [0.5, -1.0], VT.FLOAT32)]
    packed = write_file(p, tensors, kv)
    r = gguf.GGUFReader(p)
    for k, v, vt in EXPLICIT:
        assert r.fields[k].contents() == v and r.fields[k].types == [vt], k
    assert r.fields["tok"].contents() == ["a", "bc"]
    assert r.fields["scores"].contents() == [0.5, -1.0]
    assert r.fields["general.alignment"].contents() == 32
    assert [t.name for t in r.tensors] == [n for n, _, _ in tensors]
    for t, (name, spec, arr) in zip(r.tensors, tensors):
        assert t.tensor_type == get_dtype(spec).gguf_type_id
        assert list(t.shape) == list(arr.shape[::-1])  # GGUF order: ne0 = cols first
        assert t.data.tobytes() == packed[name].tobytes()


def test_we_read_gguf_py_file(tmp_path):
    p = tmp_path / "py.gguf"
    f32, f16 = weights((4, 64), 1), weights((64,), 2).astype(np.float16)
    q8 = gq.quantize(weights((4, 64), 3), GT.Q8_0)
    q4k = RNG.integers(0, 256, (2, 144), dtype=np.uint8)  # 2 rows of one Q4_K block: any bytes decode
    q4k[:, :4] = np.array([0.01, 0.02], np.float16).view(np.uint8)  # finite d, dmin
    iq4 = RNG.integers(0, 256, (3, 18), dtype=np.uint8)
    iq4[:, :2] = np.array([0.5], np.float16).view(np.uint8)
    i32 = np.arange(-3, 3, dtype=np.int32)
    w = gguf.GGUFWriter(p, "llama")
    w.add_uint8("x.u8", 7)
    w.add_int64("x.i64", -5)
    w.add_float64("x.f64", 0.1)
    w.add_array("x.tokens", ["<s>", "hello"])
    w.add_array("x.scores", [0.25, 0.5])
    for name, arr, raw in [("f32", f32, None), ("f16", f16, None), ("q8", q8, GT.Q8_0),
                           ("q4k", q4k, GT.Q4_K), ("iq4", iq4, GT.IQ4_NL), ("i32", i32, None)]:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with GGUFFile(p) as f:
        assert f.kv["general.architecture"] == "llama" and f.kv["x.u8"] == 7 and f.kv["x.i64"] == -5
        assert f.kv["x.f64"] == 0.1 and f.kv["x.tokens"] == ["<s>", "hello"]
        assert f.kv["x.scores"] == [0.25, 0.5]
        assert f.tensor("f32").dtype.spec == "f32" and f.tensor("q8").type_name == "Q8_0"
        np.testing.assert_array_equal(f.dequantize("f32"), f32)
        np.testing.assert_array_equal(f.dequantize("f16"), f16.astype(np.float32))
        np.testing.assert_array_equal(f.dequantize("q8"), gq.dequantize(q8, GT.Q8_0))
        for name, raw, gt in [("q4k", q4k, GT.Q4_K), ("iq4", iq4, GT.IQ4_NL)]:
            t = f.tensor(name)
            # a ggml type the registry has a row for (IQ4_NL) reads as that row, any other as None
            assert t.dtype is dtype_from_gguf_type_id(int(gt)) and t.type_name == gt.name and t.shape == (raw.shape[0], 256 if gt == GT.Q4_K else 32)
            np.testing.assert_array_equal(f.raw(name), raw)
            np.testing.assert_array_equal(f.dequantize(name), gq.dequantize(raw, gt))
        np.testing.assert_array_equal(f.dequantize("i32"), i32.astype(np.float32))


# ---- writer contract -----------------------------------------------------------------------------
def test_streaming_keeps_no_tensor_and_no_output_until_close(tmp_path):
    p = tmp_path / "s.gguf"
    w = GGUFWriter(p)
    w.add_tensor("a", (64, 64), get_dtype("f32"))
    w.add_tensor("b", (64, 64), get_dtype("f32"))
    w.write_header()
    arr = weights((64, 64))
    ref = weakref.ref(arr)
    w.write_tensor("a", arr)
    del arr
    assert ref() is None  # the writer kept no reference to the data it wrote
    assert not p.exists() and len(os.listdir(tmp_path)) == 1  # only the hidden temp file so far
    w.write_tensor("b", weights((64, 64)))
    w.close()
    assert os.listdir(tmp_path) == ["s.gguf"]


def test_exception_leaves_no_file(tmp_path):
    p = tmp_path / "e.gguf"
    with pytest.raises(RuntimeError):
        with GGUFWriter(p) as w:
            w.add_tensor("a", (4,), get_dtype("f32"))
            w.write_header()
            raise RuntimeError("conversion failed")
    assert os.listdir(tmp_path) == []
    # an existing file at the path survives a failed rewrite untouched
    p.write_bytes(b"old")
    with pytest.raises(QuantconvError, match="needs 16 bytes"):
        with GGUFWriter(p) as w:
            w.add_tensor("a", (4,), get_dtype("f32"))
            w.write_tensor("a", np.zeros(3, np.float32))
    assert os.listdir(tmp_path) == ["e.gguf"] and p.read_bytes() == b"old"
    w = GGUFWriter(p)
    w.write_header()
    w.abort()
    assert os.listdir(tmp_path) == ["e.gguf"] and p.read_bytes() == b"old"


def test_close_with_missing_tensor_fails_and_cleans_up(tmp_path):
    w = GGUFWriter(tmp_path / "m.gguf")
    w.add_tensor("a", (4,), get_dtype("f32"))
    w.add_tensor("b", (4,), get_dtype("f32"))
    w.write_tensor("a", np.zeros(4, np.float32))  # write_header() happens implicitly
    with pytest.raises(QuantconvError, match="'b'"):
        w.close()
    assert os.listdir(tmp_path) == []


def test_header_only_file(tmp_path):
    with GGUFWriter(tmp_path / "v.gguf") as w:
        w.add_kv("general.architecture", "llama")
    with GGUFFile(tmp_path / "v.gguf") as f:
        assert f.kv["general.architecture"] == "llama" and f.tensors == []


def test_declaration_errors(tmp_path):
    w = GGUFWriter(tmp_path / "d.gguf")
    w.add_tensor("a", (2, 32), get_dtype("q8_0"))
    with pytest.raises(QuantconvError, match="twice"):
        w.add_tensor("a", (2, 32), get_dtype("q8_0"))
    for shape in [(), (1, 1, 1, 1, 1), (0, 32), (2.0, 32)]:
        with pytest.raises(QuantconvError, match="shape"):
            w.add_tensor("s", shape, get_dtype("f32"))
    with pytest.raises(QuantconvError, match="multiple"):
        w.add_tensor("odd", (2, 33), get_dtype("q8_0"))
    w.add_tensor("b", (32,), get_dtype("f16"))
    w.write_header()
    with pytest.raises(QuantconvError, match="after write_header"):
        w.add_tensor("c", (4,), get_dtype("f32"))
    with pytest.raises(QuantconvError, match="after write_header"):
        w.add_kv("c", 1)
    with pytest.raises(QuantconvError, match="out of order.*'a'"):
        w.write_tensor("b", np.zeros(32, np.float16))
    with pytest.raises(QuantconvError, match="never declared"):
        w.write_tensor("zzz", np.zeros(4, np.float32))
    with pytest.raises(QuantconvError, match="needs 68 bytes but got 64"):
        w.write_tensor("a", np.zeros(64, np.uint8))
    with pytest.raises(QuantconvError, match="uint8"):
        w.write_tensor("a", np.zeros(17, np.float32))
    with pytest.raises(QuantconvError, match="numpy array"):
        w.write_tensor("a", b"\0" * 68)
    w.write_tensor("a", np.zeros((2, 34), np.uint8))
    w.write_tensor("b", np.zeros(32, np.float16))
    with pytest.raises(QuantconvError, match="already written"):
        w.write_tensor("b", np.zeros(32, np.float16))
    w.close()
    with pytest.raises(QuantconvError, match="after close"):
        w.write_tensor("b", np.zeros(32, np.float16))


def test_one_variant_per_type_id(tmp_path):
    a, b = get_dtype("fp4-sr"), get_dtype("fp4-sr:flip")
    assert a.gguf_type_id == b.gguf_type_id and a.descriptor() != b.descriptor()
    w = GGUFWriter(tmp_path / "v.gguf")
    w.add_tensor("x", (1, 128), a)
    w.add_tensor("y", (1, 128), get_dtype("fp4-sr"))  # the same variant again is fine
    with pytest.raises(QuantconvError, match="one variant per type id"):
        w.add_tensor("z", (1, 128), b)
    w.abort()
    assert os.listdir(tmp_path) == []


def test_variant_read_back_can_be_written_again(tmp_path):
    """A type rebuilt from a file (FLOAT32 codebook) and a fresh one are the same variant."""
    src, out = tmp_path / "a.gguf", tmp_path / "b.gguf"
    packed = write_file(src, [("x", "sf4:nu=3", weights((1, 128)))])
    with GGUFFile(src) as f, GGUFWriter(out) as w:
        w.add_tensor("x", (1, 128), f.tensor("x").dtype)
        w.add_tensor("y", (1, 128), get_dtype("sf4:nu=3"))
        w.write_tensor("x", f.raw("x"))
        w.write_tensor("y", packed["x"])
    with GGUFFile(out) as g:
        np.testing.assert_array_equal(g.dequantize("x"), g.dequantize("y"))


# ---- reader contract -----------------------------------------------------------------------------
def test_raw_is_a_view_and_dequantize_a_copy(tmp_path):
    p = sample_file(tmp_path / "s.gguf")
    f = GGUFFile(p)
    r = f.raw("blk.0.attn_q.weight")
    assert r.shape == (4, 68) and r.dtype == np.uint8
    assert not r.flags.owndata and not r.flags.writeable
    norm = f.dequantize("blk.0.attn_norm.weight")
    assert norm.flags.writeable and norm.flags.owndata
    norm[:] = 0  # never writes through to the file
    assert np.any(f.dequantize("blk.0.attn_norm.weight") != 0)
    assert "blk.0.attn_q.weight" in f and "nope" not in f
    with pytest.raises(QuantconvError, match="did you mean 'blk.0.attn_q.weight'"):
        f.tensor("blk.0.attn_q.weigth")
    f.close()
    assert r.sum() >= 0  # a view taken before close() stays valid
    with pytest.raises(QuantconvError, match="closed"):
        f.raw("blk.0.attn_q.weight")


# ---- damaged and hostile files -------------------------------------------------------------------
def test_truncated_anywhere(tmp_path):
    """Cut all through the header and at points inside the data: always a clear error."""
    src = sample_file(tmp_path / "full.gguf")
    data = src.read_bytes()
    with GGUFFile(src) as f:
        data_end = max(t.offset + t.nbytes for t in f.tensors)
        cuts = list(range(0, 64)) + list(range(64, f.data_offset + 1, 3))  # every field of the header
        cuts += [t.offset + d for t in f.tensors for d in (1, t.nbytes // 2)]
        cuts.append(data_end - 1)
    p = tmp_path / "model.gguf"
    for cut in cuts:
        p.write_bytes(data[:cut])
        with pytest.raises(QuantconvError) as e:
            GGUFFile(p)
        msg = str(e.value)
        assert msg.startswith(str(p)) and "\n" not in msg, msg
        assert ("truncated" in msg) if cut else ("empty" in msg), (cut, msg)
    p.write_bytes(data[:data_end - 1])
    with pytest.raises(QuantconvError, match=r"is truncated: tensor 'blk.0.attn_norm.weight' needs bytes "
                                             r"\d+\.\.\d+ but the file has \d+; re-export or re-download"):
        GGUFFile(p)


@pytest.mark.parametrize("content,match", [
    (bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), "not a GGUF file"),
    (b"Hello, this is a text file\n", "not a GGUF file"),
    (struct.pack("<Q", 20) + b'{"__metadata__":{}}', "not a GGUF file"),  # a safetensors file
    (b"GG", "truncated"),
    (b"", "empty"),
], ids=["random", "text", "safetensors", "2 bytes", "empty"])
def test_garbage_files(tmp_path, content, match):
    p = tmp_path / "model.gguf"
    p.write_bytes(content)
    with pytest.raises(QuantconvError, match=match):
        GGUFFile(p)


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(QuantconvError, match="does not exist"):
        GGUFFile(tmp_path / "nope.gguf")
    with pytest.raises(QuantconvError, match="folder"):
        GGUFFile(tmp_path)
    with pytest.raises(QuantconvError, match="does not exist"):
        GGUFWriter(tmp_path / "no" / "such" / "dir.gguf")


# hand-built headers, independent of the writer's encoder
def _s(text):
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def _gguf(n_tensors, n_kv, body=b"", version=3):
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + body


def _kv(key, vt, payload):
    return _s(key) + struct.pack("<I", vt) + payload


def _ti(name, ne, type_id, offset):
    return _s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, type_id, offset)


def _with_data(header, nbytes=4096):
    return header + bytes(-len(header) % 32) + bytes(nbytes)


U32 = struct.pack("<I", 1)
HOSTILE = {
    "huge counts": (_gguf(2**64 - 1, 2**64 - 1), "claims"),
    "huge kv count": (_gguf(0, 2**62, _kv("a", VT.UINT32, U32)), "claims"),
    "huge key length": (_gguf(0, 1, struct.pack("<Q", 2**63) + b"abc" + bytes(64)), "truncated"),
    "huge string value": (_gguf(0, 1, _s("k") + struct.pack("<IQ", VT.STRING, 2**63) + bytes(64)), "truncated"),
    "huge array": (_gguf(0, 1, _kv("k", VT.ARRAY, struct.pack("<IQ", VT.UINT64, 2**61)) + bytes(64)), "claims"),
    "huge string array": (_gguf(0, 1, _kv("k", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2**40)) + bytes(64)),
                          "claims"),
    "deep nesting": (_gguf(0, 1, _kv("k", VT.ARRAY, struct.pack("<IQ", VT.ARRAY, 1) * 200
                                     + struct.pack("<IQ", VT.UINT8, 0))), "nests"),
    "unknown value type": (_gguf(0, 1, _kv("k", 99, U32)), "unknown value type 99"),
    "bad utf-8 key": (_gguf(0, 1, _kv(b"\xff\xfe", VT.UINT32, U32)), "UTF-8"),
    "duplicate key": (_gguf(0, 2, _kv("k", VT.UINT32, U32) * 2), "appears twice"),
    "bad alignment": (_gguf(0, 1, _kv("general.alignment", VT.UINT32, struct.pack("<I", 3))), "power of two"),
    "alignment as u64": (_gguf(0, 1, _kv("general.alignment", VT.UINT64, struct.pack("<Q", 32))), "UINT32"),
    "too many dims": (_gguf(1, 0, _s("t") + struct.pack("<I", 1000) + bytes(64)), "dims"),
    "zero dims": (_with_data(_gguf(1, 0, _s("t") + struct.pack("<IIQ", 0, 0, 0))), "dims"),
    "impossible dim": (_with_data(_gguf(1, 0, _ti("t", [2**64 - 1], 0, 0))), "impossible"),
    "huge tensor": (_with_data(_gguf(1, 0, _ti("t", [2**40, 2**40, 2**40, 2**40], 0, 0))), "truncated"),
    "huge per-row tensor": (_with_data(_gguf(1, 0, _ti("t", [2**62, 2**62], 0, 0))), "truncated"),
    "huge offset": (_with_data(_gguf(1, 0, _ti("t", [4], 0, 2**64 - 32))), "truncated"),
    "misaligned offset": (_with_data(_gguf(1, 0, _ti("t", [4], 0, 4))), "multiple of the alignment"),
    "q8_0 cols": (_with_data(_gguf(1, 0, _ti("t", [33, 2], GT.Q8_0, 0))), "multiple"),
    "unknown type id": (_with_data(_gguf(1, 0, _ti("t", [4], 999, 0))), "unknown type id 999"),
    "our id without descriptor": (_with_data(_gguf(1, 0, _ti("t", [128], 1291, 0))), "doesn't describe"),
    "bad descriptor": (_with_data(_gguf(1, 1, _kv("quantconv.type.1291.spec", VT.STRING, _s("bogus!"))
                                       + _ti("t", [128], 1291, 0))), "type id 1291"),
    "huge per-channel tensor": (_with_data(_gguf(1, 1, _kv("quantconv.type.1039.spec", VT.STRING, _s("int3:group=0"))
                                                + _ti("t", [2**62, 2**62], 1039, 0))), "truncated"),
    "duplicate tensor": (_with_data(_gguf(2, 0, _ti("t", [4], 0, 0) + _ti("t", [4], 0, 32))), "appears twice"),
    "overlap": (_with_data(_gguf(2, 0, _ti("a", [16], 0, 0) + _ti("b", [16], 0, 32))), "overlap"),
    "big-endian": (_gguf(0, 0, version=3 << 24), "big-endian"),
    "version 1": (_gguf(0, 0, version=1), "version 1"),
    "future version": (_gguf(0, 0, version=4), "version 4"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_header(tmp_path, name):
    content, match = HOSTILE[name]
    p = tmp_path / "evil.gguf"
    p.write_bytes(content)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(QuantconvError, match=match) as e:
            GGUFFile(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0 and peak < 4 << 20, (name, peak)
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)


def test_hostile_header_control_is_valid(tmp_path):
    """The hand-built encoding used above is right: the same pieces make a readable file."""
    p = tmp_path / "ok.gguf"
    hdr = _gguf(2, 1, _kv("general.alignment", VT.UINT32, struct.pack("<I", 32))
                + _ti("a", [16], 0, 0) + _ti("b", [16, 2], 0, 64))
    p.write_bytes(_with_data(hdr, 4096))
    with GGUFFile(p) as f:
        assert [t.shape for t in f.tensors] == [(16,), (2, 16)]


_FUZZ_SRC: dict[str, bytes] = {}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4),
       st.one_of(st.none(), st.floats(0, 1)))
def test_fuzzed_file_never_crashes(tmp_path, flips, cut):
    """Random byte changes (biased to the header) and cuts: the file reads or raises QuantconvError."""
    if "data" not in _FUZZ_SRC:
        _FUZZ_SRC["data"] = sample_file(tmp_path / "src.gguf").read_bytes()
    data = bytearray(_FUZZ_SRC["data"])
    header_len = 900  # most of the interesting structure; data bytes get changed too, less often
    for where, value in flips:
        pos = int(where * header_len) if where < 0.8 else int(where * len(data))
        data[min(pos, len(data) - 1)] = value
    if cut is not None:
        data = data[:int(cut * len(data))]
    p = tmp_path / "fuzz.gguf"
    p.write_bytes(bytes(data))
    try:
        with GGUFFile(p) as f:
            for t in f.tensors:
                f.dequantize(t.name)
    except QuantconvError as e:
        assert "\n" not in str(e)
