#!/bin/bash
# The calibration issue's GPU-backed measurements in one script, for any host with quantconv installed
# (a CUDA build of torch for --device cuda). Run it from anywhere; it runs the repository's bench/ scripts.
# `scripts/gpu-calib.sh --help` prints the usage.
set -eo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/gpu-calib.sh MODE [options]

Runs the calibration measurements (exports with GPTQ/AWQ on a GPU, perplexities with quantconv's CPU
runtime) and writes their results under an output folder. Results are resumable: rerunning a mode
with the same --out skips what is already there.

Modes:
  check         print the runtime's ISAs, whether torch sees a GPU, the CPU, and the inputs
  sweep         quantconv sweep per dtype x {rtn,gptq,awq,awq+gptq}, one process per dtype (no speed
                column); the per-dtype tables are merged into OUT/sweep/sweep.{json,md,png}
  experiments   bench/calib_experiments.py groups w8a8, w4a8mx, normtweak and best (best split over
                three processes): OUT/exp-*.json
  layer-errors  bench/layer_errors.py: per-layer output errors of the SF4 recipes (OUT/layer_errors.*)
  measure       side by side: layer errors (GPU; cores 4..N-1), the SF4 GPTQ export's time and memory on
                2 pinned cores (0,1; bench/export_speed.py, --device cpu) and the sweep's decode-speed
                column at 2 threads on cores 2,3 (fills OUT/sweep, or a copy of
                docs/calibration/sweep.json when OUT has no sweep). Needs 6 cores to pin; with fewer
                the three run one after another, unpinned
  fastexact     bench/fast_vs_exact.py: the runtime's fast path vs its exact path per dtype (RTN exports;
                no GPU used): OUT/fast_vs_exact/
  onnx          bench/onnx_acceptance.py GPTQ rows (ONNX via onnxruntime vs the runtime's exact path),
                one process per dtype, one table: OUT/onnx_acceptance/ (needs pip install '.[onnx]')
  scale         the billion-parameter run (bench/scale_run.py): a synthetic Llama-3.2-3B checkpoint
                (bench/synthetic_model.py, written once into WORK/synthetic-SCALE unless --model names
                an HF folder), its SF4 GPTQ export on --device with the export's peak host RSS (limit
                8 GB) and wall time, then our engine (if built) loads the file and decodes 16 tokens on
                --threads threads: OUT/scale-gptq.{json,log}. Needs --calib

