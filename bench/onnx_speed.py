"""Prefill/decode tok/s of several .onnx (onnxruntime) and .gguf (quantconv's engine) files, interleaved
rep by rep in one run (runtime.bench.measure), so that on a shared machine they see the same load.

    python bench/onnx_speed.py --prompt 512 --gen 64 --reps 3 old.onnx new.onnx model.gguf model.gguf:exact

A `.gguf:exact` argument runs the engine's exact float path. 2 threads unless --threads.
"""
from __future__ import annotations

import argparse
import json
import sys

from quantconv.runtime import bench as b
from quantconv.runtime.engine import Engine
from quantconv.runtime.onnx_runner import OnnxEngine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n_ctx = args.prompt + args.gen + 32
    runners, vocab = {}, None
    for f in args.files:
        path, _, mode = f.partition(":")
        if path.endswith(".onnx"):
            eng = OnnxEngine(path, n_ctx=n_ctx, n_threads=args.threads)
        elif path.endswith(".gguf"):
            eng = Engine(path, n_ctx=n_ctx, n_threads=args.threads, exact=mode == "exact")
        else:
            raise SystemExit(f"error: {f}: pass .onnx or .gguf files (.gguf:exact for the exact path)")
        runners[f] = b.engine_runner(eng)
        vocab = eng.n_vocab
    speeds = b.measure(runners, vocab, args.prompt, args.gen, args.reps, progress=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps({k: s.as_dict() for k, s in speeds.items()}, indent=1))
        return
    print(f"{args.threads} threads, prompt {args.prompt}, {args.gen} decode steps, median of {args.reps}")
    for k, s in speeds.items():
        print(f"{k:32s} prefill {s.prefill_tok_s:7.1f} tok/s   decode {s.decode_tok_s:6.2f} tok/s")


if __name__ == "__main__":
    main()
