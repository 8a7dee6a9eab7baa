"""Every registry row: round-to-nearest optimality, exact code points, error bounds, byte layout,
bit-exactness with gguf-py where the type is ggml's, spec parsing, and the SF4 construction."""
from __future__ import annotations

import gguf
import gguf.quants as gq
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import t as student_t

from quantconv.errors import QuantconvError
from quantconv.formats import bitplanes
from quantconv.formats.codebooks import NF4, NF4_OFFSET, student_float4
from quantconv.formats.registry import (OWN_ID_RANGE, TYPE_ID_BASES, decode_type_id, dtype_from_descriptor,
                                         encode_type_id, get_dtype)
from tests.dtype_cases import OPTION_VARIANTS, SWEEP_SPECS, registry_specs

SPECS = registry_specs(OPTION_VARIANTS)
# families whose scale is computed in fp32 but stored in fp16 (as ggml does): nearest up to that rounding
FP16_SCALE_ROUNDING = {"int", "ggml"}


def weights(rows=8, cols=256, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(5, size=(rows, cols)) * scale
    return w.astype(np.float32)


def block_grid(dtype, block_bytes: np.ndarray, block: int) -> np.ndarray:
    """Every value a block with this header can hold: decode blocks whose codes are all equal."""
    bits = dtype.elem_bits
    header = dtype.codec.block_bytes(block) - bitplanes.packed_bytes(bits, block)
    codes = np.repeat(np.arange(1 << bits, dtype=np.uint8)[:, None], block, axis=1)
    blocks = np.concatenate([np.repeat(block_bytes[None, :header], len(codes), axis=0),
                             bitplanes.pack(codes, bits)], axis=1)
    grid = dtype.codec.dequantize_blocks(blocks, block)[:, 0]
    if "element_max" in dtype.params:     # drop NaN/inf codes, which the quantizer never produces
        grid = grid[np.abs(grid) <= dtype.params["element_max"] * 2.0 ** (int(block_bytes[0]) - 127)]
    return grid


# NVFP4, Q5_0 and Q5_1 do not store their codes as bit planes after the header (block_grid's assumption)
@pytest.mark.parametrize("spec", [s for s in SPECS if get_dtype(s).family not in ("float",)
                                  and s not in ("nvfp4", "q5_0", "q5_1")])
def test_round_to_nearest_given_the_block_scale(spec):
    dtype = get_dtype(spec)
    w = weights(4, 256, seed=1)
    packed = dtype.quantize(w)
    deq = dtype.dequantize(packed, w.shape)
    block = dtype.block_for(w.shape[1])
    bpb = dtype.codec.block_bytes(block)
    blocks = packed.reshape(-1, bpb)
    xs, ys = w.reshape(-1, block), deq.reshape(-1, block)
    for b in range(len(blocks)):
        grid = block_grid(dtype, blocks[b], block)
        assert np.all(np.isin(ys[b], grid)), "a dequantized value is not on the block's grid"
        best = np.abs(xs[b][:, None] - grid[None, :]).min(axis=1)
        err = np.abs(xs[b] - ys[b])
        step = np.max(np.diff(np.unique(grid)))
        # ggml-style ints round with the fp32 scale but store it in fp16: off by up to |q| * fp16 ulp
        tol = step * 2.0 ** (dtype.elem_bits - 10) if dtype.family in FP16_SCALE_ROUNDING else step * 1e-6
        assert np.all(err <= best + tol), f"block {b}: not the nearest grid value"


@pytest.mark.parametrize("spec", SPECS)
def test_requantizing_dequantized_values_is_exact(spec):
    """Values already on the grid (the exact code points) survive a second round trip unchanged."""
    dtype = get_dtype(spec)
    if dtype.codebook and max(dtype.codebook) != -min(dtype.codebook) and not dtype.params["flip"]:
        pytest.skip("without flip, a peak on the short side is clipped, so the next scale differs")
    if dtype.codebook and dtype.params["flip"] and max(dtype.codebook) == -min(dtype.codebook):
        pytest.skip("equal extremes: after one pass +peak and -peak tie, and the sign choice may differ")
    w = weights(4, 256, seed=2)
    once = dtype.fake_quantize(w)
    twice = dtype.fake_quantize(once)
    np.testing.assert_array_equal(once, twice)


@pytest.mark.parametrize("spec", SPECS)
def test_sizes_and_descriptor_round_trip(spec):
    dtype = get_dtype(spec)
    w = weights(3, 512, seed=3)
    packed = dtype.quantize(w)
    assert packed.shape == (3, dtype.row_bytes(512))
    assert packed.nbytes == dtype.tensor_bytes(w.shape)
    if dtype.block_size:
        assert dtype.row_bytes(512) == 512 // dtype.block_size * dtype.bytes_per_block
    again = dtype_from_descriptor(dtype.descriptor())
    assert again.spec == dtype.spec and again.gguf_type_id == dtype.gguf_type_id
    np.testing.assert_array_equal(again.dequantize(packed, w.shape), dtype.dequantize(packed, w.shape))


@pytest.mark.parametrize("spec", SPECS)
def test_zeros_and_sign_symmetry(spec):
    dtype = get_dtype(spec)
    z = np.zeros((2, 256), np.float32)
    assert np.all(dtype.fake_quantize(z) == 0)
    w = weights(2, 256, seed=4)
    if dtype.family in ("int", "bfp", "blog", "mx", "bmf") and not getattr(dtype.codec, "asym", False):
        # symmetric grids: quantizing -w gives -Q(w) (ties aside, which random data avoids)
        if dtype.family != "int":
            np.testing.assert_array_equal(dtype.fake_quantize(-w), -dtype.fake_quantize(w))


RELATIVE_RMSE_BOUND = {  # measured values on t(5) data are well inside these; they catch broken packing
    2: 0.85, 3: 0.45, 4: 0.25, 5: 0.09, 6: 0.06, 7: 0.03, 8: 0.06, 16: 0.01, 32: 0.0,
}


@pytest.mark.parametrize("spec", SPECS)
def test_error_bound_by_bits(spec):
    dtype = get_dtype(spec)
    w = weights(16, 512, seed=5)
    rel = np.sqrt(np.mean((dtype.fake_quantize(w) - w) ** 2) / np.mean(w ** 2))
    bound = RELATIVE_RMSE_BOUND[dtype.elem_bits]
    if dtype.name in ("fp4-log", "blog"):   # powers of two: relative error ~1/3 at any width
        bound = max(bound, 0.25)
    assert rel <= bound + 1e-7, f"{spec}: relative RMSE {rel:.4f} > {bound}"


@settings(max_examples=40, deadline=None)
@given(spec=st.sampled_from(SPECS),
       w=hnp.arrays(np.float32, (2, 64), elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=True)))
