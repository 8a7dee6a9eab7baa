"""The runtime's fast path against its exact path, per datatype (runtime issue: "its perplexity on the
reference model stays within 0.3 % of the exact float dequantization path").

    python bench/fast_vs_exact.py --out docs/runtime/fast_vs_exact [--dtypes sf4,nf4,...] [--jobs 1]

For each dtype: `quantconv export --dtype D` (RTN) of the reference model (or --source), then `quantconv
eval --exact` and `quantconv eval` on it (ctx 512, 40 windows of wikitext-2-raw-test). Datatypes with
no fast path are listed with the same number twice. Writes fast_vs_exact.json and .md; resumable.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from quantconv.runtime.bench import machine_description

DATA = Path("/work/shared/data")
DTYPES = ["sf4", "nf4", "fp4", "fp4-sr", "fp4-sp", "apot4", "int4", "int4:asym", "int8", "mxfp4", "mxfp6",
          "mxint8", "q8_0", "q4_0", "q4_1", "nvfp4"]
LIMIT_PCT = 0.3


def quantconv(*args: str) -> str:
    p = subprocess.run(["quantconv", *args], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"error: quantconv {' '.join(args)} failed: {p.stderr.strip()[-400:]}")
    return p.stdout


def has_fast_path(dtype: str) -> bool:
    from quantconv import _ext
    from quantconv.formats.registry import get_dtype

    return bool(_ext.fast_path(get_dtype(dtype).descriptor(), 1536))   # 1536: every group size divides it


def measure(dtype: str, args) -> dict:
    gguf = args.work / f"{dtype.replace(':', '-')}.gguf"
    if not gguf.exists():
        quantconv("export", *([str(args.source)] if args.source else []), "-o", str(gguf), "--dtype", dtype, "-q")
    row = {"dtype": dtype, "fast_path": has_fast_path(dtype)}
    for path, extra in (("exact", ["--exact"]), ("fast", [])):
        t = time.perf_counter()
        out = quantconv("eval", str(gguf), "--text", str(args.text), "--ctx", "512", "--windows", str(args.windows),
                        "--threads", str(args.threads), "--json", *extra)
        row[path] = json.loads(out)["ppl"]
        row[path + "_seconds"] = round(time.perf_counter() - t, 1)
    row["delta_pct"] = 100 * (row["fast"] / row["exact"] - 1)
    print(f"{dtype}: exact {row['exact']:.4f} fast {row['fast']:.4f} ({row['delta_pct']:+.3f} %)", file=sys.stderr, flush=True)
    return row


def markdown(rows: dict, meta: dict) -> str:
    lines = ["# Fast vs exact path, per datatype", "",
             f"Reference model, RTN export of each dtype (`quantconv export --dtype D`), `quantconv eval` ctx 512, "
             f"{meta['windows']} windows of wikitext-2-raw-test, {meta['threads']} threads, fast path vs `--exact` on the "
             f"same file; commit {meta['commit']}; {meta['machine']}. Limit: |Δ| <= {LIMIT_PCT} %. "
             "The head/embedding (q8_0 by default) takes the fast path too. Made by `bench/fast_vs_exact.py`.", "",
             "| dtype | fast path | ppl exact | ppl fast | Δ % | within limit |", "|---|---|---|---|---|---|"]
    for d in sorted(rows, key=lambda d: DTYPES.index(d) if d in DTYPES else 99):
        r = rows[d]
        ok = "yes" if abs(r["delta_pct"]) <= LIMIT_PCT else "**no**"
        lines.append(f"| {d} | {'int8 acts' if has_fast_path(d) else 'none (exact only)'} | {r['exact']:.4f} | "
                     f"{r['fast']:.4f} | {r['delta_pct']:+.3f} | {ok} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/runtime/fast_vs_exact"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/qc-fast-vs-exact"))
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--source", type=Path, help="model to export (default: the built-in reference model)")
    ap.add_argument("--text", type=Path, default=DATA / "wikitext-2-raw-test.txt")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=1, help="dtypes measured at once")
    ap.add_argument("--machine", default=None, help="the machine's name in the table (default: CPU model, cores, ISA)")
    ap.add_argument("--report", action="store_true", help="only rewrite the .md from the JSON")
    args = ap.parse_args()
    if args.report:
        data = json.loads((args.out / "fast_vs_exact.json").read_text())
        (args.out / "fast_vs_exact.md").write_text(markdown(data["rows"], data["meta"]))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fast_vs_exact.json"
    data = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    todo = [d for d in args.dtypes.split(",") if d not in data["rows"]]
    with ThreadPoolExecutor(max(1, args.jobs)) as ex:
        for fut in as_completed([ex.submit(measure, d, args) for d in todo]):   # saved as each one ends
            row = fut.result()
            data["rows"][row["dtype"]] = row
            path.write_text(json.dumps(data, indent=1))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    data["meta"] = {"windows": args.windows, "threads": args.threads, "commit": commit or "?", "machine": args.machine or machine_description()}
    path.write_text(json.dumps(data, indent=1))
    (args.out / "fast_vs_exact.md").write_text(markdown(data["rows"], data["meta"]))
    print(markdown(data["rows"], data["meta"]))


if __name__ == "__main__":
    main()
