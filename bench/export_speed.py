"""Time and peak memory of exporting the reference model with RTN, one dtype per child process.

    python bench/export_speed.py [--dtypes sf4 q4_0 ...]

Prints a table: dtype, seconds, peak RSS (MB). The foundation goal: < 60 s and < 1 GB for the
135M reference on 2 cores.
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
from quantconv.convert.export import export
from quantconv.convert.sources import open_source
t = time.perf_counter()
report = export(open_source(None), sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "file_mb": report.file_bytes / 1e6, "linear_bpw": report.linear_bits_per_weight}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", nargs="+", default=["sf4", "nf4", "int4:asym", "mxfp4", "q4_0", "q8_0", "f16"])
    args = ap.parse_args()
    print("| dtype | seconds | peak RSS MB | file MB | linear bits/weight |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            out = Path(tmp) / "m.gguf"
            proc = subprocess.run([sys.executable, "-c", CHILD, str(out), dtype], capture_output=True, text=True)
            if proc.returncode:
                print(f"| {dtype} | failed: {proc.stderr.strip().splitlines()[-1]} | | | |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"| {dtype} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['file_mb']:.1f} | {r['linear_bpw']:.3f} |",
                  flush=True)
            out.unlink()


if __name__ == "__main__":
    main()