def test_property_round_trip_is_finite_bounded_and_idempotent(spec, w):
    dtype = get_dtype(spec)
    if dtype.block_size and 64 % dtype.block_size:
        return
    q = dtype.fake_quantize(w)
    assert np.all(np.isfinite(q))
    # no value grows beyond its row's peak by more than the format's rounding of the peak
    assert np.all(np.abs(q) <= np.abs(w).max(axis=1, keepdims=True) * 2.0 + 1e-30)
    if dtype.name == "iq4_nl":  # ggml's rule refits d by weighted least squares: a second pass may move it
        return
    np.testing.assert_array_equal(dtype.fake_quantize(q), q)


@pytest.mark.parametrize("spec", SPECS)
def test_codec_split_api_unpack_inverts_pack(spec):
    codec = get_dtype(spec).codec
    assert codec.fittable == (get_dtype(spec).family != "float")
    if not codec.fittable:
        return
    blocks = weights(4, 256, seed=9).reshape(-1, get_dtype(spec).block_for(256))
    params = codec.fit(blocks)
    codes = codec.encode(blocks, params)
    got, stored = codec.unpack(codec.pack(codes, params), blocks.shape[1])
    np.testing.assert_array_equal(got, codes)
    np.testing.assert_array_equal(codec.decode(got, stored), codec.decode(codes, params))


