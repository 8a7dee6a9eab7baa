"""Per-layer output errors of calibration recipes: where the quantization error of a model comes from.

    python bench/layer_errors.py [--source FILE] --calib TEXT [--recipes sf4:rtn sf4:gptq ...] [--device cuda]

For each recipe (DTYPE:ALGO[:act-order][:scale-search]) the calibration pipeline runs once and logs, per
decoder layer, on the first --error-samples calibration windows:
  layer_rel_err  ||Y_q - Y_f||^2 / ||Y_f||^2 of the layer alone (float vs quantized weights, same input);
  model_rel_err  the same for the quantized model's hidden state vs the float model's (all error so far);
and GPTQ's weighted loss per linear. Writes JSON (resumable: recipes already there are skipped), a
Markdown table and a PNG (both errors per layer, one line per recipe).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_recipe(text: str):
    from quantconv.convert.algorithms import configs
    from quantconv.convert.calibrate import CalibOptions
    dtype, algo, *flags = text.split(":")
    bad = [f for f in flags if f not in ("act-order", "scale-search")]
    if bad:
        raise SystemExit(f"recipe '{text}': unknown flag {bad[0]}; use DTYPE:ALGO[:act-order][:scale-search]")
    return dtype, CalibOptions(algos=configs(algo, act_order="act-order" in flags,
                                             scale_search="scale-search" in flags))


def run_recipe(source, text: str, calib: str, nsamples: int, seqlen: int, device: str, error_samples: int) -> dict:
    from rich.progress import Progress

    from quantconv.convert.calib import calibration_ids
    from quantconv.convert.calibrate import calibrate
    from quantconv.convert.export import plan_export

    dtype, opts = parse_recipe(text)
    opts.calib, opts.nsamples, opts.seqlen, opts.device, opts.error_samples = calib, nsamples, seqlen, device, error_samples
    plans = plan_export(source, dtype, None, [])
    dtypes = {p.hf_name: p.dtype for p in plans if p.role == "linear" and p.hf_name}
    ids = calibration_ids(calib, source, nsamples, seqlen, 0, device)
    with Progress(transient=True) as bar:
        task = bar.add_task(text, total=None)
        result = calibrate(source, dtypes, ids, opts, lambda i, n, info: bar.update(task, total=n, completed=i + 1))
    keep = ("layer", "seconds", "layer_rel_err", "model_rel_err", "gptq_loss")
    return {"recipe": text, "seconds": round(result.seconds, 1),
            "layers": [{k: v for k, v in info.items() if k in keep} for info in result.layers]}


def markdown(rows: list[dict]) -> str:
    head = "| layer | " + " | ".join(f"{r['recipe']} own | {r['recipe']} model" for r in rows) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(rows))]
    for i in range(len(rows[0]["layers"])):
        cells = []
        for r in rows:
            info = r["layers"][i]
            cells += [f"{info.get('layer_rel_err', float('nan')):.2e}", f"{info.get('model_rel_err', float('nan')):.2e}"]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, ax, title in (("layer_rel_err", axes[0], "this layer alone (same input)"),
                           ("model_rel_err", axes[1], "hidden state vs float model (accumulated)")):
        for r in rows:
            ax.plot([x["layer"] for x in r["layers"]], [x.get(key) for x in r["layers"]], marker=".", label=r["recipe"])
        ax.set_yscale("log")
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("relative squared output error")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=None, help="model (default: the built-in reference model)")
    ap.add_argument("--calib", required=True, help="calibration text file")
    ap.add_argument("--recipes", nargs="+", default=["sf4:rtn", "sf4:gptq", "sf4:gptq:act-order:scale-search",
                                                     "sf4:awq+gptq"])
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--error-samples", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="docs/calibration/layer_errors", help="output path without extension")
    args = ap.parse_args()

    from quantconv.convert.sources import open_source
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    rows = json.loads(json_path.read_text()) if json_path.exists() else []
    source = open_source(args.source)
    for text in args.recipes:
        if any(r["recipe"] == text for r in rows):
            continue
        rows.append(run_recipe(source, text, args.calib, args.nsamples, args.seqlen, args.device, args.error_samples))
        json_path.write_text(json.dumps(rows, indent=1))
        print(f"{text}: {rows[-1]['seconds']} s, last layer model error {rows[-1]['layers'][-1].get('model_rel_err'):.3e}",
              flush=True)
    rows = [r for r in rows if r["recipe"] in args.recipes]
    out.with_suffix(".md").write_text(markdown(rows))
    plot(rows, out.with_suffix(".png"))
    print(markdown(rows))


if __name__ == "__main__":
    main()