Inputs (a staging folder, or each file; a file given explicitly wins over the staging folder):
  --stage DIR      folder holding ref.gguf (optional), wikitext-2-raw-test.txt and wikitext-2-valid.txt;
                   results go to DIR/results unless --out is given
  --model PATH     model to quantize: a GGUF, HF folder or hub id (default: DIR/ref.gguf if present,
                   else quantconv's built-in reference model)
  --text FILE      evaluation text (perplexity), e.g. wikitext-2-raw-test.txt
  --calib FILE     calibration text, e.g. wikitext-2-valid.txt
  --out DIR        results folder (default: DIR/results with --stage, else ./gpu-calib-results)

Options:
  --device DEV     calibration device: cuda (default) or cpu
  --threads N      CPU threads of each perplexity evaluation (default 3)
  --dtypes LIST    comma-separated dtypes for sweep, fastexact and onnx (defaults: the sweep's 8 4-bit
                   dtypes; fast_vs_exact.py's list; int4:asym,mxfp4,mxfp8,sf4,fp4-sp)
  --jobs N         processes at once for sweep, experiments and onnx (default: all at once), dtypes at
                   once for fastexact (default 5)
  --timeout SEC    wall-clock limit of each process (default: none); a process past it is killed and
                   its results so far stay (rerun to resume)
  --tar FILE       afterwards, pack OUT (without .gguf/.onnx files) into FILE (.tgz)
  --scale S        scale: the synthetic model's shape, 3b (default), 1b or tiny
  --work DIR       scale: folder for the synthetic model and the GGUF file (default: ${TMPDIR:-/tmp}/quantconv-scale)
  -h, --help       this text

Examples:
  scripts/gpu-calib.sh check --stage /data/calib
  scripts/gpu-calib.sh sweep --stage /data/calib --timeout 3600
  scripts/gpu-calib.sh experiments --model ref.gguf --text wiki.test.txt --calib wiki.valid.txt --out res
  scripts/gpu-calib.sh fastexact --stage /data/calib --dtypes sf4,nf4 --threads 3
  scripts/gpu-calib.sh sweep --stage /data/calib --device cpu --dtypes sf4 --timeout 60   # no GPU
  scripts/gpu-calib.sh scale --calib wikitext-2-valid.txt --out res --threads 16        # 3B GPTQ on cuda
USAGE
}

die() { echo "gpu-calib.sh: error: $*" >&2; exit 2; }
abspath() { [ -e "$1" ] && echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")" || echo "$1"; }

MODE="" STAGE="" MODEL="" TEXT="" CALIB="" OUTDIR="" DEVICE=cuda THREADS=3 DTYPES="" JOBS="" TIMEOUT="" TAR=""
SCALE=3b WORK=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --stage|--model|--text|--calib|--out|--device|--threads|--dtypes|--jobs|--timeout|--tar|--scale|--work)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --stage) STAGE=$2 ;; --model) MODEL=$2 ;; --text) TEXT=$2 ;; --calib) CALIB=$2 ;; --out) OUTDIR=$2 ;;
        --device) DEVICE=$2 ;; --threads) THREADS=$2 ;; --dtypes) DTYPES=$2 ;; --jobs) JOBS=$2 ;;
        --timeout) TIMEOUT=$2 ;; --tar) TAR=$2 ;; --scale) SCALE=$2 ;; --work) WORK=$2 ;;
      esac
      shift 2 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$MODE" ] || die "one mode only (got '$MODE' and '$1')"; MODE=$1; shift ;;
  esac
done
[ -n "$MODE" ] || { usage >&2; exit 2; }
case "$MODE" in check|sweep|experiments|layer-errors|measure|fastexact|onnx|scale) ;; *) die "unknown mode '$MODE' (see --help)" ;; esac
case "$DEVICE" in cuda|cuda:*|cpu) ;; *) die "--device must be cuda or cpu, not '$DEVICE'" ;; esac
case "$SCALE" in 3b|1b|tiny) ;; *) die "--scale must be 3b, 1b or tiny, not '$SCALE'" ;; esac
for v in THREADS JOBS TIMEOUT; do
  [ -z "${!v}" ] || [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--$(echo $v | tr A-Z a-z) must be a positive integer, not '${!v}'"
done

# Inputs: explicit paths first, then the staging folder's standard names.
if [ -n "$STAGE" ]; then
  [ -d "$STAGE" ] || die "--stage $STAGE: no such folder"
  STAGE=$(abspath "$STAGE")
  if [ -z "$MODEL" ] && [ -f "$STAGE/ref.gguf" ]; then MODEL=$STAGE/ref.gguf; fi
  [ -n "$TEXT" ] || TEXT=$STAGE/wikitext-2-raw-test.txt
  [ -n "$CALIB" ] || CALIB=$STAGE/wikitext-2-valid.txt
  [ -n "$OUTDIR" ] || OUTDIR=$STAGE/results
fi
[ -n "$OUTDIR" ] || OUTDIR=./gpu-calib-results
if [ -n "$MODEL" ] && [ -e "$MODEL" ]; then MODEL=$(abspath "$MODEL"); fi   # a hub id stays as given
[ -z "$TEXT" ] || TEXT=$(abspath "$TEXT")
[ -z "$CALIB" ] || CALIB=$(abspath "$CALIB")
[ -z "$WORK" ] || { mkdir -p "$WORK" && WORK=$(abspath "$WORK"); }
mkdir -p "$OUTDIR" && OUTDIR=$(abspath "$OUTDIR")
if [ -n "$TAR" ]; then [ -d "$(dirname "$TAR")" ] || die "--tar $TAR: no such folder"; TAR="$(cd "$(dirname "$TAR")" && pwd)/$(basename "$TAR")"; fi

need_text()  { [ -n "$TEXT" ] && [ -f "$TEXT" ] || die "$MODE needs the evaluation text: --text FILE or --stage DIR with wikitext-2-raw-test.txt (${TEXT:-not given})"; }
need_calib() { [ -n "$CALIB" ] && [ -f "$CALIB" ] || die "$MODE needs the calibration text: --calib FILE or --stage DIR with wikitext-2-valid.txt (${CALIB:-not given})"; }

cd "$(dirname "$0")/.."          # the repository root: bench/ and docs/ are relative to it
command -v quantconv >/dev/null || die "quantconv is not installed (pip install -e '.[convert]' in $(pwd))"
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2} PYTHONUNBUFFERED=1

