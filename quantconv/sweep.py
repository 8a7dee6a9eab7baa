"""`quantconv sweep`: export every (dtype, algo) combination, measure its perplexity with the runtime's
`eval` protocol and its decode speed, and write a Markdown + JSON table and a PNG plot of perplexity
vs bits per weight (decode speed in a second panel).

Results accumulate in OUT/sweep.json: a rerun skips the combinations already there (--resume is the
default), so a long sweep can be run in pieces.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from quantconv.errors import QuantconvError


@dataclass
class SweepSpec:
    dtypes: list[str]
    algos: list[str]
    text: Path
    out_dir: Path
    calib: str | None = None
    nsamples: int = 128
    seqlen: int = 512
    ctx: int = 512
    windows: int | None = 40
    threads: int | None = None
    device: str = "cpu"
    group_size: int | None = None
    bench: bool = True
    keep_files: bool = False
    act_order: bool = False
    baseline: bool = True         # also export and evaluate f16 (the "FP" row)


def eval_ppl(path: Path, ids: list[int], spec: SweepSpec) -> float:
    """The file's perplexity with the runtime (the `quantconv eval` protocol, spec's ctx and windows)."""
    from quantconv.runtime.engine import Engine
    from quantconv.runtime.perplexity import perplexity

    with Engine(path, n_ctx=spec.ctx, n_threads=spec.threads) as engine:
        return perplexity(engine, ids, spec.ctx, spec.windows).ppl


def _decode_speed(path: Path, spec: SweepSpec) -> float:
    from quantconv.runtime import bench
    from quantconv.runtime.engine import Engine

    engine = Engine(path, n_ctx=256, n_threads=spec.threads)
    r = bench.measure({"x": bench.engine_runner(engine)}, engine.n_vocab, prompt=64, gen=64, reps=3)
    return r["x"].decode_tok_s


def run_sweep(source, spec: SweepSpec, log: Callable[[str], None] = print) -> list[dict]:
    from quantconv.convert.act_quant import get_act_dtype  # noqa: F401  (torch present: fail early)
    from quantconv.convert.algorithms import configs, parse_algo
    from quantconv.convert.calibrate import CalibOptions
    from quantconv.convert.export import export
    from quantconv.formats.gguf_reader import GGUFFile
    from quantconv.formats.tokenizer import Tokenizer
    from quantconv.runtime.perplexity import text_ids

    for a in spec.algos:
        parse_algo(a)
    if not spec.text.is_file():
        raise QuantconvError(f"--text {spec.text}: no such file; pass the evaluation text (e.g. wikitext-2-raw-test.txt)")
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    files = spec.out_dir / "files"
    files.mkdir(exist_ok=True)
    state_path = spec.out_dir / "sweep.json"
    rows: list[dict] = json.loads(state_path.read_text())["rows"] if state_path.is_file() else []
    done = {(r["dtype"], r["algo"]) for r in rows}
    ids = None
    speeds = {r["dtype"]: r["decode_tok_s"] for r in rows if r.get("decode_tok_s")}
    combos = [("f16", "rtn")] * spec.baseline + [(d, a) for d in spec.dtypes for a in spec.algos]
    for dtype, algo in combos:
        if (dtype, algo) in done:
            continue
        path = files / f"{dtype.replace(':', '_').replace(',', '_').replace('=', '')}-{algo.replace('+', '_')}.gguf"
        calib = None
        if algo != "rtn":
            calib = CalibOptions(calib=spec.calib, nsamples=spec.nsamples, seqlen=spec.seqlen, device=spec.device,
                                 algos=configs(algo, act_order=spec.act_order))
        t0 = time.perf_counter()
        report = export(source, path, dtype, spec.group_size if dtype != "f16" else None, algo, calib=calib)
        seconds = time.perf_counter() - t0
        if ids is None:
            with GGUFFile(path) as f:
                ids = text_ids(Tokenizer.from_gguf_metadata(f.kv), spec.text)
        ppl = eval_ppl(path, ids, spec)
        if spec.bench and dtype not in speeds:
            speeds[dtype] = _decode_speed(path, spec)
        row = {"dtype": dtype, "spec": next((p.dtype.spec for p in report.tensors if p.role == "linear"), dtype),
               "algo": algo, "bits_per_weight": report.linear_bits_per_weight, "file_mb": report.file_bytes / 1e6,
               "ppl": ppl, "decode_tok_s": speeds.get(dtype), "export_s": seconds}
        rows.append(row)
        log(f"{dtype:>12} {algo:>10}: ppl {ppl:.3f}, {row['bits_per_weight']:.3f} bits/weight, export {seconds:.0f} s")
        state_path.write_text(json.dumps({"spec": _spec_dict(spec), "rows": rows}, indent=2))
        if not spec.keep_files:
            path.unlink()
    if spec.bench:
        fill_speeds(source, rows, spec, files, speeds, log)
    write_outputs(rows, spec)
    return rows


def fill_speeds(source, rows: list[dict], spec: SweepSpec, files: Path, speeds: dict, log) -> None:
    """Decode speed of each dtype whose rows have none yet (rows resumed from a run without the benchmark):
    speed depends on the datatype only, so an RTN export of it is measured."""
    from quantconv.convert.export import export

    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        if dtype not in speeds:
            path = files / "speed.gguf"
            export(source, path, dtype, spec.group_size if dtype != "f16" else None, "rtn")
            speeds[dtype] = _decode_speed(path, spec)
            path.unlink()
            log(f"{dtype:>12}: decode {speeds[dtype]:.1f} tok/s")
        for r in rows:
            if r["dtype"] == dtype:
                r["decode_tok_s"] = speeds[dtype]


def _spec_dict(spec: SweepSpec) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in spec.__dict__.items()}


def write_outputs(rows: list[dict], spec: SweepSpec) -> None:
    fp = next((r["ppl"] for r in rows if r["dtype"] == "f16"), None)
    for r in rows:
        r["delta_pct"] = 100 * (r["ppl"] / fp - 1) if fp else None
    (spec.out_dir / "sweep.json").write_text(json.dumps({"spec": _spec_dict(spec), "rows": rows}, indent=2))
    (spec.out_dir / "sweep.md").write_text(markdown_table(rows, spec))
    plot(rows, spec.out_dir / "sweep.png")


def markdown_table(rows: list[dict], spec: SweepSpec) -> str:
    head = (f"ctx {spec.ctx}, {spec.windows or 'all'} windows of {spec.text.name}; calibration "
            f"{Path(spec.calib).name if spec.calib and spec.calib != 'self' else spec.calib}, "
            f"{spec.nsamples} x {spec.seqlen} tokens\n\n")
    lines = ["| dtype | algo | bits/weight | file MB | ppl | Δ% vs FP | decode tok/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = f"{r['delta_pct']:+.2f}" if r.get("delta_pct") is not None else "—"
        speed = f"{r['decode_tok_s']:.1f}" if r.get("decode_tok_s") else "—"
        lines.append(f"| {r['dtype']} | {r['algo']} | {r['bits_per_weight']:.3f} | {r['file_mb']:.1f} | "
                     f"{r['ppl']:.3f} | {delta} | {speed} |")
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [2, 1]})
    # quality: one column per dtype (sorted by bits per weight), one marker per algorithm — many 4-bit
    # types share 4.219 bits, so a plain bits axis would stack them on top of each other
    quantized = [r for r in rows if r["dtype"] != "f16"]
    dtypes = sorted({r["dtype"] for r in quantized}, key=lambda d: (next(r["bits_per_weight"] for r in quantized
                                                                          if r["dtype"] == d), d))
    algos = list(dict.fromkeys(r["algo"] for r in quantized))
    markers = dict(zip(algos, "^Dos<>p*v"))
    width = 0.6 / max(1, len(algos))
    for k, algo in enumerate(algos):
        rs = [r for r in quantized if r["algo"] == algo]
        ax.scatter([dtypes.index(r["dtype"]) - 0.3 + (k + 0.5) * width for r in rs], [r["ppl"] for r in rs],
                   marker=markers[algo], label=algo, zorder=3)
    ax.set_xticks(range(len(dtypes)))
    ax.set_xticklabels([f"{d}\n{next(r['bits_per_weight'] for r in quantized if r['dtype'] == d):.3f} b/w"
                        for d in dtypes], fontsize=8)
    fp = next((r for r in rows if r["dtype"] == "f16"), None)
    if fp:
        ax.axhline(fp["ppl"], color="gray", ls="--", lw=1, label=f"f16 {fp['ppl']:.2f}")
    ax.set_ylabel("perplexity (lower is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("quality per datatype and algorithm")
    ax.legend(fontsize=8)
    speed = {r["dtype"]: (r["bits_per_weight"], r["decode_tok_s"]) for r in rows if r.get("decode_tok_s")}
    for name, (bits, tok_s) in speed.items():
        ax2.scatter([bits], [tok_s])
        ax2.annotate(name, (bits, tok_s), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax2.set_xlabel("bits per weight")
    ax2.set_ylabel("decode tok/s (quantconv runtime)")
    ax2.set_title("speed vs bits")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

