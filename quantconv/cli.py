"""The `quantconv` command line. Every user-facing failure is one line on stderr and exit status 2."""
from __future__ import annotations

import json
import os
import sys
from functools import wraps
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from quantconv.errors import QuantconvError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Quantize Hugging Face causal LMs into GGUF files and inspect them.")
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


@app.command()
@one_line_errors
def export(
    source: Optional[str] = typer.Argument(None, help="HF model dir, hub id or .gguf file (default: the built-in SmolLM2-135M-Instruct)"),
    output: str = typer.Option(..., "-o", "--output", help="output .gguf file"),
    dtype: str = typer.Option("sf4", "--dtype", "-t", help="datatype spec for the linear layers, e.g. sf4, nf4, int4:asym, mxfp4 (see `quantconv dtypes`)"),
    group_size: Optional[int] = typer.Option(None, "--group-size", "-g", help="group (block) size of the linear layers' dtype"),
    algo: str = typer.Option("rtn", "--algo", help="quantization algorithm"),
    keep: List[str] = typer.Option([], "--keep", help="GLOB=DTYPE override for matching tensors, e.g. 'token_embd*=q8_0' (repeatable; last match wins)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
):
    """Quantize every linear layer of a model into a GGUF file."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from quantconv.convert.export import export as run_export
    from quantconv.convert.sources import open_source

    src = open_source(source)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[tensor]}"), TimeElapsedColumn(), console=err,
                  disable=quiet, transient=True) as bar:
        task = bar.add_task("quantizing", total=None, tensor="")
        report = run_export(
            src, output, dtype, group_size, algo, keep,
            on_start=lambda plans: bar.update(task, total=len(plans)),
            progress=lambda p: bar.update(task, advance=1, tensor=f"{p.gguf_name} -> {p.dtype.spec}"))
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
    file: str = typer.Argument(..., help="a .gguf file"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """List a file's tensors, their types and sizes, and the recipe that made it."""
    from quantconv.runtime.inspect import describe_file

    info = describe_file(file)
    if as_json:
        print(json.dumps(info, indent=2))
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


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