T=()                                        # the per-process time limit, as a command prefix
[ -z "$TIMEOUT" ] || T=(timeout "$TIMEOUT")
SRC=()                                      # --source MODEL for the bench scripts (none: built-in model)
[ -z "$MODEL" ] || SRC=(--source "$MODEL")
cpu_name() { awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true; }
throttle() { if [ -n "$JOBS" ]; then while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done; fi; }
finish() {                                  # finish LOG...: wait for the mode's processes, show their logs' ends
  wait || true
  local f; for f in "$@"; do [ ! -f "$f" ] || { echo "==> $f <=="; tail -n 3 "$f"; }; done
  if [ -n "$TAR" ]; then
    tar czf "$TAR" --exclude="*.gguf" --exclude="*.onnx" --exclude="*.onnx.data" -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")"
    echo "results packed into $TAR"
  fi
  echo "results in $OUTDIR"
}

case "$MODE" in
check)
  echo "repository: $(pwd)"
  echo "cpu: $(nproc) cores, $(cpu_name)"
  $PY -c "import quantconv._ext as e; print('runtime ISAs:', e.available_isas())" || echo "runtime extension: not importable"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available())" || true
  echo "model: ${MODEL:-built-in reference model}"
  echo "text:  ${TEXT:-not given}$([ -z "$TEXT" ] || [ -f "$TEXT" ] || echo ' (missing)')"
  echo "calib: ${CALIB:-not given}$([ -z "$CALIB" ] || [ -f "$CALIB" ] || echo ' (missing)')"
  echo "out:   $OUTDIR"
  ;;
sweep)
  need_text; need_calib
  i=0
  for d in $(echo "${DTYPES:-int4:asym,nf4,sf4,fp4,fp4-sr,fp4-sp,apot4,mxfp4}" | tr ',' ' '); do
    throttle
    # the f16 baseline row only in the first dtype's folder; speeds are filled by `measure`
    "${T[@]}" quantconv sweep ${MODEL:+"$MODEL"} --dtypes "$d" --algos rtn,gptq,awq,awq+gptq --text "$TEXT" \
      --calib "$CALIB" --device "$DEVICE" --threads "$THREADS" --no-bench --out "$OUTDIR/sweep-${d//[:,=]/-}" \
      $([ $i -gt 0 ] && echo --no-baseline) > "$OUTDIR/sweep-${d//[:,=]/-}.log" 2>&1 &
    i=$((i+1))
  done
  wait || true
  # one table of every dtype's rows (in the order of --dtypes, then other dtypes' folders of earlier runs),
  # written like docs/calibration/sweep.*
  $PY - "$OUTDIR" ${DTYPES:-int4:asym,nf4,sf4,fp4,fp4-sr,fp4-sp,apot4,mxfp4} <<'PY'
import json, re, sys
from pathlib import Path
from quantconv.sweep import SweepSpec, write_outputs
out, order = Path(sys.argv[1]), sys.argv[2].split(",")
folders = [out / ("sweep-" + re.sub(r"[:,=]", "-", d)) for d in order]
folders += sorted(set(out.glob("sweep-*/")) - set(folders))
states = [json.loads((f / "sweep.json").read_text()) for f in folders if (f / "sweep.json").is_file()]
rows, seen = [], set()
for st in states:
    for r in st["rows"]:
        if (r["dtype"], r["algo"]) not in seen:
            seen.add((r["dtype"], r["algo"]))
            rows.append(r)
