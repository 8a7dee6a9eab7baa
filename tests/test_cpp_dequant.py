"""The C++ kernels (quantconv._ext.dequantize) decode every registry datatype bit for bit like the
Python registry (DType.dequantize), refuse corrupt data, and the standalone C++ tests pass."""
from __future__ import annotations

import shutil
import subprocess
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.dtype_cases import SWEEP_SPECS

ext = pytest.importorskip("quantconv._ext")
registry = pytest.importorskip("quantconv.formats.registry")
from quantconv.errors import QuantconvError  # noqa: E402

get_dtype = registry.get_dtype

ROOT = Path(__file__).resolve().parents[1]
COLS = 256          # a multiple of every block size below; per-channel rows are one 256-value block
ROWS = 3

ALL_SPECS = SWEEP_SPECS


def _dtype(spec: str):
    try:
        return get_dtype(spec)
    except ImportError as e:  # sf4 builds its table with scipy
        pytest.skip(f"{spec}: {e}")


def _cpp(dt, packed: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return ext.dequantize(dt.descriptor(), packed, rows, cols)


def _assert_bit_equal(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    ref = np.ascontiguousarray(ref, dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == ref.shape, what
    g, r = got.view(np.uint32), ref.view(np.uint32)
    if not np.array_equal(g, r):
        bad = np.argwhere(g != r)
        i = tuple(bad[0])
        pytest.fail(f"{what}: {len(bad)} values differ; first at {i}: C++ {got[i]!r} (0x{int(g[i]):08x}) "
                    f"vs Python {ref[i]!r} (0x{int(r[i]):08x})")


def _scale_of(dt) -> str:
    """Where each block's header is: 'fp16' (d), 'fp16x2' (d, m), 'e8m0', 'ue4m3' or 'none'."""
    fam = dt.family
    if fam == "float":
        return "none"
    if fam == "int":
        return "fp16x2" if dt.descriptor().get("asym") else "fp16"
    if fam == "codebook" or dt.name in ("q4_0", "q5_0"):
        return "fp16"
    if dt.name == "q5_1":
        return "fp16x2"
    if dt.name == "nvfp4":
        return "ue4m3"
    return "e8m0"


def _huge(dt) -> float:
    """A magnitude whose block scale still fits the scale encoding (elements saturate around it)."""
    enc = _scale_of(dt)
    if enc == "e8m0":
        return 3.0e38
    if enc == "ue4m3":
        return 2000.0      # 448 * 6 is NVFP4's largest block value
    if enc == "none":
        return 1.0e30 if dt.name != "f16" else 6.0e4
    if dt.family == "codebook":
        return 6.0e4 * 0.9 * max(abs(v) for v in dt.codebook)
    return 6.0e4


def _inputs(dt, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shape = (ROWS, COLS)
    normal = rng.standard_normal(shape).astype(np.float32)
    # rows spread over many binades so scales, subnormal elements and saturation all occur
    top = 8 if _scale_of(dt) in ("fp16", "fp16x2") else 20   # fp16 scales end at 65504
    spread = normal * np.exp2(rng.integers(-20, top, size=(ROWS, 1))).astype(np.float32)
    outliers = normal.copy()
    outliers[:, ::37] *= 100
    big = _huge(dt)
    huge = np.where(rng.random(shape) < 0.5, -big, big).astype(np.float32) * rng.random(shape).astype(np.float32)
    huge[:, ::5] = big
    huge[:, 1::7] = -big
    tiny = (rng.standard_normal(shape) * 1e-38).astype(np.float32)
    tiny[0] = 1e-45             # the smallest float32 subnormal
    tiny[1] = -1.5e-42
    tiny[2, ::2] = 0.0
    mixed = normal.copy()
    mixed[:, 0::3] = 0.0
    mixed[:, 1::11] = -0.0
    return {
        "normal": normal,
        "spread": spread,
        "outliers": outliers,
        "huge": huge,
        "tiny": tiny,
        "zeros": np.zeros(shape, np.float32),
        "neg_zeros": np.full(shape, -0.0, np.float32),
        "mixed_zeros": mixed,
        "constant": np.full(shape, 0.37, np.float32),
        "uniform": rng.uniform(-1, 1, size=shape).astype(np.float32),
    }


def _forbidden_headers(dt, packed: np.ndarray, cols: int) -> str:
    """Names the forbidden block headers in packed data (E8M0 255, inf/NaN fp16 scale), or ''."""
    enc = _scale_of(dt)
    if enc in ("none", "ue4m3"):
        return ""
    block = dt.block_for(cols)
    blocks = packed.reshape(-1, dt.row_bytes(cols) // (cols // block))
    if enc == "e8m0":
        n = int(np.count_nonzero(blocks[:, 0] == 255))
        return f"{n} E8M0 byte(s) 255" if n else ""
    heads = [0, 2] if enc == "fp16x2" else [0]
    n = sum(int(np.count_nonzero(~np.isfinite(blocks[:, h:h + 2].copy().view(np.float16)))) for h in heads)
    return f"{n} non-finite fp16 scale(s)" if n else ""


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_cpp_matches_python_bit_exact(spec):
    dt = _dtype(spec)
    rng = np.random.default_rng(zlib.crc32(spec.encode()))
    desc = dt.descriptor()
    assert ext.row_bytes(desc, COLS) == dt.row_bytes(COLS)
    for case, w in _inputs(dt, rng).items():
        try:
            packed = dt.quantize(w)
        except QuantconvError:
            continue  # the registry refuses this input for this type (e.g. beyond the fp16 scale range)
        ref = dt.dequantize(packed, w.shape)
        forbidden = _forbidden_headers(dt, packed, COLS)
        if forbidden:
            # the registry wrote a scale the layout forbids: C++ must refuse it, never decode garbage
            warnings.warn(f"registry wrote {forbidden} for {spec} [{case}]; the C++ decoder refuses it")
            with pytest.raises(ValueError, match="E8M0|fp16"):
                _cpp(dt, packed, ROWS, COLS)
            continue
        got = _cpp(dt, packed, ROWS, COLS)
        _assert_bit_equal(got, ref, f"{spec} [{case}]")
        # 1-D data works the same as the (rows, row_bytes) array
        _assert_bit_equal(_cpp(dt, packed.reshape(-1), ROWS, COLS), ref, f"{spec} [{case}, 1-D]")


def _random_bytes(dt, rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Arbitrary packed bytes (every element code occurs) whose block headers are legal."""
    nbytes = rows * dt.row_bytes(cols)
    data = rng.integers(0, 256, size=nbytes, dtype=np.uint8)
    enc = _scale_of(dt)
    if enc == "none":
        return data
    block = dt.block_for(cols)
    blocks = data.reshape(-1, dt.row_bytes(cols) // (cols // block))
    if enc in ("fp16", "fp16x2"):
        for off in (0, 2) if enc == "fp16x2" else (0,):
            h = blocks[:, off:off + 2].copy().view(np.uint16)
            h = np.where((h & 0x7C00) == 0x7C00, h & np.uint16(0xBFFF), h)  # finite: clear an exponent bit
            # keep scales moderate half the time so sums with m are not all dominated by one term
            h = np.where(rng.random(h.shape) < 0.5, (h & np.uint16(0x83FF)) | np.uint16(0x3C00), h)
            blocks[:, off:off + 2] = h.astype(np.uint16).view(np.uint8)
        codes_from = 4 if enc == "fp16x2" else 2
    elif enc == "e8m0":
        e = blocks[:, 0]
        e[e == 255] = 254
        codes_from = 1
    else:
        codes_from = 4  # NVFP4: every UE4M3 byte is legal
    element = dt.descriptor().get("element")
    if dt.family == "mx" and element in ("e4m3", "e5m2"):
        codes = blocks[:, codes_from:]            # 8-bit elements: one byte per code
        if element == "e4m3":
            codes[(codes & 0x7F) == 0x7F] &= np.uint8(0xFE)       # not NaN
        else:
            codes[((codes >> 2) & 0x1F) == 0x1F] &= np.uint8(0xBF)  # exponent below 31
    return data


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_cpp_matches_python_on_arbitrary_codes(spec):
    dt = _dtype(spec)
    rng = np.random.default_rng(zlib.crc32(b"codes:" + spec.encode()))
    data = _random_bytes(dt, rng, ROWS, COLS)
    ref = dt.dequantize(data, (ROWS, COLS))
    got = _cpp(dt, data, ROWS, COLS)
    if dt.family == "float":  # random bit patterns include NaNs: their payload conversion is not the point
        nan = np.isnan(ref)
        assert np.array_equal(nan, np.isnan(got)), spec
        ref, got = np.where(nan, 0, ref).astype(np.float32), np.where(nan, 0, got).astype(np.float32)
    _assert_bit_equal(got, ref, f"{spec} [random codes]")


@pytest.mark.parametrize("spec", ["int4:group=0", "int3:asym,group=0", "int7:group=0", "int2:group=0"])
@pytest.mark.parametrize("cols", [8, 24, 4104])
def test_per_channel_other_widths(spec, cols):
    dt = _dtype(spec)
    w = np.random.default_rng(cols).standard_normal((2, cols)).astype(np.float32)
    packed = dt.quantize(w)
    _assert_bit_equal(_cpp(dt, packed, 2, cols), dt.dequantize(packed, w.shape), f"{spec} cols={cols}")


def test_zero_rows():
    dt = get_dtype("int4")
    out = ext.dequantize(dt.descriptor(), np.zeros(0, np.uint8), 0, 128)
    assert out.shape == (0, 128) and out.dtype == np.float32


def test_fp16_scale_overflow_is_never_decoded_silently():
    """Values beyond what an fp16 scale can carry: the registry refuses them, or, where it writes an
    inf scale, the C++ decoder refuses the block instead of returning inf/NaN."""
    w = np.full((1, 128), 1.0e7, np.float32)
    for spec in ("int4", "int8:asym", "q8_0", "q4_0", "nf4"):
        dt = get_dtype(spec)
        try:
            packed = dt.quantize(w)
        except QuantconvError:
            continue
        if np.all(np.isfinite(dt.dequantize(packed, w.shape))):
            continue
        with pytest.raises(ValueError, match="fp16"):
            ext.dequantize(dt.descriptor(), packed, 1, 128)


# ---- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["int4", "int3:asym,group=0", "nf4", "mxfp4", "mxfp8:e5m2", "bfp", "bmf", "blog",
                                  "q8_0", "q4_0", "q4_1", "nvfp4", "f16", "bf16", "f32"])
def test_wrong_size_raises(spec):
    dt = get_dtype(spec)
    w = np.random.default_rng(0).standard_normal((2, 128)).astype(np.float32)
    packed = dt.quantize(w).reshape(-1)
    with pytest.raises(ValueError, match="bytes"):
        ext.dequantize(dt.descriptor(), packed[:-1], 2, 128)
    with pytest.raises(ValueError, match="bytes"):
        ext.dequantize(dt.descriptor(), packed, 3, 128)
    with pytest.raises(ValueError):
        ext.dequantize(dt.descriptor(), packed, 2, 0)
    if dt.block_size > 1:
        with pytest.raises(ValueError, match="multiple"):
            ext.dequantize(dt.descriptor(), packed, 1, 128 + dt.block_size // 2)


@pytest.mark.parametrize("spec", ["mxfp4", "mxfp4:ggml", "mxfp6:e3m2", "mxfp8", "mxint8", "bfp:mant=8",
                                  "bmf:exp=3,mant=2,block=32", "blog:bits=5"])
def test_e8m0_nan_scale_raises(spec):
    dt = get_dtype(spec)
    w = np.random.default_rng(1).standard_normal((2, 128)).astype(np.float32)
    packed = dt.quantize(w)
    bb = dt.row_bytes(128) // (128 // dt.block_size)
    bad = packed.copy().reshape(-1)
    bad[3 * bb] = 255  # the E8M0 byte of the fourth block (row 0)
    with pytest.raises(ValueError, match=r"E8M0.*255|255.*E8M0"):
        ext.dequantize(dt.descriptor(), bad, 2, 128)
    ext.dequantize(dt.descriptor(), packed, 2, 128)  # the intact data decodes


@pytest.mark.parametrize("spec", ["int4", "int8:group=32", "int5:asym,group=64", "int3:group=0", "nf4", "sf4:flip",
                                  "q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("bits", [0x7C00, 0xFC00, 0x7E00, 0x7C01])
def test_nonfinite_fp16_scale_raises(spec, bits):
    dt = _dtype(spec)
    w = np.random.default_rng(2).standard_normal((2, 128)).astype(np.float32)
    packed = dt.quantize(w).reshape(-1)
    block = dt.block_for(128)
    bb = dt.row_bytes(128) // (128 // block)
    offsets = [0, 2] if dt.descriptor().get("asym") else [0]
    for off in offsets:
        bad = packed.copy()
        pos = dt.row_bytes(128) + off  # first block of row 1: d (and m for asym)
        bad[pos:pos + 2] = np.array([bits], dtype=np.uint16).view(np.uint8)
        with pytest.raises(ValueError, match="fp16"):
            ext.dequantize(dt.descriptor(), bad, 2, 128)
    assert bb > 0


@pytest.mark.parametrize("spec,code", [("mxfp8", 0x7F), ("mxfp8", 0xFF), ("mxfp8:e5m2", 0x7C), ("mxfp8:e5m2", 0xFF)])
def test_nan_element_code_raises(spec, code):
    dt = get_dtype(spec)
    packed = dt.quantize(np.ones((1, 64), np.float32)).reshape(-1)
    packed[33 + 1 + 7] = code  # element 7 of the second block
    with pytest.raises(ValueError, match="element code"):
        ext.dequantize(dt.descriptor(), packed, 1, 64)


def test_bad_descriptors_raise():
    good = get_dtype("int4").descriptor()
    data = get_dtype("int4").quantize(np.ones((1, 128), np.float32))
    for change in ({"family": "nope"}, {"elem_bits": 9}, {"block_size": 12}, {"bytes_per_block": 99},
                   {"family": "mx", "element": "e9m9"}, {"family": "codebook", "codebook": [0.0] * 15}):
        with pytest.raises(ValueError):
            ext.dequantize({**good, **change}, data, 1, 128)
    no_family = dict(good)
    del no_family["family"]
    with pytest.raises(ValueError, match="family"):
        ext.dequantize(no_family, data, 1, 128)
    desc = get_dtype("nf4").descriptor()
    desc["codebook"] = [float("nan")] + desc["codebook"][1:]
    with pytest.raises(ValueError, match="codebook"):
        ext.dequantize(desc, get_dtype("nf4").quantize(np.ones((1, 128), np.float32)), 1, 128)


def test_bad_data_array_raises():
    dt = get_dtype("q8_0")
    packed = dt.quantize(np.ones((2, 32), np.float32))
    with pytest.raises(ValueError):
        ext.dequantize(dt.descriptor(), packed.reshape(2, 1, -1), 2, 32)   # 3-D
    with pytest.raises(TypeError):
        ext.dequantize(dt.descriptor(), packed.astype(np.float32), 2, 32)  # not uint8


# ---- the standalone C++ test executable -------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler")
@pytest.mark.parametrize("flags", [[], ["-DSANITIZE=ON"]], ids=["plain", "asan-ubsan"])
def test_native_cpp_tests(flags):
    """The standalone C++ tests (dequantization and every kernel table the CPU runs), also under
    AddressSanitizer + UndefinedBehaviorSanitizer."""
    script = ROOT / "cpp" / "tests" / "run_native_tests.sh"
    proc = subprocess.run(["bash", str(script), *flags], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"run_native_tests.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "checks passed" in proc.stdout
    assert "test_thread_pool: all" in proc.stdout
