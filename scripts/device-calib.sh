#!/bin/bash
# Runs the calibration sweep and experiments on the lent GPU machine (16 cores + 1 GPU), resumably.
# The reference model (98 MB) exceeds one call's 64 MiB carry, so it travels in two parts:
#   call 1: scripts/device-calib.sh setup          (carry .devcarryA: part 1, gguf wheel, texts)
#   call 2+: scripts/device-calib.sh run SECONDS   (carry .devcarryB: part 2, and .devcarryR: results so far)
#            scripts/device-calib.sh measure SECONDS  (carry .devcarryB: layer errors, 2-core GPTQ export time, sweep speeds)
#   fast vs exact per dtype: setup, then `fastexact SECONDS` (carry .devcarryB; DTYPES=a,b,c for a subset)
#   ONNX acceptance (issue 5, GPTQ rows): setup, then `ortsetup` (carry .whl: the onnxruntime 1.32 cp312 wheel),
#            then `onnx SECONDS` (carry .devcarryB)
# Results come back as $OUT/res.tgz (sweep folders and experiment JSON).
set -e
Q=/root/qc
export PYTHONPATH=$Q/site OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONUNBUFFERED=1
case "$1" in
setup)
  mkdir -p $Q && cp .devcarryA/ref.part1 .devcarryA/*.txt $Q/
  python3 -m pip install -q --no-index --no-deps --target $Q/site .devcarryA/gguf-*.whl
  python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v -i warn | tail -3
  python3 -c "import quantconv._ext as e, torch; print(e.available_isas(), torch.cuda.is_available())"
  ;;
run)
  [ -f $Q/ref.gguf ] || cat $Q/ref.part1 .devcarryB/ref.part2 > $Q/ref.gguf
  mkdir -p $Q/res && { [ -d .devcarryR/res ] && cp -rn .devcarryR/res/. $Q/res/ || true; }
  T="timeout $2"
  TH=${THREADS:-3}
  common="--text $Q/wikitext-2-raw-test.txt --calib $Q/wikitext-2-valid.txt --device cuda --threads $TH --no-bench"
  i=0
  for d in int4:asym nf4 sf4 fp4 fp4-sr fp4-sp apot4 mxfp4; do
    $T quantconv sweep $Q/ref.gguf --dtypes $d --algos rtn,gptq,awq,awq+gptq $common --out $Q/res/sweep-$i \
      $([ $i -gt 0 ] && echo --no-baseline) \
      > $Q/res/sweep-$i.log 2>&1 &
    i=$((i+1))
  done
  # the long "best" group runs as three processes (entries 0-3, 4-6, 7-9), each with its own JSON
  for g in w8a8 w4a8mx normtweak best:0,1,2,3 best:4,5,6 best:7,8,9; do
    name=${g/:/-}; name=${name//,/}; items=""
    [[ $g == *:* ]] && items=$(echo ${g#*:} | tr ',' '\n' | sed 's/^/--item /' | tr '\n' ' ')
    $T python3 bench/calib_experiments.py --group ${g%%:*} $items --out $Q/res/exp-$name.json --source $Q/ref.gguf \
      --text $Q/wikitext-2-raw-test.txt --calib $Q/wikitext-2-valid.txt --device cuda --threads $TH --tmp /tmp \
      > $Q/res/exp-$name.log 2>&1 &
  done
  wait || true
  tail -n 3 $Q/res/*.log
  tar czf $OUT/res.tgz --exclude="*.gguf" -C $Q res
  ;;
measure)
  # per-layer output errors (GPU, cores 4-15), GPTQ export time on 2 pinned CPU cores (0,1), and the
  # sweep's decode-speed column at 2 threads (cores 2,3), side by side
  [ -f $Q/ref.gguf ] || cat $Q/ref.part1 .devcarryB/ref.part2 > $Q/ref.gguf
  mkdir -p $Q/res/sw
  python3 -c "import json; rows = json.load(open('docs/calibration/sweep.json')); json.dump({'rows': rows}, open('$Q/res/sw/sweep.json', 'w'))"
  OMP_NUM_THREADS=8 MKL_NUM_THREADS=8 taskset -c 4-15 timeout $2 python3 bench/layer_errors.py --source $Q/ref.gguf \
    --calib $Q/wikitext-2-valid.txt --device cuda --out $Q/res/layer_errors > $Q/res/layer_errors.log 2>&1 &
  taskset -c 0,1 timeout $2 python3 bench/export_speed.py --dtypes sf4 --algo gptq --calib $Q/wikitext-2-valid.txt \
    --source $Q/ref.gguf > $Q/res/export_speed.md 2>&1 &
  taskset -c 2,3 timeout $2 quantconv sweep $Q/ref.gguf --text $Q/wikitext-2-raw-test.txt --threads 2 --out $Q/res/sw \
    > $Q/res/sweep_speed.log 2>&1 &
  wait || true
  tail -n 5 $Q/res/*.log $Q/res/*.md
  tar czf $OUT/res.tgz --exclude="*.gguf" -C $Q res
  ;;
fastexact)
  # the runtime's fast path vs its exact path per dtype (bench/fast_vs_exact.py), 5 dtypes at a time
  [ -f $Q/ref.gguf ] || cat $Q/ref.part1 .devcarryB/ref.part2 > $Q/ref.gguf
  mkdir -p $Q/res
  timeout $2 python3 bench/fast_vs_exact.py --source $Q/ref.gguf --text $Q/wikitext-2-raw-test.txt --threads 3 \
    --jobs 5 --work $Q/fx --out $Q/res/fx ${DTYPES:+--dtypes "$DTYPES"} --machine "lent 16-core Xeon, 3 threads per dtype (AVX-512 table; its fast paths are AVX2's)" \
    > $Q/res/fx.log 2>&1 || true
  tail -n 25 $Q/res/fx.log
  tar czf $OUT/res.tgz --exclude="*.gguf" -C $Q res
  ;;
ortsetup)
  # onnxruntime 1.32 (the onnx extra's version; the image has 1.30) from .whl, ahead of the image's on PYTHONPATH
  python3 -m pip install -q --no-index --no-deps --no-compile --target $Q/site .whl/onnxruntime-*.whl
  python3 -c "import onnxruntime, onnx; print('onnxruntime', onnxruntime.__version__, 'onnx', onnx.__version__)"
  ;;
onnx)
  # issue 5's GPTQ rows: one bench/onnx_acceptance.py process per dtype (GPTQ on the GPU, evals on THREADS cores each)
  [ -f $Q/ref.gguf ] || cat $Q/ref.part1 .devcarryB/ref.part2 > $Q/ref.gguf
  mkdir -p $Q/res
  for d in ${DTYPES:-int4:asym mxfp4 mxfp8 sf4 fp4-sp}; do
    n=${d/:/-}
    timeout $2 python3 bench/onnx_acceptance.py --work $Q/w-$n --out $Q/res/acc-$n --recipes gptq --dtypes $d \
      --source $Q/ref.gguf --device cuda --threads ${THREADS:-3} --text $Q/wikitext-2-raw-test.txt \
      --calib $Q/wikitext-2-valid.txt > $Q/res/acc-$n.log 2>&1 &
  done
  wait || true
  tail -n 4 $Q/res/*.log
  tar czf $OUT/res.tgz --exclude="*.gguf" --exclude="*.onnx*" -C $Q res
  ;;
esac