rows.sort(key=lambda r: r["dtype"] != "f16")
if rows:
    s = states[0]["spec"]
    spec = SweepSpec(dtypes=list(dict.fromkeys(r["dtype"] for r in rows)), algos=s["algos"], text=Path(s["text"]),
                     out_dir=out / "sweep", calib=s.get("calib"), nsamples=s["nsamples"], seqlen=s["seqlen"],
                     ctx=s["ctx"], windows=s["windows"], device=s["device"])
    spec.out_dir.mkdir(exist_ok=True)
    write_outputs(rows, spec)
    print(f"merged {len(rows)} rows into {spec.out_dir}/sweep.json")
PY
  finish "$OUTDIR"/sweep-*.log
  ;;
experiments)
  need_text; need_calib
  # the long "best" group runs as three processes (entries 0-3, 4-6, 7-9), each with its own JSON
  for g in w8a8 w4a8mx normtweak best:0,1,2,3 best:4,5,6 best:7,8,9; do
    throttle
    name=${g/:/-}; name=${name//,/}; items=()
    if [[ $g == *:* ]]; then IFS=, read -ra idx <<< "${g#*:}"; for n in "${idx[@]}"; do items+=(--item "$n"); done; fi
    "${T[@]}" $PY bench/calib_experiments.py --group "${g%%:*}" "${items[@]}" --out "$OUTDIR/exp-$name.json" "${SRC[@]}" \
      --text "$TEXT" --calib "$CALIB" --device "$DEVICE" --threads "$THREADS" --tmp "${TMPDIR:-/tmp}" \
      > "$OUTDIR/exp-$name.log" 2>&1 &
  done
  finish "$OUTDIR"/exp-*.log
  ;;
layer-errors)
  need_calib
  "${T[@]}" $PY bench/layer_errors.py "${SRC[@]}" --calib "$CALIB" --device "$DEVICE" --out "$OUTDIR/layer_errors" \
    > "$OUTDIR/layer_errors.log" 2>&1 || true
  finish "$OUTDIR/layer_errors.log"
  ;;
measure)
  need_text; need_calib
  # the sweep's rows to fill with decode speeds: this OUT's merged sweep, else the committed table
  mkdir -p "$OUTDIR/sweep"
  [ -f "$OUTDIR/sweep/sweep.json" ] || $PY -c "import json, sys; json.dump({'rows': json.load(open('docs/calibration/sweep.json'))}, open(sys.argv[1], 'w'))" "$OUTDIR/sweep/sweep.json"
  N=$(nproc)
  if [ "$N" -ge 6 ]; then
    PIN_LE=(taskset -c "4-$((N-1))"); PIN_EX=(taskset -c 0,1); PIN_SW=(taskset -c 2,3); BG=1; LE_THREADS=$((N-4))
  else
    PIN_LE=(); PIN_EX=(); PIN_SW=(); BG=0; LE_THREADS=$N
  fi
  run() { if [ $BG = 1 ]; then "$@" & else "$@" || true; fi; }
  run env OMP_NUM_THREADS=$LE_THREADS MKL_NUM_THREADS=$LE_THREADS "${PIN_LE[@]}" "${T[@]}" $PY bench/layer_errors.py \
    "${SRC[@]}" --calib "$CALIB" --device "$DEVICE" --out "$OUTDIR/layer_errors" > "$OUTDIR/layer_errors.log" 2>&1
  run "${PIN_EX[@]}" "${T[@]}" $PY bench/export_speed.py --dtypes sf4 --algo gptq --calib "$CALIB" \
    ${MODEL:+--source "$MODEL"} > "$OUTDIR/export_speed.md" 2> "$OUTDIR/export_speed.log"
  FILL=$(mktemp --suffix=.py)
  cat > "$FILL" <<'PY'
