"""The `quantconv` command line. Every user-facing failure is one line on stderr and exit status 2."""
from __future__ import annotations

import json
import os
import sys
from functools import wraps
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from quantconv.errors import QuantconvError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Quantize Hugging Face causal LMs into GGUF files; inspect, run, evaluate and benchmark them.")
out = Console()
err = Console(stderr=True)


def one_line_errors(fn):
    """QuantconvError -> 'error: ...' and exit 2; anything else -> one line and exit 1 (QUANTCONV_DEBUG=1
    shows the traceback)."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QuantconvError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err.print("interrupted; no output file was left behind")
            raise typer.Exit(130)
        except Exception as e:  # a bug: still one line unless asked for more
            if os.environ.get("QUANTCONV_DEBUG"):
                raise
            err.print(f"[bold red]internal error:[/] {type(e).__name__}: {e} (rerun with QUANTCONV_DEBUG=1 "
                      "for a traceback and report it)", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
    return wrapper


def _layer_status(i: int, info: dict) -> str:
    err = f", output error vs float {info['model_rel_err']:.1e}" if "model_rel_err" in info else ""
    return f"layer {i} ({info['seconds']} s{err})"


def _export_help() -> str:
    from quantconv.formats.models import supported_families

    return ("Quantize every linear layer of a model into a GGUF (or ONNX) file.\n\n"
            f"Supported model families (models.yaml): {supported_families()}.")


@app.command(help=_export_help())
@one_line_errors
def export(
    source: Optional[str] = typer.Argument(None, help="HF model dir, hub id or .gguf file (default: the built-in SmolLM2-135M-Instruct)"),
    output: str = typer.Option(..., "-o", "--output", help="output .gguf file"),
    dtype: str = typer.Option("sf4", "--dtype", "-t", help="datatype spec for the linear layers, e.g. sf4, nf4, int4:asym, mxfp4 (see `quantconv dtypes`)"),
    group_size: Optional[int] = typer.Option(None, "--group-size", "-g", help="group (block) size of the linear layers' dtype"),
    algo: str = typer.Option("rtn", "--algo", help="rtn, gptq, awq, smoothquant or a '+' mix (awq+gptq, smoothquant+gptq)"),
    keep: List[str] = typer.Option([], "--keep", help="GLOB=DTYPE override for matching tensors, e.g. 'token_embd*=q8_0' (repeatable; last match wins)"),
    calib: Optional[str] = typer.Option(None, "--calib", help="calibration text: a file, an HF dataset name, or 'self' (sampled from the model)"),
    nsamples: int = typer.Option(128, "--nsamples", help="calibration windows"),
    seqlen: int = typer.Option(512, "--seqlen", help="tokens per calibration window"),
    seed: int = typer.Option(0, "--seed", help="seed of the window sampling"),
    device: str = typer.Option("cpu", "--device", help="where calibration runs: cpu or cuda"),
    act_order: bool = typer.Option(False, "--act-order", help="GPTQ: columns in decreasing Hessian-diagonal order (static groups)"),
    damp: float = typer.Option(0.01, "--damp", help="GPTQ: dampening, fraction of the mean Hessian diagonal"),
    scale_search: bool = typer.Option(False, "--scale-search", help="GPTQ: pick each codebook group's scale by importance-weighted error search"),
    alpha: float = typer.Option(0.5, "--alpha", help="SmoothQuant migration strength"),
    act_dtype: Optional[str] = typer.Option(None, "--act-dtype", help="quantize the linears' inputs at inference: int8 (per token), mxint8, mxfp8, mxfp6, mxfp4"),
    norm_tweak: bool = typer.Option(False, "--norm-tweak", help="tune each layer's RMSNorm weights after quantization (Norm Tweaking)"),
    nu: Optional[str] = typer.Option(None, "--nu", help="SF4's Student-t degrees of freedom: a number, or 'auto' (fitted to the model's weights, as `quantconv analyze`)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    fmt: Optional[str] = typer.Option(None, "--format", help="gguf or onnx (default: from the output's suffix)"),
    onnx_flavor: str = typer.Option("standard", "--onnx-flavor", help="onnx: standard (standard operators, every dtype) or ort (com.microsoft MatMulNBits for 2/4/8-bit ints)"),
):
    """Quantize every linear layer of a model into a GGUF (or ONNX) file."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from quantconv.convert.export import export as run_export
    from quantconv.convert.sources import open_source

    fmt = (fmt or ("onnx" if output.lower().endswith(".onnx") else "gguf")).lower()
    if fmt not in ("gguf", "onnx"):
        raise QuantconvError(f"--format must be gguf or onnx (got '{fmt}')")
    if fmt == "onnx":
        import functools

        from quantconv.convert.onnx_export import export_onnx

        run_export = functools.partial(export_onnx, flavor=onnx_flavor)
    src = open_source(source)
    if nu is not None:
        if not dtype.split(":")[0].strip().lower().startswith("sf4"):
            raise QuantconvError(f"--nu applies to sf4 only (got --dtype {dtype}); drop --nu or use --dtype sf4")
        dtype = f"{dtype}{',' if ':' in dtype else ':'}nu={nu}"
    if "nu=auto" in dtype:   # the Student-t fit of the model's own weights picks SF4's nu
        from quantconv.convert.analyze import median_nu, weight_fits

        nu = min(median_nu(weight_fits(src)), 100.0)   # beyond ~100 a t is a normal: NF4-like
        dtype = dtype.replace("nu=auto", f"nu={nu:.2f}")
        err.print(f"note: nu=auto -> {dtype} (median Student-t fit of the linear weights)", highlight=False)
    options = None
    if algo.strip().lower() != "rtn" or act_dtype or norm_tweak:
        from quantconv.convert.act_quant import get_act_dtype
        from quantconv.convert.algorithms import configs
        from quantconv.convert.calibrate import CalibOptions

        options = CalibOptions(calib=calib, nsamples=nsamples, seqlen=seqlen, seed=seed, device=device,
                               act_dtype=get_act_dtype(act_dtype),
                               algos=configs(algo, act_order=act_order, scale_search=scale_search, damp=damp,
                                             alpha=alpha, norm_tweak=norm_tweak))
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[tensor]}"), TimeElapsedColumn(), console=err,
                  disable=quiet, transient=True) as bar:
        layers = bar.add_task("calibrating", total=None, tensor="", visible=options is not None)
        task = bar.add_task("quantizing", total=None, tensor="")
        report = run_export(
            src, output, dtype, group_size, algo, keep,
            on_start=lambda plans: bar.update(task, total=len(plans)),
            progress=lambda p: bar.update(task, advance=1, tensor=f"{p.gguf_name} -> {p.dtype.spec}"),
            calib=options,
            on_layer=lambda i, n, info: bar.update(layers, total=n, completed=i + 1,
                                                   tensor=_layer_status(i, info)))
    for note in report.notes:
        err.print(f"note: {note}", highlight=False)
    out.print(f"wrote {report.path} ({report.file_bytes / 1e6:.1f} MB, linear layers "
              f"{report.linear_bits_per_weight:.3f} bits/weight) in {report.seconds:.1f} s", highlight=False)


