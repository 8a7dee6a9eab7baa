"""Time and peak memory of exporting the reference model, one dtype per child process.

    python bench/export_speed.py [--dtypes sf4 q4_0 ...] [--algo gptq --calib TEXT] [--source FILE]

Prints a table: dtype, algo, wall seconds, CPU seconds, peak RSS (MB). Goals for the 135M reference on
2 cores: RTN < 60 s and < 1 GB; GPTQ (128 x 512 calibration tokens) < 5 min and < 4 GB. Pin the cores
with `taskset -c 0,1` on a larger machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from quantconv.convert.algorithms import configs
from quantconv.convert.calibrate import CalibOptions
from quantconv.convert.export import export
from quantconv.convert.sources import open_source
out, dtype, algo, calib, source = sys.argv[1:6]
opts = CalibOptions(algos=configs(algo), calib=calib or None) if algo != "rtn" else None
t = time.perf_counter()
report = export(open_source(source or None), out, dtype, algo=algo, calib=opts)
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024,
                  "file_mb": report.file_bytes / 1e6, "linear_bpw": report.linear_bits_per_weight}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", nargs="+", default=["sf4", "nf4", "int4:asym", "mxfp4", "q4_0", "q8_0", "f16"])
    ap.add_argument("--algo", default="rtn", help="rtn, gptq, awq+gptq, ... (calibrated ones need --calib)")
    ap.add_argument("--calib", default="", help="calibration text file")
    ap.add_argument("--source", default="", help="model (default: the built-in reference model)")
    args = ap.parse_args()
    print("| dtype | algo | wall s | CPU s | peak RSS MB | file MB | linear bits/weight |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            out = Path(tmp) / "m.gguf"
            proc = subprocess.run([sys.executable, "-c", CHILD, str(out), dtype, args.algo, args.calib, args.source],
                                  capture_output=True, text=True)
            if proc.returncode:
                print(f"| {dtype} | {args.algo} | failed: {proc.stderr.strip().splitlines()[-1]} | | | | |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"| {dtype} | {args.algo} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['file_mb']:.1f} | "
                  f"{r['linear_bpw']:.3f} |", flush=True)
            out.unlink()


if __name__ == "__main__":
    main()