# --- bit-exactness with gguf-py's quantizers ---------------------------------------------------------
GGML = [("q8_0", "Q8_0"), ("int8:group=32", "Q8_0"), ("q4_0", "Q4_0"), ("q4_1", "Q4_1"),
        ("int4:asym,group=32", "Q4_1"), ("mxfp4:ggml", "MXFP4"), ("bf16", "BF16"), ("f16", "F16")]


@pytest.mark.parametrize("spec,ggml_name", GGML)
@pytest.mark.parametrize("kind", ["random", "edges"])
def test_bytes_equal_gguf_py(spec, ggml_name, kind):
    w = weights(8, 256, seed=6)
    if kind == "edges":
        w[0] = 0                                   # an all-zero row
        w[1, :32] = 1e-6                           # tiny values
        w[2] = np.round(w[2] * 4) / 4              # exact quarters: ties for every rounding rule
        w[3, :32] = np.float32(2.0) ** -np.arange(32)  # powers of two, subnormal-range scales
        w[4] *= 3e3                                # large values (f16 range)
    qtype = gguf.GGMLQuantizationType[ggml_name]
    ours = get_dtype(spec).quantize(w).reshape(-1)
    theirs = np.asarray(gq.quantize(w, qtype)).view(np.uint8).reshape(-1)
    np.testing.assert_array_equal(ours, theirs)
    assert get_dtype(spec).gguf_type_id == int(qtype)


@pytest.mark.parametrize("spec,ggml_name", GGML + [("nvfp4", "NVFP4"), ("mxfp4", "MXFP4")])
def test_dequantize_equals_gguf_py(spec, ggml_name):
    w = weights(4, 256, seed=7)
    dtype = get_dtype(spec)
    packed = dtype.quantize(w)
    theirs = gq.dequantize(packed.reshape(-1), gguf.GGMLQuantizationType[ggml_name]).reshape(-1)
    np.testing.assert_array_equal(dtype.dequantize(packed, w.shape).reshape(-1), theirs.astype(np.float32))


def test_ocp_mxfp4_rounds_ties_to_even_where_ggml_does_not():
    w = np.zeros((1, 32), np.float32)
    w[0, :4] = [4.0, 0.75, 1.25, 2.5]      # scale 2^0: 0.75 is a tie between 0.5 and 1.0
    ocp = get_dtype("mxfp4").fake_quantize(w)[0, :4]
    ggml = get_dtype("mxfp4:ggml").fake_quantize(w)[0, :4]
    np.testing.assert_array_equal(ocp, [4.0, 1.0, 1.0, 2.0])     # to the even mantissa
    np.testing.assert_array_equal(ggml, [4.0, 0.5, 1.0, 2.0])    # to the first (smaller) table entry


def test_nvfp4_scale_and_codes_follow_ggml_reference():
    w = weights(2, 128, seed=8)
    dtype = get_dtype("nvfp4")
    deq = dtype.fake_quantize(w)
    # each 16-value sub-block: the peak maps to +-6 times the UE4M3-rounded scale, within its rounding
    sub = w.reshape(-1, 16)
    dq = deq.reshape(-1, 16)
    assert np.all(np.abs(np.abs(dq).max(axis=1) - np.abs(sub).max(axis=1)) <= np.abs(sub).max(axis=1) * 0.25)


# --- codebooks ---------------------------------------------------------------------------------------
SF4_NU5 = (-1.0, -0.627781, -0.454736, -0.334331, -0.237434, -0.152899, -0.074982, 0.0,
           0.065513, 0.132965, 0.204661, 0.283835, 0.375805, 0.491076, 0.656781, 1.0)


