"""sha256 of the GGUF export of every registry datatype (RTN) and of a GPTQ sf4 export, for a source
model (default: the built-in reference model). A refactor that must not change any byte is checked by
running this before and after and comparing the JSON files:

    python bench/export_hashes.py --json before.json            # at the old commit
    python bench/export_hashes.py --json after.json --compare before.json

The exports run through the `quantconv export` command line (the interface that stays stable), two at
a time; each file is hashed and deleted.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Non-default options of the registry rows: one spec per option family the builders take.
VARIANTS = ["mxfp4:ggml", "sf4:nu=3", "sf4:group=64", "nf4:group=32", "fp4-sr:flip", "fp4-sp:flip",
            "apot4-sp:flip", "int4:group=0", "int8:group=32", "int4:asym,group=32", "int3:asym,group=64",
            "mxfp6:e3m2", "mxfp8:e5m2", "bfp:mant=4,block=32", "bmf:exp=3,mant=2", "blog:bits=5,block=32"]
DEFAULT_CALIB = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wikitext-2-valid.txt"


def registry_specs(cli: list[str]) -> list[str]:
    out = subprocess.run([*cli, "dtypes", "--json"], check=True, capture_output=True, text=True).stdout
    return [row["name"] for row in json.loads(out)]


def export_hash(job: tuple[str, list[str]], cli: list[str], source: list[str], tmp: Path) -> tuple[str, str, float]:
    key, extra = job
    path = tmp / (hashlib.md5(key.encode()).hexdigest() + ".gguf")
    start = time.perf_counter()
    run = subprocess.run([*cli, "export", *source, "-o", str(path), "-q", *extra],
                         capture_output=True, text=True)
    if run.returncode:
        return key, "error: " + (run.stderr.strip().splitlines() or ["?"])[-1], time.perf_counter() - start
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.unlink()
    return key, digest, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", help="model to export (default: the built-in reference model)")
    ap.add_argument("--json", type=Path, help="write {export: sha256} here")
    ap.add_argument("--compare", type=Path, help="a JSON file of an earlier run: report every difference")
    ap.add_argument("--calib", type=Path, default=DEFAULT_CALIB, help="calibration text of the GPTQ export")
    ap.add_argument("--nsamples", type=int, default=32, help="GPTQ calibration windows")
    ap.add_argument("--no-gptq", action="store_true", help="RTN exports only")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cli", default="quantconv", help="the command to run (e.g. another checkout's entry point)")
    args = ap.parse_args()

    cli = shlex.split(args.cli)
    jobs = [(f"rtn {s}", ["--dtype", s]) for s in registry_specs(cli) + VARIANTS]
    if not args.no_gptq:
        if not args.calib.is_file():
            print(f"error: calibration text {args.calib} not found; pass --calib PATH or --no-gptq", file=sys.stderr)
            return 2
        jobs.insert(0, ("gptq sf4", ["--dtype", "sf4", "--algo", "gptq", "--act-order", "--scale-search",
                                     "--calib", str(args.calib), "--nsamples", str(args.nsamples), "--seqlen", "256"]))
    source = [args.source] if args.source else []
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="qc-hashes-") as tmp, cf.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(export_hash, job, cli, source, Path(tmp)) for job in jobs]
        for n, fut in enumerate(cf.as_completed(futures), 1):
            key, digest, seconds = fut.result()
            results[key] = digest
            print(f"[{n}/{len(jobs)}] {key:28s} {digest[:16]}  {seconds:6.1f} s", flush=True)
    results = {k: results[k] for k, _ in jobs}
    print("\n| export | sha256 |\n|---|---|")
    for k, v in results.items():
        print(f"| {k} | `{v}` |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    failed = [k for k, v in results.items() if v.startswith("error")]
    if args.compare:
        before = json.loads(args.compare.read_text())
        diff = [k for k in sorted(set(before) | set(results)) if before.get(k) != results.get(k)]
        for k in diff:
            print(f"DIFFERS {k}: {before.get(k, '-')[:16]} -> {results.get(k, '-')[:16]}")
        print(f"{len(results) - len(diff)} of {len(results)} exports identical to {args.compare}")
        return 1 if diff or failed else 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
