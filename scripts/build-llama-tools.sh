#!/usr/bin/env bash
# Stock llama.cpp's command-line tools (llama-imatrix, llama-quantize, llama-perplexity, llama-bench), built
# from the source vendored in the llama-cpp-python 0.3.36 sdist, the same llama.cpp the tests' peer wheel
# runs. Built once per CPU and flags (~10 min on 2 cores) into a cache that later runs reuse; prints the
# folder holding the binaries.
#   bash scripts/build-llama-tools.sh            # -> .../llama-tools-<key>/bin
set -euo pipefail
# the same AMX exclusion as scripts/install-peers.sh: ggml's AMX path faults at ldtilecfg on these VMs
FLAGS=""
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
  FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
KEY=$( ( (grep -m1 -o -w 'flags.*' /proc/cpuinfo 2>/dev/null || uname -m); echo "$FLAGS") | md5sum | cut -c1-12)
ROOT="${QUANTCONV_PEER_SRC:-$HOME/.cache/quantconv-peers}/llama-tools-0.3.36-$KEY"
TARGETS="llama-imatrix llama-quantize llama-perplexity llama-bench"
if [ ! -x "$ROOT/bin/llama-quantize" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python -m pip download -q --no-deps --no-binary llama-cpp-python --no-build-isolation -d "$tmp" llama-cpp-python==0.3.36 >&2
  tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
  src="$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp"
  echo "building $TARGETS into $ROOT (one time, ~10 min on 2 cores)" >&2
  cmake -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_CXX_FLAGS="$FLAGS" >&2
  cmake --build "$tmp/build" -j"$(nproc)" --target $TARGETS >&2
  mkdir -p "$ROOT.part/bin"
  for t in $TARGETS; do cp "$tmp/build/bin/$t" "$ROOT.part/bin/"; done
  rm -rf "$ROOT" && mv "$ROOT.part" "$ROOT"
fi
echo "$ROOT/bin"