def test_sf4_nu5_matches_the_paper():
    np.testing.assert_allclose(student_float4(5.0), SF4_NU5, atol=1e-6)
    assert get_dtype("sf4").codebook == tuple(float(np.float32(v)) for v in student_float4(5.0))


@pytest.mark.parametrize("nu", [1.0, 2.0, 3.0, 4.5, 5.0, 8.0, 30.0])
def test_sf4_is_nf4_construction_with_student_t_quantiles(nu):
    table = np.array(student_float4(nu))
    assert table[7] == 0 and table[0] == -1 and table[15] == 1 and np.all(np.diff(table) > 0)
    # undo the normalisation: the positive values sit at t-quantiles of linspace(offset, .5, 9)
    peak = student_t.ppf(NF4_OFFSET, df=nu)
    levels = student_t.cdf(table[8:] * peak, df=nu)
    np.testing.assert_allclose(levels, np.linspace(NF4_OFFSET, 0.5, 9)[:-1][::-1], atol=1e-9)
    negative_levels = student_t.cdf(-table[:7] * peak, df=nu)
    np.testing.assert_allclose(negative_levels, np.linspace(NF4_OFFSET, 0.5, 8)[:-1], atol=1e-9)


def test_sf4_tends_to_nf4_as_nu_grows():
    np.testing.assert_allclose(student_float4(1e7), NF4, atol=2e-5)


def test_heavier_tails_pull_inner_levels_towards_zero():
    assert student_float4(3)[8] < student_float4(5)[8] < student_float4(30)[8] < NF4[8]


@pytest.mark.parametrize("spec,extra", [("fp4-sr", 8.0), ("fp4-sp", 5.0), ("apot4-sp", 0.5)])
def test_super_variants_replace_minus_zero(spec, extra):
    table = get_dtype(spec).codebook
    assert table[8] == extra and len(set(table)) == 16 - (spec == "fp4-sr" and 0)


def test_flip_puts_the_peak_on_the_long_side():
    w = np.zeros((1, 128), np.float32)
    w[0, 0], w[0, 1] = -8.0, 1.0          # peak is negative; fp4-sr's long side (+8) is positive
    plain = get_dtype("fp4-sr").fake_quantize(w)[0, 0]
    flipped = get_dtype("fp4-sr:flip").fake_quantize(w)[0, 0]
    assert plain == -6.0 and flipped == -8.0


def test_codebook_ties_go_to_the_smaller_value():
    w = np.zeros((1, 128), np.float32)
    w[0, :3] = [6.0, 1.25, -1.25]          # scale 1: 1.25 is halfway between 1 and 1.5
    np.testing.assert_array_equal(get_dtype("fp4").fake_quantize(w)[0, :3], [6.0, 1.0, -1.5])


# --- layout details ----------------------------------------------------------------------------------
def test_nibble_order_follows_ggml():
    codes = np.arange(32, dtype=np.uint8)[None, :] % 16
    packed = bitplanes.pack(codes, 4)
    assert packed[0, 0] == (0 | (0 << 4)) and packed[0, 1] == (1 | (1 << 4))
    codes2 = np.arange(32, dtype=np.uint8)[None, :] // 2
    assert bitplanes.pack(codes2, 4)[0, 3] == (1 | (9 << 4))  # element 3 low, element 19 high


@pytest.mark.parametrize("bits", range(1, 9))
def test_bitplanes_round_trip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(5, 64), dtype=np.uint8)
    packed = bitplanes.pack(codes, bits)
    assert packed.shape[1] == bitplanes.packed_bytes(bits, 64) == 64 * bits // 8
    np.testing.assert_array_equal(bitplanes.unpack(packed, bits, 64), codes)


