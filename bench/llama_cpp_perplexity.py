"""Stock llama.cpp's perplexity on quantconv exports of the reference model (quantconv's protocol:
no BOS, consecutive windows of --ctx, every position after the first scored).

    python bench/llama_cpp_perplexity.py --dtypes mxfp4 q4_0 --windows 40
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from quantconv.convert.export import export
from quantconv.convert.sources import open_source
from quantconv.runtime import peer_llama_cpp

DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", nargs="+", default=["f16", "q8_0", "mxfp4", "q4_0"])
    ap.add_argument("--text", default=str(DEFAULT_TEXT))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    text = Path(args.text).read_text(encoding="utf-8")
    source = open_source(None)
    print(f"| dtype | llama.cpp ppl (ctx {args.ctx}, {args.windows} windows) | tokens scored |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.dtypes:
            out = Path(tmp) / f"{spec}.gguf"
            export(source, out, spec)
            r = peer_llama_cpp.perplexity(str(out), text, args.ctx, args.windows, args.threads)
            print(f"| {spec} | {r.ppl:.3f} | {r.tokens} |", flush=True)
            out.unlink()


if __name__ == "__main__":
    main()
