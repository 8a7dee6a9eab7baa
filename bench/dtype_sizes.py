"""Size of the reference model's export in every default datatype, as `quantconv inspect` reports it.

    python bench/dtype_sizes.py [--dtypes ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from quantconv.convert.export import export
from quantconv.convert.sources import open_source
from quantconv.formats.registry import list_dtypes
from quantconv.runtime.inspect import describe_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", nargs="+", default=[d.spec for d in list_dtypes()])
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    source = open_source(None)
    rows = []
    print("| dtype | linear types | linear bits/weight | all tensors bits/weight | file MB |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.dtypes:
            out = Path(tmp) / "m.gguf"
            export(source, out, spec)
            s = describe_file(str(out))["summary"]
            row = {"dtype": spec, "linear_types": s["linear_types"], "linear_bpw": s["linear_bits_per_weight"],
                   "bpw": s["bits_per_weight"], "file_mb": out.stat().st_size / 1e6}
            rows.append(row)
            print(f"| {spec} | {', '.join(row['linear_types'])} | {row['linear_bpw']:.3f} | {row['bpw']:.3f} | "
                  f"{row['file_mb']:.1f} |", flush=True)
            out.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