def test_int_symmetric_codes_are_twos_complement():
    w = np.linspace(-1, 1, 128, dtype=np.float32)[None, :]
    packed = get_dtype("int8").quantize(w)
    q = packed[0, 2:].view(np.int8)
    assert q.min() == -127 and q.max() == 127


def test_mx_scale_is_ocp_shared_exponent():
    w = np.zeros((1, 32), np.float32)
    w[0, 0] = 5.0     # floor(log2 5) = 2, emax(E2M1) = 2 -> e = 127
    assert get_dtype("mxfp4").quantize(w)[0, 0] == 127
    assert get_dtype("mxfp8").quantize(w)[0, 0] == 127 + 2 - 8
    assert get_dtype("mxint8").quantize(w)[0, 0] == 127 + 2


# --- specs and bad input -----------------------------------------------------------------------------
def test_spec_parsing_and_canonical_names():
    assert get_dtype("SF4").spec == "sf4"
    assert get_dtype("sf4:nu=3").spec == "sf4:nu=3"
    assert get_dtype("int4:group=64,asym").spec == "int4:asym,group=64"
    assert get_dtype("bfp:mant=6,block=16").spec == "bfp"
    assert get_dtype("int4-asym").spec == "int4:asym"
    assert get_dtype("mxfp6:e3m2").descriptor()["element"] == "e3m2"
    assert get_dtype("sf4:nu=3").gguf_type_id != get_dtype("sf4").gguf_type_id


@pytest.mark.parametrize("bad", ["nope", "int9", "int4:group=48", "sf4:nu=-1", "sf4:nu=x", "int4:asym=2",
                                 "mxfp6:e4m3", "bmf:exp=5,mant=4", "int4:colour=red", "", "sf4:nu=3,nu=4"])
def test_bad_specs_raise_one_clear_error(bad):
    with pytest.raises(QuantconvError) as err:
        get_dtype(bad)
    assert "\n" not in str(err.value)


def test_non_finite_weights_and_bad_shapes_are_refused():
    dtype = get_dtype("sf4")
    with pytest.raises(QuantconvError, match="NaN"):
        dtype.quantize(np.full((1, 128), np.nan, np.float32))
    with pytest.raises(QuantconvError, match="multiple"):
        dtype.quantize(np.zeros((1, 100), np.float32))


def test_every_own_type_id_is_unique_and_in_range():
    """Rows share an id only where the file's descriptor tells them apart (a codebook's table or flip);
    every own id decodes to its row's family and group and encodes back to itself."""
    seen = {}
    for spec in dict.fromkeys(SPECS + SWEEP_SPECS):
        d = get_dtype(spec)
        if d.standard:
            assert d.gguf_type_id < 64
            continue
        assert OWN_ID_RANGE[0] <= d.gguf_type_id < OWN_ID_RANGE[1]
        family, index, group = decode_type_id(d.gguf_type_id)
        assert family == d.family and group == (None if family == "mx" else d.block_size)
        assert encode_type_id(family, index, group) == d.gguf_type_id
        layout = (d.name, d.block_size, d.bytes_per_block, d.elem_bits)
        assert seen.setdefault(d.gguf_type_id, layout) == layout, f"{spec} shares an id with another layout"


def test_type_ids_files_carry_stay_put():
    ids = {"int2": 1027, "int4": 1043, "int8:asym": 1203, "int4:group=0": 1047, "nf4": 1283, "sf4": 1291,
           "sf4:nu=3": 1347, "fp4-log:group=16": 1336, "mxfp6": 1537, "mxint8": 1541, "bfp": 1632,
           "bmf": 1788, "blog": 2116, "blog:bits=8,block=128": 2151}
    assert {s: get_dtype(s).gguf_type_id for s in ids} == ids
    assert list(TYPE_ID_BASES.values()) == sorted(TYPE_ID_BASES.values())
    with pytest.raises(ValueError):
        encode_type_id("int", 32, 16)      # would run into the codebook ids
    with pytest.raises(ValueError):
        decode_type_id(40)                 # a ggml id
