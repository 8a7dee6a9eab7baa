"""The billion-parameter scale run: export a Llama-3.2-3B-shaped model, run it, measure memory and time.

    python bench/scale_run.py --model DIR [--generate 3b] [--work DIR] [--steps export,engine,q8,llama_cpp]
                              [--algo gptq --calib TEXT --device cuda] [--threads N] [--json OUT.json]

Each step is a child process whose peak RSS (os.wait4's ru_maxrss: the child alone, children of it
included only once reaped) and wall time are taken:
  generate   bench/synthetic_model.py DIR --scale SCALE (only with --generate, when DIR has no config.json)
  export     `quantconv export DIR -o WORK/model-sf4.gguf --dtype sf4 [--algo ... --calib ... --device ...]`
  engine     quantconv's Engine loads the sf4 file, prefills a prompt and decodes --tokens tokens greedily
  q8         `quantconv export DIR -o WORK/model-q8_0.gguf --dtype q8_0`
  llama_cpp  stock llama.cpp (llama_cpp.Llama) loads the Q8_0 file and evaluates the prompt; our engine
             evaluates the same ids on the same file (fast path, then exact path), and the logits of
             every prompt position are compared with llama.cpp's
Files are deleted after the last step that reads them unless --keep-files. Prints a table, writes JSON
with the machine (CPU model, cores), the commit and each command.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = ("The history of quantization in signal processing begins with the pulse-code modulation of telephone "
          "speech, where each sample was rounded to one of a few hundred levels. Neural networks brought the "
          "same idea back: weights stored in four bits instead of sixteen, with a scale per block.")

ENGINE_CHILD = r"""
import json, sys, time
import numpy as np
from quantconv.formats.tokenizer import Tokenizer
from quantconv.runtime.engine import Engine
path, prompt, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ids = Tokenizer.from_gguf(path).encode(prompt, add_bos=True)
t = time.perf_counter()
eng = Engine(path, n_ctx=256, n_threads=threads)
load_s = time.perf_counter() - t
t = time.perf_counter()
logits = eng.eval(ids)
prefill_s = time.perf_counter() - t
out, t = [], time.perf_counter()
for _ in range(n):
    tok = int(np.argmax(logits))
    out.append(tok)
    logits = eng.eval([tok])
decode_s = time.perf_counter() - t
print(json.dumps({"load_s": load_s, "prompt_tokens": len(ids), "prefill_s": prefill_s,
                  "prefill_tok_s": len(ids) / prefill_s, "decode_tokens": n, "decode_s": decode_s,
                  "decode_tok_s": n / decode_s, "generated": out}))
"""

# the same prompt ids in both engines (llama.cpp's tokenizer), every position's logits compared
PEER_CHILD = r"""
import json, sys, time
import numpy as np
path, prompt, threads, which = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if which == "llama_cpp":
    import llama_cpp
    t = time.perf_counter()
    m = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=threads, n_threads_batch=threads, n_batch=256,
                        logits_all=True, verbose=False)
    load_s = time.perf_counter() - t
    ids = m.tokenize(prompt.encode(), add_bos=True, special=False)
    t = time.perf_counter()
    m.eval(ids)
    eval_s = time.perf_counter() - t
    logits = np.asarray(m.scores[:len(ids)], dtype=np.float32)
else:
    from quantconv.runtime.engine import Engine
    ids = json.loads(sys.argv[5])
    t = time.perf_counter()
    eng = Engine(path, n_ctx=256, n_threads=threads, exact=which == "engine-exact")
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    logits = eng.eval(ids, all_logits=True)
    eval_s = time.perf_counter() - t
np.save(sys.argv[6] if which != "llama_cpp" else sys.argv[5], logits)
print(json.dumps({"load_s": load_s, "eval_s": eval_s, "prompt_tokens": len(ids), "ids": list(map(int, ids)),
                  "eval_tok_s": len(ids) / eval_s}))
