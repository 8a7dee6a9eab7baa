"""The datatype cases tests sweep, in one place: every default registry row plus variants of its options."""
from __future__ import annotations

from quantconv.formats.registry import list_dtypes

CODEBOOKS = ("nf4", "sf4", "sf4:nu=3", "sf4:nu=10", "fp4", "fp4-sr", "fp4-sp", "apot4", "apot4-sp", "fp4-log")

# One or two specs per option the builders take (the registry's own properties are checked on these).
OPTION_VARIANTS = [
    "int2:group=32", "int3:asym,group=64", "int4:group=0", "int5:asym,group=0", "int6:group=256",
    "int7:asym,group=16", "int8:group=32", "int4:asym,group=32", "sf4:nu=3", "sf4:nu=10,group=64",
    "fp4-sr:flip", "fp4-sp:flip,group=32", "apot4-sp:flip", "nf4:group=64", "mxfp4:ggml", "mxfp6:e3m2",
    "mxfp8:e5m2", "bfp:mant=4,block=32", "bfp:mant=8,block=16", "bmf:exp=3,mant=2,block=32",
    "bmf:exp=4,mant=3", "blog:bits=5,block=32", "blog:bits=3",
]
# The few variants that also go through the whole pipeline (export, calibrated rounding).
PIPELINE_VARIANTS = ["sf4:nu=3", "fp4-sr:flip", "int4:group=0", "int4:asym,group=32"]
# One representative per family for the slower checks (GPTQ against RTN).
ONE_PER_FAMILY = ["sf4", "nf4", "fp4-sp", "apot4", "int4:asym", "int4", "int8", "mxfp4", "mxfp6", "mxfp8", "mxint8",
                  "q4_0", "q8_0", "nvfp4", "bfp", "bmf", "blog", "q5_0", "q5_1", "iq4_nl"]


def _sweep_variants() -> list[str]:
    """Every option crossed with its neighbours: what the C++ decoders and kernels are checked on."""
    specs = []
    for bits in range(2, 9):
        for asym in ("", "asym,"):
            for group in (16, 32, 64, 128, 0):
                specs.append(f"int{bits}:{asym}group={group}")
    for name in CODEBOOKS:
        sep = "," if ":" in name else ":"
        specs += [name, f"{name}{sep}flip", f"{name}{sep}flip,group=64"]
        specs += [f"{name}{sep}group={group}" for group in (16, 32, 64, 256)]
    specs += ["mxfp4", "mxfp4:ggml", "mxfp6", "mxfp6:e3m2", "mxfp6:e2m3", "mxfp8", "mxfp8:e5m2", "mxfp8:e4m3",
              "mxint8"]
    for mant in range(2, 9):
        specs += [f"bfp:mant={mant}", f"bfp:mant={mant},block=32"]
    specs += ["bfp:block=64", "bfp:block=128"]
    for ebits in range(1, 7):
        specs += [f"bmf:exp={ebits},mant={mbits}" for mbits in range(0, 8 - ebits)]
    specs += ["bmf:exp=3,mant=2,block=32", "bmf:block=64", "bmf:exp=4,mant=3,block=128"]
    for bits in range(2, 9):
        specs += [f"blog:bits={bits}", f"blog:bits={bits},block=64"]
    specs += ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "nvfp4", "f16", "bf16", "f32", "int8:group=32", "int4:asym,group=32"]
    return specs


def default_specs() -> list[str]:
    """The default row of every datatype name, registry order."""
    return [d.spec for d in list_dtypes()]


def registry_specs(variants: list[str]) -> list[str]:
    """The default row of every datatype, then `variants`, without repeats, in that order."""
    return list(dict.fromkeys(default_specs() + variants))


SWEEP_SPECS = registry_specs(_sweep_variants())
