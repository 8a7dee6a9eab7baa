"""The C++ dot-product kernels (quantconv._ext.matvec) against numpy: `get_dtype(spec).dequantize(...) @ x`
for every registry datatype and its variants, on every kernel table this CPU runs (scalar, avx2, ...).

Exact path: within 1e-5 of sum|w_i * x_i| (float32 accumulation in another order; the weights
themselves are decoded bit for bit).

Fast path (int8 x int8 where the layout has one): it computes dequant(W) . x^, x^ = d_b q the
q8-rounded activations (asymmetric blocks w = d c + m included: m multiplies the block sum of x^,
not of x), except that table codes (codebooks, E2M1, symmetric 4-bit ints) use int8 stand-ins for
their elements. Each x^_i is off by at most d_g / 2 (d_g = amax / 127 of its group of 4); a table
element by at most 1/254 of its block's largest |w - m_b| (the table maps the largest |element| to an
integer in [64, 127], picking the most accurate; at 127 the error is at most 0.5/127 of it); int8
and unsigned codes are exact. So

    |fast - exact| <= sum_i |w_i| d_b / 2 + [table codes] sum_i wmax_b / 254 (|x_i| + d_b / 2)   (+ float slack)

That bound is the worst case; a wrong scale or a misplaced block hides easily under it, so the error
must also stay within 6 sigma of the same roundings taken as independent uniform errors, and where
no table is involved the result must be dequant(W) . x^ itself up to float rounding.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from tests.dtype_cases import SWEEP_SPECS

ext = pytest.importorskip("quantconv._ext")
registry = pytest.importorskip("quantconv.formats.registry")

get_dtype = registry.get_dtype

COLS = 256   # a multiple of every block size; per-channel rows are one 256-value block
ROWS = 8
ALL_SPECS = SWEEP_SPECS
ISAS = ext.available_isas()


def _dtype(spec: str):
    try:
        return get_dtype(spec)
    except ImportError as e:  # sf4 builds its table with scipy
        pytest.skip(f"{spec}: {e}")


def _data(spec: str, rows: int = ROWS, cols: int = COLS):
    """Gaussian weights and activations with outliers (as LLM activations have), quantized by the registry."""
    dt = _dtype(spec)
    rng = np.random.default_rng(zlib.crc32(spec.encode()))
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[:, ::29] *= 4.0
    x = rng.standard_normal(cols).astype(np.float32)
    x[::37] *= 20.0
    packed = np.ascontiguousarray(dt.quantize(w))
    deq = dt.dequantize(packed, (rows, cols)).astype(np.float64)
    return dt, packed, deq, x


def _sub_block(dt, cols: int) -> int:
    return 16 if dt.name == "nvfp4" else dt.block_for(cols)


def _asym(dt) -> bool:
    return bool(dt.descriptor().get("asym")) or dt.name == "q4_1"


def _exact_ints(dt) -> bool:
    """Codes that reach the integer path as themselves: unsigned (asymmetric ints) and int8 two's complement."""
    d = dt.descriptor()
    return _asym(dt) or (d["elem_bits"] == 8 and d.get("element", "int8") == "int8")


Q8_GROUP = 4   # activation values per q8 scale (cpp/kernels/internal.h, kQ8Group)


