#!/usr/bin/env bash
# Configure, build and run the standalone C++ tests of cpp/quant, cpp/kernels and the engine's thread pool with plain CMake and the system
# C++ compiler (no Python, no nanobind), into build/cpp-tests (build/cpp-tests-sanitize with
# -DSANITIZE=ON).
#
#   cpp/tests/run_native_tests.sh                  # Release build, run test_dequant, test_kernels, test_thread_pool
#   cpp/tests/run_native_tests.sh -DSANITIZE=ON    # -fsanitize=address,undefined
#   CXX=clang++ cpp/tests/run_native_tests.sh      # another compiler; extra args go to cmake
#
# For a cross build pass a toolchain file (-DCMAKE_TOOLCHAIN_FILE=...) and set
# QUANTCONV_TEST_RUNNER (e.g. "qemu-aarch64 -L /usr/aarch64-linux-gnu") to run the binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$root/build/cpp-tests"
for arg in "$@"; do
  case "$arg" in
    -DSANITIZE=ON|-DSANITIZE=on|-DSANITIZE=1|-DSANITIZE=TRUE) build="$root/build/cpp-tests-sanitize" ;;
  esac
done
build="${QUANTCONV_TEST_BUILD_DIR:-$build}"

generator=()
if command -v ninja >/dev/null 2>&1 && [ ! -f "$build/CMakeCache.txt" ]; then
  generator=(-G Ninja)
fi

cmake -S "$root/cpp" -B "$build" ${generator[@]+"${generator[@]}"} \
  -DQUANTCONV_BUILD_PYTHON=OFF -DQUANTCONV_BUILD_TESTS=ON "$@"
cmake --build "$build" --target test_dequant test_kernels test_thread_pool --parallel "${QUANTCONV_JOBS:-2}"

runner=()
if [ -n "${QUANTCONV_TEST_RUNNER:-}" ]; then
  read -r -a runner <<< "$QUANTCONV_TEST_RUNNER"
fi
${runner[@]+"${runner[@]}"} "$build/test_dequant"
${runner[@]+"${runner[@]}"} "$build/test_kernels"
${runner[@]+"${runner[@]}"} "$build/test_thread_pool"
