"""Single-thread speed of the C++ matvec kernels (quantconv._ext.matvec), exact vs fast path.

    python bench/kernels_speed.py                       # default types and shapes, every ISA
    python bench/kernels_speed.py --types q4_0 sf4 --isa avx2 --shapes 1536x576

Times are microseconds per matvec (rows x cols weights times one vector), measured inside C++
(`repeat`) so Python call overhead and activation preparation are amortized away; the best of
several rounds is reported, with the GB/s of weight bytes the default path streams. "fast" is "-"
where the type has no integer path (the default is then the exact path).
"""
from __future__ import annotations

import argparse
import os
import time

# numpy's BLAS threads spin after quantize() and would share the cores with the timed kernel
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from quantconv import _ext  # noqa: E402
from quantconv.formats.registry import get_dtype  # noqa: E402

DEFAULT_TYPES = ["sf4:group=64", "sf4:group=128", "q4_0", "q8_0", "mxfp4", "f16"]
DEFAULT_SHAPES = ["1536x576", "576x1536"]


def time_matvec(desc, packed, x, exact: bool, isa: str, min_seconds: float = 0.2) -> float:
    _ext.matvec(desc, packed, x, exact=exact, isa=isa)  # warm up
    repeat = 1
    while True:
        t0 = time.perf_counter()
        _ext.matvec(desc, packed, x, exact=exact, isa=isa, repeat=repeat)
        dt = time.perf_counter() - t0
        if dt >= min_seconds / 5:
            break
        repeat *= 4
    best = dt / repeat
    for _ in range(4):
        t0 = time.perf_counter()
        _ext.matvec(desc, packed, x, exact=exact, isa=isa, repeat=repeat)
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="+", default=DEFAULT_TYPES)
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="ROWSxCOLS")
    ap.add_argument("--isa", nargs="+", default=None, help="default: every available ISA")
    args = ap.parse_args()
    isas = args.isa or _ext.available_isas()
    rng = np.random.default_rng(0)
    print(f"{'type':16} {'shape':>10} {'isa':>7} {'exact us':>10} {'fast us':>10} {'GB/s':>10}")
    for spec in args.types:
        dt = get_dtype(spec)
        for shape in args.shapes:
            rows, cols = (int(v) for v in shape.split("x"))
            if cols % dt.block_for(cols):
                print(f"{spec:16} {shape:>10}   (cols not a multiple of the block {dt.block_size}: skipped)")
                continue
            w = rng.standard_normal((rows, cols)).astype(np.float32)
            packed = np.ascontiguousarray(dt.quantize(w))
            x = rng.standard_normal(cols).astype(np.float32)
            desc = dt.descriptor()
            has_fast = _ext.fast_path(desc, cols)
            for isa in isas:
                t_exact = time_matvec(desc, packed, x, True, isa)
                t_fast = time_matvec(desc, packed, x, False, isa) if has_fast else t_exact
                gbs = packed.nbytes / (t_fast * 1e-6) / 1e9
                fast = f"{t_fast:10.1f}" if has_fast else f"{'-':>10}"
                print(f"{spec:16} {shape:>10} {isa:>7} {t_exact:10.1f} {fast} {gbs:10.2f}", flush=True)


if __name__ == "__main__":
    main()