def _q8_round(x: np.ndarray) -> np.ndarray:
    """x^ = d q, the fast path's activations, rounded as the C++ quantizer does (float32: id = 127 / amax)."""
    xb = x.astype(np.float32).reshape(-1, Q8_GROUP)
    amax = np.abs(xb).max(axis=1, keepdims=True)
    d = amax / np.float32(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(np.clip(xb * inv, -127, 127))
    return (d * q.astype(np.float32)).astype(np.float32).reshape(-1)


def _fast_bounds(dt, deq: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(worst-case bound, 6-sigma typical bound) of |fast - exact| per row (see the module docstring)."""
    rows, cols = deq.shape
    xb = x.astype(np.float64).reshape(-1, Q8_GROUP)
    half = np.repeat(np.abs(xb).max(axis=1) / 127.0 / 2.0 * 1.0001, Q8_GROUP)    # d_g / 2 per element
    g = _sub_block(dt, cols)
    blocks = deq.reshape(rows, cols // g, g)
    asym = _asym(dt)
    # an asymmetric block's minimum m is one of its values, so |m| <= max|w| and |w - m| <= 2 max|w|
    bmax_w = np.broadcast_to(np.abs(blocks).max(axis=2, keepdims=True), blocks.shape).reshape(rows, cols)
    mag = np.abs(deq)
    # the table error is relative to |scale| * max|element|; a codebook whose two sides differ (fp4-sr:
    # 8 vs -6) may put a block's largest |w| on the short side, so |scale| * max|element| is larger
    side = 1.0
    if dt.codebook is not None:
        cb = np.asarray(dt.codebook, dtype=np.float64)
        side = np.abs(cb).max() / min(cb.max(), -cb.min())
    bmax = np.zeros_like(bmax_w) if _exact_ints(dt) else bmax_w * side * 1.001
    ax = np.abs(x.astype(np.float64))
    # float slack: an asymmetric block's codes part (|w - m| <= 2 max|w|) and offset part may cancel
    worst = mag @ half + (bmax / 254.0) @ (ax + half) + 2e-6 * ((mag + (2.0 * bmax_w if asym else 0.0)) @ ax)
    var = (mag * mag) @ (half * half) / 3.0 + ((bmax / 254.0) ** 2) @ (ax * ax) / 3.0
    return worst, 6.0 * np.sqrt(var)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_matvec_matches_numpy(spec):
    dt, packed, deq, x = _data(spec)
    desc = dt.descriptor()
    ref = deq @ x.astype(np.float64)
    scale = np.abs(deq) @ np.abs(x.astype(np.float64))
    fast_ok = ext.fast_path(desc, COLS)
    worst, typical = _fast_bounds(dt, deq, x)
    exact_by_isa = {}
    for isa in ISAS:
        y = ext.matvec(desc, packed, x, exact=True, isa=isa)
        assert y.dtype == np.float32 and y.shape == (ROWS,)
        err = np.abs(y - ref)
        assert np.all(err <= 1e-5 * scale + 1e-30), f"{spec} [{isa} exact]: max rel err {np.max(err / scale):.3g}"
        exact_by_isa[isa] = y
        yf = ext.matvec(desc, packed, x, exact=False, isa=isa)
        if not fast_ok:  # no integer path: the default is the exact path itself
            np.testing.assert_array_equal(yf, y, err_msg=f"{spec} [{isa}]: no fast path, yet fast != exact")
            continue
        errf = np.abs(yf - ref)
        slack = 1e-5 * scale
        assert np.all(errf <= worst + slack), f"{spec} [{isa} fast]: error {errf} over the worst case {worst}"
        assert np.all(errf <= typical + slack), f"{spec} [{isa} fast]: error {errf} over 6 sigma {typical}"
        if _exact_ints(dt):  # no table: the fast path is dequant(W) . x^ up to float rounding
            hat = deq @ _q8_round(x).astype(np.float64)
            parts = (np.abs(deq) + (2.0 * np.abs(deq).max(axis=1, keepdims=True) if _asym(dt) else 0.0)) @ \
                np.abs(_q8_round(x).astype(np.float64))
            np.testing.assert_array_less(np.abs(yf - hat), 1e-5 * parts + 1e-30,
                                         err_msg=f"{spec} [{isa} fast]: not dequant(W) . x^")
    if "scalar" in exact_by_isa:  # SIMD exact paths agree with the portable one
        for isa, y in exact_by_isa.items():
            np.testing.assert_allclose(y, exact_by_isa["scalar"], rtol=0, atol=float(np.max(2e-5 * scale)) + 1e-30,
                                       err_msg=f"{spec}: {isa} vs scalar exact")


# The types the brief names for integer paths (with block sizes that line up with q8 blocks).
FAST_SPECS = ["q8_0", "int8:group=32", "int8", "int8:group=0", "q4_0", "q4_1", "int4:asym,group=32", "int4:asym",
              "int4", "int4:group=0", "nf4", "sf4", "sf4:group=64", "fp4", "fp4-sr:flip", "mxfp4", "mxfp4:ggml",
              "mxint8", "mxfp6:e2m3", "nvfp4"]


@pytest.mark.parametrize("spec", FAST_SPECS)
def test_fast_path_exists(spec):
    dt = _dtype(spec)
    assert ext.fast_path(dt.descriptor(), COLS), f"{spec} should have an int8 fast path"


@pytest.mark.parametrize("spec", ["f16", "bf16", "f32", "int3", "int5:asym", "mxfp8", "mxfp6:e3m2", "bfp", "bmf",
                                  "blog", "int4:group=16", "nf4:group=16"])
def test_exact_only(spec):
    assert not ext.fast_path(_dtype(spec).descriptor(), COLS)


def test_fast_error_is_small_on_a_real_shape():
    """On a 576-wide layer with Gaussian activations the fast path stays close to exact: relative RMS
    error of the outputs under 1% (q8 rounding alone gives about 0.4%; _data's outliers in most q8
    blocks would coarsen every block's scale, which is what the bounds above are for)."""
    for spec in ("q4_0", "sf4:group=64", "q8_0", "mxfp4", "nvfp4"):
        dt, packed, deq, _ = _data(spec, rows=64, cols=576)
        x = np.random.default_rng(7).standard_normal(576).astype(np.float32)
        ref = deq @ x.astype(np.float64)
        yf = ext.matvec(dt.descriptor(), packed, x, exact=False)
        rel = np.sqrt(np.mean((yf - ref) ** 2) / np.mean(ref ** 2))
        assert rel < 0.01, f"{spec}: relative RMS error {rel:.4f}"


def test_available_isas():
    assert ISAS[0] == "scalar"
    assert ext.active_kernel_isa() in ISAS
    assert set(ISAS) <= {"scalar", "avx2", "avx512", "neon"}


def test_isa_the_cpu_lacks_raises():
    dt, packed, _, x = _data("q4_0", rows=2, cols=64)
    missing = [isa for isa in ("avx2", "avx512", "neon") if isa not in ISAS]
    for isa in missing:
        with pytest.raises(RuntimeError, match=isa):
            ext.matvec(dt.descriptor(), packed, x, isa=isa)
    with pytest.raises(ValueError, match="ISA"):
        ext.matvec(dt.descriptor(), packed, x, isa="sse9")
    assert ext.active_kernel_isa() in ISAS  # a failed call leaves the active ISA alone


def test_bad_shapes_raise():
    dt, packed, _, x = _data("int4", rows=2, cols=256)
    with pytest.raises(ValueError, match="bytes"):
        ext.matvec(dt.descriptor(), packed[:, :-1].copy(), x)
    with pytest.raises(ValueError):
        ext.matvec(dt.descriptor(), packed, x[:100].copy())       # 100 is not a multiple of the group
    with pytest.raises(TypeError):
        ext.matvec(dt.descriptor(), packed, x.astype(np.float64))  # float32 only


def test_repeat_and_zero_rows():
    dt, packed, _, x = _data("q4_0", rows=3, cols=64)
    a = ext.matvec(dt.descriptor(), packed, x)
    np.testing.assert_array_equal(ext.matvec(dt.descriptor(), packed, x, repeat=3), a)
    empty = ext.matvec(dt.descriptor(), np.zeros((0, packed.shape[1]), np.uint8), x)
    assert empty.shape == (0,)


@pytest.mark.parametrize("cols", [96, 576, 4160])
def test_per_channel_long_and_odd_rows(cols):
    """Per-channel blocks of any length: one that straddles q8 blocks (96), a model width, a long row."""
    for spec in ("int4:group=0", "int3:asym,group=0", "int7:group=0", "int8:group=0"):
        dt, packed, deq, x = _data(spec, rows=3, cols=cols)
        ref = deq @ x.astype(np.float64)
        scale = np.abs(deq) @ np.abs(x.astype(np.float64))
        for isa in ISAS:
            y = ext.matvec(dt.descriptor(), packed, x, exact=True, isa=isa)
            assert np.all(np.abs(y - ref) <= 1e-5 * scale), f"{spec} cols={cols} [{isa}]"


def _run_python(code: str, **env: str):
    import os
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_quantconv_isa_env():
    """QUANTCONV_ISA picks the table; naming one the CPU lacks is an error, not a silent fallback."""
    code = "from quantconv import _ext; print(_ext.active_kernel_isa())"
    ok = _run_python(code, QUANTCONV_ISA="scalar")
    assert ok.returncode == 0 and ok.stdout.strip() == "scalar", ok.stderr
    missing = [isa for isa in ("avx2", "avx512", "neon") if isa not in ISAS]
    if missing:
        bad = _run_python(code, QUANTCONV_ISA=missing[0])
        assert bad.returncode != 0 and missing[0] in bad.stderr
    bogus = _run_python(code, QUANTCONV_ISA="sse9")
    assert bogus.returncode != 0 and "QUANTCONV_ISA" in bogus.stderr
