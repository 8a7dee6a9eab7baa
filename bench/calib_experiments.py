"""The calibration issue's experiments beyond the sweep, each an export + a runtime perplexity (ctx 512,
first 40 windows of the WikiText-2 test, calibration on the validation file), resumable:

  w8a8      int8 per-channel weights, int8 per-token activations: rtn / smoothquant / gptq / smoothquant+gptq,
            and the weight-only file for reference
  w4a8mx    MXFP4 weights, MXINT8 activations: the same four recipes
  normtweak gptq vs gptq + --norm-tweak for sf4 and mxfp4
  best      candidate 4-bit recipes at <= 4.25 bits/weight (act-order, awq+gptq, ...)

    python bench/calib_experiments.py --group w8a8 --out results.json [--device cuda] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from quantconv.convert.act_quant import get_act_dtype
from quantconv.convert.algorithms import configs
from quantconv.convert.calibrate import CalibOptions
from quantconv.convert.export import export
from quantconv.convert.sources import open_source
from quantconv.sweep import SweepSpec, eval_ppl
from quantconv.formats.gguf_reader import GGUFFile
from quantconv.formats.tokenizer import Tokenizer
from quantconv.runtime.perplexity import text_ids

# name -> (dtype, algo, options)
GROUPS = {
    "w8a8": [("int8:group=0", "rtn", {}),
             *[("int8:group=0", a, {"act_dtype": "int8"}) for a in ("rtn", "smoothquant", "gptq", "smoothquant+gptq")]],
    "w4a8mx": [("mxfp4", "rtn", {}),
               *[("mxfp4", a, {"act_dtype": "mxint8"}) for a in ("rtn", "smoothquant", "gptq", "smoothquant+gptq")]],
    "normtweak": [(d, "gptq", {"norm_tweak": nt}) for d in ("sf4", "mxfp4") for nt in (False, True)],
    "best": [("sf4", "gptq", {"act_order": True}), ("sf4", "awq+gptq", {"act_order": True}),
             ("nf4", "gptq", {"act_order": True}), ("int4:asym", "gptq", {"act_order": True}),
             ("sf4", "gptq", {"act_order": True, "norm_tweak": True}),
             ("sf4", "gptq", {"scale_search": True}), ("sf4", "gptq", {"act_order": True, "scale_search": True}),
             ("nf4", "gptq", {"act_order": True, "scale_search": True}),
             ("fp4-sp", "gptq", {"act_order": True, "scale_search": True}),
             ("sf4", "awq+gptq", {"act_order": True, "scale_search": True})],
}


def label(dtype: str, algo: str, opts: dict) -> str:
    extra = ",".join(f"{k}={v}" for k, v in sorted(opts.items()) if v not in (False, None))
    return f"{dtype} {algo}" + (f" [{extra}]" if extra else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", action="append", choices=sorted(GROUPS), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--source", default=None)
    ap.add_argument("--text", default="../shared/data/wikitext-2-raw-test.txt")
    ap.add_argument("--calib", default="../shared/data/wikitext-2-valid.txt")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--item", type=int, action="append", help="run only these entries (0-based) of each group")
    args = ap.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.is_file() else []
    done = {r["label"] for r in rows}
    source = open_source(args.source)
    spec = SweepSpec([], [], Path(args.text), Path(args.tmp), ctx=512, windows=args.windows, threads=args.threads)
    ids = None
    for group in args.group:
        for k, (dtype, algo, opts) in enumerate(GROUPS[group]):
            name = label(dtype, algo, opts)
            if name in done or (args.item and k not in args.item):
                continue
            calib = CalibOptions(calib=args.calib, nsamples=args.nsamples, seqlen=args.seqlen, device=args.device,
                                 act_dtype=get_act_dtype(opts.get("act_dtype")),
                                 algos=configs(algo, **{k: v for k, v in opts.items() if k != "act_dtype"}))
            path = Path(args.tmp) / f"exp-{abs(hash(name))}.gguf"
            t0 = time.perf_counter()
            rep = export(source, path, dtype, algo=algo, calib=calib)
            seconds = time.perf_counter() - t0
            if ids is None:
                with GGUFFile(path) as f:
                    ids = text_ids(Tokenizer.from_gguf_metadata(f.kv), args.text)
            ppl = eval_ppl(path, ids, spec)
            path.unlink()
            rows.append({"group": group, "label": name, "dtype": dtype, "algo": algo, **opts, "ppl": ppl,
                         "bits_per_weight": rep.linear_bits_per_weight, "export_s": seconds})
            print(f"{group:>9} {name:<50} ppl {ppl:.3f} ({seconds:.0f} s)", flush=True)
            out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