# decode tok/s of an RTN export of each dtype in the table, 2 threads (the sweep's own measurement); no new rows
import json, sys
from pathlib import Path
from quantconv.convert.sources import open_source
from quantconv.sweep import SweepSpec, fill_speeds, write_outputs
out, text, model = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] or None
state = json.loads((out / "sweep.json").read_text())
rows, s = state["rows"], state.get("spec", {})
spec = SweepSpec(dtypes=list(dict.fromkeys(r["dtype"] for r in rows)), algos=list(dict.fromkeys(r["algo"] for r in rows)),
                 text=text, out_dir=out, calib=s.get("calib"), threads=2)
(out / "files").mkdir(exist_ok=True)
speeds = {r["dtype"]: r["decode_tok_s"] for r in rows if r.get("decode_tok_s")}
fill_speeds(open_source(model), rows, spec, out / "files", speeds, print)
write_outputs(rows, spec)
print((out / "sweep.md").read_text())
PY
  run "${PIN_SW[@]}" "${T[@]}" $PY "$FILL" "$OUTDIR/sweep" "$TEXT" "$MODEL" > "$OUTDIR/sweep_speed.log" 2>&1
  finish "$OUTDIR/layer_errors.log" "$OUTDIR/export_speed.log" "$OUTDIR/sweep_speed.log"
  rm -f "$FILL"
  [ ! -s "$OUTDIR/export_speed.md" ] || cat "$OUTDIR/export_speed.md"
  ;;
fastexact)
  need_text
  "${T[@]}" $PY bench/fast_vs_exact.py "${SRC[@]}" --text "$TEXT" --threads "$THREADS" --jobs "${JOBS:-5}" \
    --work "$OUTDIR/fx-work" --out "$OUTDIR/fast_vs_exact" ${DTYPES:+--dtypes "$DTYPES"} \
    --machine "$(nproc)-core $(cpu_name), $THREADS threads per dtype" > "$OUTDIR/fast_vs_exact.log" 2>&1 || true
  tail -n 25 "$OUTDIR/fast_vs_exact.log"
  finish
  ;;
onnx)
  need_text; need_calib
  $PY -c "import onnxruntime" 2>/dev/null || die "onnx needs onnxruntime: pip install -e '.[onnx]'"
  for d in $(echo "${DTYPES:-int4:asym,mxfp4,mxfp8,sf4,fp4-sp}" | tr ',' ' '); do
    throttle
    n=${d//[:,=]/-}
    # one table for all dtypes: onnx_acceptance.py re-reads it under a lock before each write
    "${T[@]}" $PY bench/onnx_acceptance.py --work "$OUTDIR/onnx-work" --out "$OUTDIR/onnx_acceptance" --recipes gptq \
      --dtypes "$d" "${SRC[@]}" --device "$DEVICE" --threads "$THREADS" --text "$TEXT" --calib "$CALIB" \
      > "$OUTDIR/acc-$n.log" 2>&1 &
  done
  finish "$OUTDIR"/acc-*.log
  ;;
scale)
  need_calib
  WORK=${WORK:-${TMPDIR:-/tmp}/quantconv-scale}
  mkdir -p "$WORK"
  # a given HF folder is used as it is; otherwise the synthetic model, generated on the first run only
  if [ -n "$MODEL" ]; then [ -d "$MODEL" ] || die "scale needs --model to be an HF folder, not '$MODEL'"; SYN=(--model "$MODEL")
  else SYN=(--model "$WORK/synthetic-$SCALE" --generate "$SCALE"); fi
  STEPS=export,engine   # the engine step needs the C++ runtime; a host with only the Python parts exports
  $PY -c "import quantconv._ext" 2>/dev/null || { STEPS=export; echo "runtime extension not built: export only"; }
  "${T[@]}" $PY bench/scale_run.py "${SYN[@]}" --work "$WORK" --steps $STEPS --algo gptq --calib "$CALIB" \
    --device "$DEVICE" --threads "$THREADS" --rss-limit-mb 8000 --json "$OUTDIR/scale-gptq.json" 2>&1 \
    | tee "$OUTDIR/scale-gptq.log" || true
  finish
  ;;
esac