@app.command()
@one_line_errors
def dtypes(
    specs: Optional[List[str]] = typer.Argument(None, help="specs to describe (default: every datatype)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """List the datatypes (name, bits/weight, block, codebook, GGUF type id, stock-ggml support)."""
    from quantconv.formats.registry import get_dtype, list_dtypes

    rows = [get_dtype(s).row() for s in specs] if specs else [d.row() for d in list_dtypes()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="quantconv datatypes")
    for col in ("name", "family", "bits/weight", "block", "scale", "gguf id", "stock ggml", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['bits_per_weight']:.3f}", str(r["block_size"]), r["scale"],
                      str(r["gguf_type_id"]), "yes" if r["standard"] else "no", r["description"])
    out.print(table)


@app.command()
@one_line_errors
def inspect(
    file: str = typer.Argument(..., help="a .gguf or quantconv .onnx file"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """List a file's tensors, their types and sizes, and the recipe that made it (.onnx: encodings, opsets, fallbacks)."""
    from quantconv.runtime.inspect import describe_file

    info = describe_file(file)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    if info.get("format") == "onnx":
        _print_onnx(file, info)
        return
    table = Table(title=f"{file}: {info['architecture']}, {len(info['tensors'])} tensors")
    for col in ("tensor", "type", "shape", "bits/weight", "MB"):
        table.add_column(col, justify="right" if col in ("bits/weight", "MB") else "left")
    for t in info["tensors"]:
        table.add_row(t["name"], t["type"], "x".join(map(str, t["shape"])), f"{t['bits_per_weight']:.3f}",
                      f"{t['bytes'] / 1e6:.2f}")
    out.print(table)
    s = info["summary"]
    out.print(f"total {s['parameters'] / 1e6:.1f}M parameters, {s['bytes'] / 1e6:.1f} MB, "
              f"{s['bits_per_weight']:.3f} bits/weight overall, linear layers {s['linear_bits_per_weight']:.3f}",
              highlight=False)
    if info["recipe"]:
        out.print("recipe: " + ", ".join(f"{k}={v}" for k, v in info["recipe"].items()), highlight=False)


def _print_onnx(file: str, info: dict) -> None:
    table = Table(title=f"{file}: {info['architecture']}, {len(info['tensors'])} weights, flavor {info['flavor']}")
    for col in ("tensor", "dtype", "encoding", "element/index", "block", "shape", "bits/weight", "MB"):
        table.add_column(col, justify="right" if col in ("bits/weight", "MB", "block") else "left")
    for t in info["tensors"]:
        table.add_row(t["name"], t["type"], t["encoding"] + (" (fallback)" if t["fallback"] else ""), t["element"],
                      str(t["block"] or ""), "x".join(map(str, t["shape"])), f"{t['bits_per_weight']:.3f}",
                      f"{t['bytes'] / 1e6:.2f}")
    out.print(table)
    s = info["summary"]
    out.print(f"total {s['parameters'] / 1e6:.1f}M parameters, weights {s['bytes'] / 1e6:.1f} MB "
              f"({s['bits_per_weight']:.3f} bits/weight, linear layers {s['linear_bits_per_weight']:.3f}), file "
              f"{info['file_bytes'] / 1e6:.1f} MB", highlight=False)
    out.print("opsets: " + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()) + f"; IR {info['ir_version']}; "
              f"graph ops: {info['graph_ops']}; encodings: " + ", ".join(f"{k} x{v}" for k, v in s["encodings"].items()),
              highlight=False)
    out.print("fallbacks: " + ("; ".join(f"{d}: {why}" for d, why in info["fallbacks"].items()) or "none"),
              highlight=False)
    if info["recipe"]:
        out.print("recipe: " + ", ".join(f"{k}={v}" for k, v in info["recipe"].items()), highlight=False)


def _open_model(file: str, ctx: int, threads: Optional[int], exact: bool):
    from quantconv.formats.tokenizer import Tokenizer

    if file.lower().endswith(".onnx"):   # onnxruntime, same interface as Engine (float32 activations)
        from quantconv.runtime.onnx_runner import OnnxEngine

        engine = OnnxEngine(file, n_ctx=ctx, n_threads=threads)
    else:
        from quantconv.runtime.engine import Engine

        engine = Engine(file, n_ctx=ctx, n_threads=threads, exact=exact)
    return engine, Tokenizer.from_gguf_metadata(engine.kv)


@app.command()
@one_line_errors
def run(
    file: str = typer.Argument(..., help="a .gguf file"),
    prompt: str = typer.Option(..., "-p", "--prompt", help="prompt text"),
    n: int = typer.Option(128, "-n", "--max-tokens", help="tokens to generate at most"),
    temp: float = typer.Option(0.0, "--temp", help="sampling temperature (0 = greedy)"),
    top_p: float = typer.Option(1.0, "--top-p", help="nucleus sampling mass"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed"),
    chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the model's chat template"),
    ctx: int = typer.Option(2048, "--ctx", help="context length"),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="threads (default: all cores)"),
    exact: bool = typer.Option(False, "--exact", help="exact float kernels instead of the int8-activation fast path"),
):
    """Generate text from a prompt, streaming tokens as they come."""
    from quantconv.runtime.generate import SamplingOptions, generate

    engine, tokenizer = _open_model(file, ctx, threads, exact)
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
    ids = tokenizer.encode(text, add_bos=tokenizer.add_bos, special=chat)
    if len(ids) >= ctx:
        raise QuantconvError(f"the prompt has {len(ids)} tokens, more than --ctx {ctx} allows; raise --ctx")
    n = min(n, ctx - len(ids))
    for piece in generate(engine, tokenizer, ids, n, SamplingOptions(temp, top_p, seed)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command(name="eval")
@one_line_errors
def evaluate(
    file: str = typer.Argument(..., help="a .gguf file"),
    text: str = typer.Option(..., "--text", help="text file to score"),
    ctx: int = typer.Option(512, "--ctx", help="window length in tokens"),
    windows: Optional[int] = typer.Option(None, "--windows", help="score only the first N windows"),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="threads (default: all cores)"),
    exact: bool = typer.Option(False, "--exact", help="exact float kernels"),
    as_json: bool = typer.Option(False, "--json", help='print {"ppl": ..., "tokens": ...}'),
):
    """Perplexity: the text tokenized without BOS, consecutive windows of --ctx tokens, every position after
    the first of each window scored."""
    from rich.progress import Progress

    from quantconv.runtime.perplexity import perplexity, text_ids

    engine, tokenizer = _open_model(file, ctx, threads, exact)
    ids = text_ids(tokenizer, text)
    with Progress(console=err, disable=as_json, transient=True) as bar:
        task = bar.add_task("perplexity", total=None)
        result = perplexity(engine, ids, ctx, windows, lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        print(json.dumps(result.as_dict()))
    else:
        out.print(f"perplexity {result.ppl:.4f} over {result.tokens} tokens ({result.windows} windows of {ctx})",
                  highlight=False)


@app.command()
@one_line_errors
def bench(
    file: str = typer.Argument(..., help="a .gguf file"),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="threads (default: all cores)"),
    prompt: int = typer.Option(512, "--prompt", help="prefill length in tokens"),
    gen: int = typer.Option(64, "--gen", help="decode steps"),
    reps: int = typer.Option(3, "--reps", help="repetitions (median reported)"),
    vs_llama_cpp: Optional[str] = typer.Option(None, "--vs-llama-cpp", help="also run stock llama.cpp on this GGUF, interleaved"),
    exact: bool = typer.Option(False, "--exact", help="exact float kernels"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """Prefill and decode tokens/s (batch 1), optionally against stock llama.cpp in the same run."""
    import os

    from quantconv.runtime import bench as b

    n_threads = threads or os.cpu_count() or 1
    engine, _ = _open_model(file, prompt + gen + 32, n_threads, exact)
    runners = {"quantconv": b.engine_runner(engine)}
    if vs_llama_cpp:
        from quantconv.runtime import peer_llama_cpp

        runners["llama.cpp"] = b.llama_cpp_runner(peer_llama_cpp.load(vs_llama_cpp, ctx=prompt + gen + 32,
                                                                      threads=n_threads))
    speeds = b.measure(runners, engine.n_vocab, prompt, gen, reps,
                       progress=None if as_json else (lambda msg: err.print(msg, highlight=False)))
    result = {name: s.as_dict() for name, s in speeds.items()}
    if vs_llama_cpp:
        ours, peer = speeds["quantconv"], speeds["llama.cpp"]
        result["ratio"] = {"prefill": ours.prefill_tok_s / peer.prefill_tok_s, "decode": ours.decode_tok_s / peer.decode_tok_s}
    result["threads"] = n_threads
    if as_json:
        print(json.dumps(result["quantconv"] if not vs_llama_cpp else result))
        return
    table = Table(title=f"{file}, {n_threads} threads, prompt {prompt}, gen {gen}, median of {reps}")
    for col in ("engine", "prefill tok/s", "decode tok/s"):
        table.add_column(col)
    for name, s in speeds.items():
        table.add_row(name, f"{s.prefill_tok_s:.1f}", f"{s.decode_tok_s:.1f}")
    if vs_llama_cpp:
        table.add_row("ratio", f"{result['ratio']['prefill']:.2f}x", f"{result['ratio']['decode']:.2f}x")
    out.print(table)


@app.command()
@one_line_errors
def analyze(
    source: Optional[str] = typer.Argument(None, help="HF model dir, hub id or .gguf file (default: the built-in model)"),
    calib: Optional[str] = typer.Option(None, "--calib", help="also fit the linears' inputs on this text (file or 'self')"),
    nsamples: int = typer.Option(4, "--nsamples", help="calibration windows for the activation fits"),
    seqlen: int = typer.Option(512, "--seqlen", help="tokens per window"),
    plot: Optional[str] = typer.Option("analyze.png", "--plot", help="PNG of histograms with the fitted densities"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """Student-t fits (nu, scale) of every linear weight (and activation) vs a normal fit, as in the SF4 paper."""
    from rich.progress import Progress

    from quantconv.convert import analyze as an
    from quantconv.convert.sources import open_source

    src = open_source(source)
    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("fitting weights", total=None)
        fits = an.weight_fits(src, lambda d, t: bar.update(task, completed=d, total=t))
    if calib:
        fits += an.activation_fits(src, calib, nsamples, seqlen)
    rows = [{"tensor": f.name, "kind": f.kind, "nu": f.nu, "scale": f.scale, "std": f.std,
             "t_loglik": f.t_loglik, "normal_loglik": f.normal_loglik} for f in fits]
    if plot:
        an.plot_fits(fits, Path(plot))
    if as_json:
        print(json.dumps({"median_weight_nu": an.median_nu(fits), "fits": rows}, indent=2))
        return
    table = Table(title=f"Student-t fits ({src.description})")
    for col in ("tensor", "kind", "nu", "scale", "std", "loglik t", "loglik normal"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["tensor"], r["kind"], f"{r['nu']:.2f}", f"{r['scale']:.4g}", f"{r['std']:.4g}",
                      f"{r['t_loglik']:.3f}", f"{r['normal_loglik']:.3f}")
    out.print(table)
    out.print(f"median nu of the weights: {an.median_nu(fits):.2f} (--dtype sf4:nu=auto uses it)"
              + (f"; plot: {plot}" if plot else ""), highlight=False)


@app.command()
@one_line_errors
def sweep(
    source: Optional[str] = typer.Argument(None, help="HF model dir, hub id or .gguf file (default: the built-in model)"),
    dtypes: str = typer.Option("int4:asym,nf4,sf4,fp4,fp4-sr,fp4-sp,apot4,mxfp4", "--dtypes", help="comma-separated dtype specs"),
    algos: str = typer.Option("rtn,gptq,awq,awq+gptq", "--algos", help="comma-separated algorithms"),
    text: str = typer.Option(..., "--text", help="evaluation text (perplexity)"),
    calib: Optional[str] = typer.Option(None, "--calib", help="calibration text for the calibrated algorithms"),
    nsamples: int = typer.Option(128, "--nsamples"),
    seqlen: int = typer.Option(512, "--seqlen"),
    ctx: int = typer.Option(512, "--ctx"),
    windows: Optional[int] = typer.Option(40, "--windows"),
    threads: Optional[int] = typer.Option(None, "--threads", "-t"),
    device: str = typer.Option("cpu", "--device"),
    group_size: Optional[int] = typer.Option(None, "--group-size", "-g"),
    out_dir: str = typer.Option("sweep", "--out", help="folder for sweep.md, sweep.json, sweep.png"),
    no_bench: bool = typer.Option(False, "--no-bench", help="skip the decode-speed measurement"),
    keep_files: bool = typer.Option(False, "--keep-files", help="keep the exported .gguf files"),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="skip the f16 reference row"),
):
    """Export, evaluate and benchmark every dtype x algo combination; table + plot. Reruns resume."""
    from quantconv.convert.sources import open_source
    from quantconv.sweep import SweepSpec, run_sweep

    spec = SweepSpec([d.strip() for d in dtypes.split(",") if d.strip()], [a.strip() for a in algos.split(",") if a.strip()],
                     Path(text), Path(out_dir), calib, nsamples, seqlen, ctx, windows, threads, device, group_size,
                     not no_bench, keep_files, baseline=not no_baseline)
    run_sweep(open_source(source), spec, log=lambda m: err.print(m, highlight=False))
    out.print((Path(out_dir) / "sweep.md").read_text(), highlight=False)


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
