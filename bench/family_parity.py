"""Per model family, how far each runtime is from transformers and from stock llama.cpp, on the tiny models
of tests/tiny_models.py (briefly trained, so that top-1 comparisons are not decided by near-ties).

For each family: transformers' float32 forward (eager attention) vs our engine's exact path and
onnxruntime (both graph flavors) on the F32 export, max |Δlogit| over every position of a prompt longer
than the sliding window; then stock llama.cpp vs our engine (fast path) on the F16, Q8_0, Q4_0 and MXFP4
exports: top-1 agreement and the perplexity ratio on random tokens.

    python bench/family_parity.py [--tokens 120] [--json out.json]

Prints a markdown table; needs torch, transformers, onnxruntime and llama-cpp-python (scripts/install-peers.sh).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.tiny_models from the checkout

from tests.tiny_models import NEW_FAMILIES, TOKENIZER_VOCAB, make_tiny_hf_model, train_tiny_model  # noqa: E402

PEER_TYPES = ("f16", "q8_0", "q4_0", "mxfp4")


def hf_logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)[None]).logits[0].float().numpy()


def engine_logits(path: Path, ids: np.ndarray, n_ctx: int, exact: bool) -> np.ndarray:
    from quantconv.runtime.engine import Engine

    with Engine(path, n_ctx=n_ctx, n_threads=2, exact=exact) as engine:
        return engine.eval(ids, all_logits=True)


def onnx_logits(gguf: Path, out: Path, ids: np.ndarray, n_ctx: int, fused: bool) -> np.ndarray:
    from quantconv.convert.onnx_export import gguf_to_onnx
    from quantconv.runtime.onnx_runner import OnnxEngine

    gguf_to_onnx(gguf, out, fused_ops=fused)
    with OnnxEngine(out, n_ctx=n_ctx, n_threads=2) as eng:
        return eng.eval(ids, all_logits=True)


def llama_cpp_logits(path: Path, ids: np.ndarray, n_ctx: int) -> np.ndarray:
    from quantconv.runtime import peer_llama_cpp

    model = peer_llama_cpp.load(str(path), ctx=n_ctx, logits_all=True)
    try:
        return peer_llama_cpp.Scorer(model).eval(ids)
    finally:
        model.close()


def ppl(logits: np.ndarray, ids: np.ndarray) -> float:
    z = logits[:-1].astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return math.exp(-float(np.mean(logp[np.arange(len(ids) - 1), ids[1:]])))


def measure(family: str, root: Path, ids: np.ndarray, n_ctx: int) -> dict:
    from quantconv.convert.export import export
    from quantconv.convert.sources import open_source

    hf = train_tiny_model(make_tiny_hf_model(root / "hf", family))
    source = open_source(str(hf))
    row: dict = {"family": family}
    ref = hf_logits(hf, ids)
    f32 = root / f"{family}-f32.gguf"
    export(source, f32, "f32")
    row["engine_exact_vs_hf"] = float(np.abs(engine_logits(f32, ids, n_ctx, True) - ref).max())
    for fused in (True, False):
        z = onnx_logits(f32, root / f"{family}-{fused}.onnx", ids, n_ctx, fused)
        row[f"ort_{'fused' if fused else 'basic'}_vs_hf"] = float(np.abs(z - ref).max())
    for dtype in PEER_TYPES:
        path = root / f"{family}-{dtype}.gguf"
        export(source, path, dtype)
        theirs, ours = llama_cpp_logits(path, ids, n_ctx), engine_logits(path, ids, n_ctx, False)
        row[f"{dtype}_top1"] = float(np.mean(theirs.argmax(-1) == ours.argmax(-1)))
        row[f"{dtype}_ppl_ratio"] = ppl(ours, ids) / ppl(theirs, ids)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=120, help="prompt length (the tiny sliding window is 8)")
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    ids = np.random.default_rng(7).integers(3, TOKENIZER_VOCAB, size=args.tokens).astype(np.int32)
    n_ctx = max(256, args.tokens)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in NEW_FAMILIES:
            t0 = time.time()
            rows.append(measure(family, Path(tmp) / family, ids, n_ctx))
            print(f"{family}: {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    head = ["family", "engine exact vs HF", "ORT fused vs HF", "ORT basic vs HF"]
    head += [f"llama.cpp {d.upper()} top-1 / ppl ratio" for d in PEER_TYPES]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["family"]] + [f"{r[k]:.1e}" for k in ("engine_exact_vs_hf", "ort_fused_vs_hf", "ort_basic_vs_hf")]
        cells += [f"{100 * r[f'{d}_top1']:.1f} % / {r[f'{d}_ppl_ratio']:.4f}" for d in PEER_TYPES]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens": args.tokens, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