"""


def measured(name: str, cmd: list[str], log) -> dict:
    """Run cmd as a child; its wall time, peak RSS (MB) and the JSON of its last stdout line, if any."""
    shown = shlex.join(["<script>" if len(c) > 200 else c for c in cmd])   # child scripts are in this file
    log(f"[{name}] {shown}")
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if not line.startswith("{"):
            log(f"  {line.rstrip()}")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    row = {"step": name, "command": shown, "wall_s": round(time.perf_counter() - t, 2),
           "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
           "rc": proc.returncode}
    if proc.returncode:
        row["error"] = "\n".join(lines[-5:])
        log(f"[{name}] FAILED (exit {proc.returncode})")
    elif lines and lines[-1].startswith("{"):
        row.update(json.loads(lines[-1]))
    log(f"[{name}] {row['wall_s']:.1f} s wall, peak RSS {row['peak_rss_mb']:.0f} MB")
    return row


def git_commit() -> str:
    if os.environ.get("QUANTCONV_COMMIT"):   # a copy without its .git (a device machine's) names it
        return os.environ["QUANTCONV_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    from quantconv.runtime.bench import machine_description

    out = {"cpu": machine_description(), "cores": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        with open("/proc/meminfo") as f:
            out["mem_total_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import torch
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return out


def export_cmd(model: Path, out: Path, dtype: str, args) -> list[str]:
    exe = shutil.which("quantconv")
    cmd = [exe] if exe else [sys.executable, "-m", "quantconv.cli"]
    cmd += ["export", str(model), "-o", str(out), "--dtype", dtype, "--quiet"]
    if dtype != "q8_0" and args.algo != "rtn":
        cmd += ["--algo", args.algo, "--calib", args.calib, "--device", args.device,
                "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen)]
    return cmd


def table(rows: list[dict]) -> str:
    lines = ["| step | wall s | CPU s | peak RSS MB | file MB | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        notes = []
        if r.get("rc"):
            notes.append("FAILED: " + r.get("error", "").splitlines()[-1][:80] if r.get("error") else "FAILED")
        if "load_s" in r:
            notes.append(f"load {r['load_s']:.1f} s")
        if "decode_tok_s" in r:
            notes.append(f"prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.2f} tok/s "
                         f"({r['decode_tokens']} tokens)")
        if "eval_tok_s" in r:
            notes.append(f"{r['prompt_tokens']}-token prompt at {r['eval_tok_s']:.1f} tok/s")
        if "compare" in r:
            c = r["compare"]
            notes.append(f"vs llama.cpp: top-1 agreement {c['top1_agree']:.0%}, max |Δlogit| "
                         f"{c['max_abs_diff']:.3g}, rms {c['rms_diff']:.3g} (logit std {c['logit_std']:.3g})")
        size = f"{r['file_mb']:.0f}" if "file_mb" in r else ""
        lines.append(f"| {r['step']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | {size} | "
                     f"{'; '.join(notes)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="HF model folder (made with --generate if missing)")
    ap.add_argument("--generate", choices=["3b", "1b", "tiny"], help="write a synthetic model into --model first")
    ap.add_argument("--work", type=Path, default=Path("/tmp/scale-run"), help="folder for the GGUF files")
    ap.add_argument("--steps", default="export,engine,q8,llama_cpp")
    ap.add_argument("--algo", default="rtn", help="algorithm of the sf4 export (rtn, gptq, ...)")
    ap.add_argument("--calib", default="", help="calibration text for a calibrated --algo")
    ap.add_argument("--device", default="cpu", help="calibration device (cuda for the GPU run)")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the engine and llama.cpp")
    ap.add_argument("--tokens", type=int, default=16, help="tokens the engine decodes")
    ap.add_argument("--rss-limit-mb", type=float, default=3000, help="the export's peak RSS requirement")
    ap.add_argument("--keep-files", action="store_true", help="keep the GGUF files")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    steps = args.steps.split(",")
    unknown = set(steps) - {"export", "engine", "q8", "llama_cpp"}
    if unknown:
        ap.error(f"unknown steps {sorted(unknown)}")
    if args.algo != "rtn" and not args.calib:
        ap.error(f"--algo {args.algo} needs --calib")
    log = lambda msg: print(msg, flush=True)   # noqa: E731
    args.work.mkdir(parents=True, exist_ok=True)
    sf4, q8 = args.work / "model-sf4.gguf", args.work / "model-q8_0.gguf"
    rows: list[dict] = []
    result = {"machine": machine(), "commit": git_commit(), "model": str(args.model), "algo": args.algo,
              "device": args.device, "threads": args.threads, "prompt": PROMPT, "rows": rows}

    if args.generate and not (args.model / "config.json").is_file():
        rows.append(measured("generate", [sys.executable, str(REPO / "bench/synthetic_model.py"), str(args.model),
                                          "--scale", args.generate], log))
    if not (args.model / "config.json").is_file():
        sys.exit(f"no model in {args.model}: pass --generate 3b to write the synthetic one")
    result["model_gb"] = round(sum(f.stat().st_size for f in args.model.glob("*.safetensors")) / 1e9, 2)
    cfg = json.loads((args.model / "config.json").read_text())
    result["model_config"] = {k: cfg.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                      "num_key_value_heads", "intermediate_size", "vocab_size")}

    def sized(row: dict, path: Path) -> dict:
        if path.is_file():
            row["file_mb"] = round(path.stat().st_size / 1e6, 1)
        return row

    if "export" in steps:
        r = sized(measured(f"export sf4 ({args.algo}, {args.device})", export_cmd(args.model, sf4, "sf4", args), log),
                  sf4)
        r["rss_limit_mb"], r["rss_ok"] = args.rss_limit_mb, r["peak_rss_mb"] < args.rss_limit_mb and not r["rc"]
        rows.append(r)
    if "engine" in steps and sf4.is_file():
        rows.append(sized(measured("engine sf4: load + decode", [sys.executable, "-c", ENGINE_CHILD, str(sf4), PROMPT,
                                                                 str(args.tokens), str(args.threads)], log), sf4))
    if not args.keep_files and sf4.is_file():
        sf4.unlink()
    if "q8" in steps:
        rows.append(sized(measured("export q8_0 (rtn)", export_cmd(args.model, q8, "q8_0", args), log), q8))
    if "llama_cpp" in steps and q8.is_file():
        peer_npy, ours_npy = args.work / "logits-llama_cpp.npy", args.work / "logits-engine.npy"
        peer = sized(measured("llama.cpp q8_0: load + eval", [sys.executable, "-c", PEER_CHILD, str(q8), PROMPT,
                                                             str(args.threads), "llama_cpp", str(peer_npy)], log), q8)
        rows.append(peer)
        # our engine on the same file and prompt ids: fast path (int8 activations, as llama.cpp's q8_0
        # product) and exact path (float32 activations)
        import numpy as np

        def compare(a, b):
            return {"top1_agree": float(np.mean(a.argmax(-1) == b.argmax(-1))), "max_abs_diff": float(np.abs(a - b).max()),
                    "rms_diff": float(np.sqrt(np.mean((a - b) ** 2))), "logit_std": float(a.std())}

        logits = {}
        for which in ("engine", "engine-exact") if not peer["rc"] else ():
            ours = sized(measured(f"{which} q8_0: load + eval", [sys.executable, "-c", PEER_CHILD, str(q8), PROMPT,
                                                                 str(args.threads), which, json.dumps(peer["ids"]),
                                                                 str(ours_npy)], log), q8)
            rows.append(ours)
            if not ours["rc"]:
                logits[which] = np.load(ours_npy)
                ours["compare"] = compare(np.load(peer_npy), logits[which])
        if len(logits) == 2:   # how far activation rounding alone moves this model's logits: the yardstick
            result["engine_fast_vs_exact"] = compare(logits["engine-exact"], logits["engine"])
            log(f"engine fast vs exact path on the same file: {result['engine_fast_vs_exact']}")
        for f in (peer_npy, ours_npy):
            f.unlink(missing_ok=True)
    if not args.keep_files and q8.is_file():
        q8.unlink()

    print()
    print(f"model {args.model} ({result['model_gb']} GB of safetensors), commit {result['commit']}")
    print(f"machine: {result['machine']}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"results in {args.json}")
    failed = [r["step"] for r in rows if r.get("rc")]
    over = [r["step"] for r in rows if r.get("rss_ok") is False]
    if failed or over:
        sys.exit(f"failed: {failed}; over the RSS limit: {over}")


if __name__ == "__main__":
    main()
